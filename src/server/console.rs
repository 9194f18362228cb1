//! The admin console: the virtual database `pglink` that `psql` reaches through the normal
//! listener (`psql -h HOST -p PORT -U ADMIN pglink`). Sessions log in like any other (the
//! engine checks `admin_users`); each simple Query is a command, run here, on the console
//! thread (`pglink-console`), off the reactors: it reads the shared counters, asks each
//! reactor for its connections, reloads, pauses. Commands that wait (PAUSE, RELOAD) run on
//! a short-lived thread of their own so that the console stays responsive (RESUME can
//! undo a PAUSE that is still waiting). Column names follow PgBouncer's where the concept
//! is the same, so that scripts and habits carry over.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Reloader, Shared};
use crate::engine::{ClientId, Message};
use crate::observe::metrics::{BackendState, PoolStats, PoolTotals};
use crate::pool::Database;
use crate::protocol::backend::{self as be_msg, FieldDescription};
use crate::protocol::{ErrorBuilder, Severity, SqlState};

/// How long SHOW CLIENTS and SHOW SERVERS wait for the reactors' answers.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long PAUSE waits for open transactions before giving up (pglink stays paused).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(60);

const INT8: u32 = 20;
const TEXT: u32 = 25;

/// A command from a console session of reactor `reactor`.
pub(crate) struct Job {
    pub reactor: usize,
    pub client: ClientId,
    pub command: String,
}

enum Work {
    Run(Job),
    Stop,
}

/// The console thread; stopped and joined by [`Console::stop`] (or on drop).
pub(crate) struct Console {
    tx: Sender<Work>,
    thread: Option<JoinHandle<()>>,
}

/// Where reactors send console commands.
#[derive(Clone)]
pub(crate) struct ConsoleHandle(Sender<Work>);

impl ConsoleHandle {
    /// Queues `job`; gives it back if the console thread has stopped.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        self.0.send(Work::Run(job)).map_err(|e| match e.0 {
            Work::Run(job) => job,
            Work::Stop => unreachable!("a job was sent"),
        })
    }
}

impl Console {
    pub(crate) fn start(reloader: Arc<Reloader>) -> std::io::Result<Console> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pglink-console".into())
            .spawn(move || run(&reloader, &rx))?;
        Ok(Console {
            tx,
            thread: Some(thread),
        })
    }

    pub(crate) fn handle(&self) -> ConsoleHandle {
        ConsoleHandle(self.tx.clone())
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.tx.send(Work::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(reloader: &Arc<Reloader>, rx: &Receiver<Work>) {
    while let Ok(Work::Run(job)) = rx.recv() {
        let shared = &reloader.shared;
        let command = Command::parse(&job.command);
        if command.waits() {
            // On its own thread (joined on shutdown), so the console stays responsive.
            let reloader = reloader.clone();
            let spawned = std::thread::Builder::new()
                .name("pglink-console-wait".into())
                .spawn(move || reply(&reloader.shared, &job, execute(&reloader, &command)));
            match spawned {
                Ok(thread) => shared.add_helper(thread),
                Err(e) => log::warn!("console: cannot start a thread: {e}"),
            }
        } else {
            reply(shared, &job, execute(reloader, &command));
        }
    }
}

fn reply(shared: &Shared, job: &Job, answer: Vec<u8>) {
    let msg = Message::ConsoleReply {
        client: job.client,
        answer,
    };
    crate::reactor::deliver(shared, job.reactor, msg);
}

/// The answer to a command that cannot run (the console thread has stopped).
pub(crate) fn unavailable() -> Vec<u8> {
    error(
        SqlState::ADMIN_SHUTDOWN,
        "the admin console is shutting down",
    )
}

/// A parsed console command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Show(String),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Reconnect(Option<String>),
    Shutdown,
    Empty,
    Unknown(String),
}

impl Command {
    /// Case-insensitive, one command, an optional `;` at the end.
    fn parse(text: &str) -> Command {
        let text = text.trim().trim_end_matches(';').trim();
        let words: Vec<&str> = text.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let name = |i: usize| words.get(i).map(|w| w.trim_matches('"').to_owned());
        match upper.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] => Command::Empty,
            ["SHOW", _] => Command::Show(upper[1].clone()),
            ["RELOAD"] => Command::Reload,
            ["PAUSE"] => Command::Pause(None),
            ["PAUSE", _] => Command::Pause(name(1)),
            ["RESUME"] => Command::Resume(None),
            ["RESUME", _] => Command::Resume(name(1)),
            ["RECONNECT"] => Command::Reconnect(None),
            ["RECONNECT", _] => Command::Reconnect(name(1)),
            ["SHUTDOWN"] => Command::Shutdown,
            _ => Command::Unknown(text.to_owned()),
        }
    }

    fn waits(&self) -> bool {
        matches!(self, Command::Reload | Command::Pause(_))
    }
}

