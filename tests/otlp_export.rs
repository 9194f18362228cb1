//! The OTLP span exporter against the test collectors of `support::otlp`: spans arrive intact
//! over gRPC and HTTP, and a dead or hung collector costs only counted spans, never a blocked
//! hand-over or a late `shutdown`.
#![cfg(feature = "otel")]

mod support;

use std::time::{Duration, Instant};

use pglink::config::OtlpProtocol;
use pglink::observe::otlp::{
    CollectorTls, ExportStats, Exporter, ExporterConfig, SharedAttributes, Span, SpanBatch,
    SpanEvent, SpanKind, SpanStatus, Value,
};
use support::certs::TestCerts;
use support::otlp::{OtlpReceiver, Protocol, ReceiverTls};
use support::workdir::TempDir;

fn config(endpoint: String, protocol: OtlpProtocol) -> ExporterConfig {
    ExporterConfig {
        endpoint: Some(endpoint),
        protocol,
        service_name: "pglink-test".into(),
        queue_capacity: 64,
        queue_bytes: ExporterConfig::DEFAULT_QUEUE_BYTES,
        max_batch: 16,
        max_request_bytes: ExporterConfig::DEFAULT_MAX_REQUEST_BYTES,
        batch_delay: Duration::from_millis(20),
        export_timeout: Duration::from_secs(2),
        headers: None,
        tls: CollectorTls::default(),
    }
}

const BOTH: [(Protocol, OtlpProtocol); 2] = [
    (Protocol::Http, OtlpProtocol::Http),
    (Protocol::Grpc, OtlpProtocol::Grpc),
];

/// A TLS collector with `certs`' server certificate that asks for a client certificate
/// signed by `certs`' CA.
fn tls_receiver(protocol: Protocol, certs: &TestCerts) -> OtlpReceiver {
    OtlpReceiver::start_tls(
        protocol,
        ReceiverTls {
            cert_pem: certs.server.cert_pem.clone(),
            key_pem: certs.server.key_pem.clone(),
            client_ca_pem: Some(certs.ca_cert_pem.clone()),
        },
    )
}

const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];

const START_NS: u64 = 1_700_000_000_000_000_000;

fn span(n: u8, parent: Option<[u8; 8]>, name: &str) -> Span<'_> {
    Span {
        trace_id: TRACE,
        span_id: [0, 0, 0, 0, 0, 0, 0, n],
        parent_span_id: parent,
        parent_is_remote: false,
        name,
        kind: SpanKind::Internal,
        start_ns: START_NS,
        end_ns: START_NS + 3_000_000,
        shared: SharedAttributes::EMPTY,
        attributes: &[],
        events: &[],
        status: SpanStatus::Unset,
        sampled: true,
    }
}

const TX_ATTRIBUTES: &[(&str, Value<'static>)] = &[
    ("db.name", Value::Str("app")),
    ("pglink.backend_pid", Value::Int(4242)),
    ("pglink.pooled", Value::Bool(true)),
    ("pglink.wait_ratio", Value::F64(0.5)),
];

const TX_EVENTS: &[SpanEvent<'static>] = &[SpanEvent {
    name: "pool.wait",
    time_ns: START_NS + 1_000_000,
    attributes: &[("pool.wait.seconds", Value::F64(0.25))],
}];

/// A transaction span whose parent is the client's (remote), with shared attributes and
/// attributes of every kind, an event and an error; and a child statement span.
fn transaction_and_statement(shared: &SharedAttributes) -> (Span<'_>, Span<'_>) {
    let mut tx = span(
        1,
        Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
        "transaction",
    );
    tx.parent_is_remote = true;
    tx.kind = SpanKind::Server;
    tx.shared = shared;
    tx.attributes = TX_ATTRIBUTES;
    tx.events = TX_EVENTS;
    tx.status = SpanStatus::Error("deadlock detected");
    let mut stmt = span(2, Some(tx.span_id), "statement");
    stmt.kind = SpanKind::Client;
    stmt.status = SpanStatus::Ok;
    stmt.sampled = false;
    (tx, stmt)
}

