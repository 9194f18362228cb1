//! Configuration: the `pglink.json` model, its documentation, validation and secrets.
//!
//! Loading happens in passes, each collecting every problem it finds with the JSON path of the
//! offending value:
//!
//! 1. JSON syntax (`serde_json::Value`; errors carry line and column);
//! 2. `schema`: JSON types, ranges, enum values, durations, addresses and regexes, checked
//!    against the field table in [`docs`]; unknown keys become warnings; broken values are
//!    pruned so the next passes still see the rest; then defaults that depend on another
//!    field are filled in (`schema::imply_defaults`: libpq's `verify-full` for
//!    `sslrootcert` `"system"`);
//! 3. typed deserialization into [`Config`] (cannot fail after pass 2);
//! 4. `validate`: rules spanning several fields, files on disk, compiled-in features.
//!
//! Secrets are resolved afterwards, by [`SecretsWatcher`], because they may need the network.
//!
//! ```no_run
//! let parsed = pglink::config::load_file("pglink.json".as_ref()).unwrap();
//! let options = pglink::config::SecretsOptions::for_config(&parsed.config);
//! let secrets = pglink::config::SecretsWatcher::start(&parsed.config, options).unwrap();
//! for (db, users) in &secrets.current().databases {
//!     println!("{db}: {} users", users.len());
//! }
//! ```

pub mod docs;
pub mod duration;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzzing;
pub mod listen;
mod path;
mod render;
mod schema;
pub mod secrets;
mod types;
mod validate;

pub use validate::{ADMIN_DATABASE, parse_peer_id};

#[cfg(feature = "aws")]
mod aws;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use listen::{Listen, ListenAddr, ListenHost};
pub use path::{Path as JsonPath, Problem};
pub use secrets::{
    OnChange, ResolvedSecrets, ResolvedUser, SecretsError, SecretsOptions, SecretsWatcher,
};
pub use types::{
    AuthMethod, BackendConfig, BackendSslMode, BoolOrString, CertSource, Config,
    DEFAULT_APPLICATION_NAME_SQL_REGEX, DEFAULT_TRACEPARENT_SQL_REGEX, DatabaseConfig,
    FlightRecorderConfig, FlightRecorderTriggers, OpenTelemetryConfig, OtlpProtocol, PeerConfig,
    PrometheusConfig, REDACTED, SYSTEM_ROOT_CERT, SecretRef, SecretSource, SensitiveString,
    SslMode, TlsConfig, UserConfig,
};

/// A configuration that passed validation, with the warnings found on the way.
#[derive(Debug)]
pub struct ParsedConfig {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// An invalid configuration: every error found, plus the warnings.
#[derive(Debug)]
pub struct ConfigError {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates a configuration held in memory.
pub fn parse(text: &str) -> Result<ParsedConfig, ConfigError> {
    parse_named(text, "")
}

/// Reads, parses and validates a configuration file. File-level problems (unreadable, not
/// JSON) are reported with the file name as their path.
pub fn load_file(file: &Path) -> Result<ParsedConfig, ConfigError> {
    let name = file.display().to_string();
    match std::fs::read_to_string(file) {
        Ok(text) => parse_named(&text, &name),
        Err(e) => Err(ConfigError {
            errors: vec![Problem::new(name, format!("cannot read file: {e}"))],
            warnings: Vec::new(),
        }),
    }
}

/// Validates a configuration given as a JSON value (what `pglink.json` holds).
pub fn parse_value(value: serde_json::Value) -> Result<ParsedConfig, ConfigError> {
    check_value(value)
}

fn parse_named(text: &str, name: &str) -> Result<ParsedConfig, ConfigError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ConfigError {
        errors: vec![syntax_problem(&e, name)],
        warnings: Vec::new(),
    })?;
    check_value(value)
}

