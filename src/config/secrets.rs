//! Resolving [`SecretRef`]s into usernames and passwords, and keeping them fresh.
//!
//! `insecure_value` and `env_var` are read synchronously. `aws_secret_arn` (cargo feature `aws`)
//! is fetched by a dedicated thread running a tokio current-thread runtime: each distinct ARN once
//! per round, at startup (bounded by [`SecretsOptions::initial_timeout`]) and then every
//! `secret_refresh_interval`. A refresh that fails or produces an invalid set (e.g. two users
//! with the same name) is logged and ignored; the previous values stay in use. A refresh that
//! changes anything publishes a new [`ResolvedSecrets`] and calls the [`OnChange`] callback.
//!
//! Secret values never reach logs, `Debug` output or error messages: messages name the JSON
//! path, the environment variable, the ARN and the key, nothing more.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};

use super::path::Problem;
use super::types::{Config, REDACTED, SecretRef, SecretSource};

/// Every database's users with their secrets read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedSecrets {
    /// Database name (the key in `databases`) to its users, in config order.
    pub databases: BTreeMap<String, Vec<ResolvedUser>>,
}

impl ResolvedSecrets {
    /// The users of `database` (empty if unknown).
    pub fn users(&self, database: &str) -> &[ResolvedUser] {
        self.databases.get(database).map_or(&[], Vec::as_slice)
    }

    /// The user `username` of `database`.
    pub fn find(&self, database: &str, username: &str) -> Option<&ResolvedUser> {
        self.users(database).iter().find(|u| u.username == username)
    }
}

/// One user's resolved credentials. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub username: String,
    pub password: String,
    /// JSON path of the user entry, e.g. `databases.mydb.users[0]`.
    pub path: String,
}

impl fmt::Debug for ResolvedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedUser")
            .field("username", &self.username)
            .field("password", &format_args!("{REDACTED}"))
            .field("path", &self.path)
            .finish()
    }
}

/// Secrets that could not be read; each problem names the JSON path of the reference.
#[derive(Debug)]
pub struct SecretsError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SecretsError {}

/// Called with the new secrets after a refresh changed them (on the secrets thread).
pub type OnChange = Box<dyn Fn(Arc<ResolvedSecrets>) + Send>;

/// How secrets are fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretsOptions {
    /// Longest wait for the first resolution of external (AWS) secrets.
    pub initial_timeout: Duration,
    /// Refresh period for external secrets; `None` resolves once.
    pub refresh_interval: Option<Duration>,
}

impl SecretsOptions {
    /// Default startup bound for fetching external secrets.
    pub const DEFAULT_INITIAL_TIMEOUT: Duration = Duration::from_secs(30);

    /// The options a config asks for: 30 s startup bound, its `secret_refresh_interval`.
    pub fn for_config(config: &Config) -> SecretsOptions {
        SecretsOptions {
            initial_timeout: Self::DEFAULT_INITIAL_TIMEOUT,
            refresh_interval: config.secret_refresh(),
        }
    }

    /// Resolve once, never refresh (for `-check`).
    pub fn once() -> SecretsOptions {
        SecretsOptions {
            initial_timeout: Self::DEFAULT_INITIAL_TIMEOUT,
            refresh_interval: None,
        }
    }
}

/// The current secrets, shared between the watcher handle and its thread.
#[derive(Default)]
pub(crate) struct Shared {
    current: Mutex<Arc<ResolvedSecrets>>,
    on_change: Mutex<Option<OnChange>>,
}

impl Shared {
    fn new(initial: ResolvedSecrets) -> Shared {
        Shared {
            current: Mutex::new(Arc::new(initial)),
            on_change: Mutex::new(None),
        }
    }

    pub(crate) fn current(&self) -> Arc<ResolvedSecrets> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    /// Publishes `next` if it differs from the current set; returns whether it did.
    pub(crate) fn publish(&self, next: ResolvedSecrets) -> bool {
        let next = {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if **current == next {
                return false;
            }
            *current = Arc::new(next);
            current.clone()
        };
        if let Some(callback) = self
            .on_change
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            callback(next);
        }
        true
    }
}

