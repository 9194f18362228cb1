//! End to end: pglink's limits against a real PostgreSQL: `max_client_connections`,
//! `max_logins_in_progress`, the login timeout, malformed and random input, and thousands of
//! idle clients.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use pglink::auth::SaltedKeyCache;
use pglink::protocol::frontend;
use pglink::protocol::startup::{ProtocolVersion, ssl_request, startup_message};
use support::wire::{Conn, Ending, LoginOptions, TestRng, client_config_any_cert};
use support::{
    AuthMethod, PgServer, Proxy, ProxyConfig, SCRAM_USER, TEST_DATABASE, TestUser, run_psql,
    wait_until,
};

const PW: &str = "scram_pw";

/// The memory tests measure this process's RSS: they run alone (write lock), every other
/// test of this binary takes the read lock.
static MEASURING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn not_measuring() -> std::sync::RwLockReadGuard<'static, ()> {
    MEASURING
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn measuring_alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    MEASURING
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn logged_in(addr: SocketAddr) -> Conn {
    let mut c = Conn::plain(addr);
    c.login(SCRAM_USER.name, TEST_DATABASE, PW, &LoginOptions::default())
        .unwrap_or_else(|e| panic!("login: {e:?}"));
    c
}

fn psql_works(proxy: &Proxy) {
    assert_eq!(
        run_psql(
            &proxy.dsn(&SCRAM_USER),
            SCRAM_USER.password,
            "SELECT 'still ok'"
        ),
        Ok("still ok".into())
    );
}

fn startup_bytes(user: &str) -> Vec<u8> {
    let mut out = Vec::new();
    startup_message(
        &mut out,
        ProtocolVersion::V3_0,
        &[
            (b"user", user.as_bytes()),
            (b"database", TEST_DATABASE.as_bytes()),
        ],
    );
    out
}

// ---- 8. max_client_connections -------------------------------------------------------------

#[test]
fn max_client_connections_refuses_the_fourth_with_53300() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("max_client_connections", json!(3))
        .start();
    let mut held: Vec<Conn> = (0..3).map(|_| logged_in(proxy.addr)).collect();
    assert_eq!(proxy.client_count(), 3);

    // A raw fourth connection gets FATAL 53300 once it has sent its startup packet (like
    // PostgreSQL: that is where clients show errors).
    let mut fourth = Conn::plain(proxy.addr);
    fourth.send(&startup_bytes(SCRAM_USER.name)).unwrap();
    let ending = fourth.read_until_closed(Duration::from_secs(5));
    assert!(ending.closed && !ending.hung, "{ending:?}");
    assert_eq!(ending.errors.len(), 1, "{ending:?}");
    let e = &ending.errors[0];
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("FATAL", "53300"),
        "{e}"
    );
    assert!(e.message.contains("too many client connections"), "{e}");
    assert!(e.message.contains("max_client_connections is 3"), "{e}");

    // A fourth that logs in the usual way sees the same error.
    let mut c = Conn::plain(proxy.addr);
    let e = c
        .login(SCRAM_USER.name, TEST_DATABASE, PW, &LoginOptions::default())
        .unwrap_err()
        .server_error();
    assert_eq!(e.code, "53300", "{e}");

    // The first three still work.
    for c in &mut held {
        assert_eq!(c.query_value("SELECT 3").unwrap().as_deref(), Some("3"));
    }
    // Refused connections were not counted: freeing one slot lets exactly one more in.
    held.pop().unwrap().terminate();
    wait_until("the slot to be freed", Duration::from_secs(5), || {
        proxy.client_count() == 2
    });
    held.push(logged_in(proxy.addr));
    assert_eq!(proxy.client_count(), 3);
}

fn psql_sees_too_many_connections(ssl_modes: &[&str]) {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("max_client_connections", json!(1))
        .start();
    let _held = logged_in(proxy.addr);
    for ssl in ssl_modes {
        for _ in 0..5 {
            let err = run_psql(
                &proxy.dsn_with(&SCRAM_USER, ssl),
                SCRAM_USER.password,
                "SELECT 1",
            )
            .unwrap_err();
            assert!(err.contains("too many client connections"), "{ssl}: {err}");
        }
    }
}

