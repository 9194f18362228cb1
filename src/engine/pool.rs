//! The engine's share of each pool: its idle server connections (most recently used last)
//! and its waiting clients (first come, first served), plus the decisions that keep them
//! matched.
//!
//! Where a server connection goes when it becomes free: a local waiter, else an engine
//! whose clients have waited longer (handed over), else the local idle stack. Where a
//! waiter's connection comes from: the local idle stack, else an idle connection of another
//! engine (asked for with `WantServer`), else a new connection if the database is below
//! `pool_max_conns`, else one made by closing another user's idle connection of the same
//! database (here, or on another engine with `MakeRoom`).
//!
//! Back-off: after a connection attempt fails, the engine opens no new connection for that
//! pool until a delay has passed (500 ms, doubling with every failure in a row, at most
//! 2 s), neither for waiting clients nor to keep `pool_min_idle_conns`. A client that needs
//! a new connection meanwhile, when the pool has none open or opening that could serve it,
//! gets the last failure at once instead of causing an attempt of its own: a server that is
//! down sees a few attempts per engine and pool, not one per statement, and clients hear
//! why at once. When the delay is over, one connection at a time probes the server (for a
//! client's statement, or maintenance for waiting clients and the warm minimum) until one
//! succeeds, which ends the back-off. Each engine backs off on its own (no shared state on
//! this path).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Engine;
use super::error::ConnectFailure;
use super::id::{ClientId, ServerId};
use super::io::{Conn, Io, Message};
use super::server::State;
use super::timer::ClientTimer;
use crate::auth::SaltedKeyCache;
use crate::client::AcquireError;
use crate::client::users::PoolId;
use crate::observe::metrics::CloseReason;

pub(super) struct Shard {
    /// Idle server connections, most recently used last.
    pub idle: Vec<ServerId>,
    /// Waiting clients with the time they started waiting, oldest first.
    pub waiters: VecDeque<(ClientId, Instant)>,
    /// Connections being opened by this engine.
    pub connecting: usize,
    /// `WantServer`/`MakeRoom` requests out and not answered yet (each covers one waiter).
    pub steals: usize,
    /// SCRAM keys derived from this pool's password (PBKDF2 once, not per connection).
    pub salted_keys: SaltedKeyCache,
    /// Connection attempts that failed in a row (reset by one that succeeds).
    pub login_failures: u32,
    /// No new connection is opened before this, neither for clients nor to keep
    /// `pool_min_idle_conns` (back-off after failed attempts).
    pub retry_at: Option<Instant>,
    /// Why the last attempt failed: what clients that need a new connection are told while
    /// backing off.
    pub last_failure: Option<ConnectFailure>,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            idle: Vec::new(),
            waiters: VecDeque::new(),
            connecting: 0,
            steals: 0,
            salted_keys: SaltedKeyCache::new(4),
            login_failures: 0,
            retry_at: None,
            last_failure: None,
        }
    }
}

/// A connection freed here goes to another engine's waiter only if that one has waited this
/// much longer than ours: global first-come-first-served, without bouncing connections
/// between engines when the difference is noise.
const FAIRNESS_SLACK: Duration = Duration::from_millis(2);
/// The wait before a new connection after a failed attempt; it doubles with every failure
/// in a row, up to `MAX_CONNECT_BACKOFF`: short enough that clients are served within
/// seconds of the server coming back.
const CONNECT_BACKOFF: Duration = Duration::from_millis(500);
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(2);

impl Shard {
    /// A connection attempt failed: back off before the next one.
    pub fn login_failed(&mut self, now: Instant, failure: ConnectFailure) {
        self.login_failures = self.login_failures.saturating_add(1);
        let wait = CONNECT_BACKOFF
            .saturating_mul(1 << self.login_failures.saturating_sub(1).min(16))
            .min(MAX_CONNECT_BACKOFF);
        self.retry_at = Some(now + wait);
        self.last_failure = Some(failure);
    }