/// Owns the resolved secrets and, when some come from AWS and refreshing is on, the thread
/// that refreshes them. Dropping it stops that thread; [`SecretsWatcher::stop`] also joins it.
pub struct SecretsWatcher {
    shared: Arc<Shared>,
    #[cfg(feature = "aws")]
    worker: Option<super::aws::Worker>,
}

impl SecretsWatcher {
    /// Resolves every secret of `config`, blocking until done (external secrets: at most
    /// `options.initial_timeout`). Starts the refresh thread when needed.
    pub fn start(config: &Config, options: SecretsOptions) -> Result<SecretsWatcher, SecretsError> {
        #[cfg(feature = "aws")]
        if config.uses_aws_secrets() {
            let (shared, worker) = super::aws::start(config, options)?;
            return Ok(SecretsWatcher {
                shared,
                worker: Some(worker),
            });
        }
        let _ = options;
        let resolved = resolve_with(config, &HashMap::new())?;
        Ok(SecretsWatcher {
            shared: new_shared(resolved),
            #[cfg(feature = "aws")]
            worker: None,
        })
    }

    /// The secrets in effect now.
    pub fn current(&self) -> Arc<ResolvedSecrets> {
        self.shared.current()
    }

    /// Sets the callback run (on the secrets thread) after each change.
    pub fn set_on_change(&self, callback: OnChange) {
        *self
            .shared
            .on_change
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(callback);
    }

    /// Whether a thread is refreshing the secrets.
    pub fn is_refreshing(&self) -> bool {
        #[cfg(feature = "aws")]
        if let Some(worker) = &self.worker {
            return worker.is_running();
        }
        false
    }

    /// Stops refreshing and waits for the secrets thread to finish.
    pub fn stop(mut self) {
        self.stop_worker();
    }

    fn stop_worker(&mut self) {
        #[cfg(feature = "aws")]
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl Drop for SecretsWatcher {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl fmt::Debug for SecretsWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsWatcher")
            .field("current", &self.current())
            .field("refreshing", &self.is_refreshing())
            .finish()
    }
}

pub(crate) fn new_shared(initial: ResolvedSecrets) -> Arc<Shared> {
    Arc::new(Shared::new(initial))
}

#[cfg_attr(not(feature = "aws"), allow(dead_code))]
/// What one fetch of an external secret produced.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct FetchedSecret {
    pub string: Option<String>,
    pub has_binary: bool,
}

/// Parsed external secrets by ARN: the JSON object, or why it is unusable.
pub(crate) type ExternalSecrets = HashMap<String, Result<Map<String, Value>, String>>;

#[cfg_attr(not(feature = "aws"), allow(dead_code))]
/// Interprets a fetched secret: its SecretString must be a JSON object.
pub(crate) fn parse_secret_document(
    fetched: Result<FetchedSecret, String>,
) -> Result<Map<String, Value>, String> {
    let fetched = fetched?;
    let Some(text) = fetched.string else {
        return Err(if fetched.has_binary {
            "holds only SecretBinary; pglink needs a SecretString containing a JSON object".into()
        } else {
            "has no SecretString".into()
        });
    };
    // serde_json's messages carry no input text, but state only the position to be safe.
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "SecretString is not a JSON object (it is {})",
            super::schema::json_type_name(&other)
        )),
        Err(e) => Err(format!(
            "SecretString is not valid JSON (error at line {}, column {})",
            e.line(),
            e.column()
        )),
    }
}

#[cfg_attr(not(feature = "aws"), allow(dead_code))]
/// The distinct ARNs referenced by `config`, in a stable order.
pub(crate) fn aws_arns(config: &Config) -> Vec<String> {
    let mut arns: Vec<String> = config
        .databases
        .values()
        .flat_map(|d| &d.users)
        .flat_map(|u| [&u.username, &u.password])
        .filter_map(|s| s.aws_secret_arn.clone())
        .collect();
    arns.sort();
    arns.dedup();
    arns
}

