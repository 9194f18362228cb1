//! A non-blocking socket (TCP or unix) with an optional TLS session on top: the one module
//! of the reactor that knows rustls.
//!
//! The reactor reads plaintext into connection buffers and writes plaintext from the
//! engine's; this type hides whether rustls sits in between, and whether the socket is TCP
//! or unix ([`Sock`]: one `match` per syscall, nothing more). rustls' own buffers are capped
//! (`TLS_BUFFER_LIMIT`) so a slow TLS peer applies backpressure like a plain one.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;

use crate::auth::tls_server_end_point;

/// Client-side TLS settings (`tls`), as the reactor holds them.
pub type ServerTlsConfig = rustls::ServerConfig;

/// Cap on plaintext rustls buffers while the socket is not taking data.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// This many plaintext bytes were read.
    Data(usize),
    /// Nothing more until the next readiness event.
    WouldBlock,
    /// The peer closed the connection.
    Eof,
}

/// A connected socket of either family.
#[derive(Debug)]
pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    /// The pending socket error (`SO_ERROR`), e.g. of a connect that failed.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Sock::Tcp(s) => s.take_error(),
            Sock::Unix(s) => s.take_error(),
        }
    }

    /// Whether the socket is connected (`NotConnected` while a connect is in progress).
    pub fn check_connected(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.peer_addr().map(drop),
            Sock::Unix(s) => s.peer_addr().map(drop),
        }
    }

    /// TCP_NODELAY on TCP; nothing to do on a unix socket.
    pub fn set_nodelay(&self) {
        if let Sock::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Sock::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Sock {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write_vectored(bufs),
            Sock::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl mio::event::Source for Sock {
    fn register(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.register(r, token, interest),
            Sock::Unix(s) => s.register(r, token, interest),
        }
    }

    fn reregister(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.reregister(r, token, interest),
            Sock::Unix(s) => s.reregister(r, token, interest),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.deregister(r),
            Sock::Unix(s) => s.deregister(r),
        }
    }
}

/// Who is at the other end, for logs and for reaching a server again (cancel requests): a
/// TCP address, or the path of a unix socket (a server's, or, for a client, the listening
/// socket it came through: unix clients have no address of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

impl Peer {
    /// The address and port as the admin console shows them: an IP address and its port,
    /// or a socket path and no port.
    pub fn addr_and_port(&self) -> (String, Option<u16>) {
        match self {
            Peer::Tcp(addr) => (addr.ip().to_string(), Some(addr.port())),
            Peer::Unix(path) => (path.display().to_string(), None),
        }
    }

    /// Where a cancel for a server connection with this peer goes.
    pub fn to_cancel_addr(&self) -> crate::backend::cancel::CancelAddr {
        use crate::backend::cancel::CancelAddr;
        match self {
            Peer::Tcp(addr) => CancelAddr::Tcp(*addr),
            Peer::Unix(path) => CancelAddr::Unix(path.clone()),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Unix(path) => path.display().fmt(f),
        }
    }
}

pub struct Stream {
    pub sock: Sock,
    tls: Option<Box<rustls::Connection>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("sock", &self.sock)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Stream {
    pub fn plain(sock: Sock) -> Stream {
        Stream { sock, tls: None }
    }

    /// Wraps the socket in TLS from now on. Bytes already read in plaintext are not replayed
    /// (the caller checked there were none: CVE-2021-23214).
    fn start_tls(&mut self, mut conn: rustls::Connection) {
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        self.tls = Some(Box::new(conn));
    }

    /// Starts TLS on a connection whose first bytes (already read, in `prefix`) are the
    /// peer's ClientHello: direct TLS without SSLRequest.
    fn start_tls_with_prefix(
        &mut self,
        conn: rustls::Connection,
        mut prefix: &[u8],
    ) -> io::Result<()> {
        self.start_tls(conn);
        let tls = self.tls.as_deref_mut().ok_or(io::ErrorKind::Other)?;
        while !prefix.is_empty() {
            if tls.read_tls(&mut prefix)? == 0 {
                break;
            }
            tls.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(())
    }

    /// Starts TLS as the server (toward a client); `direct`: `prefix` (the bytes already
    /// read) is the client's ClientHello, sent without SSLRequest.
    pub fn accept_tls(
        &mut self,
        config: Arc<ServerTlsConfig>,
        prefix: Option<&[u8]>,
    ) -> io::Result<()> {
        let tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        let tls = rustls::Connection::Server(tls);
        match prefix {
            Some(prefix) => self.start_tls_with_prefix(tls, prefix),
            None => {
                self.start_tls(tls);
                Ok(())
            }
        }
    }

    /// Starts TLS as a client of a server called `name`.
    pub fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let tls = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        self.start_tls(rustls::Connection::Client(tls));
        Ok(())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The protocol ALPN settled on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.as_deref().and_then(|t| t.alpn_protocol())
    }

    /// `tls-server-end-point` channel-binding data of the peer's certificate.
    pub fn peer_end_point(&self) -> Option<Vec<u8>> {
        let certs = self.tls.as_deref()?.peer_certificates()?;
        tls_server_end_point(certs.first()?).ok()
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Reads plaintext into `dst`.
    pub fn read(&mut self, dst: &mut [u8]) -> io::Result<ReadStatus> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return read_plain(&mut self.sock, dst);
        };
        loop {
            match tls.reader().read(dst) {
                Ok(0) => return Ok(ReadStatus::Eof),
                Ok(n) => return Ok(ReadStatus::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut self.sock) {
                Ok(0) => return Ok(ReadStatus::Eof),
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // Tell the peer why (best effort), then fail the connection.
                        let _ = tls.write_tls(&mut self.sock);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadStatus::WouldBlock);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes plaintext, returning how much was taken. With TLS, bytes are taken into rustls
    /// (bounded) and pushed to the socket; `flush` pushes the rest later.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return write_plain(&mut self.sock, data);
        };
        // Push out what rustls already holds before taking more.
        if !flush_tls(tls, &mut self.sock)? {
            return Ok(0);
        }
        let taken = tls.writer().write(data)?;
        flush_tls(tls, &mut self.sock)?;
        Ok(taken)
    }

    /// Writes as much of `data` as the socket takes now; returns how much that was, and the
    /// error that stopped it, if one did.
    pub fn write_some(&mut self, data: &[u8]) -> (usize, io::Result<()>) {
        let mut written = 0;
        while let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
            match self.write(rest) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) => return (written, Err(e)),
            }
        }
        (written, Ok(()))
    }

    /// Pushes buffered TLS records (handshake or data) to the socket. `Ok(true)` when nothing
    /// is left buffered.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self.tls.as_deref_mut() {
            Some(tls) => flush_tls(tls, &mut self.sock),
            None => Ok(true),
        }
    }

    /// Queues a TLS close_notify and tries to send it (best effort, before closing).
    pub fn close_notify(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = flush_tls(tls, &mut self.sock);
        }
    }
}

fn read_plain(sock: &mut Sock, dst: &mut [u8]) -> io::Result<ReadStatus> {
    loop {
        match sock.read(dst) {
            Ok(0) => return Ok(ReadStatus::Eof),
            Ok(n) => return Ok(ReadStatus::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn write_plain(sock: &mut Sock, data: &[u8]) -> io::Result<usize> {
    loop {
        match sock.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn flush_tls(tls: &mut rustls::Connection, sock: &mut Sock) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
