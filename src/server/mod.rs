//! Starting and stopping the proxy: the embedding API.
//!
//! [`Server::start`] takes a validated [`Config`], resolves its secrets (environment
//! variables, files, AWS Secrets Manager), binds every listen address and starts the threads;
//! it returns a [`ServerHandle`] once pglink accepts connections. The library installs no
//! signal handler, sets no logger (it logs through the `log` facade: the host picks one),
//! keeps no global state and never exits the process; several servers can run in one process.
//! Every thread it starts is named `pglink-*` and joined by [`ServerHandle::shutdown`] (or
//! when the handle is dropped).
//!
//! ```no_run
//! let config = pglink::Config::from_path("pglink.json")?;
//! let server = pglink::Server::start(config)?;
//! println!("pglink listening on {:?}", server.local_addrs());
//! // ... later: no new connections, open transactions may finish (bounded), then all closes.
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod shared;
mod verifiers;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{OsRng, Rng, tls_server_end_point};
use crate::backend::{SslMode, Target};
use crate::client::statements::Registry;
use crate::client::users::{DbEntry, ScramSecret, UserEntry, UserTable};
use crate::client::{AuthMethod, ClientTls, DatabaseContext, SessionConfig};
use crate::config::{self, BackendSslMode, CertSource, Config, LoadedConfig, ResolvedSecrets};
use crate::engine::Context;
use crate::pool::{Credentials, Database, Pool, PoolSettings};
use crate::protocol::framing::DEFAULT_MAX_MESSAGE_LEN;
use crate::reactor::Reactor;
use crate::tls;
pub(crate) use shared::Shared;
use verifiers::Deriver;
#[cfg(all(test, feature = "metrics"))]
pub(crate) use verifiers::Verifiers;

