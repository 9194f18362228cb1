//! The per-reactor engine: pool policy, server-connection lifecycle and timers, sans-IO.

pub mod id;