/// Resolves every secret of `config`; AWS values come from `external`. Reports every problem.
pub(crate) fn resolve_with(
    config: &Config,
    external: &ExternalSecrets,
) -> Result<ResolvedSecrets, SecretsError> {
    let mut problems = Vec::new();
    let mut databases = BTreeMap::new();
    for (name, db) in &config.databases {
        let mut users: Vec<ResolvedUser> = Vec::with_capacity(db.users.len());
        // Each username once, with the path of its first appearance.
        let mut seen: HashMap<String, &str> = HashMap::with_capacity(db.users.len());
        for user in &db.users {
            let username =
                resolve_one(&user.username, &format!("{}.username", user.path), external);
            let password =
                resolve_one(&user.password, &format!("{}.password", user.path), external);
            match (username, password) {
                (Ok(username), Ok(password)) => {
                    match seen.get(username.as_str()) {
                        Some(&first) => problems.push(Problem::new(
                            format!("{}.username", user.path),
                            format!("duplicate username: same as {first}.username"),
                        )),
                        None => {
                            seen.insert(username.clone(), user.path.as_str());
                        }
                    }
                    users.push(ResolvedUser {
                        username,
                        password,
                        path: user.path.clone(),
                    });
                }
                (u, p) => problems.extend(u.err().into_iter().chain(p.err())),
            }
        }
        databases.insert(name.clone(), users);
    }
    if problems.is_empty() {
        Ok(ResolvedSecrets { databases })
    } else {
        Err(SecretsError { problems })
    }
}

