//! Fault injection end to end: pglink against a real PostgreSQL whose connections go through
//! a fault relay (`support::tcprelay`) or whose server is restarted, stopped or has its
//! backends terminated. What must hold whatever the network or the server does:
//!
//! - every wait pglink makes has a deadline that fires (connect, login, cleanup after a
//!   vanished client, health check, cancel delivery), and the client involved gets a clear
//!   error (SQLSTATE 08006 or the server's 57P01) instead of a hang;
//! - a transaction never continues on another server connection, no committed data is lost,
//!   and a broken connection never reaches another client;
//! - other clients carry on, and pglink recovers by itself when the server is back, without
//!   hammering a server that is down.

mod support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use pglink::auth::SaltedKeyCache;
use pglink::protocol::frontend;
use support::tcprelay::{Dir, Link, TcpRelay, Then};
use support::wire::{Conn, Failure, LoginOptions, PgError, WireClient, send_cancel};
use support::*;

fn table(name: &str) -> String {
    format!("t_{name}_{}", std::process::id())
}

/// pglink in front of `relay` (which forwards to `pg`) for `user`.
fn through(relay: &TcpRelay, pg: &PgServer, user: &TestUser) -> ProxyConfig {
    ProxyConfig::new(pg)
        .user(user)
        .backend("host", json!("127.0.0.1"))
        .backend("port", json!(relay.port()))
}

fn acquire_timeout(config: ProxyConfig, ms: u64) -> ProxyConfig {
    config.set(
        &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
        json!(ms),
    )
}

fn connect(proxy: &Proxy, user: &TestUser) -> WireClient {
    WireClient::connect(proxy.addr, user.name, Proxy::password(user), TEST_DATABASE)
        .unwrap_or_else(|e| panic!("login of {}: {e}", user.name))
}

/// The relay connection carrying `c`'s server connection (which `c` must hold, or get for
/// this one statement and keep idle in the pool), and that connection's backend pid.
fn link_of(relay: &TcpRelay, c: &mut WireClient) -> (Link, String) {
    let row = c
        .query_column("SELECT inet_client_port() || ',' || pg_backend_pid()")
        .unwrap()
        .remove(0);
    let (port, pid) = row.split_once(',').unwrap();
    let link = relay
        .link_for_server_port(port.parse().unwrap())
        .unwrap_or_else(|| panic!("no relay connection from port {port}"));
    (link, pid.to_owned())
}

/// Asserts that a `query_column` result is an ERROR `code` from pglink; its text.
fn assert_pglink_error(result: Result<Vec<String>, String>, code: &str) -> String {
    let err = result.expect_err("an error");
    assert!(
        err.starts_with(&format!("ERROR {code}: pglink:")),
        "expected ERROR {code} from pglink: {err}"
    );
    err
}

/// A frontend message.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn query_bytes(sql: &str) -> Vec<u8> {
    let mut m = Vec::new();
    frontend::query(&mut m, sql.as_bytes());
    m
}

/// Everything a client received until the connection closed (or `timeout`), split into
/// complete messages and the bytes of a last message cut short.
#[derive(Debug, Default)]
struct Received {
    messages: Vec<(u8, Vec<u8>)>,
    partial: Vec<u8>,
    closed: bool,
}

impl Received {
    fn errors(&self) -> Vec<PgError> {
        self.messages
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(t, b)| PgError::decode(*t, b))
            .collect()
    }

    fn tags(&self) -> String {
        self.messages.iter().map(|(t, _)| *t as char).collect()
    }
}

fn read_until_closed(conn: Conn, timeout: Duration) -> Received {
    let (mut tcp, mut bytes) = conn.into_parts();
    let deadline = Instant::now() + timeout;
    let mut got = Received::default();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match tcp.read(&mut chunk) {
            Ok(0) => {
                got.closed = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(_) => {
                got.closed = true;
                break;
            }
        }
    }
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 5) {
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        match bytes.get(at + 5..at + 1 + len) {
            Some(body) => got.messages.push((header[0], body.to_vec())),
            None => break,
        }
        at += 1 + len;
    }
    got.partial = bytes[at..].to_vec();
    got
}

// ---- every wait has a deadline -------------------------------------------------------------

