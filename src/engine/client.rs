//! Client connections in the engine: accepting (or refusing), feeding input to the session
//! and carrying out the actions it emits, flow control, timeouts, closing.

use core::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::id::{ClientId, ServerId};
use super::io::{Conn, Io, TlsInfo, Transport};
use super::output::OutBuf;
use super::timer::{ClientDeadlines, ClientTimer};
use super::{Accept, Engine, HIGH_WATER, MAX_REFUSING, MAX_STEPS, encode_pid, flush_due};
use crate::client::relay::MAX_PIPELINE;
use crate::client::users::{DbId, PoolId};
use crate::client::{
    AcquireError, Action, BackendFate, CancelKey, Env, Out, Session, SessionError,
};
use crate::observe::events::{Event, EventSink, Interest, ServerAddress, pool_number};
use crate::observe::log::Field;
use crate::observe::metrics::{CloseReason, RefuseReason};

/// One client connection.
pub(super) struct ClientConn {
    pub generation: u32,
    pub session: Session,
    pub output: Option<OutBuf>,
    pub deadlines: ClientDeadlines,
    /// Logged in (counted in its pool's client gauge until it closes).
    pub logged_in: bool,
    /// Counts towards `max_client_connections` (false for a connection being refused).
    pub counted: bool,
    /// Counts towards `max_logins_in_progress`: counted and not logged in yet.
    pub logging_in: bool,
    /// Reading stopped (backpressure, or the session waits): wake it when that passes.
    pub read_paused: bool,
    /// The driver holds input of this client that the session has not used yet.
    pub pending_input: bool,
    /// An `Io::Flush` for it is queued and not yet answered by `handle_sent`.
    pub flush_queued: bool,
    /// The TLS handshake asked for is direct (no SSLRequest before the ClientHello).
    pub tls_direct: bool,
    /// A reload removed its user or database while it held a server connection: the
    /// session ends when it gives that back (marked by `handle_reload`, so the end of every
    /// transaction need not look the pool up).
    pub removed: bool,
    /// The client's address (`None` over a unix socket, or until the driver says).
    pub peer: Option<SocketAddr>,
}

impl ClientConn {
    fn output_len(&self) -> usize {
        self.output.as_ref().map_or(0, OutBuf::len)
    }
}

impl Engine {
    /// The driver accepted a connection (over `transport`): a new client, or a refusal.
    pub fn handle_accept(&mut self, transport: Transport, now: Instant) -> Accept {
        debug_assert!(
            self.io.is_empty(),
            "ids are handed out with no commands pending"
        );
        self.now = now;
        let ctx = &self.ctx;
        let refusal = if ctx.is_stopping() {
            Some((RefuseReason::ShuttingDown, SessionError::NotAccepting))
        } else if ctx.rt.clients.fetch_add(1, Ordering::AcqRel) >= ctx.max_clients {
            ctx.rt.clients.fetch_sub(1, Ordering::AcqRel);
            let error = SessionError::TooManyClients {
                max_client_connections: ctx.max_clients,
            };
            Some((RefuseReason::TooManyClients, error))
        } else if ctx.rt.logging_in.fetch_add(1, Ordering::AcqRel) >= ctx.max_logins {
            // Slow or silent clients hold login slots until `client_login_timeout`: they
            // may not crowd out the clients that log in, nor those logged in.
            ctx.rt.logging_in.fetch_sub(1, Ordering::AcqRel);
            ctx.rt.clients.fetch_sub(1, Ordering::AcqRel);
            let error = SessionError::TooManyLogins {
                max_logins_in_progress: ctx.max_logins,
            };
            Some((RefuseReason::TooManyLogins, error))
        } else {
            None
        };
        match &refusal {
            Some((reason, ..)) => {
                if let Some(c) = self.stats.clients_refused.get(reason.index()) {
                    c.inc();
                }
            }
            None => self.stats.clients_accepted.inc(),
        }
        let counted = refusal.is_none();
        // A refused client still gets SSL negotiation and its startup packet read (that is
        // where libpq shows errors), unless too many are being refused at once.
        if let Some((_, error)) = &refusal
            && self.refusing >= MAX_REFUSING
        {
            return self.reject(error);
        }
        let slot = self.clients.vacant_key();
        let Some(pid) = encode_pid(self.id, slot) else {
            if counted {
                self.ctx.rt.clients.fetch_sub(1, Ordering::AcqRel);
                self.ctx.rt.logging_in.fetch_sub(1, Ordering::AcqRel);
            }
            return self.reject(&SessionError::NoClientSlot);
        };
        let mut secret = [0u8; 32];
        self.rng.fill(&mut secret);
        if let Some(me) = self.ctx.peering.id {
            super::cancel::stamp_peer(&mut secret, me);
        }
        let key = CancelKey::new(pid, secret, 32);
        let mut session = match refusal {
            Some((_, error)) => {
                self.refusing += 1;
                Session::refusing(key, error)
            }
            None => Session::new(key, self.ctx.max_message_len),
        };
        if transport == Transport::Unix {
            session.set_local();
        }
        let generation = self.generations.bump();
        let id = ClientId::new(slot, generation);
        let mut conn = ClientConn {
            generation,
            session,
            output: None,
            deadlines: ClientDeadlines::default(),
            logged_in: false,
            counted,
            logging_in: counted,
            read_paused: false,
            pending_input: false,
            flush_queued: false,
            tls_direct: false,
            removed: false,
            peer: None,
        };
        self.timers.client(
            &mut conn.deadlines,
            id,
            ClientTimer::Login,
            self.now + self.ctx.login_timeout,
        );
        self.clients.insert(conn);
        log::debug!(conn = pid; "client connected (slot {slot})");
        Accept::Client(id)
    }

