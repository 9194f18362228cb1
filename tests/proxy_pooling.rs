//! Transaction pooling end to end: many clients over few backends, isolation, pipelines,
//! COPY, acquire timeouts, cancels, and backends or clients disappearing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::proxy::ChildProxy;
use support::wire::{WireClient, send_cancel};
use support::*;
use tokio_postgres::NoTls;

async fn connect(proxy: &Proxy, user: &TestUser) -> tokio_postgres::Client {
    let dsn = format!("{} password={}", proxy.dsn(user), Proxy::password(user));
    let (client, conn) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .expect("connect through pglink");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A table name unique to one test (tests share the database).
fn table(name: &str) -> String {
    format!("t_{name}_{}", std::process::id())
}

/// `cl_waiting` of `user`'s pool, from the console (`user` must be in `admin_users`).
fn clients_waiting(proxy: &Proxy, user: &TestUser) -> usize {
    // database|user|cl_active|cl_waiting|...
    let pools = proxy.console_rows(user, "SHOW POOLS");
    let pool = pools
        .iter()
        .find(|r| r[0] == TEST_DATABASE && r[1] == user.name)
        .unwrap_or_else(|| panic!("no pool of {} in {pools:?}", user.name));
    pool[3].parse().unwrap()
}

/// Samples the number of server connections of `user` until `stop`, keeping the maximum.
fn watch_backends(
    pg: &'static PgServer,
    user: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Acquire) {
            max = max.max(pg.backend_count(user));
            std::thread::sleep(Duration::from_millis(50));
        }
        max
    })
}

#[test]
fn fifty_clients_share_five_backends_with_correct_results() {
    let pg = PgServer::shared();
    let user: &'static TestUser = Box::leak(Box::new(proxy::create_user(pg, "conc")));
    let proxy = ProxyConfig::new(pg).user(user).start();
    let t = table("concurrency");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO {t} SELECT g, 0 FROM generate_series(0, 9) g;
         GRANT ALL ON {t} TO PUBLIC"
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_backends(pg, user.name, stop.clone());
    let rt = runtime();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let client = connect(&proxy, user).await;
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..20 {
                    let id = (i + j) % 10;
                    client.batch_execute("BEGIN").await.unwrap();
                    let before: i32 = client
                        .query_one(
                            &format!("SELECT n FROM {t} WHERE id = $1 FOR UPDATE"),
                            &[&id],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    client
                        .execute(
                            &format!("UPDATE {t} SET n = $1 WHERE id = $2"),
                            &[&(before + 1), &id],
                        )
                        .await
                        .unwrap();
                    client.batch_execute("COMMIT").await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    stop.store(true, Ordering::Release);
    let max_backends = watcher.join().unwrap();
    let total = pg.admin_sql_in(TEST_DATABASE, &format!("SELECT sum(n) FROM {t}"));
    assert_eq!(
        total.trim(),
        "1000",
        "every increment committed exactly once"
    );
    assert!(
        max_backends <= 5,
        "at most pool_max_conns server connections, saw {max_backends}"
    );
    assert!(max_backends >= 1);
}

#[test]
fn transactions_of_different_clients_stay_isolated() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(2))
        .start();
    let t = table("isolation");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (v text); GRANT ALL ON {t} TO PUBLIC"),
    );
    runtime().block_on(async {
        let a = connect(&proxy, &SCRAM_USER).await;
        let b = connect(&proxy, &SCRAM_USER).await;
        a.batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES ('uncommitted')"))
            .await
            .unwrap();
        let seen: i64 = b
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            seen, 0,
            "another client must not see an open transaction's rows"
        );
        // Session state set inside a transaction stays with that transaction.
        a.batch_execute("SET LOCAL statement_timeout = '1234ms'")
            .await
            .unwrap();
        let a_pid: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let b_pid: i32 = b
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(a_pid, b_pid, "a transaction keeps its backend to itself");
        a.batch_execute("ROLLBACK").await.unwrap();
        let seen: i64 = b
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 0);
        let timeout: String = b
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(timeout, "0", "SET LOCAL did not leak");
    });
}