#[test]
fn a_server_that_stalls_at_connect_or_mid_login_is_an_error_within_connect_timeout() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "stall_login");
    // Another user of the database, whose pool has a connection open all along.
    let other = proxy::create_user(pg, "stall_login_other");
    let relay = TcpRelay::start(pg.port());
    let config = through(&relay, pg, &user)
        .user(&other)
        .backend("pool_max_conns", json!(3))
        .backend("connect_timeout", json!("1s"))
        // So that `c`'s statements need a new connection each time.
        .backend("pool_max_conn_idle_time", json!("200ms"));
    // Longer than connect_timeout: the failed attempt is what the client hears of.
    let proxy = acquire_timeout(config, 10_000).start();
    let mut holder = connect(&proxy, &other);
    let mut c = connect(&proxy, &user);
    let rounds = [
        // Nothing is forwarded either way: the server never sees the startup packet.
        ("stalled at connect", Some(Dir::Both), None, None),
        // The server's authentication request arrives half, then nothing more.
        ("stalled mid-login", None, Some(b'R'), None),
        // Everything arrives, 600 ms late: the login's round trips take too long.
        ("too slow", None, None, Some(Duration::from_millis(600))),
    ];
    for (round, stall, cut, delay) in rounds {
        // `holder` keeps a server connection in a transaction through it all.
        holder.query_column("BEGIN").unwrap();
        wait_until("c's pool is empty", Duration::from_secs(10), || {
            pg.backend_count(user.name) == 0
        });
        let (held, _) = link_of(&relay, &mut holder);
        if let Some(dir) = stall {
            relay.stall(dir);
        }
        if let Some(tag) = cut {
            relay.cut_server_message(tag, Then::Stall);
        }
        if let Some(by) = delay {
            relay.delay(Dir::Both, by);
        }
        held.heal();
        let links_before = relay.links().len();
        let started = Instant::now();
        let err = assert_pglink_error(c.query_column("SELECT 1"), "08006");
        let took = started.elapsed();
        assert!(err.contains("timeout expired"), "{round}: {err}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{round}: {took:?}"
        );
        wait_until(
            "pglink closes the connection it gave up on",
            Duration::from_secs(5),
            || relay.links().len() <= links_before,
        );
        // The transaction of the other client carried on meanwhile.
        assert_eq!(holder.query_column("SELECT 2").unwrap(), ["2"], "{round}");
        holder.query_column("COMMIT").unwrap();
        relay.heal();
        // The session that got the error goes on once the server answers again (after the
        // back-off that follows a failed attempt).
        wait_until("c is served again", Duration::from_secs(10), || {
            c.query_column("SELECT 3").is_ok_and(|r| r == ["3"])
        });
    }
    // pglink closed the connections it gave up on (and the relay, towards the server).
    wait_until(
        "stalled connections closed",
        Duration::from_secs(10),
        || pg.backend_count(user.name) == 0,
    );
}

#[test]
fn a_client_waiting_behind_a_busy_connection_is_told_why_no_new_one_came() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "stall_busy");
    let relay = TcpRelay::start(pg.port());
    let config = through(&relay, pg, &user)
        .backend("pool_max_conns", json!(2))
        .backend("connect_timeout", json!("1s"));
    let proxy = acquire_timeout(config, 3000).start();
    let mut a = connect(&proxy, &user);
    let mut b = connect(&proxy, &user);
    a.query_column("BEGIN").unwrap();
    let (held, _) = link_of(&relay, &mut a);
    relay.stall(Dir::Both);
    held.heal();
    // The pool has a connection that may come back (a's): b waits for it rather than
    // failing when its own connection attempt fails, and when none comes within the
    // acquire timeout it hears the cause, not only that the pool was busy.
    let started = Instant::now();
    let err = assert_pglink_error(b.query_column("SELECT 1"), "53300");
    let took = started.elapsed();
    assert!(err.contains("timeout expired"), "the cause: {err}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // A connection given back serves the next statement at once.
    a.query_column("COMMIT").unwrap();
    assert_eq!(b.query_column("SELECT 2").unwrap(), ["2"]);
}

