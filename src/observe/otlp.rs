//! OTLP span export: finished spans go from the reactor threads into a bounded queue, and one
//! exporter thread sends them in batches to an OpenTelemetry collector over gRPC or
//! HTTP/protobuf, in plain text or over TLS.
//!
//! The engine turns its events into [`Span`]s; this module owns the way out:
//!
//! ```ignore
//! let (exporter, thread) = Exporter::start(ExporterConfig::from_config(&otel_config))?;
//! let mut batch = exporter.batch();      // one per thread
//! batch.push(&span);                     // encodes; never blocks
//! batch.hand_over();                     // e.g. before the thread sleeps
//! thread.shutdown(Duration::from_secs(2)); // flushes what is queued, bounded by the deadline
//! ```
//!
//! Why it is built this way:
//! - **A span is encoded where it ends, once.** [`Span`] borrows what it names, and
//!   [`SpanBatch::push`] writes it as OTLP protobuf (`encode.rs`) into the thread's batch of
//!   bytes; a session's shared attributes are encoded once per session
//!   ([`SharedAttributes`]). The export thread frames the bytes it takes as an
//!   `ExportTraceServiceRequest` and sends them. So a traced transaction costs the reactor no
//!   allocation and the export thread no per-span work. (An owned span record, built on the
//!   reactor and encoded on the export thread, cost about nine allocations per traced
//!   transaction, freed on another thread, and twice the copying.) Going through the
//!   OpenTelemetry SDK (`SpanData`, then `opentelemetry-proto`'s conversion, grouping and
//!   prost encoding) cost the export thread about 18 % of the proxy's CPU at 15k
//!   transactions/s; and it brought in the `opentelemetry`, `opentelemetry_sdk` and
//!   `opentelemetry-otlp` crates.
//! - **Handing over never blocks.** The queue is a bounded byte vector behind a lock, which a
//!   batch's hand-over holds for one copy; when it is full (a slow or dead collector), the
//!   batch's spans are dropped and counted in [`ExportStats::dropped`]. Memory is bounded by
//!   `queue_capacity` spans and `queue_bytes` in the queue (with a 16-byte mark where each
//!   hand-over ends, at most `queue_capacity` of them: 256 KiB by default), plus one request
//!   being sent, fewer than a request's worth held back for the next one, and a batch per
//!   thread.
//! - **Requests are full.** A queue holding `max_batch` spans (or `max_request_bytes`) wakes
//!   the thread, which sends whole requests of `max_batch` spans and at most
//!   `max_request_bytes`, and holds the rest for the next wake-up, so that under load every
//!   request is full (sending the remainder at once made nearly two requests of every 512
//!   spans, for the collector as for this thread); the batch delay sends everything.
//! - **One current-thread tokio runtime** on the exporter thread drives both transports
//!   (`transport.rs`): tonic's channel for gRPC, hyper's pooled HTTP/1.1 client (keep-alive)
//!   for HTTP. Everything the thread waits on is a future, so a hung export is abandoned at
//!   its timeout or at the shutdown deadline, whichever comes first.
//! - **Lost spans are counted, never retried.** A batch that fails or times out is counted in
//!   [`ExportStats::failed`]. After `shutdown`, `exported + dropped + failed` is every span
//!   handed over.
//!
//! - **TLS** for an `https://` endpoint, over HTTP/1.1 or gRPC (HTTP/2, ALPN `h2`): rustls
//!   with ring, the collector's certificate checked against the system's trust store (what
//!   `sslrootcert=system` reads) or `OTEL_EXPORTER_OTLP_CERTIFICATE`, and its name against
//!   the endpoint's host; a client certificate when one is configured.
//!
//! Environment: `OTEL_EXPORTER_OTLP_ENDPOINT` (when the config sets no endpoint),
//! `OTEL_RESOURCE_ATTRIBUTES` (extra resource attributes; `service.name` comes from the
//! config), and `OTEL_EXPORTER_OTLP_HEADERS`, `…_CERTIFICATE`, `…_CLIENT_CERTIFICATE` and
//! `…_CLIENT_KEY`, each also as its `OTEL_EXPORTER_OTLP_TRACES_…` variant, which wins, are
//! honoured. A header list or certificate file that cannot be used stops the start (and
//! `-check`): nothing is sent without what was asked for. The SDK's other variables
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_COMPRESSION`, `OTEL_SERVICE_NAME`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, …) are not read.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{OpenTelemetryConfig, OtlpProtocol};

mod encode;
mod span;
mod transport;
mod worker;

use encode::RequestEncoder;
pub use span::{SharedAttributes, Span, SpanEvent, SpanKind, SpanStatus, Value};
use transport::Transport;
use worker::{SpanQueue, Worker};

/// The environment variable consulted when `opentelemetry.otlp_endpoint` is not set.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The environment variable of extra resource attributes (`key=value,key=value`,
/// percent-encoded), read once when the exporter starts.
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Headers sent with every export request: `key=value,key=value`, values percent-encoded.
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// A PEM file of the certificates that may sign an `https://` collector's.
pub const OTEL_EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
/// PEM files of the certificate chain and key pglink shows a collector that asks for one.
pub const OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
pub const OTEL_EXPORTER_OTLP_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
/// The OTLP default collector endpoint for gRPC.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// The OTLP default collector endpoint for HTTP (the traces path is appended).
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// The path of the traces resource of an OTLP/HTTP collector.
pub const HTTP_TRACES_PATH: &str = "/v1/traces";

