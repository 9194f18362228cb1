//! Prepared statements and session state under transaction pooling, end to end: pgbench
//! -M prepared, tokio-postgres, asyncpg, psycopg 3; parameters following one client and never
//! another; pinning; DEALLOCATE/DISCARD; a result type changed under a prepared statement.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::wire::WireClient;
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

fn table(name: &str) -> String {
    format!("t_{name}_{}", std::process::id())
}

fn pgbench(args: &[&str], password: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(support::process::binaries().bindir.join("pgbench"));
    support::process::clear_pg_env(&mut cmd);
    cmd.env("PGPASSWORD", password).args(args);
    support::process::run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap()
}

#[test]
fn pgbench_prepared_over_a_small_pool_without_failures() {
    let pg = PgServer::shared();
    let user = &SCRAM_USER;
    let pw = user.password.unwrap();
    let port = pg.port().to_string();
    let init = pgbench(
        &[
            "-i",
            "-s",
            "1",
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
    for (cache, capacity) in [(1000, 512), (0, 0)] {
        let proxy = ProxyConfig::new(pg)
            .user(user)
            .backend("pool_max_conns", json!(3))
            .backend("prepared_statement_cache_size", json!(cache))
            .backend("statement_cache_capacity", json!(capacity))
            // 24 clients queue for 3 connections; on a loaded machine a wait can pass the
            // default second, and a 53300 would say nothing about prepared statements.
            .set(
                &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
                json!(60_000),
            )
            .start();
        let proxy_port = proxy.port().to_string();
        let seconds = match cache {
            0 => "3".to_owned(),
            _ => std::env::var("PGLINK_PGBENCH_SECONDS").unwrap_or_else(|_| "10".into()),
        };
        // One pgbench thread per client: pgbench prepares synchronously, so a thread serving
        // several clients would stall them all (holding their server connections) while one
        // of them waits for a connection to prepare on.
        let out = pgbench(
            &[
                "-M",
                "prepared",
                "-c",
                "24",
                "-j",
                "24",
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
            "cache {cache}/{capacity}:\n{stdout}\n{stderr}"
        );
        let processed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(processed > 100, "processed {processed}:\n{stdout}");
        let failed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of failed transactions: "));
        assert!(failed.is_none_or(|f| f.starts_with("0 ")), "{stdout}");
        println!(
            "pgbench -M prepared, statement caches {cache}/{capacity}: {processed} transactions"
        );
    }
}

#[test]
fn tokio_postgres_prepared_statements_survive_changing_backends() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "prep");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(2))
        .start();
    let t = table("prep");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!("CREATE TABLE {t} (c int, v int); GRANT ALL ON {t} TO PUBLIC"),
    );
    runtime().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let client = connect(&proxy, &user).await;
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let add = client.prepare("SELECT $1::int + $2::int").await.unwrap();
                let insert = client
                    .prepare(&format!("INSERT INTO {t} VALUES ($1, $2)"))
                    .await
                    .unwrap();
                let count = client
                    .prepare(&format!("SELECT count(*) FROM {t} WHERE c = $1"))
                    .await
                    .unwrap();
                for j in 0..15 {
                    let sum: i32 = client.query_one(&add, &[&i, &j]).await.unwrap().get(0);
                    assert_eq!(sum, i + j);
                    client.batch_execute("BEGIN").await.unwrap();
                    client.execute(&insert, &[&i, &j]).await.unwrap();
                    client.batch_execute("COMMIT").await.unwrap();
                    let n: i64 = client.query_one(&count, &[&i]).await.unwrap().get(0);
                    assert_eq!(n, i64::from(j) + 1);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let total = pg.admin_sql_in(TEST_DATABASE, &format!("SELECT count(*) FROM {t}"));
    assert_eq!(total.trim(), "300");
}

#[test]
fn session_parameters_follow_one_client_and_never_reach_another() {
    let pg = PgServer::shared();
    pg.admin_sql_in(
        TEST_DATABASE,
        "CREATE SCHEMA IF NOT EXISTS a_schema; GRANT ALL ON SCHEMA a_schema TO PUBLIC",
    );
    // One backend for both clients: everything must be put right on every checkout.
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.track_extra_parameters"),
            json!(["search_path"]),
        )
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut a = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let mut b = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let show =
        |c: &mut WireClient, name: &str| c.query_column(&format!("SHOW {name}")).unwrap().remove(0);
    let names = [
        "application_name",
        "TimeZone",
        "DateStyle",
        "IntervalStyle",
        "search_path",
        "work_mem",
    ];
    let defaults: Vec<String> = names.iter().map(|n| show(&mut b, n)).collect();
    a.query_column(
        "SET application_name = 'a_app'; SET TimeZone = 'America/New_York'; SET DateStyle = 'German'; \
         SET IntervalStyle = 'sql_standard'; SET search_path = a_schema, public; SET work_mem = '7MB'",
    )
    .unwrap();
    let a_values = [
        "a_app",
        "America/New_York",
        "German, DMY",
        "sql_standard",
        "a_schema, public",
        "7MB",
    ];
    for round in 0..3 {
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                show(&mut b, name),
                defaults[i],
                "round {round}: B sees {name} of A"
            );
            assert_eq!(
                show(&mut a, name),
                a_values[i],
                "round {round}: A lost its {name}"
            );
        }
    }
    // A RESET goes back to the default for A too.
    a.query_column("RESET work_mem; RESET application_name")
        .unwrap();
    assert_eq!(show(&mut a, "work_mem"), defaults[5]);
    assert_eq!(show(&mut a, "application_name"), defaults[0]);
    assert_eq!(show(&mut a, "TimeZone"), a_values[1]);
}

