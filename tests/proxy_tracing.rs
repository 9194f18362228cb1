//! OpenTelemetry through pglink, end to end: real clients run real statements against a real
//! PostgreSQL, and what reaches a test collector (gRPC and HTTP) is decoded and checked —
//! trace ids and parents from the `traceparent` startup parameter and from SQL comments, the
//! database attributes, errors, sampling, and a dead collector that costs nothing but spans.
#![cfg(all(feature = "otel", feature = "metrics"))]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::otlp::{OtlpReceiver, Protocol, ReceivedSpan};
use support::wire::{Conn, LoginOptions};
use support::*;
use tokio_postgres::NoTls;

const WAIT: Duration = Duration::from_secs(15);

/// A client's trace context: trace id, parent span id.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// A statement's own, in a SQL comment.
const SQL_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SQL_SPAN: &str = "b7ad6b7169203331";

fn traced_proxy(pg: &PgServer, user: &TestUser, otel: serde_json::Value) -> Proxy {
    ProxyConfig::new(pg)
        .user(user)
        .backend("pool_max_conns", json!(2))
        .set("opentelemetry", otel)
        .set("prometheus", json!({"listen": "127.0.0.1:0"}))
        .start()
}

fn otel(receiver: &OtlpReceiver, sampling_rate: f64) -> serde_json::Value {
    let protocol = match receiver.protocol() {
        Protocol::Grpc => "grpc",
        _ => "http",
    };
    json!({
        "enabled": true,
        "service_name": "pglink-e2e",
        "otlp_endpoint": receiver.endpoint(),
        "otlp_protocol": protocol,
        "sampling_rate": sampling_rate,
        "include_query_text": true,
        "traceparent_sql_regex": true,
        "application_name_sql_regex": true,
    })
}

fn login(proxy: &Proxy, user: &TestUser, traceparent: Option<&str>) -> Conn {
    let mut conn = Conn::plain(proxy.addr);
    let options = LoginOptions {
        params: traceparent
            .map(|t| vec![("traceparent".to_owned(), t.to_owned())])
            .unwrap_or_default(),
        ..LoginOptions::default()
    };
    conn.login(user.name, TEST_DATABASE, Proxy::password(user), &options)
        .expect("login through pglink");
    conn
}

fn attr<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{key} missing on {span:#?}"))
}

/// Statement spans by their query text.
fn by_text(spans: &[ReceivedSpan]) -> BTreeMap<String, ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.kind == "client")
        .filter_map(|s| Some((s.attributes.get("db.query.text")?.clone(), s.clone())))
        .collect()
}

