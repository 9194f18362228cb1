//! The per-reactor engine: everything that decides what happens to a connection, sans-IO.
//!
//! One engine per reactor owns that reactor's client and server connection records (behind
//! [`ClientId`]/[`ServerId`], which carry the slab generation), its shard of every pool and a
//! timer table. It never touches a socket, a thread or the clock, in the manner of
//! quinn-proto's `Endpoint`:
//!
//! - **In:** `handle_*` calls with bytes, events and `now` — a connection accepted, bytes
//!   read ([`Engine::handle_read`]), output written ([`Engine::handle_sent`]), a TCP
//!   connection made or failed, a TLS handshake done, a peer gone ([`Engine::handle_closed`]),
//!   a deadline reached ([`Engine::handle_timeout`]), a message from another engine
//!   ([`Engine::handle_message`]) or a server connection handed over
//!   ([`Engine::handle_adopt`]).
//! - **Out:** I/O commands drained with [`Engine::poll_io`] (flush, resume reading, connect,
//!   start TLS, close, hand a server connection to another reactor, deliver a cancel) and
//!   the next deadline from [`Engine::poll_timeout`]. Output bytes wait in per-connection
//!   buffers ([`Engine::output`]); input stays in the driver's buffers, and
//!   [`Engine::handle_read`] says how much of it was used.
//!
//! Messages to other engines go through a [`Mailbox`] (channels and a waker in the reactor,
//! queues in the tests). Every state change of a server connection goes through one
//! `set_state` that keeps the metrics exact and records an event for the [`EventSink`].
//!
//! The deterministic tests (`tests.rs`) drive one or two real engines, scripted clients and
//! a scripted PostgreSQL on a virtual clock; the `engine` fuzz target does the same with
//! arbitrary interleavings.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod cancel;
pub use cancel::Peering;
mod client;
pub mod console;
pub mod error;
pub mod id;
pub mod io;
pub mod output;
mod pool;
mod reload;
mod server;
pub mod timer;

#[cfg(any(test, fuzzing))]
pub mod fuzzing;
#[cfg(any(test, fuzzing))]
pub mod harness;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::auth::Rng;
use crate::client::relay::RelayPool;
use crate::client::users::UserTable;
use crate::client::{Action, BackendContext, SessionConfig};
use crate::observe::events::{Event, EventSink, Interest};
use crate::observe::metrics::ReactorStats;
use crate::pool::{Database, Pool};
use client::ClientConn;
pub use error::ServerError;
pub use id::{ClientId, ServerId};
pub use io::{Conn, Failure, Io, Mailbox, Message, TlsInfo, Transfer, Transport};
use output::{OutBuf, OutPool};
use pool::Shard;
use server::ServerConn;
use timer::{Timer, Timers};

/// Output queued for a peer above which the other side stops being read (backpressure).
pub const HIGH_WATER: usize = 256 * 1024;
/// Pool maintenance period.
const MAINTENANCE_PERIOD: Duration = Duration::from_millis(500);
/// Connections being refused politely (SSL negotiation and startup packet first) at once
/// per engine; beyond this they are refused the moment they are accepted.
const MAX_REFUSING: usize = 64;
/// `max_logins_in_progress` unless the configuration sets it.
const DEFAULT_MAX_LOGINS: usize = 256;
/// Session steps per connection per call: far above what any real input needs, so only a
/// session that keeps asking to go on without progress meets it.
const MAX_STEPS: usize = 4096;

/// What all engines share: the pools and the settings (read-mostly; counters are atomics).
#[derive(Debug)]
pub struct Context {
    /// By id; a database removed by a reload stays as a tombstone (`removed`) so that ids
    /// are never reused.
    pub databases: Vec<Database>,
    /// By id; shared with the configurations before and after a reload (a removed one is
    /// marked so, and stays).
    pub pools: Vec<Arc<Pool>>,
    pub session: SessionConfig,
    pub max_clients: usize,
    /// The most connections still logging in at once, all engines (`max_logins_in_progress`).
    pub max_logins: usize,
    /// What lives as long as the server, whatever the configuration: counts and flags.
    rt: Arc<Runtime>,
    pub login_timeout: Duration,
    /// How long cleanup after a vanished client (or a health check) may take before the
    /// server connection is closed.
    pub reset_timeout: Duration,
    pub max_message_len: usize,
    /// Engines (reactors) in this process.
    pub reactors: usize,
    /// The reference instant of times shared between engines (pool waiters): the pool state
    /// holds durations since it and reads no clock itself.
    pub epoch: Instant,
    /// Each engine's counters, by engine id (see `observe::metrics`).
    pub stats: Vec<Arc<ReactorStats>>,
    /// How long open transactions may run on after a shutdown starts (`shutdown_timeout`).
    pub shutdown_grace: Duration,
    /// `peer_id` and `peers`: whose cancel keys go where.
    pub peering: Arc<Peering>,
    /// How long a stop only stops accepting before the drain begins (`listen_reuse_port`:
    /// sibling instances take the new connections meanwhile, and the connections this one
    /// had accepted are served as usual); zero: drain at once.
    pub handover: Duration,
}

