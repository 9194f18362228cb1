//! The recorder with its thread: snapshots on request, the automatic triggers and their
//! cooldown, reconfiguration. (The ring and the rendering have their own tests, on a
//! virtual clock.)

use std::time::{Duration, Instant};

use super::*;
use crate::config::FlightRecorderTriggers;
use crate::engine::id::ServerId;
use crate::observe::events::{ClientState, StatementEnd};
use crate::protocol::SqlState;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglink-flight-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path) -> FlightRecorderConfig {
    FlightRecorderConfig {
        min_age: Duration::from_secs(10),
        max_bytes: 1 << 20,
        output_dir: dir.to_owned(),
        periodic_interval: Duration::ZERO,
        triggers: FlightRecorderTriggers {
            on_slow_query_ms: 100,
            on_error: true,
            on_signal: true,
            cooldown: Duration::from_secs(3600),
        },
    }
}

fn labels() -> PoolLabels {
    Box::new(|| vec!["alice@db".to_owned()])
}

fn slow(sink: &mut Sink, now: Instant, took: Duration) {
    sink.record(
        now,
        &Event::StatementEnded {
            pid: 5,
            server: ServerId::new(0, 1),
            pool: 0,
            started: now - took,
            end: StatementEnd::Completed,
            tag: b"SELECT 1",
            sqlstate: None,
        },
    );
}