/// How often hosts that are names (not IP addresses) are resolved again.
const RESOLVE_PERIOD: Duration = Duration::from_secs(30);
/// Listen backlog per socket.
const BACKLOG: i32 = 1024;
/// Bound on `connect_timeout = 0` ("no limit" in libpq): every wait has a timeout here.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Tls(tls::TlsError),
    /// A backend's TLS settings (`databases.<db>.backend`).
    BackendTls {
        database: String,
        error: tls::TlsError,
    },
    Listen {
        addr: String,
        error: std::io::Error,
    },
    /// The metrics endpoint (`prometheus.listen`) could not listen.
    MetricsListen {
        addr: String,
        error: std::io::Error,
    },
    Thread(std::io::Error),
    /// A configured feature is not available.
    Unsupported(String),
    /// A secret could not be resolved ([`Server::start`] resolves them).
    Secrets(config::SecretsError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "tls: {e}"),
            StartError::BackendTls { database, error } => {
                write!(f, "databases.{database}.backend: {error}")
            }
            StartError::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartError::MetricsListen { addr, error } => {
                write!(f, "prometheus.listen: cannot listen on {addr}: {error}")
            }
            StartError::Thread(e) => write!(f, "cannot start threads: {e}"),
            StartError::Unsupported(what) => f.write_str(what),
            StartError::Secrets(e) => write!(f, "secrets: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Starts pglink; see the [module documentation](self).
#[derive(Debug)]
pub struct Server(());

/// A running pglink, from [`Server::start`]. Dropping it stops the server as
/// [`ServerHandle::shutdown`] does.
pub struct ServerHandle {
    shared: Arc<Shared>,
    reactors: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    resolver: Option<Resolver>,
    deriver: Option<Deriver>,
    secrets: Option<config::SecretsWatcher>,
    #[cfg(feature = "metrics")]
    admin: Option<crate::observe::http::AdminServer>,
    metrics_addrs: Vec<SocketAddr>,
}

impl Server {
    /// Resolves the secrets of `config` (blocking: AWS secrets are fetched, bounded by their
    /// timeout), then starts pglink; returns once it accepts connections. AWS secrets are
    /// refreshed while it runs, and logins and pool credentials follow them.
    pub fn start(config: Config) -> Result<ServerHandle, StartError> {
        let options = config::SecretsOptions::for_config(&config);
        let secrets =
            config::SecretsWatcher::start(&config, options).map_err(StartError::Secrets)?;
        Server::start_loaded(LoadedConfig {
            path: PathBuf::new(),
            config: Arc::new(config),
            warnings: Vec::new(),
            secrets,
        })
    }

    /// Starts pglink for a configuration whose secrets are already resolved and watched
    /// ([`LoadedConfig::load`]).
    pub fn start_loaded(loaded: LoadedConfig) -> Result<ServerHandle, StartError> {
        let mut server = Server::start_with(&loaded.config, &loaded.secrets.current())?;
        let shared = server.shared.clone();
        let config = loaded.config.clone();
        loaded.secrets.set_on_change(Box::new(move |secrets| {
            apply_secrets(&shared, &config, &secrets);
            log::info!("secrets refreshed; logins and pool credentials updated");
        }));
        server.secrets = Some(loaded.secrets);
        Ok(server)
    }

    /// Starts pglink with already-resolved secrets (no refresh).
    pub fn start_with(
        config: &Config,
        secrets: &ResolvedSecrets,
    ) -> Result<ServerHandle, StartError> {
        refuse_unimplemented(config)?;
        #[cfg(not(feature = "metrics"))]
        if config.prometheus.is_some() {
            return Err(StartError::Unsupported(
                "prometheus: Prometheus metrics are not compiled into this pglink (rebuild with \
                 cargo feature \"metrics\", or remove the prometheus section)"
                    .into(),
            ));
        }
        let reactors = config.effective_reactor_threads().max(1);
        let (server_tls, channel_binding) = client_tls(config)?;
        let (databases, pools, users) = build_pools(config, secrets, reactors)?;
        let session = SessionConfig {
            auth_method: match config.auth_method {
                config::AuthMethod::Plaintext => AuthMethod::Plaintext,
                config::AuthMethod::Md5Password => AuthMethod::Md5,
                config::AuthMethod::ScramSha256 => AuthMethod::Scram,
            },
            tls: match config.client_sslmode() {
                config::SslMode::Disable => ClientTls::Disabled,
                config::SslMode::Allow | config::SslMode::Prefer => ClientTls::Optional,
                config::SslMode::Require => ClientTls::Required,
            },
            channel_binding,
        };
        let mut context = Context::new(
            databases,
            pools,
            session,
            config.max_client_connections as usize,
            config.client_login_timeout,
            DEFAULT_MAX_MESSAGE_LEN,
            reactors,
            std::time::Instant::now(),
        );
        context.shutdown_grace = config.shutdown_timeout;
        let deriver = Deriver::start().map_err(StartError::Thread)?;
        let ahead = users.scram_secrets();
        let shared = Arc::new(Shared::new(context, users, server_tls, deriver.verifiers()));
        // Every user's verifier, derived while the first clients connect.
        shared.verifiers.ahead(ahead);
        let resolver = start_resolver(&shared)?;
        let (listeners, local_addrs) = bind_listeners(config, reactors)?;
        // Bound before any thread starts, so that a taken port fails the start cleanly.
        #[cfg(feature = "metrics")]
        let metrics_listeners = match &config.prometheus {
            Some(p) => Some(
                crate::observe::http::bind(&p.listen)
                    .map_err(|(addr, error)| StartError::MetricsListen { addr, error })?,
            ),
            None => None,
        };
        let mut handles = Vec::with_capacity(reactors);
        let mut loops = Vec::with_capacity(reactors);
        for (id, sockets) in listeners.into_iter().enumerate() {
            let (reactor, handle) =
                Reactor::new(id, shared.clone(), sockets).map_err(StartError::Thread)?;
            handles.push(handle);
            loops.push(reactor);
        }
        shared.set_reactors(handles);
        let mut threads = Vec::with_capacity(reactors);
        for (id, reactor) in loops.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("pglink-reactor-{id}"))
                .spawn(move || reactor.run())
                .map_err(StartError::Thread)?;
            threads.push(thread);
        }
        log::info!(
            "pglink listening on {} ({reactors} reactor threads, {} databases)",
            local_addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            shared.ctx.databases.len()
        );
        #[allow(unused_mut)]
        let mut server = ServerHandle {
            shared,
            reactors: threads,
            local_addrs,
            resolver,
            deriver: Some(deriver),
            secrets: None,
            #[cfg(feature = "metrics")]
            admin: None,
            metrics_addrs: Vec::new(),
        };
        #[cfg(feature = "metrics")]
        if let (Some(listeners), Some(p)) = (metrics_listeners, &config.prometheus) {
            // On failure `server` is dropped, which stops the reactors again.
            let admin =
                crate::observe::http::AdminServer::start(listeners, server.shared.clone(), &p.path)
                    .map_err(StartError::Thread)?;
            server.metrics_addrs = admin.local_addrs().to_vec();
            server.admin = Some(admin);
        }
        Ok(server)
    }
}