/// The part of the [`Context`] that a reload does not replace.
#[derive(Debug, Default)]
struct Runtime {
    clients: AtomicUsize,
    /// Connections accepted and not yet logged in (nor gone).
    logging_in: AtomicUsize,
    cancels_in_flight: AtomicUsize,
    stopping: AtomicBool,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        databases: Vec<Database>,
        pools: Vec<Arc<Pool>>,
        session: SessionConfig,
        max_clients: usize,
        login_timeout: Duration,
        max_message_len: usize,
        reactors: usize,
        epoch: Instant,
    ) -> Context {
        let stats = (0..reactors)
            .map(|_| Arc::new(ReactorStats::new(pools.len(), databases.len())))
            .collect();
        Context {
            databases,
            pools,
            session,
            max_clients,
            max_logins: DEFAULT_MAX_LOGINS,
            rt: Arc::default(),
            login_timeout,
            reset_timeout: Duration::from_secs(5),
            max_message_len,
            reactors,
            epoch,
            stats,
            shutdown_grace: Duration::from_secs(30),
            peering: Arc::default(),
            handover: Duration::ZERO,
        }
    }

    /// The next configuration: `databases` and `pools` must extend this one's (same ids for
    /// the same things, tombstones for removed ones); the counts, the stop flag, the clock
    /// and the counters carry over, grown for the new pools.
    pub fn reloaded(
        &self,
        databases: Vec<Database>,
        pools: Vec<Arc<Pool>>,
        session: SessionConfig,
        max_clients: usize,
        login_timeout: Duration,
    ) -> Context {
        debug_assert!(databases.len() >= self.databases.len() && pools.len() >= self.pools.len());
        for stats in &self.stats {
            stats.grow(pools.len(), databases.len());
        }
        Context {
            databases,
            pools,
            session,
            max_clients,
            max_logins: self.max_logins,
            rt: self.rt.clone(),
            login_timeout,
            reset_timeout: self.reset_timeout,
            max_message_len: self.max_message_len,
            reactors: self.reactors,
            epoch: self.epoch,
            stats: self.stats.clone(),
            shutdown_grace: self.shutdown_grace,
            peering: self.peering.clone(),
            handover: self.handover,
        }
    }

    /// Clients connected right now (all engines).
    pub fn client_count(&self) -> usize {
        self.rt.clients.load(Ordering::Acquire)
    }

    /// Connections logging in right now (all engines).
    #[cfg(any(test, fuzzing))]
    pub fn logins_in_progress(&self) -> usize {
        self.rt.logging_in.load(Ordering::Acquire)
    }

    /// Marks the start of a shutdown; every engine sees it on its next call.
    pub fn stop(&self) {
        self.rt.stopping.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.rt.stopping.load(Ordering::Acquire)
    }

    /// Cancel deliveries under way (all engines).
    #[cfg(test)]
    pub fn cancels_in_flight(&self) -> usize {
        self.rt.cancels_in_flight.load(Ordering::Acquire)
    }

    /// A cancel delivery finished (the driver's delivery reports it before telling the
    /// engine, so the count stays right even if that message is lost).
    pub fn cancel_delivered(&self) {
        self.rt.cancels_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// `t` on the engines' common clock (see [`Context::epoch`]).
    fn since_epoch(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.epoch)
    }

    fn pool_database(&self, pool: usize) -> Option<(&Pool, &Database)> {
        let p = self.pools.get(pool)?;
        Some((p, self.databases.get(p.db)?))
    }
}

