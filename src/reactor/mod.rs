//! The reactor layer: mio event loops that own sockets, TLS record I/O, timers and buffers,
//! and drive the sans-IO client sessions and backend logins.
//!
//! One reactor per thread, each with its own `Poll`, listener sockets (SO_REUSEPORT, so the
//! kernel spreads new connections), slabs of client and backend connections, deadline heap
//! and buffer pool. Nothing on the hot path takes a lock. Reactors talk to each other only
//! through bounded channels plus a `mio::Waker`: cancel requests for a client on another
//! reactor, and idle backends handed over to where a client waits.
//!
//! Loop discipline (mio's "draining readiness"): edge-triggered, so every readable socket is
//! read until `WouldBlock` — but at most `MAX_READS` times per wake-up; a connection that
//! still has data goes on the `ready` list and is revisited next turn with a zero poll
//! timeout. Output produced while handling events is coalesced and written once per
//! connection at the end of the turn. One clock read per turn.

mod backend;
pub mod buf;
mod cancel;
mod client;
mod connio;
mod pool;
pub mod stream;
pub mod timer;
pub mod token;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Waker};
use slab::Slab;

use crate::auth::OsRng;
use crate::client::users::UserTable;
use crate::client::{Action, CancelKey, SessionConfig};
use crate::observe::metrics::{CloseReason, ReactorStats};
use crate::pool::{Database, Pool};
use backend::Backend;
use buf::BufPool;
use client::Client;
use pool::Shard;
use timer::{Timer, Timers};
use token::{Generations, Kind, Tok};