/// The five settings a client of the concurrent test gives itself, as SHOW prints them.
fn own_settings(i: usize) -> [(&'static str, String); 5] {
    const DATE_STYLES: [&str; 8] = [
        "ISO, MDY",
        "ISO, DMY",
        "ISO, YMD",
        "SQL, MDY",
        "SQL, DMY",
        "Postgres, MDY",
        "Postgres, DMY",
        "German, DMY",
    ];
    const INTERVAL_STYLES: [&str; 4] = ["postgres", "postgres_verbose", "sql_standard", "iso_8601"];
    // Etc/GMT+1 … Etc/GMT+12, then Etc/GMT-1 … Etc/GMT-14: a zone of its own per client.
    let zone = match i % 26 {
        n @ 0..12 => format!("Etc/GMT+{}", n + 1),
        n => format!("Etc/GMT-{}", n - 11),
    };
    [
        ("application_name", format!("client_{i}")),
        ("TimeZone", zone),
        ("DateStyle", DATE_STYLES[i % DATE_STYLES.len()].to_owned()),
        (
            "IntervalStyle",
            INTERVAL_STYLES[i % INTERVAL_STYLES.len()].to_owned(),
        ),
        ("search_path", format!("s_{i}, public")),
    ]
}

/// `SET [LOCAL] name = value;` for each setting (search_path as a list, the others quoted).
fn set_all(local: &str, settings: &[(&str, String)]) -> String {
    settings
        .iter()
        .map(|(name, value)| match *name {
            "search_path" => format!("SET {local} {name} = {value};"),
            _ => format!("SET {local} {name} = '{value}';"),
        })
        .collect()
}

/// The values of `names` as one client sees them, in one round trip.
async fn show_all(client: &tokio_postgres::Client, names: &[&str]) -> Vec<String> {
    let sql: String = names.iter().map(|n| format!("SHOW {n};")).collect();
    client
        .simple_query(&sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

#[test]
fn many_clients_over_a_small_pool_each_keep_their_own_settings() {
    const CLIENTS: usize = 24;
    const ROUNDS: usize = 12;
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "many_settings");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(3))
        .set(
            &format!("databases.{TEST_DATABASE}.track_extra_parameters"),
            json!(["search_path"]),
        )
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(20000),
        )
        .start();
    runtime().block_on(async {
        let names = own_settings(0).map(|(n, _)| n);
        let bystander = connect(&proxy, &user).await;
        let defaults = show_all(&bystander, &names).await;
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let client = connect(&proxy, &user).await;
            let default_path = defaults[4].clone();
            tasks.push(tokio::spawn(async move {
                let own = own_settings(i);
                let names: Vec<&str> = own.iter().map(|(n, _)| *n).collect();
                let mut values: Vec<String> = own.iter().map(|(_, v)| v.clone()).collect();
                // Every third client keeps the default search_path at first and changes it
                // only with set_config and bound arguments, which only the read-back of
                // track_extra_parameters sees; the others' search_path is their own.
                let changes_path = i % 3 == 0;
                let to_set = if changes_path {
                    values[4] = default_path.clone();
                    &own[..4]
                } else {
                    &own[..]
                };
                client.batch_execute(&set_all("", to_set)).await.unwrap();
                let set_config = client
                    .prepare("SELECT set_config($1, $2, false)")
                    .await
                    .unwrap();
                // Another client's values, for SET LOCAL and rolled-back SETs.
                let other = own_settings(i + 7);
                let other_values: Vec<String> = other.iter().map(|(_, v)| v.clone()).collect();
                let set_other = |local: &str| set_all(local, &other);
                for round in 0..ROUNDS {
                    match (i + round) % 4 {
                        // Alternately away from the default and back.
                        0 if changes_path => {
                            let path = match round % 8 {
                                0..4 => format!("s_{i}_{round}, public"),
                                _ => default_path.clone(),
                            };
                            client
                                .query_one(&set_config, &[&"search_path", &path])
                                .await
                                .unwrap();
                            values[4] = path;
                        }
                        0 => {
                            client.simple_query("SELECT 1").await.unwrap();
                        }
                        1 => {
                            let sql = format!("BEGIN; {}", set_other("LOCAL"));
                            client.batch_execute(&sql).await.unwrap();
                            let inside = show_all(&client, &names).await;
                            assert_eq!(inside, other_values, "client {i}: SET LOCAL in effect");
                            client.batch_execute("COMMIT").await.unwrap();
                        }
                        2 => {
                            client.batch_execute("BEGIN").await.unwrap();
                            client.batch_execute(&set_other("")).await.unwrap();
                            client.batch_execute("ROLLBACK").await.unwrap();
                        }
                        _ => {
                            client.batch_execute("BEGIN").await.unwrap();
                            client.simple_query("SELECT 1").await.unwrap();
                            client.batch_execute("COMMIT").await.unwrap();
                        }
                    }
                    assert_eq!(
                        show_all(&client, &names).await,
                        values,
                        "client {i}, round {round}"
                    );
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // A client that set nothing has the server's defaults still.
        assert_eq!(show_all(&bystander, &names).await, defaults);
    });
}

#[test]
fn extra_parameters_changed_with_bound_arguments_follow_their_client() {
    let pg = PgServer::shared();
    pg.admin_sql_in(
        TEST_DATABASE,
        "CREATE SCHEMA IF NOT EXISTS a_schema; GRANT ALL ON SCHEMA a_schema TO PUBLIC; \
         CREATE OR REPLACE FUNCTION pglink_set_path(p text) RETURNS text LANGUAGE sql \
         AS $$ SELECT set_config('search_path', p, false) $$",
    );
    // One backend: whatever A leaves on it, B gets next.
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.track_extra_parameters"),
            json!(["search_path"]),
        )
        .start();
    runtime().block_on(async {
        let a = connect(&proxy, &SCRAM_USER).await;
        let b = connect(&proxy, &SCRAM_USER).await;
        let show = async |c: &tokio_postgres::Client| -> String {
            c.query_one("SHOW search_path", &[]).await.unwrap().get(0)
        };
        let default = show(&b).await;
        assert_ne!(default, "a_schema");
        // The text names no parameter: only reading the extras back after the transaction
        // shows what it changed.
        let set = a.prepare("SELECT set_config($1, $2, false)").await.unwrap();
        a.batch_execute("BEGIN").await.unwrap();
        a.query_one(&set, &[&"search_path", &"a_schema"])
            .await
            .unwrap();
        a.batch_execute("COMMIT").await.unwrap();
        for round in 0..3 {
            assert_eq!(
                show(&b).await,
                default,
                "round {round}: B sees A's search_path"
            );
            assert_eq!(show(&a).await, "a_schema", "round {round}: A lost its own");
        }
        // A function that changes it, called by a statement that names no setting.
        a.batch_execute("RESET search_path").await.unwrap();
        assert_eq!(show(&a).await, default);
        a.query_one("SELECT pglink_set_path('a_schema, public')", &[])
            .await
            .unwrap();
        assert_eq!(show(&b).await, default, "B sees the path A's function set");
        assert_eq!(show(&a).await, "a_schema, public");
    });
}

#[test]
fn settings_of_a_client_that_leaves_mid_transaction_do_not_stay_behind() {
    use pglink::protocol::frontend;
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "vanish_set");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .start();
    let pw = Proxy::password(&user);
    let mut b = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    let work_mem = b.query_column("SHOW work_mem").unwrap();
    let app = b.query_column("SHOW application_name").unwrap();
    for sql in [
        "SET work_mem = '77MB'",
        "SET application_name = 'gone'",
        "SELECT set_config('work_mem', '78MB', false)",
    ] {
        // A's statement and its goodbye arrive together: pglink cleans up after it.
        let mut a = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
        let mut m = Vec::new();
        frontend::query(&mut m, sql.as_bytes());
        frontend::terminate(&mut m);
        a.send(&m);
        for _ in 0..3 {
            assert_eq!(b.query_column("SHOW work_mem").unwrap(), work_mem, "{sql}");
            assert_eq!(
                b.query_column("SHOW application_name").unwrap(),
                app,
                "{sql}"
            );
        }
    }
}

#[test]
fn clients_get_a_server_connection_that_already_has_their_settings() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(2))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut a = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let mut b = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    a.query_column("SET application_name = 'client_a'").unwrap();
    b.query_column("SET application_name = 'client_b'").unwrap();
    // Two server connections, each last used by one of them.
    a.query_column("BEGIN").unwrap();
    b.query_column("BEGIN").unwrap();
    let pid_a = a.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    let pid_b = b.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
    assert_ne!(pid_a, pid_b);
    a.query_column("COMMIT").unwrap();
    b.query_column("COMMIT").unwrap();
    // Taking turns, each keeps finding its own: no settings to change on the way.
    for _ in 0..5 {
        assert_eq!(
            a.query_column("SELECT pg_backend_pid()").unwrap(),
            [pid_a.as_str()]
        );
        assert_eq!(
            b.query_column("SELECT pg_backend_pid()").unwrap(),
            [pid_b.as_str()]
        );
    }
    assert_eq!(
        a.query_column("SHOW application_name").unwrap(),
        ["client_a"]
    );
}