/// What [`Engine::handle_accept`] decided.
#[derive(Debug)]
pub enum Accept {
    /// A new client; register its socket under this id.
    Client(ClientId),
    /// Refused on the spot: write these bytes (a FATAL error), then close.
    Reject(Vec<u8>),
}

/// One reactor's engine.
pub struct Engine {
    id: usize,
    ctx: Arc<Context>,
    mailbox: Arc<dyn Mailbox>,
    clients: Slab<ClientConn>,
    servers: Slab<ServerConn>,
    generations: id::Generations,
    shards: Vec<Shard>,
    timers: Timers,
    bufs: OutPool,
    users: Arc<UserTable>,
    rng: Box<dyn Rng + Send>,
    stats: Arc<ReactorStats>,
    /// Where state changes are recorded, if anywhere.
    events: Option<Box<dyn EventSink + Send>>,
    /// What `events` wants (asked once, when it was set).
    interest: Interest,
    now: Instant,
    io: VecDeque<Io>,
    /// Session actions waiting to be carried out, in order, with their client.
    actions: VecDeque<(ClientId, Action)>,
    scratch: Scratch,
    /// The client whose input `handle_read` is feeding to its session right now.
    processing: Option<ClientId>,
    /// When the shutdown grace period ends, once the drain has begun.
    shutdown_at: Option<Instant>,
    /// A stop has begun with a handover: not accepting, not draining yet.
    handing_over: bool,
    /// Connections accepted only to be refused, not yet closed.
    refusing: usize,
}

/// Per-call scratch the session calls share.
struct Scratch {
    /// Stands in for a server connection's output when a client holds none; always empty
    /// between calls.
    sink: Vec<u8>,
    /// Stands in for a server connection's context when a client holds none.
    no_backend: BackendContext,
    /// Reused by sessions for one call.
    action_buf: Vec<Action>,
    /// Relays for sessions that hold a backend (see `RelaySlot`).
    relays: RelayPool,
}

impl Engine {
    /// Engine `id` of `ctx.reactors`.
    pub fn new(
        id: usize,
        ctx: Arc<Context>,
        mailbox: Arc<dyn Mailbox>,
        users: Arc<UserTable>,
        rng: Box<dyn Rng + Send>,
        now: Instant,
    ) -> Engine {
        let shards = (0..ctx.pools.len()).map(|_| Shard::default()).collect();
        let stats = ctx
            .stats
            .get(id)
            .cloned()
            .unwrap_or_else(|| Arc::new(ReactorStats::new(0, 0)));
        let mut timers = Timers::default();
        timers.engine(Timer::Maintenance, now + MAINTENANCE_PERIOD);
        Engine {
            id,
            ctx,
            mailbox,
            clients: Slab::new(),
            servers: Slab::new(),
            generations: id::Generations::default(),
            shards,
            timers,
            bufs: OutPool::new(64),
            users,
            rng,
            stats,
            events: None,
            interest: Interest::NONE,
            now,
            io: VecDeque::new(),
            actions: VecDeque::new(),
            scratch: Scratch {
                sink: Vec::new(),
                no_backend: BackendContext::new(0),
                action_buf: Vec::new(),
                relays: RelayPool::default(),
            },
            processing: None,
            shutdown_at: None,
            handing_over: false,
            refusing: 0,
        }
    }

    /// Where events are recorded from now on (the server's `Observers`, the tests'
    /// recorder). The sink's [`Interest`] is asked here, once: only the kinds it wants are
    /// built and handed to it.
    pub fn set_event_sink(&mut self, sink: Box<dyn EventSink + Send>) {
        self.interest = sink.interest();
        self.events = Some(sink);
    }

    /// The driver is about to wait for I/O: events a sink buffers are handed on.
    pub fn flush_events(&mut self) {
        if let Some(events) = self.events.as_deref_mut() {
            events.flush();
        }
    }

    /// Records a state change, if anything listens.
    fn record(&mut self, event: Event) {
        if let Some(events) = self.events.as_deref_mut()
            && self.interest.wants(event.kind())
        {
            events.record(self.now, &event);
        }
    }

    /// A new login table (secrets rotated).
    pub fn set_users(&mut self, users: Arc<UserTable>) {
        self.users = users;
    }

