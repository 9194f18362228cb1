//! Query cancellation: which server connection a CancelRequest may reach.
//!
//! Clients get proxy-issued keys whose pid names the engine and slot of their session. A
//! CancelRequest arriving on any engine is routed to that engine, checked against the
//! session's secret in constant time, and — only if the session holds a server connection
//! at that moment — handed to the driver for delivery with the connection's real key.
//!
//! With peering (`peer_id`, `peers`), the first two bytes of every key's secret carry the
//! issuing instance's id (14 bits; the other two bits stay random). A request whose key names
//! another instance is forwarded to it as it came, with bit 31 of the pid set (pids pglink
//! issues stay below 2^31): a forwarded request is never forwarded again, so a wrong `peers`
//! list cannot make requests go round in circles.
//!
//! "Never to a server connection that has since moved to another client": while a delivery
//! is in flight the connection is marked; if its transaction ends meanwhile it is parked
//! instead of returned to the pool, and only becomes lendable when the delivery has
//! completed (the server closes the cancel connection after signalling its backend, so by
//! then any stray signal has landed on an idle backend, where PostgreSQL ignores it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::id::{ClientId, ServerId};
use super::io::{Io, Message};
use super::server::State;
use super::timer::ServerTimer;
use super::{Engine, decode_pid};
use crate::auth::constant_time_eq;
use crate::backend::cancel::Peer;
use crate::client::CancelKey;
use crate::observe::metrics::CancelOutcome;

/// Cancel deliveries running at once (all engines).
const MAX_CANCELS_IN_FLIGHT: usize = 32;
/// How long a delivery may take before the connection is considered free again anyway: more
/// than the driver's delivery can take (its connect, write and read timeouts together).
const CANCEL_REPORT_DEADLINE: Duration = Duration::from_secs(30);

/// Bit 31 of a CancelRequest's pid: the request was forwarded by a peer.
pub(crate) const FORWARDED: u32 = 1 << 31;
/// The bits of a key's first two secret bytes (big-endian) that hold the peer id.
const PEER_BITS: u16 = 0x3FFF;

/// This instance among its peers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Peering {
    /// `peer_id`, stamped into every key issued; `None`: no peering, keys wholly random.
    pub id: Option<u16>,
    /// `peers` by id, without this instance.
    pub peers: HashMap<u16, Arc<Peer>>,
}

/// Writes peer `id` into a fresh key's secret (random bytes), keeping two random bits.
pub(crate) fn stamp_peer(secret: &mut [u8; 32], id: u16) {
    let [hi, lo] = ((u16::from(secret[0]) << 8 & !PEER_BITS) | (id & PEER_BITS)).to_be_bytes();
    secret[0] = hi;
    secret[1] = lo;
}

/// The peer id a key's secret carries (meaningful only for keys of peered instances).
pub(crate) fn key_peer(secret: &[u8]) -> Option<u16> {
    match secret {
        [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo]) & PEER_BITS),
        _ => None,
    }
}

impl Engine {
    /// A CancelRequest arrived on this engine.
    pub(super) fn route_cancel(&mut self, mut key: CancelKey) {
        let forwarded = key.pid & FORWARDED != 0;
        key.pid &= !FORWARDED;
        if let Some(me) = self.ctx.peering.id
            && let Some(owner) = key_peer(key.secret())
            && owner != me
        {
            return self.forward_cancel(owner, key, forwarded);
        }
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

    /// A CancelRequest for a key of peer `owner`: sent on to it, unless it came from a peer.
    fn forward_cancel(&mut self, owner: u16, key: CancelKey, forwarded: bool) {
        if forwarded {
            log::warn!(
                "cancel request forwarded by a peer for a key of peer {owner} dropped: a \
                 forwarded request is not forwarded again (do the instances' peers lists agree?)"
            );
            return self.count_cancel(CancelOutcome::Loop);
        }
        let Some(peer) = self.ctx.peering.peers.get(&owner).cloned() else {
            log::debug!("cancel request for a key of peer {owner}, which is not in peers: ignored");
            return self.count_cancel(CancelOutcome::UnknownPeer);
        };
        let in_flight = self.ctx.rt.cancels_in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= MAX_CANCELS_IN_FLIGHT {
            self.ctx.cancel_delivered();
            log::warn!("cancel request dropped: {in_flight} cancels already in flight");
            return self.count_cancel(CancelOutcome::Overloaded);
        }
        self.io.push_back(Io::ForwardCancel {
            peer,
            pid: key.pid | FORWARDED,
            secret: key.secret().to_vec(),
        });
        self.count_cancel(CancelOutcome::Peer);
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
        let waiting = c.session.is_acquiring().then_some(c.generation);
        let outcome = match c.session.server() {
            Some(s) => self.cancel_server_query(s),
            // Its statement waits for a server connection: it ends there, as canceled.
            None if let Some(generation) = waiting => {
                self.cancel_wait(ClientId::new(slot, generation));
                CancelOutcome::Waiting
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_key_names_its_peer_and_keeps_the_rest_random() {
        for id in [1, 2, 0x155, 16383] {
            let mut secret = [0xA5u8; 32];
            stamp_peer(&mut secret, id);
            assert_eq!(key_peer(&secret), Some(id));
            // 4-byte keys (protocol 3.0) carry it too.
            assert_eq!(key_peer(&secret[..4]), Some(id));
            assert_eq!(
                secret[0] & 0xC0,
                0xA5 & 0xC0,
                "the top two bits stay random"
            );
            assert_eq!(&secret[2..], &[0xA5u8; 30][..]);
        }
        assert_eq!(key_peer(&[7]), None);
    }
}
