//! Client connections in the reactor: accept, TLS, reading with backpressure, feeding the
//! session, carrying out its actions, closing.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;

use super::buf::{InBuf, OutBuf};
use super::connio::{Filled, read_into, write_out};
use super::stream::Stream;
use super::timer::{Timer, TokKey};
use super::token::{Kind, Tok};
use super::{HIGH_WATER, MAX_ACCEPTS, MAX_READS, MAX_REFUSING, Reactor, encode_pid};
use crate::auth::Rng as _;
use crate::client::relay::MAX_PIPELINE;
use crate::client::users::{DbId, PoolId};
use crate::client::{AcquireError, Action, CancelKey, Env, Out, Session, SessionError};
use crate::observe::events::NoEvents;
use crate::observe::metrics::{CloseReason, ReactorStats, RefuseReason};
use crate::pool::Pool;
use crate::tls::ALPN_POSTGRESQL;

/// One client connection.
pub(super) struct Client {
    pub generation: u32,
    pub stream: Stream,
    pub session: Session,
    pub input: Option<InBuf>,
    pub output: Option<OutBuf>,
    /// Backend slab index while one is held.
    pub backend: Option<usize>,
    /// `Some(direct)` while a TLS handshake runs.
    pub handshake: Option<bool>,
    /// Deadline of the current wait for a backend.
    pub acquire_deadline: Option<Instant>,
    /// When the current wait for a backend began (for the acquire-wait histogram).
    pub waiting_since: Option<Instant>,
    /// Logged in (counted in its pool's client gauge until it closes).
    pub logged_in: bool,
    /// Reading stopped for backpressure; whoever relieves it must wake this client.
    pub read_paused: bool,
    /// The last read found the socket empty: until the next readiness event there is
    /// nothing to read, so revisiting the client (to process buffered input) skips the read.
    pub drained: bool,
    /// Counts towards `max_client_connections` (false for a connection being refused).
    pub counted: bool,
    pub peer: Option<SocketAddr>,
}

impl Client {
    fn output_len(&self) -> usize {
        self.output.as_ref().map_or(0, OutBuf::len)
    }
}