#[test]
fn set_local_and_rolled_back_set_do_not_leak() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.track_extra_parameters"),
            json!(["search_path"]),
        )
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut a = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let mut b = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let show =
        |c: &mut WireClient, name: &str| c.query_column(&format!("SHOW {name}")).unwrap().remove(0);
    let tz = show(&mut a, "TimeZone");
    let path = show(&mut a, "search_path");
    let mem = show(&mut a, "work_mem");
    a.query_column("BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'; SET LOCAL search_path = nowhere; SET LOCAL work_mem = '9MB'; COMMIT")
        .unwrap();
    a.query_column("BEGIN").unwrap();
    a.query_column("SET TimeZone = 'Asia/Tokyo'; SET search_path = nowhere; SET work_mem = '9MB'")
        .unwrap();
    a.query_column("ROLLBACK").unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(show(c, "TimeZone"), tz);
        assert_eq!(show(c, "search_path"), path);
        assert_eq!(show(c, "work_mem"), mem);
    }
}

#[test]
fn startup_options_are_honoured_for_that_client_only() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .start();
    let with_options = run_psql(
        &proxy.dsn_with(
            &SCRAM_USER,
            "sslmode=disable options='-c statement_timeout=4321 -c search_path=myschema'",
        ),
        SCRAM_USER.password,
        "SHOW statement_timeout; SHOW search_path",
    )
    .unwrap();
    assert_eq!(
        with_options.lines().collect::<Vec<_>>(),
        ["4321ms", "myschema"]
    );
    let plain = run_psql(
        &proxy.dsn(&SCRAM_USER),
        SCRAM_USER.password,
        "SHOW statement_timeout",
    )
    .unwrap();
    assert_eq!(plain, "0");
    // A setting the server refuses ends the session before any statement runs, as
    // PostgreSQL itself refuses such a session at startup.
    let refused = run_psql(
        &proxy.dsn_with(
            &SCRAM_USER,
            "sslmode=disable options='-c no_such_setting=1'",
        ),
        SCRAM_USER.password,
        "SELECT 'ran'",
    )
    .unwrap_err();
    assert!(
        refused.contains("FATAL") && refused.contains("no_such_setting"),
        "{refused}"
    );
    assert!(!refused.contains("ran"), "{refused}");
    // The server connection it was given is fine for others.
    assert_eq!(
        run_psql(&proxy.dsn(&SCRAM_USER), SCRAM_USER.password, "SELECT 1").unwrap(),
        "1"
    );
}

