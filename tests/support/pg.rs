//! [`PgServer`]: a real PostgreSQL in a temporary directory, with TLS and the test roles.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::certs::TestCerts;
use super::cluster::{
    copy_template, hba_conf, panic_message, path_str, quote_literal, setup_sql, write_file,
};
use super::process::{self, ServerUser, binaries, server_user};
use super::workdir::Workdir;
use super::{ADMIN_DATABASE, CERT_USER, PSQL_TIMEOUT, SUPERUSER, TEST_DATABASE, TestUser};

/// Attempts at finding a free port before giving up.
const PORT_ATTEMPTS: usize = 8;
/// How long a start or a fast shutdown may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`PgServer::start_with`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `max_connections` (default 200).
    pub max_connections: u32,
    /// Extra `postgresql.conf` settings, written after (so overriding) the harness's own.
    /// Values are quoted for you: `("log_statement", "all")`.
    pub settings: Vec<(String, String)>,
    /// `ssl = on` (default). Off, the server answers SSLRequest with 'N' and the TLS-only
    /// roles cannot log in.
    pub ssl: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 200,
            settings: Vec::new(),
            ssl: true,
        }
    }
}

impl PgOptions {
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    pub fn without_ssl(mut self) -> Self {
        self.ssl = false;
        self
    }

    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// libpq `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A throwaway PostgreSQL server (see the module docs of `support`).
///
/// Layout of [`dir`](Self::dir): `data/` (cluster), `sock/` (unix socket), `certs/`,
/// `postgres.log`. The server listens on `127.0.0.1:<port()>` and the unix socket.
#[derive(Debug)]
pub struct PgServer {
    /// Dropping it stops the server and removes the directory.
    workdir: Workdir,
    port: u16,
    options: PgOptions,
    certs: TestCerts,
    start_time: Duration,
}

impl PgServer {
    /// The server shared by every test of this binary, started on first use (thread-safe).
    /// Never stop or restart it: take your own with [`PgServer::start`] for that.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            panic::catch_unwind(PgServer::start).map_err(|e| panic_message(e.as_ref()))
        });
        match started {
            Ok(pg) => pg,
            Err(why) => panic!("the shared PostgreSQL failed to start: {why}"),
        }
    }

    /// A new server with default options.
    pub fn start() -> PgServer {
        PgServer::start_with(PgOptions::default())
    }

    /// A new server. Panics with the reason (and the server log) if it cannot start.
    pub fn start_with(options: PgOptions) -> PgServer {
        let began = Instant::now();
        binaries(); // fail first, and clearly, when PostgreSQL is not installed
        let user = server_user();
        let workdir = Workdir::create(user, "");
        copy_template(user, &workdir.data_dir());
        let certs = TestCerts::generate(CERT_USER.name);
        let mut server = PgServer {
            workdir,
            port: 0,
            options,
            certs,
            start_time: Duration::ZERO,
        };
        server.write_files(user);
        server.start_on_free_port();
        server.setup_roles();
        server.start_time = began.elapsed();
        server
    }

    // ---- where it is ------------------------------------------------------------------

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCP address it listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `host:port`, e.g. for a proxy's backend address.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    /// Directory of the unix socket `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir().join("sock")
    }

    /// The temporary directory holding everything of this server.
    pub fn dir(&self) -> &Path {
        self.workdir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.workdir.data_dir()
    }

    pub fn database(&self) -> &'static str {
        TEST_DATABASE
    }

    pub fn admin_database(&self) -> &'static str {
        ADMIN_DATABASE
    }

    /// How long [`start_with`](Self::start_with) took (copying the initdb template, certificates,
    /// start, roles).
    pub fn start_time(&self) -> Duration {
        self.start_time
    }

    // ---- certificates ------------------------------------------------------------------

    pub fn certs(&self) -> &TestCerts {
        &self.certs
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir().join("certs/ca.crt")
    }

    pub fn server_cert_path(&self) -> PathBuf {
        self.dir().join("certs/server.crt")
    }

    pub fn server_key_path(&self) -> PathBuf {
        self.dir().join("certs/server.key")
    }

    /// Client certificate for [`CERT_USER`](super::CERT_USER).
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir().join("certs/client.crt")
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.dir().join("certs/client.key")
    }

    /// DER of the certificate the server presents (for `tls-server-end-point` hashes).
    pub fn server_cert_der(&self) -> &[u8] {
        &self.certs.server.cert_der
    }

    // ---- connection strings ------------------------------------------------------------

    /// `host=127.0.0.1 port=<port> user=<user> dbname=<db>`; libpq's default `sslmode`.
    pub fn dsn(&self, user: &str, db: &str) -> String {
        self.dsn_for_host(self.host(), user, db)
    }

    /// A DSN with `sslmode`; the verify modes add `sslrootcert=<CA>`, and `VerifyFull`
    /// connects to `host=localhost` so that the name check is exercised.
    pub fn dsn_ssl(&self, user: &str, db: &str, mode: SslMode) -> String {
        let host = if mode == SslMode::VerifyFull {
            "localhost"
        } else {
            self.host()
        };
        let mut dsn = format!(
            "{} sslmode={}",
            self.dsn_for_host(host, user, db),
            mode.as_str()
        );
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            dsn += &format!(
                " sslrootcert={}",
                quote_conninfo(&path_str(&self.ca_cert_path()))
            );
        }
        dsn
    }

    fn dsn_for_host(&self, host: &str, user: &str, db: &str) -> String {
        format!(
            "host={host} port={} user={} dbname={}",
            self.port,
            quote_conninfo(user),
            quote_conninfo(db)
        )
    }

    /// `sslcert=… sslkey=…` for the client certificate of [`CERT_USER`](super::CERT_USER).
    pub fn client_cert_params(&self) -> String {
        format!(
            "sslcert={} sslkey={}",
            quote_conninfo(&path_str(&self.client_cert_path())),
            quote_conninfo(&path_str(&self.client_key_path()))
        )
    }

    // ---- running SQL -------------------------------------------------------------------

    /// `psql` with the given arguments, connected by default (through `PGHOST` & co.) to the
    /// admin database as the superuser over the unix socket; arguments may override that.
    pub fn psql(&self, args: &[&str]) -> Output {
        let mut cmd = super::psql_command(None);
        cmd.env("PGHOST", self.socket_dir())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", ADMIN_DATABASE)
            .args(args);
        process::run_with_timeout(&mut cmd, PSQL_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run `sql` over TCP as `user` in [`TEST_DATABASE`]. `extra` is appended to the
    /// connection string and wins over the defaults (`"sslmode=require"`, `"dbname=postgres"`).
    pub fn psql_as(
        &self,
        user: &str,
        password: Option<&str>,
        sql: &str,
        extra: &str,
    ) -> Result<String, String> {
        let conninfo = format!("{} {extra}", self.dsn(user, TEST_DATABASE));
        super::run_psql(&conninfo, password, sql)
    }

    /// [`psql_as`](Self::psql_as) for a harness role, with its password.
    pub fn psql_user(&self, user: &TestUser, sql: &str, extra: &str) -> Result<String, String> {
        self.psql_as(user.name, user.password, sql, extra)
    }

    /// Run `sql` as the superuser over the unix socket in the admin database; panics on error.
    pub fn admin_sql(&self, sql: &str) -> String {
        self.admin_sql_in(ADMIN_DATABASE, sql)
    }

    /// [`admin_sql`](Self::admin_sql) in database `db`.
    pub fn admin_sql_in(&self, db: &str, sql: &str) -> String {
        let out = self.psql(&["-d", db, "-c", sql]);
        if !out.status.success() {
            panic!(
                "admin SQL failed: {sql}\n{}\n--- server log tail ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string()
    }

    /// Number of client backends connected as `user` (any database).
    pub fn backend_count(&self, user: &str) -> usize {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND usename = {}",
            quote_literal(user)
        );
        self.admin_sql(&sql).parse().expect("count")
    }

    /// Process ids (as text) of the client backends of `user`.
    pub fn backend_pids(&self, user: &str) -> Vec<String> {
        let sql = format!(
            "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND usename = {}",
            quote_literal(user)
        );
        let pids = self.admin_sql(&sql);
        pids.split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether a session other than this check's own is running (state `active`) a statement
    /// whose text contains `mark` (see [`unique_mark`](super::unique_mark)).
    pub fn query_running(&self, mark: &str) -> bool {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND pid <> pg_backend_pid() AND position({} in query) > 0",
            quote_literal(mark)
        );
        self.admin_sql(&sql) != "0"
    }

    /// Waits (up to 10 s) until [`query_running`](Self::query_running): a cancel sent before
    /// the statement reached the server would find nothing to cancel.
    pub fn wait_for_query(&self, mark: &str) {
        super::wait_until(
            &format!("a statement marked {mark} to run"),
            Duration::from_secs(10),
            || self.query_running(mark),
        );
    }

    /// `pg_terminate_backend` every client backend of `user`; returns how many were signalled.
    pub fn terminate_backends(&self, user: &str) -> usize {
        let sql = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND usename = {}",
            quote_literal(user)
        );
        self.admin_sql(&sql).parse().expect("count")
    }

    // ---- the log -----------------------------------------------------------------------

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("postgres.log")
    }

    /// The whole server log (connections, disconnections, errors).
    pub fn log_contents(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Current length of the log, to pass to [`log_since`](Self::log_since) later.
    pub fn log_mark(&self) -> usize {
        fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize)
    }

    /// What was logged since `mark`.
    pub fn log_since(&self, mark: usize) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(log.get(mark..).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_contents();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    // ---- lifecycle ---------------------------------------------------------------------

    /// PID of the postmaster, if running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.workdir.postmaster_pid()
    }

    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Fast shutdown (SIGINT: sessions are disconnected, then a shutdown checkpoint); waits
    /// until stopped. No-op if not running.
    pub fn stop(&self) {
        self.workdir.stop_server("INT", START_TIMEOUT);
    }

    /// Immediate shutdown, like a crash (SIGQUIT to the postmaster); waits until gone.
    pub fn stop_immediate(&self) {
        self.workdir.kill_server();
    }

    /// Stop (fast) if running, then start again on the same port.
    pub fn restart(&self) {
        self.stop();
        if let Err(why) = self.try_start() {
            panic!("restart of PostgreSQL on port {} failed: {why}", self.port);
        }
    }

    // ---- internals ---------------------------------------------------------------------

    fn write_files(&self, user: &ServerUser) {
        let certs = self.dir().join("certs");
        let sock = self.socket_dir();
        for dir in [&certs, &sock] {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).expect("chmod");
            user.chown(dir);
        }
        let c = &self.certs;
        let server = Some(user);
        let files = [
            (self.ca_cert_path(), &c.ca_cert_pem, 0o644, None),
            (self.server_cert_path(), &c.server.cert_pem, 0o644, server),
            // PostgreSQL insists: owned by the server user, no access for others.
            (self.server_key_path(), &c.server.key_pem, 0o600, server),
            (self.client_cert_path(), &c.client.cert_pem, 0o644, None),
            // libpq insists on 0600 as well.
            (self.client_key_path(), &c.client.key_pem, 0o600, None),
            (
                self.data_dir().join("pg_hba.conf"),
                &hba_conf(),
                0o600,
                server,
            ),
        ];
        for (path, contents, mode, owner) in files {
            write_file(&path, contents, mode, owner);
        }
        let conf_path = self.data_dir().join("postgresql.conf");
        let conf = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        let conf = conf + "\ninclude 'pglink_harness.conf'\n";
        write_file(&conf_path, &conf, 0o600, server);
    }

    fn harness_conf(&self) -> String {
        let settings: Vec<(&str, String)> = vec![
            ("listen_addresses", "127.0.0.1".into()),
            ("port", self.port.to_string()),
            ("unix_socket_directories", path_str(&self.socket_dir())),
            ("max_connections", self.options.max_connections.to_string()),
            ("password_encryption", "scram-sha-256".into()),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            ("autovacuum", "off".into()),
            ("shared_buffers", "32MB".into()),
            ("timezone", "UTC".into()),
            ("log_timezone", "UTC".into()),
            ("log_connections", "on".into()),
            ("log_disconnections", "on".into()),
            ("log_line_prefix", "%m [%p] %q%u@%d/%a ".into()),
            ("ssl", if self.options.ssl { "on" } else { "off" }.into()),
            ("ssl_cert_file", path_str(&self.server_cert_path())),
            ("ssl_key_file", path_str(&self.server_key_path())),
            ("ssl_ca_file", path_str(&self.ca_cert_path())),
        ];
        let extra = self
            .options
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()));
        settings
            .into_iter()
            .chain(extra)
            .map(|(k, v)| format!("{k} = {}\n", quote_literal(&v)))
            .collect()
    }

    fn start_on_free_port(&mut self) {
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            match self.try_start() {
                Ok(()) => return,
                Err(why) if why.contains("Address already in use") => last_error = why,
                Err(why) => panic!("PostgreSQL did not start: {why}"),
            }
        }
        panic!(
            "PostgreSQL did not start, no free port after {PORT_ATTEMPTS} attempts: {last_error}"
        );
    }

    /// Spawn the postmaster on `self.port` (as a child, so it is reaped promptly) and wait
    /// until `postmaster.pid` says it is ready. Err carries the reason and the log tail.
    fn try_start(&self) -> Result<(), String> {
        let user = server_user();
        let conf = self.data_dir().join("pglink_harness.conf");
        write_file(&conf, &self.harness_conf(), 0o600, Some(user));
        // Not running, so any postmaster.pid is stale and would fool the readiness check.
        let _ = fs::remove_file(self.pidfile());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open {}: {e}", self.log_path().display()))?;
        let mut cmd = user.command(&binaries().postgres);
        cmd.arg("-D")
            .arg(self.data_dir())
            .current_dir(self.dir())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Keep a terminal's Ctrl-C away from it; shutdown is ours (or the watchdog's).
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", process::describe(&cmd)))?;
        self.workdir.set_server(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ready() {
                return Ok(());
            }
            let why = if self.workdir.server_exited() {
                "exited during startup"
            } else if Instant::now() >= deadline {
                self.workdir.kill_server();
                "was not ready in time"
            } else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            return Err(format!(
                "{} {why}\n--- server log tail ---\n{}",
                process::describe(&cmd),
                self.log_tail(30)
            ));
        }
    }

    fn pidfile(&self) -> PathBuf {
        self.data_dir().join("postmaster.pid")
    }

    /// Line 8 of `postmaster.pid` is the postmaster's status; "ready" once it accepts
    /// connections (what `pg_ctl start -w` waits for).
    fn ready(&self) -> bool {
        fs::read_to_string(self.pidfile())
            .is_ok_and(|pidfile| pidfile.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
    }

    fn setup_roles(&self) {
        let script = self.dir().join("setup.sql");
        write_file(&script, &setup_sql(), 0o644, None);
        let out = self.psql(&["-f", &path_str(&script)]);
        if !out.status.success() {
            panic!(
                "creating the test roles failed: {}\n--- server log tail ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            );
        }
    }
}

/// A port that was free a moment ago (the start retries if someone takes it meanwhile).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A libpq conninfo value, quoted only when needed.
fn quote_conninfo(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\'', '\\']) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}
