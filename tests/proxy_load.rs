//! Load and integrity: thousands of clients over a small pool all get an answer in time, and
//! under churn (commits, rollbacks, failures, connections lost mid-transaction, prepared
//! statements, pipelines) exactly the committed rows exist, once each, each written in its
//! own client's session.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::wire::TestRng;
use support::*;
use tokio_postgres::NoTls;

/// Raises this process's open-file limit to at least `n` (up to the hard limit), with
/// util-linux's `prlimit`; the limit in effect afterwards.
fn raise_fd_limit(n: u64) -> u64 {
    let read = || -> Option<(u64, u64)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut f = line.split_whitespace().skip(3);
        let parse = |v: Option<&str>| v.and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        Some((parse(f.next()), parse(f.next())))
    };
    let (soft, hard) = read().unwrap_or((1024, 1024));
    if soft < n {
        let want = n.min(hard);
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={want}:{hard}"))
            .status();
    }
    read().map_or(soft, |(soft, _)| soft)
}

async fn connect(port: u16, user: &TestUser, app: &str) -> Result<tokio_postgres::Client, String> {
    let dsn = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={TEST_DATABASE} \
         application_name={app} connect_timeout=30",
        user.name,
        Proxy::password(user)
    );
    let (client, conn) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| e.to_string(), |c| c.code().to_owned())
}

#[test]
fn five_thousand_clients_over_a_pool_of_ten_each_get_an_answer_in_time() {
    const CLIENTS: usize = 5000;
    let limit = raise_fd_limit(2 * CLIENTS as u64 + 1000);
    assert!(
        limit >= 2 * CLIENTS as u64 + 200,
        "open-file limit {limit}: too low for {CLIENTS} clients and their proxy sockets"
    );
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "load5k");
    let acquire_timeout = Duration::from_secs(5);
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        // md5: 5,000 SCRAM logins would cost the clients minutes of CPU in a debug build.
        .set("auth_method", json!("md5_password"))
        .set("max_client_connections", json!(CLIENTS + 100))
        // They connect 250 at a time: room for all of them to be logging in at once.
        .set("max_logins_in_progress", json!(1000))
        .set("tls", json!({ "sslmode": "disable" }))
        .backend("pool_max_conns", json!(10))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(acquire_timeout.as_millis() as u64),
        )
        .start();
    let port = proxy.port();
    let rt = runtime();
    let (ok, timed_out, late) = rt.block_on(async {
        // Everyone connects first, then all run their transaction at once.
        let mut clients = Vec::with_capacity(CLIENTS);
        for chunk in 0..CLIENTS / 250 {
            let batch: Vec<_> = (0..250)
                .map(|i| {
                    tokio::spawn(async move {
                        connect(port, &user, &format!("c{}", chunk * 250 + i)).await
                    })
                })
                .collect();
            for b in batch {
                clients.push(b.await.unwrap().expect("connect"));
            }
        }
        assert_eq!(proxy.client_count(), CLIENTS);
        let start = Instant::now();
        let runs: Vec<_> = clients
            .into_iter()
            .map(|client| {
                tokio::spawn(async move {
                    let began = Instant::now();
                    let result = client
                        .batch_execute("BEGIN; SELECT pg_sleep(0.001); COMMIT")
                        .await;
                    (result.map_err(|e| sqlstate(&e)), began.elapsed(), client)
                })
            })
            .collect();
        let (mut ok, mut timed_out, mut late) = (0, 0, Duration::ZERO);
        let mut kept = Vec::new();
        for r in runs {
            let (result, took, client) = r.await.unwrap();
            match result {
                Ok(()) => ok += 1,
                Err(code) if code == "53300" => timed_out += 1,
                Err(other) => panic!("a client got {other}"),
            }
            late = late.max(took);
            kept.push(client);
        }
        eprintln!(
            "{CLIENTS} clients over a pool of 10: {ok} transactions, {timed_out} acquire \
             timeouts (53300), slowest answer {late:?}, all in {:?}",
            start.elapsed()
        );
        (ok, timed_out, late)
    });
    assert_eq!(ok + timed_out, CLIENTS, "every client got an answer");
    assert!(ok > 0);
    // Nobody waits past the acquire timeout without an answer (slack for a loaded machine).
    assert!(late < acquire_timeout + Duration::from_secs(10), "{late:?}");
    drop(rt);
    support::wait_until("the clients to leave", Duration::from_secs(30), || {
        proxy.client_count() == 0
    });
}