/// What the exporter thread needs; [`ExporterConfig::from_config`] fills it from the config
/// file and the environment. Its `Debug` leaves the headers' text out (often a credential).
#[derive(Clone, PartialEq)]
pub struct ExporterConfig {
    /// `otlp_endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`; `None`: the OTLP default.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    /// Spans waiting to be sent; beyond it, a hand-over drops its spans.
    pub queue_capacity: usize,
    /// Bytes of encoded spans waiting to be sent; beyond it, a hand-over drops its spans.
    pub queue_bytes: usize,
    /// The most spans in one export request.
    pub max_batch: usize,
    /// The most bytes of spans in one export request (a span longer than this goes alone).
    pub max_request_bytes: usize,
    /// How long the first span of a batch waits for more before the batch is sent.
    pub batch_delay: Duration,
    /// The most one export request may take, retries included.
    pub export_timeout: Duration,
    /// Headers for every request, as `OTEL_EXPORTER_OTLP_HEADERS` writes them (checked when
    /// the exporter starts).
    pub headers: Option<String>,
    /// TLS to an `https://` endpoint.
    pub tls: CollectorTls,
}

impl fmt::Debug for ExporterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("service_name", &self.service_name)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("max_batch", &self.max_batch)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("batch_delay", &self.batch_delay)
            .field("export_timeout", &self.export_timeout)
            .field("headers", &self.headers.as_ref().map(|_| "<not shown>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// How pglink checks an `https://` collector, and what it shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectorTls {
    /// A PEM file of the certificates that may sign the collector's; `None`: the system's
    /// trust store.
    pub certificate: Option<PathBuf>,
    /// pglink's certificate chain and key (PEM files), for a collector that asks for one.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl ExporterConfig {
    pub const DEFAULT_QUEUE_CAPACITY: usize = 16384;
    /// 16384 spans of 1 KiB, where a span is about 300 to 400 bytes without its query text.
    pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
    /// Four times the OpenTelemetry SDK's 512: at tens of thousands of spans a second, half
    /// of the export thread's CPU went to the requests themselves (a write, a wait for the
    /// answer, two context switches), not to their bytes.
    pub const DEFAULT_MAX_BATCH: usize = 2048;
    /// Under the 4 MiB message a gRPC server takes by default (the OpenTelemetry
    /// Collector's OTLP receiver, tonic), with room for long query texts' spans to arrive
    /// whole: 2048 spans of a typical size are about 700 KiB.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 2 << 20;
    pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_secs(1);
    pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The exporter settings of `opentelemetry`, with the `OTEL_EXPORTER_OTLP_*` variables
    /// of the environment (see the module's documentation).
    pub fn from_config(config: &OpenTelemetryConfig) -> Self {
        Self::from_config_with(config, |name| std::env::var(name).ok())
    }

    /// [`Self::from_config`] with `OTEL_EXPORTER_OTLP_ENDPOINT`'s value given, and no other
    /// variable.
    pub fn from_config_and_env(config: &OpenTelemetryConfig, env_endpoint: Option<String>) -> Self {
        Self::from_config_with(config, |name| {
            (name == OTEL_EXPORTER_OTLP_ENDPOINT)
                .then(|| env_endpoint.clone())
                .flatten()
        })
    }

    /// [`Self::from_config`] with the environment read through `env`.
    pub fn from_config_with(
        config: &OpenTelemetryConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let non_empty = |s: &String| !s.trim().is_empty();
        let env_endpoint = env(OTEL_EXPORTER_OTLP_ENDPOINT);
        // The traces variant of a variable wins over the general one (the OTLP exporter
        // specification), and an empty value counts as unset.
        let var = |name: &str| {
            let traces = name.replacen("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", 1);
            env(&traces)
                .filter(non_empty)
                .or_else(|| env(name).filter(non_empty))
        };
        ExporterConfig {
            endpoint: config
                .otlp_endpoint
                .clone()
                .filter(non_empty)
                .or(env_endpoint.filter(non_empty)),
            protocol: config.otlp_protocol,
            service_name: config.service_name.clone(),
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            queue_bytes: Self::DEFAULT_QUEUE_BYTES,
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            batch_delay: Self::DEFAULT_BATCH_DELAY,
            export_timeout: Self::DEFAULT_EXPORT_TIMEOUT,
            headers: var(OTEL_EXPORTER_OTLP_HEADERS),
            tls: CollectorTls {
                certificate: var(OTEL_EXPORTER_OTLP_CERTIFICATE).map(PathBuf::from),
                client_certificate: var(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE).map(PathBuf::from),
                client_key: var(OTEL_EXPORTER_OTLP_CLIENT_KEY).map(PathBuf::from),
            },
        }
    }

    /// What the exporter's start would refuse, found without starting it: the endpoint, the
    /// headers, and for an `https://` endpoint the TLS files (read now). The endpoint comes
    /// back.
    pub fn check(&self) -> Result<String, ExportError> {
        self.prepare().map(|p| p.endpoint)
    }

    /// The checked endpoint, headers and TLS configuration the transport is built from.
    fn prepare(&self) -> Result<transport::Prepared, ExportError> {
        let endpoint = self.resolved_endpoint()?;
        let headers = transport::Headers::parse(self.headers.as_deref())?;
        let tls = if is_https(&endpoint) {
            Some(transport::tls_config(&self.tls)?)
        } else {
            None
        };
        Ok(transport::Prepared {
            endpoint,
            headers,
            tls,
        })
    }

    /// The URL the exporter sends to: see [`resolve_endpoint`].
    pub fn resolved_endpoint(&self) -> Result<String, ExportError> {
        resolve_endpoint(self.endpoint.as_deref(), self.protocol)
    }
}

/// Whether a resolved endpoint is sent over TLS.
fn is_https(endpoint: &str) -> bool {
    endpoint.starts_with("https://")
}

/// The collector URL for `endpoint` (`None`: the OTLP default of `protocol`).
///
/// `http://` and `https://` URLs are accepted (the scheme comes out in lower case). For HTTP,
/// the endpoint is a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` means, and `/v1/traces` is
/// appended to its path, unless the path already ends in `/v1/traces`. For gRPC the URL is
/// used as given.
pub fn resolve_endpoint(
    endpoint: Option<&str>,
    protocol: OtlpProtocol,
) -> Result<String, ExportError> {
    let given = match (endpoint, protocol) {
        (Some(e), _) => e.trim(),
        (None, OtlpProtocol::Grpc) => DEFAULT_GRPC_ENDPOINT,
        (None, OtlpProtocol::Http) => DEFAULT_HTTP_ENDPOINT,
    };
    let invalid = |reason: String| ExportError::InvalidEndpoint {
        endpoint: given.to_owned(),
        reason,
    };
    let uri: http::Uri = given
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        Some(s) => {
            return Err(invalid(format!(
                "unsupported scheme `{s}`, expected http:// or https://"
            )));
        }
        None => return Err(invalid("no scheme: expected http://host:port".into())),
    };
    let Some(authority) = uri.authority() else {
        return Err(invalid("no host".into()));
    };
    if authority.host().is_empty() {
        return Err(invalid("no host".into()));
    }
    // `http` accepts any digits as a port; only 0 to 65535 can be one.
    let text = authority.as_str();
    let after_host = text
        .rfind(']')
        .and_then(|i| text.get(i + 1..))
        .unwrap_or(text);
    if after_host.contains(':') && authority.port_u16().is_none() {
        return Err(invalid("the port is not a number from 0 to 65535".into()));
    }
    let rest = given
        .get(given.find("://").map_or(0, |i| i + 3)..)
        .unwrap_or_default();
    match protocol {
        OtlpProtocol::Grpc => Ok(format!("{scheme}://{rest}")),
        OtlpProtocol::Http => {
            let path = uri.path().trim_end_matches('/');
            let query = uri.query().map_or(String::new(), |q| format!("?{q}"));
            let path = if path.ends_with(HTTP_TRACES_PATH) {
                path.to_owned()
            } else {
                format!("{path}{HTTP_TRACES_PATH}")
            };
            Ok(format!("{scheme}://{authority}{path}{query}"))
        }
    }
}

