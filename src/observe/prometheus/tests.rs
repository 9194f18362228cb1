use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backend::Target;
use crate::client::statements::Registry;
use crate::client::users::UserTable;
use crate::client::{AuthMethod, ClientTls, DatabaseContext, SessionConfig};
use crate::pool::{Credentials, Database, Pool, PoolSettings};
use crate::protocol::SqlState;

/// Two reactors; database `app` (users alice and bob, pool_max_conns 7) and database
/// `we"ird` (user carol).
fn shared() -> Arc<Shared> {
    let settings = |max| PoolSettings {
        max_conns: max,
        min_idle: 0,
        acquire_timeout: Duration::from_secs(1),
        max_lifetime: None,
        lifetime_jitter: None,
        max_idle_time: None,
        health_check_period: None,
        statement_cache_capacity: 8,
    };
    let context = || {
        Arc::new(DatabaseContext {
            registry: Registry::new(8, 8),
            track_extra: Vec::new(),
            overrides: Vec::new(),
            shared_params: Default::default(),
            cache_unnamed: false,
        })
    };
    let mut databases = Vec::new();
    let mut pools = Vec::new();
    for (id, name, max, users) in [
        (0, "app", 7, &["alice", "bob"][..]),
        (1, "we\"ird", 1, &["carol"][..]),
    ] {
        let mut db = Database::new(
            id,
            name.into(),
            settings(max),
            Arc::new(Target::for_tests()),
            context(),
        );
        for user in users {
            db.pools.push(pools.len());
            pools.push(Arc::new(Pool::new(
                pools.len(),
                id,
                Credentials {
                    user: (*user).into(),
                    password: "pw".into(),
                },
                2,
            )));
        }
        databases.push(db);
    }
    let users = UserTable {
        databases: Default::default(),
        scram_iterations: 4096,
        mock_secret: [0; 32],
        console: Default::default(),
    };
    let session = SessionConfig {
        auth_method: AuthMethod::Scram,
        tls: ClientTls::Optional,
        channel_binding: None,
        traceparent_parameter: "traceparent".into(),
    };
    let context = crate::engine::Context::new(
        databases,
        pools,
        session,
        100,
        Duration::from_secs(10),
        1 << 20,
        2,
        std::time::Instant::now(),
    );
    Arc::new(Shared::new(
        context,
        users,
        None,
        crate::server::Verifiers::none(),
    ))
}

/// The exposition's sample lines (no comments), and the whole text.
fn scrape(shared: &Arc<Shared>) -> (Vec<String>, String) {
    let text = render(&registry(shared.clone()));
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    (samples, text)
}

fn has(samples: &[String], line: &str) -> bool {
    samples.iter().any(|s| s == line)
}