#[test]
fn max_client_connections_error_reaches_psql_without_tls() {
    let _guard = not_measuring();
    // psql (libpq) sends its startup packet before reading: the FATAL must survive that.
    psql_sees_too_many_connections(&["sslmode=disable"]);
}

/// pglink writes the FATAL right after accept(), so it is the answer to libpq's SSLRequest;
/// libpq (since the CVE-2024-10977 fix) discards errors received during SSL negotiation and
/// says only "server sent an error response during SSL exchange". PostgreSQL itself reports
/// "too many clients" after the startup packet.
#[test]
fn max_client_connections_error_reaches_psql_with_default_sslmode() {
    let _guard = not_measuring();
    psql_sees_too_many_connections(&["sslmode=prefer", "sslmode=require"]);
}

#[test]
fn max_logins_in_progress_refuses_while_silent_connections_hold_every_slot() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("max_logins_in_progress", json!(3))
        .set("client_login_timeout", json!("2s"))
        .start();
    // A client logged in before does not count against the cap, and is not disturbed.
    let mut before = logged_in(proxy.addr);
    // Connections that send nothing at all hold the three login slots.
    let mut silent: Vec<Conn> = (0..3).map(|_| Conn::plain(proxy.addr)).collect();
    wait_until(
        "the silent connections to be accepted",
        Duration::from_secs(5),
        || proxy.client_count() == 4,
    );
    let refused = |what: &str| {
        let e = Conn::plain(proxy.addr)
            .login(SCRAM_USER.name, TEST_DATABASE, PW, &LoginOptions::default())
            .unwrap_err()
            .server_error();
        assert_eq!(
            (e.severity.as_str(), e.code.as_str()),
            ("FATAL", "53300"),
            "{what}: {e}"
        );
        assert!(
            e.message.contains("too many connections are logging in")
                && e.message.contains("max_logins_in_progress is 3"),
            "{what}: {e}"
        );
    };
    refused("with three silent connections");
    refused("again");
    assert_eq!(
        proxy.client_count(),
        4,
        "refused connections are not counted"
    );
    // One silent connection closing frees one slot: one login gets through, and once logged
    // in it gives the slot back, so the next one does too.
    drop(silent.pop());
    wait_until("the slot to be freed", Duration::from_secs(5), || {
        proxy.client_count() == 3
    });
    let mut after = vec![logged_in(proxy.addr), logged_in(proxy.addr)];
    // The login timeout frees the other two: three logins may be in progress at once again.
    let ending = silent
        .pop()
        .unwrap()
        .read_until_closed(Duration::from_secs(5));
    assert!(ending.closed && !ending.hung, "{ending:?}");
    wait_until(
        "the silent connections to time out",
        Duration::from_secs(5),
        || proxy.client_count() == 3,
    );
    let mid_login: Vec<Conn> = (0..3).map(|_| Conn::plain(proxy.addr)).collect();
    wait_until("three logins in progress", Duration::from_secs(5), || {
        proxy.client_count() == 6
    });
    refused("with three new silent connections");
    drop(mid_login);
    wait_until("them to be gone", Duration::from_secs(5), || {
        proxy.client_count() == 3
    });
    after.push(logged_in(proxy.addr));
    for c in after.iter_mut().chain([&mut before]) {
        assert_eq!(c.query_value("SELECT 3").unwrap().as_deref(), Some("3"));
    }
}

// ---- 9. login timeout ----------------------------------------------------------------------

