//! What happens in an engine, as compact events.
//!
//! Every state change of a client session and of a server connection goes through one
//! `set_state`, which hands an [`Event`] to the engine's [`EventSink`]; so do the moments
//! worth a trace: a login, a wait for a server connection, each client message, each
//! statement and transaction that ends, each error. The sink does nothing by default; the
//! flight recorder and tracing hang off it.
//!
//! Events are small `Copy` values that borrow what they name (SQL text, a command tag), so
//! recording one costs no allocation; sinks get them by reference. A sink that wants to
//! keep borrowed data copies it. Events are only handed on when a sink wants their kind
//! ([`Interest`]): an engine without a sink pays nothing, and a sink pays only for what it
//! keeps.
//!
//! Connections are named by their engine-wide numbers: a client by the pid its
//! BackendKeyData carries (it names the reactor and slot, so it is unique in the process
//! while the client lives), a server connection by its [`ServerId`] within the reactor that
//! records the event (sinks are per reactor).

use core::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::engine::id::ServerId;
use crate::protocol::SqlState;

/// What a client session is doing (its state's name, without the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    AwaitingStartup,
    AwaitingTls,
    Authenticating,
    /// The first login of a pool waits for a server connection to learn its parameters.
    AwaitingParameters,
    Idle,
    /// Waiting for a server connection.
    Acquiring,
    /// Holds a server connection.
    Active,
    Closed,
}

/// What a server connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    Connecting,
    LoggingIn,
    Idle,
    Lent,
    /// Cleaning up after a client that left mid-transaction, or answering a health check.
    Draining,
    /// Free, but a cancel for it is still being delivered.
    Parked,
    /// Moved to another reactor (which records it again as idle).
    HandedOff,
    Closed,
}

/// Who raised an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorOrigin {
    /// A server's ErrorResponse, passed to the client.
    Server,
    /// pglink's own answer to a client (a refused login, a pool timeout, ...).
    Proxy,
    /// The client or a server broke the protocol (a malformed or unexpected message): the
    /// connection is closed.
    Protocol,
}

/// How a statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementEnd {
    /// CommandComplete (the event carries its tag), EmptyQueryResponse, or a portal
    /// suspended at its row limit.
    Completed,
    /// The server answered with an ErrorResponse (the event carries its SQLSTATE).
    Failed,
    /// Never ran: an earlier error in its batch made the server skip it.
    Skipped,
}

/// Where a pool's server connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAddress<'a> {
    /// A host name, an IP address, or a unix socket's directory.
    pub host: &'a str,
    pub port: u16,
    /// The database on the server.
    pub database: &'a str,
}

/// One thing that happened. `'a` borrows from the engine's buffers for the duration of the
/// [`EventSink::record`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A client session changed state. `pid` is the proxy-issued BackendKeyData pid the
    /// client was given (it names the reactor and slot).
    Client { pid: u32, state: ClientState },
    /// A server connection of pool `pool` changed state.
    Server {
        server: ServerId,
        pool: u32,
        state: ServerState,
    },
    /// A client logged in to pool `pool`. `peer`: its address (`None` over a unix socket);
    /// `traceparent`: the W3C trace context it passed as a startup parameter, if valid;
    /// `server`: the pool's PostgreSQL server (host or socket directory, port, database).
    LoggedIn {
        pid: u32,
        pool: u32,
        database: &'a str,
        user: &'a str,
        peer: Option<SocketAddr>,
        traceparent: Option<crate::observe::trace::TraceParent>,
        server: ServerAddress<'a>,
    },
    /// A client got server connection `server` after waiting `waited` for it (zero when one
    /// was idle). Its transaction starts here.
    Acquired {
        pid: u32,
        server: ServerId,
        pool: u32,
        waited: Duration,
    },
    /// A client message of type `tag` and `len` bytes (its whole frame) went to the server
    /// or was answered by pglink.
    ClientMessage { pid: u32, tag: u8, len: u32 },
    /// A client statement (a simple Query or an extended-protocol Execute) went to the
    /// server. `text`: its SQL when known (the Query, or the statement the portal was bound
    /// from; empty otherwise). Only built when a sink asks for it
    /// ([`Interest::STATEMENT_STARTED`]).
    StatementStarted {
        pid: u32,
        server: ServerId,
        text: &'a [u8],
        extended: bool,
    },
    /// A client statement's answer ended. Statements end in the order they started, one
    /// `StatementEnded` for each; `started` is when the server began on it (when it was
    /// sent, or when the statement before it in the same pipeline ended, whichever is later).
    /// `tag`: the CommandComplete tag ("SELECT 1", "INSERT 0 5"), empty otherwise.
    StatementEnded {
        pid: u32,
        server: ServerId,
        pool: u32,
        started: Instant,
        end: StatementEnd,
        tag: &'a [u8],
        sqlstate: Option<SqlState>,
    },
    /// A client's transaction ended and `server` went back to the pool (or stays held, for
    /// a pinned session). `started`: when the client's first message of it arrived.
    TransactionEnded {
        pid: u32,
        server: ServerId,
        pool: u32,
        started: Instant,
    },
    /// An error on a client connection (`pid`) or a server connection (`server`).
    Error {
        pid: Option<u32>,
        server: Option<ServerId>,
        origin: ErrorOrigin,
        sqlstate: SqlState,
    },
}

