//! The flight recorder end to end: each trigger writes a Chrome trace file into
//! `output_dir` (SIGUSR1, periodic, a slow statement, a protocol error, HTTP and the API),
//! the automatic ones at most once per cooldown, and the files hold the expected tracks and
//! slices. The rendering and the ring have unit tests (`src/observe/flight/`).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::http_get as get;
use support::proxy::{ChildProxy, create_user};
use support::wire::WireClient;
use support::*;

/// An empty directory of the test's own for snapshots.
fn flight_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglink-flight-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The snapshot files for `trigger` in `dir`, oldest first (no temporary ones).
fn files(dir: &Path, trigger: &str) -> Vec<PathBuf> {
    let suffix = format!("-{trigger}.json");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("pglink-flight-") && name.ends_with(&suffix)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Waits (bounded) for at least `n` files of `trigger`.
fn wait_files(dir: &Path, trigger: &str, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = files(dir, trigger);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{n} {trigger} snapshot(s) expected in {}, found {found:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn trace_events(trace: &Value) -> &Vec<Value> {
    trace["traceEvents"].as_array().expect("traceEvents")
}

/// Thread names of process `clients` or `servers`.
fn tracks(trace: &Value, process: &str) -> Vec<String> {
    let pid = trace_events(trace)
        .iter()
        .find(|e| e["name"] == "process_name" && e["args"]["name"] == process)
        .map(|e| e["pid"].clone())
        .unwrap_or_else(|| panic!("no {process} process"));
    trace_events(trace)
        .iter()
        .filter(|e| e["name"] == "thread_name" && e["pid"] == pid)
        .map(|e| e["args"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The events of the track named `track`.
fn on_track<'a>(trace: &'a Value, track: &str) -> Vec<&'a Value> {
    let Some(meta) = trace_events(trace)
        .iter()
        .find(|e| e["name"] == "thread_name" && e["args"]["name"] == track)
    else {
        panic!("no track {track:?} in {:?}", tracks(trace, "clients"));
    };
    trace_events(trace)
        .iter()
        .filter(|e| e["ph"] != "M" && e["pid"] == meta["pid"] && e["tid"] == meta["tid"])
        .collect()
}

fn flight(dir: &Path, extra: Value) -> Value {
    let mut section = json!({ "output_dir": dir.to_str().unwrap() });
    if let (Some(s), Some(extra)) = (section.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    section
}

fn connect(addr: SocketAddr, user: &TestUser) -> WireClient {
    WireClient::connect(addr, user.name, Proxy::password(user), TEST_DATABASE).unwrap()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn sigusr1_writes_a_snapshot_with_client_and_server_tracks() {
    let user = create_user(PgServer::shared(), "fr_usr1");
    let dir = flight_dir("usr1");
    let config = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set("flight_recorder", flight(&dir, json!({})));
    let mut proxy = ChildProxy::start(&config, "flightusr1");
    let mut client = connect(proxy.addr, &user);
    assert_eq!(client.query_column("SELECT 1").unwrap(), ["1"]);
    let pid = client.key.as_ref().unwrap().0;
    assert!(process::signal(proxy.pid(), "USR1"));
    let written = wait_files(&dir, "signal", 1);
    let trace = load(&written[0]);
    assert_eq!(trace["displayTimeUnit"], "ms");
    assert_eq!(trace["otherData"]["trigger"], "signal");
    let clients = tracks(&trace, "clients");
    assert!(
        clients
            .iter()
            .any(|t| t.starts_with(&format!("client {pid}"))),
        "{clients:?}"
    );
    let servers = tracks(&trace, "servers");
    assert!(
        servers.iter().any(|t| t.starts_with("server r")),
        "{servers:?}"
    );
    // The client's states are slices on its track.
    let track = clients
        .iter()
        // The harness's readiness probe was a session too (its pid may be the same).
        .find(|t| {
            t.starts_with(&format!("client {pid}"))
                && t.contains(user.name)
                && !t.ends_with("queries")
        })
        .unwrap();
    let states: Vec<&str> = on_track(&trace, track)
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"active"), "{states:?} in {trace}");
    // Still serving, and a second signal makes a second file (no cooldown for signals).
    assert_eq!(client.query_column("SELECT 2").unwrap(), ["2"]);
    std::thread::sleep(Duration::from_millis(5));
    assert!(process::signal(proxy.pid(), "USR1"));
    wait_files(&dir, "signal", 2);
    assert!(proxy.wait_exit(Duration::from_millis(10)).is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigusr1_with_on_signal_off_writes_nothing_and_keeps_serving() {
    let user = create_user(PgServer::shared(), "fr_nosig");
    let dir = flight_dir("nosig");
    let config = ProxyConfig::new(PgServer::shared()).user(&user).set(
        "flight_recorder",
        flight(&dir, json!({"triggers": {"on_signal": false}})),
    );
    let mut proxy = ChildProxy::start(&config, "flightnosig");
    let mut client = connect(proxy.addr, &user);
    assert!(process::signal(proxy.pid(), "USR1"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(proxy.wait_exit(Duration::from_millis(10)).is_none());
    assert_eq!(client.query_column("SELECT 1").unwrap(), ["1"]);
    assert!(files(&dir, "signal").is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn periodic_snapshots_follow_a_reload() {
    let user = create_user(PgServer::shared(), "fr_periodic");
    let dir = flight_dir("periodic");
    let config = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set("flight_recorder", flight(&dir, json!({})));
    let mut json = config.json().clone();
    let proxy = config.start();
    std::thread::sleep(Duration::from_millis(200));
    assert!(files(&dir, "periodic").is_empty(), "no schedule yet");
    // A reload sets one: applied at once, no restart needed.
    json["flight_recorder"]["periodic_interval"] = json!("100ms");
    let outcome = proxy.reload(&json).unwrap();
    assert!(outcome.restart_needed.is_empty(), "{outcome:?}");
    let written = wait_files(&dir, "periodic", 2);
    assert_eq!(load(&written[1])["otherData"]["trigger"], "periodic");
    // Removing the section needs a restart: the recorder stays.
    let mut without = json.clone();
    without.as_object_mut().unwrap().remove("flight_recorder");
    let outcome = proxy.reload(&without).unwrap();
    assert_eq!(outcome.restart_needed, ["flight_recorder"]);
    let before = files(&dir, "periodic").len();
    wait_files(&dir, "periodic", before + 1);
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http_snapshot_answers_the_trace_and_status_counts_it() {
    let user = create_user(PgServer::shared(), "fr_http");
    let dir = flight_dir("http");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set("prometheus", json!({ "listen": metrics.to_string() }))
        .set("flight_recorder", flight(&dir, json!({})))
        .start();
    let mut client = connect(proxy.addr, &user);
    client.query_column("SELECT 1").unwrap();
    let (status, body) = get(metrics, "/debug/flight-recorder/snapshot");
    assert_eq!(status, 200, "{body}");
    let trace: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(trace["otherData"]["trigger"], "http");
    let written = wait_files(&dir, "http", 1);
    assert_eq!(load(&written[0]), trace, "the file holds what was answered");
    let (status, body) = get(metrics, "/debug/flight-recorder/status");
    assert_eq!(status, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["snapshots"]["http"], 1);
    assert!(status["events"].as_u64().unwrap() > 0, "{status}");
    assert!(status["bytes"].as_u64().unwrap() <= 10 << 20, "{status}");
    assert!(
        status["last_snapshot"]["path"]
            .as_str()
            .unwrap()
            .ends_with("-http.json"),
        "{status}"
    );
    let (_, text) = get(metrics, "/metrics");
    assert!(
        text.contains("pglink_flight_recorder_snapshots_total{trigger=\"http\"} 1"),
        "{text}"
    );
    assert!(text.contains("pglink_flight_recorder_bytes "), "{text}");
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_a_recorder_the_endpoints_say_so() {
    let user = create_user(PgServer::shared(), "fr_none");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set("prometheus", json!({ "listen": metrics.to_string() }))
        .start();
    assert_eq!(get(metrics, "/debug/flight-recorder/snapshot").0, 404);
    assert_eq!(get(metrics, "/debug/flight-recorder/status").0, 404);
    assert!(proxy.handle().flight_recorder_snapshot().is_err());
}

// The tests below need the engine to emit logins, statements, transactions and errors
// (main's "Events emitted" commit); the ones above need only the state changes.

#[test]
fn api_snapshot_shows_logins_transactions_and_statements() {
    let user = create_user(PgServer::shared(), "fr_api");
    let dir = flight_dir("api");
    let proxy = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set("flight_recorder", flight(&dir, json!({})))
        .start();
    let mut client = connect(proxy.addr, &user);
    client.query_column("BEGIN").unwrap();
    client.query_column("SELECT 42").unwrap();
    client.query_column("COMMIT").unwrap();
    let pid = client.key.as_ref().unwrap().0;
    let snapshot = proxy.handle().flight_recorder_snapshot().unwrap();
    assert!(snapshot.path.ends_with(snapshot.path.file_name().unwrap()));
    assert!(snapshot.path.to_str().unwrap().ends_with("-api.json"));
    let trace = load(&snapshot.path);
    let label = format!("client {pid} {}@{TEST_DATABASE}", user.name);
    let states = on_track(&trace, &label);
    assert!(states.iter().any(|e| e["name"] == "login"), "{states:?}");
    let queries = on_track(&trace, &format!("{label} queries"));
    let slice = |name: &str| {
        queries
            .iter()
            .find(|e| e["ph"] == "X" && e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} slice in {queries:?}"))
    };
    let (tx, select) = (slice("transaction"), slice("SELECT 1"));
    let (tx_start, tx_end) = (
        tx["ts"].as_f64().unwrap(),
        tx["ts"].as_f64().unwrap() + tx["dur"].as_f64().unwrap(),
    );
    let at = select["ts"].as_f64().unwrap();
    assert!(tx_start <= at && at <= tx_end, "{tx} {select}");
    assert!(
        queries
            .iter()
            .any(|e| e["ph"] == "i" && e["name"] == "Query")
    );
    // No SQL text anywhere.
    assert!(!snapshot.json.contains("SELECT 42"));
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_slow_statement_triggers_one_snapshot_per_cooldown() {
    let user = create_user(PgServer::shared(), "fr_slow");
    let dir = flight_dir("slow");
    let proxy = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set(
            "flight_recorder",
            flight(
                &dir,
                json!({"triggers": {"on_slow_query_ms": 150, "cooldown": "60s"}}),
            ),
        )
        .start();
    let mut client = connect(proxy.addr, &user);
    client.query_column("SELECT 1").unwrap();
    assert!(
        files(&dir, "slow_query").is_empty(),
        "fast statements do not trigger"
    );
    client.query_column("SELECT pg_sleep(0.2)").unwrap();
    let written = wait_files(&dir, "slow_query", 1);
    let trace = load(&written[0]);
    let pid = client.key.as_ref().unwrap().0;
    let label = format!("client {pid} {}@{TEST_DATABASE} queries", user.name);
    let slow = on_track(&trace, &label)
        .into_iter()
        .find(|e| {
            e["ph"] == "X" && e["name"] == "SELECT 1" && e["dur"].as_f64().unwrap() >= 150_000.0
        })
        .cloned();
    assert!(slow.is_some(), "the slow statement is in the trace");
    // Within the cooldown another slow statement makes none; a manual snapshot still works.
    client.query_column("SELECT pg_sleep(0.2)").unwrap();
    proxy.handle().flight_recorder_snapshot().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(files(&dir, "slow_query").len(), 1);
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_protocol_error_triggers_a_snapshot_once_per_cooldown() {
    let user = create_user(PgServer::shared(), "fr_error");
    let dir = flight_dir("error");
    let proxy = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set(
            "flight_recorder",
            flight(
                &dir,
                json!({"triggers": {"on_error": true, "cooldown": "60s"}}),
            ),
        )
        .start();
    // A server's error (division by zero) is no trigger.
    let mut fine = connect(proxy.addr, &user);
    assert!(fine.query_column("SELECT 1/0").is_err());
    // A message whose length is less than its own length field: a protocol violation.
    for _ in 0..2 {
        let mut broken = connect(proxy.addr, &user);
        broken.send(b"Q\x00\x00\x00\x02");
        let _ = broken.read();
    }
    let written = wait_files(&dir, "error", 1);
    let trace = load(&written[0]);
    let errors: Vec<&Value> = trace_events(&trace)
        .iter()
        .filter(|e| e["ph"] == "i" && e["name"] == "error 08P01")
        .collect();
    assert!(
        errors.iter().any(|e| e["args"]["origin"] == "protocol"),
        "{errors:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        files(&dir, "error").len(),
        1,
        "the cooldown holds the second one back"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}

/// With tracing on too, both get the events they want (through one `Observers` per engine).
#[cfg(feature = "otel")]
#[test]
fn tracing_and_the_recorder_both_see_the_statements() {
    use support::otlp::{OtlpReceiver, Protocol};
    let receiver = OtlpReceiver::start(Protocol::Http);
    let user = create_user(PgServer::shared(), "fr_otel");
    let dir = flight_dir("otel");
    let proxy = ProxyConfig::new(PgServer::shared())
        .user(&user)
        .set("flight_recorder", flight(&dir, json!({})))
        .set(
            "opentelemetry",
            json!({
                "enabled": true,
                "otlp_endpoint": receiver.endpoint(),
                "otlp_protocol": "http",
                "sampling_rate": 1.0,
                "traceparent_sql_regex": true,
            }),
        )
        .start();
    let mut client = connect(proxy.addr, &user);
    client.query_column("SELECT 7").unwrap();
    assert!(!receiver.wait_for(1, Duration::from_secs(10)).is_empty());
    let snapshot = proxy.handle().flight_recorder_snapshot().unwrap();
    let trace = load(&snapshot.path);
    let pid = client.key.as_ref().unwrap().0;
    let label = format!("client {pid} {}@{TEST_DATABASE} queries", user.name);
    assert!(
        on_track(&trace, &label)
            .iter()
            .any(|e| e["ph"] == "X" && e["name"] == "SELECT 1"),
        "{trace}"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}