fn round_trip(protocol: Protocol, otlp: OtlpProtocol) {
    let receiver = OtlpReceiver::start(protocol);
    let mut c = config(receiver.endpoint(), otlp);
    // Far above the bound on the idle shutdown below, so that a shutdown that waits for
    // either stands out from a slow machine.
    c.export_timeout = Duration::from_secs(30);
    let (exporter, thread) = Exporter::start(c).unwrap();
    let shared = SharedAttributes::new(&[("db.system", Value::Str("postgresql"))]);
    let (tx, stmt) = transaction_and_statement(&shared);
    let mut batch = exporter.batch();
    batch.push(&stmt);
    batch.push(&tx);
    assert_eq!(batch.len(), 2);
    batch.hand_over();
    assert!(batch.is_empty());
    let spans = receiver.wait_for(2, Duration::from_secs(5));
    assert_eq!(spans.len(), 2, "{spans:#?}");

    let tx = receiver.span("transaction");
    assert_eq!(tx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(tx.span_id, "0000000000000001");
    assert_eq!(tx.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(tx.parent_is_remote(), Some(true));
    assert!(tx.sampled());
    assert_eq!(tx.kind, "server");
    assert_eq!(tx.service_name, "pglink-test");
    assert_eq!(tx.attributes["db.system"], "postgresql");
    assert_eq!(tx.attributes["db.name"], "app");
    assert_eq!(tx.attributes["pglink.backend_pid"], "4242");
    assert_eq!(tx.attributes["pglink.pooled"], "true");
    assert_eq!(tx.attributes["pglink.wait_ratio"], "0.5");
    assert_eq!(
        (tx.status_code, tx.status_message.as_str()),
        (2, "deadlock detected")
    );
    assert_eq!(tx.events.len(), 1);
    assert_eq!(tx.events[0].0, "pool.wait");
    assert_eq!(tx.events[0].1["pool.wait.seconds"], "0.25");
    assert_eq!(tx.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(tx.end_time_unix_nano, 1_700_000_000_003_000_000);

    let stmt = receiver.span("statement");
    assert_eq!(stmt.trace_id, tx.trace_id);
    assert_eq!(stmt.parent_span_id, tx.span_id);
    assert_eq!(stmt.parent_is_remote(), Some(false));
    assert!(!stmt.sampled());
    assert_eq!(stmt.kind, "client");
    assert_eq!(stmt.status_code, 1);
    assert!(stmt.events.is_empty());

    let started = Instant::now();
    thread.shutdown(Duration::from_secs(30));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "idle shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(counts(exporter.stats()), (2, 0, 0));
}

/// (exported, dropped, failed)
fn counts(stats: &ExportStats) -> (u64, u64, u64) {
    (stats.exported(), stats.dropped(), stats.failed())
}

#[test]
fn round_trip_grpc() {
    round_trip(Protocol::Grpc, OtlpProtocol::Grpc);
}

#[test]
fn round_trip_http() {
    round_trip(Protocol::Http, OtlpProtocol::Http);
}

#[test]
fn http_posts_to_the_traces_path_in_bounded_batches() {
    let receiver = OtlpReceiver::start(Protocol::Http);
    let mut c = config(format!("{}/", receiver.endpoint()), OtlpProtocol::Http);
    c.max_batch = 10;
    // Only a full batch wakes the export thread before shutdown: it then sends the whole
    // requests of 10 spans queued, and keeps the rest for later.
    c.batch_delay = Duration::from_secs(10);
    let (exporter, thread) = Exporter::start(c).unwrap();
    for n in 0..5 {
        exporter.submit(&span(n, None, "s"));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        receiver.requests(),
        0,
        "less than a batch waits for the delay"
    );
    // One hand-over of 20 spans: split into requests of 10.
    let mut batch = exporter.batch();
    for n in 5..25 {
        batch.push(&span(n, None, "s"));
    }
    drop(batch);
    assert_eq!(receiver.wait_for(20, Duration::from_secs(5)).len(), 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (receiver.requests(), receiver.spans().len()),
        (2, 20),
        "25 spans queued: two requests of 10, and 5 kept for a later request"
    );
    // What is left goes at shutdown.
    thread.shutdown(Duration::from_secs(2));
    assert_eq!(receiver.spans().len(), 25);
    assert_eq!(receiver.requests(), 3);
    assert!(
        receiver.paths().iter().all(|p| p == "/v1/traces"),
        "{:?}",
        receiver.paths()
    );
    assert_eq!(counts(exporter.stats()), (25, 0, 0));
}

#[test]
fn requests_are_cut_at_max_request_bytes_and_a_longer_span_goes_alone() {
    for (protocol, otlp) in [
        (Protocol::Http, OtlpProtocol::Http),
        (Protocol::Grpc, OtlpProtocol::Grpc),
    ] {
        let receiver = OtlpReceiver::start(protocol);
        let mut c = config(receiver.endpoint(), otlp);
        c.max_batch = 100;
        c.max_request_bytes = 4096;
        // Only a request's worth of bytes wakes the thread: 100 spans never queue up.
        c.batch_delay = Duration::from_secs(30);
        let (exporter, thread) = Exporter::start(c).unwrap();
        let long = "l".repeat(900);
        let longest = "x".repeat(5000);
        let mut batch = exporter.batch();
        for n in 0..9 {
            batch.push(&span(n, None, if n == 5 { &longest } else { &long }));
        }
        drop(batch);
        // 4 spans of about 960 bytes fit in 4 KiB; the 5 KiB one is sent by itself. The last
        // three wait (fewer than a request's worth), until shutdown.
        assert_eq!(receiver.wait_for(6, Duration::from_secs(5)).len(), 6);
        std::thread::sleep(Duration::from_millis(300));
        let spans: Vec<usize> = receiver.request_sizes().iter().map(|r| r.0).collect();
        assert_eq!(spans, [4, 1, 1], "{protocol:?}");
        thread.shutdown(Duration::from_secs(2));
        let sizes = receiver.request_sizes();
        let spans: Vec<usize> = sizes.iter().map(|r| r.0).collect();
        assert_eq!(spans, [4, 1, 1, 3], "{protocol:?}");
        for &(n, bytes) in &sizes {
            // The request's own framing (resource, scope) is under 200 bytes.
            assert!(n == 1 || bytes <= 4096 + 200, "{n} spans in {bytes} bytes");
        }
        let ids: Vec<String> = receiver.spans().into_iter().map(|s| s.span_id).collect();
        let sent: Vec<String> = (0..9).map(|n| format!("{n:016x}")).collect();
        assert_eq!(ids, sent, "in the order handed over");
        assert_eq!(counts(exporter.stats()), (9, 0, 0));
    }
}

#[test]
fn spans_held_back_from_a_full_request_go_after_the_batch_delay() {
    let receiver = OtlpReceiver::start(Protocol::Http);
    let mut c = config(receiver.endpoint(), OtlpProtocol::Http);
    c.max_batch = 10;
    c.batch_delay = Duration::from_millis(400);
    let (exporter, thread) = Exporter::start(c).unwrap();
    let hand_over = |spans: std::ops::Range<u8>| {
        let mut batch = exporter.batch();
        for n in spans {
            batch.push(&span(n, None, "s"));
        }
    };
    hand_over(0..15);
    let first = receiver.wait_for(10, Duration::from_secs(5));
    assert_eq!(first.len(), 10, "one full request at once");
    assert_eq!(receiver.requests(), 1);
    // 10 more: the 5 held and 5 of them make a full request; the other 5 are held.
    hand_over(15..25);
    assert_eq!(receiver.wait_for(20, Duration::from_secs(5)).len(), 20);
    assert_eq!(receiver.requests(), 2);
    // The last 5 wait for the delay, not for shutdown or more spans.
    assert_eq!(receiver.wait_for(25, Duration::from_secs(5)).len(), 25);
    assert_eq!(receiver.requests(), 3);
    let ids: Vec<String> = receiver.spans().into_iter().map(|s| s.span_id).collect();
    let sent: Vec<String> = (0..25).map(|n| format!("{n:016x}")).collect();
    assert_eq!(ids, sent, "in the order handed over");
    thread.shutdown(Duration::from_secs(2));
    assert_eq!(counts(exporter.stats()), (25, 0, 0));
}

#[test]
fn grpc_exporter_is_shared_between_threads() {
    let receiver = OtlpReceiver::start(Protocol::Grpc);
    let (exporter, thread) =
        Exporter::start(config(receiver.endpoint(), OtlpProtocol::Grpc)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let exporter = exporter.clone();
            s.spawn(move || {
                let mut batch = exporter.batch();
                for n in 0..10u8 {
                    batch.push(&span(t * 10 + n, None, "s"));
                }
            });
        }
    });
    assert_eq!(receiver.wait_for(40, Duration::from_secs(5)).len(), 40);
    thread.shutdown(Duration::from_secs(2));
    assert_eq!(counts(exporter.stats()), (40, 0, 0));
}

/// An address nothing listens on.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

const FLOOD: u64 = 20_000;

/// Hands over [`FLOOD`] spans as fast as possible, most one at a time, some in batches that
/// hand themselves over when full: it must not block.
fn flood(exporter: &Exporter) {
    let started = Instant::now();
    let mut batch = exporter.batch();
    for n in 0..FLOOD {
        let attributes = [("n", Value::Int(n as i64))];
        let mut s = span((n % 251) as u8, None, "flood");
        s.attributes = &attributes;
        if n % 2 == 0 {
            exporter.submit(&s);
        } else {
            batch.push(&s);
        }
    }
    drop(batch);
    // Far below the hung collector's 30 s export timeout, whatever the machine's load.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "hand-over blocked: {:?}",
        started.elapsed()
    );
}