#[test]
fn pipelined_queries_on_one_connection() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(2))
        .start();
    runtime().block_on(async {
        let client = connect(&proxy, &SCRAM_USER).await;
        // tokio-postgres pipelines concurrent queries on one connection: several
        // Parse/Bind/Execute/Sync batches are in flight at once.
        let stmt = client.prepare("SELECT $1::int * 2").await.unwrap();
        let futures = (0..200).map(|i| {
            let client = &client;
            let stmt = &stmt;
            async move {
                client
                    .query_one(stmt, &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        });
        let results = futures_util::future::join_all(futures).await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), i as i32 * 2);
        }
        // An error in the middle of a pipeline fails only its own query.
        let (ok1, bad, ok2) = tokio::join!(
            client.query_one("SELECT 1", &[]),
            client.query_one("SELECT 1/0", &[]),
            client.query_one("SELECT 3", &[])
        );
        assert_eq!(ok1.unwrap().get::<_, i32>(0), 1);
        assert_eq!(bad.unwrap_err().code().unwrap().code(), "22012");
        assert_eq!(ok2.unwrap().get::<_, i32>(0), 3);
    });
}

#[test]
fn raw_pipeline_of_syncs_and_multi_statement_queries() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .start();
    let mut c = WireClient::connect(
        proxy.addr,
        SCRAM_USER.name,
        Proxy::password(&SCRAM_USER),
        TEST_DATABASE,
    )
    .unwrap();
    let mut batch = Vec::new();
    use pglink::protocol::frontend;
    for i in 0..5 {
        frontend::parse(&mut batch, b"", format!("SELECT {i}").as_bytes(), &[]);
        frontend::bind(&mut batch, b"", b"", &[], [], &[]);
        frontend::execute(&mut batch, b"", 0);
        frontend::sync(&mut batch);
    }
    frontend::query(&mut batch, b"SELECT 10; SELECT 11");
    c.send(&batch);
    let mut readies = 0;
    let mut rows = Vec::new();
    while readies < 6 {
        let m = c.read().unwrap();
        match m.tag {
            b'Z' => readies += 1,
            b'D' => rows.push(m.body[6..].to_vec()),
            b'E' => panic!("error: {:?}", m.error()),
            _ => {}
        }
    }
    let rows: Vec<String> = rows
        .into_iter()
        .map(|r| String::from_utf8(r).unwrap())
        .collect();
    assert_eq!(rows, ["0", "1", "2", "3", "4", "10", "11"]);
    // The single backend was released: another client gets it.
    let mut other = WireClient::connect(
        proxy.addr,
        SCRAM_USER.name,
        Proxy::password(&SCRAM_USER),
        TEST_DATABASE,
    )
    .unwrap();
    assert_eq!(other.query_column("SELECT 42").unwrap(), ["42"]);
}

#[test]
fn a_pipeline_deeper_than_the_request_queue_completes() {
    // 3000 batches of four messages each are 12,000 requests in flight, three times what
    // one session queues: pglink must stop reading and resume as answers drain, not stall.
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .start();
    let mut c = WireClient::connect(
        proxy.addr,
        SCRAM_USER.name,
        Proxy::password(&SCRAM_USER),
        TEST_DATABASE,
    )
    .unwrap();
    use pglink::protocol::frontend;
    const BATCHES: usize = 1100;
    let mut batch = Vec::new();
    for i in 0..BATCHES {
        frontend::parse(&mut batch, b"", format!("SELECT {i}").as_bytes(), &[]);
        frontend::bind(&mut batch, b"", b"", &[], [], &[]);
        frontend::execute(&mut batch, b"", 0);
        frontend::sync(&mut batch);
    }
    c.send(&batch);
    let (mut readies, mut rows) = (0, 0);
    while readies < BATCHES {
        let m = c.read().unwrap();
        match m.tag {
            b'Z' => readies += 1,
            b'D' => rows += 1,
            b'E' => panic!("error: {:?}", m.error()),
            _ => {}
        }
    }
    assert_eq!(rows, BATCHES);
    assert_eq!(c.query_column("SELECT 42").unwrap(), ["42"]);
}

