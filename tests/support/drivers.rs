//! Real client drivers run against a proxy: the programs under `tests/drivers/` (Python,
//! Java, JavaScript), each given the proxy's address as `PGLINK_DSN` (a `postgresql://` URL)
//! and a table name of its own as `PGLINK_TABLE`, checking every result itself and exiting
//! non-zero on the first wrong one.
//!
//! ```ignore
//! let out = drivers::run(drivers::python(&["psycopg"]).arg(drivers::program("x.py")), &proxy, &user, &t);
//! ```
//!
//! scripts/test installs the drivers and points at them with `PGLINK_PYTHON` (a Python with
//! asyncpg, psycopg and SQLAlchemy), `PGLINK_JDBC_JAR` (the pgJDBC jar) and
//! `PGLINK_NODE_PATH` (a `node_modules` holding `pg`). Unset, the places scripts/test installs
//! to are used if they are there, else the system's. A missing driver fails the test with what
//! to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::proxy::Proxy;
use super::{TEST_DATABASE, TestUser};

/// How long one driver program may run.
pub const DRIVER_TIMEOUT: Duration = Duration::from_secs(180);

const INSTALL_HINT: &str = "run scripts/test once (it installs every driver the tests use and \
     sets PGLINK_PYTHON, PGLINK_JDBC_JAR and PGLINK_NODE_PATH; without those variables the tests \
     look where it installs them)";

/// A program under `tests/drivers/`.
pub fn program(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(name)
}

/// The target directory scripts/test installs the drivers under.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// `var` if set, else `installed` if it exists, else `fallback`.
fn locate(var: &str, installed: PathBuf, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) => PathBuf::from(v),
        None if installed.exists() => installed,
        None => PathBuf::from(fallback),
    }
}

/// Whether `cmd` runs and exits 0.
fn succeeds(cmd: &mut Command) -> bool {
    super::process::run_with_timeout(cmd, Duration::from_secs(60))
        .is_ok_and(|out| out.status.success())
}

/// A Python that can import `modules`: `PGLINK_PYTHON`, else scripts/test's virtualenv
/// (`target/pydrivers`), else `python3`.
pub fn python(modules: &[&str]) -> Command {
    let python = locate(
        "PGLINK_PYTHON",
        target_dir().join("pydrivers/bin/python"),
        "python3",
    );
    let import = format!("import {}", modules.join(", "));
    assert!(
        succeeds(Command::new(&python).args(["-c", &import])),
        "{} cannot `{import}`: {INSTALL_HINT}; or `pip install asyncpg 'psycopg[binary]' \
         'sqlalchemy[asyncio]'` and set PGLINK_PYTHON to that Python",
        python.display()
    );
    Command::new(python)
}

/// `java` with the pgJDBC jar on its class path (`PGLINK_JDBC_JAR`, else Debian's
/// `/usr/share/java/postgresql.jar`), able to run a single-file source program.
pub fn java() -> Command {
    let jar = locate(
        "PGLINK_JDBC_JAR",
        PathBuf::from("/usr/share/java/postgresql.jar"),
        "postgresql.jar",
    );
    assert!(
        jar.is_file(),
        "the pgJDBC jar {} is missing: {INSTALL_HINT}; or `apt-get install \
         libpostgresql-jdbc-java` (or point PGLINK_JDBC_JAR at a postgresql-42.x.jar)",
        jar.display()
    );
    // Running a .java file directly needs the compiler module, which only a JDK has.
    let modules = super::process::run_with_timeout(
        Command::new("java").arg("--list-modules"),
        Duration::from_secs(60),
    );
    assert!(
        modules.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("jdk.compiler")),
        "no JDK (`java` with jdk.compiler) on PATH: {INSTALL_HINT}; or `apt-get install \
         default-jdk-headless`"
    );
    let mut cmd = Command::new("java");
    cmd.arg("-cp").arg(jar);
    cmd
}

/// `node` with node-postgres resolvable through `NODE_PATH`: `PGLINK_NODE_PATH`, else
/// scripts/test's `target/nodedrivers/node_modules`.
pub fn node() -> Command {
    let modules = locate(
        "PGLINK_NODE_PATH",
        target_dir().join("nodedrivers/node_modules"),
        "node_modules",
    );
    assert!(
        succeeds(
            Command::new("node")
                .env("NODE_PATH", &modules)
                .args(["-e", "require('pg')"])
        ),
        "`node` with the npm package pg under {} is missing: {INSTALL_HINT}; or install \
         Node.js and `npm install --prefix DIR pg` and set PGLINK_NODE_PATH to DIR/node_modules",
        modules.display()
    );
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", modules);
    cmd
}

/// The proxy's address for `user` as a `postgresql://` URL, without TLS.
pub fn dsn_url(proxy: &Proxy, user: &TestUser) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{}/{TEST_DATABASE}?sslmode=disable",
        user.name,
        Proxy::password(user),
        proxy.port()
    )
}

/// Runs a driver program against `proxy` as `user`, with `table` for `PGLINK_TABLE`; panics
/// with everything it printed unless it exits 0 within [`DRIVER_TIMEOUT`]. Its stdout.
pub fn run(cmd: &mut Command, proxy: &Proxy, user: &TestUser, table: &str) -> String {
    super::process::clear_pg_env(cmd);
    cmd.env("PGLINK_DSN", dsn_url(proxy, user))
        .env("PGLINK_TABLE", table);
    let what = super::process::describe(cmd);
    let out = super::process::run_with_timeout(cmd, DRIVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().to_owned()
}
