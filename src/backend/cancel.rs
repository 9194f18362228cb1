//! Delivering a CancelRequest to a server: a new connection to the same address (TCP, or
//! the same unix socket; TLS when the connection being cancelled uses TLS) carrying the
//! connection's real key, on a short-lived thread so no reactor ever blocks. Which connection a client's cancel may reach is the engine's
//! decision (`engine::cancel`); this only sends it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::protocol::startup::{cancel_request, ssl_request};

const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings for the cancel connection.
pub type CancelTls = Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>;

/// Where the server is: the address (or unix socket) its connection being cancelled uses.
#[derive(Debug, Clone)]
pub enum CancelAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

impl std::fmt::Display for CancelAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelAddr::Tcp(a) => a.fmt(f),
            CancelAddr::Unix(p) => p.display().fmt(f),
        }
    }
}

/// A blocking socket of either family, with timeouts.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Sends a cancel for the backend `pid`/`secret` of the server at `addr` on a new thread,
/// then calls `done` (whatever happened). Fails only if no thread could be started. The
/// thread ends within a few `CANCEL_TIMEOUT`s; the server joins it on shutdown.
pub fn spawn(
    addr: CancelAddr,
    tls: CancelTls,
    pid: u32,
    secret: Vec<u8>,
    done: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pglink-cancel".into())
        .spawn(move || {
            if let Err(e) = send(&addr, tls, pid, &secret) {
                log::warn!("cancel request to {addr} failed: {e}");
            }
            done();
        })
}

/// Sends a CancelRequest and waits for the server to close the connection.
fn send(addr: &CancelAddr, tls: CancelTls, pid: u32, secret: &[u8]) -> std::io::Result<()> {
    let mut sock: Box<dyn Conn> = match addr {
        CancelAddr::Tcp(addr) => {
            let sock = std::net::TcpStream::connect_timeout(addr, CANCEL_TIMEOUT)?;
            sock.set_read_timeout(Some(CANCEL_TIMEOUT))?;
            sock.set_write_timeout(Some(CANCEL_TIMEOUT))?;
            Box::new(sock)
        }
        CancelAddr::Unix(path) => Box::new(unix_connect(path, CANCEL_TIMEOUT)?),
    };
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

/// A unix-socket connection whose connect, reads and writes each wait at most `timeout`: on
/// Linux a blocking connect to a socket whose backlog is full sleeps until the send timeout
/// (forever by default), so that is set before connecting.
pub(crate) fn unix_connect(
    path: &std::path::Path,
    timeout: Duration,
) -> std::io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    sock.set_write_timeout(Some(timeout))?;
    sock.set_read_timeout(Some(timeout))?;
    sock.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock)))
}
