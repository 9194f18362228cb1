//! The embedding API (`pglink::Config`, `pglink::Server`) as an appliance uses it: several
//! independent servers in one process, stopped in either order, leaving no thread behind;
//! and `examples/embed.rs` run against the real PostgreSQL.
//!
//! Nothing else in this test binary starts pglink in-process, so every `pglink-*` thread
//! seen here belongs to the servers under test.

mod support;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use support::proxy::create_user;
use support::{PgServer, TEST_DATABASE, run_psql};

/// The tests here take turns: one counts this process's threads, which another's helper
/// threads (running the example, reading its output) would disturb.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_owned())
        .collect()
}

fn pglink_threads() -> Vec<String> {
    thread_names()
        .into_iter()
        .filter(|n| n.starts_with("pglink-"))
        .collect()
}

/// A configuration for one user of the test database, optionally with a metrics endpoint.
fn config_json(pg: &PgServer, user: &support::TestUser, metrics: bool) -> serde_json::Value {
    let mut config = json!({
        "listen": "127.0.0.1:0",
        "reactor_threads": 2,
        "databases": {
            TEST_DATABASE: {
                "users": [{
                    "username": { "insecure_value": user.name },
                    "password": { "insecure_value": user.password.unwrap() }
                }],
                "backend": {
                    "host": pg.host(),
                    "port": pg.port(),
                    "database": TEST_DATABASE,
                    "pool_max_conns": 2,
                    "sslmode": "disable"
                }
            }
        }
    });
    if metrics {
        config["prometheus"] = json!({ "listen": "127.0.0.1:0" });
    }
    config
}

fn query(server: &pglink::ServerHandle, user: &support::TestUser) -> Result<String, String> {
    let addr = server.local_addrs()[0];
    let dsn = format!(
        "host=127.0.0.1 port={} user={} dbname={TEST_DATABASE} sslmode=disable connect_timeout=10",
        addr.port(),
        user.name
    );
    run_psql(&dsn, user.password, "SELECT current_user")
}

#[test]
fn two_servers_in_one_process_stop_in_either_order_and_leave_no_thread() {
    let _serial = serial();
    let pg = PgServer::shared();
    let (alice, bob) = (create_user(pg, "embed_a"), create_user(pg, "embed_b"));
    assert_eq!(pglink_threads(), Vec::<String>::new());
    let baseline = thread_names().len();
    let dir = tempdir();
    let bob_file = dir.join("bob.json");
    std::fs::write(&bob_file, config_json(pg, &bob, false).to_string()).unwrap();

    for a_first in [true, false] {
        // Three ways to a configuration: a JSON value, JSON text, a file.
        let a = pglink::Config::from_value(config_json(pg, &alice, true)).unwrap();
        let a = pglink::Server::start(a).unwrap();
        let b = if a_first {
            pglink::Config::from_json(&config_json(pg, &bob, false).to_string()).unwrap()
        } else {
            pglink::Config::from_path(&bob_file).unwrap()
        };
        let b = pglink::Server::start(b).unwrap();
        assert_ne!(a.local_addrs(), b.local_addrs());
        assert_eq!(a.metrics_addrs().len(), 1);
        assert!(b.metrics_addrs().is_empty());
        assert_eq!(query(&a, &alice), Ok(alice.name.to_owned()));
        assert_eq!(query(&b, &bob), Ok(bob.name.to_owned()));
        // Each server knows only its own users.
        assert!(query(&a, &bob).is_err());
        let running = pglink_threads();
        for name in ["pglink-reactor", "pglink-scram", "pglink-metrics"] {
            assert!(
                running.iter().any(|t| t.starts_with(name)),
                "{name} in {running:?}"
            );
        }

        let (first, second, second_user) = if a_first {
            (a, b, &bob)
        } else {
            (b, a, &alice)
        };
        first.shutdown();
        // The other one is untouched.
        assert_eq!(query(&second, second_user), Ok(second_user.name.to_owned()));
        second.shutdown();
        // A joined thread can linger in /proc for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pglink_threads().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pglink_threads(), Vec::<String>::new(), "a_first: {a_first}");
        // Nor any thread it started under another name (a library's own pool, say).
        let deadline = Instant::now() + Duration::from_secs(5);
        while thread_names().len() > baseline && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(thread_names().len(), baseline, "{:?}", thread_names());
    }
}

#[test]
fn a_configuration_error_names_the_field() {
    let error = pglink::Config::from_value(json!({
        "listen": "127.0.0.1:0",
        "databases": { "app": { "users": [], "backend": { "host": "h", "port": 70000 } } }
    }))
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("databases.app.backend.port"), "{text}");
    let missing = pglink::Config::from_path("/nonexistent/pglink.json").unwrap_err();
    assert!(
        missing.to_string().contains("cannot read file"),
        "{missing}"
    );
}

/// `examples/embed.rs`, built by `cargo test` next to the test binaries.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    debug.join("examples").join("embed")
}

#[test]
fn the_embed_example_proxies_a_query_and_stops() {
    let _serial = serial();
    let pg = PgServer::shared();
    let user = create_user(pg, "embed_ex");
    let example = example_binary();
    assert!(
        example.exists(),
        "{} is missing: run `cargo test` (which builds the examples), not only this test",
        example.display()
    );
    let mut cmd = std::process::Command::new(&example);
    cmd.env("PGHOST", pg.host())
        .env("PGPORT", pg.port().to_string())
        .env("PGUSER", user.name)
        .env("PGPASSWORD", user.password.unwrap())
        .env("PGDATABASE", TEST_DATABASE);
    let out = support::process::run_with_timeout(&mut cmd, Duration::from_secs(60)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("through pglink: 42"), "{stdout}");
    assert!(stdout.contains("pglink stopped"), "{stdout}");
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglink-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