/// What a churn client did: the rows it had committed, and how its transactions ended.
#[derive(Default)]
struct Tally {
    committed: BTreeSet<u64>,
    rolled_back: usize,
    failed: usize,
    lost: usize,
    prepared: usize,
    pipelined: usize,
}

#[test]
fn under_churn_exactly_the_committed_rows_exist_each_written_in_its_own_session() {
    const CLIENTS: usize = 50;
    let run_for = Duration::from_secs(
        std::env::var("PGLINK_CHURN_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "churn");
    let table = format!("churn_{}", std::process::id());
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!(
            "CREATE TABLE {table} (client int NOT NULL, seq bigint NOT NULL, marker text NOT \
             NULL, via text NOT NULL); GRANT ALL ON {table} TO {}",
            user.name
        ),
    );
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .set("tls", json!({ "sslmode": "disable" }))
        .backend("pool_max_conns", json!(5))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(30_000),
        )
        .start();
    let port = proxy.port();
    let rt = runtime();
    let errors = Arc::new(AtomicUsize::new(0));
    let tallies: Vec<Tally> = rt.block_on(async {
        let deadline = Instant::now() + run_for;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (user, table, errors) = (user, table.clone(), errors.clone());
                tokio::spawn(async move { churn(i, port, &user, &table, deadline, &errors).await })
            })
            .collect();
        let mut tallies = Vec::new();
        for t in tasks {
            tallies.push(t.await.unwrap());
        }
        tallies
    });
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "unexpected errors (see above)"
    );

    // What the table holds, read directly from PostgreSQL.
    let rows = pg.admin_sql_in(
        TEST_DATABASE,
        &format!("SELECT client, seq, marker FROM {table} ORDER BY client, seq"),
    );
    let mut found: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split('|');
        let client: usize = f.next().unwrap().parse().unwrap();
        let seq: u64 = f.next().unwrap().parse().unwrap();
        let marker = f.next().unwrap();
        assert_eq!(
            marker,
            format!("c{client}"),
            "row ({client}, {seq}) was written in another client's session"
        );
        found.entry(client).or_default().push(seq);
    }
    let (mut committed, mut rolled_back, mut failed, mut lost, mut prepared, mut pipelined) =
        (0, 0, 0, 0, 0, 0);
    for (client, tally) in tallies.iter().enumerate() {
        let got = found.remove(&client).unwrap_or_default();
        let expected: Vec<u64> = tally.committed.iter().copied().collect();
        assert_eq!(
            got, expected,
            "client {client}: rows differ from its commits"
        );
        committed += tally.committed.len();
        rolled_back += tally.rolled_back;
        failed += tally.failed;
        lost += tally.lost;
        prepared += tally.prepared;
        pipelined += tally.pipelined;
    }
    assert!(found.is_empty(), "rows of unknown clients: {found:?}");
    eprintln!(
        "churn for {run_for:?}, {CLIENTS} clients over a pool of 5: {committed} transactions \
         committed and checked, {rolled_back} rolled back, {failed} failed on purpose, {lost} \
         connections lost mid-transaction; {prepared} through prepared statements, {pipelined} \
         pipelined"
    );
    assert!(committed > 0 && rolled_back > 0 && failed > 0 && lost > 0);
    assert!(prepared > 0 && pipelined > 0);
}

