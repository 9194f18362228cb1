//! Who may log in where: databases by name, users by name, each user's password, its SCRAM
//! verifier (derived once, when secrets load) and the pool serving it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::ScramVerifier;

/// Index of a database in the server's database table.
pub type DbId = usize;
/// Index of a (database, user) pool.
pub type PoolId = usize;

/// One user allowed on one database.
pub struct UserEntry {
    pub name: String,
    pub password: String,
    pub scram: ScramVerifier,
    pub pool: PoolId,
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
}

/// Outcome of looking up a login.
pub enum Lookup<'a> {
    NoDatabase,
    /// The database exists; the user does not. Authentication proceeds against a mock.
    NoUser(DbId),
    User(DbId, &'a Arc<UserEntry>),
}

impl UserTable {
    pub fn lookup(&self, database: &str, user: &str) -> Lookup<'_> {
        match self.databases.get(database) {
            None => Lookup::NoDatabase,
            Some(db) => match db.users.get(user) {
                None => Lookup::NoUser(db.id),
                Some(entry) => Lookup::User(db.id, entry),
            },
        }
    }

    /// The verifier an unknown user is checked against.
    pub fn mock_verifier(&self, user: &str) -> ScramVerifier {
        ScramVerifier::mock(user.as_bytes(), &self.mock_secret, self.scram_iterations)
    }
}
