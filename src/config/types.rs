//! The typed `pglink.json` model.
//!
//! Every struct here mirrors one section of the field table in [`super::docs`]; the table is what
//! users read (`-help`, README) and what the loader checks unknown keys and JSON types against.
//! A test (`tests/config_table.rs`) keeps the two in step. Defaults live in the `default_*`
//! functions below and are the values the table documents.
//!
//! `Serialize` prints an equivalent config (durations in canonical form, sensitive strings as
//! `"<redacted>"`); `Debug` never shows secret values either.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::serde_duration;
use super::listen::{Listen, ListenAddr, serde_list};

/// What `Serialize` and `Debug` print instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// The whole `pglink.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_listen", with = "serde_list")]
    pub listen: Vec<Listen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub databases: BTreeMap<String, DatabaseConfig>,
    #[serde(default)]
    pub auth_method: AuthMethod,
    #[serde(default = "default_scram_iterations")]
    pub scram_iterations: u32,
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_recorder: Option<FlightRecorderConfig>,
    /// pglink extension: reactor (event loop) threads; 0 = one per CPU core.
    #[serde(default)]
    pub reactor_threads: usize,
    /// pglink extension: time a client has to finish startup and authentication.
    #[serde(default = "default_client_login_timeout", with = "serde_duration")]
    pub client_login_timeout: Duration,
    /// pglink extension: the most connections still logging in at the same time.
    #[serde(default = "default_max_logins_in_progress")]
    pub max_logins_in_progress: u32,
    /// pglink extension: how often secrets from external stores are fetched again; 0 = never.
    #[serde(default = "default_secret_refresh_interval", with = "serde_duration")]
    pub secret_refresh_interval: Duration,
    /// pglink extension: how long open transactions may run on after SIGTERM or SIGINT.
    #[serde(default = "default_shutdown_timeout", with = "serde_duration")]
    pub shutdown_timeout: Duration,
    /// pglink extension: users who may log in to the admin console (database `pglink`).
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// pglink extension: this instance's id among its peers, carried in its cancel keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<u16>,
    /// pglink extension: where cancels for other instances' keys go, by `peer_id`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, PeerConfig>,
    /// pglink extension: SO_REUSEPORT, so that several instances share a port.
    #[serde(default)]
    pub listen_reuse_port: bool,
}

/// `peers.<id>`: another pglink instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerConfig {
    pub address: Listen,
    #[serde(default)]
    pub sslmode: BackendSslMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
}

/// `tls`: TLS towards clients.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsConfig {
    #[serde(default)]
    pub sslmode: SslMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_private_key_path: Option<PathBuf>,
    #[serde(default)]
    pub generate_cert: bool,
}

/// Where the client-facing certificate comes from; see [`Config::client_tls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertSource<'a> {
    /// `sslmode` is `disable`: no certificate needed.
    Disabled,
    /// Generate a self-signed certificate in memory at startup.
    GenerateInMemory,
    /// Load these PEM files. With `generate_if_missing`, generate a self-signed certificate and
    /// write it there first when neither file exists (key file mode 0600).
    Files {
        cert: &'a Path,
        key: &'a Path,
        generate_if_missing: bool,
    },
}

/// `databases.<name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatabaseConfig {
    pub users: Vec<UserConfig>,
    pub backend: BackendConfig,
    #[serde(default = "default_pool_acquire_timeout_ms")]
    pub pool_acquire_timeout_milliseconds: u64,
    #[serde(default)]
    pub track_extra_parameters: Vec<String>,
    /// The key of this database in `databases` (what clients put in `dbname`).
    #[serde(skip)]
    pub name: String,
    /// JSON path of this entry, e.g. `databases.mydb`, for messages.
    #[serde(skip)]
    pub path: String,
}

/// `databases.<name>.users[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserConfig {
    pub username: SecretRef,
    pub password: SecretRef,
    /// JSON path of this entry, e.g. `databases.mydb.users[0]`, for messages.
    #[serde(skip)]
    pub path: String,
}

/// Where a secret comes from. Exactly one source is set once the config is validated.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_redacted_opt"
    )]
    pub insecure_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_var: Option<String>,
}

