//! State changes as compact events.
//!
//! Every state change of a client session and of a server connection goes through one
//! `set_state`, which hands an [`Event`] to the engine's [`EventSink`]. The sink does
//! nothing by default; the flight recorder and tracing hang off it. Events are small `Copy`
//! values, so recording one costs no allocation.

use std::time::Instant;

use crate::engine::id::ServerId;

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

/// One state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A client session changed state. `pid` is the proxy-issued BackendKeyData pid the
    /// client was given (it names the reactor and slot).
    Client { pid: u32, state: ClientState },
    /// A server connection of pool `pool` changed state.
    Server {
        server: ServerId,
        pool: u32,
        state: ServerState,
    },
}

/// Where events go.
pub trait EventSink {
    fn record(&mut self, at: Instant, event: Event);
}

/// The default sink: drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    #[inline]
    fn record(&mut self, _: Instant, _: Event) {}
}

/// Keeps every event (tests, and anything that wants the whole history).
#[derive(Debug, Default)]
pub struct Recorded(pub Vec<(Instant, Event)>);

impl EventSink for Recorded {
    fn record(&mut self, at: Instant, event: Event) {
        self.0.push((at, event));
    }
}