    /// A login succeeded (or the configuration changed): new connections may be opened
    /// at once again.
    pub fn login_succeeded(&mut self) {
        self.login_failures = 0;
        self.retry_at = None;
        self.last_failure = None;
    }

    /// While backing off: the failure clients are told instead of a new attempt.
    pub fn backing_off(&self, now: Instant) -> Option<&ConnectFailure> {
        self.retry_at
            .filter(|&at| now < at)
            .and(self.last_failure.as_ref())
    }

    /// Whether a new connection may be opened now: not while backing off, and after
    /// failures only one at a time (it probes the server; the others follow its success).
    pub fn may_open(&self, now: Instant) -> bool {
        self.backing_off(now).is_none() && (self.login_failures == 0 || self.connecting == 0)
    }
}

impl Engine {
    /// Publishes this shard's idle and waiter counts for the other engines.
    fn publish(&self, pool: PoolId) {
        if let (Some(p), Some(s)) = (self.ctx.pools.get(pool), self.shards.get(pool)) {
            p.set_idle(self.id, s.idle.len());
            p.set_waiting(
                self.id,
                s.waiters.len(),
                s.waiters
                    .front()
                    .map(|&(_, since)| self.ctx.since_epoch(since)),
            );
        }
    }

    /// A client needs a server connection from its pool.
    pub(super) fn acquire(&mut self, id: ClientId) {
        // A session that stopped waiting before its request ran (it closed) gets nothing.
        let Some(pool) = self
            .client(id)
            .filter(|c| c.session.is_acquiring())
            .and_then(|c| c.session.pool())
        else {
            return;
        };
        if self.ctx.is_stopping() {
            return self.fail_acquire(id, AcquireError::ShuttingDown);
        }
        // One lookup for both: a pool a reload removed, a database PAUSE holds.
        let (removed, paused) = match self.ctx.pool_database(pool) {
            Some((p, db)) => (p.is_removed() || db.removed, db.is_paused()),
            None => (true, false),
        };
        if removed {
            return self.client_removed(id);
        }
        if !paused && let Some(s) = self.take_idle_matching(pool, id) {
            return self.attach(id, s, true);
        }
        if !paused && let Some(s) = self.take_idle(pool) {
            return self.attach(id, s, false);
        }
        let timeout = self
            .ctx
            .pool_database(pool)
            .map_or(Duration::from_secs(1), |(_, db)| {
                db.settings.acquire_timeout
            });
        let now = self.now;
        let Some(c) = self.clients.get_mut(id.index()) else {
            return;
        };
        self.timers
            .client(&mut c.deadlines, id, ClientTimer::Acquire, now + timeout);
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.waiters.push_back((id, now));
        }
        self.publish(pool);
        self.grow(pool);
    }

    /// Lends server connection `s` to client `c`; `settings_match`: the client's settings
    /// were just found to be the connection's (no need to look again).
    fn attach(&mut self, c: ClientId, s: ServerId, settings_match: bool) {
        if self.client(c).is_none() {
            return;
        }
        self.set_state(s, State::Lent(c));
        let now = self.now;
        let (Some(cl), Some(sv)) = (
            self.clients
                .get_mut(c.index())
                .filter(|cl| cl.generation == c.generation()),
            self.servers.get(s.index()),
        ) else {
            return;
        };
        cl.deadlines.stop(ClientTimer::Acquire);
        let waited = cl
            .session
            .waiting_since()
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        if let Some(p) = self.stats.pool(sv.pool) {
            p.acquire_wait.observe(waited);
        }
        let params = sv.params.clone();
        let (client_buffered, server_buffered) = (cl.pending_input, sv.pending_input);
        self.session_call(c, Some(s), |session, _, out| {
            session.on_backend_attached(s, &params, settings_match, out);
        });
        // The client's waiting message goes on now: in this same call when the attach comes
        // from its own processing, otherwise the driver offers it again. Bytes the server sent
        // while idle are handled in its new state (notices, parameter changes).
        if client_buffered {
            self.resume_client(c);
        }
        if server_buffered {
            self.io.push_back(Io::Resume(Conn::Server(s)));
        }
    }

    /// Takes one of the most recently used idle connections of `pool` whose session
    /// parameters already are client `c`'s (no sync query needed), if there is one.
    fn take_idle_matching(&mut self, pool: PoolId, c: ClientId) -> Option<ServerId> {
        /// How many idle connections to look at: clients of one application usually share
        /// their settings, so the first one matches.
        const LOOK_AT: usize = 8;
        let session = &self.client(c)?.session;
        let idle = &self.shards.get(pool)?.idle;
        let at = idle
            .iter()
            .enumerate()
            .rev()
            .take(LOOK_AT)
            .find(|&(_, &s)| {
                self.server(s).is_some_and(|sv| {
                    sv.pool == pool
                        && matches!(sv.state, State::Idle)
                        && session.settings_match(&sv.context.params)
                })
            })
            .map(|(at, _)| at)?;
        let s = self.shards.get_mut(pool)?.idle.remove(at);
        self.publish(pool);
        Some(s)
    }

    /// Pops a usable idle connection of `pool`.
    pub(super) fn take_idle(&mut self, pool: PoolId) -> Option<ServerId> {
        let found = loop {
            let s = self.shards.get_mut(pool)?.idle.pop()?;
            if self
                .server(s)
                .is_some_and(|sv| sv.pool == pool && matches!(sv.state, State::Idle))
            {
                break Some(s);
            }
        };
        self.publish(pool);
        found
    }

    pub(super) fn forget_idle(&mut self, pool: PoolId, s: ServerId) {
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.idle.retain(|&i| i != s);
        }
        self.publish(pool);
    }

    pub(super) fn remove_waiter(&mut self, pool: PoolId, c: ClientId) {
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.waiters.retain(|&(w, _)| w != c);
        }
        self.publish(pool);
    }

    pub(super) fn take_waiters(&mut self, pool: PoolId) -> Vec<ClientId> {
        let waiters = self
            .shards
            .get_mut(pool)
            .map(|s| s.waiters.drain(..).map(|(c, _)| c).collect())
            .unwrap_or_default();
        self.publish(pool);
        waiters
    }

    /// A client gave connection `s` back at the end of a transaction.
    pub(super) fn server_released(&mut self, s: ServerId) {
        let now = self.now;
        if let Some(sv) = self.server_mut(s) {
            sv.idle_since = now;
            sv.checked_at = now;
        }
        self.server_available(s);
    }

    /// Connection `s` is free (logged in, released, cleaned up, or handed over).
    pub(super) fn server_available(&mut self, s: ServerId) {
        let Some(sv) = self.server(s) else {
            return;
        };
        let pool = sv.pool;
        if sv.cancel_in_flight {
            // Not lendable until the cancel is delivered: it must not hit the next client.
            self.set_state(s, State::Parked);
            return;
        }
        let stale = if self
            .ctx
            .pools
            .get(pool)
            .is_some_and(|p| sv.credentials_version != p.credentials_version())
        {
            Some((CloseReason::CredentialsChanged, "credentials changed"))
        } else if let Some(why) = self.retirement(s) {
            Some((CloseReason::Reconfigured, why))
        } else if sv.expires.is_some_and(|at| at <= self.now) {
            Some((CloseReason::Lifetime, "lifetime over"))
        } else if self.ctx.is_stopping() {
            Some((CloseReason::Shutdown, "shutting down"))
        } else {
            None
        };
        self.set_state(s, State::Idle);
        if let Some((reason, why)) = stale {
            return self.close_server(s, reason, why);
        }
        self.drop_dead_waiters(pool);
        let ours = self
            .shards
            .get(pool)
            .and_then(|sh| sh.waiters.front().map(|&(_, since)| since));
        let theirs = self
            .ctx
            .pools
            .get(pool)
            .and_then(|p| p.oldest_waiter_elsewhere(self.id))
            .map(|(r, since)| (r, self.ctx.epoch + since));
        let hand_to = match (ours, theirs) {
            (_, None) => None,
            (None, Some((r, _))) => Some(r),
            (Some(ours), Some((r, since))) => (since + FAIRNESS_SLACK < ours).then_some(r),
        };
        if let Some(r) = hand_to
            && self.hand_over(s, r, false)
        {
            return;
        }
        if let Some((c, _)) = self
            .shards
            .get_mut(pool)
            .and_then(|sh| sh.waiters.pop_front())
        {
            self.publish(pool);
            return self.attach(c, s, false);
        }
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.idle.push(s);
        }
        self.publish(pool);
    }

    /// Removes waiters at the head of the queue that no longer wait (closed or served).
    fn drop_dead_waiters(&mut self, pool: PoolId) {
        while let Some(&(c, _)) = self.shards.get(pool).and_then(|s| s.waiters.front()) {
            let waiting = self.client(c).is_some_and(|cl| cl.session.is_acquiring());
            if waiting {
                break;
            }
            if let Some(s) = self.shards.get_mut(pool) {
                s.waiters.pop_front();
            }
        }
        self.publish(pool);
    }

    /// Another engine wants an idle connection of `pool`.
    pub(super) fn give_idle_server(&mut self, pool: PoolId, from: usize) {
        match self.take_idle(pool) {
            Some(s) => {
                if !self.hand_over(s, from, true) {
                    self.server_available(s);
                }
            }
            None => {
                let _ = self.mailbox.send(from, Message::NoServer { pool });
            }
        }
    }

    pub(super) fn steal_failed(&mut self, pool: PoolId) {
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.steals = shard.steals.saturating_sub(1);
        }
        self.grow(pool);
    }

    /// Makes sure a connection is on its way for every waiter of this engine: one requested
    /// from an engine holding an idle one, a new connection, or one made by closing another
    /// user's idle connection when the database is at its cap.
    pub(super) fn grow(&mut self, pool: PoolId) {
        let ctx = self.ctx.clone();
        if ctx.is_stopping() {
            // Every connection that becomes free now closes: opening one for a waiter would
            // loop (the waiters are closed as their reactor winds down).
            return;
        }
        let Some((p, db)) = ctx.pool_database(pool) else {
            return;
        };
        if db.is_paused() || db.removed || p.is_removed() {
            // PAUSE: waiters wait (up to their acquire timeout) until RESUME. A removed pool
            // gets no connection: whatever it opened would be retired at once.
            return;
        }
        let uncovered = self.shards.get(pool).map_or(0, |s| {
            s.waiters.len().saturating_sub(s.connecting + s.steals)
        });
        let backoff = self
            .shards
            .get(pool)
            .and_then(|s| s.backing_off(self.now))
            .filter(|_| uncovered > 0)
            .cloned();
        for _ in 0..uncovered {
            if let Some(r) = p.reactor_with_idle(self.id)
                && self
                    .mailbox
                    .send(
                        r,
                        Message::WantServer {
                            pool,
                            from: self.id,
                        },
                    )
                    .is_ok()
            {
                if let Some(shard) = self.shards.get_mut(pool) {
                    shard.steals += 1;
                }
                continue;
            }
            if !self.shards.get(pool).is_some_and(|s| s.may_open(self.now)) {
                // No new connection yet: a release, or the next attempt, serves them.
                break;
            }
            if db.try_reserve() {
                self.open_server(pool, None, 0);
                continue;
            }
            // At pool_max_conns: an idle connection of another user of the database makes
            // room.
            let other = db
                .pools
                .iter()
                .copied()
                .filter(|&o| o != pool)
                .find_map(|o| self.take_idle(o));
            if let Some(s) = other {
                self.close_server(
                    s,
                    CloseReason::MakingRoom,
                    "making room for another user of the database",
                );
                if db.try_reserve() {
                    self.open_server(pool, None, 0);
                }
                continue;
            }
            // Or one on another engine: ask it to close that one and tell us.
            let remote = db
                .pools
                .iter()
                .copied()
                .filter(|&o| o != pool)
                .find_map(|o| Some((o, ctx.pools.get(o)?.reactor_with_idle(self.id)?)));
            let asked = remote.is_some_and(|(victim, r)| {
                self.mailbox
                    .send(
                        r,
                        Message::MakeRoom {
                            pool,
                            victim,
                            from: self.id,
                        },
                    )
                    .is_ok()
            });
            if !asked {
                return;
            }
            if let Some(shard) = self.shards.get_mut(pool) {
                shard.steals += 1;
            }
        }
        if let Some(failure) = backoff {
            // Fails them now if nothing could serve them.
            self.pool_connect_failed(pool, failure);
        }
    }

    /// Another engine's client waits for `pool` at its database's cap: close an idle
    /// connection of `victim` here, then let that engine try again.
    pub(super) fn make_room(&mut self, pool: PoolId, victim: PoolId, from: usize) {
        if let Some(s) = self.take_idle(victim) {
            self.close_server(
                s,
                CloseReason::MakingRoom,
                "making room for another user of the database",
            );
        }
        let _ = self.mailbox.send(from, Message::NoServer { pool });
    }

    /// Periodic: expire idle connections, run health checks, keep the minimum warm.
    pub(super) fn maintain_pools(&mut self) {
        // What a reload, PAUSE or RECONNECT retired (also when its `Maintain` was lost).
        self.retire_idle();
        let engines = self.ctx.reactors.max(1);
        let ctx = self.ctx.clone();
        for pool in 0..self.shards.len() {
            let Some((p, db)) = ctx.pool_database(pool) else {
                continue;
            };
            if p.is_removed() || db.removed || db.is_paused() {
                continue;
            }
            let settings = &db.settings;
            let version = p.credentials_version();
            let idle: Vec<ServerId> = self
                .shards
                .get(pool)
                .map(|s| s.idle.clone())
                .unwrap_or_default();
            for s in idle {
                let Some(sv) = self.server(s) else {
                    continue;
                };
                let idle_for = self.now.saturating_duration_since(sv.idle_since);
                let unchecked_for = self.now.saturating_duration_since(sv.checked_at);
                let rotated = sv.credentials_version != version;
                let expired = sv.expires.is_some_and(|at| at <= self.now) || rotated;
                let idle_too_long = settings.max_idle_time.is_some_and(|max| idle_for > max)
                    && p.total_idle() > settings.min_idle;
                if expired || idle_too_long {
                    self.forget_idle(pool, s);
                    let (reason, why) = if rotated {
                        (CloseReason::CredentialsChanged, "credentials changed")
                    } else if expired {
                        (CloseReason::Lifetime, "lifetime over")
                    } else {
                        (CloseReason::IdleTimeout, "idle too long")
                    };
                    self.close_server(s, reason, why);
                } else if settings
                    .health_check_period
                    .is_some_and(|period| unchecked_for >= period)
                {
                    self.forget_idle(pool, s);
                    self.start_health_check(s);
                }
            }
            if pool % engines == self.id && settings.min_idle > 0 && !ctx.is_stopping() {
                let connecting = self.shards.get(pool).map_or(0, |s| s.connecting);
                let have = p.total_idle() + connecting;
                for _ in have..settings.min_idle {
                    let may = self.shards.get(pool).is_some_and(|s| s.may_open(self.now));
                    if !may || !db.try_reserve() {
                        break;
                    }
                    self.open_server(pool, None, 0);
                }
            }
            if let Some(shard) = self.shards.get_mut(pool) {
                // A request whose reply was dropped must not block growth forever.
                shard.steals = 0;
            }
            self.grow(pool);
        }
    }
}