/// A validated [`SecretRef`], borrowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SecretSource<'a> {
    Insecure(&'a str),
    EnvVar(&'a str),
    Aws { arn: &'a str, key: &'a str },
}

impl SecretRef {
    /// The one configured source, or `None` if the reference is not valid (zero or several
    /// sources, or an ARN without `key`). Validation reports those cases.
    pub fn source(&self) -> Option<SecretSource<'_>> {
        match (
            &self.insecure_value,
            &self.env_var,
            &self.aws_secret_arn,
            &self.key,
        ) {
            (Some(v), None, None, None) => Some(SecretSource::Insecure(v)),
            (None, Some(v), None, None) => Some(SecretSource::EnvVar(v)),
            (None, None, Some(arn), Some(key)) => Some(SecretSource::Aws { arn, key }),
            _ => None,
        }
    }
}

impl fmt::Debug for SecretSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Insecure(_) => write!(f, "Insecure({REDACTED})"),
            SecretSource::EnvVar(name) => f.debug_tuple("EnvVar").field(name).finish(),
            SecretSource::Aws { arn, key } => f
                .debug_struct("Aws")
                .field("arn", arn)
                .field("key", key)
                .finish(),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SecretRef");
        if let Some(arn) = &self.aws_secret_arn {
            d.field("aws_secret_arn", arn);
        }
        if let Some(key) = &self.key {
            d.field("key", key);
        }
        if self.insecure_value.is_some() {
            d.field("insecure_value", &format_args!("{REDACTED}"));
        }
        if let Some(var) = &self.env_var {
            d.field("env_var", var);
        }
        d.finish()
    }
}

/// A configuration string that must not be printed (e.g. `sslpassword`).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SensitiveString(String);

impl SensitiveString {
    pub fn new(value: impl Into<String>) -> Self {
        SensitiveString(value.into())
    }
    /// The secret itself; do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SensitiveString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for SensitiveString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

fn serialize_redacted_opt<S: serde::Serializer>(
    value: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// `databases.<name>.backend`: the PostgreSQL server behind a database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendConfig {
    pub host: String,
    #[serde(default = "default_backend_port")]
    pub port: u16,
    pub database: String,
    /// 0 = wait as long as the OS does.
    #[serde(default = "default_connect_timeout", with = "serde_duration")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub sslmode: BackendSslMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslpassword: Option<SensitiveString>,
    #[serde(default = "default_cache_capacity")]
    pub statement_cache_capacity: usize,
    #[serde(default = "default_cache_capacity")]
    pub description_cache_capacity: usize,
    #[serde(default = "default_prepared_statement_cache_size")]
    pub prepared_statement_cache_size: usize,
    /// pglink extension: the unnamed statement is shared like named ones.
    #[serde(default)]
    pub cache_unnamed_statements: bool,
    pub pool_max_conns: u32,
    #[serde(default)]
    pub pool_min_idle_conns: u32,
    /// 0 = connections live forever.
    #[serde(default = "default_pool_max_conn_lifetime", with = "serde_duration")]
    pub pool_max_conn_lifetime: Duration,
    #[serde(default, with = "serde_duration")]
    pub pool_max_conn_lifetime_jitter: Duration,
    /// 0 = idle connections are never closed for idleness.
    #[serde(default = "default_pool_max_conn_idle_time", with = "serde_duration")]
    pub pool_max_conn_idle_time: Duration,
    /// 0 = no health checks.
    #[serde(default = "default_pool_health_check_period", with = "serde_duration")]
    pub pool_health_check_period: Duration,
    #[serde(default)]
    pub default_startup_parameters: BTreeMap<String, String>,
}

/// `flight_recorder`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlightRecorderConfig {
    #[serde(default = "default_min_age", with = "serde_duration")]
    pub min_age: Duration,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    pub output_dir: PathBuf,
    /// 0 = no periodic snapshots.
    #[serde(default, with = "serde_duration")]
    pub periodic_interval: Duration,
    #[serde(default)]
    pub triggers: FlightRecorderTriggers,
}

/// `flight_recorder.triggers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightRecorderTriggers {
    /// 0 = disabled.
    #[serde(default)]
    pub on_slow_query_ms: u64,
    #[serde(default)]
    pub on_error: bool,
    #[serde(default = "yes")]
    pub on_signal: bool,
    #[serde(default = "default_cooldown", with = "serde_duration")]
    pub cooldown: Duration,
}