fn spans_arrive(protocol: Protocol) {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "tracing");
    let receiver = OtlpReceiver::start(protocol);
    let proxy = traced_proxy(pg, &user, otel(&receiver, 1.0));
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let mut c = login(&proxy, &user, Some(&traceparent));
    // The parameter is pglink's: PostgreSQL never hears of it.
    assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
    let e = c.query_value("SELECT 1/0").unwrap_err().server_error();
    assert_eq!(e.code, "22012");
    let with_context = format!("/*traceparent='00-{SQL_TRACE}-{SQL_SPAN}-01'*/ SELECT 2");
    assert_eq!(c.query_value(&with_context).unwrap().as_deref(), Some("2"));
    let with_name = "/*application_name='billing'*/ SELECT 3";
    assert_eq!(c.query_value(with_name).unwrap().as_deref(), Some("3"));
    // A block: one transaction span, its statements its children.
    for sql in ["BEGIN", "SELECT 4", "COMMIT"] {
        c.simple_query(sql).unwrap();
    }
    c.terminate();

    // Extended protocol, pipelined: each Execute is a statement of its own.
    let dsn = format!("{} password={}", proxy.dsn(&user), Proxy::password(&user));
    runtime().block_on(async {
        let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        tokio::spawn(conn);
        let statement = client.prepare("SELECT $1::int + 100").await.unwrap();
        let (a, b, c) = tokio::join!(
            client.query_one(&statement, &[&1i32]),
            client.query_one(&statement, &[&2i32]),
            client.query_one(&statement, &[&3i32]),
        );
        let sum: i32 = [a, b, c]
            .iter()
            .map(|r| r.as_ref().unwrap().get::<_, i32>(0))
            .sum();
        assert_eq!(sum, 306);
    });

    // 5 simple statements + 3 in the block + 3 Executes, and 5 + 1 + at least 2 transactions
    // (the extended client's prepare is one with no statement; its pipelined Executes one to
    // three, as the answers come).
    let deadline = std::time::Instant::now() + WAIT;
    let mut spans = receiver.wait_for(19, WAIT);
    while spans.iter().filter(|s| s.kind == "client").count() < 11
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        spans = receiver.spans();
    }
    let statements = by_text(&spans);
    let transactions: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == "server").collect();

    let select1 = &statements["SELECT 1"];
    assert_eq!(select1.service_name, "pglink-e2e");
    assert_eq!(
        select1.trace_id, CLIENT_TRACE,
        "the startup parameter's trace"
    );
    assert_eq!(attr(select1, "db.system.name"), "postgresql");
    assert_eq!(attr(select1, "db.namespace"), TEST_DATABASE);
    assert_eq!(attr(select1, "db.operation.name"), "SELECT");
    assert_eq!(attr(select1, "db.response.returned_rows"), "1");
    assert_eq!(attr(select1, "db.user"), user.name);
    // A statement span (kind client) names the backend, its transaction's (kind server) the
    // application's end.
    assert_eq!(attr(select1, "server.port"), pg.port().to_string());
    assert!(
        !select1.attributes.contains_key("client.address"),
        "{select1:#?}"
    );
    assert_eq!(select1.status_code, 0);
    assert_eq!(select1.name, format!("SELECT {TEST_DATABASE}"));
    // Its parent is its transaction's span, whose parent is the client's span.
    let parent = transactions
        .iter()
        .find(|t| t.span_id == select1.parent_span_id)
        .unwrap_or_else(|| panic!("no transaction span for {select1:#?} in {spans:#?}"));
    assert_eq!(parent.trace_id, CLIENT_TRACE);
    assert_eq!(parent.parent_span_id, CLIENT_SPAN);
    assert_eq!(parent.parent_is_remote(), Some(true));
    assert_eq!(select1.parent_is_remote(), Some(false));
    assert!(attr(parent, "client.address").starts_with("127.0.0.1"));
    assert!(!attr(parent, "client.port").is_empty());
    assert!(
        !parent.attributes.contains_key("server.port"),
        "{parent:#?}"
    );
    assert_eq!(attr(parent, "db.namespace"), TEST_DATABASE);
    assert!(parent.start_time_unix_nano <= select1.start_time_unix_nano);
    assert!(parent.end_time_unix_nano >= select1.end_time_unix_nano);
    assert!(
        parent.events.iter().any(|(name, _)| name == "pool.wait"),
        "{parent:#?}"
    );

    let failed = &statements["SELECT 1/0"];
    assert_eq!(failed.status_code, 2, "{failed:#?}");
    assert_eq!(attr(failed, "db.response.status_code"), "22012");
    assert_eq!(attr(failed, "error.type"), "22012");

    let own = &statements[&with_context];
    assert_eq!(own.trace_id, SQL_TRACE, "the comment's trace");
    assert_eq!(own.parent_span_id, SQL_SPAN);
    assert_eq!(own.parent_is_remote(), Some(true));

    assert_eq!(
        attr(&statements[with_name], "pglink.application_name"),
        "billing"
    );

    let block: Vec<&ReceivedSpan> = ["BEGIN", "SELECT 4", "COMMIT"]
        .iter()
        .map(|sql| &statements[*sql])
        .collect();
    assert!(
        block
            .iter()
            .all(|s| s.parent_span_id == block[0].parent_span_id),
        "one transaction: {block:#?}"
    );

    let executes: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.attributes.get("db.query.text").map(String::as_str) == Some("SELECT $1::int + 100")
        })
        .collect();
    assert_eq!(executes.len(), 3, "{spans:#?}");
    for e in &executes {
        assert_eq!(attr(e, "db.operation.name"), "SELECT");
        assert_ne!(
            e.trace_id, CLIENT_TRACE,
            "another session: a trace of its own"
        );
    }

    // Counted (once the collector's answer is in, just after the spans).
    let metrics = proxy.metrics_addr().unwrap();
    let exported = || {
        http_get(metrics, "/metrics")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("pglink_trace_spans_total{outcome=\"exported\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + WAIT;
    while exported() < spans.len() as f64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // (The pipelined client's Executes make one to three transactions: more may follow.)
    assert!(exported() >= spans.len() as f64);
}

#[test]
fn spans_arrive_over_grpc() {
    spans_arrive(Protocol::Grpc);
}

#[test]
fn spans_arrive_over_http() {
    spans_arrive(Protocol::Http);
}

/// Parent-based sampling: a ratio of 0 keeps no root transaction, but a client whose trace
/// context says sampled is traced, and one whose context says not is not, whatever the ratio.
#[test]
fn the_sampler_decides_and_unsampled_work_sends_nothing() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "sampling");
    let receiver = OtlpReceiver::start(Protocol::Http);
    let proxy = traced_proxy(pg, &user, otel(&receiver, 0.0));
    let mut root = login(&proxy, &user, None);
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let mut declined = login(&proxy, &user, Some(&unsampled));
    for i in 0..20 {
        root.query_value(&format!("SELECT {i}")).unwrap();
        declined.query_value(&format!("SELECT {i}")).unwrap();
    }
    // What would have been sampled has had time to arrive (batches go out within a second).
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        receiver.spans(),
        Vec::new(),
        "nothing sampled, nothing sent"
    );

    // Passed in `options`, as JDBC can.
    let sampled = format!("00-{SQL_TRACE}-{SQL_SPAN}-01");
    let mut chosen = Conn::plain(proxy.addr);
    let options = LoginOptions {
        params: vec![("options".into(), format!("-c traceparent={sampled}"))],
        ..LoginOptions::default()
    };
    chosen
        .login(user.name, TEST_DATABASE, Proxy::password(&user), &options)
        .unwrap();
    chosen.query_value("SELECT 'chosen'").unwrap();
    let spans = receiver.wait_for(2, WAIT);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == SQL_TRACE && s.sampled()));
}