const HELP: &[(&str, &str)] = &[
    (
        "SHOW POOLS",
        "clients and server connections of every (database, user) pool",
    ),
    ("SHOW CLIENTS", "every client connection"),
    ("SHOW SERVERS", "every server connection"),
    (
        "SHOW DATABASES",
        "the configured databases and their pool settings",
    ),
    ("SHOW STATS", "totals per database since the start"),
    ("SHOW CONFIG", "the top-level settings in effect"),
    ("SHOW VERSION", "pglink's version"),
    ("SHOW HELP", "this list"),
    (
        "RELOAD",
        "read the configuration file again and apply it (as SIGHUP)",
    ),
    (
        "PAUSE [db]",
        "wait for open transactions, close server connections, hold new ones",
    ),
    ("RESUME [db]", "undo PAUSE: waiting clients are served"),
    (
        "RECONNECT [db]",
        "close server connections as they become idle",
    ),
    (
        "SHUTDOWN",
        "stop as SIGTERM does: open transactions may finish",
    ),
];

fn execute(reloader: &Arc<Reloader>, command: &Command) -> Vec<u8> {
    let shared = &reloader.shared;
    match command {
        Command::Empty => {
            let mut out = Vec::new();
            be_msg::empty_query_response(&mut out);
            out
        }
        Command::Show(what) => match what.as_str() {
            "HELP" => {
                let rows = HELP
                    .iter()
                    .map(|(c, d)| vec![Some((*c).to_owned()), Some((*d).to_owned())])
                    .collect();
                table(&[("command", TEXT), ("description", TEXT)], rows)
            }
            "VERSION" => table(
                &[("version", TEXT)],
                vec![vec![Some(format!("pglink {}", env!("CARGO_PKG_VERSION")))]],
            ),
            "POOLS" => show_pools(shared),
            "DATABASES" => show_databases(shared),
            "CLIENTS" => show_clients(shared),
            "SERVERS" => show_servers(shared),
            "STATS" => show_stats(shared),
            "CONFIG" => show_config(reloader),
            _ => error(
                SqlState::SYNTAX_ERROR,
                &format!("unknown SHOW item {what:?} (SHOW HELP lists the commands)"),
            ),
        },
        Command::Reload => match reloader.path() {
            None => error(
                SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "this pglink was started without a configuration file: nothing to reload \
                 (an embedding program reloads with ServerHandle::reload)",
            ),
            Some(path) => match reloader.reload_file(&path) {
                Ok(outcome) if outcome.restart_needed.is_empty() => done("RELOAD"),
                Ok(outcome) => {
                    let mut out = notice(&format!(
                        "reloaded; these take effect only after a restart: {}",
                        outcome.restart_needed.join(", ")
                    ));
                    out.extend(done("RELOAD"));
                    out
                }
                Err(e) => error(
                    SqlState::CONFIG_FILE_ERROR,
                    &format!("reload refused, the previous configuration stays: {e}"),
                ),
            },
        },
        Command::Pause(db) => pause(shared, db.as_deref()),
        Command::Resume(db) => match databases(shared, db.as_deref()) {
            Err(e) => e,
            Ok(dbs) => {
                for d in &dbs {
                    shared.ctx().databases[*d].set_paused(false);
                }
                shared.maintain_all();
                done("RESUME")
            }
        },
        Command::Reconnect(db) => match databases(shared, db.as_deref()) {
            Err(e) => e,
            Ok(dbs) => {
                for d in &dbs {
                    shared.ctx().databases[*d].reconnect();
                }
                shared.maintain_all();
                done("RECONNECT")
            }
        },
        Command::Shutdown => {
            log::info!("SHUTDOWN from the admin console");
            shared.stop();
            done("SHUTDOWN")
        }
        Command::Unknown(text) => error(
            SqlState::SYNTAX_ERROR,
            &format!("unknown admin console command {text:?} (SHOW HELP lists them)"),
        ),
    }
}