#[test]
fn copy_twenty_megabytes_in_and_out_byte_exact() {
    use futures_util::SinkExt;
    use futures_util::StreamExt;
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(2))
        .start();
    let t = table("copy");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (id int, payload text); GRANT ALL ON {t} TO PUBLIC"),
    );
    // 20 MB of text rows with varied content (no characters COPY would escape).
    let mut data = Vec::with_capacity(21 << 20);
    let mut i = 0u64;
    while data.len() < 20 << 20 {
        let payload: String = (0..(50 + i % 3000))
            .map(|k| char::from(b'a' + ((i * 7 + k) % 26) as u8))
            .collect();
        data.extend_from_slice(format!("{i}\t{payload}\n").as_bytes());
        i += 1;
    }
    let rt = runtime();
    rt.block_on(async {
        let client = connect(&proxy, &SCRAM_USER).await;
        let sink = client
            .copy_in(&format!("COPY {t} FROM STDIN"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        for chunk in data.chunks(100_000) {
            sink.send(bytes::Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
        }
        let n = sink.finish().await.unwrap();
        assert_eq!(n, i);
        let stream = client
            .copy_out(&format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT"))
            .await
            .unwrap();
        futures_util::pin_mut!(stream);
        let mut out = Vec::with_capacity(data.len());
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(out.len(), data.len());
        assert!(out == data, "COPY OUT returned different bytes");
        // The connection is still fine for normal queries.
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    });
}

#[test]
fn copy_errors_leave_the_session_usable() {
    use futures_util::SinkExt;
    use futures_util::StreamExt;
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .start();
    let t = table("copyerr");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (n int); GRANT ALL ON {t} TO PUBLIC"),
    );
    runtime().block_on(async {
        let client = connect(&proxy, &SCRAM_USER).await;
        // Bad data mid-COPY IN.
        let sink = client
            .copy_in(&format!("COPY {t} FROM STDIN"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1\n2\nnot a number\n3\n"))
            .await
            .unwrap();
        let err = sink.finish().await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "22P02");
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        // Error in the middle of COPY OUT.
        let stream = client
            .copy_out("COPY (SELECT 100 / (5000 - g) FROM generate_series(1, 10000) g) TO STDOUT")
            .await
            .unwrap();
        futures_util::pin_mut!(stream);
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            if let Err(e) = chunk {
                failed = Some(e);
                break;
            }
        }
        assert_eq!(
            failed
                .expect("division by zero mid-stream")
                .code()
                .unwrap()
                .code(),
            "22012"
        );
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    });
    // CopyFail from the client (psql does this on a bad \copy source).
    let mut c = WireClient::connect(
        proxy.addr,
        SCRAM_USER.name,
        Proxy::password(&SCRAM_USER),
        TEST_DATABASE,
    )
    .unwrap();
    let mut m = Vec::new();
    pglink::protocol::frontend::query(&mut m, format!("COPY {t} FROM STDIN").as_bytes());
    c.send(&m);
    assert_eq!(c.read().unwrap().tag, b'G');
    let mut m = Vec::new();
    pglink::protocol::frontend::copy_data(&mut m, b"7\n");
    pglink::protocol::frontend::copy_fail(&mut m, b"client gave up");
    c.send(&m);
    let msgs = c.until_ready().unwrap();
    let err = msgs.iter().find_map(|m| m.error()).expect("CopyFail error");
    assert_eq!(err.1, "57014");
    assert_eq!(
        c.query_column(&format!("SELECT count(*) FROM {t}"))
            .unwrap(),
        ["0"]
    );
}

#[test]
fn waiters_are_served_first_come_first_served_across_reactors() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "fifo");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(20_000),
        )
        .set("admin_users", json!([user.name]))
        .start();
    let pw = Proxy::password(&user);
    let t = table("fifo");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (id serial PRIMARY KEY, n int); GRANT ALL ON {t}, {t}_id_seq TO PUBLIC"),
    );
    let mut holder = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    holder.query_column("BEGIN").unwrap();
    // Two reactors: the waiters land on either; the order must hold across both.
    let mut waiters: Vec<WireClient> = (0..6)
        .map(|_| WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap())
        .collect();
    for (i, w) in waiters.iter_mut().enumerate() {
        let mut m = Vec::new();
        pglink::protocol::frontend::query(
            &mut m,
            format!("INSERT INTO {t} (n) VALUES ({i})").as_bytes(),
        );
        w.send(&m);
        // Queued before the next one comes.
        wait_until("the waiter to queue", Duration::from_secs(10), || {
            clients_waiting(&proxy, &user) == i + 1
        });
    }
    holder.query_column("COMMIT").unwrap();
    for w in &mut waiters {
        let msgs = w.until_ready().unwrap();
        assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");
    }
    let order = pg.admin_sql_in(
        TEST_DATABASE,
        &format!("SELECT string_agg(n::text, ',' ORDER BY id) FROM {t}"),
    );
    assert_eq!(order.trim(), "0,1,2,3,4,5");
}

