//! Configuration reload, in-process (`ServerHandle::reload`, `reload_file`) and on SIGHUP:
//! users, passwords and databases come and go, pool sizes, backend addresses and
//! `auth_method` change, without dropping the sessions that stay; a removed user's or
//! database's sessions end with FATAL 57P01 once idle; an invalid configuration changes
//! nothing; settings that need a restart are reported and keep their old values.
//!
//! `Proxy::reload` returning `Ok` means the new configuration is in force for new logins;
//! what it does to existing sessions (ending them, retiring server connections) may follow
//! asynchronously, and the tests wait for that with a deadline.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use support::proxy::{ChildProxy, create_user};
use support::tcprelay::TcpRelay;
use support::wire::{Conn, Failure, IO_TIMEOUT, LoginOptions, PgError, WireClient};
use support::*;

/// A second name for `pglink_test`, added and removed by reloads.
const ALIAS_DATABASE: &str = "pglink_test_alias";

// ---- helpers ------------------------------------------------------------------------------

fn login(addr: SocketAddr, user: &TestUser, db: &str) -> Result<WireClient, String> {
    WireClient::connect(addr, user.name, Proxy::password(user), db)
}

fn connect(addr: SocketAddr, user: &TestUser) -> WireClient {
    login(addr, user, TEST_DATABASE).unwrap_or_else(|e| panic!("login of {}: {e}", user.name))
}

/// The error of a login that must fail (`"FATAL <code>: <message>"`).
fn login_error(addr: SocketAddr, user: &str, password: &str, db: &str) -> String {
    match WireClient::connect(addr, user, password, db) {
        Ok(_) => panic!("{user} logged in to {db} but should not have"),
        Err(e) => e,
    }
}

fn assert_login_refused(addr: SocketAddr, user: &TestUser, db: &str, code: &str) {
    let err = login_error(addr, user.name, Proxy::password(user), db);
    assert!(err.starts_with(&format!("FATAL {code}")), "{err}");
}

fn user_entry(user: &TestUser) -> Value {
    json!({
        "username": { "insecure_value": user.name },
        "password": { "insecure_value": Proxy::password(user) }
    })
}

fn users_mut<'a>(config: &'a mut Value, db: &str) -> &'a mut Vec<Value> {
    config["databases"][db]["users"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("no users of {db}"))
}

fn add_user(config: &mut Value, db: &str, user: &TestUser) {
    users_mut(config, db).push(user_entry(user));
}

fn remove_user(config: &mut Value, db: &str, user: &TestUser) {
    let users = users_mut(config, db);
    let before = users.len();
    users.retain(|u| u["username"]["insecure_value"] != user.name);
    assert_eq!(
        users.len(),
        before - 1,
        "{} was not a user of {db}",
        user.name
    );
}

fn set_backend(config: &mut Value, field: &str, value: Value) {
    config["databases"][TEST_DATABASE]["backend"][field] = value;
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The error a session is ended with: it arrives unsolicited, or at the latest in answer to
/// the session's next query. The connection is closed after it.
fn session_end(c: &mut WireClient) -> PgError {
    c.conn.set_timeout(Duration::from_secs(2));
    let unsolicited = match c.conn.read_message() {
        Ok(Some(m)) => Some(m),
        Err(Failure::TimedOut) => None,
        other => panic!("the session ended without an ErrorResponse: {other:?}"),
    };
    c.conn.set_timeout(IO_TIMEOUT);
    let (tag, body) = match unsolicited {
        Some(m) => m,
        None => {
            let mut q = Vec::new();
            pglink::protocol::frontend::query(&mut q, b"SELECT 1");
            c.conn
                .send(&q)
                .unwrap_or_else(|e| panic!("the session was closed without a FATAL: {e}"));
            loop {
                match c.conn.expect_message() {
                    Ok((b'E', body)) => break (b'E', body),
                    Ok((b'Z', _)) => panic!("the session is still running queries"),
                    Ok(_) => {}
                    Err(e) => panic!("the session ended without an ErrorResponse: {e:?}"),
                }
            }
        }
    };
    assert_eq!(
        tag as char, 'E',
        "expected the FATAL that ends the session, got {:?}",
        tag as char
    );
    let e = PgError::decode(tag, &body);
    let ending = c.conn.read_until_closed(Duration::from_secs(5));
    assert!(ending.closed, "still open after {e}: {ending:?}");
    e
}

fn assert_ended_by_pglink(e: &PgError) {
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("FATAL", "57P01"),
        "{e}"
    );
    assert!(e.message.starts_with("pglink:"), "{e}");
}