impl Default for FlightRecorderTriggers {
    fn default() -> Self {
        FlightRecorderTriggers {
            on_slow_query_ms: 0,
            on_error: false,
            on_signal: true,
            cooldown: default_cooldown(),
        }
    }
}

/// `opentelemetry`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenTelemetryConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: f64,
    #[serde(default)]
    pub include_query_text: bool,
    #[serde(default = "default_traceparent_parameter")]
    pub traceparent_startup_parameter: String,
    /// Required when `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent_sql_regex: Option<BoolOrString>,
    #[serde(default = "bool_or_string_false")]
    pub application_name_sql_regex: BoolOrString,
}

/// Default pattern for `traceparent_sql_regex: true`: a `/*traceparent='…'*/` comment.
pub const DEFAULT_TRACEPARENT_SQL_REGEX: &str = r"/\*\s*traceparent\s*=\s*'([^']+)'\s*\*/";

/// Default pattern for `application_name_sql_regex: true`: an `/*application_name='…'*/`
/// comment, or a `SET application_name = '…'` / `TO '…'` statement. Use the first group that
/// matched.
/// (Case-insensitive keywords use `(?i-u:…)`: the `regex` build has no Unicode case tables.)
pub const DEFAULT_APPLICATION_NAME_SQL_REGEX: &str = r"/\*\s*application_name\s*=\s*'([^']+)'\s*\*/|^\s*(?i-u:set)\s+(?:(?i-u:session|local)\s+)?(?i-u:application_name)\s*(?:=|(?i-u:to))\s*'([^']*)'";

impl OpenTelemetryConfig {
    /// The compiled traceparent extraction regex, `None` when disabled.
    pub fn traceparent_regex(&self) -> Option<regex::Regex> {
        self.traceparent_sql_regex
            .as_ref()
            .and_then(|r| r.compile(DEFAULT_TRACEPARENT_SQL_REGEX))
    }
    /// The compiled application_name extraction regex, `None` when disabled.
    pub fn application_name_regex(&self) -> Option<regex::Regex> {
        self.application_name_sql_regex
            .compile(DEFAULT_APPLICATION_NAME_SQL_REGEX)
    }
}

/// `true` (use the built-in pattern), `false` (off) or a custom regular expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BoolOrString {
    Bool(bool),
    String(String),
}

impl BoolOrString {
    /// The pattern in effect: `None` for `false`, `default` for `true`.
    pub fn pattern<'a>(&'a self, default: &'a str) -> Option<&'a str> {
        match self {
            BoolOrString::Bool(false) => None,
            BoolOrString::Bool(true) => Some(default),
            BoolOrString::String(s) => Some(s),
        }
    }
    /// Compiles [`Self::pattern`]; validated configs always compile.
    pub fn compile(&self, default: &str) -> Option<regex::Regex> {
        self.pattern(default)
            .and_then(|p| regex::Regex::new(p).ok())
    }
}

/// `prometheus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrometheusConfig {
    #[serde(default = "default_prometheus_listen")]
    pub listen: ListenAddr,
    #[serde(default = "default_prometheus_path")]
    pub path: String,
}

/// Declares a string enum with its JSON spelling, `FromStr`, `as_str` and serde support.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }
        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The spelling used in `pglink.json`.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(()) }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// `auth_method`: how clients prove who they are.
    AuthMethod, {
        Plaintext = "plaintext",
        Md5Password = "md5_password",
        #[default]
        ScramSha256 = "scram-sha-256",
    }
);

string_enum!(
    /// `tls.sslmode`: TLS policy towards clients (pglink acting as the server).
    SslMode, {
        Disable = "disable",
        Allow = "allow",
        #[default]
        Prefer = "prefer",
        Require = "require",
    }
);

string_enum!(
    /// `backend.sslmode`: libpq's sslmode, pglink acting as the client.
    BackendSslMode, {
        Disable = "disable",
        Allow = "allow",
        #[default]
        Prefer = "prefer",
        Require = "require",
        VerifyCa = "verify-ca",
        VerifyFull = "verify-full",
    }
);

