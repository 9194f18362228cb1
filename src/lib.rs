//! pglink: a PostgreSQL wire-protocol proxy with transaction pooling.
//!
//! ```text
//!             clients (libpq, JDBC, asyncpg, pgx, ...)
//!                  │  TCP / TLS
//!    ┌─────────────▼───────────────────────────────────┐
//!    │ reactor 0 … reactor N-1 (one thread each)       │  mio, sockets, TLS records,
//!    │   driver: events → engine calls, I/O commands   │  input buffers, the waker
//!    │   → syscalls                                    │
//!    │ ┌─────────────────────────────────────────────┐ │
//!    │ │ engine (sans-IO): client and server          │ │  sessions, pool shard, timers,
//!    │ │ connection records, pool policy, deadlines   │ │  output buffers
//!    │ └─────────────────────────────────────────────┘ │
//!    └─────────────┬───────────────┬───────────────────┘
//!                  │ TCP / TLS     │ channels + mio::Waker (engine messages, hand-offs)
//!           PostgreSQL          helper threads: secrets refresh, DNS, cancel delivery,
//!                               metrics/admin HTTP (reads the engines' atomics)
//! ```
//!
//! Everything that decides is *sans-IO*: it takes bytes, events and `Instant`s and hands back
//! bytes, I/O commands and the next deadline, never touching a socket, a thread or the clock,
//! so unit tests, deterministic scenarios on a virtual clock and `cargo fuzz` drive the real
//! logic.
//!
//! # Embedding
//!
//! The public API is [`Config`] (from a path, JSON text or a JSON value) and
//! [`Server::start`], which returns a [`ServerHandle`]: see [`server`]. The building blocks
//! [`protocol`] (the wire protocol's messages) and [`auth`] (SCRAM and md5, both sides) are
//! public too, as is the configuration model in [`config`]. The modules listed below them are
//! `#[doc(hidden)]`: public only for pglink's own binary and integration tests, not an API.
//!
//! # Modules
//!
//! - [`protocol`]: framing and borrowed message views/builders for protocol 3.0 and 3.2, the
//!   SQLSTATE table.
//! - [`auth`]: SCRAM-SHA-256(-PLUS) server and client, md5, channel binding.
//! - `client`: one client connection's session — startup, authentication, and the relay
//!   that forwards a transaction and decides when its server connection can be released —
//!   and the drain that cleans a server connection up after a client that left.
//! - `backend`: where servers are, how pglink logs in to them, how a cancel reaches them.
//! - `engine`: one per reactor — client and server connection records behind
//!   generation-carrying ids, the server-connection lifecycle, pool policy (acquire, hand-off
//!   between reactors, making room, minimum idle, expiry, health checks), every deadline, and
//!   which connection a cancel may reach; with the deterministic test harness and the
//!   `engine` fuzz target.
//! - `pool`: pool state shared between engines (capacity, idle and waiter counts).
//! - `reactor`: the mio event loops that drive the engines: sockets, TLS records, buffers.
//! - [`server`]: starting and stopping the whole thing — the embedding API — and its helper
//!   threads (name resolution, SCRAM verifiers).
//! - [`config`]: the `pglink.json` model, defaults, validation and secret resolution.
//! - `tls`: rustls configuration for both sides.
//! - `observe`: logging, state-change events, hot-path counters, the flight recorder
//!   (per-reactor rings of events, Chrome trace snapshots on its own thread; every build)
//!   and, with the `metrics` feature, their Prometheus exposition and the admin endpoint.
//!
//! The `pglink` command line (flags, signals, logger) is the binary's own (`src/cli.rs`).
//!
//! # The session contract
//!
//! A client holds a backend from the first message that needs one until the ReadyForQuery
//! with status idle that answers the last Query/Sync it sent (the relay's queue of expected
//! responses knows which one that is, even in pipelines and after errors). Everything pglink
//! says itself is an ErrorResponse (`client::SessionError`) whose message starts with
//! `pglink:` and whose SQLSTATE is the one PostgreSQL would use; the one exception is an error
//! PostgreSQL itself would raise, which pglink raises in its place word for word (a changed
//! result type: drivers recognise it by its text). A client never sees another client's results, and a cancel
//! never reaches a backend lent to someone else.
#![forbid(unsafe_code)]

pub mod auth;
#[doc(hidden)]
pub mod backend;
pub(crate) mod client;
pub mod config;
pub(crate) mod engine;
#[doc(hidden)]
pub mod observe;
pub(crate) mod pool;
pub mod protocol;
pub(crate) mod reactor;
pub mod server;
#[doc(hidden)]
pub mod tls;

pub use config::{Config, ConfigError};
pub use server::{ReloadError, ReloadOutcome, Server, ServerHandle, StartError, Stopper};

/// The entry points of the cargo-fuzz targets (`fuzz/`): built only with `--cfg fuzzing`,
/// which `cargo fuzz` sets, and never into a release build.
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::auth::fuzzing::{scram_client_exchange, scram_server_exchange};
    pub use crate::backend::fuzzing::fuzz_login as backend_login;
    pub use crate::client::fuzzing::fuzz_session as client_session;
    pub use crate::config::fuzzing::fuzz_config as config;
    /// The `engine` target: its virtual clock starts now.
    pub fn engine(data: &[u8]) {
        crate::engine::fuzzing::fuzz_engine(data, std::time::Instant::now());
    }
    pub use crate::protocol::fuzzing::{
        fuzz_backend_roundtrip, fuzz_framing, fuzz_frontend_roundtrip, fuzz_startup_packet,
    };
}

/// A fixed starting point in time for tests, deterministic scenarios and fuzzing of the
/// sans-IO modules, which take `now` from their caller and may not read the clock themselves.
#[cfg(any(test, fuzzing))]
pub(crate) mod test_clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    /// The same instant for the whole process (the clock is read once, on the first call).
    pub fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }
}
