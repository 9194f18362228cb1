//! Server connections in the engine: connect, log in, lend, clean up, health-check, close.
//!
//! ```text
//!  Connecting ──▶ LoggingIn ──▶ Idle ◀──────────────┐
//!                 (TLS, auth)    │  ▲                │
//!                                ▼  │ released       │ drained
//!                               Lent(client) ──client left mid-transaction──▶ Draining
//!                                   │ released while a cancel is on its way     ▲
//!                                   ▼                                           │
//!                                 Parked ──cancel delivered──▶ Idle      health check
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{ConnectFailure, ServerError};
use super::id::{ClientId, ServerId};
use super::io::{Conn, Failure, Io, TlsInfo, Transfer};
use super::output::OutBuf;
use super::timer::{ServerDeadlines, ServerTimer};
use super::{Engine, HIGH_WATER, MAX_STEPS};
use crate::backend::login::{Login, LoginParams, LoginStep, TlsNegotiation};
use crate::backend::{SslMode, Target};
use crate::client::relay::Relay;
use crate::client::users::PoolId;
use crate::client::{AcquireError, BackendContext, Drain, DrainKind, DrainStep, ParamList};
use crate::observe::events::{Event, ServerState, pool_number};
use crate::observe::metrics::{BackendState, CloseReason};
use crate::protocol::backend::tag as be;
use crate::protocol::framing::{Header, peek_header};
use crate::protocol::{ErrorFields, MessageType, Severity, frontend};

/// What a server connection is doing.
pub(super) enum State {
    /// Connect in progress, to the host's `addr_index`th address (or its unix socket).
    Connecting { addr_index: usize },
    /// Startup and authentication (the driver runs a TLS handshake while `handshaking`).
    LoggingIn {
        login: Box<Login>,
        handshaking: bool,
        addr_index: usize,
    },
    /// In the pool.
    Idle,
    /// Lent to this client.
    Lent(ClientId),
    /// Finishing what a vanished client left, or answering a health check.
    Draining(Box<Drain>),
    /// Released while a cancel for it is still being delivered; not lendable until done.
    Parked,
}

impl State {
    /// The state as metrics count it.
    fn gauge(&self) -> BackendState {
        match self {
            State::Connecting { .. } | State::LoggingIn { .. } => BackendState::Opening,
            State::Idle => BackendState::Idle,
            State::Lent(_) => BackendState::InUse,
            State::Draining(_) | State::Parked => BackendState::Draining,
        }
    }

    /// The state as events name it.
    fn event(&self) -> ServerState {
        match self {
            State::Connecting { .. } => ServerState::Connecting,
            State::LoggingIn { .. } => ServerState::LoggingIn,
            State::Idle => ServerState::Idle,
            State::Lent(_) => ServerState::Lent,
            State::Draining(_) => ServerState::Draining,
            State::Parked => ServerState::Parked,
        }
    }

    pub(super) fn is_logging_in(&self) -> bool {
        matches!(self, State::Connecting { .. } | State::LoggingIn { .. })
    }
}

/// One server connection.
pub struct ServerConn {
    pub(super) generation: u32,
    pub(super) pool: PoolId,
    pub(super) state: State,
    pub(super) output: Option<OutBuf>,
    /// The TLS negotiation this attempt uses (`allow` retries with TLS).
    pub(super) tls: TlsNegotiation,
    /// TLS is up on it (a cancel for it goes over TLS too).
    pub(super) uses_tls: bool,
    pub(super) params: Arc<ParamList>,
    /// The server's own cancel key for this connection.
    pub(super) server_key: Option<(u32, Vec<u8>)>,
    /// When a client last gave it back (or it logged in): what `pool_max_conn_idle_time`
    /// counts from. Health checks do not reset it.
    pub(super) idle_since: Instant,
    /// When it was last known to work (used, logged in or health-checked): what
    /// `pool_health_check_period` counts from.
    pub(super) checked_at: Instant,
    pub(super) expires: Option<Instant>,
    pub(super) credentials_version: u64,
    /// The server it connects to, as configured when it was opened: after a reload that
    /// changed it, the connection is retired when next idle.
    pub(super) target: Arc<Target>,
    /// Its database's RECONNECT count when it was opened.
    pub(super) reconnect_epoch: u64,
    pub(super) cancel_in_flight: bool,
    pub(super) deadlines: ServerDeadlines,
    pub(super) read_paused: bool,
    pub(super) pending_input: bool,
    pub(super) flush_queued: bool,
    /// Prepared statements and parameter values of this connection.
    pub(super) context: BackendContext,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("pool", &self.pool)
            .field("state", &self.state.event())
            .finish_non_exhaustive()
    }
}

