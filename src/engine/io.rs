//! What the engine asks of its driver ([`Io`]), what engines tell each other ([`Message`],
//! through a [`Mailbox`]), and what the driver reports back about a connection.

use std::sync::Arc;

use super::id::{ClientId, ServerId};
use super::output::OutBuf;
use super::server::ServerConn;
use crate::backend::Target;
use crate::backend::cancel::Peer;
use crate::client::CancelKey;
use crate::client::users::{PoolId, ScramSecret};

/// A connection of either kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conn {
    Client(ClientId),
    Server(ServerId),
}

/// How a client reached pglink (`Engine::handle_accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    /// A unix socket: TLS is neither offered nor required (as PostgreSQL does for local
    /// connections).
    Unix,
}

/// An I/O command, drained by the driver with [`super::Engine::poll_io`] after every call
/// into the engine, and carried out in order.
#[derive(Debug)]
pub enum Io {
    /// Output is waiting (`Engine::output`): write it at the end of the loop turn, then
    /// report what the socket took with `Engine::handle_sent`.
    Flush(Conn),
    /// Offer this connection's buffered input again (`Engine::handle_read`) and, unless its
    /// socket was drained, read more: whatever stopped it has passed.
    Resume(Conn),
    /// Open a connection for `server` to `target`: to the `addr_index`th address its host
    /// resolved to, or to its unix socket (the driver tells which from the target; a socket
    /// has only index 0); report `Engine::handle_connected` or
    /// `Engine::handle_connect_failed`.
    Connect {
        server: ServerId,
        target: Arc<Target>,
        addr_index: usize,
    },
    /// Flush the client's pending output in plaintext, then run a TLS handshake as the
    /// server; `direct`: the client's unconsumed input is its ClientHello. Report
    /// `Engine::handle_tls_established` when it completes.
    ClientTls { client: ClientId, direct: bool },
    /// Run a TLS handshake as a client of `target` on this server connection.
    ServerTls {
        server: ServerId,
        target: Arc<Target>,
    },
    /// Write `last` (best effort, without waiting), then close the connection.
    Close { conn: Conn, last: Option<OutBuf> },
    /// Move this idle server connection, socket and buffered input included, to reactor
    /// `to`, which adopts it with `Engine::handle_adopt`. If it cannot be sent, adopt it
    /// here instead.
    HandOff {
        server: ServerId,
        to: usize,
        transfer: Transfer,
    },
    /// Deliver a CancelRequest with this server connection's real key to the server it is
    /// connected to (over TLS when `tls`), off the loop; then send
    /// [`Message::CancelDone`] to this reactor.
    Cancel {
        server: ServerId,
        target: Arc<Target>,
        tls: bool,
        pid: u32,
        secret: Vec<u8>,
    },
    /// Send a CancelRequest (pid and secret as given, the pid marked as forwarded) to
    /// another pglink instance, off the loop; then `Context::cancel_delivered`.
    ForwardCancel {
        peer: Arc<Peer>,
        pid: u32,
        secret: Vec<u8>,
    },
    /// Derive this SCRAM secret's verifier off the loop (`ScramSecret::derive`), then send
    /// [`Message::VerifierReady`] to this reactor.
    DeriveVerifier {
        client: ClientId,
        secret: Arc<ScramSecret>,
    },
    /// Run this admin console command for `client` off the loop, then send
    /// [`Message::ConsoleReply`] to this reactor.
    Console { client: ClientId, command: String },
    /// Stop accepting connections (shutdown has begun).
    StopAccepting,
}

/// A server connection on its way to another engine.
#[derive(Debug)]
pub struct Transfer {
    pub(super) conn: Box<ServerConn>,
    /// It answers that engine's `WantServer`.
    pub(super) requested: bool,
}

impl Transfer {
    /// The same connection, adopted as not requested (it stays on the engine that sent it).
    pub fn unrequested(mut self) -> Transfer {
        self.requested = false;
        self
    }
}

/// What engines tell each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A CancelRequest received elsewhere for a client of this engine.
    Cancel(CancelKey),
    /// Engine `from` has a client waiting for `pool` and this one has an idle server
    /// connection of it.
    WantServer { pool: PoolId, from: usize },
    /// Reply to `WantServer` when the idle connection was gone by then, and to `MakeRoom`
    /// (whether or not room was made): `pool`'s waiters may try again.
    NoServer { pool: PoolId },
    /// Engine `from` has a client waiting for `pool`, whose database is at
    /// `pool_max_conns`, and this one has an idle connection of `victim` (another user of
    /// that database): close it so that `from` can open one.
    MakeRoom {
        pool: PoolId,
        victim: PoolId,
        from: usize,
    },
    /// A cancel delivery for this server connection finished: it may be lent again.
    CancelDone { server: ServerId },
    /// The SCRAM verifier this client's login asked for (`Io::DeriveVerifier`) is derived.
    VerifierReady { client: ClientId },
    /// The answer to this console client's command (`Io::Console`): protocol messages.
    ConsoleReply { client: ClientId, answer: Vec<u8> },
    /// Pools were paused, resumed or told to reconnect: act on it now (close what is idle
    /// and retired, open connections for clients waiting on a resumed pool).
    Maintain,
}

/// How an engine reaches the others.
pub trait Mailbox: Send + Sync {
    /// Sends without blocking. A full or missing queue gives the message back (callers cope:
    /// a lost `WantServer` only delays a waiter to its timeout).
    fn send(&self, to: usize, msg: Message) -> Result<(), Message>;
}

/// What the driver knows when a TLS handshake completes.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// A client negotiated ALPN `postgresql`.
    pub alpn_postgresql: bool,
    /// `tls-server-end-point` channel-binding data of the server's certificate (server
    /// connections, for SCRAM-SHA-256-PLUS).
    pub channel_binding: Option<Vec<u8>>,
}

/// Why the driver gave up on a connection.
#[derive(Debug)]
pub enum Failure {
    /// The peer closed it.
    Eof,
    Read(std::io::Error),
    Write(std::io::Error),
    /// The socket could not be registered with the poller.
    Register(std::io::Error),
    /// TLS is needed and this side has no configuration for it.
    TlsNotConfigured,
    /// TLS could not be set up, or the handshake failed.
    Tls(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Eof => f.write_str("closed by the peer"),
            Failure::Read(e) => write!(f, "read failed: {e}"),
            Failure::Write(e) => write!(f, "write failed: {e}"),
            Failure::Register(e) => write!(f, "cannot register the socket: {e}"),
            Failure::TlsNotConfigured => f.write_str("TLS is not configured"),
            Failure::Tls(e) => write!(f, "TLS failed: {e}"),
        }
    }
}