string_enum!(
    /// `opentelemetry.otlp_protocol`.
    OtlpProtocol, {
        #[default]
        Grpc = "grpc",
        Http = "http",
    }
);

impl SslMode {
    /// False only for `disable`.
    pub fn tls_enabled(self) -> bool {
        self != SslMode::Disable
    }
}

impl Config {
    /// TLS mode towards clients: `tls.sslmode`, or `prefer` when `tls` is absent.
    pub fn client_sslmode(&self) -> SslMode {
        self.tls.as_ref().map_or(SslMode::Prefer, |t| t.sslmode)
    }

    /// Where the client-facing certificate comes from.
    pub fn client_tls(&self) -> CertSource<'_> {
        match &self.tls {
            None => CertSource::GenerateInMemory,
            Some(t) if t.sslmode == SslMode::Disable => CertSource::Disabled,
            Some(t) => match (&t.cert_path, &t.cert_private_key_path) {
                (Some(cert), Some(key)) => CertSource::Files {
                    cert,
                    key,
                    generate_if_missing: t.generate_cert,
                },
                _ => CertSource::GenerateInMemory,
            },
        }
    }

    /// The addresses and unix sockets to listen on (never empty once validated).
    pub fn listen_addrs(&self) -> &[Listen] {
        &self.listen
    }

    /// Reactor threads to start: `reactor_threads`, or the number of CPUs when 0.
    pub fn effective_reactor_threads(&self) -> usize {
        match self.reactor_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// `secret_refresh_interval`, `None` when refreshing is off.
    pub fn secret_refresh(&self) -> Option<Duration> {
        nonzero(self.secret_refresh_interval)
    }

    /// Whether any secret comes from AWS Secrets Manager.
    pub fn uses_aws_secrets(&self) -> bool {
        self.databases
            .values()
            .flat_map(|d| &d.users)
            .any(|u| u.username.aws_secret_arn.is_some() || u.password.aws_secret_arn.is_some())
    }

    /// Fills in the `name`/`path` bookkeeping fields after deserialization.
    pub(crate) fn assign_paths(&mut self) {
        for (name, db) in &mut self.databases {
            db.name.clone_from(name);
            db.path = super::path::Path::root()
                .key("databases")
                .key(name)
                .to_string();
            for (i, user) in db.users.iter_mut().enumerate() {
                user.path = format!("{}.users[{i}]", db.path);
            }
        }
    }
}

impl DatabaseConfig {
    /// `pool_acquire_timeout_milliseconds` as a `Duration`.
    pub fn pool_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_acquire_timeout_milliseconds)
    }
}

/// The `backend.sslrootcert` value that means the platform's trust store (libpq's
/// `sslrootcert=system`); like libpq, it wins over a file of that name (write `./system`).
pub const SYSTEM_ROOT_CERT: &str = crate::tls::SYSTEM_ROOT_CERT;

impl BackendConfig {
    /// `sslrootcert` is `"system"`: the server certificate is checked against the platform's
    /// trust store, and only `sslmode` `verify-full` is allowed.
    pub fn uses_system_roots(&self) -> bool {
        self.sslrootcert
            .as_deref()
            .is_some_and(|p| p.as_os_str() == SYSTEM_ROOT_CERT)
    }

    /// `connect_timeout`, `None` when 0 (no timeout).
    pub fn connect_timeout(&self) -> Option<Duration> {
        nonzero(self.connect_timeout)
    }
    /// `pool_max_conn_lifetime`, `None` when 0 (unlimited).
    pub fn max_conn_lifetime(&self) -> Option<Duration> {
        nonzero(self.pool_max_conn_lifetime)
    }
    /// `pool_max_conn_idle_time`, `None` when 0 (unlimited).
    pub fn max_conn_idle_time(&self) -> Option<Duration> {
        nonzero(self.pool_max_conn_idle_time)
    }
    /// `pool_health_check_period`, `None` when 0 (no checks).
    pub fn health_check_period(&self) -> Option<Duration> {
        nonzero(self.pool_health_check_period)
    }
}