impl ServerConn {
    pub(super) fn output_len(&self) -> usize {
        self.output.as_ref().map_or(0, OutBuf::len)
    }
}

impl Engine {
    /// Every change of a server connection's state goes through here (and its arrival and
    /// departure through [`Engine::insert_server`] and [`Engine::remove_server`]), which
    /// keeps the per-state gauges exact and records the event. Returns the previous state.
    pub(super) fn set_state(&mut self, id: ServerId, state: State) -> Option<State> {
        let s = self
            .servers
            .get_mut(id.index())
            .filter(|s| s.generation == id.generation())?;
        let old = std::mem::replace(&mut s.state, state);
        if let Some(p) = self.stats.pool(s.pool) {
            p.backend_moved(Some(old.gauge()), Some(s.state.gauge()));
        }
        if old.event() != s.state.event() {
            let event = Event::Server {
                server: id,
                pool: pool_number(s.pool),
                state: s.state.event(),
            };
            self.record(event);
        }
        Some(old)
    }

    /// Puts a server connection into the slab under a new generation.
    fn insert_server(&mut self, mut conn: ServerConn) -> ServerId {
        conn.generation = self.generations.bump();
        if let Some(p) = self.stats.pool(conn.pool) {
            p.backend_moved(None, Some(conn.state.gauge()));
        }
        let pool = pool_number(conn.pool);
        let state = conn.state.event();
        let generation = conn.generation;
        let id = ServerId::new(self.servers.insert(conn), generation);
        self.record(Event::Server {
            server: id,
            pool,
            state,
        });
        id
    }

    /// Takes a server connection out of the slab (closed, or handed to another engine).
    fn remove_server(&mut self, id: ServerId, leaving: ServerState) -> Option<ServerConn> {
        self.server(id)?;
        let s = self.servers.try_remove(id.index())?;
        if let Some(p) = self.stats.pool(s.pool) {
            p.backend_moved(Some(s.state.gauge()), None);
        }
        let pool = pool_number(s.pool);
        self.record(Event::Server {
            server: id,
            pool,
            state: leaving,
        });
        Some(s)
    }

