//! pglink itself, started in-process through the library API in front of a [`PgServer`].
//!
//! ```ignore
//! let pg = PgServer::shared();
//! let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
//! assert_eq!(run_psql(&proxy.dsn(&SCRAM_USER), SCRAM_USER.password, "SELECT 1"), Ok("1".into()));
//! ```

use std::net::SocketAddr;

use serde_json::{Value, json};

use pglink::config::{self, LoadedConfig, SecretsOptions};
use pglink::{Server, ServerHandle};

use super::pg::PgServer;
use super::{TEST_DATABASE, TestUser};

/// Password pglink's clients use for a role that has none on the server (trust, cert).
pub const PROXY_ONLY_PASSWORD: &str = "proxy_pw";

/// Runs `sql` with psql on the admin console (database `pglink`) of the pglink on `port`,
/// as `user`: its `-A -t` output, or psql's error.
pub fn console(port: u16, user: &TestUser, sql: &str) -> Result<String, String> {
    let dsn = format!(
        "host=127.0.0.1 port={port} user={} dbname=pglink sslmode=disable connect_timeout=10",
        user.name
    );
    super::run_psql(&dsn, Some(Proxy::password(user)), sql)
}

/// The rows of a `-A -t` output, split at `|`.
pub fn rows(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// Creates a SCRAM login role only one test uses, so that counting its server connections
/// is not disturbed by other tests running in parallel.
pub fn create_user(pg: &PgServer, prefix: &str) -> TestUser {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name: &'static str =
        Box::leak(format!("{prefix}_{}_{n}", std::process::id()).into_boxed_str());
    // Concurrent GRANTs on one database row fail with "tuple concurrently updated".
    static GRANTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = GRANTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pg.admin_sql(&format!(
        "CREATE ROLE {name} LOGIN PASSWORD 'pw_{name}'; GRANT ALL ON DATABASE {TEST_DATABASE} TO {name}"
    ));
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("GRANT ALL ON SCHEMA public TO {name}"),
    );
    TestUser {
        name,
        password: Some(Box::leak(format!("pw_{name}").into_boxed_str())),
        method: super::AuthMethod::ScramSha256,
        tls_only: false,
        superuser: false,
    }
}

/// A `pglink.json` under construction.
pub struct ProxyConfig {
    json: Value,
}

impl ProxyConfig {
    /// One database (`pglink_test`) on `pg`, plaintext to the backend, pool of 5, TLS to
    /// clients with a generated certificate, two reactors, an ephemeral port.
    pub fn new(pg: &PgServer) -> ProxyConfig {
        ProxyConfig {
            json: json!({
                "listen": "127.0.0.1:0",
                "reactor_threads": 2,
                "tls": { "sslmode": "prefer", "generate_cert": true },
                "databases": {
                    TEST_DATABASE: {
                        "users": [],
                        "backend": {
                            "host": pg.host(),
                            "port": pg.port(),
                            "database": TEST_DATABASE,
                            "pool_max_conns": 5,
                            "sslmode": "disable"
                        }
                    }
                }
            }),
        }
    }

    /// Adds a login (with the role's own password, or [`PROXY_ONLY_PASSWORD`]).
    pub fn user(mut self, user: &TestUser) -> ProxyConfig {
        let entry = json!({
            "username": { "insecure_value": user.name },
            "password": { "insecure_value": user.password.unwrap_or(PROXY_ONLY_PASSWORD) }
        });
        if let Some(users) = self.json["databases"][TEST_DATABASE]["users"].as_array_mut() {
            users.push(entry);
        }
        self
    }