/// Why the exporter could not start.
#[derive(Debug)]
pub enum ExportError {
    /// The endpoint is not a usable `http://` or `https://` URL.
    InvalidEndpoint { endpoint: String, reason: String },
    /// `OTEL_EXPORTER_OTLP_HEADERS` is not a list of valid headers.
    InvalidHeaders(String),
    /// The TLS settings of an `https://` endpoint cannot be used.
    Tls(String),
    /// The transport refused its configuration.
    Build(String),
    /// The exporter thread or its runtime could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::InvalidEndpoint { endpoint, reason } => {
                write!(f, "invalid OTLP endpoint `{endpoint}`: {reason}")
            }
            ExportError::InvalidHeaders(e) => {
                write!(f, "invalid {OTEL_EXPORTER_OTLP_HEADERS}: {e}")
            }
            ExportError::Tls(e) => write!(f, "cannot set up TLS to the OTLP collector: {e}"),
            ExportError::Build(e) => write!(f, "cannot build the OTLP exporter: {e}"),
            ExportError::Thread(e) => write!(f, "cannot start the OTLP exporter thread: {e}"),
        }
    }
}

impl std::error::Error for ExportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExportError::Thread(e) => Some(e),
            _ => None,
        }
    }
}

/// Counters of the export path, readable from any thread.
#[derive(Debug, Default)]
pub struct ExportStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl ExportStats {
    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
    /// Spans dropped at hand-over: the queue was full, or the exporter had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Spans lost in export: the request failed or timed out, or the shutdown deadline came
    /// before they were sent.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The sending side: cheap to clone, one per reactor thread.
#[derive(Clone, Debug)]
pub struct Exporter {
    queue: Arc<SpanQueue>,
    stats: Arc<ExportStats>,
}

/// One thread's finished spans, encoded, not yet handed over to the export thread.
///
/// Encoding a span allocates nothing once the batch has grown; handing over copies the
/// bytes into the export queue under one lock, never blocks, and drops the batch's spans
/// (counted) when the queue is full or the exporter has stopped.
#[derive(Debug)]
pub struct SpanBatch {
    exporter: Exporter,
    bytes: Vec<u8>,
    spans: usize,
}

impl SpanBatch {
    /// Spans a batch holds before it hands them over by itself.
    pub const HAND_OVER_SPANS: usize = 64;
    /// Bytes a batch holds before it hands them over by itself.
    pub const HAND_OVER_BYTES: usize = 32 << 10;