    /// The driver tells where a client it accepted over TCP came from (for events and
    /// traces).
    pub fn set_client_peer(&mut self, id: ClientId, peer: SocketAddr) {
        if let Some(c) = self.client_mut(id) {
            c.peer = Some(peer);
            c.session.set_peer(peer);
        }
    }

    fn reject(&self, error: &SessionError) -> Accept {
        let mut bytes = Vec::with_capacity(128);
        error.encode(&mut bytes, &self.stats);
        Accept::Reject(bytes)
    }

    /// Whether reading more from the client is useful now.
    pub(super) fn client_wants_input(&self, id: ClientId) -> bool {
        let Some(c) = self.client(id) else {
            return false;
        };
        if c.session.is_closed() || c.session.is_acquiring() || c.output_len() > HIGH_WATER {
            return false;
        }
        match c.session.server().and_then(|s| self.server(s)) {
            Some(s) => {
                s.output_len() <= HIGH_WATER && c.session.relay().outstanding() < MAX_PIPELINE
            }
            None => true,
        }
    }

    /// Feeds client bytes to the session, carrying out its actions between calls, until it
    /// stops making progress; returns how many bytes it used.
    pub(super) fn client_input(&mut self, id: ClientId, data: &[u8]) -> usize {
        let outer = self.processing.replace(id);
        let mut pos = 0;
        for _ in 0..MAX_STEPS {
            if self.client(id).is_none() {
                break;
            }
            let rest = data.get(pos..).unwrap_or_default();
            let step = self.with_session(id, |session, env, out| {
                let n = session.on_client_data(rest, env, out);
                (n, !out.actions.is_empty())
            });
            let Some((n, acted)) = step else { break };
            pos += n;
            self.run_actions();
            if (n == 0 && !acted) || pos >= data.len() {
                break;
            }
        }
        self.processing = outer;
        if let Some(c) = self.client_mut(id) {
            c.pending_input = pos < data.len();
        }
        pos
    }

    /// Runs `f` on the client's session with its environment and outputs (the held server
    /// connection's, if any), then queues the actions it emitted and the flushes it needs.
    pub(super) fn with_session<R>(
        &mut self,
        id: ClientId,
        f: impl FnOnce(&mut Session, &mut Env<'_>, &mut Out<'_>) -> R,
    ) -> Option<R> {
        self.session_call(id, None, f)
    }