#[test]
fn a_vanished_clients_query_on_a_stalled_connection_is_cancelled_and_the_connection_closed() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "stall_vanish");
    let relay = TcpRelay::start(pg.port());
    let config = through(&relay, pg, &user).backend("pool_max_conns", json!(1));
    let proxy = acquire_timeout(config, 15_000).start();
    let mut a = connect(&proxy, &user);
    a.query_column("BEGIN").unwrap();
    let (link, pid) = link_of(&relay, &mut a);
    a.send(&query_bytes("SELECT pg_sleep(60)"));
    wait_until("the query runs", Duration::from_secs(5), || {
        pg.admin_sql(&format!(
            "SELECT query FROM pg_stat_activity WHERE pid = {pid}"
        ))
        .contains("pg_sleep")
    });
    // The network between pglink and the server goes silent, then the client vanishes.
    link.stall(Dir::Both);
    let vanished = Instant::now();
    a.vanish();
    // The cancel goes over a new connection, which works: the server stops the query
    // although pglink cannot hear of it (nor send its ROLLBACK).
    wait_until("the query is cancelled", Duration::from_secs(5), || {
        pg.admin_sql(&format!(
            "SELECT state FROM pg_stat_activity WHERE pid = {pid}"
        )) == "idle in transaction (aborted)"
    });
    // With a pool of one, the next client is served once the cleanup gave up (5 s) and the
    // connection was replaced.
    let mut b = connect(&proxy, &user);
    let other = b.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    let took = vanished.elapsed();
    assert_ne!(other, pid);
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // pglink closed the stalled connection, and the relay passed that on to the server.
    wait_until(
        "the stalled connection is closed",
        Duration::from_secs(2),
        || link.is_closed(),
    );
    wait_until(
        "the stalled backend is gone",
        Duration::from_secs(10),
        || !pg.backend_pids(user.name).contains(&pid),
    );
}

#[test]
fn health_checks_of_stalled_or_cut_idle_connections_fail_and_the_pool_replaces_them() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "stall_health");
    let relay = TcpRelay::start(pg.port());
    let proxy = through(&relay, pg, &user)
        .backend("pool_max_conns", json!(3))
        .backend("pool_health_check_period", json!("300ms"))
        .start();
    let mut a = connect(&proxy, &user);
    let mut b = connect(&proxy, &user);
    a.query_column("BEGIN").unwrap();
    b.query_column("BEGIN").unwrap();
    let (stalled, stalled_pid) = link_of(&relay, &mut a);
    let (cut, cut_pid) = link_of(&relay, &mut b);
    a.query_column("COMMIT").unwrap();
    b.query_column("COMMIT").unwrap();
    // Both idle now. One loses the server's answers (a half-open network); the other gets
    // half of its next answer (the health check's), then a reset.
    stalled.stall(Dir::ToClient);
    cut.cut_server_message(b'I', Then::Reset);
    // Checks start at a maintenance pass (every 500 ms) once 300 ms have passed: wait for
    // them rather than for a time. The stalled backend ran the check's empty query; the
    // cut one failed at once.
    wait_until(
        "the stalled connection is checked",
        Duration::from_secs(5),
        || {
            pg.admin_sql(&format!(
                "SELECT query = '' FROM pg_stat_activity WHERE pid = {stalled_pid}"
            )) == "t"
        },
    );
    wait_until("the cut check failed", Duration::from_secs(5), || {
        cut.is_closed()
    });
    // Neither is lent while it fails its check: clients are served at once by new ones.
    for c in [&mut a, &mut b] {
        let started = Instant::now();
        let pid = c.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
        assert!(pid != stalled_pid && pid != cut_pid, "{pid}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // The stalled one is closed when its check times out (the cleanup limit, 5 s).
    wait_until(
        "the stalled connection is closed",
        Duration::from_secs(10),
        || stalled.is_closed(),
    );
    wait_until("their backends are gone", Duration::from_secs(10), || {
        let pids = pg.backend_pids(user.name);
        !pids.contains(&stalled_pid) && !pids.contains(&cut_pid)
    });
    assert_eq!(a.query_column("SELECT 1").unwrap(), ["1"]);
}

#[test]
fn a_cancel_to_a_stalled_server_gives_up_and_the_connection_is_lent_again_after() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "stall_cancel");
    let relay = TcpRelay::start(pg.port());
    let config = through(&relay, pg, &user).backend("pool_max_conns", json!(1));
    let proxy = acquire_timeout(config, 20_000).start();
    let mut a = connect(&proxy, &user);
    let mut b = connect(&proxy, &user);
    let (link, server_pid) = link_of(&relay, &mut a);
    // New connections (the cancel's) go nowhere; the one serving the query works.
    relay.stall(Dir::Both);
    link.heal();
    let links = relay.links().len();
    a.send(&query_bytes("SELECT pg_sleep(1.5)"));
    // A cancel that came before the query would find nothing to cancel (psql reaches the
    // server directly, not through the relay).
    wait_until("the query runs", Duration::from_secs(5), || {
        pg.admin_sql(&format!(
            "SELECT state = 'active' AND query LIKE '%pg_sleep%' \
             FROM pg_stat_activity WHERE pid = {server_pid}"
        )) == "t"
    });
    let (pid, key) = a.key.clone().unwrap();
    let sent = Instant::now();
    send_cancel(proxy.addr, pid, &key);
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "pglink answers a CancelRequest at once: {:?}",
        sent.elapsed()
    );
    wait_until(
        "the cancel connection is made",
        Duration::from_secs(5),
        || relay.links().len() > links,
    );
    let cancel_link = relay.links().pop().unwrap();
    // The cancel never arrives: the query runs to its end.
    let msgs = a.until_ready().unwrap();
    assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");
    // Until the delivery gives up, the connection is not lent: a cancel that arrives late
    // must not hit the next client's query.
    let started = Instant::now();
    assert_eq!(b.query_column("SELECT 2").unwrap(), ["2"]);
    let waited = started.elapsed();
    let since_cancel = sent.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "lent too early: {waited:?}"
    );
    assert!(
        since_cancel < Duration::from_secs(10),
        "the delivery gave up late: {since_cancel:?}"
    );
    wait_until(
        "the cancel connection is closed",
        Duration::from_secs(2),
        || cancel_link.is_closed(),
    );
    assert_eq!(a.query_column("SELECT 3").unwrap(), ["3"]);
}