#[test]
fn counters_are_summed_over_reactors_with_pool_labels() {
    let shared = shared();
    let (r0, r1) = (&shared.stats()[0], &shared.stats()[1]);
    r0.pool(0).unwrap().transactions.add(3);
    r0.pool(0)
        .unwrap()
        .transaction_time
        .observe(std::time::Duration::from_millis(3));
    r1.pool(0).unwrap().server_errors[crate::observe::metrics::sqlstate_class_index(
        crate::protocol::SqlState::DIVISION_BY_ZERO,
    )]
    .add(2);
    r1.pool(0).unwrap().transactions.add(2);
    r1.pool(1).unwrap().transactions.inc();
    r0.pool(0).unwrap().acquire_timeouts.inc();
    r0.clients_accepted.add(4);
    r1.clients_accepted.add(1);
    r1.clients_refused[RefuseReason::TooManyClients.index()].inc();
    r0.pool(0).unwrap().closed(CloseReason::IdleTimeout);
    r1.pool(0).unwrap().closed(CloseReason::IdleTimeout);
    r0.pool(1).unwrap().pinned(PinReason::AdvisoryLock);
    r1.pool(1).unwrap().pinned(PinReason::AdvisoryLock);
    r1.pool(1).unwrap().unpinned(PinReason::AdvisoryLock);
    r0.database(0).unwrap().auth_failures.add(2);
    r0.error_sent(SqlState::TOO_MANY_CONNECTIONS);
    r1.error_sent(SqlState::INVALID_PASSWORD);
    r0.cancels[CancelOutcome::Forwarded.index()].inc();
    r1.client_bytes_received.add(100);
    r0.wakeups.add(9);
    let (s, text) = scrape(&shared);
    for line in [
        r#"pglink_pool_transactions_total{database="app",user="alice"} 5"#,
        r#"pglink_pool_transactions_total{database="app",user="bob"} 1"#,
        r#"pglink_pool_transactions_total{database="we\"ird",user="carol"} 0"#,
        r#"pglink_pool_acquire_timeouts_total{database="app",user="alice"} 1"#,
        "pglink_clients_accepted_total 5",
        r#"pglink_clients_refused_total{reason="too_many_clients"} 1"#,
        r#"pglink_clients_refused_total{reason="shutting_down"} 0"#,
        r#"pglink_pool_server_closes_total{database="app",user="alice",reason="idle_timeout"} 2"#,
        r#"pglink_pool_server_closes_total{database="app",user="alice",reason="lifetime"} 0"#,
        r#"pglink_pool_pinned_sessions_total{database="app",user="bob",reason="advisory_lock"} 2"#,
        r#"pglink_pool_pinned_sessions{database="app",user="bob",reason="advisory_lock"} 1"#,
        r#"pglink_pool_pinned_sessions{database="app",user="bob",reason="listen"} 0"#,
        r#"pglink_client_auth_failures_total{database="app"} 2"#,
        r#"pglink_errors_sent_total{sqlstate_class="53"} 1"#,
        r#"pglink_errors_sent_total{sqlstate_class="28"} 1"#,
        r#"pglink_pool_server_errors_total{database="app",user="alice",class="22"} 2"#,
        r#"pglink_pool_transaction_duration_seconds_count{database="app",user="alice"} 1"#,
        r#"pglink_pool_transaction_duration_seconds_bucket{database="app",user="alice",le="0.0025"} 0"#,
        r#"pglink_pool_transaction_duration_seconds_bucket{database="app",user="alice",le="0.005"} 1"#,
        r#"pglink_cancel_requests_total{outcome="forwarded"} 1"#,
        r#"pglink_cancel_requests_total{outcome="idle"} 0"#,
        r#"pglink_reactor_bytes_total{reactor="1",peer="client",direction="received"} 100"#,
        r#"pglink_reactor_bytes_total{reactor="0",peer="client",direction="received"} 0"#,
        r#"pglink_reactor_wakeups_total{reactor="0"} 9"#,
        r#"pglink_database_server_connections_max{database="app"} 7"#,
        "pglink_reactors_running 0",
    ] {
        assert!(has(&s, line), "missing {line}\n{text}");
    }
    assert!(
        !text.contains(r#"sqlstate_class="08""#),
        "classes never sent are left out"
    );
    assert!(
        !text.contains(r#"class="42""#),
        "classes never seen are left out"
    );
    for (name, kind) in [
        ("pglink_pool_transactions_total", "counter"),
        ("pglink_clients_connected", "gauge"),
        ("pglink_pool_server_connections", "gauge"),
        ("pglink_pool_acquire_wait_seconds", "histogram"),
        ("pglink_pool_transaction_duration_seconds", "histogram"),
        ("pglink_pool_server_errors_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}\n{text}"
        );
    }
    assert!(text.contains("# HELP pglink_pool_clients_waiting Clients waiting"));
}

#[test]
fn acquire_wait_histogram_has_cumulative_buckets_in_seconds() {
    let shared = shared();
    let (r0, r1) = (&shared.stats()[0], &shared.stats()[1]);
    r0.pool(0).unwrap().acquire_wait.observe(Duration::ZERO);
    r0.pool(0)
        .unwrap()
        .acquire_wait
        .observe(Duration::from_millis(3));
    r1.pool(0)
        .unwrap()
        .acquire_wait
        .observe(Duration::from_millis(70));
    r1.pool(0)
        .unwrap()
        .acquire_wait
        .observe(Duration::from_secs(9));
    let (s, text) = scrape(&shared);
    let bucket = |le: &str, n: u64| {
        format!(
            r#"pglink_pool_acquire_wait_seconds_bucket{{database="app",user="alice",le="{le}"}} {n}"#
        )
    };
    for line in [
        bucket("0.00005", 1),
        bucket("0.001", 1),
        bucket("0.0025", 1),
        bucket("0.005", 2),
        bucket("0.05", 2),
        bucket("0.1", 3),
        bucket("5", 3),
        bucket("+Inf", 4),
        r#"pglink_pool_acquire_wait_seconds_count{database="app",user="alice"} 4"#.into(),
        r#"pglink_pool_acquire_wait_seconds_sum{database="app",user="alice"} 9.073"#.into(),
        r#"pglink_pool_acquire_wait_seconds_count{database="app",user="bob"} 0"#.into(),
    ] {
        assert!(has(&s, &line), "missing {line}\n{text}");
    }
    let buckets = s
        .iter()
        .filter(|l| {
            l.starts_with(r#"pglink_pool_acquire_wait_seconds_bucket{database="app",user="alice""#)
        })
        .count();
    assert_eq!(buckets, ACQUIRE_WAIT_BUCKETS + 1, "every bound plus +Inf");
}

const ACQUIRE_WAIT_BUCKETS: usize = crate::observe::metrics::ACQUIRE_WAIT_BOUNDS_US.len();

#[test]
fn gauges_show_server_connections_by_state() {
    let shared = shared();
    let p = shared.stats()[1].pool(2).unwrap();
    p.backend_moved(None, Some(BackendState::Opening));
    p.backend_moved(None, Some(BackendState::Opening));
    p.backend_moved(Some(BackendState::Opening), Some(BackendState::InUse));
    p.clients.add(3);
    shared.ctx().pools[2].set_waiting(1, 2, Some(Duration::from_millis(1)));
    let (s, text) = scrape(&shared);
    for line in [
        r#"pglink_pool_server_connections{database="we\"ird",user="carol",state="opening"} 1"#,
        r#"pglink_pool_server_connections{database="we\"ird",user="carol",state="in_use"} 1"#,
        r#"pglink_pool_server_connections{database="we\"ird",user="carol",state="idle"} 0"#,
        r#"pglink_pool_clients{database="we\"ird",user="carol"} 3"#,
        r#"pglink_pool_clients_waiting{database="we\"ird",user="carol"} 2"#,
    ] {
        assert!(has(&s, line), "missing {line}\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&pools_json(&shared)).unwrap();
    let carol = &json["pools"][2];
    assert_eq!(carol["database"], "we\"ird");
    assert_eq!(carol["user"], "carol");
    assert_eq!(carol["clients"], 3);
    assert_eq!(carol["clients_waiting"], 2);
    assert_eq!(carol["pool_max_conns"], 1);
    assert_eq!(
        carol["backends"],
        serde_json::json!({"opening": 1, "idle": 0, "in_use": 1, "draining": 0})
    );
    assert_eq!(json["pools"].as_array().unwrap().len(), 3);
}

#[test]
fn prepared_statement_registry_counts_per_database() {
    let shared = shared();
    let registry = &shared.ctx().databases[0].context.registry;
    let key = |query: &'static [u8]| crate::client::statements::Key {
        query,
        param_types: &[],
        search_path: None,
    };
    registry.get_or_insert(&key(b"SELECT 1"));
    registry.get_or_insert(&key(b"SELECT 1"));
    registry.get_or_insert(&key(b"SELECT 2"));
    let (s, text) = scrape(&shared);
    for line in [
        r#"pglink_prepared_statements{database="app"} 2"#,
        r#"pglink_prepared_statement_hits_total{database="app"} 1"#,
        r#"pglink_prepared_statement_misses_total{database="app"} 2"#,
        r#"pglink_prepared_statement_evictions_total{database="app"} 0"#,
        r#"pglink_prepared_statements{database="we\"ird"} 0"#,
    ] {
        assert!(has(&s, line), "missing {line}\n{text}");
    }
}

#[test]
fn every_family_is_described_exported_and_documented() {
    let shared = shared();
    // CPU time needs a real thread id: this one's.
    if let Some(tid) = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse().ok())
    {
        shared.stats()[0].set_thread_id(tid);
    }
    shared.stats()[0].error_sent(SqlState::ADMIN_SHUTDOWN);
    // The recorder's families are there when it is configured.
    let flight = crate::config::FlightRecorderConfig {
        min_age: Duration::from_secs(10),
        max_bytes: 1 << 20,
        output_dir: std::env::temp_dir(),
        periodic_interval: Duration::ZERO,
        triggers: Default::default(),
    };
    shared.set_flight(crate::observe::flight::FlightRecorder::new(&flight, 2));
    if let Some(p) = shared.stats()[0].pool(0) {
        p.server_errors[crate::observe::metrics::sqlstate_class_index(SqlState::DIVISION_BY_ZERO)]
            .inc();
    }
    let collector = ProxyCollector::new(shared.clone());
    assert_eq!(
        collector.desc().len(),
        METRICS.len(),
        "every name and label is valid"
    );
    let (_, text) = scrape(&shared);
    let readme = include_str!("../../../README.md");
    for meta in METRICS {
        if meta.name == REACTOR_CPU.name && !cfg!(target_os = "linux") {
            continue;
        }
        let kind = format!("{:?}", meta.kind).to_lowercase();
        assert!(
            text.contains(&format!("# TYPE {} {kind}\n", meta.name)),
            "{} not exported\n{text}",
            meta.name
        );
        assert!(
            readme.contains(&format!("`{}`", meta.name)),
            "{} is not in the README's metric list",
            meta.name
        );
    }
    let names: std::collections::HashSet<&str> = METRICS.iter().map(|m| m.name).collect();
    assert_eq!(names.len(), METRICS.len(), "unique names");
}

#[test]
fn cpu_time_of_this_thread_is_readable_on_linux() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let tid: u64 = std::fs::read_link("/proc/thread-self")
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Spin until the thread has used 10 ms of CPU, however busy the machine is (a wall-time
    // spin gets less CPU when other work shares the cores).
    let spin = std::time::Instant::now();
    let mut cpu = Duration::ZERO;
    while cpu < Duration::from_millis(10) && spin.elapsed() < Duration::from_secs(10) {
        cpu = thread_cpu_time(tid).expect("schedstat or stat");
    }
    assert!(
        cpu >= Duration::from_millis(10),
        "{cpu:?} after {:?}",
        spin.elapsed()
    );
    assert_eq!(thread_cpu_time(u64::MAX), None);
}