#[test]
fn default_startup_parameters_win_over_the_clients_and_a_later_set_is_its_own() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .backend(
            "default_startup_parameters",
            json!({"statement_timeout": "1234ms"}),
        )
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    runtime().block_on(async {
        let dsn = format!(
            "{} password={pw}",
            proxy.dsn_with(
                &SCRAM_USER,
                "sslmode=disable options='-c statement_timeout=4321 -c work_mem=7MB'"
            )
        );
        let (a, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        tokio::spawn(conn);
        let b = connect(&proxy, &SCRAM_USER).await;
        let show = async |c: &tokio_postgres::Client, name: &str| -> String {
            let sql = format!("SHOW {name}");
            c.query_one(&sql, &[]).await.unwrap().get(0)
        };
        assert_eq!(show(&a, "statement_timeout").await, "1234ms", "configured");
        assert_eq!(
            show(&a, "work_mem").await,
            "7MB",
            "the client's other options"
        );
        assert_eq!(show(&b, "statement_timeout").await, "1234ms");
        a.batch_execute("SET statement_timeout = '5s'")
            .await
            .unwrap();
        for round in 0..3 {
            assert_eq!(show(&a, "statement_timeout").await, "5s", "round {round}");
            assert_eq!(
                show(&b, "statement_timeout").await,
                "1234ms",
                "round {round}: B sees A's SET"
            );
        }
        // RESET goes back to the session's startup value, which is the configured one.
        a.batch_execute("RESET statement_timeout").await.unwrap();
        assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    });
}

/// What a client sees running a prepared statement: its column count and first value, or
/// the SQLSTATE of its error.
async fn run_prepared(client: &tokio_postgres::Client, stmt: &tokio_postgres::Statement) -> String {
    match client.query(stmt, &[]).await {
        Ok(rows) => {
            let first: i32 = rows[0].get(0);
            format!("{} columns, a={first}", rows[0].len())
        }
        Err(e) => e
            .code()
            .map_or_else(|| e.to_string(), |c| c.code().to_owned()),
    }
}

/// Prepares and runs statements around two result type changes (one made behind pglink's
/// back, one through the connection under test) and lists what the clients saw.
async fn result_type_scenario(
    connect: impl AsyncFn() -> tokio_postgres::Client,
    outside_ddl: impl Fn(&str),
    t: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let query = format!("SELECT * FROM {t}");
    let a = connect().await;
    let old = a.prepare(&query).await.unwrap();
    seen.push(format!("a: {}", run_prepared(&a, &old).await));
    outside_ddl(&format!("ALTER TABLE {t} ADD COLUMN b text DEFAULT 'x'"));
    // Several runs, so that more than one server connection is involved.
    for i in 0..4 {
        seen.push(format!("a old #{i}: {}", run_prepared(&a, &old).await));
        let b = connect().await;
        let new = b.prepare(&query).await.unwrap();
        seen.push(format!("b new #{i}: {}", run_prepared(&b, &new).await));
    }
    let renewed = a.prepare(&query).await.unwrap();
    seen.push(format!("a renewed: {}", run_prepared(&a, &renewed).await));
    // DDL through the connection under test.
    a.batch_execute(&format!("ALTER TABLE {t} DROP COLUMN b"))
        .await
        .unwrap();
    for i in 0..3 {
        seen.push(format!(
            "a renewed #{i}: {}",
            run_prepared(&a, &renewed).await
        ));
        seen.push(format!("a old #{i}: {}", run_prepared(&a, &old).await));
        let c = connect().await;
        let fresh = c.prepare(&query).await.unwrap();
        seen.push(format!("c fresh #{i}: {}", run_prepared(&c, &fresh).await));
    }
    seen
}

#[test]
fn a_result_type_change_under_prepared_statements_behaves_as_in_postgresql() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "ddl");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(2))
        .start();
    let (direct_t, proxied_t) = (table("ddl_direct"), table("ddl_proxied"));
    for t in [&direct_t, &proxied_t] {
        pg.admin_sql_in(
            TEST_DATABASE,
            &format!(
                "CREATE TABLE {t} (a int); INSERT INTO {t} VALUES (1); \
                 ALTER TABLE {t} OWNER TO {}",
                user.name
            ),
        );
    }
    let outside = |sql: &str| {
        pg.admin_sql_in(TEST_DATABASE, sql);
    };
    let pw = Proxy::password(&user).to_owned();
    let direct_dsn = format!(
        "host=127.0.0.1 port={} user={} password={pw} dbname={TEST_DATABASE} sslmode=disable",
        pg.port(),
        user.name
    );
    runtime().block_on(async {
        let direct = result_type_scenario(
            async || {
                let (client, conn) = tokio_postgres::connect(&direct_dsn, NoTls).await.unwrap();
                tokio::spawn(conn);
                client
            },
            outside,
            &direct_t,
        )
        .await;
        let proxied =
            result_type_scenario(async || connect(&proxy, &user).await, outside, &proxied_t).await;
        assert!(
            direct.iter().any(|s| s.ends_with("0A000")),
            "the scenario must exercise PostgreSQL's error: {direct:#?}"
        );
        assert_eq!(proxied, direct, "through pglink vs. directly");
    });
}