/// Reads per connection per wake-up before yielding to other connections.
const MAX_READS: usize = 8;
/// Accepts per listener per wake-up.
const MAX_ACCEPTS: usize = 64;
/// Connections being refused politely (SSL negotiation and startup packet first) at once per
/// reactor; beyond this they are refused the moment they are accepted.
const MAX_REFUSING: usize = 64;
/// Output queued for a peer above which the other side stops being read (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// Messages queued per reactor channel.
const CHANNEL_CAPACITY: usize = 4096;
/// Pool maintenance period.
const MAINTENANCE_PERIOD: Duration = Duration::from_millis(500);
/// How long open transactions may run on after a shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// State every reactor shares (read-mostly).
pub struct Shared {
    pub databases: Vec<Database>,
    pub pools: Vec<Pool>,
    users: RwLock<Arc<UserTable>>,
    users_epoch: AtomicU64,
    pub session: SessionConfig,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_clients: usize,
    clients: AtomicUsize,
    pub login_timeout: Duration,
    /// How long cleanup after a vanished client may take before the backend is closed.
    pub reset_timeout: Duration,
    pub max_message_len: usize,
    /// Instance id carried in cancel keys (several pglinks behind one load balancer).
    pub instance_id: u8,
    reactors: OnceLock<Vec<ReactorHandle>>,
    cancels_in_flight: AtomicUsize,
    stopping: AtomicBool,
    /// The reference instant of times shared between reactors (pool waiters): the pool
    /// state holds durations since it and reads no clock itself.
    pub epoch: Instant,
    /// Each reactor's counters, by reactor id (see `observe::metrics`).
    pub stats: Vec<Arc<ReactorStats>>,
    /// Reactor threads inside their loop right now.
    running: AtomicUsize,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        databases: Vec<Database>,
        pools: Vec<Pool>,
        users: UserTable,
        session: SessionConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        max_clients: usize,
        login_timeout: Duration,
        max_message_len: usize,
        reactors: usize,
    ) -> Shared {
        let stats = (0..reactors)
            .map(|_| Arc::new(ReactorStats::new(pools.len(), databases.len())))
            .collect();
        Shared {
            databases,
            pools,
            users: RwLock::new(Arc::new(users)),
            users_epoch: AtomicU64::new(0),
            session,
            tls,
            max_clients,
            clients: AtomicUsize::new(0),
            login_timeout,
            reset_timeout: Duration::from_secs(5),
            max_message_len,
            instance_id: 0,
            reactors: OnceLock::new(),
            cancels_in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            epoch: Instant::now(),
            stats,
            running: AtomicUsize::new(0),
        }
    }

    /// Reactors configured.
    pub fn reactor_count(&self) -> usize {
        self.stats.len()
    }

    /// Reactors created and not yet stopped (all of them until shutdown, unless one failed).
    pub fn reactors_running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// `t` on the reactors' common clock (see [`Shared::epoch`]).
    pub fn since_epoch(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.epoch)
    }

    /// Publishes a new login table (secret rotation).
    pub fn set_users(&self, users: UserTable) {
        *self
            .users
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(users);
        self.users_epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn users(&self) -> Arc<UserTable> {
        self.users
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Clients connected right now (all reactors).
    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    pub fn set_reactors(&self, handles: Vec<ReactorHandle>) {
        let _ = self.reactors.set(handles);
    }

    fn reactor(&self, id: usize) -> Option<&ReactorHandle> {
        self.reactors.get().and_then(|r| r.get(id))
    }

    /// Starts a shutdown: every reactor stops accepting and winds down (it notices the flag
    /// on its next turn; the waker makes that turn happen now).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for r in self.reactors.get().into_iter().flatten() {
            let _ = r.waker.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// Messages between reactors.
pub enum Msg {
    /// A CancelRequest received elsewhere for a client of this reactor.
    Cancel(CancelKey),
    /// Reactor `from` has a client waiting for `pool` and this one has an idle backend.
    WantBackend { pool: usize, from: usize },
    /// Reply to `WantBackend` when the idle backend was gone by then, and to `MakeRoom`
    /// (whether or not room was made): reactor `pool`'s waiters may try again.
    NoBackend { pool: usize },
    /// Reactor `from` has a client waiting for `pool`, whose database is at
    /// `pool_max_conns`, and this one has an idle backend of `victim` (another user of that
    /// database): close it so that `from` can open one.
    MakeRoom {
        pool: usize,
        victim: usize,
        from: usize,
    },
    /// An idle backend handed over (already deregistered from the sender's poll);
    /// `requested` when it answers a `WantBackend`.
    Backend {
        backend: Box<Backend>,
        requested: bool,
    },
    /// A forwarded cancel finished; the backend may be lent again.
    CancelDone { backend: Tok },
}

/// How to reach a reactor from another thread.
#[derive(Clone)]
pub struct ReactorHandle {
    tx: SyncSender<Msg>,
    waker: Arc<Waker>,
    /// The reactor is in (or about to enter) a blocking poll: a message needs a wake-up.
    /// While it is busy it reads its inbox every turn anyway, so the `eventfd` write and the
    /// extra poll wake-up are skipped.
    sleeping: Arc<AtomicBool>,
}

impl ReactorHandle {
    /// Sends without blocking. A full channel drops the message (callers cope: a lost
    /// `WantBackend` only delays a waiter to its timeout) and returns it.
    fn send(&self, msg: Msg) -> Result<(), Msg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                // Pairs with the fence in `Reactor::run`: either the reactor sees this message
                // when it drains its inbox after announcing it sleeps, or we see it sleeping.
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.sleeping.load(Ordering::SeqCst) {
                    let _ = self.waker.wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Err(m),
        }
    }
}

/// Per-turn scratch the handlers share (split from `Reactor` to keep borrows simple).
struct Scratch {
    /// Stands in for `to_backend` when a client holds none; always empty between calls.
    sink: Vec<u8>,
    /// Stands in for a backend's context when a client holds none.
    no_backend: crate::client::BackendContext,
    /// Session actions waiting to be carried out, with the client they belong to.
    actions: VecDeque<(usize, Action)>,
    /// Reused by sessions for one call.
    action_buf: Vec<Action>,
    /// Connections to revisit (more input may be waiting).
    ready: Vec<Tok>,
    /// Connections with output to flush at the end of the turn.
    dirty: Vec<Tok>,
    /// `run_actions` is on the stack.
    running_actions: bool,
    /// The client whose input `client_process` is feeding to its session right now.
    processing: Option<usize>,
}

pub struct Reactor {
    id: usize,
    poll: Poll,
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    inbox: Receiver<Msg>,
    /// Shared with this reactor's handles (see `ReactorHandle::sleeping`).
    sleeping: Arc<AtomicBool>,
    clients: Slab<Client>,
    backends: Slab<Backend>,
    generations: Generations,
    shards: Vec<Shard>,
    timers: Timers,
    bufs: BufPool,
    scratch: Scratch,
    users: Arc<UserTable>,
    users_epoch: u64,
    rng: OsRng,
    now: Instant,
    /// This reactor's counters (also in `Shared::stats`); only this thread writes them.
    stats: Arc<ReactorStats>,
    /// Counts this reactor in `Shared::reactors_running` from its creation until its loop
    /// ends (or its thread unwinds), so a server that has started reports every reactor.
    _running: Running,
    /// Set once shutdown has begun: when everything is closed regardless.
    shutdown_deadline: Option<Instant>,
    /// Connections accepted only to be refused, not yet closed.
    refusing: usize,
}

impl Reactor {
    /// Creates a reactor with its listeners; returns it with the handle others use to reach it.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        listeners: Vec<TcpListener>,
    ) -> io::Result<(Reactor, ReactorHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), Tok::WAKER.to_token())?);
        let (tx, inbox) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                l,
                Tok::new(Kind::Listener, i, 0).to_token(),
                Interest::READABLE,
            )?;
        }
        let shards = (0..shared.pools.len()).map(|_| Shard::default()).collect();
        let users = shared.users();
        let users_epoch = shared.users_epoch.load(Ordering::Acquire);
        let stats = shared
            .stats
            .get(id)
            .cloned()
            .unwrap_or_else(|| Arc::new(ReactorStats::new(0, 0)));
        let running = Running::enter(shared.clone());
        let reactor = Reactor {
            id,
            poll,
            shared,
            listeners,
            inbox,
            sleeping: Arc::new(AtomicBool::new(false)),
            clients: Slab::new(),
            backends: Slab::new(),
            generations: Generations::default(),
            shards,
            timers: Timers::default(),
            bufs: BufPool::new(64),
            scratch: Scratch {
                sink: Vec::new(),
                no_backend: crate::client::BackendContext::new(0),
                actions: VecDeque::new(),
                action_buf: Vec::new(),
                ready: Vec::new(),
                dirty: Vec::new(),
                running_actions: false,
                processing: None,
            },
            users,
            users_epoch,
            rng: OsRng,
            now: Instant::now(),
            stats,
            _running: running,
            shutdown_deadline: None,
            refusing: 0,
        };
        let sleeping = reactor.sleeping.clone();
        Ok((
            reactor,
            ReactorHandle {
                tx,
                waker,
                sleeping,
            },
        ))
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        if let Some(tid) = current_thread_id() {
            self.stats.set_thread_id(tid);
        }
        let mut events = Events::with_capacity(1024);
        self.timers
            .add(self.now + MAINTENANCE_PERIOD, Timer::PoolMaintenance);
        let mut ready = Vec::new();
        loop {
            // Messages from other reactors are read every turn; only a reactor about to block
            // asks to be woken for them (announce, then look once more).
            self.sleeping.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            self.on_messages();
            self.run_actions();
            let timeout = if self.scratch.ready.is_empty() && self.scratch.dirty.is_empty() {
                self.timers.next_timeout(self.now)
            } else {
                Some(Duration::ZERO)
            };
            if timeout == Some(Duration::ZERO) {
                self.sleeping.store(false, Ordering::Relaxed);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.sleeping.store(false, Ordering::Relaxed);
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::error!("reactor {}: poll failed: {e}", self.id);
                return;
            }
            self.now = Instant::now();
            self.stats.wakeups.inc();
            self.refresh_users();
            for event in &events {
                self.on_event(Tok::from_token(event.token()), event);
            }
            std::mem::swap(&mut ready, &mut self.scratch.ready);
            for tok in ready.drain(..) {
                self.on_ready(tok);
            }
            while let Some((at, timer)) = self.timers.pop_due(self.now) {
                self.on_timer(at, timer);
            }
            if self.shared.is_stopping() {
                match self.shutdown_deadline {
                    None => self.begin_shutdown(),
                    Some(at) if at <= self.now => self.force_shutdown(),
                    Some(_) => {}
                }
            }
            self.flush_dirty();
            if self.shutdown_deadline.is_some()
                && self.clients.is_empty()
                && self.backends.is_empty()
            {
                log::debug!("reactor {} stopped", self.id);
                return;
            }
        }
    }

    fn refresh_users(&mut self) {
        let epoch = self.shared.users_epoch.load(Ordering::Acquire);
        if epoch != self.users_epoch {
            self.users = self.shared.users();
            self.users_epoch = epoch;
        }
    }

    fn on_event(&mut self, tok: Tok, event: &mio::event::Event) {
        match tok.kind {
            Kind::Listener => self.accept(tok.index()),
            Kind::Waker => self.on_messages(),
            Kind::Client => {
                if !self.client_alive(tok) {
                    return;
                }
                if event.is_writable() {
                    self.mark_dirty(tok);
                }
                let closing = event.is_read_closed() || event.is_error();
                if event.is_readable() || closing {
                    self.client_read(tok.index(), closing);
                }
            }
            Kind::Backend => {
                if !self.backend_alive(tok) {
                    return;
                }
                if event.is_writable() || event.is_error() {
                    self.backend_writable(tok.index());
                }
                let closing = event.is_read_closed() || event.is_error();
                if self.backend_alive(tok) && (event.is_readable() || closing) {
                    self.backend_read(tok.index(), closing);
                }
            }
        }
    }

    fn on_ready(&mut self, tok: Tok) {
        match tok.kind {
            Kind::Client if self.client_alive(tok) => {
                self.client_process(tok.index());
                if self.clients.get(tok.index()).is_some_and(|c| !c.drained)
                    && self.client_alive(tok)
                {
                    self.client_read(tok.index(), false);
                }
            }
            Kind::Backend if self.backend_alive(tok) => {
                self.backend_process(tok.index());
                if self.backends.get(tok.index()).is_some_and(|b| !b.drained)
                    && self.backend_alive(tok)
                {
                    self.backend_read(tok.index(), false);
                }
            }
            Kind::Listener => self.accept(tok.index()),
            _ => {}
        }
    }

    fn client_alive(&self, tok: Tok) -> bool {
        self.clients
            .get(tok.index())
            .is_some_and(|c| c.generation == tok.generation)
    }

    fn backend_alive(&self, tok: Tok) -> bool {
        self.backends
            .get(tok.index())
            .is_some_and(|b| b.generation == tok.generation)
    }

    fn mark_dirty(&mut self, tok: Tok) {
        self.scratch.dirty.push(tok);
    }

    fn on_messages(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Msg::Cancel(key) => self.cancel_local(key),
                Msg::WantBackend { pool, from } => self.give_idle_backend(pool, from),
                Msg::NoBackend { pool } => self.steal_failed(pool),
                Msg::MakeRoom { pool, victim, from } => self.make_room(pool, victim, from),
                Msg::Backend { backend, requested } => self.adopt_backend(backend, requested),
                Msg::CancelDone { backend } => self.cancel_done(backend),
            }
        }
    }

    fn on_timer(&mut self, at: Instant, timer: Timer) {
        match timer {
            Timer::ClientLogin(key) => self.client_login_timeout(key),
            Timer::AcquireTimeout(key) => self.acquire_timeout(key, at),
            Timer::BackendConnect(key) => self.backend_connect_timeout(key),
            Timer::BackendReset(key) | Timer::HealthCheck(key) => self.backend_drain_timeout(key),
            Timer::PoolMaintenance => {
                self.maintain_pools();
                self.timers
                    .add(self.now + MAINTENANCE_PERIOD, Timer::PoolMaintenance);
            }
        }
    }

    /// Writes all coalesced output of this turn.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.scratch.dirty);
        dirty.sort_unstable_by_key(|t| (t.index, t.kind as u8));
        dirty.dedup();
        for tok in dirty.drain(..) {
            match tok.kind {
                Kind::Client if self.client_alive(tok) => self.client_flush(tok.index()),
                Kind::Backend if self.backend_alive(tok) => self.backend_flush(tok.index()),
                _ => {}
            }
        }
        // Flushing can queue more (e.g. a backend resumed after its client drained).
        if self.scratch.dirty.is_empty() {
            self.scratch.dirty = dirty;
        }
    }

    /// Shutdown: stop accepting; idle clients are closed now, clients in a transaction when
    /// it ends; idle backends are closed.
    fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(self.now + SHUTDOWN_GRACE);
        self.timers
            .add(self.now + SHUTDOWN_GRACE, Timer::PoolMaintenance);
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let idle: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.session.holds_backend())
            .map(|(i, _)| i)
            .collect();
        for ci in idle {
            self.client_shutdown(ci);
        }
        for s in 0..self.shards.len() {
            while let Some(bi) = self.take_idle(s) {
                self.close_backend(bi, CloseReason::Shutdown, "shutting down");
            }
        }
    }

    /// The grace period is over: close whatever is left.
    fn force_shutdown(&mut self) {
        let clients: Vec<usize> = self.clients.iter().map(|(i, _)| i).collect();
        for ci in clients {
            self.client_shutdown(ci);
        }
        let backends: Vec<usize> = self.backends.iter().map(|(i, _)| i).collect();
        for bi in backends {
            self.close_backend(bi, CloseReason::Shutdown, "shutting down");
        }
    }
}