    /// Sets a value at a dotted path, e.g. `set("databases.pglink_test.backend.sslmode", json!("require"))`.
    pub fn set(mut self, path: &str, value: Value) -> ProxyConfig {
        let mut node = &mut self.json;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if i == parts.len() - 1 {
                node[*part] = value;
                break;
            }
            node = &mut node[*part];
        }
        self
    }

    /// Sets a backend field of the test database.
    pub fn backend(self, field: &str, value: Value) -> ProxyConfig {
        self.set(&format!("databases.{TEST_DATABASE}.backend.{field}"), value)
    }

    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The configuration being built, to edit in place.
    pub fn json_mut(&mut self) -> &mut Value {
        &mut self.json
    }

    /// Validates the configuration and starts pglink; panics with every problem otherwise.
    pub fn start(self) -> Proxy {
        Proxy::start(&self.json.to_string())
    }

    /// Like [`start`](Self::start), but a configuration that is valid yet cannot start
    /// (unreadable key, wrong `sslpassword`, ...) is `Err` with `Server::start`'s message.
    pub fn try_start(self) -> Result<Proxy, String> {
        Proxy::try_start(&self.json.to_string())
    }
}

/// A running pglink.
pub struct Proxy {
    server: Option<ServerHandle>,
    /// Its first TCP address (`0.0.0.0:0` when it listens on unix sockets only).
    pub addr: SocketAddr,
}

/// The first TCP address `server` listens on.
fn first_addr(server: &ServerHandle) -> SocketAddr {
    let none = SocketAddr::from(([0, 0, 0, 0], 0));
    server.local_addrs().first().copied().unwrap_or(none)
}

impl Proxy {
    pub fn start(config_json: &str) -> Proxy {
        // `PGLINK_LOG=debug cargo test ...` shows what the proxy did.
        if std::env::var_os("PGLINK_LOG").is_some() {
            let _ = pglink::observe::log::init(pglink::observe::log::Format::Text);
        }
        let parsed = match config::parse(config_json) {
            Ok(p) => p,
            Err(e) => panic!("invalid test config {config_json}: {:?}", e.errors),
        };
        let loaded = LoadedConfig::from_parsed("".as_ref(), parsed, Some(SecretsOptions::once()))
            .unwrap_or_else(|e| panic!("secrets: {e:?}"));
        let server =
            Server::start_loaded(loaded).unwrap_or_else(|e| panic!("pglink did not start: {e}"));
        let addr = first_addr(&server);
        Proxy {
            server: Some(server),
            addr,
        }
    }

    /// [`start`](Self::start) where only `Server::start` may fail, with its error text.
    pub fn try_start(config_json: &str) -> Result<Proxy, String> {
        let parsed = match config::parse(config_json) {
            Ok(p) => p,
            Err(e) => panic!("invalid test config {config_json}: {:?}", e.errors),
        };
        let loaded = LoadedConfig::from_parsed("".as_ref(), parsed, Some(SecretsOptions::once()))
            .unwrap_or_else(|e| panic!("secrets: {e:?}"));
        let server = Server::start_loaded(loaded).map_err(|e| e.to_string())?;
        let addr = first_addr(&server);
        Ok(Proxy {
            server: Some(server),
            addr,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// libpq connection string for `user` on the test database (no TLS).
    pub fn dsn(&self, user: &TestUser) -> String {
        self.dsn_with(user, "sslmode=disable")
    }

    pub fn dsn_with(&self, user: &TestUser, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={TEST_DATABASE} connect_timeout=10 {extra}",
            self.port(),
            user.name
        )
    }

    /// The password clients give pglink for `user`.
    pub fn password(user: &TestUser) -> &'static str {
        user.password.unwrap_or(PROXY_ONLY_PASSWORD)
    }

    /// Where the metrics endpoint listens (with a `prometheus` section).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server
            .as_ref()
            .and_then(|s| s.metrics_addrs().first().copied())
    }

    /// The unix sockets it listens on.
    pub fn unix_sockets(&self) -> Vec<std::path::PathBuf> {
        self.handle()
            .unix_sockets()
            .map(|p| p.to_path_buf())
            .collect()
    }

    /// The rows `sql` gives on the admin console (`admin` must be in `admin_users`); panics
    /// on an error.
    pub fn console_rows(&self, admin: &TestUser, sql: &str) -> Vec<Vec<String>> {
        let out = console(self.port(), admin, sql)
            .unwrap_or_else(|e| panic!("{sql} on the console: {e}"));
        rows(&out)
    }

    pub fn client_count(&self) -> usize {
        self.server.as_ref().map_or(0, ServerHandle::client_count)
    }