    #[cfg(any(test, fuzzing))]
    pub fn id(&self) -> usize {
        self.id
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The next I/O command.
    pub fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    /// Whether an I/O command is waiting.
    #[inline]
    pub fn has_io(&self) -> bool {
        !self.io.is_empty()
    }

    /// When [`Engine::handle_timeout`] must be called next. Timers are cancelled lazily:
    /// entries of timers stopped or re-armed since are dropped here, so the driver does not
    /// wake for them (after a burst of waits for a server connection there are thousands).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some((at, timer)) = self.timers.peek() {
            if self.timer_is_current(at, timer) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn timer_is_current(&self, at: Instant, timer: Timer) -> bool {
        match timer {
            Timer::Client(c, t) => self.client(c).is_some_and(|cl| cl.deadlines.is_at(t, at)),
            Timer::Server(s, t) => self.server(s).is_some_and(|sv| sv.deadlines.is_at(t, at)),
            Timer::Maintenance | Timer::Shutdown | Timer::Handover => true,
        }
    }

    /// Shutdown has begun and every connection is gone: the driver may stop.
    pub fn is_finished(&self) -> bool {
        self.shutdown_at.is_some() && self.clients.is_empty() && self.servers.is_empty()
    }

    /// Connections of each kind.
    #[cfg(any(test, fuzzing))]
    pub fn connection_counts(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// Bytes waiting to be written to `conn`.
    pub fn output(&self, conn: Conn) -> &[u8] {
        let out = match conn {
            Conn::Client(c) => self.client(c).and_then(|c| c.output.as_ref()),
            Conn::Server(s) => self.server(s).and_then(|s| s.output.as_ref()),
        };
        out.map_or(&[][..], output::OutBuf::pending)
    }

    /// Input of `conn`; returns how much of `data` was used. The rest must be offered again,
    /// with more appended, on the next call (or after an [`Io::Resume`]).
    pub fn handle_read(&mut self, conn: Conn, data: &[u8], now: Instant) -> usize {
        self.now = now;
        let used = match conn {
            Conn::Client(c) => self.client_input(c, data),
            Conn::Server(s) => self.server_input(s, data),
        };
        self.run_actions();
        used
    }

    /// Whether reading `conn` is useful now. `false` also notes that reading paused: an
    /// [`Io::Resume`] follows once it is useful again.
    pub fn wants_input(&mut self, conn: Conn) -> bool {
        match conn {
            Conn::Client(c) => {
                let wants = self.client_wants_input(c);
                if let Some(cl) = self.client_mut(c) {
                    cl.read_paused = !wants;
                }
                wants
            }
            Conn::Server(s) => {
                let wants = self.server_wants_input(s);
                if let Some(sv) = self.server_mut(s) {
                    sv.read_paused = !wants;
                }
                wants
            }
        }
    }

    /// The driver wrote `n` bytes of `conn`'s output (possibly none).
    pub fn handle_sent(&mut self, conn: Conn, n: usize, now: Instant) {
        self.now = now;
        match conn {
            Conn::Client(c) => self.client_sent(c, n),
            Conn::Server(s) => self.server_sent(s, n),
        }
        self.run_actions();
    }

    /// The driver lost `conn` (the peer closed it, I/O failed).
    pub fn handle_closed(&mut self, conn: Conn, failure: Failure, now: Instant) {
        self.now = now;
        match conn {
            Conn::Client(c) => {
                if self.client(c).is_some() {
                    let why = match &failure {
                        Failure::Eof => "client disconnected".to_owned(),
                        f => format!("client {f}"),
                    };
                    self.close_client(c, &why);
                }
            }
            Conn::Server(s) => self.server_lost(s, ServerError::Lost(failure)),
        }
        self.run_actions();
    }

    /// A TLS handshake the engine asked for completed.
    pub fn handle_tls_established(&mut self, conn: Conn, info: TlsInfo, now: Instant) {
        self.now = now;
        match conn {
            Conn::Client(c) => self.client_tls_established(c, &info),
            Conn::Server(s) => self.server_tls_established(s, info),
        }
        self.run_actions();
    }

    /// The connection of `server` (TCP or unix socket) is established.
    pub fn handle_connected(&mut self, server: ServerId, now: Instant) {
        self.now = now;
        self.server_connected(server);
        self.run_actions();
    }

    /// The connection of `server` (TCP or unix socket) could not be made.
    pub fn handle_connect_failed(&mut self, server: ServerId, error: std::io::Error, now: Instant) {
        self.now = now;
        if self.server(server).is_some() {
            self.login_failed(server, ServerError::Connect(error));
        }
        self.run_actions();
    }

    /// Deadlines due at `now` fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some((at, timer)) = self.timers.pop_due(now) {
            self.on_timer(at, timer);
            self.run_actions();
        }
    }