// ---- server connections lost mid-query, mid-COPY IN, mid-COPY OUT ------------------------

#[derive(Clone, Copy, Debug)]
enum Work {
    Query,
    CopyIn,
    CopyOut,
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// `pg_terminate_backend`: the server says FATAL 57P01, then closes.
    Terminate,
    /// The network resets the connection.
    Reset,
    /// Half of the next message of this type arrives, then a reset.
    CutMessage(u8),
}

/// Starts `work` on `c` and returns once the server is in the middle of it.
fn start_work(c: &mut WireClient, work: Work, t: &str) {
    match work {
        Work::Query => {
            // A result that arrives in pieces: a large row after a pause.
            c.send(&query_bytes(
                "SELECT repeat('x', 2000000) FROM (SELECT pg_sleep(0.3)) s",
            ));
        }
        Work::CopyIn => {
            c.send(&query_bytes(&format!("COPY {t} (v) FROM STDIN")));
            let m = c.read().unwrap();
            assert_eq!(m.tag, b'G', "{:?}", m.error());
            for i in 0..100 {
                c.send(&message(b'd', format!("{i}\n").as_bytes()));
            }
        }
        Work::CopyOut => {
            c.send(&query_bytes(
                "COPY (SELECT g, pg_sleep(0.001) FROM generate_series(1, 100000) g) TO STDOUT",
            ));
            for expected in [b'H'].iter().chain(&[b'd'; 10]) {
                let m = c.read().unwrap();
                assert_eq!(m.tag, *expected, "{:?}", m.error());
            }
        }
    }
}