fn resolve_one(
    secret: &SecretRef,
    path: &str,
    external: &ExternalSecrets,
) -> Result<String, Problem> {
    let fail = |message: String| Problem::new(path, message);
    let value = match secret.source() {
        None => return Err(fail("invalid secret reference".into())),
        Some(SecretSource::Insecure(v)) => v.to_owned(),
        Some(SecretSource::EnvVar(name)) => match std::env::var(name) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(fail(format!("environment variable {name} is not set")));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(fail(format!(
                    "environment variable {name} is not valid UTF-8"
                )));
            }
        },
        Some(SecretSource::Aws { arn, key }) => match external.get(arn) {
            None => return Err(fail(format!("AWS secret {arn} was not fetched"))),
            Some(Err(why)) => return Err(fail(format!("AWS secret {arn}: {why}"))),
            Some(Ok(doc)) => match doc.get(key) {
                None => return Err(fail(format!("AWS secret {arn} has no key {key:?}"))),
                Some(Value::String(v)) => v.clone(),
                Some(other) => {
                    return Err(fail(format!(
                        "AWS secret {arn}: key {key:?} holds {}, expected a string",
                        super::schema::json_type_name(other)
                    )));
                }
            },
        },
    };
    if value.is_empty() {
        return Err(fail("the secret is empty".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(users: &str) -> Config {
        let text = format!(
            r#"{{"databases": {{"mydb": {{"users": {users},
              "backend": {{"host": "h", "database": "d", "pool_max_conns": 10}}}}}}}}"#
        );
        crate::config::parse(&text).unwrap().config
    }

    #[test]
    fn insecure_and_env() {
        let c = config(
            r#"[{"username": {"insecure_value": "alice"}, "password": {"env_var": "PATH"}}]"#,
        );
        let r = resolve_with(&c, &HashMap::new()).unwrap();
        let u = &r.users("mydb")[0];
        assert_eq!(u.username, "alice");
        assert_eq!(u.password, std::env::var("PATH").unwrap());
        assert_eq!(u.path, "databases.mydb.users[0]");
        assert!(r.find("mydb", "alice").is_some());
        assert!(!format!("{u:?}").contains(&u.password));
    }

    #[test]
    fn unset_env_names_variable_and_path() {
        let c = config(
            r#"[{"username": {"insecure_value": "a"}, "password": {"env_var": "PGLINK_SURELY_UNSET_VAR"}},
                {"username": {"env_var": "PGLINK_SURELY_UNSET_VAR2"}, "password": {"insecure_value": "x"}}]"#,
        );
        let e = resolve_with(&c, &HashMap::new()).unwrap_err();
        let lines: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "databases.mydb.users[0].password: environment variable PGLINK_SURELY_UNSET_VAR is not set",
                "databases.mydb.users[1].username: environment variable PGLINK_SURELY_UNSET_VAR2 is not set",
            ]
        );
    }

    fn aws_config() -> Config {
        let mut c = config(
            r#"[{"username": {"insecure_value": "a"}, "password": {"insecure_value": "b"}}]"#,
        );
        let db = c.databases.get_mut("mydb").unwrap();
        let mut user = db.users[0].clone();
        user.username = SecretRef {
            aws_secret_arn: Some("arn:x".into()),
            key: Some("username".into()),
            ..SecretRef::default()
        };
        user.password = SecretRef {
            aws_secret_arn: Some("arn:x".into()),
            key: Some("password".into()),
            ..SecretRef::default()
        };
        user.path = "databases.mydb.users[1]".into();
        db.users.push(user);
        c
    }

    fn doc(text: &str) -> Result<Map<String, Value>, String> {
        parse_secret_document(Ok(FetchedSecret {
            string: Some(text.into()),
            has_binary: false,
        }))
    }

    #[test]
    fn aws_documents() {
        let c = aws_config();
        assert_eq!(aws_arns(&c), vec!["arn:x".to_string()]);
        let mut ext = ExternalSecrets::new();
        ext.insert(
            "arn:x".into(),
            doc(r#"{"username":"bob","password":"s3cret"}"#),
        );
        let r = resolve_with(&c, &ext).unwrap();
        assert_eq!(r.users("mydb")[1].password, "s3cret");

        let cases = [
            (
                doc(r#"{"username":"bob"}"#),
                "databases.mydb.users[1].password: AWS secret arn:x has no key \"password\"",
            ),
            (
                doc(r#"{"username":"bob","password":5}"#),
                "databases.mydb.users[1].password: AWS secret arn:x: key \"password\" holds a number, expected a string",
            ),
            (
                doc("s3cret-not-json"),
                "databases.mydb.users[1].username: AWS secret arn:x: SecretString is not valid JSON (error at line 1, column 1)",
            ),
            (
                doc("[1]"),
                "databases.mydb.users[1].username: AWS secret arn:x: SecretString is not a JSON object (it is an array)",
            ),
            (
                parse_secret_document(Ok(FetchedSecret {
                    string: None,
                    has_binary: true,
                })),
                "databases.mydb.users[1].username: AWS secret arn:x: holds only SecretBinary; pglink needs a SecretString containing a JSON object",
            ),
            (
                doc(r#"{"username":"a","password":"p"}"#),
                "databases.mydb.users[1].username: duplicate username: same as databases.mydb.users[0].username",
            ),
        ];
        for (d, want) in cases {
            ext.insert("arn:x".into(), d);
            let e = resolve_with(&c, &ext).unwrap_err();
            let lines: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
            assert!(
                lines.iter().any(|l| l == want),
                "{want:?} not in {lines:#?}"
            );
            assert!(!lines.join("\n").contains("s3cret"));
        }
    }

    #[test]
    fn watcher_without_external_secrets() {
        let c = config(
            r#"[{"username": {"insecure_value": "a"}, "password": {"insecure_value": "b"}}]"#,
        );
        let w = SecretsWatcher::start(&c, SecretsOptions::for_config(&c)).unwrap();
        assert!(!w.is_refreshing());
        assert_eq!(w.current().users("mydb")[0].username, "a");
        let dbg = format!("{w:?}");
        assert!(!dbg.contains("\"b\""), "{dbg}");
        w.stop();
    }

    #[test]
    fn publish_calls_back_only_on_change() {
        let shared = new_shared(ResolvedSecrets::default());
        let (tx, rx) = std::sync::mpsc::channel();
        *shared.on_change.lock().unwrap() = Some(Box::new(move |s: Arc<ResolvedSecrets>| {
            tx.send(s.databases.len()).unwrap();
        }));
        assert!(!shared.publish(ResolvedSecrets::default()));
        let mut next = ResolvedSecrets::default();
        next.databases.insert("x".into(), Vec::new());
        assert!(shared.publish(next));
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(rx.try_recv().is_err());
    }
}