/// `ending.elapsed` must count from before the connection was made: pglink's login deadline
/// runs from accept().
fn assert_timed_out(what: &str, ending: &Ending) {
    assert!(ending.closed && !ending.hung, "{what}: {ending:?}");
    assert!(
        ending.elapsed >= Duration::from_millis(800) && ending.elapsed <= Duration::from_secs(5),
        "{what}: closed after {:?}",
        ending.elapsed
    );
    for e in &ending.errors {
        assert_eq!(
            (e.severity.as_str(), e.code.as_str()),
            ("FATAL", "57014"),
            "{what}: {e}"
        );
    }
}

#[test]
fn login_timeout_closes_slow_clients_only() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("client_login_timeout", json!("1s"))
        .start();
    let addr = proxy.addr;
    let wait = Duration::from_secs(5);
    // Each clock starts before its connection is made, as pglink's deadline starts at accept().
    let until_closed = move |started: Instant, mut c: Conn| {
        let mut ending = c.read_until_closed(wait);
        ending.elapsed = started.elapsed();
        ending
    };
    let silent = thread::spawn(move || until_closed(Instant::now(), Conn::plain(addr)));
    let half = thread::spawn(move || {
        let started = Instant::now();
        let mut c = Conn::plain(addr);
        c.send(&startup_bytes(SCRAM_USER.name)[..7]).unwrap();
        until_closed(started, c)
    });
    let stalled_handshake = thread::spawn(move || {
        let started = Instant::now();
        let mut c = Conn::plain(addr);
        let mut req = Vec::new();
        ssl_request(&mut req);
        c.send(&req).unwrap();
        let mut answer = [0u8; 1];
        c.tcp.read_exact(&mut answer).unwrap();
        assert_eq!(answer[0], b'S');
        let ending = read_raw_until_closed(c, wait);
        (
            matches!(ending, RawEnding::Closed { .. }),
            started.elapsed(),
        )
    });
    let after_tls = thread::spawn(move || {
        let started = Instant::now();
        let c = Conn::tls(addr, client_config_any_cert(true), "localhost").unwrap();
        until_closed(started, c)
    });
    let mid_auth = thread::spawn(move || {
        let started = Instant::now();
        let mut c = Conn::plain(addr);
        c.send_startup(SCRAM_USER.name, TEST_DATABASE, &LoginOptions::default());
        let (tag, _) = c.expect_message().unwrap();
        assert_eq!(tag, b'R', "authentication request");
        until_closed(started, c)
    });
    // A client that logged in is not affected by the login deadline.
    let patient = thread::spawn(move || {
        let mut c = logged_in(addr);
        thread::sleep(Duration::from_millis(1500));
        c.query_value("SELECT 'alive'").unwrap()
    });
    // Nor are clients that come and go meanwhile.
    psql_works(&proxy);
    assert_timed_out("silent", &silent.join().unwrap());
    assert_timed_out("half a startup packet", &half.join().unwrap());
    assert_timed_out("TLS but no startup", &after_tls.join().unwrap());
    let (closed, elapsed) = stalled_handshake.join().unwrap();
    assert!(
        closed,
        "stalled TLS handshake: still open after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed <= Duration::from_secs(5),
        "stalled TLS handshake closed after {elapsed:?}"
    );
    assert_timed_out("mid-authentication", &mid_auth.join().unwrap());
    assert_eq!(patient.join().unwrap().as_deref(), Some("alive"));
    psql_works(&proxy);
    wait_until("slow clients to be gone", Duration::from_secs(5), || {
        proxy.client_count() == 0
    });
}

// ---- 10. malformed input -------------------------------------------------------------------

/// What a malformed input must lead to: closed (never a hang), and any error a protocol
/// violation (or `codes`).
fn assert_refused(what: &str, ending: &Ending, codes: &[&str]) {
    assert!(
        !ending.hung,
        "{what}: no answer within the timeout: {ending:?}"
    );
    assert!(ending.closed, "{what}: {ending:?}");
    for e in &ending.errors {
        assert!(codes.contains(&e.code.as_str()), "{what}: {e}");
        assert_eq!(e.severity, "FATAL", "{what}: {e}");
    }
}