/// A file in the temp directory, removed on drop.
#[cfg(feature = "metrics")]
struct TempFile(std::path::PathBuf);

#[cfg(feature = "metrics")]
impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("pglink-{name}-{}.json", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

#[cfg(feature = "metrics")]
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---- users, passwords, databases ----------------------------------------------------------

#[test]
fn a_user_added_by_reload_logs_in_and_other_sessions_carry_on() {
    let pg = PgServer::shared();
    let stays = create_user(pg, "reload_stays");
    let added = create_user(pg, "reload_added");
    let config = ProxyConfig::new(pg).user(&stays);
    let mut json = config.json().clone();
    let proxy = config.start();
    let mut session = connect(proxy.addr, &stays);
    session
        .query_column("SET application_name = 'before_reload'")
        .unwrap();
    assert_login_refused(proxy.addr, &added, TEST_DATABASE, "28P01");

    add_user(&mut json, TEST_DATABASE, &added);
    let outcome = proxy.reload(&json).unwrap();
    assert!(outcome.restart_needed.is_empty(), "{outcome:?}");

    let mut new = connect(proxy.addr, &added);
    assert_eq!(
        new.query_column("SELECT current_user").unwrap(),
        [added.name]
    );
    // The session that was there keeps its state and runs queries.
    assert_eq!(
        session.query_column("SHOW application_name").unwrap(),
        ["before_reload"]
    );
    assert_eq!(
        session.query_column("SELECT current_user").unwrap(),
        [stays.name]
    );
}

#[test]
fn a_removed_users_sessions_end_once_idle_and_it_cannot_log_in() {
    let pg = PgServer::shared();
    let stays = create_user(pg, "reload_keep");
    let leaves = create_user(pg, "reload_gone");
    let config = ProxyConfig::new(pg).user(&stays).user(&leaves);
    let mut json = config.json().clone();
    let proxy = config.start();
    let mut other = connect(proxy.addr, &stays);
    let mut idle = connect(proxy.addr, &leaves);
    assert_eq!(idle.query_column("SELECT 1").unwrap(), ["1"]);
    let mut busy = connect(proxy.addr, &leaves);
    busy.query_column("BEGIN").unwrap();
    assert_eq!(busy.query_column("SELECT 1").unwrap(), ["1"]);

    remove_user(&mut json, TEST_DATABASE, &leaves);
    proxy.reload(&json).unwrap();

    // A new login is refused at once.
    assert_login_refused(proxy.addr, &leaves, TEST_DATABASE, "28P01");
    // The idle session is told why it ends.
    assert_ended_by_pglink(&session_end(&mut idle));
    // The transaction finishes normally, then its session ends the same way.
    assert_eq!(busy.query_column("SELECT 2").unwrap(), ["2"]);
    busy.query_column("COMMIT").unwrap();
    assert_ended_by_pglink(&session_end(&mut busy));
    // The user who stayed is untouched.
    assert_eq!(
        other.query_column("SELECT current_user").unwrap(),
        [stays.name]
    );
}

#[test]
fn a_changed_password_applies_to_new_logins_and_old_sessions_carry_on() {
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_pw");
    let config = ProxyConfig::new(pg).user(&user);
    let mut json = config.json().clone();
    let proxy = config.start();
    let mut before = connect(proxy.addr, &user);
    assert_eq!(before.query_column("SELECT 1").unwrap(), ["1"]);

    let new_password: &'static str = Box::leak(format!("new_{}", user.name).into_boxed_str());
    pg.admin_sql(&format!(
        "ALTER ROLE {} PASSWORD '{new_password}'",
        user.name
    ));
    let changed = TestUser {
        password: Some(new_password),
        ..user
    };
    remove_user(&mut json, TEST_DATABASE, &user);
    add_user(&mut json, TEST_DATABASE, &changed);
    proxy.reload(&json).unwrap();

    let mut after = connect(proxy.addr, &changed);
    assert_eq!(
        after.query_column("SELECT current_user").unwrap(),
        [user.name]
    );
    let err = login_error(proxy.addr, user.name, user.password.unwrap(), TEST_DATABASE);
    assert!(err.starts_with("FATAL 28P01"), "{err}");
    // The session from before keeps working (on server connections made with the new
    // password: the server no longer accepts the old one).
    assert_eq!(
        before.query_column("SELECT current_user").unwrap(),
        [user.name]
    );
    assert_eq!(before.query_column("SELECT 2").unwrap(), ["2"]);
}

#[test]
fn a_database_added_by_reload_serves_and_removing_it_ends_its_sessions() {
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_db");
    let config = ProxyConfig::new(pg).user(&user);
    let mut json = config.json().clone();
    let proxy = config.start();
    let mut main = connect(proxy.addr, &user);
    assert_login_refused(proxy.addr, &user, ALIAS_DATABASE, "3D000");

    json["databases"][ALIAS_DATABASE] = json!({
        "users": [user_entry(&user)],
        "backend": {
            "host": pg.host(),
            "port": pg.port(),
            "database": TEST_DATABASE,
            "pool_max_conns": 2,
            "sslmode": "disable"
        }
    });
    let outcome = proxy.reload(&json).unwrap();
    assert!(outcome.restart_needed.is_empty(), "{outcome:?}");
    let mut alias = login(proxy.addr, &user, ALIAS_DATABASE)
        .unwrap_or_else(|e| panic!("login to the added database: {e}"));
    assert_eq!(
        alias.query_column("SELECT current_database()").unwrap(),
        [TEST_DATABASE]
    );

    json["databases"]
        .as_object_mut()
        .unwrap()
        .remove(ALIAS_DATABASE);
    proxy.reload(&json).unwrap();
    assert_login_refused(proxy.addr, &user, ALIAS_DATABASE, "3D000");
    assert_ended_by_pglink(&session_end(&mut alias));
    // The database that stayed is untouched.
    assert_eq!(main.query_column("SELECT 1").unwrap(), ["1"]);
}

// ---- pools and backends -------------------------------------------------------------------

#[test]
fn a_larger_pool_serves_a_waiting_client_while_the_others_hold_theirs() {
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_size");
    let config = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(2))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(500),
        );
    let mut json = config.json().clone();
    let proxy = config.start();
    let mut holders: Vec<WireClient> = (0..2).map(|_| connect(proxy.addr, &user)).collect();
    let mut third = connect(proxy.addr, &user);
    for h in &mut holders {
        h.query_column("BEGIN").unwrap();
        assert_eq!(h.query_column("SELECT 1").unwrap(), ["1"]);
    }
    let err = third.query_column("SELECT 1").unwrap_err();
    assert!(err.starts_with("ERROR 53300"), "{err}");

    set_backend(&mut json, "pool_max_conns", json!(3));
    proxy.reload(&json).unwrap();
    assert_eq!(third.query_column("SELECT 3").unwrap(), ["3"]);
    assert_eq!(pg.backend_count(user.name), 3);
    for h in &mut holders {
        assert_eq!(h.query_column("SELECT 2").unwrap(), ["2"]);
        h.query_column("COMMIT").unwrap();
    }
}