#[test]
fn server_connections_killed_mid_query_mid_copy_in_and_mid_copy_out() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "kill_mid");
    let t = table("kill_mid");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (v int); GRANT ALL ON {t} TO PUBLIC"),
    );
    let relay = TcpRelay::start(pg.port());
    let proxy = through(&relay, pg, &user)
        .backend("pool_max_conns", json!(2))
        .start();
    let mut bystander = connect(&proxy, &user);
    let cases = [
        (Work::Query, Kill::Terminate),
        (Work::Query, Kill::Reset),
        (Work::Query, Kill::CutMessage(b'D')),
        (Work::CopyIn, Kill::Terminate),
        (Work::CopyIn, Kill::Reset),
        (Work::CopyOut, Kill::Terminate),
        (Work::CopyOut, Kill::Reset),
        (Work::CopyOut, Kill::CutMessage(b'd')),
    ];
    for (work, kill) in cases {
        let case = match kill {
            Kill::CutMessage(tag) => format!("{work:?} / half a '{}' then a reset", tag as char),
            _ => format!("{work:?} / {kill:?}"),
        };
        bystander.query_column("BEGIN").unwrap();
        bystander.query_column("SELECT 1").unwrap();
        let mut c = connect(&proxy, &user);
        let (link, pid) = link_of(&relay, &mut c);
        start_work(&mut c, work, &t);
        match kill {
            Kill::Terminate => {
                pg.admin_sql(&format!("SELECT pg_terminate_backend({pid})"));
            }
            Kill::Reset => link.reset(),
            Kill::CutMessage(tag) => link.cut_server_message(tag, Then::Reset),
        }
        let got = read_until_closed(c.conn, Duration::from_secs(10));
        assert!(
            got.closed,
            "{case}: the session is closed: {} and {} bytes",
            got.tags(),
            got.partial.len()
        );
        let errors = got.errors();
        if got.partial.is_empty() {
            // Whole messages, the last one the FATAL error that says why.
            let last = errors
                .last()
                .unwrap_or_else(|| panic!("{case}: {}", got.tags()));
            let expected = match kill {
                Kill::Terminate => "57P01",
                _ => "08006",
            };
            assert_eq!(
                (last.severity.as_str(), last.code.as_str()),
                ("FATAL", expected),
                "{case}: {last}"
            );
            assert_eq!(got.messages.last().map(|m| m.0), Some(b'E'), "{case}");
            eprintln!("{case}: {last}");
        } else {
            // pglink had forwarded part of a message when the server went: nothing can be
            // framed after it, so the connection just ends (what came is the row's bytes).
            assert!(
                matches!(kill, Kill::Reset | Kill::CutMessage(_)),
                "{case}: {}",
                got.tags()
            );
            let tail = &got.partial[got.partial.len().min(11)..];
            assert!(
                tail.iter()
                    .all(|&b| b == b'x' || b.is_ascii_digit() || b == b'\t' || b == b'\n'),
                "{case}: bytes after a cut message: {:?}",
                String::from_utf8_lossy(&tail[..tail.len().min(200)])
            );
            eprintln!(
                "{case}: closed after {} bytes of a '{}' message",
                got.partial.len(),
                got.partial[0] as char
            );
        }
        assert!(
            errors.iter().all(|e| e.severity == "FATAL"),
            "{case}: {errors:?}"
        );
        // The other client's transaction carried on; the pool serves new clients.
        assert_eq!(bystander.query_column("SELECT 2").unwrap(), ["2"], "{case}");
        bystander.query_column("COMMIT").unwrap();
        let mut next = connect(&proxy, &user);
        assert_eq!(next.query_column("SELECT 3").unwrap(), ["3"], "{case}");
        assert_eq!(
            next.query_column(&format!("SELECT count(*) FROM {t}"))
                .unwrap(),
            ["0"],
            "{case}: nothing of the COPY stayed"
        );
    }
    wait_until("killed backends are gone", Duration::from_secs(10), || {
        pg.backend_count(user.name) <= 2
    });
}

#[test]
fn a_client_killed_mid_copy_in_is_rolled_back_and_the_next_client_gets_a_clean_session() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "copy_vanish");
    let t = table("copy_vanish");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (v int); GRANT ALL ON {t} TO PUBLIC"),
    );
    let config = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1));
    let proxy = acquire_timeout(config, 15_000).start();
    for (how, mid_message) in [("between messages", false), ("mid-message", true)] {
        let mut a = connect(&proxy, &user);
        a.query_column("SET application_name = 'killed'").unwrap();
        a.query_column("BEGIN").unwrap();
        let pid = a.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
        a.query_column(&format!("INSERT INTO {t} VALUES (-1)"))
            .unwrap();
        a.send(&query_bytes(&format!("COPY {t} (v) FROM STDIN")));
        assert_eq!(a.read().unwrap().tag, b'G');
        for i in 0..1000 {
            a.send(&message(b'd', format!("{i}\n").as_bytes()));
        }
        if mid_message {
            let row = message(b'd', b"123456\n");
            a.send(&row[..row.len() - 3]);
        }
        thread::sleep(Duration::from_millis(100));
        if mid_message {
            // A process that dies abruptly: RST.
            let tcp = &a.conn.tcp;
            socket2::SockRef::from(tcp)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(a);
        } else {
            a.vanish();
        }
        let started = Instant::now();
        let mut b = connect(&proxy, &user);
        let rows = b
            .query_column(&format!("SELECT count(*) FROM {t}"))
            .unwrap();
        assert_eq!(
            rows,
            ["0"],
            "{how}: the transaction and its COPY were rolled back"
        );
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "{how}: {:?}",
            started.elapsed()
        );
        // A clean session: not in a transaction, nothing of the other client's settings.
        let now = b.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
        if mid_message {
            // Half a message cannot be completed on the client's behalf: pglink may only
            // close that connection.
            let fate = if now == pid { "reused" } else { "replaced" };
            eprintln!("client killed {how}: its server connection was {fate}");
        } else {
            assert_eq!(now, pid, "{how}: the connection was cleaned up and reused");
        }
        assert_eq!(
            b.query_column("SHOW application_name").unwrap(),
            [""],
            "{how}"
        );
        b.query_column("BEGIN").unwrap();
        b.query_column(&format!("INSERT INTO {t} VALUES (1)"))
            .unwrap();
        b.query_column("ROLLBACK").unwrap();
        let msgs = b.simple("COMMIT").unwrap();
        assert!(
            msgs.iter()
                .any(|m| m.error().is_some_and(|e| e.1 == "25P01")),
            "{how}: no transaction was open: {msgs:?}"
        );
        b.conn.terminate();
    }
}