/// A collector that is down, or hangs, never slows or fails a client: spans are dropped or
/// fail, and are counted.
#[test]
fn a_dead_or_hung_collector_costs_only_spans() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "deadotel");
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let hung = OtlpReceiver::start(Protocol::Hung);
    for (endpoint, protocol) in [(dead, "http"), (hung.endpoint(), "grpc")] {
        let proxy = traced_proxy(
            pg,
            &user,
            json!({
                "enabled": true,
                "otlp_endpoint": endpoint,
                "otlp_protocol": protocol,
                "traceparent_sql_regex": false,
            }),
        );
        let mut c = login(&proxy, &user, None);
        let started = std::time::Instant::now();
        for i in 0..2_000 {
            assert_eq!(
                c.query_value(&format!("SELECT {i}")).unwrap().as_deref(),
                Some(i.to_string().as_str())
            );
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(60), "{protocol}: {took:?}");
        let metrics = proxy.metrics_addr().unwrap();
        let lost = |text: &str| -> f64 {
            ["dropped", "failed"]
                .iter()
                .filter_map(|o| {
                    text.lines()
                        .find_map(|l| {
                            l.strip_prefix(&format!("pglink_trace_spans_total{{outcome=\"{o}\"}} "))
                        })
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .sum()
        };
        // Export attempts end within their timeout: the losses show up.
        let deadline = std::time::Instant::now() + WAIT;
        let mut text = http_get(metrics, "/metrics").1;
        while lost(&text) == 0.0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            text = http_get(metrics, "/metrics").1;
        }
        assert!(lost(&text) > 0.0, "{protocol}: {text}");
        c.terminate();
        // And the stop is not held up by the collector.
        let stopping = std::time::Instant::now();
        proxy.shutdown();
        assert!(stopping.elapsed() < Duration::from_secs(10), "{protocol}");
    }
}