#[test]
fn idle_connections_of_one_user_make_room_for_another() {
    let pg = PgServer::shared();
    let first = proxy::create_user(pg, "roomfirst");
    let others: Vec<TestUser> = (0..5)
        .map(|_| proxy::create_user(pg, "roomother"))
        .collect();
    let mut config = ProxyConfig::new(pg)
        .user(&first)
        .backend("pool_max_conns", json!(2))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(3000),
        );
    for u in &others {
        config = config.user(u);
    }
    let proxy = config.start();
    let count = || {
        pg.backend_count(first.name)
            + others
                .iter()
                .map(|u| pg.backend_count(u.name))
                .sum::<usize>()
    };
    // Each round: the first user fills the database's two connections and leaves them idle;
    // a user without a connection then needs one. With two reactors the idle ones are on
    // the other reactor about half of the time.
    for other in &others {
        let pw = Proxy::password(&first);
        let mut a = WireClient::connect(proxy.addr, first.name, pw, TEST_DATABASE).unwrap();
        let mut b = WireClient::connect(proxy.addr, first.name, pw, TEST_DATABASE).unwrap();
        a.query_column("BEGIN").unwrap();
        b.query_column("BEGIN").unwrap();
        a.query_column("COMMIT").unwrap();
        b.query_column("COMMIT").unwrap();
        let mut o = WireClient::connect(
            proxy.addr,
            other.name,
            Proxy::password(other),
            TEST_DATABASE,
        )
        .unwrap();
        let started = Instant::now();
        assert_eq!(o.query_column("SELECT 1").unwrap(), ["1"], "{}", other.name);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(count() <= 2, "pool_max_conns is for all users together");
    }
}

/// A proxy with one server connection, which `holder` holds inside BEGIN: `waiter`'s
/// statements wait for it, for at most `acquire_timeout_ms`. `SCRAM_USER` may use the console.
fn holder_and_waiter(acquire_timeout_ms: u64) -> (Proxy, WireClient, WireClient) {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(acquire_timeout_ms),
        )
        .set("admin_users", json!([SCRAM_USER.name]))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut holder = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let waiter = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    holder.query_column("BEGIN").unwrap();
    (proxy, holder, waiter)
}