/// A collector that is down or hung: spans beyond the queue are dropped at once (the queue
/// bounds memory), the ones taken are counted as failed, and `shutdown` keeps its deadline.
fn unreachable_collector(endpoint: String, otlp: OtlpProtocol, export_timeout: Duration) {
    let mut c = config(endpoint, otlp);
    c.export_timeout = export_timeout;
    let (exporter, thread) = Exporter::start(c).unwrap();
    flood(&exporter);
    // Held at most: the queue plus the batch in flight. The exporter thread takes the queue
    // each time a batch is ready and fails it at once when the connection is refused, so
    // how many it took during the flood depends on scheduling; most of the flood is dropped.
    let dropped = exporter.stats().dropped();
    assert!(dropped >= FLOOD / 2, "dropped {dropped}");
    std::thread::sleep(Duration::from_millis(100));
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    thread.shutdown(deadline);
    let took = started.elapsed();
    assert!(
        took < deadline + Duration::from_secs(1),
        "shutdown took {took:?}"
    );
    // A thread that overran the deadline (a loaded machine) counts what it gave up on a
    // moment later.
    support::wait_until("every span counted", Duration::from_secs(5), || {
        let (exported, dropped, failed) = counts(exporter.stats());
        exported + dropped + failed >= FLOOD
    });
    let (exported, dropped, failed) = counts(exporter.stats());
    assert_eq!(exported, 0);
    assert!(failed > 0 && failed <= FLOOD / 2, "failed {failed}");
    assert_eq!(exported + dropped + failed, FLOOD);
    // After shutdown, a hand-over still returns at once and counts.
    exporter.submit(&span(1, None, "late"));
    assert_eq!(exporter.stats().dropped(), dropped + 1);
}