/// The ids of database `name`, or of every database; an unknown name is an ERROR 3D000.
fn databases(shared: &Shared, name: Option<&str>) -> Result<Vec<usize>, Vec<u8>> {
    let ctx = shared.ctx();
    let live = ctx.databases.iter().filter(|d| !d.removed);
    match name {
        None => Ok(live.map(|d| d.id).collect()),
        Some(name) => match live.clone().find(|d| d.name == name) {
            Some(d) => Ok(vec![d.id]),
            None => Err(error(
                SqlState::INVALID_CATALOG_NAME,
                &format!("no database {name:?} in the configuration"),
            )),
        },
    }
}

/// PAUSE: hold new transactions now; answer once the open ones have finished and their
/// server connections are closed (or give up after `PAUSE_TIMEOUT`, staying paused).
fn pause(shared: &Shared, name: Option<&str>) -> Vec<u8> {
    let ids = match databases(shared, name) {
        Ok(ids) => ids,
        Err(e) => return e,
    };
    for &d in &ids {
        shared.ctx().databases[d].set_paused(true);
    }
    shared.maintain_all();
    let deadline = Instant::now() + PAUSE_TIMEOUT;
    loop {
        let ctx = shared.ctx();
        // Open transactions keep their server connections; each closes when it comes back.
        let busy: usize = ids
            .iter()
            .filter_map(|&d| ctx.databases.get(d))
            .map(Database::open_count)
            .sum();
        if busy == 0 {
            return done("PAUSE");
        }
        if shared.is_stopping() {
            return error(SqlState::ADMIN_SHUTDOWN, "pglink is shutting down");
        }
        if ids
            .iter()
            .filter_map(|&d| ctx.databases.get(d))
            .all(|db| !db.is_paused())
        {
            return error(
                SqlState::QUERY_CANCELED,
                "RESUME came before PAUSE completed",
            );
        }
        if Instant::now() >= deadline {
            return error(
                SqlState::QUERY_CANCELED,
                &format!(
                    "PAUSE did not complete within {PAUSE_TIMEOUT:?}: {busy} server \
                     connections still open; new transactions stay held (RESUME undoes it)"
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn show_pools(shared: &Shared) -> Vec<u8> {
    let ctx = shared.ctx();
    let mut rows = Vec::new();
    for pool in ctx.pools.iter().filter(|p| !p.is_removed()) {
        let Some(db) = ctx.databases.get(pool.db) else {
            continue;
        };
        let totals = PoolTotals::of(shared.stats(), pool.id);
        let backends = |b: BackendState| totals.backends(b);
        let waiting = pool.total_waiting() as i64;
        let maxwait = pool
            .oldest_waiter_elsewhere(usize::MAX)
            .map(|(_, since)| {
                let now = Instant::now().saturating_duration_since(ctx.epoch);
                now.saturating_sub(since)
            })
            .unwrap_or_default();
        rows.push(vec![
            Some(db.name.clone()),
            Some(pool.credentials().0.user.clone()),
            Some(
                (totals.level(|s| s.clients.get()) - waiting)
                    .max(0)
                    .to_string(),
            ),
            Some(waiting.to_string()),
            Some(backends(BackendState::InUse).to_string()),
            Some(backends(BackendState::Idle).to_string()),
            Some(backends(BackendState::Draining).to_string()),
            Some(backends(BackendState::Opening).to_string()),
            Some(maxwait.as_secs().to_string()),
            Some(maxwait.subsec_micros().to_string()),
            Some("transaction".to_owned()),
        ]);
    }
    table(
        &[
            ("database", TEXT),
            ("user", TEXT),
            ("cl_active", INT8),
            ("cl_waiting", INT8),
            ("sv_active", INT8),
            ("sv_idle", INT8),
            ("sv_tested", INT8),
            ("sv_login", INT8),
            ("maxwait", INT8),
            ("maxwait_us", INT8),
            ("pool_mode", TEXT),
        ],
        rows,
    )
}

fn show_databases(shared: &Shared) -> Vec<u8> {
    let ctx = shared.ctx();
    let rows = ctx
        .databases
        .iter()
        .filter(|d| !d.removed)
        .map(|db| {
            vec![
                Some(db.name.clone()),
                Some(db.target.host.clone()),
                Some(db.target.port.to_string()),
                Some(db.target.database.clone()),
                Some(db.settings.max_conns.to_string()),
                Some(db.settings.min_idle.to_string()),
                Some("transaction".to_owned()),
                Some(db.open_count().to_string()),
                Some(i64::from(db.is_paused()).to_string()),
            ]
        })
        .collect();
    table(
        &[
            ("name", TEXT),
            ("host", TEXT),
            ("port", INT8),
            ("database", TEXT),
            ("pool_size", INT8),
            ("min_pool_size", INT8),
            ("pool_mode", TEXT),
            ("current_connections", INT8),
            ("paused", INT8),
        ],
        rows,
    )
}

fn show_clients(shared: &Shared) -> Vec<u8> {
    let snapshots = shared.snapshots(SNAPSHOT_TIMEOUT);
    let mut rows = Vec::new();
    for snap in &snapshots {
        for (c, addr) in &snap.clients {
            let server_pid = c.server.and_then(|s| {
                snap.servers
                    .iter()
                    .find(|(sv, _)| sv.id == s)
                    .and_then(|(sv, _)| sv.pid)
            });
            let wait = c.wait.unwrap_or_default();
            let (addr, port) = addr.as_ref().map(|a| a.addr_and_port()).unzip();
            rows.push(vec![
                Some("C".to_owned()),
                Some(c.user.clone()),
                Some(c.database.clone()),
                Some(c.state.to_owned()),
                addr,
                port.flatten().map(|p| p.to_string()),
                Some(wait.as_secs().to_string()),
                Some(wait.subsec_micros().to_string()),
                Some(c.application_name.clone()),
                server_pid.map(|p| p.to_string()),
            ]);
        }
    }
    table(
        &[
            ("type", TEXT),
            ("user", TEXT),
            ("database", TEXT),
            ("state", TEXT),
            ("addr", TEXT),
            ("port", INT8),
            ("wait", INT8),
            ("wait_us", INT8),
            ("application_name", TEXT),
            ("server_pid", INT8),
        ],
        rows,
    )
}

fn show_servers(shared: &Shared) -> Vec<u8> {
    let snapshots = shared.snapshots(SNAPSHOT_TIMEOUT);
    let rows = snapshots
        .iter()
        .flat_map(|s| &s.servers)
        .map(|(sv, addr)| {
            let (addr, port) = addr.as_ref().map(|a| a.addr_and_port()).unzip();
            vec![
                Some("S".to_owned()),
                Some(sv.user.clone()),
                Some(sv.database.clone()),
                Some(sv.state.to_owned()),
                addr,
                port.flatten().map(|p| p.to_string()),
                sv.pid.map(|p| p.to_string()),
                Some(if sv.tls { "yes" } else { "no" }.to_owned()),
            ]
        })
        .collect();
    table(
        &[
            ("type", TEXT),
            ("user", TEXT),
            ("database", TEXT),
            ("state", TEXT),
            ("addr", TEXT),
            ("port", INT8),
            ("remote_pid", INT8),
            ("tls", TEXT),
        ],
        rows,
    )
}

fn show_stats(shared: &Shared) -> Vec<u8> {
    let ctx = shared.ctx();
    let mut rows = Vec::new();
    for db in ctx.databases.iter().filter(|d| !d.removed) {
        let totals: Vec<_> = db
            .pools
            .iter()
            .map(|&p| PoolTotals::of(shared.stats(), p))
            .collect();
        let sum =
            |get: &dyn Fn(&PoolStats) -> u64| totals.iter().map(|t| t.count(get)).sum::<u64>();
        let wait: Duration = totals
            .iter()
            .flat_map(PoolTotals::reactors)
            .map(|s| s.acquire_wait.sum())
            .sum();
        rows.push(vec![
            Some(db.name.clone()),
            Some(sum(&|s| s.transactions.get()).to_string()),
            Some(wait.as_micros().to_string()),
            Some(sum(&|s| s.acquire_timeouts.get()).to_string()),
            Some(sum(&|s| s.logins.get()).to_string()),
            Some(sum(&|s| s.connect_attempts.get()).to_string()),
        ]);
    }
    table(
        &[
            ("database", TEXT),
            ("total_xact_count", INT8),
            ("total_wait_time", INT8),
            ("total_acquire_timeouts", INT8),
            ("total_logins", INT8),
            ("total_server_connects", INT8),
        ],
        rows,
    )
}

fn show_config(reloader: &Reloader) -> Vec<u8> {
    let config = reloader.config();
    let restart_only = ["listen", "reactor_threads", "prometheus"];
    let listen = config
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let d = |d: Duration| crate::config::duration::format(d);
    let items: Vec<(&str, String)> = vec![
        ("listen", listen),
        ("auth_method", config.auth_method.as_str().to_owned()),
        ("scram_iterations", config.scram_iterations.to_string()),
        (
            "max_client_connections",
            config.max_client_connections.to_string(),
        ),
        (
            "reactor_threads",
            config.effective_reactor_threads().to_string(),
        ),
        ("client_login_timeout", d(config.client_login_timeout)),
        (
            "max_logins_in_progress",
            config.max_logins_in_progress.to_string(),
        ),
        ("secret_refresh_interval", d(config.secret_refresh_interval)),
        ("shutdown_timeout", d(config.shutdown_timeout)),
        ("tls.sslmode", config.client_sslmode().as_str().to_owned()),
        ("admin_users", config.admin_users.join(", ")),
        (
            "prometheus",
            config
                .prometheus
                .as_ref()
                .map_or_else(|| "off".to_owned(), |p| format!("{} {}", p.listen, p.path)),
        ),
        (
            "databases",
            config
                .databases
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    let rows = items
        .into_iter()
        .map(|(key, value)| {
            let changeable = !restart_only.contains(&key);
            vec![
                Some(key.to_owned()),
                Some(value),
                Some(if changeable { "yes" } else { "no" }.to_owned()),
            ]
        })
        .collect();
    table(
        &[("key", TEXT), ("value", TEXT), ("changeable", TEXT)],
        rows,
    )
}

/// RowDescription, DataRows and CommandComplete `SHOW`.
fn table(columns: &[(&str, u32)], rows: Vec<Vec<Option<String>>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + rows.len() * 64);
    let fields: Vec<FieldDescription<'_>> = columns
        .iter()
        .map(|&(name, oid)| FieldDescription {
            name: name.as_bytes(),
            table_oid: 0,
            column_attr: 0,
            type_oid: oid,
            type_size: if oid == INT8 { 8 } else { -1 },
            type_modifier: -1,
            format: 0,
        })
        .collect();
    be_msg::row_description(&mut out, &fields);
    for row in &rows {
        be_msg::data_row(
            &mut out,
            row.iter().map(|v| v.as_deref().map(str::as_bytes)),
        );
    }
    be_msg::command_complete(&mut out, b"SHOW");
    out
}

fn done(tag: &str) -> Vec<u8> {
    let mut out = Vec::new();
    be_msg::command_complete(&mut out, tag.as_bytes());
    out
}

fn error(code: SqlState, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    ErrorBuilder::new(Severity::Error, code, &format!("pglink: {message}")).encode_error(&mut out);
    out
}

fn notice(message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut text = String::new();
    let _ = write!(text, "pglink: {message}");
    ErrorBuilder::new(Severity::Notice, SqlState::SUCCESSFUL_COMPLETION, &text)
        .encode_notice(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively_with_an_optional_semicolon() {
        assert_eq!(Command::parse("show pools;"), Command::Show("POOLS".into()));
        assert_eq!(
            Command::parse("  SHOW   clients "),
            Command::Show("CLIENTS".into())
        );
        assert_eq!(Command::parse("pause"), Command::Pause(None));
        assert_eq!(
            Command::parse("PAUSE app;"),
            Command::Pause(Some("app".into()))
        );
        assert_eq!(
            Command::parse("resume \"App\""),
            Command::Resume(Some("App".into()))
        );
        assert_eq!(Command::parse("reconnect"), Command::Reconnect(None));
        assert_eq!(Command::parse(";"), Command::Empty);
        assert_eq!(
            Command::parse("SELECT 1"),
            Command::Unknown("SELECT 1".into())
        );
        assert_eq!(
            Command::parse("PAUSE a b"),
            Command::Unknown("PAUSE a b".into())
        );
        assert!(Command::parse("RELOAD").waits() && !Command::parse("SHOW POOLS").waits());
    }
}