impl ServerHandle {
    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Where the metrics and admin HTTP endpoint listens (empty without a `prometheus`
    /// section).
    pub fn metrics_addrs(&self) -> &[SocketAddr] {
        &self.metrics_addrs
    }

    /// Clients connected right now.
    pub fn client_count(&self) -> usize {
        self.shared.client_count()
    }

    /// Something that can ask the server to stop from another thread (a signal handler loop),
    /// while this thread waits in [`ServerHandle::join`].
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Graceful stop: no new connections, idle clients closed, open transactions finish
    /// (up to a grace period), then everything closes. Returns when all threads have ended.
    pub fn shutdown(mut self) {
        self.shared.stop();
        self.join_threads();
    }

    /// Waits until the server has stopped (after [`Stopper::stop`]) and its threads ended.
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        for t in self.reactors.drain(..) {
            let _ = t.join();
        }
        if let Some((stop, thread)) = self.resolver.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        if let Some(secrets) = self.secrets.take() {
            secrets.stop();
        }
        // After the reactors (which send it work) and the secrets watcher (which too).
        if let Some(mut deriver) = self.deriver.take() {
            deriver.stop();
        }
        // Cancel deliveries still under way (each bounded by its timeouts).
        self.shared.join_helpers();
        // Last: /healthz answers 503 while the reactors wind down.
        #[cfg(feature = "metrics")]
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.reactors.is_empty() {
            self.shared.stop();
            self.join_threads();
        }
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addrs", &self.local_addrs)
            .field("metrics_addrs", &self.metrics_addrs)
            .finish_non_exhaustive()
    }
}

/// Stops a server from another thread.
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    /// Starts the graceful stop [`ServerHandle::shutdown`] does, without waiting for it.
    pub fn stop(&self) {
        self.0.stop();
    }
}

