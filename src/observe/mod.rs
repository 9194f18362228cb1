//! Observability: logging, the hot-path metrics and the flight recorder; with the `metrics`
//! feature, their Prometheus exposition and the admin HTTP endpoint; with the `otel`
//! feature, the OTLP span exporter (`otlp`).

pub mod clock;
pub mod events;
pub mod flight;
#[cfg(feature = "metrics")]
pub(crate) mod http;
pub mod log;
pub(crate) mod metrics;
pub mod observers;
#[cfg(feature = "otel")]
pub mod otlp;
#[cfg(feature = "metrics")]
pub(crate) mod prometheus;
#[cfg(feature = "otel")]
pub mod spans;
pub mod trace;
