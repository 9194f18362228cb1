//! A reloaded configuration taking effect in one engine.
//!
//! Ids stay valid across reloads: a new configuration keeps the databases and pools of the
//! old one at their ids (a removed one stays as a tombstone) and appends new ones. So
//! nothing here remaps; it only retires what the new configuration no longer allows:
//!
//! - an idle server connection of a removed pool, or made for a server whose settings
//!   changed (`ServerConn::target` is not the database's `target` any more), or beyond a
//!   lowered `pool_max_conns`, closes now; one lent to a client closes when it comes back
//!   ([`Engine::retirement`] is asked then too);
//! - a session of a removed user or database ends with FATAL 57P01 now when it holds no
//!   server connection, else at the end of its transaction; so does an admin console session
//!   of a user no longer in `admin_users` (the engine has the new login table by then);
//! - clients waiting for a server connection get one opened for them if the pool grew.
//!
//! Everything else the engines read from the [`Context`] when they need it (pool sizes,
//! timeouts, lifetimes, health checks, `auth_method`, limits), so it applies from the next
//! use on.

use std::sync::Arc;
use std::time::Instant;

use super::id::{ClientId, ServerId};
use super::pool::Shard;
use super::{Context, Engine};
use crate::client::users::PoolId;
use crate::observe::metrics::CloseReason;

impl Engine {
    /// The configuration `ctx` is in effect from now on.
    pub fn handle_reload(&mut self, ctx: Arc<Context>, now: Instant) {
        self.now = now;
        self.ctx = ctx;
        if self.shards.len() < self.ctx.pools.len() {
            self.shards
                .resize_with(self.ctx.pools.len(), Shard::default);
        }
        // The new configuration may have fixed what made connections fail: no back-off.
        for shard in &mut self.shards {
            shard.login_succeeded();
        }
        self.retire_idle();
        let removed: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.session.pool().is_some_and(|p| self.pool_removed(p)))
            .map(|(i, c)| ClientId::new(i, c.generation))
            .collect();
        for c in removed {
            match self.client_mut(c) {
                // Ends when it gives its server connection back (`release_from`).
                Some(cl) if cl.session.holds_backend() => cl.removed = true,
                _ => self.client_removed(c),
            }
        }
        // Admin console sessions of users no longer in `admin_users` (or no longer users).
        let demoted: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.session.is_console_login())
            .filter(|(_, c)| {
                !self
                    .users
                    .console
                    .get(c.session.user())
                    .is_some_and(|&(_, admin)| admin)
            })
            .map(|(i, c)| ClientId::new(i, c.generation))
            .collect();
        for c in demoted {
            self.with_session(c, |s, _, out| s.on_removed(out));
        }
        // A larger pool serves clients already waiting, not only the next ones.
        self.serve_waiters();
        self.run_actions();
    }

    /// Whether a reload removed `pool` (its user, or its whole database).
    pub(super) fn pool_removed(&self, pool: PoolId) -> bool {
        self.ctx
            .pool_database(pool)
            .is_none_or(|(p, db)| p.is_removed() || db.removed)
    }

    /// Why server connection `s` may not serve again under the configuration in effect,
    /// if it may not.
    pub(super) fn retirement(&self, s: ServerId) -> Option<&'static str> {
        let sv = self.server(s)?;
        let Some((p, db)) = self.ctx.pool_database(sv.pool) else {
            return Some("its pool is gone");
        };
        if p.is_removed() || db.removed {
            Some("its user or database was removed from the configuration")
        } else if !Arc::ptr_eq(&sv.target, &db.target) {
            Some("its server's settings changed")
        } else if db.over_limit() {
            Some("pool_max_conns was lowered")
        } else if db.is_paused() {
            Some("the database is paused")
        } else if sv.reconnect_epoch != db.reconnect_epoch() {
            Some("RECONNECT")
        } else {
            None
        }
    }

    /// Closes the idle server connections that may not serve any more.
    pub(super) fn retire_idle(&mut self) {
        for pool in 0..self.shards.len() {
            let idle = self
                .shards
                .get(pool)
                .map(|s| s.idle.clone())
                .unwrap_or_default();
            for s in idle {
                if let Some(why) = self.retirement(s) {
                    self.forget_idle(pool, s);
                    self.close_server(s, CloseReason::Reconfigured, why);
                }
            }
        }
    }

    /// Opens server connections for clients waiting on pools that may have them now (grown
    /// or resumed).
    fn serve_waiters(&mut self) {
        let waiting: Vec<PoolId> = (0..self.shards.len())
            .filter(|&p| self.shards.get(p).is_some_and(|s| !s.waiters.is_empty()))
            .collect();
        for pool in waiting {
            self.grow(pool);
        }
    }

    /// PAUSE, RESUME or RECONNECT happened (`Message::Maintain`).
    pub(super) fn maintain_now(&mut self) {
        self.retire_idle();
        self.serve_waiters();
    }

    /// Ends the session of a client whose user or database was removed.
    pub(super) fn client_removed(&mut self, id: ClientId) {
        let waiting = self
            .client(id)
            .filter(|c| c.session.is_acquiring())
            .and_then(|c| c.session.pool());
        if let Some(pool) = waiting {
            self.remove_waiter(pool, id);
        }
        self.with_session(id, |s, _, out| s.on_removed(out));
    }
}
