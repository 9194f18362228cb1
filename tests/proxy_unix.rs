//! Unix sockets: a backend whose `host` is PostgreSQL's socket directory (as in libpq).

mod support;

use std::time::Duration;

use serde_json::json;
use support::wire::WireClient;
use support::*;
use tokio_postgres::NoTls;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
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
    let took = c.cancel_a_sleep(proxy.addr);
    assert!(took < Duration::from_secs(2), "{took:?}");
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