#[test]
fn a_new_backend_address_retires_idle_connections_and_spares_open_transactions() {
    let pg = PgServer::shared();
    let relay = TcpRelay::start(pg.port());
    let user = create_user(pg, "reload_addr");
    let config = ProxyConfig::new(pg)
        .user(&user)
        .backend("port", json!(relay.port()));
    let mut json = config.json().clone();
    let proxy = config.start();
    let mut idle = connect(proxy.addr, &user);
    assert_eq!(idle.query_column("SELECT 1").unwrap(), ["1"]);
    let mut busy = connect(proxy.addr, &user);
    busy.query_column("BEGIN").unwrap();
    let busy_pid = busy.query_column("SELECT pg_backend_pid()").unwrap();
    // Every server connection so far goes through the relay.
    let relayed = pg.backend_pids(user.name);
    assert!(!relayed.is_empty());

    set_backend(&mut json, "port", json!(pg.port()));
    proxy.reload(&json).unwrap();

    // The transaction keeps its server connection to its end.
    assert_eq!(
        busy.query_column("SELECT pg_backend_pid()").unwrap(),
        busy_pid
    );
    busy.query_column("COMMIT").unwrap();
    // The idle session's next statement runs on a new connection.
    let now = idle.query_column("SELECT pg_backend_pid()").unwrap();
    assert!(
        !relayed.contains(&now[0]),
        "{now:?} is an old connection, of {relayed:?}"
    );
    wait_until(
        "the connections through the relay are closed",
        Duration::from_secs(5),
        || {
            pg.backend_pids(user.name)
                .iter()
                .all(|p| !relayed.contains(p))
        },
    );
    // With the relay gone, everything still works: the new connections go direct.
    drop(relay);
    assert_eq!(idle.query_column("SELECT 4").unwrap(), ["4"]);
    assert_eq!(busy.query_column("SELECT 5").unwrap(), ["5"]);
    let mut fresh = connect(proxy.addr, &user);
    assert_eq!(fresh.query_column("SELECT 6").unwrap(), ["6"]);
}

