//! The metrics endpoint: counters moved by real sessions (transactions, an acquire timeout, a
//! pinned session, prepared statements, a failed login, a cancel), /healthz, /debug/pools,
//! and the endpoint going away with the server.
#![cfg(feature = "metrics")]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use support::http_get as get;
use support::wire::{PgError, WireClient, send_cancel};
use support::*;

/// One scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    fn take(addr: SocketAddr) -> Scrape {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        Scrape(body)
    }

    /// The value of one series, written as in the exposition (`name{labels}`).
    fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no series {series} in\n{}", self.0))
    }

    /// The sum over every series of `name` whose labels contain `labels`.
    fn sum(&self, name: &str, labels: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// This test's pool in /debug/pools.
fn debug_pool(addr: SocketAddr, user: &str) -> Value {
    let (status, body) = get(addr, "/debug/pools");
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user"] == user)
        .cloned()
        .unwrap_or_else(|| panic!("no pool of {user} in {body}"))
}

fn parse_sync(name: &[u8], sql: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    pglink::protocol::frontend::parse(&mut m, name, sql, &[]);
    pglink::protocol::frontend::sync(&mut m);
    m
}

#[test]
fn counters_follow_sessions_and_the_endpoint_stops_with_the_server() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "metrics");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(300),
        )
        .set("prometheus", json!({"listen": "127.0.0.1:0"}))
        .start();
    let metrics = proxy.metrics_addr().expect("a metrics endpoint");
    let pw = Proxy::password(&user);
    let pool = format!(r#"database="{TEST_DATABASE}",user="{}""#, user.name);
    let series = |name: &str| format!("{name}{{{pool}}}");
    let with = |name: &str, label: &str| format!("{name}{{{pool},{label}}}");
    let database = format!(r#"{{database="{TEST_DATABASE}"}}"#);

    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(metrics, "/nothing-here").0, 404);
    let start = Scrape::take(metrics);
    assert_eq!(start.value("pglink_clients_connected"), 0.0);
    assert_eq!(start.value("pglink_reactors_running"), 2.0);
    assert!(
        start
            .0
            .contains("# TYPE pglink_pool_acquire_wait_seconds histogram")
    );

    // Four transactions: three single statements and one block.
    let mut a = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    for i in 1..=3 {
        assert_eq!(
            a.query_column(&format!("SELECT {i}")).unwrap(),
            [i.to_string()]
        );
    }
    for sql in ["BEGIN", "SELECT 4", "COMMIT"] {
        a.query_column(sql).unwrap();
    }
    let s = Scrape::take(metrics);
    assert_eq!(s.value(&series("pglink_pool_transactions_total")), 4.0);
    assert_eq!(s.value(&series("pglink_client_logins_total")), 1.0);
    assert_eq!(s.value(&series("pglink_pool_clients")), 1.0);
    assert_eq!(s.value("pglink_clients_connected"), 1.0);
    assert_eq!(s.value("pglink_clients_accepted_total"), 1.0);
    assert_eq!(
        s.value(&series("pglink_pool_server_connect_attempts_total")),
        1.0
    );
    assert_eq!(
        s.value(&series("pglink_pool_server_connect_failures_total")),
        0.0
    );
    assert_eq!(
        s.value(&with("pglink_pool_server_connections", r#"state="idle""#)),
        1.0
    );
    assert_eq!(
        s.value(&with("pglink_pool_server_connections", r#"state="in_use""#)),
        0.0
    );
    // Every transaction's duration, the block's as one.
    assert_eq!(
        s.value(&series("pglink_pool_transaction_duration_seconds_count")),
        4.0
    );
    assert!(s.value(&series("pglink_pool_transaction_duration_seconds_sum")) > 0.0);
    // And every statement's: the block's three count one each.
    assert_eq!(
        s.value(&series("pglink_pool_query_duration_seconds_count")),
        6.0
    );
    assert_eq!(
        s.value(&with(
            "pglink_pool_query_duration_seconds_bucket",
            r#"le="+Inf""#
        )),
        6.0
    );
    assert!(s.value(&series("pglink_pool_query_duration_seconds_sum")) > 0.0);
    // The login that learnt the server's parameters, then one per transaction.
    let waits = s.value(&series("pglink_pool_acquire_wait_seconds_count"));
    assert_eq!(waits, 5.0);
    assert_eq!(
        s.value(&with(
            "pglink_pool_acquire_wait_seconds_bucket",
            r#"le="+Inf""#
        )),
        waits
    );
    assert!(
        s.sum(
            "pglink_reactor_bytes_total",
            r#"peer="client",direction="received""#
        ) > 0.0
    );
    assert!(
        s.sum(
            "pglink_reactor_bytes_total",
            r#"peer="server",direction="sent""#
        ) > 0.0
    );
    assert!(s.sum("pglink_reactor_wakeups_total", "") > 0.0);
    // Errors the server returned, by SQLSTATE class: none yet, then a division by zero and
    // an unknown table.
    assert_eq!(s.sum("pglink_pool_server_errors_total", &pool), 0.0);
    assert!(a.query_column("SELECT 1/0").unwrap_err().contains("22012"));
    assert!(
        a.query_column("SELECT * FROM no_such_table")
            .unwrap_err()
            .contains("42P01")
    );
    assert!(a.query_column("SELECT 2/0").unwrap_err().contains("22012"));
    let s = Scrape::take(metrics);
    assert_eq!(
        s.value(&with("pglink_pool_server_errors_total", r#"class="22""#)),
        2.0
    );
    // Failed statements are timed too.
    assert_eq!(
        s.value(&series("pglink_pool_query_duration_seconds_count")),
        9.0
    );
    assert_eq!(
        s.value(&with("pglink_pool_server_errors_total", r#"class="42""#)),
        1.0
    );

    // An acquire timeout: A holds the only server connection while B waits.
    a.query_column("BEGIN").unwrap();
    let mut b = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    let mut query = Vec::new();
    pglink::protocol::frontend::query(&mut query, b"SELECT 5");
    b.send(&query);
    wait_until("B waits", Duration::from_secs(5), || {
        debug_pool(metrics, user.name)["clients_waiting"] == 1
    });
    let seen = debug_pool(metrics, user.name);
    assert_eq!(seen["database"], TEST_DATABASE);
    assert_eq!(seen["pool_max_conns"], 1);
    assert_eq!(seen["clients"], 2);
    assert_eq!(
        seen["backends"],
        json!({"opening": 0, "idle": 0, "in_use": 1, "draining": 0})
    );
    let answer = b.until_ready().unwrap();
    let error = answer.iter().find(|m| m.tag == b'E').expect("an ERROR");
    assert_eq!(PgError::decode(error.tag, &error.body).code, "53300");
    a.query_column("COMMIT").unwrap();
    let s = Scrape::take(metrics);
    assert_eq!(s.value(&series("pglink_pool_acquire_timeouts_total")), 1.0);
    assert_eq!(
        s.value(r#"pglink_errors_sent_total{sqlstate_class="53"}"#),
        1.0
    );
    // The three failed statements were transactions too.
    assert_eq!(s.value(&series("pglink_pool_transactions_total")), 8.0);

    // A pinned session: counted while it lasts, and its server connection is closed after.
    let key = 7_000_000 + i64::from(std::process::id() % 1_000_000);
    a.query_column(&format!("SELECT pg_advisory_lock({key})"))
        .unwrap();
    let s = Scrape::take(metrics);
    let pinned = r#"reason="advisory_lock""#;
    assert_eq!(
        s.value(&with("pglink_pool_pinned_sessions_total", pinned)),
        1.0
    );
    assert_eq!(s.value(&with("pglink_pool_pinned_sessions", pinned)), 1.0);
    assert_eq!(
        s.value(&with("pglink_pool_pinned_sessions", r#"reason="listen""#)),
        0.0
    );
    assert_eq!(
        s.value(&with("pglink_pool_server_connections", r#"state="in_use""#)),
        1.0
    );
    assert_eq!(s.value(&series("pglink_pool_transactions_total")), 9.0);
    a.conn.terminate();
    wait_until(
        "the pinned connection is closed",
        Duration::from_secs(5),
        || {
            let s = Scrape::take(metrics);
            s.value(&with(
                "pglink_pool_server_closes_total",
                r#"reason="pinned""#,
            )) == 1.0
                && s.value(&with("pglink_pool_pinned_sessions", pinned)) == 0.0
                && s.value(&series("pglink_pool_clients")) == 1.0
        },
    );
    assert_eq!(b.query_column("SELECT 6").unwrap(), ["6"]);
    let s = Scrape::take(metrics);
    assert_eq!(
        s.value(&series("pglink_pool_server_connect_attempts_total")),
        2.0
    );
    assert_eq!(s.sum("pglink_pool_server_closes_total", &pool), 1.0);

    // Prepared statements: a new text is a miss, the same text from another client a hit.
    b.send(&parse_sync(b"s1", b"SELECT 42"));
    b.until_ready().unwrap();
    let mut c = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    c.send(&parse_sync(b"mine", b"SELECT 42"));
    c.until_ready().unwrap();
    let s = Scrape::take(metrics);
    assert_eq!(
        s.value(&format!("pglink_prepared_statements{database}")),
        1.0
    );
    assert_eq!(
        s.value(&format!("pglink_prepared_statement_misses_total{database}")),
        1.0
    );
    assert_eq!(
        s.value(&format!("pglink_prepared_statement_hits_total{database}")),
        1.0
    );

    // A cancel for an idle session, and a failed login.
    let (pid, secret) = b.key.clone().expect("a cancel key");
    send_cancel(proxy.addr, pid, &secret);
    let err = WireClient::connect(proxy.addr, user.name, "wrong", TEST_DATABASE)
        .err()
        .expect("a wrong password fails");
    assert!(err.contains("28P01"), "{err}");
    wait_until("the cancel is counted", Duration::from_secs(5), || {
        Scrape::take(metrics).value(r#"pglink_cancel_requests_total{outcome="idle"}"#) == 1.0
    });
    let s = Scrape::take(metrics);
    assert_eq!(
        s.value(&format!("pglink_client_auth_failures_total{database}")),
        1.0
    );
    assert_eq!(
        s.value(r#"pglink_errors_sent_total{sqlstate_class="28"}"#),
        1.0
    );
    assert_eq!(s.value(&series("pglink_client_logins_total")), 3.0);
    assert_eq!(
        s.value(r#"pglink_cancel_requests_total{outcome="forwarded"}"#),
        0.0
    );

    // The endpoint goes away with the server.
    drop((b, c));
    proxy.shutdown();
    wait_until("the metrics port is closed", Duration::from_secs(5), || {
        TcpStream::connect_timeout(&metrics, Duration::from_millis(200)).is_err()
    });
}

/// No secret is ever served: neither the configured passwords nor one a client tried, in
/// the metrics, /debug/pools, the flight recorder's status and snapshot, or the admin
/// console's SHOW commands, after sessions that logged in, failed to, and ran queries.
#[test]
fn no_secret_appears_in_metrics_debug_endpoints_or_the_console() {
    let pg = PgServer::shared();
    let admin = proxy::create_user(pg, "secrets_adm");
    let app = proxy::create_user(pg, "secrets_app");
    let dir = std::env::temp_dir().join(format!("pglink-secrets-flight-{}", std::process::id()));
    let proxy = ProxyConfig::new(pg)
        .user(&admin)
        .user(&app)
        .set("admin_users", json!([admin.name]))
        .set("prometheus", json!({"listen": "127.0.0.1:0"}))
        .set(
            "flight_recorder",
            json!({"output_dir": dir.to_str().unwrap()}),
        )
        .start();
    let metrics = proxy.metrics_addr().unwrap();
    let wrong = "Zq7-tried-Pangolin";
    let mut a =
        WireClient::connect(proxy.addr, app.name, Proxy::password(&app), TEST_DATABASE).unwrap();
    a.query_column("SELECT 1").unwrap();
    assert!(WireClient::connect(proxy.addr, app.name, wrong, TEST_DATABASE).is_err());
    let mut served = String::new();
    for path in [
        "/metrics",
        "/debug/pools",
        "/debug/flight-recorder/status",
        "/debug/flight-recorder/snapshot",
    ] {
        let (status, body) = get(metrics, path);
        assert_eq!(status, 200, "{path}: {body}");
        served.push_str(&body);
    }
    let console = format!(
        "host=127.0.0.1 port={} user={} dbname=pglink sslmode=disable",
        proxy.port(),
        admin.name
    );
    for show in [
        "SHOW CONFIG",
        "SHOW DATABASES",
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW STATS",
    ] {
        let out = run_psql(&console, Some(Proxy::password(&admin)), show)
            .unwrap_or_else(|e| panic!("{show}: {e}"));
        served.push_str(&out);
    }
    assert!(
        served.contains(app.name),
        "the test looked at the wrong output"
    );
    for secret in [Proxy::password(&app), Proxy::password(&admin), wrong] {
        assert!(!served.contains(secret), "{secret:?} served:\n{served}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
