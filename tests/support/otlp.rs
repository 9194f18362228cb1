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
//! [`OtlpReceiver::start_tls`] serves gRPC or HTTP over TLS (rustls), optionally asking for a
//! client certificate. Dropping the receiver stops it.

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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    /// Each request's headers (gRPC: its metadata), names in lower case.
    headers: Mutex<Vec<Vec<(String, String)>>>,
}

impl Received {
    fn add(&self, request: ExportTraceServiceRequest, headers: Vec<(String, String)>) {
        let bytes = request.encoded_len();
        let spans = flatten(request);
        self.headers.lock().unwrap().push(headers);
        self.sizes.lock().unwrap().push((spans.len(), bytes));
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut all = self.spans.lock().unwrap();
        all.extend(spans);
        self.arrived.notify_all();
    }
}

/// The TLS side of a receiver: its certificate and key (PEM), and the CA that must have
/// signed a client's certificate (`None`: no client certificate asked for).
#[derive(Clone, Debug)]
pub struct ReceiverTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

impl ReceiverTls {
    /// The rustls server configuration, offering `alpn`.
    fn server_config(&self, alpn: &[u8]) -> Arc<rustls::ServerConfig> {
        let provider = pglink::tls::provider();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

/// A running test collector.
pub struct OtlpReceiver {
    protocol: Protocol,
    tls: bool,
    addr: SocketAddr,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
    grpc_stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver on an ephemeral port of 127.0.0.1.
    pub fn start(protocol: Protocol) -> OtlpReceiver {
        Self::start_with(protocol, None)
    }

    /// Starts a gRPC or HTTP receiver that speaks TLS with `tls`.
    pub fn start_tls(protocol: Protocol, tls: ReceiverTls) -> OtlpReceiver {
        assert!(
            protocol != Protocol::Hung,
            "a hung receiver never gets to TLS"
        );
        Self::start_with(protocol, Some(tls))
    }

    fn start_with(protocol: Protocol, tls: Option<ReceiverTls>) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut grpc_stop = None;
        let with_tls = tls.is_some();
        let thread = match protocol {
            Protocol::Grpc => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                grpc_stop = Some(tx);
                let received = Arc::clone(&received);
                let tls = tls.map(|t| t.server_config(b"h2"));
                std::thread::spawn(move || serve_grpc(listener, received, rx, tls))
            }
            Protocol::Http => {
                let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
                let tls = tls.map(|t| t.server_config(b"http/1.1"));
                std::thread::spawn(move || serve_http(listener, received, stop, tls))
            }
            Protocol::Hung => {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || serve_hung(listener, stop))
            }
        };
        OtlpReceiver {
            protocol,
            tls: with_tls,
            addr,
            received,
            stop,
            grpc_stop,
            thread: Some(thread),
        }
    }

    /// The base URL to configure as `otlp_endpoint`: `http://127.0.0.1:<port>`, or
    /// `https://` with TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Each request's headers (gRPC: metadata), names in lower case, in arrival order.
    pub fn headers(&self) -> Vec<Vec<(String, String)>> {
        self.received.headers.lock().unwrap().clone()
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
        let headers = request
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.0.add(request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A TLS connection for tonic's server (which has no TLS of its own in this build).
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn serve_grpc(
    listener: TcpListener,
    received: Arc<Received>,
    stop: tokio::sync::oneshot::Receiver<()>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let service = TraceServiceServer::new(Collector(received));
        let until_stop = async {
            let _ = stop.await;
        };
        let server = tonic::transport::Server::builder();
        match tls {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                server
                    .serve_with_incoming_shutdown(service, incoming, until_stop)
                    .await
                    .unwrap();
            }
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                // A failed handshake (an untrusted client) ends that connection only.
                let incoming = futures_util::stream::unfold(
                    (listener, acceptor),
                    |(listener, acceptor)| async move {
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else {
                                continue;
                            };
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let conn = Ok::<_, std::io::Error>(TlsConn(tls));
                                return Some((conn, (listener, acceptor)));
                            }
                        }
                    },
                );
                server
                    .serve_with_incoming_shutdown(service, incoming, until_stop)
                    .await
                    .unwrap();
            }
        }
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

fn serve_http(
    listener: TcpListener,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    accept_loop(listener, Arc::clone(&stop), |stream| {
        let received = Arc::clone(&received);
        let stop = Arc::clone(&stop);
        let tls = tls.clone();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // Detached: a connection kept alive by the client ends when the client closes it,
        // or at the next read timeout after `stop`.
        std::thread::spawn(move || match tls {
            None => http_connection(stream, &received, &stop),
            Some(config) => {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                http_connection(rustls::StreamOwned::new(conn, stream), &received, &stop);
            }
        });
    });
}

/// Serves HTTP/1.1 requests on one connection until it closes.
fn http_connection(stream: impl Read + Write, received: &Received, stop: &AtomicBool) {
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
        let mut headers = Vec::new();
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
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
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
                    received.add(request, headers);
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
        let writer = reader.get_mut();
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(&reply).is_err()
            || writer.flush().is_err()
        {
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
