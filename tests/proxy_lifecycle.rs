//! Server connections over time: the server going away and coming back, lifetimes, idle
//! expiry, the warm minimum, health checks, cancel over TLS, graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::wire::WireClient;
use support::*;

#[test]
fn unreachable_server_is_an_error_and_recovery_is_automatic() {
    let pg = PgServer::start();
    let proxy = ProxyConfig::new(&pg).user(&SCRAM_USER).start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
    pg.stop();
    // The client was idle, so it has no transaction to lose: an ERROR, not a FATAL.
    let err = c.query_column("SELECT 2").unwrap_err();
    assert!(err.starts_with("ERROR 08006: pglink:"), "{err}");
    assert!(err.contains("cannot connect to server"), "{err}");
    // The session survives and works again once the server is back (after the back-off
    // that follows a failed connection attempt, at most 2 s).
    pg.restart();
    wait_until("the session works again", Duration::from_secs(10), || {
        c.query_column("SELECT 3").is_ok_and(|r| r == ["3"])
    });
    // New logins work after the restart either way.
    let mut d = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    assert_eq!(d.query_column("SELECT 4").unwrap(), ["4"]);
}

#[test]
fn first_login_with_the_server_down_is_fatal_08006() {
    let pg = PgServer::start();
    let proxy = ProxyConfig::new(&pg).user(&SCRAM_USER).start();
    pg.stop();
    let err = WireClient::connect(
        proxy.addr,
        SCRAM_USER.name,
        Proxy::password(&SCRAM_USER),
        TEST_DATABASE,
    )
    .err()
    .expect("login must fail while the server is down");
    assert!(err.contains("FATAL") && err.contains("08006"), "{err}");
    assert!(err.contains("pglink:"), "{err}");
}

#[test]
fn wrong_backend_password_reaches_the_client_with_the_servers_code() {
    let pg = PgServer::shared();
    // pglink accepts the client with this password but the server does not know it.
    let user = TestUser {
        password: Some("not_the_server_password"),
        ..SCRAM_USER
    };
    let proxy = ProxyConfig::new(pg).user(&user).start();
    let err = WireClient::connect(
        proxy.addr,
        user.name,
        "not_the_server_password",
        TEST_DATABASE,
    )
    .err()
    .expect("backend login must fail");
    assert!(err.contains("28P01"), "{err}");
    assert!(err.contains("cannot log in to server"), "{err}");
}

#[test]
fn lifetime_idle_time_and_minimum_are_kept() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "life");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(4))
        .backend("pool_min_idle_conns", json!(2))
        .backend("pool_max_conn_lifetime", json!("1500ms"))
        .backend("pool_max_conn_idle_time", json!("800ms"))
        .start();
    let pw = Proxy::password(&user);
    // The minimum is opened before anyone asks... once the pool has logged in once.
    let mut c = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    wait_until("two warm backends", Duration::from_secs(5), || {
        pg.backend_count(user.name) == 2
    });
    let first = c.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    // Lifetime: the backend serving us is replaced.
    wait_until("the backend is replaced", Duration::from_secs(8), || {
        c.query_column("SELECT pg_backend_pid()").unwrap()[0] != first
    });
    // A burst opens more; idle expiry takes them back down to the minimum.
    let mut more: Vec<WireClient> = (0..4)
        .map(|_| WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap())
        .collect();
    for m in &mut more {
        m.query_column("BEGIN").unwrap();
    }
    assert_eq!(pg.backend_count(user.name), 4);
    for m in &mut more {
        m.query_column("COMMIT").unwrap();
    }
    wait_until(
        "idle backends expire down to the minimum",
        Duration::from_secs(8),
        || pg.backend_count(user.name) == 2,
    );
}

#[test]
fn idle_time_counts_from_the_last_client_not_the_last_health_check() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "idlecheck");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(3))
        .backend("pool_max_conn_idle_time", json!("3s"))
        .backend("pool_health_check_period", json!("200ms"))
        .start();
    let pw = Proxy::password(&user);
    let mut clients: Vec<WireClient> = (0..3)
        .map(|_| WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap())
        .collect();
    for c in &mut clients {
        c.query_column("BEGIN").unwrap();
    }
    assert_eq!(pg.backend_count(user.name), 3);
    // A long transaction: idle time starts when it ends, not when it began.
    std::thread::sleep(Duration::from_millis(3500));
    let committing = Instant::now();
    for c in &mut clients {
        c.query_column("COMMIT").unwrap();
    }
    // Long enough for maintenance passes (every 500 ms) to have looked at them.
    std::thread::sleep(Duration::from_millis(1000));
    let count = pg.backend_count(user.name);
    // Their idle time began after `committing`: only a count taken well within 3 s of it
    // says anything (a slow machine can take longer).
    let elapsed = committing.elapsed();
    if elapsed < Duration::from_millis(2500) {
        assert_eq!(count, 3, "closed before they were idle 3 s");
    } else {
        eprintln!("inconclusive: counted {elapsed:?} after the COMMITs, too late to tell");
    }
    // Health checks every 200 ms must not make the connections look freshly used.
    wait_until(
        "idle backends close although health-checked",
        Duration::from_secs(15),
        || pg.backend_count(user.name) == 0,
    );
    // And the pool still works afterwards.
    assert_eq!(clients[0].query_column("SELECT 1").unwrap(), ["1"]);
}