    /// Encodes `span` into the batch.
    pub fn push(&mut self, span: &Span<'_>) {
        encode::put_span_field(&mut self.bytes, span);
        self.spans += 1;
        if self.spans >= Self::HAND_OVER_SPANS || self.bytes.len() >= Self::HAND_OVER_BYTES {
            self.hand_over();
        }
    }

    /// Spans not handed over yet.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Gives the spans to the export thread (or drops them, counted, when its queue is full).
    pub fn hand_over(&mut self) {
        if self.spans == 0 {
            return;
        }
        let Exporter { queue, stats } = &self.exporter;
        if !queue.push(&self.bytes, self.spans) {
            ExportStats::add(&stats.dropped, self.spans);
        }
        self.spans = 0;
        self.bytes.clear();
        // A batch that grew for one long query text does not keep that memory.
        if self.bytes.capacity() > 4 * Self::HAND_OVER_BYTES {
            self.bytes = Vec::new();
        }
    }
}

impl Drop for SpanBatch {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// The exporter thread; [`ExporterThread::shutdown`] flushes and stops it. Dropped without
/// `shutdown`, the thread stops at once, counting what is still queued as failed.
#[derive(Debug)]
pub struct ExporterThread {
    shutdown: oneshot::Sender<Instant>,
    done: std_mpsc::Receiver<()>,
    handle: JoinHandle<()>,
    stats: Arc<ExportStats>,
}

impl Exporter {
    /// Checks the endpoint, the headers and the TLS files, reads `OTEL_RESOURCE_ATTRIBUTES`,
    /// and starts the exporter thread.
    pub fn start(config: ExporterConfig) -> Result<(Exporter, ExporterThread), ExportError> {
        let prepared = config.prepare()?;
        let queue = Arc::new(SpanQueue::new(
            config.queue_capacity,
            config.queue_bytes,
            config.max_batch,
            config.max_request_bytes,
        ));
        let spans = Arc::clone(&queue);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (done_tx, done) = std_mpsc::channel();
        let stats = Arc::new(ExportStats::default());
        let worker_stats = Arc::clone(&stats);
        let env_attributes = std::env::var(OTEL_RESOURCE_ATTRIBUTES).ok();
        let encoder = RequestEncoder::new(&encode::resource_attributes(
            &config.service_name,
            env_attributes.as_deref(),
        ));
        let handle = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ExportError::Thread(e)));
                        return;
                    }
                };
                // tonic's lazy channel spawns its worker: build inside the runtime.
                let built = runtime.block_on(async {
                    Transport::new(config.protocol, prepared, config.export_timeout)
                });
                match built {
                    Ok(transport) => {
                        let _ = ready_tx.send(Ok(()));
                        let worker = Worker::new(
                            spans,
                            shutdown_rx,
                            transport,
                            encoder,
                            worker_stats,
                            config,
                        );
                        runtime.block_on(worker.run());
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                // Connection tasks and DNS lookups still pending are abandoned, not awaited.
                runtime.shutdown_background();
                let _ = done_tx.send(());
            })
            .map_err(ExportError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(ExportError::Build(
                    "the exporter thread ended while starting".into(),
                ));
            }
        }
        Ok((
            Exporter {
                queue,
                stats: Arc::clone(&stats),
            },
            ExporterThread {
                shutdown,
                done,
                handle,
                stats,
            },
        ))
    }

    /// Queues one span for export (see [`SpanBatch`], which spares the lock per span).
    pub fn submit(&self, span: &Span<'_>) {
        let mut batch = self.batch();
        batch.push(span);
    }

    /// A batch for one thread's spans, handed over to the export thread when full, on
    /// [`SpanBatch::hand_over`] and when dropped.
    pub fn batch(&self) -> SpanBatch {
        SpanBatch {
            exporter: self.clone(),
            bytes: Vec::new(),
            spans: 0,
        }
    }

    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }
}