/// Counts a reactor as running while it exists (see `Reactor::_running`).
struct Running(Arc<Shared>);

impl Running {
    fn enter(shared: Arc<Shared>) -> Running {
        shared.running.fetch_add(1, Ordering::AcqRel);
        Running(shared)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The calling thread's kernel thread id (Linux: `/proc/thread-self` links to
/// `<pid>/task/<tid>`), so its CPU time can be read from `/proc` without a clock read per
/// loop turn.
fn current_thread_id() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Encodes a proxy-issued cancel pid: positive i32, reactor id and slab slot.
pub(crate) const SLOT_BITS: u32 = 22;

pub(crate) fn encode_pid(reactor: usize, slot: usize) -> Option<u32> {
    let reactor = u32::try_from(reactor)
        .ok()
        .filter(|r| *r < (1 << (31 - SLOT_BITS)))?;
    let slot = u32::try_from(slot).ok().filter(|s| *s < (1 << SLOT_BITS))?;
    Some((reactor << SLOT_BITS) | slot)
}

pub(crate) fn decode_pid(pid: u32) -> (usize, usize) {
    (
        (pid >> SLOT_BITS) as usize,
        (pid & ((1 << SLOT_BITS) - 1)) as usize,
    )
}

#[cfg(test)]
mod tests {
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
