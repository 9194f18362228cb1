//! Query cancellation.
//!
//! Clients get proxy-issued keys whose pid names the reactor and slot of their session. A
//! CancelRequest arriving on any reactor is routed to that reactor, checked against the
//! session's secret in constant time, and — only if the session holds a backend at that
//! moment — delivered to the server over a new connection (TLS when the backend uses TLS)
//! with the backend's real key.
//!
//! "Never to a backend that has since moved to another client": while a delivery is in
//! flight the backend is marked; if its transaction ends meanwhile it is parked instead of
//! returned to the pool, and only becomes lendable when the delivery has completed (the
//! server closes the cancel connection after signalling its backend, so by then any stray
//! signal has landed on an idle backend, where PostgreSQL ignores it).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::backend::State;
use super::token::{Kind, Tok};
use super::{Msg, Reactor, decode_pid};
use crate::auth::constant_time_eq;
use crate::client::CancelKey;
use crate::observe::metrics::CancelOutcome;
use crate::protocol::startup::{cancel_request, ssl_request};

/// Cancel deliveries running at once (each is a short-lived thread).
const MAX_CANCELS_IN_FLIGHT: usize = 32;
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

impl Reactor {
    /// A CancelRequest arrived on this reactor.
    pub(super) fn route_cancel(&mut self, key: CancelKey) {
        let (reactor, _) = decode_pid(key.pid);
        if reactor == self.id {
            return self.cancel_local(key);
        }
        match self.shared.reactor(reactor) {
            Some(h) => {
                if h.send(Msg::Cancel(key)).is_err() {
                    log::warn!("cancel request dropped: reactor {reactor} is overloaded");
                    self.count_cancel(CancelOutcome::Overloaded);
                }
            }
            None => {
                log::debug!("cancel request for unknown reactor {reactor} ignored");
                self.count_cancel(CancelOutcome::UnknownKey);
            }
        }
    }

    fn count_cancel(&self, outcome: CancelOutcome) {
        if let Some(c) = self.stats.cancels.get(outcome.index()) {
            c.inc();
        }
    }

    /// A CancelRequest for one of this reactor's clients.
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
        let outcome = match c.backend {
            Some(bi) => self.cancel_backend_query(bi),
            None => {
                log::debug!("cancel request for an idle session: nothing to cancel");
                CancelOutcome::Idle
            }
        };
        self.count_cancel(outcome);
    }

    /// Delivers a cancel to backend `bi`'s server (on a helper thread). `Forwarded` also
    /// when a delivery to it is already under way.
    pub(super) fn cancel_backend_query(&mut self, bi: usize) -> CancelOutcome {
        let Some(b) = self.backends.get_mut(bi) else {
            return CancelOutcome::Idle;
        };
        let Some((pid, secret)) = b.server_key.clone() else {
            return CancelOutcome::Idle;
        };
        if b.cancel_in_flight {
            return CancelOutcome::Forwarded;
        }
        let Some(target) = self
            .shared
            .pools
            .get(b.pool)
            .and_then(|p| self.shared.databases.get(p.db))
            .map(|d| d.target.clone())
        else {
            return CancelOutcome::Idle;
        };
        let in_flight = self.shared.cancels_in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= MAX_CANCELS_IN_FLIGHT {
            self.shared.cancels_in_flight.fetch_sub(1, Ordering::AcqRel);
            log::warn!("cancel request dropped: {in_flight} cancels already in flight");
            return CancelOutcome::Overloaded;
        }
        let tls = if b.stream.is_tls() {
            target.tls.clone().zip(target.server_name.clone())
        } else {
            None
        };
        let addr = b.addr;
        b.cancel_in_flight = true;
        let tok = Tok::new(Kind::Backend, bi, b.generation);
        let shared = self.shared.clone();
        let me = self.id;
        let spawned = std::thread::Builder::new()
            .name("pglink-cancel".into())
            .spawn(move || {
                if let Err(e) = deliver_cancel(addr, tls, pid, &secret) {
                    log::warn!("cancel request to {addr} failed: {e}");
                }
                shared.cancels_in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Some(h) = shared.reactor(me) {
                    let _ = h.send(Msg::CancelDone { backend: tok });
                }
            });
        if spawned.is_err() {
            self.shared.cancels_in_flight.fetch_sub(1, Ordering::AcqRel);
            if let Some(b) = self.backends.get_mut(bi) {
                b.cancel_in_flight = false;
            }
            return CancelOutcome::Overloaded;
        }
        CancelOutcome::Forwarded
    }

    pub(super) fn cancel_done(&mut self, tok: Tok) {
        if !self.backend_alive(tok) {
            return;
        }
        let Some(b) = self.backends.get_mut(tok.index()) else {
            return;
        };
        b.cancel_in_flight = false;
        if matches!(b.state, State::Parked) {
            self.backend_available(tok.index());
        }
    }
}

/// Sends a CancelRequest and waits for the server to close the connection.
fn deliver_cancel(
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    pid: u32,
    secret: &[u8],
) -> std::io::Result<()> {
    let mut sock = std::net::TcpStream::connect_timeout(&addr, CANCEL_TIMEOUT)?;
    sock.set_read_timeout(Some(CANCEL_TIMEOUT))?;
    sock.set_write_timeout(Some(CANCEL_TIMEOUT))?;
    let mut packet = Vec::with_capacity(16);
    cancel_request(&mut packet, pid, secret);
    if let Some((config, name)) = tls {
        let mut request = Vec::with_capacity(8);
        ssl_request(&mut request);
        sock.write_all(&request)?;
        let mut answer = [0u8; 1];
        sock.read_exact(&mut answer)?;
        if answer[0] == b'S' {
            let conn = rustls::ClientConnection::new(config, name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut tls = rustls::StreamOwned::new(conn, sock);
            tls.write_all(&packet)?;
            tls.flush()?;
            let _ = tls.read(&mut [0u8; 1]);
            return Ok(());
        }
    }
    sock.write_all(&packet)?;
    // The server closes the connection once it has signalled its backend.
    let _ = sock.read(&mut [0u8; 1]);
    Ok(())
}