#[test]
fn acquire_timeout_is_an_error_and_the_session_survives() {
    let (_proxy, mut holder, mut waiter) = holder_and_waiter(300);
    let started = Instant::now();
    let err = waiter.query_column("SELECT 1").unwrap_err();
    let waited = started.elapsed();
    assert!(err.starts_with("ERROR 53300"), "{err}");
    assert!(
        err.contains(TEST_DATABASE) && err.contains("pool_max_conns 1"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    holder.query_column("COMMIT").unwrap();
    assert_eq!(
        waiter.query_column("SELECT 2").unwrap(),
        ["2"],
        "the session is still usable"
    );
}

#[test]
fn a_cancel_of_a_statement_waiting_for_the_pool_ends_it_and_the_session_goes_on() {
    let (proxy, mut holder, mut waiter) = holder_and_waiter(30_000);
    // The waiter's statement waits for the only connection; its cancel ends the wait with
    // 57014, as the server would have ended the statement.
    let took =
        waiter.cancel_a_waiting_sleep(proxy.addr, || clients_waiting(&proxy, &SCRAM_USER) == 1);
    // Well short of the 30 s acquire timeout (and the 10 s the query would run).
    assert!(took < Duration::from_secs(5), "{took:?}");
    holder.query_column("COMMIT").unwrap();
    assert_eq!(waiter.query_column("SELECT 2").unwrap(), ["2"]);
}

#[test]
fn cancel_reaches_the_running_query_and_bogus_keys_do_nothing() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(2))
        .start();
    runtime().block_on(async {
        let client = connect(&proxy, &SCRAM_USER).await;
        let token = client.cancel_token();
        let mark = unique_mark();
        let sql = format!("SELECT pg_sleep(10) /* {mark} */");
        let started = Instant::now();
        let sleeper = tokio::spawn(async move { client.batch_execute(&sql).await });
        // Sent once the query runs: earlier, there is nothing to cancel.
        tokio::task::spawn_blocking(move || pg.wait_for_query(&mark))
            .await
            .unwrap();
        token.cancel_query(NoTls).await.unwrap();
        let err = sleeper.await.unwrap().unwrap_err();
        assert_eq!(err.code().unwrap().code(), "57014");
        // Well short of the 10 s the query would otherwise run.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cancelled in {:?}",
            started.elapsed()
        );
    });
    // A wrong secret, or a pid no session has, cancels nothing.
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let (pid, key) = c.key.clone().unwrap();
    let mut m = Vec::new();
    pglink::protocol::frontend::query(&mut m, b"SELECT pg_sleep(1)");
    c.send(&m);
    std::thread::sleep(Duration::from_millis(200));
    let mut wrong = key.clone();
    wrong[0] ^= 0xff;
    send_cancel(proxy.addr, pid, &wrong);
    send_cancel(proxy.addr, pid ^ 0x55, &key);
    send_cancel(proxy.addr, 0x7fff_ffff, &key);
    let msgs = c.until_ready().unwrap();
    assert!(
        msgs.iter().all(|m| m.tag != b'E'),
        "the query ran to completion: {msgs:?}"
    );
}

#[test]
fn psql_cancel_with_sigint() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    let mark = unique_mark();
    let mut cmd = psql_command(SCRAM_USER.password);
    cmd.arg("-d")
        .arg(proxy.dsn(&SCRAM_USER))
        .arg("-c")
        .arg(format!("SELECT pg_sleep(10) /* {mark} */"));
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().unwrap();
    // psql sends a cancel only for a query it is running; and there must be one to cancel.
    pg.wait_for_query(&mark);
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    // Well short of the 10 s the query would otherwise run.
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn killed_backends_idle_and_mid_transaction() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&MD5_USER)
        .backend("pool_max_conns", json!(2))
        .set("admin_users", json!([MD5_USER.name]))
        .start();
    let pw = Proxy::password(&MD5_USER);
    let mut a = WireClient::connect(proxy.addr, MD5_USER.name, pw, TEST_DATABASE).unwrap();
    let mut b = WireClient::connect(proxy.addr, MD5_USER.name, pw, TEST_DATABASE).unwrap();
    // Idle: kill every server connection of the pool; the next queries just work.
    a.query_column("SELECT 1").unwrap();
    let killed = pg.backend_pids(MD5_USER.name);
    assert!(!killed.is_empty());
    pg.terminate_backends(MD5_USER.name);
    // Gone, and pglink noticed: its pool has no server connection left
    // (database|user|cl_active|cl_waiting|sv_active|sv_idle|sv_tested|sv_login|...).
    wait_until(
        "the killed backends are gone",
        Duration::from_secs(10),
        || {
            let left = pg.backend_pids(MD5_USER.name);
            let pools = proxy.console_rows(&MD5_USER, "SHOW POOLS");
            killed.iter().all(|p| !left.contains(p))
                && pools
                    .iter()
                    .any(|r| r[1] == MD5_USER.name && r[4..8].iter().all(|n| n == "0"))
        },
    );
    assert_eq!(a.query_column("SELECT 2").unwrap(), ["2"]);
    assert_eq!(b.query_column("SELECT 3").unwrap(), ["3"]);
    // Mid-transaction: the client holding that backend loses its session (FATAL), the other
    // client is unaffected.
    a.query_column("BEGIN").unwrap();
    let pid = a.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("SELECT pg_terminate_backend({pid})"),
    );
    let msg = a.read().unwrap();
    let (severity, code, _) = msg
        .error()
        .expect("an error for the client whose transaction died");
    // The server said why (terminated by an administrator): its own FATAL is passed on.
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "57P01"));
    assert!(a.read().is_err(), "the session is closed");
    assert_eq!(b.query_column("SELECT 4").unwrap(), ["4"]);
    let mut c = WireClient::connect(proxy.addr, MD5_USER.name, pw, TEST_DATABASE).unwrap();
    assert_eq!(c.query_column("SELECT 5").unwrap(), ["5"]);
}

