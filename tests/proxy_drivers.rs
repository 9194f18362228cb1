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

mod support;

use serde_json::json;
use support::*;

/// Server connections per pool: fewer than a tenth of the clients.
const POOL: u32 = 3;

/// A proxy with a small pool for a role of its own, and a table name for the program.
fn proxy_for(prefix: &str) -> (Proxy, TestUser, String) {
    let pg = PgServer::shared();
    let user = proxy::create_user(pg, prefix);
    let proxy = ProxyConfig::new(pg)
        .user(&user)
        .backend("pool_max_conns", json!(POOL))
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

#[test]
fn pgjdbc_prepare_thresholds_batches_and_fetch_size_cursors() {
    let mut java = drivers::java();
    let (proxy, user, table) = proxy_for("jdbc");
    java.arg(drivers::program("JdbcCheck.java"));
    println!("{}", drivers::run(&mut java, &proxy, &user, &table));
}

#[test]
fn node_postgres_named_queries_pipelines_and_transactions() {
    let mut node = drivers::node();
    let (proxy, user, table) = proxy_for("nodepg");
    node.arg(drivers::program("node_pg_check.js"));
    println!("{}", drivers::run(&mut node, &proxy, &user, &table));
}

fn sqlalchemy(driver: &str) {
    let mut python = drivers::python(&["sqlalchemy", "greenlet", driver]);
    let (proxy, user, table) = proxy_for(&format!("sa_{driver}"));
    python
        .arg(drivers::program("sqlalchemy_check.py"))
        .arg(driver);
    println!("{}", drivers::run(&mut python, &proxy, &user, &table));
}

#[test]
fn sqlalchemy_on_asyncpg_with_its_statement_cache() {
    sqlalchemy("asyncpg");
}

#[test]
fn sqlalchemy_on_psycopg_with_its_prepare_threshold() {
    sqlalchemy("psycopg");
}

#[test]
fn psycopg_pipelines_with_errors_mid_pipeline() {
    let mut python = drivers::python(&["psycopg"]);
    let (proxy, user, table) = proxy_for("pipeline");
    python.arg(drivers::program("psycopg_pipeline_check.py"));
    println!("{}", drivers::run(&mut python, &proxy, &user, &table));
}
