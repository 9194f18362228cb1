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

mod console;
mod peers;
mod shared;
mod unix;
mod verifiers;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{OsRng, Rng, tls_server_end_point};
use crate::backend::{SslMode, Target};
use crate::client::statements::Registry;
use crate::client::users::{DbEntry, DbId, PoolId, ScramSecret, UserEntry, UserTable};
use crate::client::{AuthMethod, ClientTls, DatabaseContext, SessionConfig};
use crate::config::{self, BackendSslMode, CertSource, Config, LoadedConfig, ResolvedSecrets};
use crate::engine::Context;
use crate::observe::flight::{FlightRecorder, RecorderThread, Snapshot, SnapshotError};
use crate::observe::observers::Observers;
use crate::pool::{Credentials, Database, Pool, PoolSettings};
use crate::protocol::framing::DEFAULT_MAX_MESSAGE_LEN;
use crate::reactor::{Listener, Reactor};
use crate::tls;
pub(crate) use shared::{ClientIdentity, Shared};
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
    /// The configuration contradicts its resolved secrets (e.g. an admin user that is no
    /// configured user).
    Invalid(String),
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
            StartError::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for StartError {}

/// What [`ServerHandle::reload`] applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Settings that differ in the new configuration but take effect only after a restart
    /// (their JSON paths, e.g. `listen`); they keep their old values until then.
    pub restart_needed: Vec<String>,
}