#[test]
fn server_connections_lost_without_a_word_idle_and_mid_transaction() {
    let pg = PgServer::shared();
    let relay = support::tcprelay::TcpRelay::start(pg.port());
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("host", json!("127.0.0.1"))
        .backend("port", json!(relay.port()))
        .backend("pool_max_conns", json!(2))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut a = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let mut b = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    a.query_column("BEGIN").unwrap();
    assert_eq!(b.query_column("SELECT 1").unwrap(), ["1"]);
    // Both server connections (one held by `a`, one idle) vanish, with no FATAL from the
    // server: the network dropped them.
    relay.cut();
    let msg = a.read().unwrap();
    let (severity, code, message) = msg.error().expect("the client in a transaction is told");
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "08006"));
    assert!(message.starts_with("pglink:"), "{message}");
    assert!(a.read().is_err(), "the session is closed");
    // The idle client never notices: its next statement gets a new server connection.
    assert_eq!(b.query_column("SELECT 2").unwrap(), ["2"]);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    assert_eq!(c.query_column("SELECT 3").unwrap(), ["3"]);
}

#[test]
fn vanished_client_releases_its_locks_and_its_backend() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "vanish");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .start();
    let pw = Proxy::password(&user);
    let t = table("vanish");
    pg.admin_sql_in(TEST_DATABASE, &format!("CREATE TABLE {t} (id int PRIMARY KEY, v int); INSERT INTO {t} VALUES (1, 0); GRANT ALL ON {t} TO PUBLIC"));
    for how in ["abruptly", "mid-query"] {
        let mut a = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
        a.query_column("BEGIN").unwrap();
        a.query_column(&format!("SELECT v FROM {t} WHERE id = 1 FOR UPDATE"))
            .unwrap();
        if how == "mid-query" {
            let mut m = Vec::new();
            pglink::protocol::frontend::query(&mut m, b"SELECT pg_sleep(30)");
            a.send(&m);
            std::thread::sleep(Duration::from_millis(200));
        }
        a.vanish();
        // With a pool of one, this only works once the backend was cleaned up and returned.
        let started = Instant::now();
        let mut b = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
        b.query_column("SET lock_timeout = '8s'").unwrap();
        b.query_column(&format!("UPDATE {t} SET v = v + 1 WHERE id = 1"))
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{how}: took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        pg.admin_sql_in(TEST_DATABASE, &format!("SELECT v FROM {t}"))
            .trim(),
        "2"
    );
    assert!(
        pg.backend_count(user.name) <= 1,
        "no server connection leaked"
    );
}

fn pgbench(args: &[&str], password: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(support::process::binaries().bindir.join("pgbench"));
    support::process::clear_pg_env(&mut cmd);
    cmd.env("PGPASSWORD", password).args(args);
    support::process::run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap()
}

