//! Observability: logging and the hot-path metrics. Their exposition, tracing and the flight
//! recorder will hang off here too.

pub mod log;
pub mod metrics;