impl Reactor {
    pub(super) fn accept(&mut self, li: usize) {
        for _ in 0..MAX_ACCEPTS {
            let Some(listener) = self.listeners.get(li) else {
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => self.on_accepted(sock, peer),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Typically EMFILE; the next connection attempt brings a new edge.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
        self.scratch.ready.push(Tok::new(Kind::Listener, li, 0));
    }

    fn on_accepted(&mut self, mut sock: TcpStream, peer: SocketAddr) {
        use std::sync::atomic::Ordering;
        let refusal = if self.shared.is_stopping() {
            Some((RefuseReason::ShuttingDown, SessionError::NotAccepting))
        } else if self.shared.clients.fetch_add(1, Ordering::AcqRel) >= self.shared.max_clients {
            self.shared.clients.fetch_sub(1, Ordering::AcqRel);
            let error = SessionError::TooManyClients {
                max_client_connections: self.shared.max_clients,
            };
            Some((RefuseReason::TooManyClients, error))
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
        let uncount = |shared: &super::Shared| {
            if counted {
                shared.clients.fetch_sub(1, Ordering::AcqRel);
            }
        };
        // A refused client still gets SSL negotiation and its startup packet read (that is
        // where libpq shows errors), unless too many are being refused at once.
        if let Some((_, error)) = &refusal
            && self.refusing >= MAX_REFUSING
        {
            return reject(&mut sock, error, &self.stats);
        }
        let _ = sock.set_nodelay(true);
        let entry = self.clients.vacant_entry();
        let slot = entry.key();
        let Some(pid) = encode_pid(self.id, slot) else {
            uncount(&self.shared);
            return reject(&mut sock, &SessionError::NoClientSlot, &self.stats);
        };
        let mut secret = [0u8; 32];
        self.rng.fill(&mut secret);
        let generation = self.generations.bump();
        let tok = Tok::new(Kind::Client, slot, generation);
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            tok.to_token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register client {peer}: {e}");
            uncount(&self.shared);
            return;
        }
        let key = CancelKey::new(pid, secret, 32);
        let session = match refusal {
            Some((_, error)) => {
                self.refusing += 1;
                Session::refusing(key, error)
            }
            None => Session::new(key, self.shared.max_message_len),
        };
        entry.insert(Client {
            generation,
            stream: Stream::plain(sock),
            session,
            counted,
            input: None,
            output: None,
            backend: None,
            handshake: None,
            acquire_deadline: None,
            waiting_since: None,
            logged_in: false,
            read_paused: false,
            drained: false,
            peer: Some(peer),
        });
        self.timers.add(
            self.now + self.shared.login_timeout,
            Timer::ClientLogin(tok.into()),
        );
        log::debug!("client {peer} connected (slot {slot})");
    }

    pub(super) fn client_tok(&self, ci: usize) -> Option<Tok> {
        self.clients
            .get(ci)
            .map(|c| Tok::new(Kind::Client, ci, c.generation))
    }

    /// Whether reading more from the client is useful now.
    fn client_wants_input(&self, ci: usize) -> bool {
        let Some(c) = self.clients.get(ci) else {
            return false;
        };
        if c.handshake.is_some() {
            return true;
        }
        if c.session.is_closed() || c.session.is_acquiring() || c.output_len() > HIGH_WATER {
            return false;
        }
        match c.backend.and_then(|bi| self.backends.get(bi)) {
            Some(b) => {
                b.output_len() <= HIGH_WATER && c.session.relay().outstanding() < MAX_PIPELINE
            }
            None => true,
        }
    }

    /// Reads (bounded) from the client and processes what arrived.
    ///
    /// A short read from a plain socket means it was drained (new data brings a new edge),
    /// which saves the `WouldBlock` probe per message; `to_eof` (the event also reported the
    /// peer closing) keeps reading so that a FIN that came with the data is not missed. TLS
    /// always reads to `WouldBlock`: records may remain after the plaintext returned.
    pub(super) fn client_read(&mut self, ci: usize, to_eof: bool) {
        let Some(tok) = self.client_tok(ci) else {
            return;
        };
        if let Some(c) = self.clients.get_mut(ci) {
            c.drained = false;
        }
        for _ in 0..MAX_READS {
            if !self.client_wants_input(ci) {
                if let Some(c) = self.clients.get_mut(ci) {
                    c.read_paused = true;
                }
                return;
            }
            let Some(c) = self.clients.get_mut(ci) else {
                return;
            };
            c.read_paused = false;
            let filled = read_into(
                &mut c.stream,
                &mut c.input,
                &mut self.bufs,
                self.shared.max_message_len,
                to_eof,
                &self.stats.client_bytes_received,
            );
            match filled {
                Filled::Data { drained } => {
                    c.drained = drained;
                    self.client_after_read(ci);
                    if drained {
                        if let Some(c) = self.clients.get_mut(ci) {
                            self.bufs.recycle_input(&mut c.input);
                        }
                        return;
                    }
                }
                Filled::Blocked => {
                    c.drained = true;
                    self.client_after_read(ci);
                    if let Some(c) = self.clients.get_mut(ci) {
                        self.bufs.recycle_input(&mut c.input);
                    }
                    return;
                }
                // The session is waiting for something else (a backend, say).
                Filled::Full => return,
                Filled::Eof => return self.close_client(ci, "client disconnected"),
                Filled::Failed(e) => {
                    return self.close_client(ci, &format!("client read failed: {e}"));
                }
            }
            if !self.client_alive(tok) {
                return;
            }
        }
        self.scratch.ready.push(tok);
    }

    /// After bytes arrived (or a TLS record was processed): advance a TLS handshake, then
    /// hand plaintext to the session.
    fn client_after_read(&mut self, ci: usize) {
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        if let Some(direct) = c.handshake {
            if let Some(tok) = self.client_tok(ci) {
                self.mark_dirty(tok); // handshake records to send
            }
            let Some(c) = self.clients.get_mut(ci) else {
                return;
            };
            if c.stream.is_handshaking() {
                return;
            }
            c.handshake = None;
            let alpn = c.stream.tls().and_then(|t| t.alpn_protocol()) == Some(ALPN_POSTGRESQL);
            self.with_session(ci, |s, _, _, out| s.on_tls_established(direct, alpn, out));
            self.run_actions();
        }
        self.client_process(ci);
    }

    /// Feeds buffered client input to the session until it stops making progress.
    pub(super) fn client_process(&mut self, ci: usize) {
        let outer = self.scratch.processing.replace(ci);
        self.client_process_loop(ci);
        self.scratch.processing = outer;
    }

    fn client_process_loop(&mut self, ci: usize) {
        loop {
            let Some(c) = self.clients.get(ci) else {
                return;
            };
            if c.handshake.is_some() || c.input.as_ref().is_none_or(InBuf::is_empty) {
                return;
            }
            let Some((consumed, acted)) = self
                .with_session(ci, |session, input, env, out| {
                    let input = input?;
                    let n = session.on_client_data(input.filled(), env, out);
                    input.consume(n);
                    Some((n, !out.actions.is_empty()))
                })
                .flatten()
            else {
                return;
            };
            self.run_actions();
            if consumed == 0 && !acted {
                return;
            }
        }
    }

    /// Runs `f` on client `ci`'s session with its input and output buffers, then queues the
    /// actions it emitted and marks output for flushing.
    pub(super) fn with_session<R>(
        &mut self,
        ci: usize,
        f: impl FnOnce(&mut Session, Option<&mut InBuf>, &mut Env<'_>, &mut Out<'_>) -> R,
    ) -> Option<R> {
        let Reactor {
            clients,
            backends,
            shared,
            users,
            rng,
            bufs,
            scratch,
            stats,
            now,
            ..
        } = self;
        let c = clients.get_mut(ci)?;
        let pools = &shared.pools;
        let params = |p: PoolId| pools.get(p).and_then(Pool::params);
        let databases = &shared.databases;
        let database = |db: DbId| databases.get(db).map(|d| d.context.clone());
        let mut env = Env {
            config: &shared.session,
            users,
            rng,
            server_params: &params,
            database: &database,
        };
        let backend = c
            .backend
            .and_then(|bi| backends.get_mut(bi).map(|b| (bi, b)));
        let (to_backend, backend_context, backend_tok) = match backend {
            Some((bi, b)) => (
                &mut b.output.get_or_insert_with(|| bufs.output()).data,
                &mut b.context,
                Some(Tok::new(Kind::Backend, bi, b.generation)),
            ),
            None => (&mut scratch.sink, &mut scratch.no_backend, None),
        };
        let mut out = Out {
            to_client: &mut c.output.get_or_insert_with(|| bufs.output()).data,
            to_backend,
            backend: backend_context,
            actions: &mut scratch.action_buf,
            stats,
            now: *now,
            events: &mut NoEvents,
        };
        let result = f(&mut c.session, c.input.as_mut(), &mut env, &mut out);
        debug_assert!(
            scratch.sink.is_empty() && scratch.no_backend.statements.is_empty(),
            "session wrote to a backend it does not hold"
        );
        scratch.sink.clear();
        if c.output.as_ref().is_some_and(|o| !o.is_empty()) {
            scratch.dirty.push(Tok::new(Kind::Client, ci, c.generation));
        }
        if let Some(tok) = backend_tok
            && backends
                .get(tok.index())
                .is_some_and(|b| b.output_len() > 0)
        {
            scratch.dirty.push(tok);
        }
        scratch
            .actions
            .extend(scratch.action_buf.drain(..).map(|a| (ci, a)));
        Some(result)
    }

    /// Carries out queued session actions (which may queue more). Re-entrant calls return at
    /// once: the outermost call keeps the queue in order.
    pub(super) fn run_actions(&mut self) {
        if self.scratch.running_actions {
            return;
        }
        self.scratch.running_actions = true;
        while let Some((ci, action)) = self.scratch.actions.pop_front() {
            if !self.clients.contains(ci) {
                continue;
            }
            match action {
                Action::StartTls { direct } => self.client_start_tls(ci, direct),
                Action::LoggedIn => {
                    if let Some(c) = self.clients.get_mut(ci) {
                        c.logged_in = true;
                        if let Some(p) = c.session.pool().and_then(|p| self.stats.pool(p)) {
                            p.logins.inc();
                            p.clients.inc();
                        }
                        log::debug!(
                            "client {} logged in as {}@{}",
                            c.peer.map_or_else(String::new, |p| p.to_string()),
                            c.session.user(),
                            c.session.database()
                        );
                    }
                }
                Action::Acquire => self.acquire(ci),
                Action::Release => self.release_from(ci),
                Action::DropBackend => {
                    if let Some(bi) = self.clients.get_mut(ci).and_then(|c| c.backend.take()) {
                        self.close_backend(
                            bi,
                            CloseReason::Unusable,
                            "unusable after the client's session",
                        );
                    }
                }
                Action::Cancel(key) => self.route_cancel(key),
                Action::ResumeInput => {
                    if self.scratch.processing != Some(ci)
                        && let Some(tok) = self.client_tok(ci)
                    {
                        self.scratch.ready.push(tok);
                    }
                }
                Action::Close => self.close_client(ci, "session ended"),
            }
        }
        self.scratch.running_actions = false;
    }

    fn client_start_tls(&mut self, ci: usize, direct: bool) {
        let Some(config) = self.shared.tls.clone() else {
            return self.close_client(ci, "TLS requested but not configured");
        };
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        // The 'S' answer goes out in plaintext before the handshake starts.
        if let Some(out) = c.output.as_mut() {
            while !out.is_empty() {
                match c.stream.write(out.pending()) {
                    Ok(0) | Err(_) => return self.close_client(ci, "cannot send SSL response"),
                    Ok(n) => {
                        out.advance(n);
                        self.stats.client_bytes_sent.add(n as u64);
                    }
                }
            }
        }
        let conn = match rustls::ServerConnection::new(config) {
            Ok(conn) => rustls::Connection::Server(conn),
            Err(e) => return self.close_client(ci, &format!("TLS setup failed: {e}")),
        };
        let started = if direct {
            let prefix = c
                .input
                .as_ref()
                .map(|i| i.filled().to_vec())
                .unwrap_or_default();
            if let Some(input) = c.input.as_mut() {
                input.consume(prefix.len());
            }
            c.stream.start_tls_with_prefix(conn, &prefix)
        } else {
            c.stream.start_tls(conn);
            Ok(())
        };
        if let Err(e) = started {
            return self.close_client(ci, &format!("TLS handshake failed: {e}"));
        }
        c.handshake = Some(direct);
        if let Some(tok) = self.client_tok(ci) {
            self.mark_dirty(tok);
            self.scratch.ready.push(tok);
        }
    }

    /// Writes pending output; wakes the peer that stopped for backpressure once it drains.
    pub(super) fn client_flush(&mut self, ci: usize) {
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        if let Err(e) = write_out(
            &mut c.stream,
            &mut c.output,
            &mut self.bufs,
            &self.stats.client_bytes_sent,
        ) {
            return self.close_client(ci, &format!("client write failed: {e}"));
        }
        if let Some(bi) = c.backend {
            self.wake_backend_if_paused(bi);
        }
        self.wake_client_if_paused(ci);
    }

    /// Resumes reading a client that stopped, but only once it would really read: a client
    /// paused while it waits for a backend stays paused until it gets one (waking it on every
    /// flush would spin the loop).
    pub(super) fn wake_client_if_paused(&mut self, ci: usize) {
        if self.clients.get(ci).is_some_and(|c| c.read_paused)
            && self.client_wants_input(ci)
            && let Some(c) = self.clients.get_mut(ci)
        {
            c.read_paused = false;
            self.scratch
                .ready
                .push(Tok::new(Kind::Client, ci, c.generation));
        }
    }

    /// The client's held backend finished its transaction.
    fn release_from(&mut self, ci: usize) {
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        let Some(bi) = c.backend.take() else {
            return;
        };
        let tok = Tok::new(Kind::Client, ci, c.generation);
        let pipelined = c.input.as_ref().is_some_and(|i| !i.is_empty());
        self.backend_released(bi);
        if self.shared.is_stopping() {
            // Shutting down: the transaction is over, so is the session.
            return self.client_shutdown(ci);
        }
        // Input that arrived behind the transaction waits in the buffer (or in the socket,
        // if reading had paused).
        if pipelined && self.scratch.processing != Some(ci) {
            self.scratch.ready.push(tok);
        } else {
            self.wake_client_if_paused(ci);
        }
    }

    /// Closes a client; a held backend is released, cleaned up or closed.
    pub(super) fn close_client(&mut self, ci: usize, why: &str) {
        if !self.clients.contains(ci) {
            return;
        }
        let mut c = self.clients.remove(ci);
        log::debug!(
            "client {} closed: {why}",
            c.peer.map_or_else(String::new, |p| p.to_string())
        );
        if c.session.is_acquiring()
            && let Some(pool) = c.session.pool()
        {
            self.remove_waiter(pool, Tok::new(Kind::Client, ci, c.generation));
        }
        let fate = {
            let (mut to_client, mut to_backend, mut actions) = (Vec::new(), Vec::new(), Vec::new());
            let mut out = Out {
                to_client: &mut to_client,
                to_backend: &mut to_backend,
                backend: &mut self.scratch.no_backend,
                actions: &mut actions,
                stats: &self.stats,
                now: self.now,
                events: &mut NoEvents,
            };
            c.session.detach(&mut out).map(|(_, fate)| fate)
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
        if let Some(bi) = c.backend.take() {
            match fate {
                Some(crate::client::BackendFate::Release) => self.backend_released(bi),
                Some(crate::client::BackendFate::Reset(relay)) => self.start_reset(bi, relay),
                Some(crate::client::BackendFate::Drop) | None if pinned.is_some() => {
                    self.close_backend(bi, CloseReason::Pinned, "pinned session ended");
                }
                Some(crate::client::BackendFate::Drop) | None => {
                    self.close_backend(bi, CloseReason::ClientGone, "client left mid-message");
                }
            }
        }
        if let Some(out) = c.output.as_mut() {
            while !out.is_empty() {
                match c.stream.write(out.pending()) {
                    Ok(n) if n > 0 => {
                        out.advance(n);
                        self.stats.client_bytes_sent.add(n as u64);
                    }
                    _ => break,
                }
            }
        }
        c.stream.close_notify();
        let _ = self.poll.registry().deregister(&mut c.stream.sock);
        if let Some(mut input) = c.input.take() {
            input.consume(input.len());
            self.bufs.recycle_input(&mut Some(input));
        }
        if let Some(mut out) = c.output.take() {
            let n = out.len();
            out.advance(n);
            self.bufs.recycle_output(&mut Some(out));
        }
        if c.counted {
            self.shared
                .clients
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        } else {
            self.refusing = self.refusing.saturating_sub(1);
        }
    }

    pub(super) fn client_login_timeout(&mut self, key: TokKey) {
        let tok = Tok {
            kind: Kind::Client,
            index: key.index,
            generation: key.generation,
        };
        if !self.client_alive(tok) {
            return;
        }
        self.with_session(tok.index(), |s, _, _, out| s.on_login_timeout(out));
        self.run_actions();
    }

    pub(super) fn acquire_timeout(&mut self, key: TokKey, at: Instant) {
        let tok = Tok {
            kind: Kind::Client,
            index: key.index,
            generation: key.generation,
        };
        let Some(c) = self
            .clients
            .get_mut(tok.index())
            .filter(|c| c.generation == tok.generation)
        else {
            return;
        };
        if c.acquire_deadline != Some(at) || !c.session.is_acquiring() {
            return; // an earlier wait's timer
        }
        c.acquire_deadline = None;
        c.waiting_since = None;
        let Some(pool) = c.session.pool() else {
            return;
        };
        if let Some(p) = self.stats.pool(pool) {
            p.acquire_timeouts.inc();
        }
        self.remove_waiter(pool, tok);
        let db = self
            .shared
            .pools
            .get(pool)
            .and_then(|p| self.shared.databases.get(p.db));
        let error = AcquireError::Timeout {
            database: db.map(|d| d.name.clone()).unwrap_or_default(),
            pool_size: db.map_or(0, |d| d.settings.max_conns),
            waited_ms: db.map_or(0, |d| d.settings.acquire_timeout.as_millis() as u64),
        };
        self.fail_acquire(tok.index(), error);
    }

    /// Reports a failed wait to a client and lets it go on with its input.
    pub(super) fn fail_acquire(&mut self, ci: usize, error: AcquireError) {
        if let Some(c) = self.clients.get_mut(ci) {
            c.waiting_since = None;
        }
        self.with_session(ci, |s, _, _, out| s.on_acquire_failed(error, out));
        self.run_actions();
        if let Some(tok) = self.client_tok(ci) {
            self.scratch.ready.push(tok);
        }
    }

    /// Shutdown of an idle client: FATAL 57P01, then close.
    pub(super) fn client_shutdown(&mut self, ci: usize) {
        self.with_session(ci, |s, _, _, out| s.on_shutdown(out));
        self.run_actions();
        // Within `run_actions` the session's `Close` waits its turn: close it now anyway.
        self.close_client(ci, "shutdown");
    }
}

/// Refuses a connection before any state is created: one FATAL message, best effort.
fn reject(sock: &mut TcpStream, error: &SessionError, stats: &ReactorStats) {
    let mut buf = Vec::with_capacity(128);
    error.encode(&mut buf, stats);
    let _ = sock.write(&buf);
    let _ = sock.shutdown(std::net::Shutdown::Both);
}