impl Event<'_> {
    /// Its kind, as an [`Interest`] bit.
    #[inline]
    pub fn kind(&self) -> Interest {
        match self {
            Event::Client {
                state: ClientState::Closed,
                ..
            } => Interest::CLIENT_CLOSED,
            Event::Client { .. } => Interest::CLIENT,
            Event::Server { .. } => Interest::SERVER,
            Event::LoggedIn { .. } => Interest::LOGGED_IN,
            Event::Acquired { .. } => Interest::ACQUIRED,
            Event::ClientMessage { .. } => Interest::CLIENT_MESSAGE,
            Event::StatementStarted { .. } => Interest::STATEMENT_STARTED,
            Event::StatementEnded { .. } => Interest::STATEMENT_ENDED,
            Event::TransactionEnded { .. } => Interest::TRANSACTION_ENDED,
            Event::Error { .. } => Interest::ERROR,
        }
    }
}

/// A pool's number in events (`u32::MAX` for an id beyond it, which no configuration has).
pub fn pool_number(pool: usize) -> u32 {
    u32::try_from(pool).unwrap_or(u32::MAX)
}

/// Which kinds of [`Event`] a sink wants: one bit per kind (a client session's end apart
/// from its other state changes). The engine asks once, when the sink is installed, and
/// hands a sink only what it wants; events nobody wants are not built at all when building
/// them costs something (a statement's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest(u16);

impl Interest {
    pub const NONE: Interest = Interest(0);
    /// [`Event::Client`]: a client session's changes of state, other than its end.
    pub const CLIENT: Interest = Interest(1);
    /// [`Event::Client`] with [`ClientState::Closed`].
    pub const CLIENT_CLOSED: Interest = Interest(1 << 1);
    pub const SERVER: Interest = Interest(1 << 2);
    pub const LOGGED_IN: Interest = Interest(1 << 3);
    pub const ACQUIRED: Interest = Interest(1 << 4);
    pub const CLIENT_MESSAGE: Interest = Interest(1 << 5);
    pub const STATEMENT_STARTED: Interest = Interest(1 << 6);
    pub const STATEMENT_ENDED: Interest = Interest(1 << 7);
    pub const TRANSACTION_ENDED: Interest = Interest(1 << 8);
    pub const ERROR: Interest = Interest(1 << 9);
    pub const ALL: Interest = Interest((1 << 10) - 1);
    /// Everything but [`Event::StatementStarted`] (finding a statement's text costs).
    pub const DEFAULT: Interest = Interest(Interest::ALL.0 & !Interest::STATEMENT_STARTED.0);