/// One churn client until `deadline`: transactions that commit, roll back, fail on purpose
/// or lose their connection, some through prepared statements, some pipelined.
async fn churn(
    i: usize,
    port: u16,
    user: &TestUser,
    table: &str,
    deadline: Instant,
    errors: &AtomicUsize,
) -> Tally {
    let mut rng = TestRng::new(i as u64 * 7919 + 1);
    let mut tally = Tally::default();
    let marker = format!("c{i}");
    let mut seq = 0u64;
    let mut client = connect(port, user, &marker).await.expect("connect");
    let insert = format!(
        "INSERT INTO {table} (client, seq, marker, via) \
         VALUES ($1, $2, current_setting('application_name'), $3)"
    );
    let report = |what: &str, e: tokio_postgres::Error| {
        eprintln!("client {i}: {what}: {e}");
        errors.fetch_add(1, Ordering::Relaxed);
    };
    while Instant::now() < deadline {
        let rows: Vec<u64> = (0..1 + rng.below(3))
            .map(|_| {
                seq += 1;
                seq
            })
            .collect();
        let how = rng.below(10);
        let prepared = rng.below(2) == 0;
        if let Err(e) = client.batch_execute("BEGIN").await {
            report("BEGIN", e);
            break;
        }
        let via = if prepared { "prepared" } else { "pipelined" };
        let result = if prepared {
            tally.prepared += 1;
            let stmt = match client.prepare(&insert).await {
                Ok(s) => s,
                Err(e) => {
                    report("prepare", e);
                    break;
                }
            };
            let mut r = Ok(0);
            for &s in &rows {
                r = client
                    .execute(&stmt, &[&(i as i32), &(s as i64), &via])
                    .await;
                if r.is_err() {
                    break;
                }
            }
            r.map(drop)
        } else {
            // All rows' inserts in flight at once (tokio-postgres pipelines them).
            tally.pipelined += 1;
            let inserts = rows.iter().map(|&s| {
                let (client, insert) = (&client, &insert);
                async move {
                    client
                        .execute(insert.as_str(), &[&(i as i32), &(s as i64), &via])
                        .await
                }
            });
            futures_join_all(inserts)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map(drop)
        };
        if let Err(e) = result {
            report("insert", e);
            break;
        }
        match how {
            0..=4 => match client.batch_execute("COMMIT").await {
                Ok(()) => tally.committed.extend(rows),
                Err(e) => {
                    report("COMMIT", e);
                    break;
                }
            },
            5 | 6 => match client.batch_execute("ROLLBACK").await {
                Ok(()) => tally.rolled_back += 1,
                Err(e) => {
                    report("ROLLBACK", e);
                    break;
                }
            },
            7 | 8 => {
                // Fails on purpose: the transaction is aborted, and COMMIT rolls it back.
                match client.batch_execute("SELECT 1 / 0").await {
                    Err(e) if sqlstate(&e) == "22012" => {}
                    other => {
                        eprintln!("client {i}: division by zero gave {other:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                if let Err(e) = client.batch_execute("COMMIT").await {
                    report("COMMIT after an error", e);
                    break;
                }
                tally.failed += 1;
            }
            _ => {
                // The connection is lost mid-transaction: its rows must vanish.
                drop(client);
                tally.lost += 1;
                client = match connect(port, user, &marker).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("client {i}: reconnect: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
            }
        }
    }
    tally
}

/// Awaits every future, in order (a tiny `join_all` so as not to need the futures crate).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futures.map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    // Polling them in order still sends every request first: tokio-postgres queues a
    // request when its future is first polled, so poll each once before awaiting any.
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    for h in handles.iter_mut() {
        if let Some(f) = h.as_mut() {
            let waker = futures_noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                out.push(Some(v));
                *h = None;
                continue;
            }
        }
        out.push(None);
    }
    let mut done = Vec::with_capacity(out.len());
    for (slot, h) in out.into_iter().zip(handles) {
        done.push(match (slot, h) {
            (Some(v), _) => v,
            (None, Some(f)) => f.await,
            (None, None) => unreachable!(),
        });
    }
    done
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}
