//! Who may log in where: databases by name, users by name, each user's password, its SCRAM
//! verifier (derived once per user, off the reactors, and cached) and the pool serving it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::auth::{Rng, ScramVerifier};

/// Index of a database in the server's database table.
pub type DbId = usize;
/// Index of a (database, user) pool.
pub type PoolId = usize;

/// One user allowed on one database.
pub struct UserEntry {
    pub name: String,
    pub password: String,
    pub scram: Arc<ScramSecret>,
    pub pool: PoolId,
}

impl UserEntry {
    /// A user whose SCRAM verifier is derived when first needed
    /// ([`ScramSecret::derive`]).
    pub fn new(name: String, password: String, pool: PoolId, scram: Arc<ScramSecret>) -> Self {
        UserEntry {
            name,
            password,
            scram,
            pool,
        }
    }
}

/// A user's SCRAM verifier, derived lazily: the salt is chosen up front (cheap), the keys —
/// `iterations` HMACs of PBKDF2, about half a millisecond at PostgreSQL's default — only when a
/// helper thread gets to them, so that neither the start nor a reload waits for every user's,
/// and no reactor ever computes one.
pub struct ScramSecret {
    password: String,
    salt: [u8; ScramVerifier::SALT_LEN],
    iterations: u32,
    verifier: OnceLock<ScramVerifier>,
}

impl ScramSecret {
    /// A secret with a fresh random salt; nothing is derived yet.
    pub fn new(password: &str, iterations: u32, rng: &mut dyn Rng) -> Self {
        let mut salt = [0u8; ScramVerifier::SALT_LEN];
        rng.fill(&mut salt);
        ScramSecret {
            password: password.to_owned(),
            salt,
            iterations,
            verifier: OnceLock::new(),
        }
    }

    /// The verifier, if it has been derived.
    pub fn get(&self) -> Option<&ScramVerifier> {
        self.verifier.get()
    }

    /// The verifier, deriving it first if needed (expensive: not on a reactor thread).
    /// Threads racing here compute the same value; one of them is kept.
    pub fn derive(&self) -> &ScramVerifier {
        self.verifier.get_or_init(|| {
            ScramVerifier::derive(self.password.as_bytes(), &self.salt, self.iterations)
        })
    }

    /// Whether this secret is for `password` at `iterations` (a new login table keeps the
    /// secret, derived or not, of every user whose password did not change).
    pub fn is_for(&self, password: &str, iterations: u32) -> bool {
        self.iterations == iterations && self.password == password
    }
}

/// Equal when the same verifier comes out of them (tests compare session actions).
impl PartialEq for ScramSecret {
    fn eq(&self, other: &Self) -> bool {
        self.salt == other.salt && self.is_for(&other.password, other.iterations)
    }
}

impl Eq for ScramSecret {}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .field("derived", &self.verifier.get().is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("name", &self.name)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub struct DbEntry {
    pub id: DbId,
    pub users: HashMap<String, Arc<UserEntry>>,
}

/// A snapshot of the login table; replaced as a whole when secrets rotate.
#[derive(Debug)]
pub struct UserTable {
    pub databases: HashMap<String, DbEntry>,
    pub scram_iterations: u32,
    /// Key for mock SCRAM verifiers of unknown users (random per process), so that an unknown
    /// user fails exactly like a wrong password.
    pub mock_secret: [u8; 32],
    /// Logins to the admin console: every configured user by name (its entry under the first
    /// database that has it: that password logs in), and whether it is in `admin_users`.
    pub console: HashMap<String, (Arc<UserEntry>, bool)>,
}

/// Outcome of looking up a login.
pub enum Lookup<'a> {
    NoDatabase,
    /// The database exists; the user does not. Authentication proceeds against a mock.
    NoUser(DbId),
    User(DbId, &'a Arc<UserEntry>),
    /// The admin console: the user, if configured anywhere, and whether it may use it.
    Console(Option<(&'a Arc<UserEntry>, bool)>),
}

impl UserTable {
    pub fn lookup(&self, database: &str, user: &str) -> Lookup<'_> {
        if database == crate::config::ADMIN_DATABASE {
            return Lookup::Console(self.console.get(user).map(|(e, admin)| (e, *admin)));
        }
        match self.databases.get(database) {
            None => Lookup::NoDatabase,
            Some(db) => match db.users.get(user) {
                None => Lookup::NoUser(db.id),
                Some(entry) => Lookup::User(db.id, entry),
            },
        }
    }

    /// The SCRAM secret `user` of `database` has in this table, if its password is still
    /// `password` at `iterations`.
    pub fn scram_secret(
        &self,
        database: &str,
        user: &str,
        password: &str,
        iterations: u32,
    ) -> Option<Arc<ScramSecret>> {
        let entry = self.databases.get(database)?.users.get(user)?;
        entry
            .scram
            .is_for(password, iterations)
            .then(|| entry.scram.clone())
    }

    /// Every user's SCRAM secret, for deriving them ahead of logins.
    pub fn scram_secrets(&self) -> Vec<Arc<ScramSecret>> {
        self.databases
            .values()
            .flat_map(|db| db.users.values())
            .map(|u| u.scram.clone())
            .collect()
    }

    /// The verifier an unknown user is checked against.
    pub fn mock_verifier(&self, user: &str) -> ScramVerifier {
        ScramVerifier::mock(user.as_bytes(), &self.mock_secret, self.scram_iterations)
    }
}