const WAIT: Duration = Duration::from_secs(5);

/// One reactor thread: if input kills it, the proxy stops answering and the final
/// `psql_works` check fails (with two, the other reactor would hide the loss).
fn one_reactor(pg: &PgServer) -> Proxy {
    ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("reactor_threads", json!(1))
        .start()
}

#[test]
fn malformed_startup_packets_are_refused() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = one_reactor(pg);
    let mut huge_startup = vec![0, 0, 0x4e, 0x20, 0, 3, 0, 0]; // 20,000 bytes claimed
    huge_startup.resize(64, b'a');
    let cases: Vec<(&str, Vec<u8>, bool, bool)> = vec![
        // (what, bytes, half-close afterwards, an ErrorResponse is required)
        ("length 4", vec![0, 0, 0, 4, 0, 3, 0, 0], false, true),
        ("length 0", vec![0, 0, 0, 0, 0, 3, 0, 0], false, true),
        (
            "length 0x7fffffff",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
            false,
            true,
        ),
        ("length 20000", huge_startup, false, true),
        (
            "truncated then closed",
            startup_bytes(SCRAM_USER.name)[..20].to_vec(),
            true,
            false,
        ),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
            true,
        ),
        (
            "startup without NUL terminators",
            vec![0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'],
            false,
            true,
        ),
    ];
    for (what, bytes, half_close, error_required) in cases {
        let mut c = Conn::plain(proxy.addr);
        c.send(&bytes).unwrap();
        if half_close {
            c.shutdown_write();
        }
        let ending = c.read_until_closed(WAIT);
        assert_refused(what, &ending, &["08P01"]);
        if error_required {
            assert_eq!(ending.errors.len(), 1, "{what}: {ending:?}");
        }
    }

    // SSLRequest and a plaintext StartupMessage in one write: no 'S', but an error
    // (CVE-2021-23214).
    let mut c = Conn::plain(proxy.addr);
    let mut bytes = Vec::new();
    ssl_request(&mut bytes);
    bytes.extend_from_slice(&startup_bytes(SCRAM_USER.name));
    c.send(&bytes).unwrap();
    let ending = c.read_until_closed(WAIT);
    assert_refused("SSLRequest + plaintext", &ending, &["08P01"]);
    assert_eq!(ending.errors.len(), 1, "{ending:?}");
    assert!(ending.other.is_empty(), "{ending:?}");

    // A non-password message during authentication.
    let mut c = Conn::plain(proxy.addr);
    c.send_startup(SCRAM_USER.name, TEST_DATABASE, &LoginOptions::default());
    assert_eq!(c.expect_message().unwrap().0, b'R');
    let mut q = Vec::new();
    frontend::query(&mut q, b"SELECT 1");
    c.send(&q).unwrap();
    let ending = c.read_until_closed(WAIT);
    assert_refused("query during authentication", &ending, &["08P01"]);
    assert_eq!(ending.errors.len(), 1, "{ending:?}");

    // A 100 MB password message claim.
    let mut c = Conn::plain(proxy.addr);
    c.send_startup(SCRAM_USER.name, TEST_DATABASE, &LoginOptions::default());
    assert_eq!(c.expect_message().unwrap().0, b'R');
    c.send(&[b'p', 0x06, 0x40, 0, 0]).unwrap();
    let ending = c.read_until_closed(WAIT);
    assert_refused("100 MB password message", &ending, &["08P01"]);
    assert_eq!(ending.errors.len(), 1, "{ending:?}");

    psql_works(&proxy);
    wait_until("refused clients to be gone", WAIT, || {
        proxy.client_count() == 0
    });
}