#[test]
fn a_client_that_closes_behind_a_backlog_of_copy_data_is_noticed() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "copy_backlog");
    let t = table("copy_backlog");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (v text); GRANT ALL ON {t} TO PUBLIC"),
    );
    let relay = TcpRelay::start(pg.port());
    let config = through(&relay, pg, &user).backend("pool_max_conns", json!(1));
    let proxy = acquire_timeout(config, 20_000).start();
    let mut a = connect(&proxy, &user);
    let (link, pid) = link_of(&relay, &mut a);
    a.send(&query_bytes(&format!("COPY {t} (v) FROM STDIN")));
    assert_eq!(a.read().unwrap().tag, b'G');
    // The server takes nothing for a while: pglink stops reading the client (backpressure)
    // while the client sends its data and closes, so the close arrives behind a backlog.
    link.stall(Dir::ToServer);
    let mut tcp = a.conn.tcp.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let row = message(b'd', format!("{}\n", "x".repeat(8000)).as_bytes());
        for _ in 0..1000 {
            std::io::Write::write_all(&mut tcp, &row).unwrap();
        }
        tcp.shutdown(std::net::Shutdown::Both).unwrap();
    });
    thread::sleep(Duration::from_millis(500));
    link.heal();
    writer.join().unwrap();
    drop(a);
    // pglink reads the backlog, sees the close, fails the COPY and rolls back: the pool's
    // one connection serves the next client.
    let started = Instant::now();
    let mut b = connect(&proxy, &user);
    let got = b.query_column("SELECT pg_backend_pid()");
    let took = started.elapsed();
    assert_eq!(got.unwrap(), [pid], "cleaned up and reused");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        b.query_column(&format!("SELECT count(*) FROM {t}"))
            .unwrap(),
        ["0"]
    );
}

// ---- PostgreSQL restarted under load ------------------------------------------------------

/// What the clients of the restart test saw, per client.
#[derive(Default, Debug)]
struct Tally {
    committed: u64,
    /// COMMITs whose outcome is unknown (the connection was lost while committing).
    in_doubt: u64,
    /// Errors by "SEVERITY CODE".
    errors: BTreeMap<String, u64>,
    /// Anything that is not a clean error: hangs, closes without a word, wrong answers.
    violations: Vec<String>,
    /// When a transaction last committed.
    last_commit: Option<Instant>,
}

