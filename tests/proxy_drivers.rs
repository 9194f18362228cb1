//! The driver matrix: real drivers through pglink with a pool of 3 server connections and 24
//! clients at once, so every client's statements, batches, cursors and pipelines run on server
//! connections other clients use too. Each program under `tests/drivers/` checks its own
//! results (row counts, values, SQLSTATEs, that some client did change server connection)
//! and fails here with everything it printed. See `support::drivers` for how the drivers are
//! found and what to install.
//!
//! - pgJDBC: prepareThreshold 5 and 1, batches with and without reWriteBatchedInserts,
//!   setFetchSize cursors in a transaction, autosave savepoints, statement-cache evictions,
//!   setQueryTimeout cancels.
//! - node-postgres: named queries across transactions, results read in pages, pipeline mode,
//!   transactions, errors.
//! - SQLAlchemy on asyncpg and on psycopg: the dialects' statement caches, ORM and Core.
//! - psycopg pipelines: many statements, errors mid-pipeline and what comes after.
//!
//! Each runs a second time with `cache_unnamed_statements` on, where the unnamed statements
//! those drivers use go through the shared statement registry: the programs' checks must
//! hold all the same.

mod support;

use serde_json::json;
use support::*;

/// Server connections per pool: fewer than a tenth of the clients.
const POOL: u32 = 3;

/// A proxy with a small pool for a role of its own (caching the unnamed statement when
/// `cached`), and a table name for the program.
fn proxy_for(prefix: &str, cached: bool) -> (Proxy, TestUser, String) {
    let pg = PgServer::shared();
    let prefix = if cached {
        format!("{prefix}_c")
    } else {
        prefix.to_owned()
    };
    let prefix = prefix.as_str();
    let user = proxy::create_user(pg, prefix);
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(POOL))
        .backend("cache_unnamed_statements", json!(cached))
        // 24 clients queue for 3 connections; on a loaded machine a wait can pass the default
        // second, and a 53300 would say nothing about the driver.
        .set(
            &format!("databases.{TEST_DATABASE}.pool_acquire_timeout_milliseconds"),
            json!(60_000),
        )
        .start();
    let table = format!("t_{prefix}_{}", std::process::id());
    (proxy, user, table)
}

fn pgjdbc(cached: bool) {
    let mut java = drivers::java();
    let (proxy, user, table) = proxy_for("jdbc", cached);
    java.arg(drivers::program("JdbcCheck.java"));
    println!("{}", drivers::run(&mut java, &proxy, &user, &table));
}

#[test]
fn pgjdbc_prepare_thresholds_batches_and_fetch_size_cursors() {
    pgjdbc(false);
}

#[test]
fn pgjdbc_with_unnamed_statements_cached() {
    pgjdbc(true);
}

fn node_postgres(cached: bool) {
    let mut node = drivers::node();
    let (proxy, user, table) = proxy_for("nodepg", cached);
    node.arg(drivers::program("node_pg_check.js"));
    println!("{}", drivers::run(&mut node, &proxy, &user, &table));
}

#[test]
fn node_postgres_named_queries_pipelines_and_transactions() {
    node_postgres(false);
}

#[test]
fn node_postgres_with_unnamed_statements_cached() {
    node_postgres(true);
}

fn sqlalchemy(driver: &str, cached: bool) {
    let mut python = drivers::python(&["sqlalchemy", "greenlet", driver]);
    let (proxy, user, table) = proxy_for(&format!("sa_{driver}"), cached);
    python
        .arg(drivers::program("sqlalchemy_check.py"))
        .arg(driver);
    println!("{}", drivers::run(&mut python, &proxy, &user, &table));
}

#[test]
fn sqlalchemy_on_asyncpg_with_its_statement_cache() {
    sqlalchemy("asyncpg", false);
}

#[test]
fn sqlalchemy_on_psycopg_with_its_prepare_threshold() {
    sqlalchemy("psycopg", false);
}

#[test]
fn sqlalchemy_on_psycopg_with_unnamed_statements_cached() {
    sqlalchemy("psycopg", true);
}

fn psycopg_pipelines(cached: bool) {
    let mut python = drivers::python(&["psycopg"]);
    let (proxy, user, table) = proxy_for("pipeline", cached);
    python.arg(drivers::program("psycopg_pipeline_check.py"));
    println!("{}", drivers::run(&mut python, &proxy, &user, &table));
}

#[test]
fn psycopg_pipelines_with_errors_mid_pipeline() {
    psycopg_pipelines(false);
}

#[test]
fn psycopg_pipelines_with_unnamed_statements_cached() {
    psycopg_pipelines(true);
}
