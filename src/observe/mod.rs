//! Observability: logging now; metrics, tracing and the flight recorder hang off here.

pub mod log;
