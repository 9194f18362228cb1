//! Test support shared by the integration tests: a real, throwaway PostgreSQL ([`PgServer`])
//! with TLS and one role per authentication method ([`TEST_USERS`]), and a `psql` runner
//! ([`run_psql`]) usable against the server or a proxy in front of it.
//!
//! ```ignore
//! mod support;
//! use support::{PgServer, SCRAM_USER, SslMode, TEST_DATABASE, run_psql};
//!
//! let pg = PgServer::shared(); // one per test binary, started on first use
//! assert_eq!(pg.psql_user(&SCRAM_USER, "SELECT 1", "sslmode=require"), Ok("1".into()));
//! let dsn = pg.dsn_ssl(SCRAM_USER.name, TEST_DATABASE, SslMode::VerifyFull);
//! assert_eq!(run_psql(&dsn, SCRAM_USER.password, "SELECT 1"), Ok("1".into()));
//! ```
//!
//! Tests that stop, restart or otherwise hurt the server take their own with
//! [`PgServer::start`]: dropping it (also while a test panics) stops the server and removes
//! its directory, and a watchdog process does the same within milliseconds if the test binary
//! dies without dropping it (the shared server lives in a static; SIGKILL).
//!
//! Running as root, the server runs as the `postgres` OS user (`runuser`); otherwise as the
//! current user. `PGLINK_PG_BINDIR` overrides where the server binaries are found.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod drivers;
pub mod otlp;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod tcprelay;
pub mod wire;
pub mod workdir;

use std::process::Command;
use std::time::Duration;

// Re-exports; a test binary that uses only some of them must not warn.
#[allow(unused_imports)]
pub use certs::{LeafCert, TestCerts};
#[allow(unused_imports)]
pub use pg::{PgOptions, PgServer, SslMode};
#[allow(unused_imports)]
pub use proxy::{Proxy, ProxyConfig};

/// Database every test role can connect to and create objects in.
pub const TEST_DATABASE: &str = "pglink_test";
/// Database for administrative connections.
pub const ADMIN_DATABASE: &str = "postgres";
/// Bootstrap superuser; reachable over the unix socket only (local trust).
pub const SUPERUSER: &str = "postgres";

/// How PostgreSQL authenticates a role over TCP (its `pg_hba.conf` method).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ScramSha256,
    Md5,
    /// Cleartext password (`password`).
    Password,
    Trust,
    /// TLS client certificate whose CN is the role name.
    Cert,
}

impl AuthMethod {
    /// The `pg_hba.conf` keyword.
    pub fn hba(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Password => "password",
            AuthMethod::Trust => "trust",
            AuthMethod::Cert => "cert",
        }
    }
}

/// A login role the harness creates in every server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestUser {
    pub name: &'static str,
    pub password: Option<&'static str>,
    pub method: AuthMethod,
    /// Only `hostssl` connections are accepted (`hostnossl` rejects).
    pub tls_only: bool,
    pub superuser: bool,
}

const fn user(name: &'static str, password: Option<&'static str>, method: AuthMethod) -> TestUser {
    TestUser {
        name,
        password,
        method,
        tls_only: false,
        superuser: false,
    }
}

pub const SCRAM_USER: TestUser = user("pglink_scram", Some("scram_pw"), AuthMethod::ScramSha256);
/// Password stored as md5 (so PostgreSQL really runs md5, not SCRAM).
pub const MD5_USER: TestUser = user("pglink_md5", Some("md5_pw"), AuthMethod::Md5);
pub const CLEAR_USER: TestUser = user("pglink_clear", Some("clear_pw"), AuthMethod::Password);
pub const TRUST_USER: TestUser = user("pglink_trust", None, AuthMethod::Trust);
/// Authenticated by the client certificate at [`PgServer::client_cert_path`]; TLS only.
pub const CERT_USER: TestUser = TestUser {
    tls_only: true,
    ..user("pglink_cert", None, AuthMethod::Cert)
};
/// SCRAM over TLS only; rejected on plain connections.
pub const TLS_ONLY_USER: TestUser = TestUser {
    tls_only: true,
    ..user("pglink_tlsonly", Some("tls_pw"), AuthMethod::ScramSha256)
};
/// A superuser reachable over TCP (SCRAM), for tests that need privileges through a proxy.
pub const ADMIN_USER: TestUser = TestUser {
    superuser: true,
    ..user("pglink_admin", Some("admin_pw"), AuthMethod::ScramSha256)
};

/// Every role the harness creates, in `pg_hba.conf` order.
pub const TEST_USERS: [TestUser; 7] = [
    SCRAM_USER,
    MD5_USER,
    CLEAR_USER,
    TRUST_USER,
    CERT_USER,
    TLS_ONLY_USER,
    ADMIN_USER,
];

/// How long one `psql` run may take before it is killed and reported as an error.
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(30);

/// A `psql` command with a clean environment: no inherited `PG*` variables, `~/.pgpass` and
/// `~/.postgresql/*` ignored, GSSAPI off, C locale, no `.psqlrc`, never prompting, and the
/// scripting flags `-q -A -t -v ON_ERROR_STOP=1`. Add the connection yourself.
pub fn psql_command(password: Option<&str>) -> Command {
    let mut cmd = Command::new(&process::binaries().psql);
    process::clear_pg_env(&mut cmd);
    const NOWHERE: &str = "/nonexistent/pglink-harness";
    cmd.env("LC_ALL", "C")
        .env("PGPASSFILE", NOWHERE)
        .env("PGSSLCERT", NOWHERE)
        .env("PGSSLKEY", NOWHERE)
        .env("PGSSLROOTCERT", NOWHERE)
        .env("PGGSSENCMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"]);
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd
}

/// Run `sql` with `psql` against any libpq `conninfo` (a server, or a proxy in front of one).
/// Ok: stdout without the trailing newline (rows on lines, columns split by `|`).
/// Err: stderr (or a timeout description).
pub fn run_psql(conninfo: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    let mut cmd = psql_command(password);
    cmd.arg("-d").arg(conninfo).arg("-c").arg(sql);
    let out = process::run_with_timeout(&mut cmd, PSQL_TIMEOUT)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Like [`run_psql`], with several `-c` commands (backslash commands allowed, e.g.
/// `\conninfo`), run in order in one session.
pub fn run_psql_commands(
    conninfo: &str,
    password: Option<&str>,
    commands: &[&str],
) -> Result<String, String> {
    let mut cmd = psql_command(password);
    cmd.arg("-d").arg(conninfo);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = process::run_with_timeout(&mut cmd, PSQL_TIMEOUT)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `done` every 20 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Text no other statement contains (this process, a counter), to find one statement in
/// `pg_stat_activity`: `format!("SELECT pg_sleep(10) /* {mark} */")`, then
/// [`PgServer::wait_for_query`].
pub fn unique_mark() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("pglink_mark_{}_{n}", std::process::id())
}

/// A two-thread tokio runtime for the tests that drive async drivers (tokio-postgres).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plain HTTP/1.1 GET (the metrics and admin endpoint): status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    // A flight-recorder snapshot is made before the answer starts.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: pglink\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}