impl ExporterThread {
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// Stops accepting spans, sends what is queued, and joins the thread, all within
    /// `deadline`: spans still unsent then are counted as failed. If the thread does not
    /// finish in time (it can only overrun by a moment), it is left to end on its own.
    pub fn shutdown(self, deadline: Duration) {
        let start = std::time::Instant::now();
        // The thread stops sending a little before the caller's deadline, so that it has
        // counted what it gave up on and ended by then.
        let margin = (deadline / 10).min(Duration::from_millis(50));
        let _ = self.shutdown.send(Instant::now() + (deadline - margin));
        let remaining = deadline.saturating_sub(start.elapsed());
        match self.done.recv_timeout(remaining) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.handle.join();
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                log::warn!("OTLP exporter did not stop within {deadline:?}; leaving it to finish");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otel(endpoint: Option<&str>, protocol: OtlpProtocol) -> OpenTelemetryConfig {
        let mut c: OpenTelemetryConfig = serde_json::from_str("{}").unwrap();
        c.otlp_endpoint = endpoint.map(str::to_owned);
        c.otlp_protocol = protocol;
        c
    }

    #[test]
    fn endpoint_comes_from_config_then_env_then_default() {
        let env = Some("http://env:4317".to_owned());
        let c = ExporterConfig::from_config_and_env(
            &otel(Some("http://conf:4317"), OtlpProtocol::Grpc),
            env.clone(),
        );
        assert_eq!(c.endpoint.as_deref(), Some("http://conf:4317"));
        let c = ExporterConfig::from_config_and_env(&otel(None, OtlpProtocol::Grpc), env.clone());
        assert_eq!(c.endpoint.as_deref(), Some("http://env:4317"));
        let c = ExporterConfig::from_config_and_env(&otel(Some(""), OtlpProtocol::Grpc), env);
        assert_eq!(c.endpoint.as_deref(), Some("http://env:4317"));
        let c =
            ExporterConfig::from_config_and_env(&otel(None, OtlpProtocol::Http), Some(" ".into()));
        assert_eq!(c.endpoint, None);
        assert_eq!(
            c.resolved_endpoint().unwrap(),
            "http://localhost:4318/v1/traces"
        );
        let c = ExporterConfig::from_config_and_env(&otel(None, OtlpProtocol::Grpc), None);
        assert_eq!(c.resolved_endpoint().unwrap(), "http://localhost:4317");
        assert_eq!(c.service_name, "pglink");
        assert_eq!(c.queue_capacity, 16384);
        assert_eq!(c.max_batch, 2048);
        assert_eq!(c.max_request_bytes, 2 << 20);
    }

    #[test]
    fn http_endpoint_gets_the_traces_path_once() {
        let http = |e| resolve_endpoint(Some(e), OtlpProtocol::Http).unwrap();
        assert_eq!(
            http("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(http("http://c:4318/otlp"), "http://c:4318/otlp/v1/traces");
        assert_eq!(http("http://c:4318/otlp/"), "http://c:4318/otlp/v1/traces");
        assert_eq!(http("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(
            http("http://c:4318/x/v1/traces/"),
            "http://c:4318/x/v1/traces"
        );
        assert_eq!(http("http://c:4318/p?k=v"), "http://c:4318/p/v1/traces?k=v");
        assert_eq!(http("HTTP://c:4318"), "http://c:4318/v1/traces");
        // A path that merely starts like it is a base path.
        assert_eq!(http("http://c/v1/tracesx"), "http://c/v1/tracesx/v1/traces");
    }

    #[test]
    fn grpc_endpoint_is_used_as_given() {
        let grpc = |e| resolve_endpoint(Some(e), OtlpProtocol::Grpc).unwrap();
        assert_eq!(grpc("http://collector:4317"), "http://collector:4317");
        assert_eq!(grpc("http://127.0.0.1:4317/"), "http://127.0.0.1:4317/");
        assert_eq!(grpc("http://[::1]:4317"), "http://[::1]:4317");
    }

    #[test]
    fn https_endpoints_keep_their_scheme_and_invalid_ones_are_errors() {
        let https = |e, p| resolve_endpoint(Some(e), p).unwrap();
        assert_eq!(
            https("HTTPS://collector:4317", OtlpProtocol::Grpc),
            "https://collector:4317"
        );
        assert_eq!(
            https("https://c:4318/otlp", OtlpProtocol::Http),
            "https://c:4318/otlp/v1/traces"
        );
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::Http] {
            for bad in [
                "collector:4317",
                "ftp://c:1",
                "http://",
                "http://a b:1",
                "",
                "http://c:99999",
            ] {
                let err = resolve_endpoint(Some(bad), protocol).unwrap_err();
                assert!(
                    matches!(err, ExportError::InvalidEndpoint { .. }),
                    "{bad}: {err}"
                );
            }
        }
    }

    #[test]
    fn start_refuses_unusable_tls_files_and_headers_before_any_thread() {
        let c = |headers: Option<&str>, certificate: Option<&str>| {
            let mut c = ExporterConfig::from_config_and_env(
                &otel(Some("https://c:4318"), OtlpProtocol::Http),
                None,
            );
            c.headers = headers.map(str::to_owned);
            c.tls.certificate = certificate.map(PathBuf::from);
            c
        };
        assert!(matches!(
            Exporter::start(c(None, Some("/nonexistent.pem"))),
            Err(ExportError::Tls(_))
        ));
        assert!(matches!(
            c(Some("a"), Some("/nonexistent.pem")).check(),
            Err(ExportError::InvalidHeaders(_))
        ));
        let mut only_key = c(None, None);
        only_key.tls.client_key = Some("/k.pem".into());
        let err = only_key.check().unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
    }

    #[test]
    fn headers_and_tls_files_come_from_the_environment_the_traces_variables_first() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = ExporterConfig::from_config_with(
            &otel(None, OtlpProtocol::Grpc),
            vars(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", " "),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/k.pem"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://env:4317"),
            ]),
        );
        assert_eq!(c.headers.as_deref(), Some("b=2"));
        assert_eq!(
            c.tls,
            CollectorTls {
                certificate: Some("/ca.pem".into()),
                client_certificate: Some("/c.pem".into()),
                client_key: Some("/k.pem".into()),
            }
        );
        assert_eq!(c.resolved_endpoint().unwrap(), "https://env:4317");
        assert!(!format!("{c:?}").contains("b=2"), "headers are not shown");
        let none = ExporterConfig::from_config_with(&otel(None, OtlpProtocol::Grpc), |_| None);
        assert_eq!((none.headers, none.tls), (None, CollectorTls::default()));
    }
}
