//! The admin console: the virtual database `pglink`, reached with psql through the normal
//! listener by the users in `admin_users` (with their own passwords). SHOW commands with
//! PgBouncer's column names, RELOAD, PAUSE/RESUME (tested across a PostgreSQL restart under
//! pgbench load), RECONNECT, SHUTDOWN; 42501 for other users, 42601 for unknown commands.

mod support;

use std::time::Duration;

use serde_json::json;
use support::proxy::{ChildProxy, console, create_user, rows};
use support::wire::WireClient;
use support::*;

const CONSOLE: &str = "pglink";

fn config(pg: &PgServer, admin: &TestUser, others: &[&TestUser]) -> ProxyConfig {
    let mut config = ProxyConfig::new(pg)
        .user(admin)
        .set("admin_users", json!([admin.name]));
    for u in others {
        config = config.user(u);
    }
    config
}

/// The error of a login that must fail.
fn refused(addr: std::net::SocketAddr, user: &str, password: &str) -> String {
    match WireClient::connect(addr, user, password, CONSOLE) {
        Ok(_) => panic!("{user} got into the console"),
        Err(e) => e,
    }
}

fn backend_pid(c: &mut WireClient) -> String {
    c.query_column("SELECT pg_backend_pid()").unwrap().remove(0)
}

#[test]
fn show_commands_describe_pools_clients_servers_and_settings() {
    let pg = PgServer::shared();
    let admin = create_user(pg, "console_admin");
    let app = create_user(pg, "console_app");
    let proxy = config(pg, &admin, &[&app]).start();
    let mut client =
        WireClient::connect(proxy.addr, app.name, Proxy::password(&app), TEST_DATABASE).unwrap();
    client.query_column("BEGIN").unwrap();
    let pid = backend_pid(&mut client);
    let port = proxy.port();

    // database|user|cl_active|cl_waiting|sv_active|sv_idle|sv_tested|sv_login|maxwait|maxwait_us|pool_mode
    let pools = rows(&console(port, &admin, "SHOW POOLS").unwrap());
    let row = pools
        .iter()
        .find(|r| r[1] == app.name)
        .unwrap_or_else(|| panic!("no pool of {} in {pools:?}", app.name));
    assert_eq!(row[0], TEST_DATABASE);
    assert_eq!(
        (row[2].as_str(), row[3].as_str(), row[4].as_str()),
        ("1", "0", "1"),
        "{row:?}"
    );
    assert_eq!(row[10], "transaction");

    // type|user|database|state|addr|port|wait|wait_us|application_name|server_pid
    let clients = rows(&console(port, &admin, "show clients;").unwrap());
    let me = clients
        .iter()
        .find(|r| r[1] == app.name)
        .expect("the app's client");
    assert_eq!(
        (me[0].as_str(), me[2].as_str(), me[3].as_str()),
        ("C", TEST_DATABASE, "active")
    );
    assert_eq!(me[4], "127.0.0.1");
    assert_eq!(me[9], pid, "the server connection it holds");
    assert!(
        clients
            .iter()
            .any(|r| r[1] == admin.name && r[3] == "console"),
        "the console session itself: {clients:?}"
    );

    // type|user|database|state|addr|port|remote_pid|tls
    let servers = rows(&console(port, &admin, "SHOW SERVERS").unwrap());
    let lent = servers
        .iter()
        .find(|r| r[6] == pid)
        .expect("the lent server connection");
    assert_eq!(
        (lent[0].as_str(), lent[1].as_str(), lent[3].as_str()),
        ("S", app.name, "active")
    );
    assert_eq!(lent[5], pg.port().to_string());

    // name|host|port|database|pool_size|min_pool_size|pool_mode|current_connections|paused
    let dbs = rows(&console(port, &admin, "SHOW DATABASES").unwrap());
    assert_eq!(dbs.len(), 1);
    assert_eq!(dbs[0][0], TEST_DATABASE);
    assert_eq!(dbs[0][4], "5", "pool_max_conns");
    assert_eq!(dbs[0][8], "0", "not paused");

    let version = console(port, &admin, "SHOW VERSION").unwrap();
    assert!(version.starts_with("pglink "), "{version}");
    let config = rows(&console(port, &admin, "SHOW CONFIG").unwrap());
    let admins = config.iter().find(|r| r[0] == "admin_users").unwrap();
    assert_eq!(admins[1], admin.name);
    let listen = config.iter().find(|r| r[0] == "listen").unwrap();
    assert_eq!(listen[2], "no", "listen needs a restart");
    client.query_column("COMMIT").unwrap();
    // database|total_xact_count|total_wait_time|...
    let stats = rows(&console(port, &admin, "SHOW STATS").unwrap());
    let xacts: u64 = stats[0][1].parse().unwrap();
    assert!(xacts >= 1, "{stats:?}");
    let help = console(port, &admin, "SHOW HELP").unwrap();
    assert!(help.contains("PAUSE [db]"), "{help}");
}