#[test]
fn a_client_that_describes_each_execution_never_sees_a_result_type_change_fail() {
    // libpq's PQexecPrepared (psql's \bind, pgbench -M prepared) sends Bind, Describe
    // portal, Execute, Sync: the new columns reach it with their description, so pglink
    // re-prepares and retries where PostgreSQL would fail the statement.
    use pglink::protocol::frontend;
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "ddl_libpq");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(2))
        .start();
    let t = table("ddl_libpq");
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!(
            "CREATE TABLE {t} (a int); INSERT INTO {t} VALUES (1); ALTER TABLE {t} OWNER TO {}",
            user.name
        ),
    );
    let pw = Proxy::password(&user);
    let clients: Vec<WireClient> = (0..2)
        .map(|_| WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap())
        .collect();
    let mut clients = clients;
    let run = |c: &mut WireClient| -> Result<usize, String> {
        let mut m = Vec::new();
        frontend::bind(&mut m, b"", b"s", &[], [], &[]);
        frontend::describe(&mut m, frontend::Target::Portal, b"");
        frontend::execute(&mut m, b"", 0);
        frontend::sync(&mut m);
        c.send(&m);
        let reply = c.until_ready()?;
        if let Some((_, code, message)) = reply.iter().find_map(|m| m.error()) {
            return Err(format!("{code}: {message}"));
        }
        let description = reply
            .iter()
            .find(|m| m.tag == b'T')
            .expect("RowDescription");
        let columns = u16::from_be_bytes([description.body[0], description.body[1]]);
        let row = reply.iter().find(|m| m.tag == b'D').expect("a row");
        assert_eq!(u16::from_be_bytes([row.body[0], row.body[1]]), columns);
        Ok(usize::from(columns))
    };
    for c in &mut clients {
        let mut m = Vec::new();
        frontend::parse(&mut m, b"s", format!("SELECT * FROM {t}").as_bytes(), &[]);
        frontend::sync(&mut m);
        c.send(&m);
        c.until_ready().unwrap();
        // Both server connections get a copy.
        for _ in 0..3 {
            assert_eq!(run(c), Ok(1));
        }
    }
    for (i, ddl) in [
        format!("ALTER TABLE {t} ADD COLUMN b text DEFAULT 'x'"),
        format!("ALTER TABLE {t} ADD COLUMN c int DEFAULT 3"),
    ]
    .iter()
    .enumerate()
    {
        // Behind pglink's back, then through it.
        if i == 0 {
            pg.admin_sql_in(TEST_DATABASE, ddl);
        } else {
            clients[0].query_column(ddl).unwrap();
        }
        for round in 0..4 {
            for c in &mut clients {
                assert_eq!(run(c), Ok(i + 2), "after DDL {i}, round {round}");
            }
        }
    }
}

#[test]
fn state_that_cannot_follow_pins_the_client() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "pin");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(300),
        )
        .start();
    let pw = Proxy::password(&user);
    let cases = [
        (
            "SELECT pg_advisory_lock(4242)",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
        ),
        (
            "CREATE TEMP TABLE pinned_t AS SELECT 1 AS a",
            "SELECT count(*) FROM pinned_t",
        ),
        (
            "SELECT 1 AS a INTO TEMP pinned_into",
            "SELECT count(*) FROM pinned_into",
        ),
        (
            "BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            "FETCH held",
        ),
        ("PREPARE sqlprep AS SELECT 1", "EXECUTE sqlprep"),
        ("LISTEN pinned_chan", "SELECT 1"),
    ];
    for (setup, later) in cases {
        let mut a = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
        a.query_column(setup).unwrap();
        let pid = a.query_column("SELECT pg_backend_pid()").unwrap().remove(0);
        // Another client cannot have the (only) backend: it is pinned to A.
        let mut b = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
        let err = b.query_column("SELECT 1").unwrap_err();
        assert!(err.contains("53300"), "{setup}: {err}");
        // A's state is still there in later transactions.
        assert_eq!(a.query_column(later).unwrap(), ["1"], "{setup}");
        assert_eq!(
            a.query_column("SELECT pg_backend_pid()").unwrap(),
            [pid.as_str()]
        );
        // When A leaves, its backend (and the state on it) goes away; B gets a fresh one.
        a.vanish();
        let started = Instant::now();
        loop {
            match b.query_column("SELECT pg_backend_pid()") {
                Ok(p) => {
                    assert_ne!(p[0], pid, "{setup}: the pinned backend was reused");
                    break;
                }
                Err(e) if started.elapsed() < Duration::from_secs(5) => {
                    assert!(e.contains("53300"), "{e}")
                }
                Err(e) => panic!("{setup}: {e}"),
            }
        }
        // The lock A held went with its backend. (Taking it pins B in turn; B leaves.)
        assert_eq!(
            b.query_column("SELECT pg_try_advisory_lock(4242)").unwrap(),
            ["t"]
        );
        b.vanish();
    }
    // SQL PREPARE pins even inside a rolled-back transaction: PostgreSQL keeps the
    // statement anyway.
    let mut a = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    a.query_column("BEGIN; PREPARE in_tx AS SELECT 2; ROLLBACK")
        .unwrap();
    assert_eq!(a.query_column("EXECUTE in_tx").unwrap(), ["2"]);
    let mut b = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    let err = b.query_column("SELECT 3").unwrap_err();
    assert!(err.contains("53300"), "{err}");
    // A client that never pinned anything shares the backend once A is gone.
    a.vanish();
    let started = Instant::now();
    while let Err(e) = b.query_column("SELECT 3") {
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    }
}

