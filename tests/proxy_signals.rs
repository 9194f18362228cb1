//! The `pglink` binary and its signals: SIGTERM drains (idle sessions end with FATAL 57P01,
//! open transactions finish, `/healthz` says draining, exit status 0), `shutdown_timeout`
//! bounds the drain, and a second signal exits at once.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::proxy::{ChildProxy, create_user};
use support::wire::WireClient;
use support::*;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn healthz(addr: SocketAddr) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /healthz HTTP/1.1\r\nHost: pglink\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A child pglink for `user` with `shutdown_timeout` and a metrics endpoint; its metrics
/// address.
fn start(user: &TestUser, shutdown_timeout: &str, name: &str) -> (ChildProxy, SocketAddr) {
    let pg = PgServer::shared();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = ProxyConfig::new(pg)
        .user(user)
        .set("shutdown_timeout", json!(shutdown_timeout))
        .set("prometheus", json!({ "listen": metrics.to_string() }));
    (ChildProxy::start(&config, name), metrics)
}

fn connect(proxy: &ChildProxy, user: &TestUser) -> WireClient {
    WireClient::connect(proxy.addr, user.name, Proxy::password(user), TEST_DATABASE).unwrap()
}

#[test]
fn sigterm_ends_idle_sessions_lets_transactions_finish_and_exits_0() {
    let user = create_user(PgServer::shared(), "sig_drain");
    let (mut proxy, metrics) = start(&user, "30s", "sigdrain");
    assert_eq!(healthz(metrics), Some((200, "ok\n".to_owned())));
    let mut idle = connect(&proxy, &user);
    let mut busy = connect(&proxy, &user);
    busy.query_column("BEGIN").unwrap();
    assert!(process::signal(proxy.pid(), "TERM"));
    // The idle session is told why it ends.
    let (severity, code, message) = idle.read().unwrap().error().unwrap();
    assert_eq!(
        (severity.as_str(), code.as_str()),
        ("FATAL", "57P01"),
        "{message}"
    );
    assert!(message.starts_with("pglink: "), "{message}");
    // Draining: still running, saying so, taking no one new.
    assert_eq!(healthz(metrics), Some((503, "draining\n".to_owned())));
    assert!(proxy.wait_exit(Duration::from_millis(300)).is_none());
    assert!(TcpStream::connect_timeout(&proxy.addr, Duration::from_millis(500)).is_err());
    // The open transaction finishes normally...
    assert_eq!(busy.query_column("SELECT 1").unwrap(), ["1"]);
    busy.query_column("COMMIT").unwrap();
    // ...and then pglink exits, successfully.
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("pglink did not exit");
    assert!(status.success(), "{status}");
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let user = create_user(PgServer::shared(), "sig_bound");
    let (mut proxy, _) = start(&user, "1s", "sigbound");
    let mut busy = connect(&proxy, &user);
    busy.query_column("BEGIN").unwrap();
    let started = Instant::now();
    assert!(process::signal(proxy.pid(), "TERM"));
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("pglink did not exit");
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the timeout"
    );
    // The transaction that outlived the timeout was ended for it.
    let ended = busy.query_column("SELECT 1");
    assert!(ended.is_err(), "{ended:?}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let user = create_user(PgServer::shared(), "sig_twice");
    let (mut proxy, _) = start(&user, "60s", "sigtwice");
    let mut busy = connect(&proxy, &user);
    busy.query_column("BEGIN").unwrap();
    assert!(process::signal(proxy.pid(), "INT"));
    // Waiting for the transaction...
    assert!(proxy.wait_exit(Duration::from_millis(500)).is_none());
    let started = Instant::now();
    assert!(process::signal(proxy.pid(), "TERM"));
    let status = proxy
        .wait_exit(Duration::from_secs(3))
        .expect("still running");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        !status.success(),
        "an interrupted drain is not a clean exit: {status}"
    );
}

#[test]
fn sigusr1_without_a_flight_recorder_leaves_pglink_serving() {
    let user = create_user(PgServer::shared(), "sig_usr1");
    let (mut proxy, metrics) = start(&user, "30s", "sigusr1");
    let mut client = connect(&proxy, &user);
    assert!(process::signal(proxy.pid(), "USR1"));
    assert!(
        proxy.wait_exit(Duration::from_millis(500)).is_none(),
        "still running"
    );
    assert_eq!(client.query_column("SELECT 1").unwrap(), ["1"]);
    assert_eq!(healthz(metrics), Some((200, "ok\n".to_owned())));
}