    /// Starts a connection for `pool` (the caller reserved a slot in the database), to the
    /// `addr_index`th address of its host (libpq tries each in turn).
    pub(super) fn open_server(
        &mut self,
        pool: PoolId,
        tls: Option<TlsNegotiation>,
        addr_index: usize,
    ) {
        let Some((p, db)) = self.ctx.pool_database(pool) else {
            return;
        };
        p.opened();
        if let Some(s) = self.stats.pool(pool) {
            s.connect_attempts.inc();
        }
        let target = db.target.clone();
        let (_, credentials_version) = p.credentials();
        let conn = ServerConn {
            generation: 0,
            pool,
            state: State::Connecting { addr_index },
            output: None,
            tls: tls.unwrap_or_else(|| target.sslmode.first_attempt()),
            uses_tls: false,
            params: Arc::new(Vec::new()),
            server_key: None,
            idle_since: self.now,
            checked_at: self.now,
            expires: None,
            credentials_version,
            target: target.clone(),
            reconnect_epoch: db.reconnect_epoch(),
            cancel_in_flight: false,
            deadlines: ServerDeadlines::default(),
            read_paused: false,
            pending_input: false,
            flush_queued: false,
            context: BackendContext::new(db.settings.statement_cache_capacity),
        };
        let deadline = self.now + target.connect_timeout;
        let id = self.insert_server(conn);
        if let Some(s) = self.servers.get_mut(id.index()) {
            self.timers
                .server(&mut s.deadlines, id, ServerTimer::Connect, deadline);
        }
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.connecting += 1;
        }
        self.io.push_back(Io::Connect {
            server: id,
            target,
            addr_index,
        });
    }

    /// Gives back the slots taken for a server connection that never existed or has closed.
    fn release_capacity(&mut self, pool: PoolId) {
        if let Some((p, db)) = self.ctx.pool_database(pool) {
            p.closed();
            db.release_slot();
        }
    }

    /// The connection is up: start the login.
    pub(super) fn server_connected(&mut self, id: ServerId) {
        let Some(s) = self.server(id) else {
            return;
        };
        let State::Connecting { addr_index } = s.state else {
            return;
        };
        let Some(p) = self.ctx.pools.get(s.pool) else {
            return;
        };
        let (creds, version) = p.credentials();
        let params = LoginParams {
            user: creds.user.clone(),
            password: creds.password.clone(),
            database: s.target.database.clone(),
            startup_params: s.target.startup_params.clone(),
            tls: s.tls,
        };
        let Engine { servers, bufs, .. } = self;
        let Some(s) = servers.get_mut(id.index()) else {
            return;
        };
        s.credentials_version = version;
        let login = Login::start(params, bufs.get(&mut s.output));
        self.set_state(
            id,
            State::LoggingIn {
                login: Box::new(login),
                handshaking: false,
                addr_index,
            },
        );
        self.queue_flush(Conn::Server(id));
    }

    /// Whether reading more from the server is useful now.
    pub(super) fn server_wants_input(&self, id: ServerId) -> bool {
        let Some(s) = self.server(id) else {
            return false;
        };
        match s.state {
            State::Connecting { .. } => false,
            State::Lent(c) => self
                .client(c)
                .is_some_and(|c| c.output.as_ref().is_none_or(|o| o.len() <= HIGH_WATER)),
            _ => true,
        }
    }

    /// Routes server bytes by state until no progress; returns how many were used.
    pub(super) fn server_input(&mut self, id: ServerId, data: &[u8]) -> usize {
        let mut pos = 0;
        for _ in 0..MAX_STEPS {
            let Some(s) = self.server(id) else {
                break;
            };
            let rest = data.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let (n, go_on) = match s.state {
                State::Connecting { .. }
                | State::LoggingIn {
                    handshaking: true, ..
                } => (0, false),
                State::LoggingIn { .. } => self.login_step(id, rest),
                State::Lent(c) => self.server_to_client(id, c, rest),
                State::Idle | State::Parked => self.idle_message(id, rest),
                State::Draining(_) => self.drain_step(id, rest),
            };
            pos += n;
            self.run_actions();
            if !go_on {
                break;
            }
        }
        if let Some(s) = self.server_mut(id) {
            s.pending_input = pos < data.len();
        }
        pos
    }

    fn login_step(&mut self, id: ServerId, data: &[u8]) -> (usize, bool) {
        let Engine {
            servers,
            bufs,
            rng,
            shards,
            ..
        } = self;
        let Some(s) = servers.get_mut(id.index()) else {
            return (0, false);
        };
        let State::LoggingIn { login, .. } = &mut s.state else {
            return (0, false);
        };
        let Some(shard) = shards.get_mut(s.pool) else {
            return (0, false);
        };
        let result = login.on_data(
            data,
            bufs.get(&mut s.output),
            &mut **rng,
            &mut shard.salted_keys,
        );
        self.queue_flush(Conn::Server(id));
        match result {
            Ok((n, LoginStep::NeedMore)) => (n, n > 0),
            Ok((n, LoginStep::StartTls)) => {
                self.start_server_tls(id);
                (n, false)
            }
            Ok((n, LoginStep::Ready)) => {
                self.logged_in(id);
                (n, true)
            }
            Err(e) => {
                self.login_failed(id, ServerError::Login(e));
                (0, false)
            }
        }
    }

    fn start_server_tls(&mut self, id: ServerId) {
        let Some(s) = self.server_mut(id) else {
            return;
        };
        if let State::LoggingIn { handshaking, .. } = &mut s.state {
            *handshaking = true;
        }
        s.uses_tls = true;
        let target = s.target.clone();
        self.io.push_back(Io::ServerTls { server: id, target });
    }

    /// The TLS handshake with the server is done: the login goes on inside it.
    pub(super) fn server_tls_established(&mut self, id: ServerId, info: TlsInfo) {
        let Engine { servers, bufs, .. } = self;
        let Some(s) = servers
            .get_mut(id.index())
            .filter(|s| s.generation == id.generation())
        else {
            return;
        };
        if let State::LoggingIn {
            login, handshaking, ..
        } = &mut s.state
        {
            *handshaking = false;
            login.on_tls_established(info.channel_binding, bufs.get(&mut s.output));
        }
        self.queue_flush(Conn::Server(id));
    }

    fn logged_in(&mut self, id: ServerId) {
        let Some(State::LoggingIn { login, .. }) = self.set_state(id, State::Idle) else {
            return;
        };
        let login = *login;
        let now = self.now;
        let Engine {
            servers, ctx, rng, ..
        } = self;
        let Some(s) = servers.get_mut(id.index()) else {
            return;
        };
        s.deadlines.stop(ServerTimer::Connect);
        let Some((p, db)) = ctx.pool_database(s.pool) else {
            return;
        };
        // It has the values it logged in with, the configured ones included: clients whose
        // settings match need no sync query on its first lending.
        s.context
            .set_login_params(&login.server_params, &s.target.startup_params);
        s.params = Arc::new(login.server_params);
        s.server_key = login.cancel_key;
        s.idle_since = now;
        s.checked_at = now;
        p.set_params(s.params.clone());
        let settings = &db.settings;
        s.expires = settings.max_lifetime.map(|life| {
            let jitter = settings.lifetime_jitter.map_or(Duration::ZERO, |j| {
                let mut r = [0u8; 8];
                rng.fill(&mut r);
                j.mul_f64(u64::from_le_bytes(r) as f64 / u64::MAX as f64)
            });
            now + life + jitter
        });
        let pool = s.pool;
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.connecting = shard.connecting.saturating_sub(1);
            shard.login_succeeded();
        }
        log::debug!(
            database = s.target.database.as_str(),
            backend_pid = s.server_key.as_ref().map(|k| k.0);
            "server connection {} for pool {pool} logged in",
            id.index()
        );
        self.server_available(id);
        // After failures it was the only attempt: clients that waited behind it need more.
        self.grow(pool);
    }

    /// Lent: the client's session decides what the server's bytes become.
    fn server_to_client(&mut self, id: ServerId, client: ClientId, data: &[u8]) -> (usize, bool) {
        debug_assert_eq!(
            self.client(client).and_then(|c| c.session.server()),
            Some(id)
        );
        // When its transaction ends the session may send more (parameters read back,
        // statements closed) before the connection is released.
        let n = self
            .with_session(client, |s, _, out| s.on_backend_data(data, out))
            .unwrap_or(0);
        let over = self
            .client(client)
            .is_some_and(|c| c.output.as_ref().is_some_and(|o| o.len() > HIGH_WATER));
        // Over the high-water mark: wait for the client to drain.
        (n, n > 0 && !over)
    }

    /// An idle (or parked) server may only send asynchronous messages.
    fn idle_message(&mut self, id: ServerId, data: &[u8]) -> (usize, bool) {
        let header = match peek_header(data, self.ctx.max_message_len) {
            Ok(Some(h)) => h,
            Ok(None) => return (0, false),
            Err(e) => {
                let why = format!("invalid message from idle server: {e}");
                self.close_server(id, CloseReason::ProtocolError, &why);
                return (0, false);
            }
        };
        let Some(body) = data.get(Header::SIZE..header.frame_len()) else {
            return (0, false);
        };
        match header.tag {
            be::PARAMETER_STATUS | be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE => {}
            be::ERROR_RESPONSE => {
                let fields = ErrorFields::decode(header.tag, body).ok();
                if fields
                    .and_then(|f| f.severity_kind())
                    .is_some_and(Severity::ends_session)
                {
                    let message = fields
                        .and_then(|f| f.message())
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    let why = format!("server ended idle connection: {message}");
                    self.close_server(id, CloseReason::ServerClosed, &why);
                    return (0, false);
                }
            }
            tag => {
                let why = format!(
                    "idle server sent unexpected message type {}",
                    MessageType(tag)
                );
                self.close_server(id, CloseReason::ProtocolError, &why);
                return (0, false);
            }
        }
        (header.frame_len(), true)
    }

    /// Draining: swallow responses until the server is idle again, then return it.
    fn drain_step(&mut self, id: ServerId, data: &[u8]) -> (usize, bool) {
        let Engine { servers, .. } = self;
        let Some(s) = servers.get_mut(id.index()) else {
            return (0, false);
        };
        let State::Draining(drain) = &mut s.state else {
            return (0, false);
        };
        let reset = drain.kind() == DrainKind::Reset;
        match drain.on_server_data(data, &mut s.context, &s.params, &s.target.startup_params) {
            Ok((n, DrainStep::NeedMore)) => (n, n > 0),
            Ok((n, DrainStep::Idle)) => {
                s.checked_at = self.now;
                if reset {
                    // Cleaned up after a vanished client: idle from now on.
                    s.idle_since = self.now;
                }
                s.deadlines.stop(ServerTimer::Drain);
                // Draining → Idle (or Parked) there.
                self.server_available(id);
                (n, true)
            }
            Ok((_, DrainStep::Fatal)) => {
                let why = "server reported FATAL during cleanup";
                self.close_server(id, drain_failure(reset), why);
                (0, false)
            }
            Err(e) => {
                let why = format!("cleanup failed: {e}");
                self.close_server(id, drain_failure(reset), &why);
                (0, false)
            }
        }
    }

    /// The client vanished mid-transaction: cancel what runs, finish any COPY or batch, roll
    /// back, and return the connection once it is idle (or close it at the deadline).
    pub(super) fn start_reset(&mut self, id: ServerId, relay: Relay) {
        let Engine { servers, bufs, .. } = self;
        let Some(s) = servers.get_mut(id.index()) else {
            return;
        };
        let Ok(drain) = Drain::reset(relay, bufs.get(&mut s.output)) else {
            return self.close_server(id, CloseReason::ResetFailed, "cannot clean up after client");
        };
        let running = drain.needs_cancel();
        self.start_drain(id, drain);
        // Bytes the server sent before the client left go through the drain now.
        self.io.push_back(Io::Resume(Conn::Server(id)));
        if running {
            self.cancel_server_query(id);
        }
    }

    /// Sends an empty query to an idle server connection; it must answer within the reset
    /// timeout.
    pub(super) fn start_health_check(&mut self, id: ServerId) {
        let Engine {
            servers, bufs, ctx, ..
        } = self;
        let Some(s) = servers.get_mut(id.index()) else {
            return;
        };
        let drain = Drain::health_check(ctx.max_message_len, bufs.get(&mut s.output));
        self.start_drain(id, drain);
    }

    fn start_drain(&mut self, id: ServerId, drain: Drain) {
        self.set_state(id, State::Draining(Box::new(drain)));
        self.start_drain_timer(id);
        self.queue_flush(Conn::Server(id));
    }

    fn start_drain_timer(&mut self, id: ServerId) {
        let at = self.now + self.ctx.reset_timeout;
        if let Some(s) = self.servers.get_mut(id.index()) {
            self.timers
                .server(&mut s.deadlines, id, ServerTimer::Drain, at);
        }
    }

    pub(super) fn on_server_timer(&mut self, id: ServerId, timer: ServerTimer) {
        let Some(s) = self.server(id) else {
            return;
        };
        match (timer, &s.state) {
            (ServerTimer::Drain, State::Draining(drain)) => {
                let reset = drain.kind() == DrainKind::Reset;
                let why = if reset {
                    "cleanup after client timed out"
                } else {
                    "health check timed out"
                };
                self.close_server(id, drain_failure(reset), why);
            }
            (ServerTimer::Connect, state) if state.is_logging_in() => {
                self.login_failed(id, ServerError::Timeout);
            }
            (ServerTimer::Cancel, _) => {
                log::warn!(
                    "a cancel delivery for server connection {} never reported back",
                    id.index()
                );
                self.cancel_done(id);
            }
            _ => {}
        }
    }

    /// The driver lost a server connection.
    pub(super) fn server_lost(&mut self, id: ServerId, error: ServerError) {
        let Some(s) = self.server(id) else {
            return;
        };
        match s.state {
            State::Lent(c) => {
                let client = self.client(c).map(|c| c.session.cancel_key().pid);
                log::warn!(
                    conn = client,
                    database = s.target.database.as_str(),
                    backend_pid = s.server_key.as_ref().map(|k| k.0);
                    "server connection {} lost while lent: {error}",
                    id.index()
                );
                self.close_server(id, CloseReason::ServerClosed, &error.to_string());
                self.with_session(c, |s, _, out| s.on_backend_lost(out));
            }
            State::Connecting { .. } | State::LoggingIn { .. } => self.login_failed(id, error),
            _ => self.close_server(id, CloseReason::ServerClosed, &error.to_string()),
        }
    }

    /// A connection attempt failed. With `sslmode=allow` a refused plaintext login is retried
    /// with TLS, and a TCP connection that could not be made tries the host's next address;
    /// otherwise waiting clients learn why if the pool has nothing else coming.
    pub(super) fn login_failed(&mut self, id: ServerId, error: ServerError) {
        let Some(s) = self.server(id) else {
            return;
        };
        let pool = s.pool;
        let target = s.target.clone();
        let retry_tls = s.tls == TlsNegotiation::Disable
            && error.is_refusal()
            && target.sslmode == SslMode::Allow;
        let next_addr = match s.state {
            State::Connecting { addr_index } if target.addrs().len() > addr_index + 1 => {
                Some(addr_index + 1)
            }
            _ => None,
        };
        let addr_index = match s.state {
            State::Connecting { addr_index } | State::LoggingIn { addr_index, .. } => addr_index,
            _ => 0,
        };
        let tls = s.tls;
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.connecting = shard.connecting.saturating_sub(1);
        }
        if let Some(st) = self.stats.pool(pool) {
            st.connect_failures.inc();
        }
        if retry_tls || next_addr.is_some() {
            log::debug!("server connection for pool {pool}: {error}; trying again");
            // Keep the database slot: close this socket and connect again.
            if let Some(mut s) = self.remove_server(id, ServerState::Closed) {
                self.io.push_back(Io::Close {
                    conn: Conn::Server(id),
                    last: s.output.take(),
                });
            }
            if let Some(p) = self.ctx.pools.get(pool) {
                p.closed();
            }
            return match next_addr {
                Some(next) => self.open_server(pool, Some(tls), next),
                None => self.open_server(pool, Some(TlsNegotiation::Require), addr_index),
            };
        }
        let failure = ConnectFailure::new(format!("{}:{}", target.host, target.port), error);
        log::warn!(
            "server connection for pool {pool}: {} {}: {failure}",
            failure.severity().as_str(),
            failure.sqlstate()
        );
        let now = self.now;
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.login_failed(now, failure.clone());
        }
        // No automatic retry here (that would spin against a server that is down): waiters
        // learn the cause if nothing else is coming, and the pool tries again when its
        // back-off is over (see `engine::pool`).
        self.discard_server(id);
        self.pool_connect_failed(pool, failure);
    }

    /// Nothing will serve this pool's waiters (no connection open or opening anywhere): they
    /// get the error now instead of waiting for their timeout.
    pub(super) fn pool_connect_failed(&mut self, pool: PoolId, failure: ConnectFailure) {
        let nothing_coming = self
            .ctx
            .pools
            .get(pool)
            .is_some_and(|p| p.open_count() == 0);
        if !nothing_coming {
            return;
        }
        for c in self.take_waiters(pool) {
            if self.client(c).is_some() {
                self.fail_acquire(c, AcquireError::Server(failure.clone()));
            }
        }
    }

    /// Closes a server connection (politely with Terminate when it is idle). `reason` is
    /// counted for connections that had logged in; `why` is logged.
    pub(super) fn close_server(&mut self, id: ServerId, reason: CloseReason, why: &str) {
        let Engine {
            servers,
            bufs,
            stats,
            ..
        } = self;
        let Some(s) = servers
            .get_mut(id.index())
            .filter(|s| s.generation == id.generation())
        else {
            return;
        };
        log::debug!(
            database = s.target.database.as_str(),
            backend_pid = s.server_key.as_ref().map(|k| k.0);
            "server connection {} closed: {why}",
            id.index()
        );
        if matches!(s.state, State::Idle) {
            frontend::terminate(bufs.get(&mut s.output));
        }
        if !s.state.is_logging_in()
            && let Some(p) = stats.pool(s.pool)
        {
            p.closed(reason);
        }
        let pool = s.pool;
        self.discard_server(id);
        // The pool may be below its minimum or have waiters now.
        self.grow(pool);
    }

    /// Drops a server connection and gives its slot back.
    fn discard_server(&mut self, id: ServerId) {
        let Some(mut s) = self.remove_server(id, ServerState::Closed) else {
            return;
        };
        if matches!(s.state, State::Idle) {
            self.forget_idle(s.pool, id);
        }
        self.release_capacity(s.pool);
        self.io.push_back(Io::Close {
            conn: Conn::Server(id),
            last: s.output.take(),
        });
    }

    /// The driver wrote `n` bytes to the server.
    pub(super) fn server_sent(&mut self, id: ServerId, n: usize) {
        let Engine { servers, bufs, .. } = self;
        let Some(s) = servers
            .get_mut(id.index())
            .filter(|s| s.generation == id.generation())
        else {
            return;
        };
        s.flush_queued = false;
        if let Some(out) = s.output.as_mut() {
            out.advance(n);
        }
        bufs.recycle(&mut s.output);
        if let State::Lent(c) = s.state {
            self.wake_client_if_paused(c);
        }
    }

    /// Resumes reading a server that stopped, once it would really read.
    pub(super) fn wake_server_if_paused(&mut self, id: ServerId) {
        if self.server(id).is_some_and(|s| s.read_paused) && self.server_wants_input(id) {
            if let Some(s) = self.server_mut(id) {
                s.read_paused = false;
            }
            self.io.push_back(Io::Resume(Conn::Server(id)));
        }
    }

    /// Moves an idle server connection to engine `to` (`requested`: an answer to its
    /// `WantServer`).
    pub(super) fn hand_over(&mut self, id: ServerId, to: usize, requested: bool) -> bool {
        if to >= self.ctx.reactors || to == self.id {
            return false;
        }
        let Some(mut conn) = self.remove_server(id, ServerState::HandedOff) else {
            return false;
        };
        if matches!(conn.state, State::Idle) {
            self.forget_idle(conn.pool, id);
        }
        conn.deadlines = ServerDeadlines::default();
        self.io.push_back(Io::HandOff {
            server: id,
            to,
            transfer: Transfer {
                conn: Box::new(conn),
                requested,
            },
        });
        true
    }

    /// Takes in a server connection handed over by another engine (or one that could not
    /// be sent); the driver registers its socket under the returned id.
    pub fn handle_adopt(&mut self, transfer: Transfer, now: Instant) -> ServerId {
        debug_assert!(
            self.io.is_empty(),
            "ids are handed out with no commands pending"
        );
        self.now = now;
        let Transfer {
            mut conn,
            requested,
        } = transfer;
        // A handed-over connection is idle (it travels only from an idle stack).
        conn.state = State::Idle;
        conn.read_paused = false;
        conn.flush_queued = false;
        let pool = conn.pool;
        let id = self.insert_server(*conn);
        if requested && let Some(shard) = self.shards.get_mut(pool) {
            shard.steals = shard.steals.saturating_sub(1);
        }
        if self.output(Conn::Server(id)).is_empty() {
            if let Some(s) = self.servers.get_mut(id.index()) {
                self.bufs.recycle(&mut s.output);
            }
        } else {
            self.queue_flush(Conn::Server(id));
        }
        self.io.push_back(Io::Resume(Conn::Server(id)));
        self.server_available(id);
        self.grow(pool);
        self.run_actions();
        id
    }
}

/// Why a drain (cleanup after a vanished client, or a health check) that failed closes.
fn drain_failure(reset: bool) -> CloseReason {
    if reset {
        CloseReason::ResetFailed
    } else {
        CloseReason::HealthCheckFailed
    }
}

impl From<Failure> for ServerError {
    fn from(f: Failure) -> Self {
        ServerError::Lost(f)
    }
}
