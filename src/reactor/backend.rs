//! Backend connections in the reactor: connect, log in, lend, clean up, health-check, close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;

use super::buf::{InBuf, OutBuf};
use super::connio::{Filled, read_into, write_out};
use super::stream::Stream;
use super::timer::{Timer, TokKey};
use super::token::{Kind, Tok};
use super::{HIGH_WATER, MAX_READS, Reactor};
use crate::auth::tls_server_end_point;
use crate::backend::SslMode;
use crate::backend::login::{Login, LoginError, LoginParams, LoginStep, TlsNegotiation};
use crate::client::BackendContext;
use crate::client::ParamList;
use crate::client::relay::Relay;
use crate::client::users::PoolId;
use crate::client::{AcquireError, Drain, DrainKind, DrainStep, Out};
use crate::observe::events::NoEvents;
use crate::observe::metrics::{BackendState, CloseReason};
use crate::protocol::backend::tag as be;
use crate::protocol::framing::{Header, peek_header};
use crate::protocol::{ErrorFields, MessageType, Severity, frontend};

/// What a backend connection is doing.
pub(super) enum State {
    /// TCP connect in progress.
    Connecting,
    /// Startup and authentication (including a TLS handshake when `handshaking`).
    LoggingIn {
        login: Box<Login>,
        handshaking: bool,
    },
    /// In the pool.
    Idle,
    /// Lent to the client at this slab index.
    Lent(usize),
    /// Finishing what a vanished client left, or answering a health check.
    Draining(Box<Drain>),
    /// Released while a cancel for it is still being delivered; not lendable until done.
    Parked,
}

pub struct Backend {
    pub(super) generation: u32,
    pub(super) stream: Stream,
    pub(super) pool: PoolId,
    pub(super) state: State,
    pub(super) input: Option<InBuf>,
    pub(super) output: Option<OutBuf>,
    pub(super) addr: SocketAddr,
    /// The TLS negotiation this attempt uses (`allow` retries with TLS).
    pub(super) tls: TlsNegotiation,
    /// Which of the host's addresses this connection went to.
    pub(super) addr_index: usize,
    pub(super) params: Arc<ParamList>,
    /// The server's own cancel key for this connection.
    pub(super) server_key: Option<(u32, Vec<u8>)>,
    /// When a client last gave this connection back (or it logged in): what
    /// `pool_max_conn_idle_time` counts from. Health checks do not reset it.
    pub(super) idle_since: Instant,
    /// When this connection was last known to work (used, logged in or health-checked): what
    /// `pool_health_check_period` counts from.
    pub(super) checked_at: Instant,
    pub(super) expires: Option<Instant>,
    pub(super) credentials_version: u64,
    pub(super) cancel_in_flight: bool,
    pub(super) read_paused: bool,
    /// The last read found the socket empty (see `Client::drained`).
    pub(super) drained: bool,
    /// Prepared statements and parameter values of this connection.
    pub(super) context: BackendContext,
}

impl State {
    /// The state as metrics count it.
    fn gauge(&self) -> BackendState {
        match self {
            State::Connecting | State::LoggingIn { .. } => BackendState::Opening,
            State::Idle => BackendState::Idle,
            State::Lent(_) => BackendState::InUse,
            State::Draining(_) | State::Parked => BackendState::Draining,
        }
    }
}

impl Backend {
    pub(super) fn output_len(&self) -> usize {
        self.output.as_ref().map_or(0, OutBuf::len)
    }

    fn is_logging_in(&self) -> bool {
        matches!(self.state, State::Connecting | State::LoggingIn { .. })
    }
}

impl Reactor {
    /// Every change of a backend's state goes through here (and its arrival and departure
    /// through [`Reactor::insert_backend`] and [`Reactor::remove_backend`]), which keeps the
    /// per-state gauges exact. Returns the previous state.
    pub(super) fn set_backend_state(&mut self, bi: usize, state: State) -> Option<State> {
        let b = self.backends.get_mut(bi)?;
        let old = std::mem::replace(&mut b.state, state);
        if let Some(p) = self.stats.pool(b.pool) {
            p.backend_moved(Some(old.gauge()), Some(b.state.gauge()));
        }
        Some(old)
    }

