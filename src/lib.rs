//! pglink: a PostgreSQL wire-protocol proxy with transaction pooling.
//!
//! ```text
//!             clients (libpq, JDBC, asyncpg, pgx, ...)
//!                  │  TCP / TLS
//!    ┌─────────────▼──────────────────────────────┐
//!    │ reactor 0 … reactor N-1   (mio::Poll each) │  one thread per reactor, no locks on
//!    │  slab<Client>  slab<Backend>  timers       │  the hot path
//!    │  pool shards + cross-reactor hand-off      │
//!    └─────────────┬───────────────┬──────────────┘
//!                  │ TCP / TLS     │ channels + mio::Waker
//!           PostgreSQL          helper threads: secrets refresh, DNS, cancel delivery,
//!                               metrics/admin HTTP (reads the reactors' atomics)
//! ```
//!
//! The lower layers are *sans-IO*: they take bytes and `Instant`s and hand back bytes and
//! actions, never touching a socket, a thread or the clock, so unit tests and `cargo fuzz`
//! drive the real state machines.
//!
//! - [`protocol`]: framing and borrowed message views/builders for protocol 3.0 and 3.2, the
//!   SQLSTATE table.
//! - [`auth`]: SCRAM-SHA-256(-PLUS) server and client, md5, channel binding.
//! - [`client`]: one client connection's session — startup, authentication, and the
//!   [`client::relay`] that forwards a transaction and decides when its backend can be
//!   released.
//! - [`backend`]: where servers are and how pglink logs in to them.
//! - [`pool`]: pool state shared between reactors (capacity, idle and waiter counts).
//! - [`reactor`]: the mio event loops doing all I/O, TLS records, timers and buffers.
//! - [`server`]: starting and stopping the whole thing — the embedding API.
//! - [`config`]: the `pglink.json` model, defaults, validation and secret resolution.
//! - [`tls`]: rustls configuration for both sides.
//! - [`observe`]: logging; hot-path counters (every build) and, with the `metrics` feature,
//!   their Prometheus exposition and the admin endpoint (`/healthz`, `/debug/pools`).
//! - [`cli`]: the `pglink` command line.
//!
//! # The session contract
//!
//! A client holds a backend from the first message that needs one until the ReadyForQuery
//! with status idle that answers the last Query/Sync it sent (the relay's queue of expected
//! responses knows which one that is, even in pipelines and after errors). Everything pglink
//! says itself is an ErrorResponse whose message starts with `pglink:` and whose SQLSTATE is
//! the one PostgreSQL would use. A client never sees another client's results, and a cancel
//! never reaches a backend lent to someone else.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod engine;
pub mod observe;
pub(crate) mod pool;
pub mod protocol;
pub(crate) mod reactor;
pub mod server;
pub mod tls;

/// The entry points of the cargo-fuzz targets (`fuzz/`): built only with `--cfg fuzzing`,
/// which `cargo fuzz` sets, and never into a release build.
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::auth::fuzzing::{scram_client_exchange, scram_server_exchange};
    pub use crate::client::fuzzing::fuzz_session as client_session;
    /// The `engine` target: its virtual clock starts now.
    pub fn engine(data: &[u8]) {
        crate::engine::fuzzing::fuzz_engine(data, std::time::Instant::now());
    }
    pub use crate::protocol::fuzzing::{
        fuzz_backend_roundtrip, fuzz_framing, fuzz_frontend_roundtrip, fuzz_startup_packet,
    };
}