/// One client of the restart test: transactions in a loop until `stop`, logging in again
/// whenever its session ends.
fn restart_client(addr: SocketAddr, id: usize, t: &str, stop: &AtomicBool, tally: &Mutex<Tally>) {
    let mut keys = SaltedKeyCache::new(1);
    let mut session: Option<Conn> = None;
    let record = |e: &PgError| {
        let mut t = tally.lock().unwrap();
        *t.errors
            .entry(format!("{} {}", e.severity, e.code))
            .or_default() += 1;
    };
    let violation = |what: String| tally.lock().unwrap().violations.push(what);
    while !stop.load(Ordering::Acquire) {
        let Some(c) = session.as_mut() else {
            let mut c = Conn::plain(addr);
            match c.login_cached(
                SCRAM_USER.name,
                TEST_DATABASE,
                Proxy::password(&SCRAM_USER),
                &LoginOptions::default(),
                &mut keys,
            ) {
                Ok(_) => session = Some(c),
                Err(Failure::Server(e)) => {
                    record(&e);
                    thread::sleep(Duration::from_millis(50));
                }
                Err(other) => {
                    violation(format!("client {id}: login: {other:?}"));
                    thread::sleep(Duration::from_millis(50));
                }
            }
            continue;
        };
        let steps = [
            "BEGIN".to_owned(),
            "SELECT pg_backend_pid()".to_owned(),
            format!("UPDATE {t} SET n = n + 1 WHERE id = {id}"),
            "SELECT pg_backend_pid()".to_owned(),
            "COMMIT".to_owned(),
        ];
        let mut pids = Vec::new();
        let mut ended = false;
        for (i, sql) in steps.iter().enumerate() {
            let committing = i == steps.len() - 1;
            match c.simple_query(sql) {
                Ok(rows) => {
                    if sql.starts_with("SELECT") {
                        pids.push(rows[0][0].clone());
                    }
                    if committing {
                        let mut t = tally.lock().unwrap();
                        t.committed += 1;
                        t.last_commit = Some(Instant::now());
                    }
                }
                Err(Failure::Server(e)) => {
                    record(&e);
                    // A client retrying after an error, not spinning.
                    thread::sleep(Duration::from_millis(10));
                    if e.severity == "FATAL" {
                        session = None;
                        if committing {
                            tally.lock().unwrap().in_doubt += 1;
                        }
                    } else if committing {
                        violation(format!("client {id}: COMMIT failed: {e}"));
                    } else if i > 0 && c.simple_query("ROLLBACK").is_err() {
                        session = None;
                    }
                    ended = true;
                    break;
                }
                Err(other) => {
                    violation(format!("client {id}: {sql}: {other:?}"));
                    session = None;
                    ended = true;
                    break;
                }
            }
        }
        if !ended && pids.windows(2).any(|w| w[0] != w[1]) {
            violation(format!(
                "client {id}: one transaction ran on two server connections {pids:?}"
            ));
        }
    }
}

#[test]
fn postgresql_restarted_under_load_fails_in_flight_work_cleanly_and_recovers() {
    const CLIENTS: usize = 50;
    let pg = PgServer::start();
    let t = table("restart");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, n bigint NOT NULL); \
             INSERT INTO {t} SELECT g, 0 FROM generate_series(0, {CLIENTS} - 1) g; \
             GRANT ALL ON {t} TO PUBLIC"
        ),
    );
    let config = ProxyConfig::new(&pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(10));
    let proxy = acquire_timeout(config, 5000).start();
    let addr = proxy.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Arc<Vec<Mutex<Tally>>> =
        Arc::new((0..CLIENTS).map(|_| Mutex::default()).collect());
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (stop, tallies, t) = (stop.clone(), tallies.clone(), t.clone());
            thread::spawn(move || restart_client(addr, id, &t, &stop, &tallies[id]))
        })
        .collect();
    let committed = || -> u64 { tallies.iter().map(|t| t.lock().unwrap().committed).sum() };
    wait_until("load is running", Duration::from_secs(30), || {
        committed() >= 500
    });
    pg.restart();
    let back = Instant::now();
    // Every client commits again within seconds of the server being back, without a
    // restart of pglink.
    wait_until(
        "every client commits after the restart",
        Duration::from_secs(15),
        || {
            tallies
                .iter()
                .all(|t| t.lock().unwrap().last_commit.is_some_and(|at| at > back))
        },
    );
    let recovered = back.elapsed();
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().unwrap();
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut violations = Vec::new();
    let (mut total, mut in_doubt) = (0, 0);
    let counts = pg.admin_sql_in(
        TEST_DATABASE,
        &format!("SELECT string_agg(n::text, ',' ORDER BY id) FROM {t}"),
    );
    for (id, (tally, n)) in tallies.iter().zip(counts.split(',')).enumerate() {
        let tally = tally.lock().unwrap();
        let n: u64 = n.parse().unwrap();
        // No acknowledged commit is lost, nothing committed that was not asked for.
        assert!(
            n >= tally.committed && n <= tally.committed + tally.in_doubt,
            "client {id}: {n} rows updated, {} commits acknowledged, {} in doubt",
            tally.committed,
            tally.in_doubt
        );
        total += tally.committed;
        in_doubt += tally.in_doubt;
        for (k, v) in &tally.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        violations.extend(tally.violations.iter().cloned());
    }
    eprintln!(
        "restart under load: {total} commits, {in_doubt} in doubt, errors {errors:?}, \
         all clients back {recovered:?} after the server"
    );
    assert!(violations.is_empty(), "{violations:#?}");
    // In-flight work fails with the server's shutdown notice or pglink's connection
    // failure; a statement that needed a new connection while the server was down
    // gets pglink's ERROR 08006 (or the server's "starting up"/"shutting down", 57P03).
    let allowed = ["FATAL 57P01", "FATAL 08006", "ERROR 08006", "ERROR 57P03"];
    for code in errors.keys() {
        assert!(allowed.contains(&code.as_str()), "{code}: {errors:?}");
    }
    assert!(
        errors.keys().any(|k| k.starts_with("FATAL")),
        "the restart hit transactions in flight: {errors:?}"
    );
    // The pool refilled; pglink never went over its size.
    let backends = pg.backend_count(SCRAM_USER.name);
    assert!((1..=10).contains(&backends), "{backends}");
}