    /// A message from another engine (or from this reactor's cancel delivery).
    pub fn handle_message(&mut self, msg: Message, now: Instant) {
        self.now = now;
        match msg {
            Message::Cancel(key) => self.cancel_local(key),
            Message::WantServer { pool, from } => self.give_idle_server(pool, from),
            Message::NoServer { pool } => self.steal_failed(pool),
            Message::MakeRoom { pool, victim, from } => self.make_room(pool, victim, from),
            Message::CancelDone { server } => self.cancel_done(server),
            Message::Maintain => self.maintain_now(),
            Message::ConsoleReply { client, answer } => {
                self.session_call(client, None, |s, _, out| s.on_console_reply(&answer, out));
                if self.shutdown_at.is_some() {
                    self.client_shutdown(client);
                }
            }
            Message::VerifierReady { client } => {
                self.session_call(client, None, |s, env, out| s.on_verifier_ready(env, out));
            }
        }
        self.run_actions();
    }

    /// Shutdown: stop accepting; then, at once or after the handover
    /// ([`Context::handover`]), drain: idle clients are closed, clients in a transaction when
    /// it ends (at the latest when the grace period is over); idle server connections close.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.now = now;
        if self.shutdown_at.is_none() && !self.handing_over {
            self.io.push_back(Io::StopAccepting);
            if !self.ctx.handover.is_zero() && !self.ctx.is_stopping() {
                self.handing_over = true;
                self.timers.engine(Timer::Handover, now + self.ctx.handover);
                return;
            }
        }
        self.drain();
    }

    /// The drain after a shutdown began (see [`Engine::handle_shutdown`]).
    fn drain(&mut self) {
        self.ctx.stop();
        if self.shutdown_at.is_some() {
            return;
        }
        let at = self.now + self.ctx.shutdown_grace;
        self.shutdown_at = Some(at);
        self.timers.engine(Timer::Shutdown, at);
        let idle: Vec<ClientId> = self
            .clients
            .iter()
            // A console command under way (SHUTDOWN itself, say) is answered first.
            .filter(|(_, c)| !c.session.holds_backend() && !c.session.is_console_busy())
            .map(|(i, c)| ClientId::new(i, c.generation))
            .collect();
        for c in idle {
            self.client_shutdown(c);
        }
        for pool in 0..self.shards.len() {
            while let Some(s) = self.take_idle(pool) {
                self.close_server(
                    s,
                    crate::observe::metrics::CloseReason::Shutdown,
                    "shutting down",
                );
            }
        }
        self.run_actions();
    }

    fn on_timer(&mut self, at: Instant, timer: Timer) {
        match timer {
            Timer::Client(c, t) => {
                let due = self
                    .client_mut(c)
                    .is_some_and(|cl| cl.deadlines.take_due(t, at));
                if due {
                    self.on_client_timer(c, t);
                }
            }
            Timer::Server(s, t) => {
                let due = self
                    .server_mut(s)
                    .is_some_and(|sv| sv.deadlines.take_due(t, at));
                if due {
                    self.on_server_timer(s, t);
                }
            }
            Timer::Maintenance => {
                self.maintain_pools();
                self.timers
                    .engine(Timer::Maintenance, self.now + MAINTENANCE_PERIOD);
            }
            Timer::Shutdown => self.force_shutdown(),
            Timer::Handover => self.drain(),
        }
    }

    /// The grace period is over: close whatever is left.
    fn force_shutdown(&mut self) {
        let clients: Vec<ClientId> = self
            .clients
            .iter()
            .map(|(i, c)| ClientId::new(i, c.generation))
            .collect();
        for c in clients {
            self.client_shutdown(c);
        }
        let servers: Vec<ServerId> = self
            .servers
            .iter()
            .map(|(i, s)| ServerId::new(i, s.generation))
            .collect();
        for s in servers {
            self.close_server(
                s,
                crate::observe::metrics::CloseReason::Shutdown,
                "shutting down",
            );
        }
    }

    /// Carries out queued session actions, which may queue more, in order. Only the
    /// `handle_*` entry points call this, last: handlers queue, they never recurse.
    #[inline]
    fn run_actions(&mut self) {
        if !self.actions.is_empty() {
            self.run_queued_actions();
        }
    }

    fn run_queued_actions(&mut self) {
        while let Some((c, action)) = self.actions.pop_front() {
            if self.client(c).is_some() {
                self.on_action(c, action);
            } else {
                self.orphan_action(c, action);
            }
        }
    }

    /// An action of a client already closed. A session hands its server connection over
    /// when it closes, so none should name one; if one does, and the connection is still
    /// lent to that client, it is closed rather than lost to the pool for good.
    #[cold]
    fn orphan_action(&mut self, c: ClientId, action: Action) {
        let (Action::Release(s) | Action::DropBackend(s)) = action else {
            return;
        };
        if self
            .server(s)
            .is_some_and(|sv| matches!(sv.state, server::State::Lent(owner) if owner == c))
        {
            debug_assert!(false, "{s:?} still lent to closed client {c:?}");
            self.close_server(
                s,
                crate::observe::metrics::CloseReason::Unusable,
                "its client closed first",
            );
        }
    }

    fn client(&self, id: ClientId) -> Option<&ClientConn> {
        self.clients
            .get(id.index())
            .filter(|c| c.generation == id.generation())
    }

    fn client_mut(&mut self, id: ClientId) -> Option<&mut ClientConn> {
        self.clients
            .get_mut(id.index())
            .filter(|c| c.generation == id.generation())
    }

    fn server(&self, id: ServerId) -> Option<&ServerConn> {
        self.servers
            .get(id.index())
            .filter(|s| s.generation == id.generation())
    }

    fn server_mut(&mut self, id: ServerId) -> Option<&mut ServerConn> {
        self.servers
            .get_mut(id.index())
            .filter(|s| s.generation == id.generation())
    }

    /// Asks the driver to write `conn`'s output at the end of the turn (see [`flush_due`]).
    fn queue_flush(&mut self, conn: Conn) {
        let due = match conn {
            Conn::Client(c) => self
                .client_mut(c)
                .is_some_and(|c| flush_due(&mut c.flush_queued, &c.output)),
            Conn::Server(s) => self
                .server_mut(s)
                .is_some_and(|s| flush_due(&mut s.flush_queued, &s.output)),
        };
        if due {
            self.io.push_back(Io::Flush(conn));
        }
    }
}