#[test]
fn malformed_messages_after_login_are_refused() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = one_reactor(pg);
    let hundred_mb = (100u32 << 20).to_be_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown tag 0x01", vec![0x01, 0, 0, 0, 4]),
        ("length 3", vec![b'Q', 0, 0, 0, 3]),
        ("length 0", vec![b'Q', 0, 0, 0, 0]),
        (
            "100 MB claim",
            [&[b'Q'][..], &hundred_mb[..], b"SELECT 1"].concat(),
        ),
        ("0xff length", vec![b'P', 0xff, 0xff, 0xff, 0xff]),
        ("tag 0x7f", vec![0x7f, 0, 0, 0, 4]),
    ];
    for (what, bytes) in cases {
        let mut c = logged_in(proxy.addr);
        let started = Instant::now();
        c.send(&bytes).unwrap();
        let ending = c.read_until_closed(WAIT);
        assert_refused(what, &ending, &["08P01"]);
        assert_eq!(ending.errors.len(), 1, "{what}: {ending:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{what}: slow");
    }
    // Truncated message then close, in and out of a transaction.
    for prelude in ["", "BEGIN"] {
        let mut c = logged_in(proxy.addr);
        if !prelude.is_empty() {
            c.simple_query(prelude).unwrap();
        }
        c.send(&[b'Q', 0, 0, 0, 100, b'S', b'E']).unwrap();
        c.shutdown_write();
        let ending = c.read_until_closed(WAIT);
        assert_refused("truncated query then close", &ending, &["08P01"]);
    }
    psql_works(&proxy);
    wait_until("refused clients to be gone", WAIT, || {
        proxy.client_count() == 0
    });
}

/// A Terminate with more bytes behind it in the same packet, mid-transaction: the session
/// ends at the Terminate (nothing after it is read, so no error) and the server connection
/// is cleaned up and lent again. It once stayed lent to the departed client: with a pool of
/// one, the next client waited for nothing.
#[test]
fn a_terminate_with_bytes_behind_it_gives_the_server_connection_back() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("reactor_threads", json!(1))
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(3000),
        )
        .start();
    let mut c = logged_in(proxy.addr);
    c.simple_query("BEGIN").unwrap();
    let mut bytes = Vec::new();
    frontend::query(&mut bytes, b"SELECT pg_sleep(0.2)");
    frontend::terminate(&mut bytes);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xb7]);
    c.send(&bytes).unwrap();
    let ending = c.read_until_closed(WAIT);
    assert!(ending.closed, "{ending:?}");
    assert!(
        ending.errors.is_empty(),
        "read past the Terminate: {ending:?}"
    );
    let mut d = logged_in(proxy.addr);
    assert_eq!(
        d.query_value("SELECT 'lent again'").unwrap().as_deref(),
        Some("lent again")
    );
}

/// A message type byte of 0 (e.g. a second StartupMessage) makes pglink format an error text
/// with an interior NUL; `put_cstr`'s `debug_assert!` then panics the reactor thread.
#[test]
fn nul_message_type_after_login_is_refused() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = one_reactor(pg);
    for bytes in [vec![0, 0, 0, 0, 4], startup_bytes(SCRAM_USER.name)] {
        let mut c = logged_in(proxy.addr);
        c.send(&bytes).unwrap();
        let ending = c.read_until_closed(WAIT);
        psql_works(&proxy);
        assert_refused("message type 0", &ending, &["08P01"]);
        assert_eq!(ending.errors.len(), 1, "{ending:?}");
    }
}

#[test]
fn nul_message_type_during_authentication_is_refused() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = one_reactor(pg);
    let mut c = Conn::plain(proxy.addr);
    c.send_startup(SCRAM_USER.name, TEST_DATABASE, &LoginOptions::default());
    assert_eq!(c.expect_message().unwrap().0, b'R');
    c.send(&[0, 0, 0, 0, 4]).unwrap();
    let ending = c.read_until_closed(WAIT);
    psql_works(&proxy);
    assert_refused("message type 0 during authentication", &ending, &["08P01"]);
    assert_eq!(ending.errors.len(), 1, "{ending:?}");
}

