//! Query cancellation: which server connection a CancelRequest may reach.
//!
//! Clients get proxy-issued keys whose pid names the engine and slot of their session. A
//! CancelRequest arriving on any engine is routed to that engine, checked against the
//! session's secret in constant time, and — only if the session holds a server connection
//! at that moment — handed to the driver for delivery with the connection's real key.
//!
//! "Never to a server connection that has since moved to another client": while a delivery
//! is in flight the connection is marked; if its transaction ends meanwhile it is parked
//! instead of returned to the pool, and only becomes lendable when the delivery has
//! completed (the server closes the cancel connection after signalling its backend, so by
//! then any stray signal has landed on an idle backend, where PostgreSQL ignores it).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::id::ServerId;
use super::io::{Io, Message};
use super::server::State;
use super::timer::ServerTimer;
use super::{Engine, decode_pid};
use crate::auth::constant_time_eq;
use crate::client::CancelKey;
use crate::observe::metrics::CancelOutcome;

/// Cancel deliveries running at once (all engines).
const MAX_CANCELS_IN_FLIGHT: usize = 32;
/// How long a delivery may take before the connection is considered free again anyway: more
/// than the driver's delivery can take (its connect, write and read timeouts together).
const CANCEL_REPORT_DEADLINE: Duration = Duration::from_secs(30);

impl Engine {
    /// A CancelRequest arrived on this engine.
    pub(super) fn route_cancel(&mut self, key: CancelKey) {
        let (engine, _) = decode_pid(key.pid);
        if engine == self.id {
            return self.cancel_local(key);
        }
        if engine >= self.ctx.reactors {
            log::debug!("cancel request for unknown reactor {engine} ignored");
            return self.count_cancel(CancelOutcome::UnknownKey);
        }
        if self.mailbox.send(engine, Message::Cancel(key)).is_err() {
            log::warn!("cancel request dropped: reactor {engine} is overloaded");
            self.count_cancel(CancelOutcome::Overloaded);
        }
    }

    fn count_cancel(&self, outcome: CancelOutcome) {
        if let Some(c) = self.stats.cancels.get(outcome.index()) {
            c.inc();
        }
    }

    /// A CancelRequest for one of this engine's clients.
    pub(super) fn cancel_local(&mut self, key: CancelKey) {
        let (_, slot) = decode_pid(key.pid);
        let Some(c) = self.clients.get(slot) else {
            return self.count_cancel(CancelOutcome::UnknownKey);
        };
        let ours = c.session.cancel_key();
        if ours.pid != key.pid || !constant_time_eq(ours.secret(), key.secret()) {
            log::debug!("cancel request with a wrong key ignored");
            return self.count_cancel(CancelOutcome::UnknownKey);
        }
        let outcome = match c.session.server() {
            Some(s) => self.cancel_server_query(s),
            None => {
                log::debug!("cancel request for an idle session: nothing to cancel");
                CancelOutcome::Idle
            }
        };
        self.count_cancel(outcome);
    }

    /// Asks the driver to deliver a cancel to server connection `s`. `Forwarded` also when a
    /// delivery to it is already under way.
    pub(super) fn cancel_server_query(&mut self, id: ServerId) -> CancelOutcome {
        let Some(s) = self.server(id) else {
            return CancelOutcome::Idle;
        };
        let Some((pid, secret)) = s.server_key.clone() else {
            return CancelOutcome::Idle;
        };
        if s.cancel_in_flight {
            return CancelOutcome::Forwarded;
        }
        let Some((_, db)) = self.ctx.pool_database(s.pool) else {
            return CancelOutcome::Idle;
        };
        let target = db.target.clone();
        let tls = s.uses_tls;
        let in_flight = self.ctx.rt.cancels_in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= MAX_CANCELS_IN_FLIGHT {
            self.ctx.cancel_delivered();
            log::warn!("cancel request dropped: {in_flight} cancels already in flight");
            return CancelOutcome::Overloaded;
        }
        let at = self.now + CANCEL_REPORT_DEADLINE;
        if let Some(s) = self.servers.get_mut(id.index()) {
            s.cancel_in_flight = true;
            self.timers
                .server(&mut s.deadlines, id, ServerTimer::Cancel, at);
        }
        self.io.push_back(Io::Cancel {
            server: id,
            target,
            tls,
            pid,
            secret,
        });
        CancelOutcome::Forwarded
    }

    /// A cancel delivery finished: a parked connection may be lent again.
    pub(super) fn cancel_done(&mut self, id: ServerId) {
        let Some(s) = self.server_mut(id) else {
            return;
        };
        s.cancel_in_flight = false;
        s.deadlines.stop(ServerTimer::Cancel);
        if matches!(s.state, State::Parked) {
            self.server_available(id);
        }
    }
}