#[test]
fn deallocate_and_discard_concern_the_clients_own_statements() {
    use pglink::protocol::frontend;
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("pool_max_conns", json!(1))
        .start();
    let pw = Proxy::password(&SCRAM_USER);
    let mut c = WireClient::connect(proxy.addr, SCRAM_USER.name, pw, TEST_DATABASE).unwrap();
    let prepare = |c: &mut WireClient, name: &str| {
        let mut m = Vec::new();
        frontend::parse(&mut m, name.as_bytes(), b"SELECT 41 + 1", &[]);
        frontend::sync(&mut m);
        c.send(&m);
        c.until_ready().unwrap()
    };
    let execute = |c: &mut WireClient, name: &str| {
        let mut m = Vec::new();
        frontend::bind(&mut m, b"", name.as_bytes(), &[], [], &[]);
        frontend::execute(&mut m, b"", 0);
        frontend::sync(&mut m);
        c.send(&m);
        c.until_ready().unwrap()
    };
    prepare(&mut c, "s_1");
    assert!(execute(&mut c, "s_1").iter().any(|m| m.tag == b'D'));
    // Unquoted names fold to lower case, as in PostgreSQL.
    assert_eq!(
        c.simple("DEALLOCATE S_1")
            .unwrap()
            .iter()
            .map(|m| m.tag)
            .collect::<Vec<_>>(),
        b"CZ"
    );
    let gone = execute(&mut c, "s_1");
    assert_eq!(gone.iter().find_map(|m| m.error()).unwrap().1, "26000");
    let err = c.query_column("DEALLOCATE s_1").unwrap_err();
    assert!(err.contains("26000"), "{err}");
    prepare(&mut c, "a");
    prepare(&mut c, "b");
    c.query_column("DEALLOCATE ALL").unwrap();
    assert_eq!(
        execute(&mut c, "a")
            .iter()
            .find_map(|m| m.error())
            .unwrap()
            .1,
        "26000"
    );
    prepare(&mut c, "a");
    c.query_column("SET application_name = 'changed'").unwrap();
    // As PostgreSQL does, the reset of a reported parameter is reported.
    let discarded = c.simple("DISCARD ALL").unwrap();
    assert_eq!(
        discarded.iter().map(|m| m.tag).collect::<Vec<_>>(),
        b"CSZ",
        "{discarded:?}"
    );
    assert!(matches!(
        discarded[1].decode(),
        pglink::protocol::BackendMessage::ParameterStatus(p)
            if p.name == b"application_name" && p.value.is_empty()
    ));
    assert_eq!(
        execute(&mut c, "a")
            .iter()
            .find_map(|m| m.error())
            .unwrap()
            .1,
        "26000"
    );
    assert_eq!(c.query_column("SHOW application_name").unwrap(), [""]);
    // The names are free again.
    prepare(&mut c, "a");
    assert!(execute(&mut c, "a").iter().any(|m| m.tag == b'D'));
}

#[test]
fn deallocate_all_run_by_the_server_leaves_other_clients_statements_working() {
    use pglink::protocol::frontend;
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "dealloc");
    // One server connection: whatever one client does to it, the other meets.
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .start();
    let pw = Proxy::password(&user);
    let mut b = WireClient::connect(proxy.addr, user.name, pw, TEST_DATABASE).unwrap();
    let execute = |c: &mut WireClient, name: &str| {
        let mut m = Vec::new();
        frontend::bind(&mut m, b"", name.as_bytes(), &[], [], &[]);
        frontend::execute(&mut m, b"", 0);
        frontend::sync(&mut m);
        c.send(&m);
        c.until_ready().unwrap()
    };
    runtime().block_on(async {
        let a = connect(&proxy, &user).await;
        let add = a.prepare("SELECT $1::int + 1").await.unwrap();
        let one: i32 = a.query_one(&add, &[&1]).await.unwrap().get(0);
        assert_eq!(one, 2);
        // B shares A's server statement, then drops every statement in a longer query (which
        // pglink cannot answer itself) and through the extended protocol.
        let mut m = Vec::new();
        frontend::parse(&mut m, b"b1", b"SELECT $1::int + 1", &[]);
        frontend::sync(&mut m);
        b.send(&m);
        b.until_ready().unwrap();
        assert_eq!(b.query_column("DEALLOCATE ALL; SELECT 1").unwrap(), ["1"]);
        let gone = execute(&mut b, "b1");
        assert_eq!(gone.iter().find_map(|m| m.error()).unwrap().1, "26000");
        for i in 0..3 {
            let n: i32 = a.query_one(&add, &[&i]).await.unwrap().get(0);
            assert_eq!(n, i + 1, "A's statement after B's DEALLOCATE ALL");
        }
        let mut m = Vec::new();
        frontend::parse(&mut m, b"", b"DISCARD ALL", &[]);
        frontend::bind(&mut m, b"", b"", &[], [], &[]);
        frontend::execute(&mut m, b"", 0);
        frontend::sync(&mut m);
        b.send(&m);
        let discarded = b.until_ready().unwrap();
        assert!(
            discarded.iter().all(|m| m.error().is_none()),
            "{discarded:?}"
        );
        let n: i32 = a.query_one(&add, &[&41]).await.unwrap().get(0);
        assert_eq!(n, 42, "A's statement after B's DISCARD ALL");
        // A name only pglink uses is not the client's to drop.
        let err = b.query_column("DEALLOCATE pglink_1").unwrap_err();
        assert!(err.contains("26000"), "{err}");
        // In a transaction block the block is aborted, as by PostgreSQL's own error.
        b.query_column("BEGIN").unwrap();
        let err = b.query_column("DEALLOCATE pglink_1").unwrap_err();
        assert!(err.contains("26000") && err.contains("pglink:"), "{err}");
        let err = b.query_column("SELECT 1").unwrap_err();
        assert!(err.contains("25P02"), "{err}");
        b.query_column("ROLLBACK").unwrap();
        let n: i32 = a.query_one(&add, &[&1]).await.unwrap().get(0);
        assert_eq!(n, 2);
    });
}

