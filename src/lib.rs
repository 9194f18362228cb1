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
//!   released — and the [`client::Drain`] that cleans a backend up after a client that left.
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
//! says itself is an ErrorResponse ([`client::SessionError`]) whose message starts with
//! `pglink:` and whose SQLSTATE is the one PostgreSQL would use; the one exception is an error
//! PostgreSQL itself would raise, which pglink raises in its place word for word (a changed
//! result type: drivers recognise it by its text). A client never sees another client's results, and a cancel
//! never reaches a backend lent to someone else.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod observe;
pub mod pool;
pub mod protocol;
pub mod reactor;
pub mod server;
pub mod tls;

/// A fixed starting point in time for tests, deterministic scenarios and fuzzing of the
/// sans-IO modules, which take `now` from their caller and may not read the clock themselves.
/// Not a stable API.
#[doc(hidden)]
pub mod test_clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    /// The same instant for the whole process (the clock is read once, on the first call).
    pub fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }
}