fn check_value(mut value: serde_json::Value) -> Result<ParsedConfig, ConfigError> {
    let mut problems = path::Problems::default();
    if !schema::check_root(&mut value, &mut problems) {
        return Err(ConfigError {
            errors: problems.errors,
            warnings: problems.warnings,
        });
    }
    schema::imply_defaults(&mut value);
    match serde_json::from_value::<Config>(value) {
        Ok(mut config) => {
            config.assign_paths();
            validate::validate(&config, &mut problems);
            if problems.errors.is_empty() {
                return Ok(ParsedConfig {
                    config,
                    warnings: problems.warnings,
                });
            }
        }
        // The schema pass should make this unreachable; report rather than panic.
        Err(e) => problems.error("", format!("internal error reading the configuration: {e}")),
    }
    Err(ConfigError {
        errors: problems.errors,
        warnings: problems.warnings,
    })
}

fn syntax_problem(e: &serde_json::Error, name: &str) -> Problem {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&suffix).unwrap_or(&full);
    Problem::new(
        name,
        format!(
            "invalid JSON at line {}, column {}: {reason}",
            e.line(),
            e.column()
        ),
    )
}

/// The ways to get a [`Config`] for [`crate::Server::start`]: every one validates it as
/// `pglink -check` does and logs its warnings (unknown keys, for instance) through the `log`
/// facade.
///
/// ```
/// let config = pglink::Config::from_value(serde_json::json!({
///     "listen": "127.0.0.1:0",
///     "databases": {
///         "app": {
///             "users": [{
///                 "username": { "insecure_value": "app" },
///                 "password": { "insecure_value": "secret" }
///             }],
///             "backend": {
///                 "host": "127.0.0.1", "port": 5432, "database": "app", "pool_max_conns": 10
///             }
///         }
///     }
/// }))?;
/// assert!(config.databases.contains_key("app"));
///
/// let text = r#"{"listen": "127.0.0.1:0", "databases": {}}"#;
/// let invalid = pglink::Config::from_json(text).unwrap_err();
/// assert!(invalid.to_string().contains("databases"));
/// # Ok::<(), pglink::ConfigError>(())
/// ```
impl Config {
    /// Reads and validates a `pglink.json` file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        load_file(path.as_ref()).map(ParsedConfig::logged)
    }

    /// Validates a configuration written as JSON text.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        parse(text).map(ParsedConfig::logged)
    }

    /// Validates a configuration given as a JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Config, ConfigError> {
        parse_value(value).map(ParsedConfig::logged)
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_json(text)
    }
}

impl ParsedConfig {
    /// The configuration, its warnings logged.
    fn logged(self) -> Config {
        for w in &self.warnings {
            log::warn!("config: {w}");
        }
        self.config
    }
}

/// Why [`LoadedConfig::load`] failed.
#[derive(Debug)]
pub enum LoadError {
    /// The configuration is invalid (exit status 2).
    Config(ConfigError),
    /// A secret could not be read (exit status 1).
    Secrets(SecretsError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(e) => e.fmt(f),
            LoadError::Secrets(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

/// A validated configuration with its secrets resolved and, when secrets come from AWS, a
/// watcher that keeps them fresh. This is what the server is started with.
pub struct LoadedConfig {
    /// The file it was read from (for reloads).
    pub path: PathBuf,
    pub config: Arc<Config>,
    pub warnings: Vec<Problem>,
    pub secrets: SecretsWatcher,
}

impl LoadedConfig {
    /// Loads `file`, validates it and resolves every secret (blocking, bounded by
    /// `options.initial_timeout`).
    pub fn load(file: &Path, options: Option<SecretsOptions>) -> Result<LoadedConfig, LoadError> {
        let parsed = load_file(file).map_err(LoadError::Config)?;
        Self::from_parsed(file, parsed, options)
    }

    /// Resolves the secrets of an already validated configuration.
    pub fn from_parsed(
        file: &Path,
        parsed: ParsedConfig,
        options: Option<SecretsOptions>,
    ) -> Result<LoadedConfig, LoadError> {
        let options = options.unwrap_or_else(|| SecretsOptions::for_config(&parsed.config));
        let secrets = SecretsWatcher::start(&parsed.config, options).map_err(LoadError::Secrets)?;
        Ok(LoadedConfig {
            path: file.to_path_buf(),
            config: Arc::new(parsed.config),
            warnings: parsed.warnings,
            secrets,
        })
    }
}

impl fmt::Debug for LoadedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedConfig")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