#[test]
fn a_thousand_random_connections_never_hang_the_proxy() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = one_reactor(pg);
    let addr = proxy.addr;
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            thread::spawn(move || {
                let mut rng = TestRng::new(0x5eed_0000 + w);
                let mut cache = SaltedKeyCache::new(1);
                let mut stats = [0usize; 3]; // [closed with error, closed silently, hung]
                for i in 0..250 {
                    let kind = rng.below(4);
                    let len = 1 + rng.below(300) as usize;
                    let mut c = Conn::plain(addr);
                    let mut bytes = Vec::new();
                    match kind {
                        0 => {}
                        // A plausible length word, then garbage.
                        1 => bytes.extend_from_slice(&((len + 4) as u32).to_be_bytes()),
                        // SSLRequest, then garbage instead of a ClientHello.
                        2 => {
                            let mut req = Vec::new();
                            ssl_request(&mut req);
                            c.send(&req).unwrap();
                            let mut answer = [0u8; 1];
                            c.tcp.read_exact(&mut answer).unwrap();
                            assert_eq!(answer[0], b'S');
                        }
                        // Logged in, then garbage.
                        _ => {
                            c.login_cached(
                                SCRAM_USER.name,
                                TEST_DATABASE,
                                PW,
                                &LoginOptions::default(),
                                &mut cache,
                            )
                            .unwrap();
                        }
                    }
                    bytes.extend(rng.bytes(len));
                    if kind == 2 {
                        // Raw, under the (not yet started) TLS layer.
                        let _ = c.tcp.write_all(&bytes);
                    } else {
                        let _ = c.send(&bytes);
                    }
                    c.shutdown_write();
                    let ending = read_raw_until_closed(c, WAIT);
                    match ending {
                        RawEnding::Closed { errors } if errors > 0 => stats[0] += 1,
                        RawEnding::Closed { .. } => stats[1] += 1,
                        RawEnding::Hung => {
                            stats[2] += 1;
                            eprintln!("worker {w} connection {i} (kind {kind}) hung");
                        }
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = [0usize; 3];
    for w in workers {
        let s = w.join().unwrap();
        for (t, v) in total.iter_mut().zip(s) {
            *t += v;
        }
    }
    println!(
        "1000 random connections: {} closed with an ErrorResponse, {} closed silently, {} hung",
        total[0], total[1], total[2]
    );
    assert_eq!(total[2], 0, "connections left hanging");
    psql_works(&proxy);
    wait_until("random clients to be gone", WAIT, || {
        proxy.client_count() == 0
    });
}

enum RawEnding {
    Closed { errors: usize },
    Hung,
}

/// Reads raw bytes (the answers may be anything: TLS alerts, ErrorResponses) until EOF.
fn read_raw_until_closed(c: Conn, timeout: Duration) -> RawEnding {
    let deadline = Instant::now() + timeout;
    let (mut tcp, mut seen) = c.into_parts();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawEnding::Hung;
        }
        tcp.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match tcp.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return RawEnding::Hung,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return RawEnding::Hung,
            Err(_) => break, // reset
        }
    }
    // Count plaintext ErrorResponses with a plausible header.
    let errors = seen
        .windows(6)
        .filter(|w| w[0] == b'E' && w[1] == 0 && w[5] == b'S')
        .count();
    RawEnding::Closed { errors }
}

// ---- 11. thousands of idle clients ---------------------------------------------------------

/// A role only this test uses, so the server's backend count is ours alone.
const IDLE_USER: TestUser = TestUser {
    name: "pglink_idle",
    password: Some("idle_pw"),
    method: AuthMethod::ScramSha256,
    tls_only: false,
    superuser: false,
};

fn raise_open_file_limit(wanted: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files limit");
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    if soft >= wanted {
        return;
    }
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg("--nofile=65536:65536")
        .status()
        .expect("run prlimit");
    assert!(
        status.success(),
        "prlimit could not raise the open-file limit"
    );
}