#[test]
fn one_statement_text_under_two_search_paths_is_two_statements() {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "paths");
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .start();
    let (sa, sb) = (table("path_a"), table("path_b"));
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!(
            "CREATE SCHEMA {sa} AUTHORIZATION {u}; CREATE SCHEMA {sb} AUTHORIZATION {u}; \
             CREATE TABLE {sa}.same (a int); INSERT INTO {sa}.same VALUES (1); \
             CREATE TABLE {sb}.same (b text, c int); INSERT INTO {sb}.same VALUES ('two', 2); \
             ALTER TABLE {sa}.same OWNER TO {u}; ALTER TABLE {sb}.same OWNER TO {u}",
            u = user.name
        ),
    );
    runtime().block_on(async {
        let a = connect(&proxy, &user).await;
        a.batch_execute(&format!("SET search_path = {sa}"))
            .await
            .unwrap();
        let b = connect(&proxy, &user).await;
        b.batch_execute(&format!("SET search_path = {sb}"))
            .await
            .unwrap();
        // The same text, prepared by each (one server connection for both).
        let in_a = a.prepare("SELECT * FROM same").await.unwrap();
        let in_b = b.prepare("SELECT * FROM same").await.unwrap();
        let columns = |s: &tokio_postgres::Statement| -> Vec<String> {
            s.columns().iter().map(|c| c.name().to_owned()).collect()
        };
        assert_eq!(columns(&in_a), ["a"]);
        assert_eq!(
            columns(&in_b),
            ["b", "c"],
            "B's own table, not A's description"
        );
        for round in 0..3 {
            let row = a.query_one(&in_a, &[]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 1, "round {round}");
            let row = b.query_one(&in_b, &[]).await.unwrap();
            assert_eq!(
                (row.get::<_, String>(0), row.get::<_, i32>(1)),
                ("two".to_owned(), 2),
                "round {round}"
            );
        }
        // A third client with A's path prepares it again: A's columns.
        let c = connect(&proxy, &user).await;
        c.batch_execute(&format!("SET search_path = {sa}"))
            .await
            .unwrap();
        let in_c = c.prepare("SELECT * FROM same").await.unwrap();
        assert_eq!(columns(&in_c), ["a"]);
        assert_eq!(c.query_one(&in_c, &[]).await.unwrap().get::<_, i32>(0), 1);
    });
}

fn python_driver(script: &str, module: &str) {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, module);
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(3))
        .start();
    let t = table(module);
    pg.admin_sql_in(
        TEST_DATABASE,
        &format!(
            "CREATE TABLE {t} (client int, v int); ALTER TABLE {t} OWNER TO {}",
            user.name
        ),
    );
    let mut python = drivers::python(&[module]);
    python.arg(drivers::program(script));
    println!("{}", drivers::run(&mut python, &proxy, &user, &t));
}

#[test]
fn asyncpg_with_its_statement_cache() {
    python_driver("asyncpg_check.py", "asyncpg");
}

#[test]
fn psycopg_with_prepare_threshold_zero_and_pipelines() {
    python_driver("psycopg_check.py", "psycopg");
}

/// What a batch got back, message by message: the tag, and for rows their values, for
/// errors their code and message.
fn transcript(client: &mut WireClient, batch: &[u8]) -> Vec<String> {
    use pglink::protocol::BackendMessage;
    client.send(batch);
    // A batch ending in Flush is answered up to its error; one ending in Sync, up to
    // ReadyForQuery.
    let until = if batch.last_chunk::<5>() == Some(b"H\0\0\0\x04") {
        b'E'
    } else {
        b'Z'
    };
    let mut seen = Vec::new();
    loop {
        let msg = client.read().unwrap();
        seen.push(match msg.decode() {
            BackendMessage::DataRow(row) => {
                let values: Vec<String> = row
                    .columns()
                    .map(|v| v.map_or("NULL".into(), |v| String::from_utf8_lossy(v).into()))
                    .collect();
                format!("D {}", values.join(","))
            }
            // PostgreSQL's errors that pglink raises itself say so.
            _ if msg.tag == b'E' => {
                let (_, code, message) = msg.error().unwrap();
                let message = message.strip_prefix("pglink: ").unwrap_or(&message);
                format!("E {code} {message}")
            }
            _ => (msg.tag as char).to_string(),
        });
        if msg.tag == until {
            return seen;
        }
    }
}