/// Observability sections are validated by the config layer but not built yet: say so
/// instead of running silently without them. [`Server::start_with`] calls this first, and
/// `pglink -check` calls it too, so a configuration that passes the check gets past it.
pub fn refuse_unimplemented(config: &Config) -> Result<(), StartError> {
    let mut missing = Vec::new();
    if config.opentelemetry.as_ref().is_some_and(|o| o.enabled) {
        missing.push("opentelemetry");
    }
    if config.flight_recorder.is_some() {
        missing.push("flight_recorder");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(StartError::Unsupported(format!(
        "{}: not implemented in this version of pglink yet; remove the section(s) to start",
        missing.join(", ")
    )))
}

/// The client-facing rustls configuration and our certificate's channel-binding data.
type ClientTlsSetup = (Option<Arc<rustls::ServerConfig>>, Option<Vec<u8>>);

fn client_tls(config: &Config) -> Result<ClientTlsSetup, StartError> {
    let identity = match config.client_tls() {
        CertSource::Disabled => return Ok((None, None)),
        CertSource::GenerateInMemory => {
            tls::generate_self_signed()
                .map_err(StartError::Tls)?
                .identity
        }
        CertSource::Files {
            cert,
            key,
            generate_if_missing,
        } => tls::load_server_identity(&tls::ServerIdentitySource {
            cert_path: Some(cert.to_owned()),
            key_path: Some(key.to_owned()),
            generate: generate_if_missing,
        })
        .map_err(StartError::Tls)?,
    };
    let channel_binding = match tls_server_end_point(identity.leaf()) {
        Ok(hash) => Some(hash),
        Err(e) => {
            log::warn!(
                "SCRAM-SHA-256-PLUS disabled: cannot hash the certificate for channel binding: {e}"
            );
            None
        }
    };
    let server = tls::server_config(&identity).map_err(StartError::Tls)?;
    Ok((Some(server), channel_binding))
}

type Built = (Vec<Database>, Vec<Pool>, UserTable);

/// Databases, one pool per (database, configured user), and the login table.
fn build_pools(
    config: &Config,
    secrets: &ResolvedSecrets,
    reactors: usize,
) -> Result<Built, StartError> {
    let mut databases = Vec::new();
    let mut pools = Vec::new();
    for (id, (name, db)) in config.databases.iter().enumerate() {
        let backend = &db.backend;
        let target = backend_target(name, backend)?;
        let settings = PoolSettings {
            max_conns: backend.pool_max_conns as usize,
            min_idle: backend.pool_min_idle_conns as usize,
            acquire_timeout: db.pool_acquire_timeout(),
            max_lifetime: backend.max_conn_lifetime(),
            lifetime_jitter: Some(backend.pool_max_conn_lifetime_jitter).filter(|j| !j.is_zero()),
            max_idle_time: backend.max_conn_idle_time(),
            health_check_period: backend.health_check_period(),
            statement_cache_capacity: backend.statement_cache_capacity,
        };
        let context = DatabaseContext {
            registry: Registry::new(
                backend.prepared_statement_cache_size,
                backend.description_cache_capacity,
            ),
            track_extra: db
                .track_extra_parameters
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            overrides: backend
                .default_startup_parameters
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            shared_params: Default::default(),
        };
        let mut database = Database::new(
            id,
            name.clone(),
            settings,
            Arc::new(target),
            Arc::new(context),
        );
        for user in secrets.users(name) {
            let pool = pools.len();
            database.pools.push(pool);
            pools.push(Pool::new(
                pool,
                id,
                Credentials {
                    user: user.username.clone(),
                    password: user.password.clone(),
                },
                reactors,
            ));
        }
        databases.push(database);
    }
    let users = user_table(config, secrets, &databases, None);
    Ok((databases, pools, users))
}

fn backend_target(name: &str, b: &config::BackendConfig) -> Result<Target, StartError> {
    let sslmode = match b.sslmode {
        BackendSslMode::Disable => SslMode::Disable,
        BackendSslMode::Allow => SslMode::Allow,
        BackendSslMode::Prefer => SslMode::Prefer,
        BackendSslMode::Require => SslMode::Require,
        BackendSslMode::VerifyCa => SslMode::VerifyCa,
        BackendSslMode::VerifyFull => SslMode::VerifyFull,
    };
    let err = |error| StartError::BackendTls {
        database: name.to_owned(),
        error,
    };
    let (client_config, server_name) = if sslmode == SslMode::Disable {
        (None, None)
    } else {
        let verify = match sslmode {
            SslMode::VerifyFull => tls::Verify::ChainAndName,
            SslMode::VerifyCa => tls::Verify::Chain,
            _ => tls::Verify::Nothing,
        };
        let source = tls::BackendTlsSource {
            root_cert: b
                .sslrootcert
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            client_cert: b.sslcert.clone(),
            client_key: b.sslkey.clone(),
            key_password: b.sslpassword.as_ref().map(|p| p.expose().to_owned()),
        };
        let client = tls::backend_client_config(verify, &source).map_err(err)?;
        let server_name = tls::server_name(&b.host).map_err(err)?;
        (Some(client), Some(server_name))
    };
    Ok(Target::new(
        b.host.clone(),
        b.port,
        b.database.clone(),
        b.connect_timeout().unwrap_or(MAX_CONNECT_TIMEOUT),
        sslmode,
        client_config,
        server_name,
        b.default_startup_parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ))
}

/// The login table. SCRAM verifiers are not derived here but later, off the reactors
/// (`verifiers`); a user whose password is unchanged since `previous` keeps its secret,
/// derived or not.
fn user_table(
    config: &Config,
    secrets: &ResolvedSecrets,
    databases: &[Database],
    previous: Option<&UserTable>,
) -> UserTable {
    let mut rng = OsRng;
    let mut mock_secret = [0u8; 32];
    rng.fill(&mut mock_secret);
    let mut table = HashMap::new();
    for db in databases {
        let mut users = HashMap::new();
        for (i, user) in secrets.users(&db.name).iter().enumerate() {
            let Some(&pool) = db.pools.get(i) else {
                continue;
            };
            let scram = previous
                .and_then(|t| {
                    t.scram_secret(
                        &db.name,
                        &user.username,
                        &user.password,
                        config.scram_iterations,
                    )
                })
                .unwrap_or_else(|| {
                    Arc::new(ScramSecret::new(
                        &user.password,
                        config.scram_iterations,
                        &mut rng,
                    ))
                });
            let entry = UserEntry::new(user.username.clone(), user.password.clone(), pool, scram);
            users.insert(user.username.clone(), Arc::new(entry));
        }
        table.insert(db.name.clone(), DbEntry { id: db.id, users });
    }
    UserTable {
        databases: table,
        scram_iterations: config.scram_iterations,
        mock_secret,
    }
}

/// Rotated secrets: new logins and pool credentials (backends with the old ones are replaced
/// as they come back to the pool).
fn apply_secrets(shared: &Shared, config: &Config, secrets: &ResolvedSecrets) {
    for db in &shared.ctx.databases {
        for (i, user) in secrets.users(&db.name).iter().enumerate() {
            if let Some(pool) = db.pools.get(i).and_then(|&p| shared.ctx.pools.get(p)) {
                pool.set_credentials(Credentials {
                    user: user.username.clone(),
                    password: user.password.clone(),
                });
            }
        }
    }
    let users = user_table(
        config,
        secrets,
        &shared.ctx.databases,
        Some(&shared.users()),
    );
    let ahead = users.scram_secrets();
    shared.set_users(users);
    shared.verifiers.ahead(ahead);
}

/// The resolver thread and the channel that stops it.
type Resolver = (Sender<()>, JoinHandle<()>);

/// Resolves backend host names now and then again periodically, off the reactor threads.
fn start_resolver(shared: &Arc<Shared>) -> Result<Option<Resolver>, StartError> {
    for db in &shared.ctx.databases {
        if let Err(e) = db.target.resolve() {
            log::warn!(
                "databases.{}.backend.host: {e}; retrying every {RESOLVE_PERIOD:?}",
                db.name
            );
        }
    }
    if shared.ctx.databases.iter().all(|d| d.target.is_ip()) {
        return Ok(None);
    }
    let (stop, stopped): (Sender<()>, Receiver<()>) = std::sync::mpsc::channel();
    let shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("pglink-resolver".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RESOLVE_PERIOD) {
                for db in shared.ctx.databases.iter().filter(|d| !d.target.is_ip()) {
                    if let Err(e) = db.target.resolve() {
                        log::warn!("databases.{}.backend.host: {e}", db.name);
                    }
                }
            }
        })
        .map_err(StartError::Thread)?;
    Ok(Some((stop, thread)))
}