#[test]
fn two_thousand_idle_clients_hold_no_backends() {
    let _guard = measuring_alone();
    const CLIENTS: usize = 2000;
    raise_open_file_limit(2 * CLIENTS as u64 + 1000);
    let pg = PgServer::shared();
    create_idle_role(pg);
    let pool_max = 5;
    let proxy = ProxyConfig::new(pg)
        .user(&IDLE_USER)
        .set("max_client_connections", json!(CLIENTS + 10))
        .backend("pool_max_conns", json!(pool_max))
        .start();
    let login = |cache: &mut SaltedKeyCache| {
        let mut c = Conn::plain(proxy.addr);
        c.login_cached(
            IDLE_USER.name,
            TEST_DATABASE,
            "idle_pw",
            &LoginOptions::default(),
            cache,
        )
        .unwrap_or_else(|e| panic!("login: {e:?}"));
        c
    };
    let mut cache = SaltedKeyCache::new(1);
    // Warm up: the pool learns the server parameters, buffers are allocated once.
    let mut warm: Vec<Conn> = (0..10).map(|_| login(&mut cache)).collect();
    for c in &mut warm {
        assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
    }
    thread::sleep(Duration::from_millis(200));
    let rss_before = support::wire::rss_kib();
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        idle.push(login(&mut cache).into_tcp());
    }
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(200));
    let rss_after = support::wire::rss_kib();
    assert_eq!(proxy.client_count(), CLIENTS + warm.len());
    let per_client = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / CLIENTS as f64;
    println!(
        "{CLIENTS} idle clients logged in in {took:?}; RSS {rss_before} KiB -> {rss_after} KiB: \
         {per_client:.0} bytes per idle client (proxy and test client in one process)"
    );
    let backends = pg.backend_count(IDLE_USER.name);
    assert!(
        (1..=pool_max).contains(&backends),
        "{backends} server connections for {CLIENTS} idle clients"
    );
    // A few of them, spread over the list, still work.
    for i in [0, 1, CLIENTS / 2, CLIENTS - 1] {
        let tcp = idle.swap_remove(i.min(idle.len() - 1));
        let mut c = Conn::from_tcp(tcp);
        assert_eq!(c.query_value("SELECT 42").unwrap().as_deref(), Some("42"));
    }
    assert!(pg.backend_count(IDLE_USER.name) <= pool_max);
    // Loose sanity bound (the design budget is 2 KiB; see the printed figure).
    assert!(
        per_client < 64.0 * 1024.0,
        "{per_client:.0} bytes per idle client"
    );
    drop(idle);
    wait_until("idle clients to be gone", Duration::from_secs(20), || {
        proxy.client_count() == warm.len()
    });
}

/// Env var telling [`idle_clients_child`] where to connect: `<addr> <count> <tls|plain>`.
const CHILD_ENV: &str = "PGLINK_E2E_IDLE_CHILD";

/// Run by [`idle_client_memory_plain_and_tls`] in a child process so that the client side's
/// memory is not counted as the proxy's: logs in `count` clients, says READY, then holds them
/// until its stdin closes.
#[test]
#[ignore = "child process of idle_client_memory_plain_and_tls"]
fn idle_clients_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(' ');
    let addr: SocketAddr = parts.next().unwrap().parse().unwrap();
    let count: usize = parts.next().unwrap().parse().unwrap();
    let tls = parts.next() == Some("tls");
    let mut cache = SaltedKeyCache::new(1);
    let config = client_config_any_cert(true);
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c = if tls {
            Conn::tls(addr, config.clone(), "localhost").unwrap()
        } else {
            Conn::plain(addr)
        };
        c.login_cached(
            IDLE_USER.name,
            TEST_DATABASE,
            "idle_pw",
            &LoginOptions::default(),
            &mut cache,
        )
        .unwrap();
        held.push(c);
    }
    println!("READY {count}");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
}

/// Creates [`IDLE_USER`] once per test process (tests run in parallel).
fn create_idle_role(pg: &PgServer) {
    static CREATED: std::sync::Once = std::sync::Once::new();
    CREATED.call_once(|| {
        pg.admin_sql("CREATE ROLE pglink_idle LOGIN PASSWORD 'idle_pw'");
    });
}