    /// These kinds and `other`'s.
    pub const fn and(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    /// Whether any kind of `other` is wanted.
    #[inline]
    pub const fn wants(self, other: Interest) -> bool {
        self.0 & other.0 != 0
    }
}

/// Where events go.
pub trait EventSink {
    fn record(&mut self, at: Instant, event: &Event<'_>);

    /// The kinds of event this sink wants (asked once, when it is installed; the others
    /// may still arrive, and are to be ignored).
    fn interest(&self) -> Interest {
        Interest::DEFAULT
    }

    /// The engine's driver is about to wait for I/O: a sink that buffers events hands them
    /// on now (so that nothing waits in a buffer while the reactor sleeps).
    fn flush(&mut self) {}
}

/// The default sink: drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    #[inline]
    fn record(&mut self, _: Instant, _: &Event<'_>) {}

    fn interest(&self) -> Interest {
        Interest::NONE
    }
}

/// An event with everything it borrows copied, for sinks and tests that keep them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEvent {
    Client {
        pid: u32,
        state: ClientState,
    },
    Server {
        server: ServerId,
        pool: u32,
        state: ServerState,
    },
    LoggedIn {
        pid: u32,
        pool: u32,
        database: String,
        user: String,
        peer: Option<SocketAddr>,
        traceparent: Option<crate::observe::trace::TraceParent>,
        /// Host, port and database of the server.
        server: (String, u16, String),
    },
    Acquired {
        pid: u32,
        server: ServerId,
        pool: u32,
        waited: Duration,
    },
    ClientMessage {
        pid: u32,
        tag: u8,
        len: u32,
    },
    StatementStarted {
        pid: u32,
        server: ServerId,
        text: Vec<u8>,
        extended: bool,
    },
    StatementEnded {
        pid: u32,
        server: ServerId,
        pool: u32,
        started: Instant,
        end: StatementEnd,
        tag: Vec<u8>,
        sqlstate: Option<SqlState>,
    },
    TransactionEnded {
        pid: u32,
        server: ServerId,
        pool: u32,
        started: Instant,
    },
    Error {
        pid: Option<u32>,
        server: Option<ServerId>,
        origin: ErrorOrigin,
        sqlstate: SqlState,
    },
}

impl From<&Event<'_>> for OwnedEvent {
    fn from(event: &Event<'_>) -> OwnedEvent {
        match *event {
            Event::Client { pid, state } => OwnedEvent::Client { pid, state },
            Event::Server {
                server,
                pool,
                state,
            } => OwnedEvent::Server {
                server,
                pool,
                state,
            },
            Event::LoggedIn {
                pid,
                pool,
                database,
                user,
                peer,
                traceparent,
                server,
            } => OwnedEvent::LoggedIn {
                pid,
                pool,
                database: database.to_owned(),
                user: user.to_owned(),
                peer,
                traceparent,
                server: (
                    server.host.to_owned(),
                    server.port,
                    server.database.to_owned(),
                ),
            },
            Event::Acquired {
                pid,
                server,
                pool,
                waited,
            } => OwnedEvent::Acquired {
                pid,
                server,
                pool,
                waited,
            },
            Event::ClientMessage { pid, tag, len } => OwnedEvent::ClientMessage { pid, tag, len },
            Event::StatementStarted {
                pid,
                server,
                text,
                extended,
            } => OwnedEvent::StatementStarted {
                pid,
                server,
                text: text.to_vec(),
                extended,
            },
            Event::StatementEnded {
                pid,
                server,
                pool,
                started,
                end,
                tag,
                sqlstate,
            } => OwnedEvent::StatementEnded {
                pid,
                server,
                pool,
                started,
                end,
                tag: tag.to_vec(),
                sqlstate,
            },
            Event::TransactionEnded {
                pid,
                server,
                pool,
                started,
            } => OwnedEvent::TransactionEnded {
                pid,
                server,
                pool,
                started,
            },
            Event::Error {
                pid,
                server,
                origin,
                sqlstate,
            } => OwnedEvent::Error {
                pid,
                server,
                origin,
                sqlstate,
            },
        }
    }
}

/// Keeps every event (tests, and anything that wants the whole history).
#[derive(Debug, Default)]
pub struct Recorded(pub Vec<(Instant, OwnedEvent)>);

impl EventSink for Recorded {
    fn record(&mut self, at: Instant, event: &Event<'_>) {
        self.0.push((at, event.into()));
    }

    fn interest(&self) -> Interest {
        Interest::ALL
    }
}