#[test]
fn only_admin_users_get_in_and_unknown_commands_are_errors() {
    let pg = PgServer::shared();
    let admin = create_user(pg, "console_adm2");
    let app = create_user(pg, "console_user2");
    let proxy = config(pg, &admin, &[&app]).start();
    let port = proxy.port();
    // A configured user that is no admin: authenticated, then refused.
    let e = console(port, &app, "SHOW POOLS").unwrap_err();
    assert!(e.contains("may not use the admin console"), "{e}");
    let e = refused(proxy.addr, app.name, Proxy::password(&app));
    assert!(e.starts_with("FATAL 42501"), "{e}");
    // A wrong password, or an unknown user, fails as any login does.
    let e = refused(proxy.addr, admin.name, "wrong");
    assert!(e.starts_with("FATAL 28P01"), "{e}");
    let e = refused(proxy.addr, "nobody", "x");
    assert!(e.starts_with("FATAL 28P01"), "{e}");
    // An unknown command is an ERROR; the session goes on.
    let mut c =
        WireClient::connect(proxy.addr, admin.name, Proxy::password(&admin), CONSOLE).unwrap();
    let e = c.query_column("SELECT 1").unwrap_err();
    assert!(e.contains("42601") && e.contains("SHOW HELP"), "{e}");
    let e = c.query_column("SHOW NOTHING").unwrap_err();
    assert!(e.contains("42601"), "{e}");
    assert_eq!(c.query_column("SHOW VERSION").unwrap().len(), 1);
    let e = c.query_column("PAUSE no_such_db").unwrap_err();
    assert!(e.contains("3D000"), "{e}");
    // Started from a value, not a file: RELOAD has nothing to read.
    let e = c.query_column("RELOAD").unwrap_err();
    assert!(e.contains("55000"), "{e}");
}

#[test]
fn reconnect_replaces_server_connections_as_they_become_idle() {
    let pg = PgServer::shared();
    let admin = create_user(pg, "console_adm3");
    let app = create_user(pg, "console_user3");
    let proxy = config(pg, &admin, &[&app]).start();
    let mut c =
        WireClient::connect(proxy.addr, app.name, Proxy::password(&app), TEST_DATABASE).unwrap();
    let before = backend_pid(&mut c);
    c.query_column("BEGIN").unwrap();
    assert_eq!(backend_pid(&mut c), before);
    console(proxy.port(), &admin, "RECONNECT").unwrap();
    // The open transaction keeps its connection...
    assert_eq!(backend_pid(&mut c), before);
    c.query_column("COMMIT").unwrap();
    // ...which is closed when it comes back: the next transaction runs on a new one.
    assert_ne!(backend_pid(&mut c), before);
}

#[test]
fn pause_waits_for_open_transactions_and_resume_serves_who_waited() {
    let pg = PgServer::shared();
    let admin = create_user(pg, "console_adm4");
    let app = create_user(pg, "console_user4");
    let proxy = config(pg, &admin, &[&app])
        .set(
            "databases.pglink_test.pool_acquire_timeout_milliseconds",
            json!(20000),
        )
        .start();
    let port = proxy.port();
    let mut busy =
        WireClient::connect(proxy.addr, app.name, Proxy::password(&app), TEST_DATABASE).unwrap();
    busy.query_column("BEGIN").unwrap();
    let (admin_name, admin_pw) = (admin.name, Proxy::password(&admin));
    let pause = std::thread::spawn(move || {
        let dsn = format!(
            "host=127.0.0.1 port={port} user={admin_name} dbname={CONSOLE} sslmode=disable"
        );
        run_psql(&dsn, Some(admin_pw), "PAUSE")
    });
    // name|host|port|database|pool_size|min_pool_size|pool_mode|current_connections|paused
    wait_until("the database is paused", Duration::from_secs(10), || {
        rows(&console(port, &admin, "SHOW DATABASES").unwrap())[0][8] == "1"
    });
    busy.query_column("SELECT 1").unwrap();
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");
    busy.query_column("COMMIT").unwrap();
    pause.join().unwrap().unwrap();
    assert_eq!(
        pg.backend_count(app.name),
        0,
        "PAUSE closes the server connections"
    );
    // A transaction now waits, without an error...
    let mut waiting = busy;
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let got = waiting.query_column("SELECT 'after resume'");
        tx.send(()).unwrap();
        got
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "held while paused"
    );
    console(port, &admin, "RESUME").unwrap();
    // ...and runs once resumed.
    assert_eq!(waiter.join().unwrap().unwrap(), ["after resume"]);
}