/// Memory pglink needs per idle client, plain and TLS, with the clients in another process.
#[test]
fn idle_client_memory_plain_and_tls() {
    let _guard = measuring_alone();
    use std::io::BufRead as _;
    use std::process::Stdio;
    raise_open_file_limit(6000);
    let pg = PgServer::shared();
    create_idle_role(pg);
    let proxy = ProxyConfig::new(pg)
        .user(&IDLE_USER)
        .set("max_client_connections", json!(5000))
        .start();
    // Warm up both kinds (pool parameters, buffer pools, TLS config).
    let mut cache = SaltedKeyCache::new(1);
    let mut warm = Vec::new();
    for i in 0..20 {
        let mut c = if i % 2 == 0 {
            Conn::plain(proxy.addr)
        } else {
            Conn::tls(proxy.addr, client_config_any_cert(true), "localhost").unwrap()
        };
        c.login_cached(
            IDLE_USER.name,
            TEST_DATABASE,
            "idle_pw",
            &LoginOptions::default(),
            &mut cache,
        )
        .unwrap();
        assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
        warm.push(c);
    }
    let mut figures = Vec::new();
    for (kind, count) in [("plain", 2000usize), ("tls", 500)] {
        thread::sleep(Duration::from_millis(200));
        let before = support::wire::rss_kib();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "idle_clients_child", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, format!("{} {count} {kind}", proxy.addr))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the client process");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("READY") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(120));
        if ready.is_err() {
            let _ = child.kill();
            panic!("{kind}: the client process did not log in {count} clients in time");
        }
        thread::sleep(Duration::from_millis(200));
        let after = support::wire::rss_kib();
        assert_eq!(proxy.client_count(), warm.len() + count, "{kind}");
        let per_client = after.saturating_sub(before) as f64 * 1024.0 / count as f64;
        figures.push(format!(
            "{kind}: {count} idle clients, pglink RSS {before} KiB -> {after} KiB = \
             {per_client:.0} bytes per client"
        ));
        drop(child.stdin.take()); // the child lets go of its clients and exits
        assert!(
            child.wait().unwrap().success(),
            "{kind}: client process failed"
        );
        wait_until(
            "the child's clients to be gone",
            Duration::from_secs(20),
            || proxy.client_count() == warm.len(),
        );
        assert!(pg.backend_count(IDLE_USER.name) <= 5);
    }
    println!("{}", figures.join("\n"));
    for c in &mut warm {
        assert_eq!(c.query_value("SELECT 2").unwrap().as_deref(), Some("2"));
    }
}

/// Wraps a socket so that every write goes out one byte at a time.
struct Dribble(TcpStream);

impl std::io::Read for Dribble {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Dribble {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.0.write(&buf[..1])?;
        thread::sleep(Duration::from_micros(300));
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn byte_by_byte_clients_log_in_and_query() {
    let _guard = not_measuring();
    let pg = PgServer::shared();
    let proxy = one_reactor(pg);
    // Plaintext: every packet and message arrives in 1-byte segments.
    let tcp = TcpStream::connect(proxy.addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut c = Conn::from_stream(Box::new(Dribble(tcp.try_clone().unwrap())), tcp, Vec::new());
    c.login(SCRAM_USER.name, TEST_DATABASE, PW, &LoginOptions::default())
        .unwrap();
    assert_eq!(
        c.query_value("SELECT 'dribbled'").unwrap().as_deref(),
        Some("dribbled")
    );
    // SSLRequest in two halves, then TLS.
    let mut tcp = TcpStream::connect(proxy.addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = Vec::new();
    ssl_request(&mut req);
    tcp.write_all(&req[..3]).unwrap();
    thread::sleep(Duration::from_millis(20));
    tcp.write_all(&req[3..]).unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'S');
    psql_works(&proxy);
}