// ---- PostgreSQL down: clear errors, back-off, recovery -----------------------------------

#[test]
fn postgresql_down_when_pglink_starts_is_a_clear_error_until_it_is_back() {
    let pg = PgServer::start();
    pg.stop();
    let proxy = ProxyConfig::new(&pg)
        .user(&SCRAM_USER)
        .backend("pool_min_idle_conns", json!(2))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    for attempt in 0..3 {
        let started = Instant::now();
        let err = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE)
            .err()
            .expect("no server");
        assert!(
            err.starts_with("FATAL 08006: pglink: cannot connect to server"),
            "{attempt}: {err}"
        );
        assert!(err.contains("refused"), "{attempt}: the cause: {err}");
        assert!(started.elapsed() < Duration::from_secs(3), "{attempt}");
    }
    pg.restart();
    let back = Instant::now();
    wait_until(
        "logins work once the server is back",
        Duration::from_secs(10),
        || WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).is_ok(),
    );
    eprintln!("logins work {:?} after the server is back", back.elapsed());
    // The minimum is kept warm from then on.
    wait_until(
        "the pool's minimum is opened",
        Duration::from_secs(10),
        || pg.backend_count(SCRAM_USER.name) >= 2,
    );
}

#[test]
fn connection_attempts_to_a_dead_server_back_off() {
    const CLIENTS: usize = 30;
    let pg = PgServer::start();
    let relay = TcpRelay::start(pg.port());
    let config = through(&relay, &pg, &SCRAM_USER).backend("pool_max_conns", json!(4));
    let proxy = acquire_timeout(config, 2000).start();
    let mut clients: Vec<WireClient> = (0..CLIENTS).map(|_| connect(&proxy, &SCRAM_USER)).collect();
    for c in &mut clients {
        assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
    }
    pg.stop();
    let before = relay.accepted();
    // Every client retries as fast as it gets its error, for a while.
    let hammering = Duration::from_secs(3);
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut errors = Vec::new();
                while started.elapsed() < hammering {
                    match c.query_column("SELECT 1") {
                        Err(e) => errors.push(e),
                        Ok(rows) => panic!("served with the server down: {rows:?}"),
                    }
                }
                (c, errors)
            })
        })
        .collect();
    let mut clients = Vec::new();
    let mut errors = Vec::new();
    for w in workers {
        let (c, e) = w.join().unwrap();
        clients.push(c);
        errors.extend(e);
    }
    let attempts = relay.accepted() - before;
    eprintln!(
        "{} errors, {attempts} connection attempts in {hammering:?}",
        errors.len()
    );
    for e in &errors {
        assert!(e.starts_with("ERROR 08006: pglink: cannot connect"), "{e}");
    }
    assert!(errors.len() >= CLIENTS, "every client was told");
    // Without back-off, one per statement (tens of thousands). With it: a first burst (up
    // to pool_max_conns), then per reactor thread at 0.5, 1.5 and 3.5 s at most.
    assert!(
        attempts <= 12,
        "{attempts} attempts to reach a dead server in {hammering:?} ({} errors)",
        errors.len()
    );
    // Once the server is back, every session is served again within seconds.
    pg.restart();
    let back = Instant::now();
    for c in &mut clients {
        wait_until("a session is served again", Duration::from_secs(10), || {
            c.query_column("SELECT 1").is_ok()
        });
    }
    let took = back.elapsed();
    eprintln!("all sessions served {took:?} after the server is back");
    assert!(took < Duration::from_secs(8), "{took:?}");
}