#[test]
fn pgbench_simple_and_extended_without_failures() {
    let pg = PgServer::shared();
    let user = &SCRAM_USER;
    let pw = user.password.unwrap();
    let port = pg.port().to_string();
    let init = pgbench(
        &[
            "-i",
            "-s",
            "2",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            user.name,
            TEST_DATABASE,
        ],
        pw,
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let proxy = ProxyConfig::new(pg)
        .user(user)
        .backend("pool_max_conns", json!(4))
        .start();
    let proxy_port = proxy.port().to_string();
    let seconds = std::env::var("PGLINK_PGBENCH_SECONDS").unwrap_or_else(|_| "10".into());
    for mode in ["simple", "extended"] {
        let out = pgbench(
            &[
                "-M",
                mode,
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                &seconds,
                "-h",
                "127.0.0.1",
                "-p",
                &proxy_port,
                "-U",
                user.name,
                TEST_DATABASE,
            ],
            pw,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgbench -M {mode} failed:\n{stdout}\n{stderr}"
        );
        let processed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            processed > 100,
            "pgbench -M {mode} processed {processed}:\n{stdout}"
        );
        if let Some(failed) = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of failed transactions: "))
        {
            assert!(failed.starts_with("0 "), "pgbench -M {mode}: {failed}");
        }
        println!("pgbench -M {mode}: {processed} transactions");
    }
}

/// Reads everything up to the final ReadyForQuery slowly (about 40 MB/s at most).
fn read_slowly_until_ready(c: &mut WireClient) -> usize {
    use std::io::Read;
    let mut total = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = c.conn.tcp.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed after {total} bytes");
        total += n;
        std::thread::sleep(Duration::from_micros(1500));
        // The last six bytes seen, across reads.
        tail.extend_from_slice(&chunk[..n]);
        let keep = tail.len().saturating_sub(6);
        tail.drain(..keep);
        if tail == [b'Z', 0, 0, 0, 5, b'I'] {
            return total;
        }
    }
}

#[test]
fn slow_reader_keeps_memory_bounded() {
    let pg = PgServer::shared();
    let proxy = ChildProxy::start(&ProxyConfig::new(pg).user(&SCRAM_USER), "rss");
    let pw = Proxy::password(&SCRAM_USER);
    for (what, sql) in [
        // 200 rows of 1 MB each.
        (
            "rows",
            "SELECT repeat('x', 1000000) FROM generate_series(1, 200)",
        ),
        (
            "COPY OUT",
            "COPY (SELECT repeat('x', 1000000) FROM generate_series(1, 200)) TO STDOUT",
        ),
    ] {
        let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
        let mut m = Vec::new();
        pglink::protocol::frontend::query(&mut m, sql.as_bytes());
        c.send(&m);
        let total = read_slowly_until_ready(&mut c);
        assert!(total > 200_000_000, "{what}: received {total} bytes");
    }
    let hwm_kb = proxy.status_kb("VmHWM");
    println!(
        "pglink peak RSS while streaming 200 MB twice to a slow reader: {} MB",
        hwm_kb / 1024
    );
    assert!(hwm_kb < 64 * 1024, "peak RSS {hwm_kb} kB");
}

