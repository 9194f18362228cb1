//! The reactor's share of each pool: its idle backends (most recently used first) and its
//! waiting clients (first come, first served), plus the decisions that keep them matched.
//!
//! Where a backend goes when it becomes free: a local waiter, else a reactor whose clients
//! wait (handed over through the channel), else the local idle stack. Where a waiter's
//! backend comes from: the local idle stack, else an idle backend on another reactor (asked
//! for with `WantBackend`), else a new connection if the database is below `pool_max_conns`,
//! else a connection made by closing another user's idle backend of the same database.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::backend::State;
use super::timer::Timer;
use super::token::{Kind, Tok};
use super::{Msg, Reactor};
use crate::auth::SaltedKeyCache;
use crate::client::AcquireError;
use crate::client::users::PoolId;
use crate::observe::metrics::CloseReason;

pub(super) struct Shard {
    /// Idle backends (slab indexes), most recently used last.
    pub idle: Vec<usize>,
    /// Waiting clients with the time they started waiting, oldest first.
    pub waiters: VecDeque<(Tok, Instant)>,
    /// Connections being opened by this reactor.
    pub connecting: usize,
    /// `WantBackend` requests out and not answered yet (each covers one waiter).
    pub steals: usize,
    /// SCRAM keys derived from this pool's password (PBKDF2 once, not per connection).
    pub salted_keys: SaltedKeyCache,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            idle: Vec::new(),
            waiters: VecDeque::new(),
            connecting: 0,
            steals: 0,
            salted_keys: SaltedKeyCache::new(4),
        }
    }
}

/// A backend freed here goes to another reactor's waiter only if that one has waited this
/// much longer than ours: global first-come-first-served, without bouncing backends between
/// reactors when the difference is noise.
const FAIRNESS_SLACK: Duration = Duration::from_millis(2);

impl Reactor {
    fn publish(&self, pool: PoolId) {
        if let (Some(p), Some(s)) = (self.shared.pools.get(pool), self.shards.get(pool)) {
            p.set_idle(self.id, s.idle.len());
            p.set_waiting(
                self.id,
                s.waiters.len(),
                s.waiters
                    .front()
                    .map(|&(_, since)| self.shared.since_epoch(since)),
            );
        }
    }

