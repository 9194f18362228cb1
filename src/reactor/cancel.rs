//! Cancel delivery: the engine decides which server connection a CancelRequest may reach
//! (see `engine::cancel`); this sends it, over a new connection to that server (TLS when the
//! connection uses TLS), on a short-lived thread so the loop never blocks.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::{Envelope, Reactor};
use crate::backend::Target;
use crate::engine::{Conn, Message, ServerId};
use crate::protocol::startup::{cancel_request, ssl_request};

const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

impl Reactor {
    /// Delivers a cancel for `server` (whose real key is `pid`/`secret`) on a helper thread,
    /// which then tells this reactor's engine it is done.
    pub(super) fn deliver_cancel(
        &mut self,
        server: ServerId,
        target: &Target,
        tls: bool,
        pid: u32,
        secret: Vec<u8>,
    ) {
        let done = Message::CancelDone { server };
        let Some(addr) = self.sockets.get(Conn::Server(server)).map(|s| s.peer) else {
            self.shared.ctx.cancel_delivered();
            return self.engine.handle_message(done, self.now);
        };
        let tls = if tls {
            target.tls.clone().zip(target.server_name.clone())
        } else {
            None
        };
        let shared = self.shared.clone();
        let me = self.id;
        let report = done.clone();
        let spawned = std::thread::Builder::new()
            .name("pglink-cancel".into())
            .spawn(move || {
                if let Err(e) = send_cancel(addr, tls, pid, &secret) {
                    log::warn!("cancel request to {addr} failed: {e}");
                }
                shared.ctx.cancel_delivered();
                if let Some(h) = shared.reactor(me) {
                    let _ = h.send(Envelope::Engine(report));
                }
            });
        if let Err(e) = spawned {
            log::warn!("cancel request to {addr} dropped: cannot start a thread: {e}");
            self.shared.ctx.cancel_delivered();
            self.engine.handle_message(done, self.now);
        }
    }
}

/// Sends a CancelRequest and waits for the server to close the connection.
fn send_cancel(
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
