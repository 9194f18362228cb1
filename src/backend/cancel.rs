//! Delivering a CancelRequest: to a server, a new connection to the same address (TCP, or
//! the same unix socket; TLS when the connection being cancelled uses TLS) carrying the
//! connection's real key; to another pglink instance ([`Peer`]), the client's key as it came,
//! marked as forwarded. Each on a short-lived thread so no reactor ever blocks. Which
//! connection or peer a client's cancel may reach is the engine's decision
//! (`engine::cancel`); this only sends it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::protocol::startup::{cancel_request, ssl_request};

const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings for the cancel connection: asked for with an SSLRequest; a server that
/// declines gets the request in plaintext unless TLS is `required`.
#[derive(Clone)]
pub struct CancelTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
    pub required: bool,
}

/// Where the request goes: the address (or unix socket) a server connection being
/// cancelled uses, or a peer's address, resolved on the delivering thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
    Host(Arc<str>, u16),
}

impl std::fmt::Display for CancelAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelAddr::Tcp(a) => a.fmt(f),
            CancelAddr::Unix(p) => p.display().fmt(f),
            CancelAddr::Host(h, port) if h.contains(':') => write!(f, "[{h}]:{port}"),
            CancelAddr::Host(h, port) => write!(f, "{h}:{port}"),
        }
    }
}

/// Another pglink instance (`peers.<id>`): where cancels for its keys are forwarded.
#[derive(Clone)]
pub struct Peer {
    pub id: u16,
    pub addr: CancelAddr,
    pub tls: Option<CancelTls>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("tls", &self.tls.as_ref().map(|t| t.required))
            .finish()
    }
}

impl PartialEq for Peer {
    /// Same id, address and TLS mode (the TLS configuration itself is not compared).
    fn eq(&self, other: &Peer) -> bool {
        self.id == other.id
            && self.addr == other.addr
            && self.tls.as_ref().map(|t| t.required) == other.tls.as_ref().map(|t| t.required)
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
    tls: Option<CancelTls>,
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
fn send(addr: &CancelAddr, tls: Option<CancelTls>, pid: u32, secret: &[u8]) -> std::io::Result<()> {
    let mut sock: Box<dyn Conn> = match addr {
        CancelAddr::Tcp(addr) => Box::new(tcp_connect(&[*addr])?),
        CancelAddr::Host(host, port) => {
            use std::net::ToSocketAddrs;
            let addrs: Vec<SocketAddr> = (&**host, *port).to_socket_addrs()?.collect();
            Box::new(tcp_connect(&addrs)?)
        }
        CancelAddr::Unix(path) => Box::new(unix_connect(path, CANCEL_TIMEOUT)?),
    };
    let mut packet = Vec::with_capacity(16);
    cancel_request(&mut packet, pid, secret);
    // No TLS over a unix socket (PostgreSQL and pglink offer none there).
    if let Some(tls) = tls.filter(|_| !matches!(addr, CancelAddr::Unix(_))) {
        let mut request = Vec::with_capacity(8);
        ssl_request(&mut request);
        sock.write_all(&request)?;
        let mut answer = [0u8; 1];
        sock.read_exact(&mut answer)?;
        if answer[0] == b'S' {
            let conn = rustls::ClientConnection::new(tls.config, tls.name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut tls = rustls::StreamOwned::new(conn, sock);
            tls.write_all(&packet)?;
            tls.flush()?;
            let _ = tls.read(&mut [0u8; 1]);
            return Ok(());
        }
        if tls.required {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "TLS is required but was declined",
            ));
        }
    }
    sock.write_all(&packet)?;
    // The server closes the connection once it has signalled its backend.
    let _ = sock.read(&mut [0u8; 1]);
    Ok(())
}

/// A TCP connection to the first of `addrs` that answers, with timeouts.
fn tcp_connect(addrs: &[SocketAddr]) -> std::io::Result<std::net::TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(addr, CANCEL_TIMEOUT) {
            Ok(sock) => {
                sock.set_read_timeout(Some(CANCEL_TIMEOUT))?;
                sock.set_write_timeout(Some(CANCEL_TIMEOUT))?;
                return Ok(sock);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
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