// ---- client authentication ----------------------------------------------------------------

/// Logs in with our wire client; the authentication method pglink asked for.
fn login_method(addr: SocketAddr, user: &TestUser) -> String {
    let mut c = Conn::plain(addr);
    let info = c
        .login(
            user.name,
            TEST_DATABASE,
            Proxy::password(user),
            &LoginOptions::default(),
        )
        .unwrap_or_else(|e| panic!("login of {}: {e:?}", user.name));
    assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
    c.terminate();
    info.method
}

#[test]
fn auth_method_changes_for_new_logins() {
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_auth");
    let config = ProxyConfig::new(pg).user(&user);
    let mut json = config.json().clone();
    let proxy = config.start();
    let password = Some(Proxy::password(&user));
    let mut before = connect(proxy.addr, &user);
    assert_eq!(login_method(proxy.addr, &user), "SCRAM-SHA-256");
    assert_eq!(
        run_psql(&proxy.dsn(&user), password, "SELECT 1"),
        Ok("1".into())
    );

    json["auth_method"] = json!("md5_password");
    let outcome = proxy.reload(&json).unwrap();
    assert!(outcome.restart_needed.is_empty(), "{outcome:?}");

    assert_eq!(login_method(proxy.addr, &user), "md5");
    assert_eq!(
        run_psql(&proxy.dsn(&user), password, "SELECT 2"),
        Ok("2".into())
    );
    assert_eq!(before.query_column("SELECT 3").unwrap(), ["3"]);
}

// ---- refused reloads, restart-only settings -----------------------------------------------

#[test]
fn an_invalid_configuration_is_refused_whole() {
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_bad");
    let added = create_user(pg, "reload_notadded");
    let config = ProxyConfig::new(pg).user(&user);
    let json = config.json().clone();
    let proxy = config.start();
    let mut session = connect(proxy.addr, &user);

    // Invalid: a valid change together with an invalid one.
    let mut invalid = json.clone();
    add_user(&mut invalid, TEST_DATABASE, &added);
    set_backend(&mut invalid, "pool_max_conns", json!(-1));
    let err = proxy.reload(&invalid).unwrap_err();
    assert!(
        err.contains(&format!("databases.{TEST_DATABASE}.backend.pool_max_conns")),
        "{err}"
    );

    // Valid, but a secret cannot be resolved: refused by the server, nothing applied.
    let mut unresolvable = json.clone();
    add_user(&mut unresolvable, TEST_DATABASE, &added);
    users_mut(&mut unresolvable, TEST_DATABASE).push(json!({
        "username": { "insecure_value": "reload_ghost" },
        "password": { "env_var": "PGLINK_TEST_RELOAD_VARIABLE_NEVER_SET" }
    }));
    let err = proxy.reload(&unresolvable).unwrap_err();
    assert!(!err.is_empty());

    // The old configuration keeps serving.
    assert_login_refused(proxy.addr, &added, TEST_DATABASE, "28P01");
    assert_eq!(session.query_column("SELECT 1").unwrap(), ["1"]);
    let mut new = connect(proxy.addr, &user);
    assert_eq!(
        new.query_column("SELECT current_user").unwrap(),
        [user.name]
    );
}