#[test]
fn health_check_replaces_a_dead_idle_backend() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "health");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(2))
        .backend("pool_health_check_period", json!("500ms"))
        .set("admin_users", json!([user.name]))
        .start();
    let pw = Proxy::password(&user);
    let mut c = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    let pid = c.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    // type|user|database|state|addr|port|remote_pid|tls
    let state_of_frozen = || {
        proxy
            .console_rows(&user, "SHOW SERVERS")
            .into_iter()
            .find(|r| r[6] == pid)
            .map(|r| r[3].clone())
    };
    // database|user|cl_active|cl_waiting|sv_active|sv_idle|sv_tested|...: counted as they
    // change, whereas SHOW SERVERS leaves out a reactor that is slow to answer.
    let none_tested = || {
        proxy
            .console_rows(&user, "SHOW POOLS")
            .iter()
            .any(|r| r[1] == user.name && r[6] == "0")
    };
    // Stop the server process from answering without closing the socket: SIGSTOP.
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // Thawed however the test ends.
    struct Thaw<'a>(&'a str);
    impl Drop for Thaw<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", self.0])
                .status();
        }
    }
    let thaw = Thaw(&pid);
    // Within a few check periods the frozen backend is being health-checked (and will be
    // closed when the check times out), so it is not lent: a new one serves us. Frozen, it
    // cannot show the check in pg_stat_activity; pglink's console can.
    wait_until(
        "the frozen backend is health-checked",
        Duration::from_secs(10),
        || state_of_frozen().as_deref() == Some("tested"),
    );
    let started = Instant::now();
    let other = c.query_column("SELECT pg_backend_pid()");
    let took = started.elapsed();
    // Stay frozen past the check's deadline (5 s), until pglink gave up on the connection:
    // thawed earlier, it would pass the check.
    wait_until(
        "the check of the frozen backend fails",
        Duration::from_secs(15),
        || state_of_frozen().is_none() && none_tested(),
    );
    drop(thaw);
    let other = other.unwrap().remove(0);
    assert_ne!(other, pid);
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The check timed out and pglink closed the frozen connection: once thawed, that server
    // process finds its socket closed and exits.
    wait_until(
        "the frozen backend is closed",
        Duration::from_secs(10),
        || !pg.backend_pids(user.name).contains(&pid),
    );
}

#[test]
fn cancel_is_delivered_over_tls_to_a_tls_backend() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("sslmode", json!("require"))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    assert_eq!(
        c.query_column("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .unwrap(),
        ["t"]
    );
    let took = c.cancel_a_sleep(proxy.addr, pg);
    // Well short of the 10 s the query would otherwise run.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn graceful_shutdown_lets_open_transactions_finish() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut idle = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let mut busy = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    busy.query_column("BEGIN").unwrap();
    let addr = proxy.addr;
    let stopper = std::thread::spawn(move || proxy.shutdown());
    // The idle client is told why it is being closed.
    let msg = idle.read().unwrap();
    let (severity, code, _) = msg.error().unwrap();
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "57P01"));
    // The open transaction can still finish...
    assert_eq!(busy.query_column("SELECT 1").unwrap(), ["1"]);
    busy.query_column("COMMIT").unwrap();
    // ...after which that session ends too, and nothing new is accepted.
    assert!(busy.read().is_ok_and(|m| m.tag == b'E') || busy.read().is_err());
    stopper.join().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

#[test]
fn listens_on_ipv6_loopback_too() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; nothing to test");
        return;
    }
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("listen", json!(["127.0.0.1:0"]))
        .start();
    // A second instance on ::1 with an explicit free port.
    let port = std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let v6 = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("listen", json!([format!("[::1]:{port}")]))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(v6.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    assert!(v6.addr.is_ipv6());
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
    drop(proxy);
}

#[test]
fn a_second_instance_cannot_share_the_port() {
    let pg = PgServer::shared();
    let first = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    // The first instance's sockets use SO_REUSEPORT (one per reactor); a second instance on
    // the same port must be refused, not handed half of the connections.
    let err = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("listen", json!(format!("127.0.0.1:{}", first.port())))
        .try_start()
        .err()
        .expect("the port is taken");
    assert!(err.contains("in use"), "{err}");
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(first.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
}

#[test]
fn cleanup_that_does_not_finish_in_time_closes_the_connection() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "cleanup");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(15_000),
        )
        .start();
    let pw = Proxy::password(&user);
    let mut a = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    a.query_column("BEGIN").unwrap();
    let pid = a.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    // The server process stops answering; then its client vanishes mid-transaction. The
    // ROLLBACK pglink sends is never answered.
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    a.vanish();
    let started = Instant::now();
    let mut b = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    let got = b.query_column("SELECT pg_backend_pid()");
    let took = started.elapsed();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    // With a pool of one, b is served only once the stuck connection was given up (after
    // the 5 s cleanup limit) and a new one opened.
    let other = got.unwrap().remove(0);
    assert_ne!(other, pid);
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(9),
        "{took:?}"
    );
    wait_until(
        "the stuck backend is closed",
        Duration::from_secs(10),
        || !pg.backend_pids(user.name).contains(&pid),
    );
}