#[test]
fn cached_unnamed_statements_answer_as_postgresql_does_and_are_planned_once() {
    use pglink::protocol::frontend::{self, Target};
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "unnamed_cache");
    let password = Proxy::password(&user);
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(1))
        .backend("cache_unnamed_statements", json!(true))
        .start();
    let parse = |b: &mut Vec<u8>, sql: &str| frontend::parse(b, b"", sql.as_bytes(), &[]);
    let run = |b: &mut Vec<u8>, arg: &str| {
        frontend::bind(b, b"", b"", &[], [Some(arg.as_bytes())], &[]);
        frontend::execute(b, b"", 0);
    };
    let sync = |mut b: Vec<u8>| {
        frontend::sync(&mut b);
        b
    };
    let add = "SELECT $1::int + 1";
    // name, batch: the unnamed statement's lifetime and errors, every batch its own cycle.
    let mut script: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut b = Vec::new();
    parse(&mut b, add);
    run(&mut b, "41");
    script.push(("parse and run", sync(b)));
    for i in 0..6 {
        let mut b = Vec::new();
        parse(&mut b, add);
        frontend::describe(&mut b, Target::Statement, b"");
        run(&mut b, &i.to_string());
        script.push(("again, described", sync(b)));
    }
    let mut b = Vec::new();
    run(&mut b, "1");
    script.push(("bound in a later batch", sync(b)));
    script.push(("a simple query", {
        let mut b = Vec::new();
        frontend::query(&mut b, b"SELECT 'q'");
        b
    }));
    let mut b = Vec::new();
    run(&mut b, "1");
    script.push(("gone after a simple query", sync(b)));
    let mut b = Vec::new();
    parse(&mut b, add);
    script.push(("parsed again", sync(b)));
    let mut b = Vec::new();
    parse(&mut b, "SELEC nonsense");
    script.push(("a failed parse", sync(b)));
    let mut b = Vec::new();
    run(&mut b, "1");
    script.push(("replaced by the failed parse", sync(b)));
    let mut b = Vec::new();
    parse(&mut b, add);
    frontend::close(&mut b, Target::Statement, b"");
    run(&mut b, "1");
    script.push(("closed", sync(b)));
    let mut b = Vec::new();
    parse(&mut b, "SELECT 10 / $1::int");
    run(&mut b, "0");
    parse(&mut b, add);
    run(&mut b, "5");
    script.push(("skipped after an error in its batch", sync(b)));
    let mut b = Vec::new();
    run(&mut b, "5");
    script.push(("the statement before the skipped parse", sync(b)));
    // A new text in the middle of a batch: prepared once what came before has answered.
    let mut b = Vec::new();
    parse(&mut b, add);
    run(&mut b, "1");
    parse(&mut b, "SELECT $1::int * 3");
    run(&mut b, "3");
    script.push(("a new text mid-batch", sync(b)));
    let mut b = Vec::new();
    parse(&mut b, "SELECT 10 / $1::int");
    run(&mut b, "0");
    parse(&mut b, "SELECT $1::int * 7");
    run(&mut b, "3");
    script.push(("a new text mid-batch after an error", sync(b)));
    let mut b = Vec::new();
    run(&mut b, "2");
    script.push(("the statement before that skipped parse", sync(b)));

    // After an error the server has already reported (the client waited for it with a
    // Flush), a Parse of a statement the server connection has is skipped like everything
    // else up to Sync: pglink must not answer it itself.
    let mut b = Vec::new();
    parse(&mut b, "SELECT 10 / $1::int");
    run(&mut b, "0");
    frontend::flush(&mut b);
    script.push(("an error reported before Sync", b));
    let mut b = Vec::new();
    frontend::parse(&mut b, b"named", add.as_bytes(), &[]);
    frontend::bind(&mut b, b"", b"named", &[], [Some(&b"1"[..])], &[]);
    frontend::execute(&mut b, b"", 0);
    script.push(("skipped after the reported error", sync(b)));
    let direct: std::net::SocketAddr = pg.addr().parse().unwrap();
    let through: std::net::SocketAddr = format!("127.0.0.1:{}", proxy.port()).parse().unwrap();
    let mut on_pg = WireClient::connect(direct, user.name, password, TEST_DATABASE).unwrap();
    let mut via = WireClient::connect(through, user.name, password, TEST_DATABASE).unwrap();
    for (what, batch) in &script {
        let expected = transcript(&mut on_pg, batch);
        let t = Instant::now();
        assert_eq!(transcript(&mut via, batch), expected, "{what}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what} took {:?}",
            t.elapsed()
        );
    }
    // The one server connection has the text as a prepared statement of its own, run many
    // times: parsed and planned once, not at every execution.
    let runs = via
        .query_column(&format!(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements \
             WHERE statement = '{add}'"
        ))
        .unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].parse::<u64>().unwrap() >= 7, "{runs:?}");
}

#[test]
fn a_traceparent_startup_parameter_is_pglinks_and_never_reaches_postgresql() {
    use support::wire::{Conn, LoginOptions};
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, "traceparent");
    let password = Proxy::password(&user);
    let plain = ProxyConfig::new(pg).user(&user).start();
    // Named otherwise by the configuration (tracing itself off).
    let renamed = ProxyConfig::new(pg)
        .user(&user)
        .set(
            "opentelemetry",
            json!({ "enabled": false, "traceparent_startup_parameter": "x_trace" }),
        )
        .start();
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (proxy, name) in [(&plain, "traceparent"), (&renamed, "x_trace")] {
        // Valid or not, with settings beside it that do go to the server.
        for value in [valid, "not a trace context"] {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", proxy.port()).parse().unwrap();
            let mut conn = Conn::plain(addr);
            let options = LoginOptions {
                params: vec![
                    (name.into(), value.into()),
                    ("application_name".into(), "traced".into()),
                ],
                ..Default::default()
            };
            conn.login(user.name, TEST_DATABASE, password, &options)
                .unwrap_or_else(|e| panic!("{name}={value:?}: {e:?}"));
            let mut client = WireClient { conn, key: None };
            assert_eq!(
                client.query_column("SHOW application_name").unwrap(),
                ["traced"],
                "{name}={value:?}"
            );
        }
        // In `options` (JDBC's way), beside a setting that does reach the server.
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", proxy.port()).parse().unwrap();
        let mut conn = Conn::plain(addr);
        let options = LoginOptions {
            params: vec![(
                "options".into(),
                format!("-c {name}={valid} -c statement_timeout=4321"),
            )],
            ..Default::default()
        };
        conn.login(user.name, TEST_DATABASE, password, &options)
            .unwrap_or_else(|e| panic!("options with {name}: {e:?}"));
        let mut client = WireClient { conn, key: None };
        assert_eq!(
            client.query_column("SHOW statement_timeout").unwrap(),
            ["4321ms"],
            "{name} in options"
        );
    }
}