    /// Validates `config` (`Config::from_value`) and applies it with `ServerHandle::reload`;
    /// `Err` carries the validation or reload error text.
    pub fn reload(&self, config: &Value) -> Result<pglink::ReloadOutcome, String> {
        let config = pglink::Config::from_value(config.clone()).map_err(|e| e.to_string())?;
        self.handle().reload(config).map_err(|e| e.to_string())
    }

    /// `ServerHandle::reload_file`: reads, validates and applies `path`.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<pglink::ReloadOutcome, String> {
        self.handle().reload_file(path).map_err(|e| e.to_string())
    }

    /// The running server, for what the harness has no helper for.
    pub fn handle(&self) -> &ServerHandle {
        self.server.as_ref().expect("pglink is running")
    }

    /// Graceful shutdown (also done on drop).
    pub fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// pglink as a separate process, started from the binary with `config` (whose `listen` is
/// replaced by a free port), killed on drop.
/// Where [`ChildProxy::start_on`] waits for the new process to answer.
pub enum ReadyAt {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

pub struct ChildProxy {
    pub child: std::process::Child,
    dir: std::path::PathBuf,
    pub addr: std::net::SocketAddr,
}

impl ChildProxy {
    pub fn start(config: &ProxyConfig, name: &str) -> ChildProxy {
        ChildProxy::start_with_env(config, name, &[])
    }

    /// [`start`](Self::start) with extra environment variables for the process.
    pub fn start_with_env(config: &ProxyConfig, name: &str, env: &[(&str, &str)]) -> ChildProxy {
        ChildProxy::start_with(config, name, |cmd| {
            cmd.envs(env.iter().copied());
        })
    }

    /// [`start`](Self::start), with `prepare` adjusting the command (its environment, say:
    /// variables removed as well as set) before the process is spawned.
    pub fn start_with(
        config: &ProxyConfig,
        name: &str,
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> ChildProxy {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        ChildProxy::spawn(config, name, json!(addr.to_string()), addr, prepare)
    }

    /// A process listening on `listen` (the config's `listen` value) rather than on a port
    /// of its own; ready once something answers on `ready` (one of those addresses, or
    /// another instance's if they share a port: then pass a unix socket of its own too).
    pub fn start_on(config: &ProxyConfig, name: &str, listen: Value, ready: ReadyAt) -> ChildProxy {
        if let ReadyAt::Unix(path) = &ready {
            let _ = std::fs::create_dir_all(path.parent().unwrap());
            let _ = std::fs::remove_file(path);
        }
        let addr = match &ready {
            ReadyAt::Tcp(addr) => *addr,
            ReadyAt::Unix(_) => "127.0.0.1:0".parse().unwrap(),
        };
        let child = ChildProxy::spawn(config, name, listen, addr, |_| {});
        if let ReadyAt::Unix(path) = &ready {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(path).is_err() {
                assert!(std::time::Instant::now() < deadline, "pglink did not start");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        child
    }

    fn spawn(
        config: &ProxyConfig,
        name: &str,
        listen: Value,
        addr: std::net::SocketAddr,
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> ChildProxy {
        let dir = std::env::temp_dir().join(format!("pglink-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = config.json().clone();
        config["listen"] = listen;
        let path = dir.join("pglink.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pglink"));
        cmd.arg("-config")
            .arg(&path)
            .stderr(std::process::Stdio::null());
        prepare(&mut cmd);
        let child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while addr.port() != 0 && std::net::TcpStream::connect(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "pglink did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        ChildProxy { child, dir, addr }
    }

    /// A `/proc/<pid>/status` figure in kB (`VmHWM`, `VmRSS`).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| {
                v.trim_start_matches(':')
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap()
    }
}

impl ChildProxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file the process was started with (rewrite it, then send SIGHUP).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.join("pglink.json")
    }

    /// Rewrites [`config_path`](Self::config_path) with `config`, its `listen` replaced by
    /// the address the process listens on (as [`start`](Self::start) did).
    pub fn write_config(&self, config: &Value) {
        let mut config = config.clone();
        config["listen"] = json!(self.addr.to_string());
        std::fs::write(self.config_path(), config.to_string()).unwrap();
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