    /// `with_session`, the session writing to server connection `attaching` (one it does
    /// not hold yet) if given, else to the one it holds.
    pub(super) fn session_call<R>(
        &mut self,
        id: ClientId,
        attaching: Option<ServerId>,
        f: impl FnOnce(&mut Session, &mut Env<'_>, &mut Out<'_>) -> R,
    ) -> Option<R> {
        let Engine {
            clients,
            servers,
            ctx,
            users,
            rng,
            bufs,
            scratch,
            stats,
            actions,
            events,
            interest,
            now,
            io,
            ..
        } = self;
        let c = clients
            .get_mut(id.index())
            .filter(|c| c.generation == id.generation())?;
        let pools = &ctx.pools;
        let params = |p: PoolId| pools.get(p).and_then(|p| p.params());
        let databases = &ctx.databases;
        let database = |db: DbId| databases.get(db).map(|d| d.context.clone());
        let mut env = Env {
            config: &ctx.session,
            users,
            rng: &mut **rng,
            server_params: &params,
            database: &database,
        };
        let held = attaching.or_else(|| c.session.server()).and_then(|s| {
            servers
                .get_mut(s.index())
                .filter(|sv| sv.generation == s.generation())
                .map(|sv| (s, sv))
        });
        let (to_backend, backend, server) = match held {
            Some((s, sv)) => (bufs.get(&mut sv.output), &mut sv.context, Some(s)),
            None => (&mut scratch.sink, &mut scratch.no_backend, None),
        };
        let mut out = Out {
            to_client: bufs.get(&mut c.output),
            to_backend,
            backend,
            actions: &mut scratch.action_buf,
            stats,
            now: *now,
            events: events.as_deref_mut().map(|e| e as &mut dyn EventSink),
            interest: *interest,
            relays: &mut scratch.relays,
        };
        let result = f(&mut c.session, &mut env, &mut out);
        debug_assert!(
            scratch.sink.is_empty() && scratch.no_backend.statements.is_empty(),
            "session wrote to a server connection it does not hold"
        );
        scratch.sink.clear();
        actions.extend(scratch.action_buf.drain(..).map(|a| (id, a)));
        // Output waiting is flushed at the end of the turn; buffers left empty stay until
        // the connection's next flush gives them back.
        if flush_due(&mut c.flush_queued, &c.output) {
            io.push_back(Io::Flush(Conn::Client(id)));
        }
        if let Some(s) = server
            && servers
                .get_mut(s.index())
                .is_some_and(|sv| flush_due(&mut sv.flush_queued, &sv.output))
        {
            io.push_back(Io::Flush(Conn::Server(s)));
        }
        Some(result)
    }

    /// Carries out one session action.
    pub(super) fn on_action(&mut self, id: ClientId, action: Action) {
        match action {
            Action::StartTls { direct } => {
                if let Some(c) = self.client_mut(id) {
                    c.tls_direct = direct;
                }
                self.io.push_back(Io::ClientTls { client: id, direct });
            }
            Action::DeriveVerifier(secret) => {
                self.io.push_back(Io::DeriveVerifier { client: id, secret });
            }
            Action::Console(command) => {
                self.io.push_back(Io::Console {
                    client: id,
                    command,
                });
            }
            Action::LoggedIn => self.client_logged_in(id),
            Action::Acquire => self.acquire(id),
            Action::Release(s) => self.release_from(id, s),
            Action::DropBackend(s) => self.close_server(
                s,
                CloseReason::Unusable,
                "unusable after the client's session",
            ),
            Action::Cancel(key) => self.route_cancel(key),
            Action::ResumeInput => {
                if self.processing != Some(id) {
                    self.io.push_back(Io::Resume(Conn::Client(id)));
                }
            }
            Action::Close => self.close_client(id, "session ended"),
        }
    }