    /// A client needs a backend from its pool.
    pub(super) fn acquire(&mut self, ci: usize) {
        let Some(c) = self.clients.get(ci) else {
            return;
        };
        let Some(pool) = c.session.pool() else {
            return;
        };
        if self.shared.is_stopping() {
            return self.fail_acquire(ci, AcquireError::ShuttingDown);
        }
        if let Some(bi) = self
            .take_idle_matching(pool, ci)
            .or_else(|| self.take_idle(pool))
        {
            return self.attach(ci, bi);
        }
        let timeout = self
            .shared
            .pools
            .get(pool)
            .and_then(|p| self.shared.databases.get(p.db))
            .map_or(std::time::Duration::from_secs(1), |d| {
                d.settings.acquire_timeout
            });
        let deadline = self.now + timeout;
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        c.acquire_deadline = Some(deadline);
        c.waiting_since = Some(self.now);
        let tok = Tok::new(Kind::Client, ci, c.generation);
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.waiters.push_back((tok, self.now));
        }
        self.publish(pool);
        self.timers.add(deadline, Timer::AcquireTimeout(tok.into()));
        self.grow(pool);
    }

    /// Lends backend `bi` to client `ci`.
    fn attach(&mut self, ci: usize, bi: usize) {
        if !self.clients.contains(ci) {
            return;
        }
        self.set_backend_state(bi, State::Lent(ci));
        let (Some(c), Some(b)) = (self.clients.get_mut(ci), self.backends.get_mut(bi)) else {
            return;
        };
        c.backend = Some(bi);
        c.acquire_deadline = None;
        let waited = c.waiting_since.take().map_or(Duration::ZERO, |since| {
            self.now.saturating_duration_since(since)
        });
        if let Some(p) = self.stats.pool(b.pool) {
            p.acquire_wait.observe(waited);
        }
        let params = b.params.clone();
        let (ctok, btok) = (
            Tok::new(Kind::Client, ci, c.generation),
            Tok::new(Kind::Backend, bi, b.generation),
        );
        let server = crate::engine::id::ServerId::new(bi, btok.generation);
        self.with_session(ci, |s, _, _, out| {
            s.on_backend_attached(server, &params, out)
        });
        // The client's waiting message goes on now: in this same call when the attach comes
        // from its own processing, otherwise on the next turn. Bytes the backend sent while
        // idle are handled in its state (notices, parameter changes).
        let buffered =
            |input: &Option<super::buf::InBuf>| input.as_ref().is_some_and(|i| !i.is_empty());
        if self.scratch.processing != Some(ci)
            && self.clients.get(ci).is_some_and(|c| buffered(&c.input))
        {
            self.scratch.ready.push(ctok);
        }
        if self.backends.get(bi).is_some_and(|b| buffered(&b.input)) {
            self.scratch.ready.push(btok);
        }
        self.run_actions();
    }

    /// Takes one of the most recently used idle backends of `pool` whose session parameters
    /// already are client `ci`'s (no sync query needed), if there is one.
    fn take_idle_matching(&mut self, pool: PoolId, ci: usize) -> Option<usize> {
        /// How many idle backends to look at: clients of one application usually share their
        /// settings, so the first one matches.
        const LOOK_AT: usize = 8;
        let session = &self.clients.get(ci)?.session;
        let idle = &self.shards.get(pool)?.idle;
        let at = idle
            .iter()
            .enumerate()
            .rev()
            .take(LOOK_AT)
            .find(|&(_, &bi)| {
                self.backends.get(bi).is_some_and(|b| {
                    b.pool == pool
                        && matches!(b.state, State::Idle)
                        && session.settings_match(&b.context.params)
                })
            })
            .map(|(at, _)| at)?;
        let bi = self.shards.get_mut(pool)?.idle.remove(at);
        self.publish(pool);
        Some(bi)
    }

    /// Pops a usable idle backend of `pool`.
    pub(super) fn take_idle(&mut self, pool: PoolId) -> Option<usize> {
        let found = loop {
            let bi = self.shards.get_mut(pool)?.idle.pop()?;
            if self
                .backends
                .get(bi)
                .is_some_and(|b| b.pool == pool && matches!(b.state, State::Idle))
            {
                break Some(bi);
            }
        };
        self.publish(pool);
        found
    }

    pub(super) fn forget_idle(&mut self, pool: PoolId, bi: usize) {
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.idle.retain(|&i| i != bi);
        }
        self.publish(pool);
    }

    pub(super) fn remove_waiter(&mut self, pool: PoolId, tok: Tok) {
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.waiters.retain(|&(t, _)| t != tok);
        }
        self.publish(pool);
    }

    pub(super) fn take_waiters(&mut self, pool: PoolId) -> Vec<Tok> {
        let waiters = self
            .shards
            .get_mut(pool)
            .map(|s| s.waiters.drain(..).map(|(t, _)| t).collect())
            .unwrap_or_default();
        self.publish(pool);
        waiters
    }

    /// A client gave backend `bi` back at the end of a transaction.
    pub(super) fn backend_released(&mut self, bi: usize) {
        if let Some(b) = self.backends.get_mut(bi) {
            b.idle_since = self.now;
            b.checked_at = self.now;
        }
        self.backend_available(bi);
    }

    /// Backend `bi` is free (logged in, released, cleaned up, or handed over).
    pub(super) fn backend_available(&mut self, bi: usize) {
        let Some(b) = self.backends.get(bi) else {
            return;
        };
        let pool = b.pool;
        if b.cancel_in_flight {
            // Not lendable until the cancel is delivered: it must not hit the next client.
            self.set_backend_state(bi, State::Parked);
            return;
        }
        let stale = if self
            .shared
            .pools
            .get(pool)
            .is_some_and(|p| b.credentials_version != p.credentials_version())
        {
            Some((CloseReason::CredentialsChanged, "credentials changed"))
        } else if b.expires.is_some_and(|at| at <= self.now) {
            Some((CloseReason::Lifetime, "lifetime over"))
        } else if self.shared.is_stopping() {
            Some((CloseReason::Shutdown, "shutting down"))
        } else {
            None
        };
        self.set_backend_state(bi, State::Idle);
        if let Some((reason, why)) = stale {
            return self.close_backend(bi, reason, why);
        }
        self.drop_dead_waiters(pool);
        let ours = self
            .shards
            .get(pool)
            .and_then(|s| s.waiters.front().map(|&(_, since)| since));
        let theirs = self
            .shared
            .pools
            .get(pool)
            .and_then(|p| p.oldest_waiter_elsewhere(self.id))
            .map(|(r, since)| (r, self.shared.epoch + since));
        let hand_to = match (ours, theirs) {
            (_, None) => None,
            (None, Some((r, _))) => Some(r),
            (Some(ours), Some((r, since))) => (since + FAIRNESS_SLACK < ours).then_some(r),
        };
        if let Some(r) = hand_to
            && self.hand_over(bi, r, false)
        {
            return;
        }
        if let Some((tok, _)) = self
            .shards
            .get_mut(pool)
            .and_then(|s| s.waiters.pop_front())
        {
            self.publish(pool);
            return self.attach(tok.index(), bi);
        }
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.idle.push(bi);
        }
        self.publish(pool);
    }

    /// Removes waiters at the head of the queue that no longer wait (closed or served).
    fn drop_dead_waiters(&mut self, pool: PoolId) {
        while let Some(&(tok, _)) = self.shards.get(pool).and_then(|s| s.waiters.front()) {
            let waiting = self.clients.get(tok.index()).is_some_and(|c| {
                c.generation == tok.generation && c.session.is_acquiring() && c.backend.is_none()
            });
            if waiting {
                break;
            }
            if let Some(s) = self.shards.get_mut(pool) {
                s.waiters.pop_front();
            }
        }
        self.publish(pool);
    }

    /// Moves an idle backend to reactor `to` (`requested`: an answer to its `WantBackend`).
    /// On failure it stays here.
    fn hand_over(&mut self, bi: usize, to: usize, requested: bool) -> bool {
        let Some(handle) = self.shared.reactor(to).cloned() else {
            return false;
        };
        let Some(mut b) = self.remove_backend(bi) else {
            return false;
        };
        let _ = self.poll.registry().deregister(&mut b.stream.sock);
        match handle.send(Msg::Backend {
            backend: Box::new(b),
            requested,
        }) {
            Ok(()) => true,
            Err(Msg::Backend { backend, .. }) => {
                self.adopt_backend(backend, false);
                true
            }
            Err(_) => true,
        }
    }

    /// Another reactor wants an idle backend of `pool`.
    pub(super) fn give_idle_backend(&mut self, pool: PoolId, from: usize) {
        match self.take_idle(pool) {
            Some(bi) => {
                if !self.hand_over(bi, from, true) {
                    self.backend_available(bi);
                }
            }
            None => {
                if let Some(h) = self.shared.reactor(from) {
                    let _ = h.send(Msg::NoBackend { pool });
                }
            }
        }
    }

    pub(super) fn steal_failed(&mut self, pool: PoolId) {
        if let Some(shard) = self.shards.get_mut(pool) {
            shard.steals = shard.steals.saturating_sub(1);
        }
        self.grow(pool);
    }

    /// Makes sure a backend is on its way for every waiter of this reactor: one requested
    /// from a reactor holding an idle one, a new connection, or one made by closing another
    /// user's idle backend when the database is at its cap.
    pub(super) fn grow(&mut self, pool: PoolId) {
        let shared = self.shared.clone();
        let Some(p) = shared.pools.get(pool) else {
            return;
        };
        let Some(db) = shared.databases.get(p.db) else {
            return;
        };
        let uncovered = self.shards.get(pool).map_or(0, |s| {
            s.waiters.len().saturating_sub(s.connecting + s.steals)
        });
        for _ in 0..uncovered {
            if let Some(r) = p.reactor_with_idle(self.id)
                && let Some(h) = shared.reactor(r)
                && h.send(Msg::WantBackend {
                    pool,
                    from: self.id,
                })
                .is_ok()
            {
                if let Some(shard) = self.shards.get_mut(pool) {
                    shard.steals += 1;
                }
                continue;
            }
            if db.try_reserve() {
                self.open_backend(pool, None);
                continue;
            }
            // At pool_max_conns: an idle backend of another user of the database makes room.
            let other = db
                .pools
                .iter()
                .copied()
                .filter(|&o| o != pool)
                .find_map(|o| self.take_idle(o));
            if let Some(bi) = other {
                self.close_backend(
                    bi,
                    CloseReason::MakingRoom,
                    "making room for another user of the database",
                );
                if db.try_reserve() {
                    self.open_backend(pool, None);
                }
                continue;
            }
            // Or one on another reactor: ask it to close that one and tell us.
            let remote = db
                .pools
                .iter()
                .copied()
                .filter(|&o| o != pool)
                .find_map(|o| {
                    let r = shared.pools.get(o)?.reactor_with_idle(self.id)?;
                    Some((o, shared.reactor(r)?))
                });
            let asked = remote.is_some_and(|(victim, h)| {
                h.send(Msg::MakeRoom {
                    pool,
                    victim,
                    from: self.id,
                })
                .is_ok()
            });
            if !asked {
                return;
            }
            if let Some(shard) = self.shards.get_mut(pool) {
                shard.steals += 1;
            }
        }
    }

    /// Another reactor's client waits for `pool` at its database's cap: close an idle
    /// backend of `victim` here, then let that reactor try again.
    pub(super) fn make_room(&mut self, pool: PoolId, victim: PoolId, from: usize) {
        if let Some(bi) = self.take_idle(victim) {
            self.close_backend(
                bi,
                CloseReason::MakingRoom,
                "making room for another user of the database",
            );
        }
        if let Some(h) = self.shared.reactor(from) {
            let _ = h.send(Msg::NoBackend { pool });
        }
    }

    /// Periodic: expire idle backends, run health checks, keep the minimum warm.
    pub(super) fn maintain_pools(&mut self) {
        let reactors = self.shared.reactors.get().map_or(1, Vec::len).max(1);
        for pool in 0..self.shards.len() {
            let Some(p) = self.shared.pools.get(pool) else {
                continue;
            };
            let Some(db) = self.shared.databases.get(p.db) else {
                continue;
            };
            let settings = db.settings.clone();
            let version = p.credentials_version();
            let idle: Vec<usize> = self
                .shards
                .get(pool)
                .map(|s| s.idle.clone())
                .unwrap_or_default();
            for bi in idle {
                let Some(b) = self.backends.get(bi) else {
                    continue;
                };
                let idle_for = self.now.saturating_duration_since(b.idle_since);
                let unchecked_for = self.now.saturating_duration_since(b.checked_at);
                let rotated = b.credentials_version != version;
                let expired = b.expires.is_some_and(|at| at <= self.now) || rotated;
                let idle_too_long = settings.max_idle_time.is_some_and(|max| idle_for > max)
                    && self
                        .shared
                        .pools
                        .get(pool)
                        .is_some_and(|p| p.total_idle() > settings.min_idle);
                if expired || idle_too_long {
                    self.forget_idle(pool, bi);
                    let (reason, why) = if rotated {
                        (CloseReason::CredentialsChanged, "credentials changed")
                    } else if expired {
                        (CloseReason::Lifetime, "lifetime over")
                    } else {
                        (CloseReason::IdleTimeout, "idle too long")
                    };
                    self.close_backend(bi, reason, why);
                } else if settings
                    .health_check_period
                    .is_some_and(|period| unchecked_for >= period)
                {
                    self.forget_idle(pool, bi);
                    self.start_health_check(bi);
                }
            }
            if pool % reactors == self.id && settings.min_idle > 0 && !self.shared.is_stopping() {
                let connecting = self.shards.get(pool).map_or(0, |s| s.connecting);
                let have = self
                    .shared
                    .pools
                    .get(pool)
                    .map_or(0, crate::pool::Pool::total_idle)
                    + connecting;
                for _ in have..settings.min_idle {
                    let reserved = self
                        .shared
                        .pools
                        .get(pool)
                        .and_then(|p| self.shared.databases.get(p.db))
                        .is_some_and(crate::pool::Database::try_reserve);
                    if !reserved {
                        break;
                    }
                    self.open_backend(pool, None);
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