    /// Puts a backend into the slab under a new token; returns its index.
    fn insert_backend(&mut self, backend: Backend) -> usize {
        if let Some(p) = self.stats.pool(backend.pool) {
            p.backend_moved(None, Some(backend.state.gauge()));
        }
        self.backends.insert(backend)
    }

    /// Takes a backend out of the slab (closed, or handed to another reactor).
    pub(super) fn remove_backend(&mut self, bi: usize) -> Option<Backend> {
        let b = self.backends.try_remove(bi)?;
        if let Some(p) = self.stats.pool(b.pool) {
            p.backend_moved(Some(b.state.gauge()), None);
        }
        Some(b)
    }

    pub(super) fn backend_tok(&self, bi: usize) -> Option<Tok> {
        self.backends
            .get(bi)
            .map(|b| Tok::new(Kind::Backend, bi, b.generation))
    }

    /// Starts a connection for `pool`. The caller reserved a slot in the database.
    pub(super) fn open_backend(&mut self, pool: PoolId, tls: Option<TlsNegotiation>) {
        self.open_backend_at(pool, tls, 0);
    }

    /// Connects to the `addr_index`th address the backend host resolved to (libpq tries each
    /// in turn when a TCP connection cannot be made).
    fn open_backend_at(&mut self, pool: PoolId, tls: Option<TlsNegotiation>, addr_index: usize) {
        let Some(p) = self.shared.pools.get(pool) else {
            return;
        };
        let Some(db) = self.shared.databases.get(p.db) else {
            return;
        };
        p.opened();
        if let Some(s) = self.stats.pool(pool) {
            s.connect_attempts.inc();
        }
        let target = db.target.clone();
        let tls = tls.unwrap_or_else(|| target.sslmode.first_attempt());
        let connect = || -> std::io::Result<(TcpStream, SocketAddr)> {
            let addrs = target.addrs();
            let addr = *addrs.get(addr_index).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("could not resolve host \"{}\"", target.host),
                )
            })?;
            Ok((TcpStream::connect(addr)?, addr))
        };
        let (mut sock, addr) = match connect() {
            Ok(s) => s,
            Err(e) => {
                self.release_capacity(pool);
                if let Some(s) = self.stats.pool(pool) {
                    s.connect_failures.inc();
                }
                let message = format!(
                    "cannot connect to server {}:{}: {e}",
                    target.host, target.port
                );
                return self.pool_connect_failed(
                    pool,
                    crate::protocol::SqlState::CONNECTION_FAILURE,
                    message,
                );
            }
        };
        let generation = self.generations.bump();
        let tok = Tok::new(Kind::Backend, self.backends.vacant_key(), generation);
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            tok.to_token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.release_capacity(pool);
            if let Some(s) = self.stats.pool(pool) {
                s.connect_failures.inc();
            }
            return self.pool_connect_failed(
                pool,
                crate::protocol::SqlState::CONNECTION_FAILURE,
                format!("cannot register server socket: {e}"),
            );
        }
        let (_, credentials_version) = p.credentials();
        let statement_capacity = db.settings.statement_cache_capacity;
        self.insert_backend(Backend {
            generation,
            stream: Stream::plain(sock),
            pool,
            state: State::Connecting,
            input: None,
            output: None,
            addr,
            tls,
            addr_index,
            params: Arc::new(Vec::new()),
            server_key: None,
            idle_since: self.now,
            checked_at: self.now,
            expires: None,
            credentials_version,
            cancel_in_flight: false,
            read_paused: false,
            drained: false,
            context: BackendContext::new(statement_capacity),
        });
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.connecting += 1;
        }
        self.timers.add(
            self.now + target.connect_timeout,
            Timer::BackendConnect(tok.into()),
        );
    }

    /// Gives back the slots taken for a backend that never existed or has closed.
    fn release_capacity(&mut self, pool: PoolId) {
        if let Some(p) = self.shared.pools.get(pool) {
            p.closed();
            if let Some(db) = self.shared.databases.get(p.db) {
                db.release_slot();
            }
        }
    }

    pub(super) fn backend_writable(&mut self, bi: usize) {
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        if !matches!(b.state, State::Connecting) {
            if let Some(tok) = self.backend_tok(bi) {
                self.mark_dirty(tok);
            }
            return;
        }
        match b.stream.sock.take_error() {
            Ok(Some(e)) | Err(e) => {
                return self.backend_login_failed(bi, LoginFailure::Io(e.to_string()));
            }
            Ok(None) => {}
        }
        match b.stream.sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return, // not yet
            Err(e) => return self.backend_login_failed(bi, LoginFailure::Io(e.to_string())),
        }
        let _ = b.stream.sock.set_nodelay(true);
        let Some(p) = self.shared.pools.get(b.pool) else {
            return;
        };
        let Some(db) = self.shared.databases.get(p.db) else {
            return;
        };
        let (creds, version) = p.credentials();
        b.credentials_version = version;
        let params = LoginParams {
            user: creds.user.clone(),
            password: creds.password.clone(),
            database: db.target.database.clone(),
            startup_params: db.target.startup_params.clone(),
            tls: b.tls,
        };
        let out = &mut b.output.get_or_insert_with(|| self.bufs.output()).data;
        let login = Login::start(params, out);
        self.set_backend_state(
            bi,
            State::LoggingIn {
                login: Box::new(login),
                handshaking: false,
            },
        );
        if let Some(tok) = self.backend_tok(bi) {
            self.mark_dirty(tok);
        }
    }

    /// Whether reading more from the backend is useful now.
    fn backend_wants_input(&self, bi: usize) -> bool {
        let Some(b) = self.backends.get(bi) else {
            return false;
        };
        match b.state {
            State::Connecting => false,
            State::Lent(ci) => self
                .clients
                .get(ci)
                .is_some_and(|c| c.output.as_ref().is_none_or(|o| o.len() <= HIGH_WATER)),
            _ => true,
        }
    }

    /// Reads (bounded) from a backend; see `client_read` for `to_eof` and short reads.
    pub(super) fn backend_read(&mut self, bi: usize, to_eof: bool) {
        let Some(tok) = self.backend_tok(bi) else {
            return;
        };
        if let Some(b) = self.backends.get_mut(bi) {
            b.drained = false;
        }
        for _ in 0..MAX_READS {
            if !self.backend_wants_input(bi) {
                if let Some(b) = self.backends.get_mut(bi) {
                    b.read_paused = true;
                }
                return;
            }
            let Some(b) = self.backends.get_mut(bi) else {
                return;
            };
            b.read_paused = false;
            let filled = read_into(
                &mut b.stream,
                &mut b.input,
                &mut self.bufs,
                self.shared.max_message_len,
                to_eof,
                &self.stats.server_bytes_received,
            );
            match filled {
                Filled::Data { drained } => {
                    b.drained = drained;
                    self.backend_after_read(bi);
                    if drained {
                        if let Some(b) = self.backends.get_mut(bi) {
                            self.bufs.recycle_input(&mut b.input);
                        }
                        return;
                    }
                }
                Filled::Blocked => {
                    b.drained = true;
                    self.backend_after_read(bi);
                    if let Some(b) = self.backends.get_mut(bi) {
                        self.bufs.recycle_input(&mut b.input);
                    }
                    return;
                }
                Filled::Full => return,
                Filled::Eof => return self.backend_lost(bi, "server closed the connection"),
                Filled::Failed(e) => {
                    return self.backend_lost(bi, &format!("server read failed: {e}"));
                }
            }
            if !self.backend_alive(tok) {
                return;
            }
        }
        self.scratch.ready.push(tok);
    }

    fn backend_after_read(&mut self, bi: usize) {
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        if let State::LoggingIn {
            handshaking: true, ..
        } = b.state
        {
            let tok = Tok::new(Kind::Backend, bi, b.generation);
            self.mark_dirty(tok);
            let Some(b) = self.backends.get_mut(bi) else {
                return;
            };
            if b.stream.is_handshaking() {
                return;
            }
            let cb = b
                .stream
                .tls()
                .and_then(|t| t.peer_certificates())
                .and_then(|certs| certs.first())
                .and_then(|cert| tls_server_end_point(cert).ok());
            if let State::LoggingIn { login, handshaking } = &mut b.state {
                *handshaking = false;
                let out = &mut b.output.get_or_insert_with(|| self.bufs.output()).data;
                login.on_tls_established(cb, out);
            }
        }
        self.backend_process(bi);
    }

    /// Routes buffered backend input by state until no progress.
    pub(super) fn backend_process(&mut self, bi: usize) {
        loop {
            let Some(b) = self.backends.get_mut(bi) else {
                return;
            };
            if b.input.as_ref().is_none_or(InBuf::is_empty) {
                return;
            }
            let progressed = match b.state {
                State::Connecting
                | State::LoggingIn {
                    handshaking: true, ..
                } => return,
                State::LoggingIn { .. } => self.backend_login_step(bi),
                State::Lent(ci) => self.backend_to_client(bi, ci),
                State::Idle | State::Parked => self.backend_idle_message(bi),
                State::Draining(_) => self.backend_drain(bi),
            };
            if !progressed {
                return;
            }
        }
    }

    fn backend_login_step(&mut self, bi: usize) -> bool {
        let Reactor {
            backends,
            bufs,
            rng,
            shards,
            ..
        } = self;
        let Some(b) = backends.get_mut(bi) else {
            return false;
        };
        let State::LoggingIn { login, .. } = &mut b.state else {
            return false;
        };
        let Some(input) = b.input.as_mut() else {
            return false;
        };
        let Some(shard) = shards.get_mut(b.pool) else {
            return false;
        };
        let out = &mut b.output.get_or_insert_with(|| bufs.output()).data;
        let result = login.on_data(input.filled(), out, rng, &mut shard.salted_keys);
        let tok = Tok::new(Kind::Backend, bi, b.generation);
        self.scratch.dirty.push(tok);
        match result {
            Ok((n, step)) => {
                if let Some(input) = self.backends.get_mut(bi).and_then(|b| b.input.as_mut()) {
                    input.consume(n);
                }
                match step {
                    LoginStep::NeedMore => n > 0,
                    LoginStep::StartTls => {
                        self.backend_start_tls(bi);
                        false
                    }
                    LoginStep::Ready => {
                        self.backend_logged_in(bi);
                        true
                    }
                }
            }
            Err(e) => {
                self.backend_login_failed(bi, LoginFailure::Login(e));
                false
            }
        }
    }

    fn backend_start_tls(&mut self, bi: usize) {
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        let target = self
            .shared
            .pools
            .get(b.pool)
            .and_then(|p| self.shared.databases.get(p.db))
            .map(|d| d.target.clone());
        let Some(target) = target else {
            return;
        };
        let (Some(config), Some(name)) = (target.tls.clone(), target.server_name.clone()) else {
            return self.backend_login_failed(
                bi,
                LoginFailure::Io("TLS is not configured for this backend".into()),
            );
        };
        match rustls::ClientConnection::new(config, name) {
            Ok(conn) => {
                b.stream.start_tls(rustls::Connection::Client(conn));
                if let State::LoggingIn { handshaking, .. } = &mut b.state {
                    *handshaking = true;
                }
                let tok = Tok::new(Kind::Backend, bi, b.generation);
                self.mark_dirty(tok);
                self.scratch.ready.push(tok);
            }
            Err(e) => {
                self.backend_login_failed(bi, LoginFailure::Io(format!("TLS setup failed: {e}")))
            }
        }
    }

    fn backend_logged_in(&mut self, bi: usize) {
        let Some(State::LoggingIn { login, .. }) = self.set_backend_state(bi, State::Idle) else {
            return;
        };
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        let login = *login;
        // It has the values it logged in with, the configured ones included: clients whose
        // settings match need no sync query on its first lending.
        let startup = self
            .shared
            .pools
            .get(b.pool)
            .and_then(|p| self.shared.databases.get(p.db))
            .map_or(&[][..], |db| &db.target.startup_params[..]);
        b.context.set_login_params(&login.server_params, startup);
        b.params = Arc::new(login.server_params);
        b.server_key = login.cancel_key;
        b.idle_since = self.now;
        b.checked_at = self.now;
        let pool = b.pool;
        if let Some(p) = self.shared.pools.get(pool) {
            p.set_params(b.params.clone());
            if let Some(db) = self.shared.databases.get(p.db) {
                let s = &db.settings;
                b.expires = s.max_lifetime.map(|life| {
                    let jitter = s.lifetime_jitter.map_or(std::time::Duration::ZERO, |j| {
                        let mut r = [0u8; 8];
                        crate::auth::Rng::fill(&mut self.rng, &mut r);
                        j.mul_f64(u64::from_le_bytes(r) as f64 / u64::MAX as f64)
                    });
                    self.now + life + jitter
                });
            }
        }
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.connecting = shard.connecting.saturating_sub(1);
        }
        log::debug!("backend {bi} for pool {pool} logged in");
        self.backend_available(bi);
    }

    /// Lent: the client's session decides what its backend's bytes become.
    fn backend_to_client(&mut self, bi: usize, ci: usize) -> bool {
        let Reactor {
            clients,
            backends,
            bufs,
            scratch,
            stats,
            now,
            ..
        } = self;
        let (Some(b), Some(c)) = (backends.get_mut(bi), clients.get_mut(ci)) else {
            return false;
        };
        let Backend {
            input,
            output,
            context,
            generation,
            ..
        } = b;
        let Some(input) = input.as_mut() else {
            return false;
        };
        // When its transaction ends the session may send more (parameters read back,
        // statements closed) before the backend is released.
        let mut out = Out {
            to_client: &mut c.output.get_or_insert_with(|| bufs.output()).data,
            to_backend: &mut output.get_or_insert_with(|| bufs.output()).data,
            backend: context,
            actions: &mut scratch.action_buf,
            stats,
            now: *now,
            events: &mut NoEvents,
        };
        let n = c.session.on_backend_data(input.filled(), &mut out);
        input.consume(n);
        if c.output.as_ref().is_some_and(|o| !o.is_empty()) {
            scratch.dirty.push(Tok::new(Kind::Client, ci, c.generation));
        }
        if output.as_ref().is_some_and(|o| !o.is_empty()) {
            scratch.dirty.push(Tok::new(Kind::Backend, bi, *generation));
        }
        scratch
            .actions
            .extend(scratch.action_buf.drain(..).map(|a| (ci, a)));
        let over = c.output.as_ref().is_some_and(|o| o.len() > HIGH_WATER);
        self.run_actions();
        if over {
            return false; // wait for the client to drain
        }
        n > 0
    }

    /// An idle (or parked) backend may only send asynchronous messages.
    fn backend_idle_message(&mut self, bi: usize) -> bool {
        let Some(b) = self.backends.get_mut(bi) else {
            return false;
        };
        let Some(input) = b.input.as_mut() else {
            return false;
        };
        let data = input.filled();
        let header = match peek_header(data, self.shared.max_message_len) {
            Ok(Some(h)) => h,
            Ok(None) => return false,
            Err(e) => {
                self.close_backend(
                    bi,
                    CloseReason::ProtocolError,
                    &format!("invalid message from idle server: {e}"),
                );
                return false;
            }
        };
        let Some(body) = data.get(Header::SIZE..header.frame_len()) else {
            return false;
        };
        match header.tag {
            be::PARAMETER_STATUS | be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE => {}
            be::ERROR_RESPONSE => {
                let fields = ErrorFields::decode(header.tag, body).ok();
                let message = fields
                    .and_then(|f| f.message())
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                if fields
                    .and_then(|f| f.severity_kind())
                    .is_some_and(Severity::ends_session)
                {
                    self.close_backend(
                        bi,
                        CloseReason::ServerClosed,
                        &format!("server ended idle connection: {message}"),
                    );
                    return false;
                }
            }
            tag => {
                self.close_backend(
                    bi,
                    CloseReason::ProtocolError,
                    &format!(
                        "idle server sent unexpected message type {}",
                        MessageType(tag)
                    ),
                );
                return false;
            }
        }
        input.consume(header.frame_len());
        true
    }

    /// Draining: swallow responses until the backend is idle again, then return it.
    fn backend_drain(&mut self, bi: usize) -> bool {
        let Reactor {
            backends, shared, ..
        } = self;
        let Some(b) = backends.get_mut(bi) else {
            return false;
        };
        let (State::Draining(drain), Some(input)) = (&mut b.state, b.input.as_mut()) else {
            return false;
        };
        let reset = drain.kind() == DrainKind::Reset;
        let startup = shared
            .pools
            .get(b.pool)
            .and_then(|p| shared.databases.get(p.db))
            .map_or(&[][..], |db| &db.target.startup_params[..]);
        match drain.on_server_data(input.filled(), &mut b.context, &b.params, startup) {
            Ok((n, DrainStep::NeedMore)) => {
                input.consume(n);
                n > 0
            }
            Ok((n, DrainStep::Idle)) => {
                input.consume(n);
                b.checked_at = self.now;
                if reset {
                    // Cleaned up after a vanished client: idle from now on.
                    b.idle_since = self.now;
                }
                // Draining → Idle (or Parked) there.
                self.backend_available(bi);
                true
            }
            Ok((_, DrainStep::Fatal)) => {
                self.close_backend(
                    bi,
                    drain_failure(reset),
                    "server reported FATAL during cleanup",
                );
                false
            }
            Err(e) => {
                self.close_backend(bi, drain_failure(reset), &format!("cleanup failed: {e}"));
                false
            }
        }
    }

    /// The client vanished mid-transaction: cancel what runs, finish any COPY or batch, roll
    /// back, and return the backend once it is idle (or close it at the deadline).
    pub(super) fn start_reset(&mut self, bi: usize, relay: Relay) {
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        let out = &mut b.output.get_or_insert_with(|| self.bufs.output()).data;
        let Ok(drain) = Drain::reset(relay, out) else {
            return self.close_backend(
                bi,
                CloseReason::ResetFailed,
                "cannot clean up after client",
            );
        };
        let running = drain.needs_cancel();
        let tok = Tok::new(Kind::Backend, bi, b.generation);
        self.set_backend_state(bi, State::Draining(Box::new(drain)));
        self.mark_dirty(tok);
        self.scratch.ready.push(tok);
        self.timers.add(
            self.now + self.shared.reset_timeout,
            Timer::BackendReset(tok.into()),
        );
        if running {
            self.cancel_backend_query(bi);
        }
    }

    /// Sends an empty query to an idle backend; it must answer within the reset timeout.
    pub(super) fn start_health_check(&mut self, bi: usize) {
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        let out = &mut b.output.get_or_insert_with(|| self.bufs.output()).data;
        let drain = Drain::health_check(self.shared.max_message_len, out);
        let tok = Tok::new(Kind::Backend, bi, b.generation);
        self.set_backend_state(bi, State::Draining(Box::new(drain)));
        self.mark_dirty(tok);
        self.timers.add(
            self.now + self.shared.reset_timeout,
            Timer::HealthCheck(tok.into()),
        );
    }

    pub(super) fn backend_drain_timeout(&mut self, key: TokKey) {
        let tok = Tok {
            kind: Kind::Backend,
            index: key.index,
            generation: key.generation,
        };
        if self.backend_alive(tok)
            && let Some(b) = self.backends.get(tok.index())
            && let State::Draining(drain) = &b.state
        {
            let reset = drain.kind() == DrainKind::Reset;
            let why = if reset {
                "cleanup after client timed out"
            } else {
                "health check timed out"
            };
            self.close_backend(tok.index(), drain_failure(reset), why);
        }
    }

    pub(super) fn backend_connect_timeout(&mut self, key: TokKey) {
        let tok = Tok {
            kind: Kind::Backend,
            index: key.index,
            generation: key.generation,
        };
        if self.backend_alive(tok)
            && self
                .backends
                .get(tok.index())
                .is_some_and(Backend::is_logging_in)
        {
            self.backend_login_failed(tok.index(), LoginFailure::Io("timeout expired".into()));
        }
    }

    /// EOF or an error on a backend socket.
    fn backend_lost(&mut self, bi: usize, why: &str) {
        let Some(b) = self.backends.get(bi) else {
            return;
        };
        match b.state {
            State::Lent(ci) => {
                log::warn!("backend {bi} lost while lent: {why}");
                if let Some(c) = self.clients.get_mut(ci) {
                    c.backend = None;
                }
                self.close_backend(bi, CloseReason::ServerClosed, why);
                self.with_session(ci, |s, _, _, out| s.on_backend_lost(out));
                self.run_actions();
            }
            State::Connecting | State::LoggingIn { .. } => {
                self.backend_login_failed(bi, LoginFailure::Io(why.to_owned()));
            }
            _ => self.close_backend(bi, CloseReason::ServerClosed, why),
        }
    }

    /// A connection attempt failed. With `sslmode=allow` a refused plaintext login is retried
    /// with TLS; otherwise waiting clients learn why if the pool has nothing else coming.
    fn backend_login_failed(&mut self, bi: usize, failure: LoginFailure) {
        let Some(b) = self.backends.get(bi) else {
            return;
        };
        let pool = b.pool;
        let retry_tls = b.tls == TlsNegotiation::Disable
            && matches!(failure, LoginFailure::Login(LoginError::Server(_)))
            && self.pool_sslmode(pool) == Some(SslMode::Allow);
        // A TCP connection that could not be made: try the host's next address.
        let next_addr = (matches!(b.state, State::Connecting)
            && self.pool_addr_count(pool) > b.addr_index + 1)
            .then_some(b.addr_index + 1);
        let (tls, addr_index) = (b.tls, b.addr_index);
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.connecting = shard.connecting.saturating_sub(1);
        }
        if let Some(s) = self.stats.pool(pool) {
            s.connect_failures.inc();
        }
        if retry_tls || next_addr.is_some() {
            log::debug!("backend for pool {pool}: {failure:?}; trying again");
            // Keep the database slot: close this socket and connect again.
            if let Some(mut b) = self.remove_backend(bi) {
                let _ = self.poll.registry().deregister(&mut b.stream.sock);
            }
            if let Some(p) = self.shared.pools.get(pool) {
                p.closed();
            }
            return match next_addr {
                Some(next) => self.open_backend_at(pool, Some(tls), next),
                None => self.open_backend_at(pool, Some(TlsNegotiation::Require), addr_index),
            };
        }
        let target = self
            .shared
            .pools
            .get(pool)
            .and_then(|p| self.shared.databases.get(p.db))
            .map(|d| format!("{}:{}", d.target.host, d.target.port))
            .unwrap_or_default();
        let (code, message) = match &failure {
            LoginFailure::Io(e) => (
                crate::protocol::SqlState::CONNECTION_FAILURE,
                format!("cannot connect to server {target}: {e}"),
            ),
            LoginFailure::Login(e) => (
                e.sqlstate(),
                format!("cannot log in to server {target}: {e}"),
            ),
        };
        log::warn!("backend for pool {pool}: {message}");
        // No automatic retry here (that would spin against a server that is down): waiters
        // learn the cause if nothing else is coming, and the next acquire tries again.
        self.discard_backend(bi);
        self.pool_connect_failed(pool, code, message);
    }

    fn pool_addr_count(&self, pool: PoolId) -> usize {
        self.shared
            .pools
            .get(pool)
            .and_then(|p| self.shared.databases.get(p.db))
            .map_or(0, |d| d.target.addrs().len())
    }

    fn pool_sslmode(&self, pool: PoolId) -> Option<SslMode> {
        let p = self.shared.pools.get(pool)?;
        Some(self.shared.databases.get(p.db)?.target.sslmode)
    }

    /// Nothing will serve this pool's waiters (no backend open or opening anywhere): they get
    /// the error now instead of waiting for their timeout.
    pub(super) fn pool_connect_failed(
        &mut self,
        pool: PoolId,
        code: crate::protocol::SqlState,
        message: String,
    ) {
        let nothing_coming = self
            .shared
            .pools
            .get(pool)
            .is_some_and(|p| p.open_count() == 0);
        if !nothing_coming {
            return;
        }
        let waiters = self.take_waiters(pool);
        for tok in waiters {
            if self.client_alive(tok) {
                let error = AcquireError::Server {
                    code,
                    message: message.clone(),
                };
                self.fail_acquire(tok.index(), error);
            }
        }
    }

    /// Closes a backend (politely with Terminate when it is idle).
    /// `reason` is counted for backends that had logged in; `why` is logged.
    pub(super) fn close_backend(&mut self, bi: usize, reason: CloseReason, why: &str) {
        log::debug!("backend {bi} closed: {why}");
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        if matches!(b.state, State::Idle) {
            let mut bye = Vec::new();
            frontend::terminate(&mut bye);
            if let Ok(n) = b.stream.write(&bye) {
                self.stats.server_bytes_sent.add(n as u64);
            }
        }
        if !b.is_logging_in()
            && let Some(p) = self.stats.pool(b.pool)
        {
            p.closed(reason);
        }
        let pool = Some(b.pool);
        self.discard_backend(bi);
        // The pool may be below its minimum or have waiters now.
        if let Some(pool) = pool {
            self.grow(pool);
        }
    }

    /// Drops a backend's connection and gives its slot back.
    fn discard_backend(&mut self, bi: usize) {
        let Some(mut b) = self.remove_backend(bi) else {
            return;
        };
        if matches!(b.state, State::Idle) {
            self.forget_idle(b.pool, bi);
        }
        b.stream.close_notify();
        let _ = self.poll.registry().deregister(&mut b.stream.sock);
        self.release_capacity(b.pool);
        if let Some(mut input) = b.input.take() {
            input.consume(input.len());
            self.bufs.recycle_input(&mut Some(input));
        }
    }

    pub(super) fn backend_flush(&mut self, bi: usize) {
        let Some(b) = self.backends.get_mut(bi) else {
            return;
        };
        if matches!(b.state, State::Connecting) {
            return;
        }
        if let Err(e) = write_out(
            &mut b.stream,
            &mut b.output,
            &mut self.bufs,
            &self.stats.server_bytes_sent,
        ) {
            return self.backend_lost(bi, &format!("server write failed: {e}"));
        }
        if let State::Lent(ci) = b.state {
            self.wake_client_if_paused(ci);
        }
    }

    /// Resumes reading a backend that stopped, once it would really read.
    pub(super) fn wake_backend_if_paused(&mut self, bi: usize) {
        if self.backends.get(bi).is_some_and(|b| b.read_paused)
            && self.backend_wants_input(bi)
            && let Some(b) = self.backends.get_mut(bi)
        {
            b.read_paused = false;
            self.scratch
                .ready
                .push(Tok::new(Kind::Backend, bi, b.generation));
        }
    }

    /// Takes in a backend handed over by another reactor (`requested`: it answers one of our
    /// `WantBackend`s).
    pub(super) fn adopt_backend(&mut self, mut backend: Box<Backend>, requested: bool) {
        let generation = self.generations.bump();
        let bi = self.backends.vacant_key();
        let tok = Tok::new(Kind::Backend, bi, generation);
        if self
            .poll
            .registry()
            .register(
                &mut backend.stream.sock,
                tok.to_token(),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.release_capacity(backend.pool);
            return;
        }
        backend.generation = generation;
        // A handed-over backend is idle (it travels only from a reactor's idle stack).
        backend.state = State::Idle;
        backend.read_paused = false;
        let pool = backend.pool;
        let inserted = self.insert_backend(*backend);
        debug_assert_eq!(inserted, bi);
        if requested && let Some(shard) = self.shards.get_mut(pool) {
            shard.steals = shard.steals.saturating_sub(1);
        }
        self.scratch.ready.push(tok);
        self.backend_available(bi);
        self.grow(pool);
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

/// Why a backend never became usable.
#[derive(Debug)]
pub(super) enum LoginFailure {
    Io(String),
    Login(LoginError),
}
