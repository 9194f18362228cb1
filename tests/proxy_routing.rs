//! End to end: where clients arrive and where they are sent — several listen addresses, a
//! bare port, several databases — what a client learns at login, notices, cancels arriving
//! on either reactor with protocol 3.2's long keys, and a server that never answers.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use serde_json::json;

use pglink::protocol::ProtocolVersion;
use support::wire::{Conn, LoginOptions, WireClient};
use support::*;

/// A port free on both 127.0.0.1 and ::1 (when the machine has IPv6 loopback).
fn free_port(ipv6: bool) -> u16 {
    loop {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        if !ipv6 || TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

fn has_ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn select_one(addr: SocketAddr) {
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(addr, SCRAM_USER.name, pw, TEST_DATABASE)
        .unwrap_or_else(|e| panic!("login via {addr}: {e}"));
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"], "via {addr}");
}

#[test]
fn listens_on_every_address_of_the_list_and_on_a_bare_port() {
    let pg = PgServer::shared();
    let ipv6 = has_ipv6_loopback();
    let port = free_port(ipv6);
    let mut listen = vec![format!("127.0.0.1:{port}")];
    if ipv6 {
        listen.push(format!("[::1]:{port}"));
    } else {
        eprintln!("no IPv6 loopback on this machine: IPv4 only");
    }
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("listen", json!(listen))
        .start();
    select_one(SocketAddr::from(([127, 0, 0, 1], port)));
    if ipv6 {
        select_one(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
    }
    drop(proxy);

    // A port alone: every interface, IPv4 and IPv6.
    let port = free_port(ipv6);
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("listen", json!(port.to_string()))
        .start();
    select_one(SocketAddr::from(([127, 0, 0, 1], port)));
    if ipv6 {
        select_one(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
    }
    drop(proxy);
}

#[test]
fn each_database_name_routes_to_its_own_server_database() {
    let pg = PgServer::shared();
    let other = format!("pglink_route_{}", std::process::id());
    pg.admin_sql(&format!("CREATE DATABASE {other}"));
    let users = json!([{
        "username": { "insecure_value": SCRAM_USER.name },
        "password": { "insecure_value": Proxy::password(&SCRAM_USER) }
    }]);
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set(
            "databases.reports",
            json!({
                "users": users,
                "backend": {
                    "host": pg.host(), "port": pg.port(), "database": other,
                    "pool_max_conns": 2, "sslmode": "disable"
                }
            }),
        )
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    for (name, server_db) in [(TEST_DATABASE, TEST_DATABASE), ("reports", other.as_str())] {
        let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, name).unwrap();
        assert_eq!(
            c.query_column("SELECT current_database()").unwrap(),
            [server_db],
            "clients of {name}"
        );
    }
    let err = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, "nonesuch")
        .err()
        .expect("unknown database");
    assert!(err.contains("3D000"), "{err}");
}

#[test]
fn login_reports_the_servers_parameters() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    let direct = {
        let mut c = Conn::plain(pg.addr().parse().unwrap());
        c.login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap()
    };
    let mut c = Conn::plain(proxy.addr);
    let info = c
        .login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap();
    for name in [
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "IntervalStyle",
        "integer_datetimes",
        "standard_conforming_strings",
        "is_superuser",
    ] {
        assert!(direct.param(name).is_some(), "PostgreSQL reports {name}");
        assert_eq!(info.param(name), direct.param(name), "{name}");
    }
    assert!(info.params.iter().any(|(n, _)| n == "application_name"));
    // Proxy-issued key, then ReadyForQuery idle, and nothing was held for it.
    assert_eq!(info.tags.last(), Some(&b'Z'));
    assert!(info.key.is_some());
}

#[test]
fn notices_reach_the_client_inside_and_outside_transactions() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let raise = "DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$";
    for in_transaction in [false, true] {
        if in_transaction {
            c.query_column("BEGIN").unwrap();
        }
        let msgs = c.simple(raise).unwrap();
        let notice = msgs
            .iter()
            .find(|m| m.tag == b'N')
            .and_then(|m| m.error())
            .expect("a NoticeResponse");
        assert_eq!(notice.0, "NOTICE");
        assert_eq!(notice.2, "hello from plpgsql");
    }
    c.query_column("COMMIT").unwrap();
}

#[test]
fn cancels_with_long_keys_reach_sessions_on_either_reactor() {
    let pg = PgServer::shared();
    // Two reactors: the cancel connection lands on either, whichever holds the session.
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("reactor_threads", json!(2))
        .start();
    for round in 0..6 {
        let mut conn = Conn::plain(proxy.addr);
        let options = LoginOptions {
            version: ProtocolVersion::V3_2,
            ..LoginOptions::default()
        };
        let info = conn
            .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &options)
            .unwrap();
        assert_eq!(info.key.as_ref().map(|k| k.1.len()), Some(32));
        let mut c = WireClient {
            conn,
            key: info.key,
        };
        let took = c.cancel_a_sleep(proxy.addr, pg);
        // Well short of the 10 s the query would otherwise run.
        assert!(took < Duration::from_secs(5), "round {round}: {took:?}");
    }
}

#[test]
fn connect_timeout_bounds_a_server_that_never_answers() {
    let pg = PgServer::shared();
    // Accepts connections (the kernel does) and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("port", json!(port))
        .backend("sslmode", json!("prefer"))
        .backend("connect_timeout", json!("1s"))
        // Longer than connect_timeout, so that the failed attempt, not the wait, is reported.
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(5000),
        )
        .start();
    let started = Instant::now();
    let err = WireClient::connect(
        proxy.addr,
        SCRAM_USER.name,
        Proxy::password(&SCRAM_USER),
        TEST_DATABASE,
    )
    .err()
    .expect("no server behind the port");
    let took = started.elapsed();
    assert!(err.contains("08006") && err.contains("pglink:"), "{err}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    drop(silent);
}