/// Why a reload was refused; the server goes on with its previous configuration.
#[derive(Debug)]
pub enum ReloadError {
    /// The new configuration is invalid (every problem, with its JSON path).
    Config(config::ConfigError),
    /// It is valid but cannot be applied (a secret, a certificate, a feature).
    Apply(StartError),
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "invalid configuration: {e}"),
            ReloadError::Apply(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReloadError {}

/// Starts pglink; see the [module documentation](self).
#[derive(Debug)]
pub struct Server(());

/// A running pglink, from [`Server::start`]. Dropping it stops the server as
/// [`ServerHandle::shutdown`] does.
pub struct ServerHandle {
    shared: Arc<Shared>,
    reactors: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    /// The unix socket files pglink listens on (removed when dropped).
    socket_files: Vec<unix::SocketFile>,
    resolver: Option<Resolver>,
    deriver: Option<Deriver>,
    reloader: Arc<Reloader>,
    console: Option<console::Console>,
    #[cfg(feature = "metrics")]
    admin: Option<crate::observe::http::AdminServer>,
    metrics_addrs: Vec<SocketAddr>,
    /// The flight recorder's thread (with a `flight_recorder` section).
    flight: Option<RecorderThread>,
    /// The span exporter's thread, when tracing is on.
    #[cfg(feature = "otel")]
    spans: Option<crate::observe::otlp::ExporterThread>,
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
        let applied = loaded.secrets.current();
        let server = Server::start_with(&loaded.config, &applied)?;
        let mut current = server.reloader.lock_config();
        let previous = server
            .reloader
            .install_watcher(&mut current, loaded.secrets, &applied);
        drop(current);
        if let Some(previous) = previous {
            previous.stop();
        }
        if !loaded.path.as_os_str().is_empty() {
            *server
                .reloader
                .path
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(loaded.path);
        }
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
        let (databases, pools, changes) = build_catalog(config, secrets, reactors, None)?;
        changes.commit();
        let users = user_table(config, secrets, &databases, None);
        check_admin_users(config, &users)?;
        let session = session_config(config, channel_binding);
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
        context.max_logins = config.max_logins_in_progress as usize;
        context.peering = Arc::new(peers::peering(config)?);
        if config.listen_reuse_port {
            context.handover = HANDOVER.min(config.shutdown_timeout);
        }
        let deriver = Deriver::start().map_err(StartError::Thread)?;
        let ahead = users.scram_secrets();
        let identity = server_tls.map(|config| ClientIdentity {
            config,
            channel_binding: context.session.channel_binding.clone(),
        });
        let shared = Arc::new(Shared::new(context, users, identity, deriver.verifiers()));
        let resolver = start_resolver(&shared)?;
        let reloader = Arc::new(Reloader {
            shared: shared.clone(),
            config: std::sync::Mutex::new(Arc::new(config.clone())),
            reactors,
            watcher: Default::default(),
            secrets: std::sync::Mutex::default(),
            path: std::sync::Mutex::new(None),
        });
        let console = console::Console::start(reloader.clone()).map_err(StartError::Thread)?;
        shared.set_console(console.handle());
        let Bound {
            listeners,
            local_addrs,
            socket_files,
        } = bind_listeners(config, reactors)?;
        // Bound before any thread starts, so that a taken port fails the start cleanly.
        #[cfg(feature = "metrics")]
        let metrics_listeners = match &config.prometheus {
            Some(p) => Some(
                crate::observe::http::bind(&p.listen)
                    .map_err(|(addr, error)| StartError::MetricsListen { addr, error })?,
            ),
            None => None,
        };
        let recorder = config
            .flight_recorder
            .as_ref()
            .map(|c| FlightRecorder::new(c, reactors));
        #[cfg(feature = "otel")]
        let (spans, span_sinks) = match start_tracing(config)? {
            Some((exporter, thread, settings)) => {
                shared.set_span_exporter(exporter.clone());
                (Some(thread), Some((exporter, settings)))
            }
            None => (None, None),
        };
        let mut handles = Vec::with_capacity(reactors);
        let mut loops = Vec::with_capacity(reactors);
        for (id, sockets) in listeners.into_iter().enumerate() {
            let (mut reactor, handle) =
                Reactor::new(id, shared.clone(), sockets).map_err(StartError::Thread)?;
            let mut observers = Observers::default();
            if let Some(recorder) = &recorder {
                observers = observers.with_flight(recorder.sink(id));
            }
            #[cfg(feature = "otel")]
            if let Some((exporter, settings)) = &span_sinks {
                observers = observers.with_spans(crate::observe::spans::SpanSink::new(
                    exporter.clone(),
                    settings.clone(),
                ));
            }
            if !observers.is_empty() {
                reactor.set_event_sink(Box::new(observers));
            }
            handles.push(handle);
            loops.push(reactor);
        }
        shared.set_reactors(handles);
        // Started before the reactor threads that feed it.
        let flight = match recorder {
            Some(recorder) => {
                // Weak: the recorder's thread must not keep the server's state alive.
                let weak = Arc::downgrade(&shared);
                let labels = Box::new(move || {
                    weak.upgrade()
                        .map(|shared| shared.pool_labels())
                        .unwrap_or_default()
                });
                let thread = recorder.start(labels).map_err(StartError::Thread)?;
                shared.set_flight(recorder);
                Some(thread)
            }
            None => None,
        };
        let mut threads = Vec::with_capacity(reactors);
        for (id, reactor) in loops.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("pglink-reactor-{id}"))
                .spawn(move || reactor.run())
                .map_err(StartError::Thread)?;
            threads.push(thread);
        }
        // Every user's verifier, derived while the first clients connect (not before: on a
        // small machine the derivation would compete with the start for the CPU).
        shared.verifiers.ahead(ahead);
        log::info!(
            "pglink listening on {} ({reactors} reactor threads, {} databases)",
            local_addrs
                .iter()
                .map(ToString::to_string)
                .chain(socket_files.iter().map(|f| f.path().display().to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            shared.ctx().databases.len()
        );
        #[allow(unused_mut)]
        let mut server = ServerHandle {
            shared,
            reactors: threads,
            local_addrs,
            socket_files,
            resolver,
            deriver: Some(deriver),
            reloader,
            console: Some(console),
            #[cfg(feature = "metrics")]
            admin: None,
            metrics_addrs: Vec::new(),
            flight,
            #[cfg(feature = "otel")]
            spans,
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
    /// The TCP addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The unix sockets listened on (`listen` entries that are paths); the files are removed
    /// when the server stops.
    pub fn unix_sockets(&self) -> impl Iterator<Item = &Path> {
        self.socket_files.iter().map(unix::SocketFile::path)
    }

    /// Where the metrics and admin HTTP endpoint listens (empty without a `prometheus`
    /// section).
    pub fn metrics_addrs(&self) -> &[SocketAddr] {
        &self.metrics_addrs
    }

    /// Applies a new configuration without dropping sessions (see the README's "Reload"):
    /// secrets are resolved again; databases and users may come and go; pool sizes, timeouts,
    /// lifetimes, health checks, a backend's address, TLS and credentials, the client-side
    /// certificate and `auth_method` change. Server connections made with settings that
    /// changed are retired when next idle; sessions of a removed database or user end with
    /// FATAL 57P01 when next idle. Settings that need a restart are listed in the outcome and
    /// keep their old values. On error nothing changes.
    pub fn reload(&self, config: Config) -> Result<ReloadOutcome, ReloadError> {
        self.reloader.reload(config)
    }

    /// Reads, validates and applies `path` ([`ServerHandle::reload`]); counts the outcome in
    /// `pglink_config_reloads_total` either way.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<ReloadOutcome, ReloadError> {
        self.reloader.reload_file(path)
    }

    /// Whether a shutdown has begun (SHUTDOWN from the admin console, or a [`Stopper`]).
    pub fn is_stopping(&self) -> bool {
        self.shared.is_stopping()
    }

    /// Clients connected right now.
    pub fn client_count(&self) -> usize {
        self.shared.client_count()
    }

    /// Takes a flight-recorder snapshot now and waits until its file is written in
    /// `flight_recorder.output_dir` (the trigger `api`; never limited by the cooldown).
    pub fn flight_recorder_snapshot(&self) -> Result<Snapshot, SnapshotError> {
        match self.shared.flight() {
            Some(recorder) => recorder.snapshot(crate::observe::flight::Trigger::Api),
            None => Err(SnapshotError::NotConfigured),
        }
    }

    /// What SIGUSR1 does: asks for a flight-recorder snapshot (the trigger `signal`) unless
    /// `triggers.on_signal` is off, without waiting for it; the recorder logs where it went.
    pub fn flight_recorder_signal(&self) -> Result<(), SnapshotError> {
        match self.shared.flight() {
            Some(recorder) => recorder.signal(),
            None => Err(SnapshotError::NotConfigured),
        }
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
        // The listeners are closed: the socket files go.
        self.socket_files.clear();
        if let Some((stop, thread)) = self.resolver.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        self.reloader.stop_secrets();
        if let Some(mut console) = self.console.take() {
            console.stop();
        }
        // After the reactors (which send it work) and the secrets watcher (which too).
        if let Some(mut deriver) = self.deriver.take() {
            deriver.stop();
        }
        // Cancel deliveries still under way (each bounded by its timeouts).
        self.shared.join_helpers();
        // The reactors made their last spans: what is queued goes out, within a bound.
        #[cfg(feature = "otel")]
        if let Some(spans) = self.spans.take() {
            spans.shutdown(SPAN_FLUSH);
        }
        // After the reactors, which feed it.
        if let Some(flight) = self.flight.take() {
            flight.stop();
        }
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

/// How long a stop waits for queued spans to reach the collector.
#[cfg(feature = "otel")]
const SPAN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// The span exporter and the span settings, when `opentelemetry.enabled`.
#[cfg(feature = "otel")]
fn start_tracing(
    config: &Config,
) -> Result<
    Option<(
        crate::observe::otlp::Exporter,
        crate::observe::otlp::ExporterThread,
        Arc<crate::observe::spans::TraceSettings>,
    )>,
    StartError,
> {
    use crate::observe::otlp::{Exporter, ExporterConfig};
    let Some(o) = config.opentelemetry.as_ref().filter(|o| o.enabled) else {
        return Ok(None);
    };
    let settings =
        crate::observe::spans::TraceSettings::from_config(o).map_err(StartError::Invalid)?;
    let exporter_config = ExporterConfig::from_config(o);
    let endpoint = exporter_config
        .resolved_endpoint()
        .map_err(|e| StartError::Invalid(format!("opentelemetry: {e}")))?;
    let (exporter, thread) = Exporter::start(exporter_config)
        .map_err(|e| StartError::Invalid(format!("opentelemetry: {e}")))?;
    log::info!(
        "tracing: spans go to {endpoint} over OTLP/{} (sampling {})",
        o.otlp_protocol,
        o.sampling_rate
    );
    Ok(Some((exporter, thread, Arc::new(settings))))
}

/// What the config layer validates but this build cannot do or use (the OTLP exporter's
/// settings, which come from the environment too): say so instead of running silently
/// without it. [`Server::start_with`] calls this first, and `pglink -check` calls it too, so
/// a configuration that passes the check gets past it.
pub fn refuse_unimplemented(config: &Config) -> Result<(), StartError> {
    // The exporter's settings from the environment too: the endpoint, the headers, and an
    // https collector's certificate files, which the start would refuse.
    #[cfg(feature = "otel")]
    if let Some(o) = config.opentelemetry.as_ref().filter(|o| o.enabled) {
        crate::observe::otlp::ExporterConfig::from_config(o)
            .check()
            .map_err(|e| StartError::Invalid(format!("opentelemetry: {e}")))?;
    }
    #[cfg(not(feature = "otel"))]
    let _ = config;
    Ok(())
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

/// Databases by id and one pool per (database, configured user), by id; and what must
/// change in the pools the running configuration shares with it, once it is certain to be
/// put in effect ([`PoolChanges::commit`]).
type Catalog = (Vec<Database>, Vec<Arc<Pool>>, PoolChanges);

/// Changes to pools shared with the configuration in effect, held back until the new one
/// is known to be valid as a whole: a refused reload changes nothing.
#[derive(Default)]
struct PoolChanges {
    credentials: Vec<(Arc<Pool>, Credentials)>,
    removed: Vec<Arc<Pool>>,
}

impl PoolChanges {
    fn commit(self) {
        for (pool, credentials) in self.credentials {
            pool.set_credentials(credentials);
        }
        for pool in self.removed {
            pool.remove();
        }
    }
}

/// The databases and pools of `config`. With `old` (a reload, `old_config` being what
/// `old` was built from), every database and user that stays keeps its id, its pool (with
/// the new password) and its prepared-statement registry, and keeps its server target unless
/// the settings it is built from changed; removed ones stay as tombstones; new ones are
/// appended. On a reload `config` must come from [`in_effect`], which keeps the settings that
/// cannot change without a restart.
fn build_catalog(
    config: &Config,
    secrets: &ResolvedSecrets,
    reactors: usize,
    old: Option<(&Context, &Config)>,
) -> Result<Catalog, StartError> {
    let mut databases: Vec<Database> = Vec::new();
    let mut pools: Vec<Arc<Pool>> = Vec::new();
    let mut changes = PoolChanges::default();
    if let Some((ctx, _)) = old {
        databases.extend(ctx.databases.iter().map(Database::tombstone));
        pools.extend(ctx.pools.iter().cloned());
    }
    // The pools in effect by (database, user): a user that stays keeps its pool.
    let credentials: Vec<_> = pools.iter().map(|p| p.credentials().0).collect();
    let kept_pools: HashMap<(DbId, &str), PoolId> = pools
        .iter()
        .zip(&credentials)
        .filter(|(p, _)| !p.is_removed())
        .map(|(p, c)| ((p.db, c.user.as_str()), p.id))
        .collect();
    for (name, db) in &config.databases {
        let kept = old.and_then(|(ctx, old_config)| {
            let before = ctx
                .databases
                .iter()
                .find(|d| d.name == *name && !d.removed)?;
            Some((before, old_config.databases.get(name)?))
        });
        // On a reload `config` is already what can take effect (`in_effect`): the settings
        // shared with the registry and existing server connections are the old ones.
        let backend = &db.backend;
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
        let mut database = match kept {
            Some((before, before_config)) => {
                let target = if same_target(backend, &before_config.backend) {
                    before.target.clone()
                } else {
                    Arc::new(backend_target(name, backend)?)
                };
                before.reloaded(settings, target, before.context.clone())
            }
            None => {
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
                    cache_unnamed: backend.cache_unnamed_statements
                        && backend.prepared_statement_cache_size > 0,
                };
                let target = backend_target(name, backend)?;
                Database::new(
                    databases.len(),
                    name.clone(),
                    settings,
                    Arc::new(target),
                    Arc::new(context),
                )
            }
        };
        let id = database.id;
        for user in secrets.users(name) {
            let credentials = Credentials {
                user: user.username.clone(),
                password: user.password.clone(),
            };
            let existing = kept_pools
                .get(&(id, user.username.as_str()))
                .and_then(|&p| pools.get(p));
            let pool = match existing {
                Some(p) => {
                    changes.credentials.push((p.clone(), credentials));
                    p.id
                }
                None => {
                    let pool = pools.len();
                    pools.push(Arc::new(Pool::new(pool, id, credentials, reactors)));
                    pool
                }
            };
            database.pools.push(pool);
        }
        match databases.get_mut(id) {
            Some(slot) => *slot = database,
            None => databases.push(database),
        }
    }
    // Whatever the new configuration does not name any more.
    for pool in &pools {
        let listed = databases
            .get(pool.db)
            .is_some_and(|d| !d.removed && d.pools.contains(&pool.id));
        if !listed && !pool.is_removed() {
            changes.removed.push(pool.clone());
        }
    }
    Ok((databases, pools, changes))
}

/// Whether two backend sections build the same server target (address, database, timeout,
/// TLS settings), so connections made for one may serve the other.
fn same_target(a: &config::BackendConfig, b: &config::BackendConfig) -> bool {
    a.host == b.host
        && a.port == b.port
        && a.database == b.database
        && a.connect_timeout == b.connect_timeout
        && a.sslmode == b.sslmode
        && a.sslkey == b.sslkey
        && a.sslcert == b.sslcert
        && a.sslrootcert == b.sslrootcert
        && a.sslpassword.as_ref().map(|p| p.expose()) == b.sslpassword.as_ref().map(|p| p.expose())
        && a.default_startup_parameters == b.default_startup_parameters
}

/// What sessions are told and offered: `auth_method`, client TLS, channel binding.
fn session_config(config: &Config, channel_binding: Option<Vec<u8>>) -> SessionConfig {
    SessionConfig {
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
        traceparent_parameter: config.opentelemetry.as_ref().map_or_else(
            || "traceparent".to_owned(),
            |o| o.traceparent_startup_parameter.clone(),
        ),
    }
}

/// The server target of a backend section. A unix socket gets no TLS whatever `sslmode`
/// says: libpq ignores `sslmode` for unix sockets, and PostgreSQL offers TLS only over TCP.
fn backend_target(name: &str, b: &config::BackendConfig) -> Result<Target, StartError> {
    let sslmode = match b.sslmode {
        _ if crate::backend::is_socket_dir(&b.host) => SslMode::Disable,
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
    for db in databases.iter().filter(|d| !d.removed) {
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
    // The admin console: every user, by its first database's entry.
    let mut console = HashMap::new();
    for db in databases.iter().filter(|d| !d.removed) {
        for (name, entry) in table.get(&db.name).into_iter().flat_map(|d| &d.users) {
            console.entry(name.clone()).or_insert_with(|| {
                let admin = config.admin_users.iter().any(|a| a == name);
                (entry.clone(), admin)
            });
        }
    }
    UserTable {
        databases: table,
        scram_iterations: config.scram_iterations,
        mock_secret,
        console,
    }
}

/// Every `admin_users` entry must name a configured user (whose password it logs in with).
fn check_admin_users(config: &Config, users: &UserTable) -> Result<(), StartError> {
    let missing: Vec<&str> = config
        .admin_users
        .iter()
        .filter(|a| !users.console.contains_key(a.as_str()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StartError::Invalid(format!(
        "admin_users: {} not a user of any database (an admin logs in with a configured \
         user's password)",
        missing
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect::<Vec<_>>()
            .join(", ")
            + if missing.len() == 1 { " is" } else { " are" }
    )))
}

/// The secrets watcher in effect; `stopped` once shutdown has stopped it for good.
#[derive(Default)]
struct SecretsSlot {
    watcher: Option<config::SecretsWatcher>,
    stopped: bool,
}

/// What reloads and secret rotations share: the configuration in effect (whose lock also
/// keeps them from running at the same time) and how to publish a new one.
struct Reloader {
    shared: Arc<Shared>,
    config: std::sync::Mutex<Arc<Config>>,
    reactors: usize,
    /// Which secrets watcher's refreshes apply (a reload starts a new one).
    watcher: std::sync::atomic::AtomicU64,
    /// The secrets watcher in effect (its refresh thread, for AWS secrets).
    secrets: std::sync::Mutex<SecretsSlot>,
    /// The file the configuration came from, if any (RELOAD reads it again).
    path: std::sync::Mutex<Option<PathBuf>>,
}

impl Reloader {
    /// The configuration in effect.
    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.lock_config())
    }

    /// The configuration file, if the server was started from one.
    fn path(&self) -> Option<PathBuf> {
        self.path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn reload(self: &Arc<Self>, config: Config) -> Result<ReloadOutcome, ReloadError> {
        let result = self.try_reload(config);
        self.count_reload(&result);
        result
    }

    fn reload_file(self: &Arc<Self>, path: &std::path::Path) -> Result<ReloadOutcome, ReloadError> {
        let result = Config::from_path(path)
            .map_err(ReloadError::Config)
            .and_then(|config| self.try_reload(config));
        self.count_reload(&result);
        result
    }

    fn try_reload(self: &Arc<Self>, config: Config) -> Result<ReloadOutcome, ReloadError> {
        let apply = ReloadError::Apply;
        refuse_unimplemented(&config).map_err(apply)?;
        #[cfg(not(feature = "metrics"))]
        if config.prometheus.is_some() {
            return Err(apply(StartError::Unsupported(
                "prometheus: Prometheus metrics are not compiled into this pglink".into(),
            )));
        }
        let options = config::SecretsOptions::for_config(&config);
        let watcher = config::SecretsWatcher::start(&config, options)
            .map_err(|e| apply(StartError::Secrets(e)))?;
        let config = Arc::new(config);
        let mut current = self.lock_config();
        let applied = watcher.current();
        let outcome = self
            .apply_locked(&mut current, &config, &applied)
            .map_err(apply)?;
        let previous = self.install_watcher(&mut current, watcher, &applied);
        drop(current);
        // Outside the lock: its thread may be waiting for it in `rotate` (which then does
        // nothing, its generation being over).
        if let Some(previous) = previous {
            previous.stop();
        }
        for field in &outcome.restart_needed {
            log::warn!("reload: {field} changed but takes effect only after a restart");
        }
        log::info!("configuration reloaded");
        Ok(outcome)
    }

    fn count_reload(&self, result: &Result<ReloadOutcome, ReloadError>) {
        let slot = &self.shared.reloads[usize::from(result.is_err())];
        slot.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = result {
            log::error!("reload refused, the previous configuration stays in effect: {e}");
        }
    }

    fn lock_config(&self) -> std::sync::MutexGuard<'_, Arc<Config>> {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `watcher` the one whose refreshes apply (under the configuration lock, so that
    /// no refresh of the previous one lands in between), applies at once what it resolved
    /// since `applied` was read from it, and returns the previous watcher for the caller to
    /// stop once the lock is released. After shutdown has stopped the secrets, `watcher`
    /// itself comes back, to be stopped.
    fn install_watcher(
        self: &Arc<Self>,
        current: &mut std::sync::MutexGuard<'_, Arc<Config>>,
        watcher: config::SecretsWatcher,
        applied: &Arc<ResolvedSecrets>,
    ) -> Option<config::SecretsWatcher> {
        use std::sync::atomic::Ordering;
        let mut slot = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.stopped {
            return Some(watcher);
        }
        let generation = self.watcher.fetch_add(1, Ordering::AcqRel) + 1;
        let reloader = self.clone();
        watcher.set_on_change(Box::new(move |secrets| {
            reloader.rotate(generation, &secrets)
        }));
        let latest = watcher.current();
        if !Arc::ptr_eq(&latest, applied) {
            let config = Arc::clone(current);
            if let Err(e) = self.apply_locked(current, &config, &latest) {
                log::warn!("secrets refreshed but not applied: {e}");
            }
        }
        slot.watcher.replace(watcher)
    }

    /// Stops the secrets watcher (which also ends the reference its callback holds); none
    /// is installed after this.
    fn stop_secrets(&self) {
        let watcher = {
            let mut slot = self
                .secrets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slot.stopped = true;
            slot.watcher.take()
        };
        if let Some(watcher) = watcher {
            watcher.stop();
        }
    }

    /// Secrets rotated (refreshed from AWS) by the watcher of generation `watcher`: the
    /// configuration in effect again with them, unless a reload has replaced that watcher.
    fn rotate(&self, watcher: u64, secrets: &ResolvedSecrets) {
        let mut current = self.lock_config();
        if self.watcher.load(std::sync::atomic::Ordering::Acquire) != watcher {
            return;
        }
        let config = Arc::clone(&current);
        match self.apply_locked(&mut current, &config, secrets) {
            Ok(_) => log::info!("secrets refreshed; logins and pool credentials updated"),
            Err(e) => log::warn!("secrets refreshed but not applied: {e}"),
        }
    }

    /// Builds the configuration `config` with `secrets` on top of the one in effect (`current`,
    /// whose lock the caller holds) and publishes it; returns what needs a restart.
    fn apply_locked(
        &self,
        current: &mut std::sync::MutexGuard<'_, Arc<Config>>,
        config: &Arc<Config>,
        secrets: &ResolvedSecrets,
    ) -> Result<ReloadOutcome, StartError> {
        let (ctx, users) = self.shared.current();
        let mut outcome = ReloadOutcome::default();
        let config = &Arc::new(in_effect(current, config, &mut outcome.restart_needed));
        let tls_changed = current.tls != config.tls;
        let new_tls = if tls_changed {
            Some(client_tls(config)?)
        } else {
            None
        };
        let (databases, pools, changes) =
            build_catalog(config, secrets, self.reactors, Some((&ctx, current)))?;
        for db in databases.iter().filter(|d| !d.removed) {
            if let Err(e) = db.target.resolve() {
                log::warn!(
                    "databases.{}.backend.host: {e}; retrying every {RESOLVE_PERIOD:?}",
                    db.name
                );
            }
        }
        let table = user_table(config, secrets, &databases, Some(&users));
        check_admin_users(config, &table)?;
        let channel_binding = match &new_tls {
            Some((_, binding)) => binding.clone(),
            None => ctx.session.channel_binding.clone(),
        };
        let mut next = ctx.reloaded(
            databases,
            pools,
            session_config(config, channel_binding),
            config.max_client_connections as usize,
            config.client_login_timeout,
        );
        next.shutdown_grace = config.shutdown_timeout;
        next.max_logins = config.max_logins_in_progress as usize;
        // The id stays (keys carry it); the list is the new one.
        next.peering = Arc::new(peers::peering(config)?);
        // Valid as a whole: from here on it takes effect.
        changes.commit();
        if let Some((server_tls, channel_binding)) = new_tls {
            let identity = server_tls.map(|config| ClientIdentity {
                config,
                channel_binding,
            });
            self.shared.set_tls(identity);
        }
        let ahead = table.scram_secrets();
        self.shared.publish(next, table);
        self.shared.verifiers.ahead(ahead);
        // Only when the section changed (a secret rotation applies the same configuration
        // again, and must not restart the periodic schedule).
        if let (Some(recorder), Some(section)) = (self.shared.flight(), &config.flight_recorder)
            && current.flight_recorder != config.flight_recorder
        {
            recorder.reconfigure(section);
        }
        **current = Arc::clone(config);
        Ok(outcome)
    }
}

/// `new` as a reload can apply it: the settings that need a restart keep `old`'s values
/// (the JSON path of each that differs is added to `restart`), so that the configuration
/// built and kept (and shown by SHOW CONFIG) is the one in effect, and the next reload
/// compares against it. Restart-only are the listeners, the threads and the metrics endpoint
/// (made once, at the start), whether there is a flight recorder, and per database what the
/// shared statement registry and the session parameters of existing server connections
/// depend on.
fn in_effect(old: &Config, new: &Config, restart: &mut Vec<String>) -> Config {
    let mut c = new.clone();
    // Compared by what they mean (a bare port and ":port" are one address).
    if old.listen_addrs() != new.listen_addrs() {
        restart.push("listen".into());
    }
    if old.effective_reactor_threads() != new.effective_reactor_threads() {
        restart.push("reactor_threads".into());
    }
    c.listen = old.listen.clone();
    c.reactor_threads = old.reactor_threads;
    keep_old(restart, "prometheus", &mut c.prometheus, &old.prometheus);
    // The recorder's sinks are installed in the engines at the start: adding or removing
    // the section needs a restart; changes within it apply (`FlightRecorder::reconfigure`).
    if old.flight_recorder.is_some() != new.flight_recorder.is_some() {
        keep_old(
            restart,
            "flight_recorder",
            &mut c.flight_recorder,
            &old.flight_recorder,
        );
    }
    keep_old(
        restart,
        "opentelemetry",
        &mut c.opentelemetry,
        &old.opentelemetry,
    );
    keep_old(restart, "peer_id", &mut c.peer_id, &old.peer_id);
    keep_old(
        restart,
        "listen_reuse_port",
        &mut c.listen_reuse_port,
        &old.listen_reuse_port,
    );
    for (name, db) in &mut c.databases {
        let Some(before) = old.databases.get(name) else {
            continue;
        };
        let (b, was) = (&mut db.backend, &before.backend);
        let path = |field: &str| format!("databases.{name}.{field}");
        keep_old(
            restart,
            &path("backend.prepared_statement_cache_size"),
            &mut b.prepared_statement_cache_size,
            &was.prepared_statement_cache_size,
        );
        keep_old(
            restart,
            &path("backend.cache_unnamed_statements"),
            &mut b.cache_unnamed_statements,
            &was.cache_unnamed_statements,
        );
        keep_old(
            restart,
            &path("backend.description_cache_capacity"),
            &mut b.description_cache_capacity,
            &was.description_cache_capacity,
        );
        keep_old(
            restart,
            &path("backend.default_startup_parameters"),
            &mut b.default_startup_parameters,
            &was.default_startup_parameters,
        );
        keep_old(
            restart,
            &path("track_extra_parameters"),
            &mut db.track_extra_parameters,
            &before.track_extra_parameters,
        );
    }
    c
}

/// A restart-only setting: a change is listed in `restart` under `path`, and the value in
/// effect stays `old`.
fn keep_old<T: PartialEq + Clone>(restart: &mut Vec<String>, path: &str, new: &mut T, old: &T) {
    if new != old {
        restart.push(path.to_owned());
        *new = old.clone();
    }
}

/// The resolver thread and the channel that stops it.
type Resolver = (Sender<()>, JoinHandle<()>);

/// Resolves backend host names now and then again periodically, off the reactor threads
/// (those of the configuration in effect: a reload may add some).
fn start_resolver(shared: &Arc<Shared>) -> Result<Option<Resolver>, StartError> {
    for db in &shared.ctx().databases {
        if let Err(e) = db.target.resolve() {
            log::warn!(
                "databases.{}.backend.host: {e}; retrying every {RESOLVE_PERIOD:?}",
                db.name
            );
        }
    }
    let (stop, stopped): (Sender<()>, Receiver<()>) = std::sync::mpsc::channel();
    let shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("pglink-resolver".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RESOLVE_PERIOD) {
                let ctx = shared.ctx();
                let names = ctx
                    .databases
                    .iter()
                    .filter(|d| !d.removed && d.target.needs_dns());
                for db in names {
                    if let Err(e) = db.target.resolve() {
                        log::warn!("databases.{}.backend.host: {e}", db.name);
                    }
                }
            }
        })
        .map_err(StartError::Thread)?;
    Ok(Some((stop, thread)))
}

/// With `listen_reuse_port`, how long a stopping instance only stops accepting before it
/// drains: the connections the kernel had queued for it before its listener closed get
/// their logins and first transactions served, while the sibling instances take the new
/// ones.
const HANDOVER: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`bind_listeners`] made.
struct Bound {
    /// Each reactor's listeners.
    listeners: Vec<Vec<Listener>>,
    local_addrs: Vec<SocketAddr>,
    socket_files: Vec<unix::SocketFile>,
}

/// Listener sockets for every reactor: the first reactor binds (so port 0 picks a port), the
/// others bind the same addresses with SO_REUSEPORT and the kernel spreads connections.
///
/// SO_REUSEPORT would also let a second pglink (or anything else of the same OS user that
/// sets it) bind the same port and silently take a share of the connections. So each fixed
/// port is first probed with a plain bind, which fails while anyone listens there, unless
/// `listen_reuse_port` asks for exactly that sharing.
///
/// A unix socket has no SO_REUSEPORT: only the first reactor listens on it and serves its
/// clients (their server connections still come from any reactor's idle ones).
fn bind_listeners(config: &Config, reactors: usize) -> Result<Bound, StartError> {
    let mut wanted = Vec::new();
    let mut paths = Vec::new();
    for listen in config.listen_addrs() {
        let listen = match listen {
            config::Listen::Tcp(addr) => addr,
            config::Listen::Unix(path) => {
                paths.push(path);
                continue;
            }
        };
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
        if addr.port() != 0 && !config.listen_reuse_port {
            probe_free(addr)?;
        }
        let socket = bind_one(addr)?;
        let local = socket.local_addr().map_err(|error| StartError::Listen {
            addr: addr.to_string(),
            error,
        })?;
        bound.push(local);
        first.push(Listener::Tcp(socket));
    }
    let mut socket_files = Vec::new();
    for path in paths {
        let (listener, file) = unix::bind(path)?;
        first.push(listener);
        socket_files.push(file);
    }
    let mut all = vec![first];
    for _ in 1..reactors {
        all.push(
            bound
                .iter()
                .map(|&a| bind_one(a).map(Listener::Tcp))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(Bound {
        listeners: all,
        local_addrs: bound,
        socket_files,
    })
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
