//! Observability: logging and the hot-path metrics; with the `metrics` feature, their
//! Prometheus exposition and the admin HTTP endpoint. Tracing and the flight recorder will
//! hang off here too.

pub mod events;
#[cfg(feature = "metrics")]
pub mod http;
pub mod log;
pub mod metrics;
#[cfg(feature = "metrics")]
pub mod prometheus;