#[cfg(feature = "metrics")]
#[test]
fn reloads_are_counted_by_outcome() {
    fn reloads(addr: SocketAddr, result: &str) -> f64 {
        let (_, raw) = http_get(addr, "/metrics");
        let series = format!("pglink_config_reloads_total{{result=\"{result}\"}}");
        raw.lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no series {series} in\n{raw}"))
    }

    let pg = PgServer::shared();
    let user = create_user(pg, "reload_count");
    let config = ProxyConfig::new(pg)
        .user(&user)
        .set("prometheus", json!({"listen": "127.0.0.1:0"}));
    let json = config.json().clone();
    let proxy = config.start();
    let metrics = proxy.metrics_addr().expect("a metrics endpoint");

    let broken = TempFile::new("reload-count-broken", "{ \"listen\": ");
    let err = proxy.reload_file(&broken.0).unwrap_err();
    assert!(err.contains("JSON"), "{err}");
    assert_eq!(reloads(metrics, "failure"), 1.0);

    proxy.reload(&json).unwrap();
    assert_eq!(reloads(metrics, "success"), 1.0);

    let good = TempFile::new("reload-count-good", &json.to_string());
    proxy.reload_file(&good.0).unwrap();
    assert_eq!(reloads(metrics, "success"), 2.0);
    assert_eq!(reloads(metrics, "failure"), 1.0);
    // Still serving, on the same metrics endpoint.
    let mut c = connect(proxy.addr, &user);
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
}

#[test]
fn restart_only_settings_are_reported_and_keep_their_values() {
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_restart");
    let added = create_user(pg, "reload_beside");
    let config = ProxyConfig::new(pg).user(&user);
    let mut json = config.json().clone();
    let proxy = config.start();
    let other_port = free_port();

    json["listen"] = json!(format!("127.0.0.1:{other_port}"));
    json["reactor_threads"] = json!(3);
    add_user(&mut json, TEST_DATABASE, &added);
    let outcome = proxy.reload(&json).unwrap();
    let mut restart_needed = outcome.restart_needed.clone();
    restart_needed.sort();
    assert_eq!(restart_needed, ["listen", "reactor_threads"], "{outcome:?}");

    // Still on the old address only; the rest of the reload was applied.
    let mut c = connect(proxy.addr, &user);
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
    let mut d = connect(proxy.addr, &added);
    assert_eq!(d.query_column("SELECT current_user").unwrap(), [added.name]);
    let other: SocketAddr = format!("127.0.0.1:{other_port}").parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&other, Duration::from_millis(500)).is_err(),
        "pglink listens on {other} before a restart"
    );
    // The same file again: still not in effect, so still reported.
    let again = proxy.reload(&json).unwrap();
    let mut restart_needed = again.restart_needed;
    restart_needed.sort();
    assert_eq!(restart_needed, ["listen", "reactor_threads"]);
    // A database's settings that the shared statement registry depends on, likewise.
    json["databases"][TEST_DATABASE]["backend"]["prepared_statement_cache_size"] = json!(7);
    let outcome = proxy.reload(&json).unwrap();
    let mut restart_needed = outcome.restart_needed;
    restart_needed.sort();
    assert_eq!(
        restart_needed,
        [
            "databases.pglink_test.backend.prepared_statement_cache_size",
            "listen",
            "reactor_threads"
        ]
    );
    assert_eq!(d.query_column("SELECT 1").unwrap(), ["1"]);
}

// ---- the binary: SIGHUP -------------------------------------------------------------------

#[test]
fn sighup_reloads_the_file_and_an_invalid_file_changes_nothing() {
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_hup");
    let added = create_user(pg, "reload_hupadd");
    let config = ProxyConfig::new(pg).user(&user);
    let mut json = config.json().clone();
    let mut proxy = ChildProxy::start(&config, "reload-hup");
    let mut session = connect(proxy.addr, &user);
    assert_login_refused(proxy.addr, &added, TEST_DATABASE, "28P01");

    add_user(&mut json, TEST_DATABASE, &added);
    proxy.write_config(&json);
    assert!(process::signal(proxy.pid(), "HUP"));
    wait_until(
        "the added user logs in after SIGHUP",
        Duration::from_secs(5),
        || {
            assert!(process::process_alive(proxy.pid()), "pglink died of SIGHUP");
            login(proxy.addr, &added, TEST_DATABASE).is_ok()
        },
    );
    assert!(proxy.wait_exit(Duration::ZERO).is_none());
    assert_eq!(session.query_column("SELECT 1").unwrap(), ["1"]);

    std::fs::write(proxy.config_path(), "{ \"databases\": ").unwrap();
    assert!(process::signal(proxy.pid(), "HUP"));
    assert!(
        proxy.wait_exit(Duration::from_millis(500)).is_none(),
        "pglink exited on an invalid configuration"
    );
    let mut c = connect(proxy.addr, &user);
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
    let mut d = connect(proxy.addr, &added);
    assert_eq!(d.query_column("SELECT current_user").unwrap(), [added.name]);
    assert_eq!(session.query_column("SELECT 2").unwrap(), ["2"]);
}