impl FlightRecorderConfig {
    /// `periodic_interval`, `None` when 0 (off).
    pub fn periodic(&self) -> Option<Duration> {
        nonzero(self.periodic_interval)
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn default_listen() -> Vec<Listen> {
    vec![Listen::Tcp(ListenAddr {
        host: super::listen::ListenHost::All,
        port: 16432,
    })]
}
fn default_scram_iterations() -> u32 {
    4096
}
fn default_max_client_connections() -> u32 {
    1000
}
fn default_max_logins_in_progress() -> u32 {
    256
}
fn default_client_login_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_secret_refresh_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_acquire_timeout_ms() -> u64 {
    1000
}
fn default_backend_port() -> u16 {
    5432
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_cache_capacity() -> usize {
    512
}
fn default_prepared_statement_cache_size() -> usize {
    1000
}
fn default_pool_max_conn_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_pool_max_conn_idle_time() -> Duration {
    Duration::from_secs(1800)
}
fn default_pool_health_check_period() -> Duration {
    Duration::from_secs(60)
}
fn default_min_age() -> Duration {
    Duration::from_secs(10)
}
fn default_max_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_cooldown() -> Duration {
    Duration::from_secs(60)
}
fn yes() -> bool {
    true
}
fn default_service_name() -> String {
    "pglink".into()
}
fn default_sampling_rate() -> f64 {
    1.0
}
fn default_traceparent_parameter() -> String {
    "traceparent".into()
}
fn bool_or_string_false() -> BoolOrString {
    BoolOrString::Bool(false)
}
fn default_prometheus_listen() -> ListenAddr {
    ListenAddr {
        host: super::listen::ListenHost::All,
        port: 9090,
    }
}
fn default_prometheus_path() -> String {
    "/metrics".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = SecretRef {
            insecure_value: Some("hunter2".into()),
            ..SecretRef::default()
        };
        let dbg = format!("{s:?} {:?}", s.source());
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains(REDACTED));
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        let pw = SensitiveString::new("hunter2");
        assert_eq!(format!("{pw:?}"), REDACTED);
        assert_eq!(pw.expose(), "hunter2");
    }

    #[test]
    fn secret_source() {
        let env = SecretRef {
            env_var: Some("X".into()),
            ..SecretRef::default()
        };
        assert_eq!(env.source(), Some(SecretSource::EnvVar("X")));
        let aws = SecretRef {
            aws_secret_arn: Some("arn".into()),
            key: Some("k".into()),
            ..SecretRef::default()
        };
        assert_eq!(
            aws.source(),
            Some(SecretSource::Aws {
                arn: "arn",
                key: "k"
            })
        );
        let both = SecretRef {
            env_var: Some("X".into()),
            insecure_value: Some("v".into()),
            ..SecretRef::default()
        };
        assert_eq!(both.source(), None);
        assert_eq!(SecretRef::default().source(), None);
    }

    #[test]
    fn enums_round_trip() {
        for m in AuthMethod::ALL {
            assert_eq!(m.as_str().parse::<AuthMethod>(), Ok(*m));
            let json = serde_json::to_value(m).unwrap();
            assert_eq!(json, m.as_str());
        }
        assert_eq!(AuthMethod::default(), AuthMethod::ScramSha256);
        assert_eq!(SslMode::default(), SslMode::Prefer);
        assert_eq!(BackendSslMode::default(), BackendSslMode::Prefer);
        assert_eq!(
            "verify-full".parse::<BackendSslMode>(),
            Ok(BackendSslMode::VerifyFull)
        );
        assert!("scram-sha-256-plus".parse::<AuthMethod>().is_err());
    }

    #[test]
    fn default_regexes_capture() {
        let tp = regex::Regex::new(DEFAULT_TRACEPARENT_SQL_REGEX).unwrap();
        let c = tp
            .captures("SELECT 1 /*traceparent='00-abc-def-01'*/")
            .unwrap();
        assert_eq!(&c[1], "00-abc-def-01");
        let an = regex::Regex::new(DEFAULT_APPLICATION_NAME_SQL_REGEX).unwrap();
        let c = an.captures("set application_name to 'web'").unwrap();
        assert_eq!(c.get(2).unwrap().as_str(), "web");
        let c = an
            .captures("SELECT 1 /* application_name='job' */")
            .unwrap();
        assert_eq!(c.get(1).unwrap().as_str(), "job");
    }
}
