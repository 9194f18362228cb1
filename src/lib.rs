//! pglink: a PostgreSQL wire-protocol proxy with transaction pooling.
//!
//! The crate is built in layers. The lower layers are *sans-IO*: they take bytes and `Instant`s
//! and hand back bytes and actions, never touching a socket, a thread or the clock, so unit tests
//! and `cargo fuzz` drive them directly.
//!
//! - [`protocol`]: framing and borrowed message views/builders for protocol 3.0 and 3.2.
//! - [`auth`]: SCRAM-SHA-256(-PLUS) server and client, md5, channel binding.
//! - [`config`]: the `pglink.json` model, its defaults, validation and secret resolution.
//! - [`observe`]: logging (and later metrics, tracing, the flight recorder).
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod cli;
pub mod client;
pub mod config;
pub mod observe;
pub mod pool;
pub mod protocol;
pub mod reactor;
pub mod server;
pub mod tls;