#[test]
fn copy_in_to_a_stalled_server_stops_reading_the_client() {
    use pglink::protocol::frontend;
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "copyin");
    let proxy = ChildProxy::start(&ProxyConfig::new(pg).user(&user), "copyin");
    let t = table("copy_stall");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (v text); GRANT ALL ON {t} TO PUBLIC"),
    );
    let mut c =
        WireClient::connect(proxy.addr, user.name, Proxy::password(&user), TEST_DATABASE).unwrap();
    let mut m = Vec::new();
    frontend::query(&mut m, format!("COPY {t} FROM STDIN").as_bytes());
    c.send(&m);
    assert_eq!(c.read().unwrap().tag, b'G', "CopyInResponse");
    let pid = pg.backend_pids(user.name).remove(0);
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // 200 MB of rows from another thread: it must block (pglink stops reading from the
    // client when the server does not read), not pile up inside pglink.
    let mut writer = c.conn.tcp.try_clone().unwrap();
    writer.set_write_timeout(None).unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let line = format!("{}\n", "y".repeat(999));
        let mut m = Vec::new();
        for _ in 0..1000 {
            frontend::copy_data(&mut m, line.as_bytes());
        }
        for _ in 0..200 {
            writer.write_all(&m).unwrap();
            sent2.fetch_add(m.len(), Ordering::Relaxed);
        }
        let mut done = Vec::new();
        frontend::copy_done(&mut done);
        writer.write_all(&done).unwrap();
    });
    std::thread::sleep(Duration::from_secs(3));
    let stalled_at = sent.load(Ordering::Relaxed);
    let rss_kb = proxy.status_kb("VmHWM");
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    feeder.join().unwrap();
    let msgs = c.until_ready().unwrap();
    assert!(
        msgs.iter().all(|m| m.tag != b'E'),
        "{:?}",
        msgs.iter().find_map(|m| m.error())
    );
    assert!(
        stalled_at < 100_000_000,
        "pglink kept reading: {stalled_at} bytes taken"
    );
    assert!(
        rss_kb < 64 * 1024,
        "peak RSS {rss_kb} kB while the server was stalled"
    );
    assert_eq!(
        pg.admin_sql_in(TEST_DATABASE, &format!("SELECT count(*) FROM {t}"))
            .trim(),
        "200000"
    );
}

#[test]
fn notification_while_held_function_call_and_flush() {
    use pglink::protocol::frontend;
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    // A notification delivered at the end of the client's own transaction reaches it.
    let msgs = c
        .simple("LISTEN pglink_chan; NOTIFY pglink_chan, 'hello'")
        .unwrap();
    let note = msgs
        .iter()
        .find(|m| m.tag == b'A')
        .expect("NotificationResponse");
    let pglink::protocol::backend::BackendMessage::NotificationResponse(n) = note.decode() else {
        unreachable!()
    };
    assert_eq!((n.channel, n.payload), (&b"pglink_chan"[..], &b"hello"[..]));
    // LISTEN pinned that client to its backend; when it leaves, the backend (which still
    // listens) is closed rather than lent to anyone else.
    let pid = c.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    c.vanish();
    wait_until(
        "the pinned backend to be closed",
        Duration::from_secs(5),
        || {
            pg.admin_sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
            ))
            .trim()
                == "0"
        },
    );
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    // FunctionCall (fast-path): pg_backend_pid() is OID 2026.
    let mut m = Vec::new();
    frontend::function_call(&mut m, 2026, &[], [], 0);
    c.send(&m);
    let msgs = c.until_ready().unwrap();
    assert_eq!(msgs.iter().map(|m| m.tag).collect::<Vec<_>>(), b"VZ");
    // Flush makes the server answer what it has without a Sync; the backend stays held
    // until the Sync.
    let mut m = Vec::new();
    frontend::parse(&mut m, b"", b"SELECT 7", &[]);
    frontend::flush(&mut m);
    c.send(&m);
    assert_eq!(c.read().unwrap().tag, b'1');
    let mut other = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let mut m = Vec::new();
    frontend::bind(&mut m, b"", b"", &[], [], &[]);
    frontend::execute(&mut m, b"", 0);
    frontend::sync(&mut m);
    c.send(&m);
    let msgs = c.until_ready().unwrap();
    assert_eq!(msgs.iter().map(|m| m.tag).collect::<Vec<_>>(), b"2DCZ");
    // Only now is the single backend free for the other client.
    assert_eq!(other.query_column("SELECT 8").unwrap(), ["8"]);
}

#[test]
fn replication_connections_are_refused() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    let out = run_psql(
        &proxy.dsn_with(&SCRAM_USER, "sslmode=disable replication=database"),
        SCRAM_USER.password,
        "IDENTIFY_SYSTEM",
    );
    let err = out.unwrap_err();
    assert!(
        err.contains("replication connections are not supported"),
        "{err}"
    );
}