    fn client_logged_in(&mut self, id: ClientId) {
        let Some(c) = self.client_mut(id) else {
            return;
        };
        c.logged_in = true;
        c.deadlines.stop(ClientTimer::Login);
        let was_logging_in = std::mem::take(&mut c.logging_in);
        let pool = c.session.pool();
        log::debug!(
            client:% = Field(c.peer),
            database = c.session.database(),
            user = c.session.user(),
            conn = c.session.cancel_key().pid;
            "client logged in"
        );
        if was_logging_in {
            self.ctx.rt.logging_in.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(p) = pool.and_then(|p| self.stats.pool(p)) {
            p.logins.inc();
            p.clients.inc();
        }
        let target = pool
            .and_then(|p| self.ctx.pools.get(p))
            .and_then(|p| self.ctx.databases.get(p.db))
            .map(|d| &d.target);
        if let (Some(events), Some(pool), Some(c), Some(target), true) = (
            self.events.as_deref_mut(),
            pool,
            self.clients.get(id.index()),
            target,
            self.interest.wants(Interest::LOGGED_IN),
        ) {
            events.record(
                self.now,
                &Event::LoggedIn {
                    pid: c.session.cancel_key().pid,
                    pool: pool_number(pool),
                    database: c.session.database(),
                    user: c.session.user(),
                    peer: c.peer,
                    traceparent: c.session.trace_parent().copied(),
                    server: ServerAddress {
                        host: &target.host,
                        port: target.port,
                        database: &target.database,
                    },
                },
            );
        }
    }

    /// The TLS handshake finished: the session goes on with the plaintext.
    pub(super) fn client_tls_established(&mut self, id: ClientId, info: &TlsInfo) {
        let direct = self.client(id).is_some_and(|c| c.tls_direct);
        let binding = info.channel_binding.clone();
        self.with_session(id, |s, _, out| {
            s.set_channel_binding(binding);
            s.on_tls_established(direct, info.alpn_postgresql, out);
        });
    }

    /// The driver wrote `n` bytes to the client: wake whoever stopped for backpressure.
    pub(super) fn client_sent(&mut self, id: ClientId, n: usize) {
        let Some(c) = self.client_mut(id) else {
            return;
        };
        c.flush_queued = false;
        if let Some(out) = c.output.as_mut() {
            out.advance(n);
        }
        let server = c.session.server();
        let Engine { bufs, clients, .. } = self;
        if let Some(c) = clients.get_mut(id.index()) {
            bufs.recycle(&mut c.output);
        }
        if let Some(s) = server {
            self.wake_server_if_paused(s);
        }
        self.wake_client_if_paused(id);
    }

    /// Resumes reading a client that stopped, but only once it would really read: a client
    /// paused while it waits for a server connection stays paused until it gets one (waking
    /// it on every flush would spin the loop).
    pub(super) fn wake_client_if_paused(&mut self, id: ClientId) {
        if self.client(id).is_some_and(|c| c.read_paused) && self.client_wants_input(id) {
            if let Some(c) = self.client_mut(id) {
                c.read_paused = false;
            }
            self.io.push_back(Io::Resume(Conn::Client(id)));
        }
    }

    /// Offers a client's buffered input again (it was waiting for something that came).
    pub(super) fn resume_client(&mut self, id: ClientId) {
        if self.processing != Some(id) {
            self.io.push_back(Io::Resume(Conn::Client(id)));
        }
    }

    /// The client gave server connection `s` back: its transaction is over.
    pub(super) fn release_from(&mut self, id: ClientId, s: ServerId) {
        let Some(c) = self.client(id) else {
            return;
        };
        let (pipelined, removed) = (c.pending_input, c.removed);
        self.server_released(s);
        if self.ctx.is_stopping() {
            // Shutting down: the transaction is over, so is the session.
            return self.client_shutdown(id);
        }
        if removed {
            // A reload removed its user or database: the transaction is over, so is the
            // session.
            return self.client_removed(id);
        }
        // Input that arrived behind the transaction waits in the driver's buffer (or in the
        // socket, if reading had paused).
        if pipelined {
            self.resume_client(id);
        } else {
            self.wake_client_if_paused(id);
        }
    }

    /// Closes a client; a held server connection is released, cleaned up or closed.
    pub(super) fn close_client(&mut self, id: ClientId, why: &str) {
        if self.client(id).is_none() {
            return;
        }
        let mut c = self.clients.remove(id.index());
        log::debug!(
            client:% = Field(c.peer),
            database = c.session.database(),
            user = c.session.user(),
            conn = c.session.cancel_key().pid;
            "client closed: {why}"
        );
        if c.session.is_acquiring()
            && let Some(pool) = c.session.pool()
        {
            self.remove_waiter(pool, id);
        }
        let held = {
            let Engine {
                scratch,
                bufs,
                stats,
                events,
                interest,
                ..
            } = self;
            let mut out = Out {
                to_client: bufs.get(&mut c.output),
                to_backend: &mut scratch.sink,
                backend: &mut scratch.no_backend,
                actions: &mut scratch.action_buf,
                stats,
                now: self.now,
                events: events.as_deref_mut().map(|e| e as &mut dyn EventSink),
                interest: *interest,
                relays: &mut scratch.relays,
            };
            let held = c.session.detach(&mut out);
            scratch.sink.clear();
            scratch.action_buf.clear();
            held
        };
        let pinned = c.session.pinned();
        if let Some(p) = c.session.pool().and_then(|p| self.stats.pool(p)) {
            if c.logged_in {
                p.clients.dec();
            }
            if let Some(reason) = pinned {
                p.unpinned(reason);
            }
        }
        match held {
            Some((s, BackendFate::Release)) => self.server_released(s),
            Some((s, BackendFate::Reset(relay))) => self.start_reset(s, *relay),
            Some((s, BackendFate::Drop)) if pinned.is_some() => {
                self.close_server(s, CloseReason::Pinned, "pinned session ended");
            }
            Some((s, BackendFate::Drop)) => {
                self.close_server(s, CloseReason::ClientGone, "client left mid-message");
            }
            None => {}
        }
        if c.logging_in {
            self.ctx.rt.logging_in.fetch_sub(1, Ordering::AcqRel);
        }
        if c.counted {
            self.ctx.rt.clients.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.refusing = self.refusing.saturating_sub(1);
        }
        self.io.push_back(Io::Close {
            conn: Conn::Client(id),
            last: c.output.take(),
        });
    }

    pub(super) fn on_client_timer(&mut self, id: ClientId, timer: ClientTimer) {
        match timer {
            ClientTimer::Login => {
                self.with_session(id, |s, _, out| s.on_login_timeout(out));
            }
            ClientTimer::Acquire => self.acquire_timeout(id),
        }
    }

    fn acquire_timeout(&mut self, id: ClientId) {
        let Some(c) = self.client(id) else {
            return;
        };
        if !c.session.is_acquiring() {
            return;
        }
        let Some(pool) = c.session.pool() else {
            return;
        };
        if let Some(p) = self.stats.pool(pool) {
            p.acquire_timeouts.inc();
        }
        self.remove_waiter(pool, id);
        let db = self.ctx.pool_database(pool).map(|(_, db)| db);
        let error = AcquireError::Timeout {
            database: db.map(|d| d.name.clone()).unwrap_or_default(),
            pool_size: db.map_or(0, |d| d.settings.max_conns),
            waited_ms: db.map_or(0, |d| d.settings.acquire_timeout.as_millis() as u64),
            // Cleared by the next success: a failure here is why nothing new came.
            last_failure: self.shards.get(pool).and_then(|s| s.last_failure.clone()),
        };
        self.fail_acquire(id, error);
    }

    /// A CancelRequest for a client whose statement waits for a server connection: the
    /// statement fails with 57014, as the server would have failed it, and the client leaves
    /// the queue.
    pub(super) fn cancel_wait(&mut self, id: ClientId) {
        let Some(pool) = self.client(id).and_then(|c| c.session.pool()) else {
            return;
        };
        self.remove_waiter(pool, id);
        self.fail_acquire(id, AcquireError::Canceled);
    }

    /// Reports a failed wait to a client and lets it go on with its input.
    pub(super) fn fail_acquire(&mut self, id: ClientId, error: AcquireError) {
        if let Some(c) = self.client_mut(id) {
            c.deadlines.stop(ClientTimer::Acquire);
        }
        self.with_session(id, |s, _, out| s.on_acquire_failed(error, out));
        self.resume_client(id);
    }

    /// Shutdown of a client: FATAL 57P01, then close (as the session's actions are carried
    /// out).
    pub(super) fn client_shutdown(&mut self, id: ClientId) {
        self.with_session(id, |s, _, out| s.on_shutdown(out));
    }
}