/// Waits (bounded) until `done` holds: the thread handles automatic requests on its own.
fn eventually(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_manual_snapshot_writes_the_merged_rings() {
    let dir = dir("manual");
    let recorder = FlightRecorder::new(&config(&dir), 2);
    let thread = recorder.start(labels()).unwrap();
    let (mut a, mut b) = (recorder.sink(0), recorder.sink(1));
    let now = Instant::now();
    a.record(
        now,
        &Event::Client {
            pid: 1,
            state: ClientState::Idle,
        },
    );
    b.record(
        now,
        &Event::Client {
            pid: 2,
            state: ClientState::Active,
        },
    );
    // Held by the sinks until their reactors are about to wait for I/O.
    assert_eq!(recorder.snapshot(Trigger::Api).unwrap().records, 0);
    a.flush();
    b.flush();
    let snapshot = recorder.snapshot(Trigger::Api).unwrap();
    assert_eq!(snapshot.records, 2);
    let name = snapshot
        .path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        name.starts_with("pglink-flight-") && name.ends_with("-api.json"),
        "{name}"
    );
    let text = std::fs::read_to_string(&snapshot.path).unwrap();
    assert_eq!(text, snapshot.json);
    let trace: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(trace["otherData"]["reactors"], 2);
    assert_eq!(recorder.snapshots(Trigger::Api), 2);
    let status: serde_json::Value = serde_json::from_str(&recorder.status_json()).unwrap();
    assert_eq!(status["events"], 2);
    assert_eq!(status["snapshots"]["api"], 2);
    assert!(
        status["last_snapshot"]["path"]
            .as_str()
            .unwrap()
            .ends_with(&name)
    );
    thread.stop();
    assert!(matches!(
        recorder.snapshot(Trigger::Api),
        Err(SnapshotError::Stopped)
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn slow_statements_trigger_once_per_cooldown() {
    let dir = dir("slow");
    let recorder = FlightRecorder::new(&config(&dir), 1);
    let _thread = recorder.start(labels()).unwrap();
    let mut sink = recorder.sink(0);
    let now = Instant::now();
    // Fast: nothing.
    slow(&mut sink, now, Duration::from_millis(99));
    assert!(!recorder.auto_queued.load(Ordering::Acquire));
    // A storm of slow ones: one snapshot.
    for _ in 0..50 {
        slow(&mut sink, now, Duration::from_millis(100));
    }
    eventually(|| recorder.snapshots(Trigger::SlowQuery) == 1);
    // Within the cooldown the sink does not even ask.
    slow(&mut sink, Instant::now(), Duration::from_secs(1));
    assert!(!recorder.auto_queued.load(Ordering::Acquire));
    // Manual snapshots are not limited.
    recorder.snapshot(Trigger::Http).unwrap();
    recorder.snapshot(Trigger::Http).unwrap();
    assert_eq!(recorder.snapshots(Trigger::Http), 2);
    assert_eq!(recorder.snapshots(Trigger::SlowQuery), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn protocol_and_proxy_errors_trigger_server_errors_do_not() {
    let dir = dir("errors");
    let mut c = config(&dir);
    c.triggers.cooldown = Duration::ZERO;
    let recorder = FlightRecorder::new(&c, 1);
    let _thread = recorder.start(labels()).unwrap();
    let mut sink = recorder.sink(0);
    let error = |origin| Event::Error {
        pid: Some(3),
        server: None,
        origin,
        sqlstate: SqlState::PROTOCOL_VIOLATION,
    };
    sink.record(Instant::now(), &error(ErrorOrigin::Server));
    assert!(!recorder.auto_queued.load(Ordering::Acquire));
    sink.record(Instant::now(), &error(ErrorOrigin::Protocol));
    eventually(|| recorder.snapshots(Trigger::Error) == 1);
    sink.record(Instant::now(), &error(ErrorOrigin::Proxy));
    eventually(|| recorder.snapshots(Trigger::Error) == 2);
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reconfigure_applies_triggers_bounds_and_directory() {
    let first = dir("reconf-a");
    let second = dir("reconf-b");
    let recorder = FlightRecorder::new(&config(&first), 1);
    let _thread = recorder.start(labels()).unwrap();
    let mut sink = recorder.sink(0);
    for pid in 0..100 {
        sink.record(
            Instant::now(),
            &Event::Client {
                pid,
                state: ClientState::Idle,
            },
        );
    }
    let mut c = config(&second);
    c.triggers.on_signal = false;
    c.triggers.on_slow_query_ms = 0;
    c.max_bytes = 10 * std::mem::size_of::<Record>() as u64;
    recorder.reconfigure(&c);
    assert!(matches!(
        recorder.signal(),
        Err(SnapshotError::Disabled(Trigger::Signal))
    ));
    slow(&mut sink, Instant::now(), Duration::from_secs(5));
    assert!(!recorder.auto_queued.load(Ordering::Acquire));
    let snapshot = recorder.snapshot(Trigger::Api).unwrap();
    assert!(snapshot.path.starts_with(&second));
    assert_eq!(snapshot.records, 10);
    assert!(recorder.bytes() <= c.max_bytes + 64);
    let _ = std::fs::remove_dir_all(first);
    let _ = std::fs::remove_dir_all(second);
}

#[test]
fn an_unwritable_directory_is_counted_not_fatal() {
    let base = dir("unwritable");
    std::fs::create_dir_all(&base).unwrap();
    let blocker = base.join("file");
    std::fs::write(&blocker, b"").unwrap();
    let recorder = FlightRecorder::new(&config(&blocker), 1);
    let _thread = recorder.start(labels()).unwrap();
    let e = recorder.snapshot(Trigger::Api).unwrap_err();
    assert!(matches!(e, SnapshotError::File(_)), "{e}");
    assert_eq!(recorder.failures(), 1);
    // Still answering.
    assert!(matches!(
        recorder.snapshot(Trigger::Api),
        Err(SnapshotError::File(_))
    ));
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn periodic_snapshots_follow_the_interval() {
    let dir = dir("periodic");
    let mut c = config(&dir);
    c.periodic_interval = Duration::from_millis(50);
    let recorder = FlightRecorder::new(&c, 1);
    let _thread = recorder.start(labels()).unwrap();
    eventually(|| recorder.snapshots(Trigger::Periodic) >= 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_clients_messages_of_one_instant_make_one_record() {
    let dir = dir("merged");
    let recorder = FlightRecorder::new(&config(&dir), 1);
    let thread = recorder.start(labels()).unwrap();
    let mut sink = recorder.sink(0);
    let now = Instant::now();
    let later = now + Duration::from_millis(1);
    let message = |pid, tag, len| Event::ClientMessage { pid, tag, len };
    // A pipeline's Bind, Execute and Sync: one record.
    for (tag, len) in [(b'B', 30), (b'E', 10), (b'S', 5)] {
        sink.record(now, &message(1, tag, len));
    }
    // Another client's, then the first one's again: a record each.
    sink.record(now, &message(2, b'Q', 20));
    sink.record(now, &message(1, b'Q', 21));
    // The first client's next message, at another instant: a record of its own.
    sink.record(later, &message(1, b'Q', 22));
    // More messages than a record holds: the rest start another one.
    for _ in 0..ring::TAG_LEN + 2 {
        sink.record(later, &message(3, b'd', 100));
    }
    sink.flush();
    let snapshot = recorder.snapshot(Trigger::Api).unwrap();
    assert_eq!(snapshot.records, 6);
    let trace: serde_json::Value = serde_json::from_str(&snapshot.json).unwrap();
    let instants: Vec<(String, u64, String, u64)> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| {
            let args = &e["args"];
            (
                e["name"].as_str().unwrap().to_owned(),
                args["bytes"].as_u64().unwrap(),
                args["type"].as_str().unwrap().to_owned(),
                args["messages"].as_u64().unwrap(),
            )
        })
        .collect();
    let copy = "d".repeat(ring::TAG_LEN);
    let copies = ["CopyData"; ring::TAG_LEN].join(", ");
    assert_eq!(
        instants,
        vec![
            ("Bind, Execute, Sync".into(), 45, "BES".into(), 3),
            ("Query".into(), 20, "Q".into(), 1),
            ("Query".into(), 21, "Q".into(), 1),
            ("Query".into(), 22, "Q".into(), 1),
            (
                copies,
                100 * ring::TAG_LEN as u64,
                copy,
                ring::TAG_LEN as u64
            ),
            ("CopyData, CopyData".into(), 200, "dd".into(), 2),
        ]
    );
    thread.stop();
    let _ = std::fs::remove_dir_all(dir);
}