#[test]
fn sighup_resolves_secrets_again() {
    // The child's environment is fixed at start, so the reload switches the password to a
    // second variable rather than changing the value of the first.
    const OLD_VAR: &str = "PGLINK_TEST_RELOAD_OLD_PASSWORD";
    const NEW_VAR: &str = "PGLINK_TEST_RELOAD_NEW_PASSWORD";
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_env");
    let old_password = user.password.unwrap();
    let new_password = format!("new_{}", user.name);
    let users_path = format!("databases.{TEST_DATABASE}.users");
    let entry = |var: &str| {
        json!([{
            "username": { "insecure_value": user.name },
            "password": { "env_var": var }
        }])
    };
    let config = ProxyConfig::new(pg).set(&users_path, entry(OLD_VAR));
    let mut json = config.json().clone();
    let proxy = ChildProxy::start_with_env(
        &config,
        "reload-env",
        &[(OLD_VAR, old_password), (NEW_VAR, new_password.as_str())],
    );
    let mut session = connect(proxy.addr, &user);
    assert_eq!(session.query_column("SELECT 1").unwrap(), ["1"]);

    pg.admin_sql(&format!(
        "ALTER ROLE {} PASSWORD '{new_password}'",
        user.name
    ));
    json["databases"][TEST_DATABASE]["users"] = entry(NEW_VAR);
    proxy.write_config(&json);
    assert!(process::signal(proxy.pid(), "HUP"));
    wait_until(
        "the password from the new variable is accepted",
        Duration::from_secs(5),
        || {
            assert!(process::process_alive(proxy.pid()), "pglink died of SIGHUP");
            WireClient::connect(proxy.addr, user.name, &new_password, TEST_DATABASE).is_ok()
        },
    );
    let err = login_error(proxy.addr, user.name, old_password, TEST_DATABASE);
    assert!(err.starts_with("FATAL 28P01"), "{err}");
    assert_eq!(
        session.query_column("SELECT current_user").unwrap(),
        [user.name]
    );
}

#[test]
fn a_new_client_certificate_serves_new_handshakes_and_scram_plus_follows_it() {
    use support::wire::client_config_any_cert;
    let pg = PgServer::shared();
    let user = create_user(pg, "reload_cert");
    // Starts with a generated certificate.
    let config = ProxyConfig::new(pg).user(&user);
    let mut json = config.json().clone();
    let proxy = config.start();
    let handshake = || {
        support::wire::Conn::tls(proxy.addr, client_config_any_cert(true), "localhost")
            .unwrap()
            .peer_cert
            .expect("a certificate")
    };
    let before = handshake();
    assert_ne!(before, pg.server_cert_der());
    let mut open = connect(proxy.addr, &user);
    json["tls"] = json!({
        "sslmode": "prefer",
        "cert_path": pg.server_cert_path().to_str().unwrap(),
        "cert_private_key_path": pg.server_key_path().to_str().unwrap(),
    });
    proxy.reload(&json).unwrap();
    assert_eq!(
        handshake(),
        pg.server_cert_der(),
        "new handshakes get the new certificate"
    );
    // SCRAM-SHA-256-PLUS binds to the certificate of the connection: psql with
    // channel_binding=require logs in through the new one.
    let dsn = proxy.dsn_with(&user, "sslmode=require channel_binding=require");
    assert_eq!(
        run_psql(&dsn, Some(Proxy::password(&user)), "SELECT 1").unwrap(),
        "1"
    );
    // A session from before is untouched.
    assert_eq!(open.query_column("SELECT 2").unwrap(), ["2"]);
}