/// Listener sockets for every reactor: the first reactor binds (so port 0 picks a port), the
/// others bind the same addresses with SO_REUSEPORT and the kernel spreads connections.
///
/// SO_REUSEPORT would also let a second pglink (or anything else of the same OS user that
/// sets it) bind the same port and silently take a share of the connections. So each fixed
/// port is first probed with a plain bind, which fails while anyone listens there.
fn bind_listeners(
    config: &Config,
    reactors: usize,
) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), StartError> {
    let mut wanted = Vec::new();
    for listen in config.listen_addrs() {
        let addrs = listen
            .to_socket_addrs()
            .map_err(|error| StartError::Listen {
                addr: listen.to_string(),
                error,
            })?;
        wanted.extend(addrs);
    }
    let mut bound = Vec::new();
    let mut first = Vec::new();
    for addr in wanted {
        if addr.port() != 0 {
            probe_free(addr)?;
        }
        let socket = bind_one(addr)?;
        let local = socket.local_addr().map_err(|error| StartError::Listen {
            addr: addr.to_string(),
            error,
        })?;
        bound.push(local);
        first.push(socket);
    }
    let mut all = vec![first];
    for _ in 1..reactors {
        all.push(
            bound
                .iter()
                .map(|&a| bind_one(a))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok((all, bound))
}

/// Fails with `AddrInUse` when something listens on `addr`, SO_REUSEPORT or not.
fn probe_free(addr: SocketAddr) -> Result<(), StartError> {
    let err = |error| StartError::Listen {
        addr: addr.to_string(),
        error,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    // SO_REUSEADDR so that connections of an earlier run in TIME_WAIT do not count.
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |error| StartError::Listen {
        addr: addr.to_string(),
        error,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    if addr.is_ipv6() {
        // `:port` binds 0.0.0.0 and [::] separately; the v6 socket must not claim v4 too.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Where the generated certificate went, for the startup log.
pub fn describe_tls(config: &Config) -> String {
    match config.client_tls() {
        CertSource::Disabled => "TLS disabled".to_owned(),
        CertSource::GenerateInMemory => "TLS with a generated self-signed certificate".to_owned(),
        CertSource::Files { cert, .. } => format!("TLS with {}", PathBuf::from(cert).display()),
    }
}
