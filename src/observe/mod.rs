//! Observability: logging and the hot-path metrics; with the `metrics` feature, their
//! Prometheus exposition and the admin HTTP endpoint. Tracing and the flight recorder will
//! hang off here too.

#[cfg(feature = "metrics")]
pub mod http;
pub mod events;
pub mod log;
pub mod metrics;
#[cfg(feature = "metrics")]
pub mod prometheus;
