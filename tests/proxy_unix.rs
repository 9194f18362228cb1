//! Unix sockets on both sides: a backend whose `host` is PostgreSQL's socket directory (as in
//! libpq), and `listen` entries that are socket files (found by libpq's `host=<dir>
//! port=<port>`), beside TCP.

mod support;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::wire::WireClient;
use support::workdir::TempDir;
use support::*;
use tokio_postgres::NoTls;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh directory for socket files, removed when dropped.
struct Dir(TempDir);

impl Dir {
    fn new(name: &str) -> Dir {
        Dir(TempDir::new(name))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// `<dir>/.s.PGSQL.<port>`: what libpq opens for `host=<dir> port=<port>`.
    fn socket(&self, port: u16) -> PathBuf {
        self.path().join(format!(".s.PGSQL.{port}"))
    }

    fn dsn(&self, port: u16, user: &TestUser) -> String {
        format!(
            "host={} port={port} user={} dbname={TEST_DATABASE} connect_timeout=10",
            self.path().display(),
            user.name
        )
    }
}

/// pglink in front of `pg` over its unix socket, with these users.
fn unix_backend(pg: &PgServer, users: &[TestUser]) -> ProxyConfig {
    let mut config = ProxyConfig::new(pg)
        .backend("host", json!(pg.socket_dir().to_str().unwrap()))
        .backend("port", json!(pg.port()));
    for user in users {
        config = config.user(user);
    }
    config
}

/// Whether the server connection running the query came over a unix socket, and with TLS.
const TRANSPORT: &str = "SELECT a.client_addr IS NULL, s.ssl FROM pg_stat_activity a \
                         JOIN pg_stat_ssl s USING (pid) WHERE a.pid = pg_backend_pid()";

#[test]
fn backend_over_a_unix_socket_serves_psql_and_a_driver() {
    let pg = PgServer::shared();
    // sslmode prefer (the default) means no TLS over a unix socket, as in libpq.
    let proxy = unix_backend(pg, &[SCRAM_USER, MD5_USER]).start();
    for user in [SCRAM_USER, MD5_USER] {
        let out = run_psql(&proxy.dsn(&user), user.password, TRANSPORT);
        assert_eq!(out, Ok("t|f".into()), "{}", user.name);
    }
    runtime().block_on(async {
        let dsn = format!(
            "{} password={}",
            proxy.dsn(&SCRAM_USER),
            Proxy::password(&SCRAM_USER)
        );
        let (mut client, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        let conn = tokio::spawn(conn);
        let table = format!("unix_backend_{}", std::process::id());
        client
            .batch_execute(&format!("CREATE TABLE {table} (n int)"))
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        tx.execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&7i32])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.execute(&format!("INSERT INTO {table} VALUES (8)"), &[])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let row = client
            .query_one(&format!("SELECT sum(n)::int FROM {table}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
        let stmt = client.prepare("SELECT $1::int + 1").await.unwrap();
        for i in 0..20i32 {
            let row = client.query_one(&stmt, &[&i]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i + 1);
        }
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
        drop(client);
        let _ = conn.await;
    });
    // The cancel reaches the server over its unix socket too.
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let took = c.cancel_a_sleep(proxy.addr, pg);
    // Well short of the 10 s the query would otherwise run.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
}

#[test]
fn backend_over_a_unix_socket_logs_in_with_the_configured_password() {
    let pg = PgServer::shared();
    // pglink accepts the client with this password, the server (scram over its socket too)
    // does not.
    let user = TestUser {
        password: Some("not_the_server_password"),
        ..SCRAM_USER
    };
    let proxy = unix_backend(pg, &[user]).start();
    let err = run_psql(&proxy.dsn(&user), user.password, "SELECT 1").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
}

#[test]
fn listens_on_a_unix_socket_beside_tcp() {
    let pg = PgServer::shared();
    let dir = Dir::new("listen");
    let port = 6543;
    let socket = dir.socket(port);
    // TLS required of TCP clients; a unix-socket client is local: libpq never asks for TLS
    // there, and PostgreSQL neither offers nor requires it.
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("listen", json!(["127.0.0.1:0", socket.to_str().unwrap()]))
        .set("tls", json!({"sslmode": "require", "generate_cert": true}))
        .start();
    assert_eq!(proxy.unix_sockets(), std::slice::from_ref(&socket));
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);

    let pw = SCRAM_USER.password;
    let over_unix = |sql: &str, extra: &str| {
        run_psql(&format!("{} {extra}", dir.dsn(port, &SCRAM_USER)), pw, sql)
    };
    assert_eq!(over_unix("SELECT 1", ""), Ok("1".into()));
    // libpq ignores sslmode over a unix socket: require connects, in plaintext.
    assert_eq!(
        over_unix(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "sslmode=require"
        ),
        Ok("f".into())
    );
    // TCP beside it: TLS as configured, plaintext refused.
    assert_eq!(
        run_psql(
            &proxy.dsn_with(&SCRAM_USER, "sslmode=require"),
            pw,
            "SELECT 2"
        ),
        Ok("2".into())
    );
    let err = run_psql(&proxy.dsn(&SCRAM_USER), pw, "SELECT 3").unwrap_err();
    assert!(err.contains("TLS"), "{err}");

    // Several unix clients at once (all served by the first reactor), each in a transaction.
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let dsn = dir.dsn(port, &SCRAM_USER);
            std::thread::spawn(move || run_psql(&dsn, pw, &format!("BEGIN; SELECT {i}; COMMIT")))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), Ok(i.to_string()));
    }

    // A driver over the socket: a transaction, and a cancel sent to the socket.
    runtime().block_on(async {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(dir.path())
            .port(port)
            .user(SCRAM_USER.name)
            .password(pw.unwrap())
            .dbname(TEST_DATABASE)
            .connect(NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        client.batch_execute("BEGIN").await.unwrap();
        let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        client.batch_execute("COMMIT").await.unwrap();
        let cancel = client.cancel_token();
        let mark = unique_mark();
        let sql = format!("SELECT pg_sleep(10) /* {mark} */");
        let sleep = client.simple_query(&sql);
        // Sent once the query runs: earlier, there is nothing to cancel.
        let canceller = async {
            tokio::task::spawn_blocking(move || pg.wait_for_query(&mark))
                .await
                .unwrap();
            cancel.cancel_query(NoTls).await.unwrap();
        };
        let (slept, ()) = tokio::join!(sleep, canceller);
        let err = slept.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{err}"
        );
        drop(client);
        let _ = conn.await;
    });

    proxy.shutdown();
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[test]
fn stale_socket_file_is_replaced_and_a_live_one_refuses_the_start() {
    let pg = PgServer::shared();
    let dir = Dir::new("stale");
    let socket = dir.socket(6544);
    // Left behind by a process that died: nobody listens on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let only_unix = |socket: &Path| {
        ProxyConfig::new(pg)
            .user(&SCRAM_USER)
            .set("listen", json!(socket.to_str().unwrap()))
    };
    let proxy = only_unix(&socket).start();
    assert_eq!(
        run_psql(&dir.dsn(6544, &SCRAM_USER), SCRAM_USER.password, "SELECT 1"),
        Ok("1".into())
    );
    // A second pglink on the same live socket: a clear error, and the first one unharmed.
    let err = only_unix(&socket)
        .try_start()
        .err()
        .expect("must not start");
    assert!(err.contains(socket.to_str().unwrap()), "{err}");
    assert!(err.contains("another process is listening"), "{err}");
    assert_eq!(
        run_psql(&dir.dsn(6544, &SCRAM_USER), SCRAM_USER.password, "SELECT 2"),
        Ok("2".into())
    );
    // Something that is not a socket is never deleted.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep").unwrap();
    let err = only_unix(&file).try_start().err().expect("must not start");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    drop(proxy);
    assert!(
        !socket.exists(),
        "the socket file is removed when the server is dropped"
    );
}