#[test]
fn pause_restart_postgresql_resume_loses_no_transaction() {
    let pg = PgServer::start();
    let user = &SCRAM_USER;
    let pw = Proxy::password(user);
    let pgbench = move |args: &[&str], port: u16| {
        let mut cmd =
            std::process::Command::new(support::process::binaries().bindir.join("pgbench"));
        support::process::clear_pg_env(&mut cmd);
        cmd.env("PGPASSWORD", pw)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user.name])
            .args(args)
            .arg(TEST_DATABASE);
        support::process::run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap()
    };
    let init = pgbench(&["-i", "-s", "1", "-q"], pg.port());
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let proxy = ProxyConfig::new(&pg)
        .user(user)
        .set("admin_users", json!([user.name]))
        .backend("pool_max_conns", json!(4))
        .set(
            "databases.pglink_test.pool_acquire_timeout_milliseconds",
            json!(30000),
        )
        .start();
    let port = proxy.port();
    let load = std::thread::spawn(move || pgbench(&["-S", "-c", "8", "-j", "2", "-T", "10"], port));
    std::thread::sleep(Duration::from_secs(3));
    console(port, user, "PAUSE").unwrap();
    pg.restart();
    console(port, user, "RESUME").unwrap();
    let out = load.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("aborted"), "{stderr}");
    let processed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(processed > 100, "{stdout}");
    if let Some(failed) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
    {
        assert!(failed.starts_with("0 "), "{failed}");
    }
}

#[test]
fn reload_and_shutdown_from_the_console() {
    let pg = PgServer::shared();
    let admin = create_user(pg, "console_adm5");
    let added = create_user(pg, "console_added5");
    let config = config(pg, &admin, &[]);
    let mut proxy = ChildProxy::start(&config, "console");
    let port = proxy.addr.port();
    assert!(
        WireClient::connect(
            proxy.addr,
            added.name,
            Proxy::password(&added),
            TEST_DATABASE
        )
        .is_err()
    );
    let mut json = config.json().clone();
    json["databases"][TEST_DATABASE]["users"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "username": { "insecure_value": added.name },
            "password": { "insecure_value": Proxy::password(&added) }
        }));
    proxy.write_config(&json);
    console(port, &admin, "RELOAD").unwrap();
    let mut c = WireClient::connect(
        proxy.addr,
        added.name,
        Proxy::password(&added),
        TEST_DATABASE,
    )
    .unwrap();
    assert_eq!(c.query_column("SELECT current_user").unwrap(), [added.name]);
    drop(c);
    // An invalid file: RELOAD is an error naming the problem; the running one stays.
    std::fs::write(proxy.config_path(), "{ not json").unwrap();
    let e = console(port, &admin, "RELOAD").unwrap_err();
    assert!(e.contains("JSON"), "{e}");
    console(port, &admin, "SHUTDOWN").unwrap();
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("pglink did not stop");
    assert!(status.success(), "{status}");
}

#[test]
fn admin_users_must_be_configured_users_and_pglink_is_no_database_name() {
    let pg = PgServer::shared();
    let admin = create_user(pg, "console_adm6");
    let e = ProxyConfig::new(pg)
        .user(&admin)
        .set("admin_users", json!(["ghost"]))
        .try_start()
        .err()
        .expect("an admin that is no user");
    assert!(e.contains("admin_users") && e.contains("\"ghost\""), "{e}");
    let mut json = ProxyConfig::new(pg).user(&admin).json().clone();
    json["databases"][CONSOLE] = json["databases"][TEST_DATABASE].clone();
    let e = pglink::Config::from_value(json).unwrap_err().to_string();
    assert!(e.contains("databases.pglink"), "{e}");
}

#[test]
fn a_reload_that_takes_a_user_out_of_admin_users_ends_its_console_session() {
    let pg = PgServer::shared();
    let admin = create_user(pg, "console_adm7");
    let config = config(pg, &admin, &[]);
    let mut json = config.json().clone();
    let proxy = config.start();
    let mut c =
        WireClient::connect(proxy.addr, admin.name, Proxy::password(&admin), CONSOLE).unwrap();
    assert_eq!(c.query_column("SHOW VERSION").unwrap().len(), 1);
    json["admin_users"] = json!([]);
    proxy.reload(&json).unwrap();
    let ended = c.read().unwrap();
    let (severity, code, message) = ended.error().expect("an error ends the session");
    assert_eq!(
        (severity.as_str(), code.as_str()),
        ("FATAL", "57P01"),
        "{message}"
    );
    // And a new login is refused.
    let e = refused(proxy.addr, admin.name, Proxy::password(&admin));
    assert!(e.starts_with("FATAL 42501"), "{e}");
}