#[test]
fn dead_collector_grpc() {
    unreachable_collector(
        dead_endpoint(),
        OtlpProtocol::Grpc,
        Duration::from_millis(200),
    );
}

#[test]
fn dead_collector_http() {
    unreachable_collector(
        dead_endpoint(),
        OtlpProtocol::Http,
        Duration::from_millis(200),
    );
}

#[test]
fn hung_collector_grpc() {
    let receiver = OtlpReceiver::start(Protocol::Hung);
    unreachable_collector(
        receiver.endpoint(),
        OtlpProtocol::Grpc,
        Duration::from_secs(30),
    );
}

#[test]
fn hung_collector_http() {
    let receiver = OtlpReceiver::start(Protocol::Hung);
    unreachable_collector(
        receiver.endpoint(),
        OtlpProtocol::Http,
        Duration::from_secs(30),
    );
}

#[test]
fn start_refuses_bad_urls_headers_and_tls_files() {
    let dir = TempDir::new("otlp-refuse");
    let ca = dir.file("ca.pem", &TestCerts::generate("x").ca_cert_pem);
    for otlp in [OtlpProtocol::Grpc, OtlpProtocol::Http] {
        for (endpoint, want) in [
            ("collector:4317", "invalid OTLP endpoint"),
            ("http://bad host:1", "invalid OTLP endpoint"),
            ("ftp://collector:21", "invalid OTLP endpoint"),
        ] {
            let err = Exporter::start(config(endpoint.into(), otlp)).unwrap_err();
            assert!(err.to_string().contains(want), "{endpoint}: {err}");
        }
        let https = || config("https://127.0.0.1:1".into(), otlp);
        let mut c = https();
        c.tls.certificate = Some("/nonexistent/ca.pem".into());
        let err = Exporter::start(c).unwrap_err().to_string();
        assert!(
            err.contains("cannot set up TLS") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let mut c = https();
        c.tls.certificate = Some(ca.clone());
        c.tls.client_key = Some(ca.clone());
        let err = Exporter::start(c).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        for headers in ["novalue", "a=b,=c", "k=caf%C3%A9", "bad name=1"] {
            let mut c = config("http://127.0.0.1:1".into(), otlp);
            c.headers = Some(headers.into());
            let err = Exporter::start(c).unwrap_err().to_string();
            assert!(
                err.contains("OTEL_EXPORTER_OTLP_HEADERS"),
                "{headers}: {err}"
            );
        }
    }
}

#[test]
fn https_and_grpc_over_tls_carry_spans_headers_and_a_client_certificate() {
    let certs = TestCerts::generate("pglink-exporter");
    let dir = TempDir::new("otlp-tls");
    let ca = dir.file("ca.pem", &certs.ca_cert_pem);
    let client_cert = dir.file("client.pem", &certs.client.cert_pem);
    let client_key = dir.file("client.key", &certs.client.key_pem);
    for (protocol, otlp) in BOTH {
        let receiver = tls_receiver(protocol, &certs);
        assert!(receiver.endpoint().starts_with("https://127.0.0.1:"));
        let mut c = config(receiver.endpoint(), otlp);
        c.headers = Some("authorization=Bearer%20t0k%3Den, X-Tenant = acme".into());
        c.tls = CollectorTls {
            certificate: Some(ca.clone()),
            client_certificate: Some(client_cert.clone()),
            client_key: Some(client_key.clone()),
        };
        let (exporter, thread) = Exporter::start(c).unwrap();
        exporter.submit(&span(1, None, "over tls"));
        let got = receiver.wait_for(1, Duration::from_secs(10));
        thread.shutdown(Duration::from_secs(2));
        assert_eq!(got.len(), 1, "{protocol:?}");
        assert_eq!(got[0].name, "over tls");
        let headers = receiver.headers();
        let has = |k: &str, v: &str| headers[0].iter().any(|(n, x)| n == k && x == v);
        assert!(
            has("authorization", "Bearer t0k=en") && has("x-tenant", "acme"),
            "{protocol:?}: {headers:?}"
        );
        assert_eq!(counts(exporter.stats()), (1, 0, 0), "{protocol:?}");
    }
}

#[test]
fn tls_export_fails_to_an_untrusted_collector_and_without_the_asked_client_certificate() {
    let certs = TestCerts::generate("pglink-exporter");
    let other = TestCerts::generate("other");
    let dir = TempDir::new("otlp-untrusted");
    let ca = dir.file("ca.pem", &certs.ca_cert_pem);
    let other_ca = dir.file("other-ca.pem", &other.ca_cert_pem);
    for (protocol, otlp) in BOTH {
        let receiver = tls_receiver(protocol, &certs);
        for (certificate, why) in [
            (
                &other_ca,
                "a CA that did not sign the collector's certificate",
            ),
            (&ca, "no client certificate"),
        ] {
            let mut c = config(receiver.endpoint(), otlp);
            c.tls.certificate = Some(certificate.clone());
            let (exporter, thread) = Exporter::start(c).unwrap();
            exporter.submit(&span(1, None, "s"));
            thread.shutdown(Duration::from_secs(5));
            assert_eq!(counts(exporter.stats()), (0, 0, 1), "{protocol:?}: {why}");
        }
        assert_eq!(receiver.requests(), 0, "{protocol:?}");
    }
}

#[test]
fn a_batch_hands_itself_over_when_full_and_the_queue_bounds_bytes() {
    let receiver = OtlpReceiver::start(Protocol::Http);
    let mut c = config(receiver.endpoint(), OtlpProtocol::Http);
    c.queue_capacity = 1000;
    c.max_batch = 1000;
    c.batch_delay = Duration::from_secs(30);
    // Room for one hand-over of long spans, not two.
    c.queue_bytes = 3 * SpanBatch::HAND_OVER_BYTES / 2;
    let (exporter, thread) = Exporter::start(c).unwrap();
    let mut batch = exporter.batch();
    for n in 0..SpanBatch::HAND_OVER_SPANS {
        assert_eq!(batch.len(), n);
        batch.push(&span(n as u8, None, "s"));
    }
    assert!(batch.is_empty(), "a full batch hands itself over");
    let long = "x".repeat(SpanBatch::HAND_OVER_BYTES / 4);
    let mut handed = 0;
    while exporter.stats().dropped() == 0 {
        batch.push(&span(0, None, &long));
        handed += 1;
        assert!(handed < 100, "the byte bound never dropped");
    }
    // Dropped: the spans of the second long hand-over, all of them.
    let dropped = exporter.stats().dropped();
    assert!(dropped >= 4, "dropped {dropped}");
    drop(batch);
    thread.shutdown(Duration::from_secs(2));
    let (exported, dropped, failed) = counts(exporter.stats());
    assert_eq!(failed, 0);
    assert_eq!(
        exported + dropped,
        (SpanBatch::HAND_OVER_SPANS + handed) as u64
    );
    assert_eq!(receiver.spans().len() as u64, exported);
    assert!(receiver.spans().iter().any(|s| s.name == long));
}
