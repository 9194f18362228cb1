//! Delivering a CancelRequest to a server: a new connection (TLS when the connection being
//! cancelled uses TLS) carrying the connection's real key, on a short-lived thread so no
//! reactor ever blocks. Which connection a client's cancel may reach is the engine's
//! decision (`engine::cancel`); this only sends it.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::protocol::startup::{cancel_request, ssl_request};

const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings for the cancel connection.
pub type CancelTls = Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>;

/// Sends a cancel for the backend `pid`/`secret` of the server at `addr` on a new thread,
/// then calls `done` (whatever happened). Fails only if no thread could be started. The
/// thread ends within a few `CANCEL_TIMEOUT`s; the server joins it on shutdown.
pub fn spawn(
    addr: SocketAddr,
    tls: CancelTls,
    pid: u32,
    secret: Vec<u8>,
    done: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pglink-cancel".into())
        .spawn(move || {
            if let Err(e) = send(addr, tls, pid, &secret) {
                log::warn!("cancel request to {addr} failed: {e}");
            }
            done();
        })
}

/// Sends a CancelRequest and waits for the server to close the connection.
fn send(addr: SocketAddr, tls: CancelTls, pid: u32, secret: &[u8]) -> std::io::Result<()> {
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