/// Whether a flush of this output is to be queued now, noting it in the connection's
/// `queued` flag: once per turn, and only for output that is there. (A flush always finds
/// bytes to write, and the driver may skip telling the engine about a flush that found none.)
fn flush_due(queued: &mut bool, output: &Option<OutBuf>) -> bool {
    let due = !*queued && output.as_ref().is_some_and(|o| !o.is_empty());
    *queued |= due;
    due
}

/// Encodes a proxy-issued cancel pid: positive i32, engine id and slab slot.
pub(crate) const SLOT_BITS: u32 = 22;

pub(crate) fn encode_pid(engine: usize, slot: usize) -> Option<u32> {
    let engine = u32::try_from(engine)
        .ok()
        .filter(|r| *r < (1 << (31 - SLOT_BITS)))?;
    let slot = u32::try_from(slot).ok().filter(|s| *s < (1 << SLOT_BITS))?;
    Some((engine << SLOT_BITS) | slot)
}

pub(crate) fn decode_pid(pid: u32) -> (usize, usize) {
    (
        (pid >> SLOT_BITS) as usize,
        (pid & ((1 << SLOT_BITS) - 1)) as usize,
    )
}

#[cfg(test)]
mod pid_tests {
    use super::*;

    #[test]
    fn cancel_pids_round_trip_and_stay_positive() {
        for (r, s) in [(0, 0), (1, 5), (511, (1 << SLOT_BITS) - 1)] {
            let pid = encode_pid(r, s).unwrap();
            assert!(i32::try_from(pid).is_ok());
            assert_eq!(decode_pid(pid), (r, s));
        }
        assert!(encode_pid(512, 0).is_none());
        assert!(encode_pid(0, 1 << SLOT_BITS).is_none());
    }
}
