//! OTLP test collectors on 127.0.0.1: what pglink's span exporter sends, decoded and kept.
//!
//! ```ignore
//! let receiver = OtlpReceiver::start(Protocol::Grpc); // or Protocol::Http
//! // … point `opentelemetry.otlp_endpoint` at receiver.endpoint(), run some queries …
//! let spans = receiver.wait_for(3, Duration::from_secs(5));
//! assert_eq!(spans[0].service_name, "pglink");
//! ```
//!
//! - [`Protocol::Grpc`]: a tonic server implementing the collector's `TraceService`, on a
//!   current-thread tokio runtime in a background thread.
//! - [`Protocol::Http`]: a plain HTTP/1.1 server (std `TcpListener`, keep-alive) taking
//!   `POST /v1/traces` with `application/x-protobuf` bodies.
//! - [`Protocol::Hung`]: accepts connections and never answers (a hung collector).
//!
//! Dropping the receiver stops it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// How the receiver talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
    /// Accepts TCP connections, reads nothing, answers nothing.
    Hung,
}

/// One received span, flattened for assertions.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// Lowercase hex.
    pub trace_id: String,
    pub span_id: String,
    /// Empty when the span has no parent.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// The OTLP span flags: W3C trace flags in bits 0–7, bit 8 "is-remote known", bit 9
    /// "parent is remote".
    pub flags: u32,
    /// Values as text: strings as they are, numbers and booleans formatted.
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// The resource's `service.name`.
    pub service_name: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
}

impl ReceivedSpan {
    /// The parent-is-remote flag, when the sender said.
    pub fn parent_is_remote(&self) -> Option<bool> {
        (self.flags & 0x100 != 0).then_some(self.flags & 0x200 != 0)
    }
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    arrived: Condvar,
    requests: AtomicUsize,
    paths: Mutex<Vec<String>>,
    /// Each request's spans and encoded length.
    sizes: Mutex<Vec<(usize, usize)>>,
}

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let bytes = request.encoded_len();
        let spans = flatten(request);
        self.sizes.lock().unwrap().push((spans.len(), bytes));
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut all = self.spans.lock().unwrap();
        all.extend(spans);
        self.arrived.notify_all();
    }
}

/// A running test collector.
pub struct OtlpReceiver {
    protocol: Protocol,
    addr: SocketAddr,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
    grpc_stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver on an ephemeral port of 127.0.0.1.
    pub fn start(protocol: Protocol) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut grpc_stop = None;
        let thread = match protocol {
            Protocol::Grpc => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                grpc_stop = Some(tx);
                let received = Arc::clone(&received);
                std::thread::spawn(move || serve_grpc(listener, received, rx))
            }
            Protocol::Http => {
                let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
                std::thread::spawn(move || serve_http(listener, received, stop))
            }
            Protocol::Hung => {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || serve_hung(listener, stop))
            }
        };
        OtlpReceiver {
            protocol,
            addr,
            received,
            stop,
            grpc_stop,
            thread: Some(thread),
        }
    }

    /// The base URL to configure as `otlp_endpoint`: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().unwrap().clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> usize {
        self.received.requests.load(Ordering::SeqCst)
    }

    /// Each request's spans and encoded length in bytes, in the order they arrived.
    pub fn request_sizes(&self) -> Vec<(usize, usize)> {
        self.received.sizes.lock().unwrap().clone()
    }

    /// The HTTP request targets received so far (HTTP only).
    pub fn paths(&self) -> Vec<String> {
        self.received.paths.lock().unwrap().clone()
    }

    /// Waits until at least `n` spans have arrived or `timeout` passes; returns what arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        let mut spans = self.received.spans.lock().unwrap();
        while spans.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            spans = self.received.arrived.wait_timeout(spans, left).unwrap().0;
        }
        spans.clone()
    }

    /// The one span named `name`; panics if there is not exactly one.
    pub fn span(&self, name: &str) -> ReceivedSpan {
        let spans: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect();
        assert_eq!(spans.len(), 1, "spans named {name}: {spans:#?}");
        spans.into_iter().next().unwrap()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(tx) = self.grpc_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Collector(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn serve_grpc(
    listener: TcpListener,
    received: Arc<Received>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                TraceServiceServer::new(Collector(received)),
                incoming,
                async {
                    let _ = stop.await;
                },
            )
            .await
            .unwrap();
    });
    // Connections a client keeps open must not hold up the test.
    runtime.shutdown_background();
}

/// Accepts connections until `stop`, polling so that a drop is noticed.
fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, mut on_conn: impl FnMut(TcpStream)) {
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                on_conn(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_hung(listener: TcpListener, stop: Arc<AtomicBool>) {
    let mut held = Vec::new();
    accept_loop(listener, stop, |stream| held.push(stream));
}

fn serve_http(listener: TcpListener, received: Arc<Received>, stop: Arc<AtomicBool>) {
    accept_loop(listener, Arc::clone(&stop), |stream| {
        let received = Arc::clone(&received);
        let stop = Arc::clone(&stop);
        // Detached: a connection kept alive by the client ends when the client closes it,
        // or at the next read timeout after `stop`.
        std::thread::spawn(move || http_connection(stream, &received, &stop));
    });
}

/// Serves HTTP/1.1 requests on one connection until it closes.
fn http_connection(stream: TcpStream, received: &Received, stop: &AtomicBool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        loop {
            // `read_line` keeps what it read before a timeout: go on reading the same line.
            match reader.read_line(&mut request_line) {
                Ok(0) => return,
                Ok(_) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) && !stop.load(Ordering::SeqCst) => {}
                Err(_) => return,
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut content_length = 0usize;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        received.paths.lock().unwrap().push(target.to_owned());
        let (status, reply) = if method != "POST" || target != "/v1/traces" {
            ("404 Not Found", Vec::new())
        } else if content_type != "application/x-protobuf" {
            ("415 Unsupported Media Type", Vec::new())
        } else {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    received.add(request);
                    (
                        "200 OK",
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
                Err(_) => ("400 Bad Request", Vec::new()),
            }
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&reply).is_err() {
            return;
        }
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| value_text(kv.value.as_ref()))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: match span.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    flags: span.flags,
                    attributes: attributes(&span.attributes),
                    status_code: status.code,
                    status_message: status.message,
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    service_name: service_name.clone(),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
        .collect()
}

fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(f)) => f.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
