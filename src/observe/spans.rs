//! OpenTelemetry spans from engine events (feature `otel`).
//!
//! Each reactor's engine gets a [`SpanSink`]: it follows every logged-in session through the
//! [`Event`]s the engine records and turns them into spans for the [`Exporter`], which sends
//! them from its own thread.
//!
//! - **A transaction** is a span (kind server) from the moment its client asked for a server
//!   connection to the release, with the wait for one as a `pool.wait` event. Its parent is
//!   the session's: the `traceparent` startup parameter, if the client gave one.
//! - **A statement** (a simple Query, an extended-protocol Execute, each statement of a
//!   pipeline) is a child span (kind client) from when the server began on it to the end of
//!   its answer, with the OpenTelemetry database attributes, its SQLSTATE and an error status
//!   when it failed. A statement whose SQL carries its own trace context
//!   (`traceparent_sql_regex`) is that context's child instead.
//! - **Sampling** is parent-based: a remote parent's sampled flag decides; without one, a
//!   share `sampling_rate` of transactions (by trace id) is kept. Nothing of an unsampled
//!   transaction is built, let alone sent.
//!
//! The SQL is looked at only when tracing is on, only by the configured regexes (the
//! application name's and the query text's only for sampled statements), and only its first
//! 16 KiB (the session keeps no more).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::bytes::{CaptureLocations, Regex};

use super::clock::NanoClock;
use super::events::{ClientState, Event, EventSink, Interest, StatementEnd};
use super::otlp::{
    Exporter, SharedAttributes, Span, SpanBatch, SpanEvent, SpanKind, SpanStatus, Value,
};
use super::trace::TraceParent;
use crate::config::{
    DEFAULT_APPLICATION_NAME_SQL_REGEX, DEFAULT_TRACEPARENT_SQL_REGEX, OpenTelemetryConfig,
};
use crate::protocol::SqlState;

/// What the configuration says about spans (shared by the reactors' sinks).
#[derive(Debug)]
pub struct TraceSettings {
    /// Share of root transactions kept, 0 to 1.
    pub sampling_rate: f64,
    pub include_query_text: bool,
    /// Finds a statement's own `traceparent` in its SQL (first group).
    pub traceparent_sql: Option<Regex>,
    /// Finds a statement's application name in its SQL (the first group that matched).
    pub application_name_sql: Option<Regex>,
}

impl TraceSettings {
    /// From a validated `opentelemetry` section (its regexes compile: validation checked).
    pub fn from_config(config: &OpenTelemetryConfig) -> Result<TraceSettings, String> {
        let compile = |what: &str, pattern: Option<&str>| {
            pattern
                .map(|p| {
                    regex::bytes::RegexBuilder::new(p)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| format!("opentelemetry.{what}: {e}"))
                })
                .transpose()
        };
        Ok(TraceSettings {
            sampling_rate: config.sampling_rate.clamp(0.0, 1.0),
            include_query_text: config.include_query_text,
            traceparent_sql: compile(
                "traceparent_sql_regex",
                config
                    .traceparent_sql_regex
                    .as_ref()
                    .and_then(|r| r.pattern(DEFAULT_TRACEPARENT_SQL_REGEX)),
            )?,
            application_name_sql: compile(
                "application_name_sql_regex",
                config
                    .application_name_sql_regex
                    .pattern(DEFAULT_APPLICATION_NAME_SQL_REGEX),
            )?,
        })
    }

    /// Whether a root trace with this id is kept (the lower 63 bits against the rate, as
    /// OpenTelemetry's `TraceIdRatioBased` does).
    fn keeps(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(trace_id.get(8..).unwrap_or(&[0; 8]));
        let x = u64::from_be_bytes(low) >> 1;
        let bound = (self.sampling_rate * (1u64 << 63) as f64) as u64;
        self.sampling_rate >= 1.0 || x < bound
    }
}

/// What all of a session's spans share.
#[derive(Debug)]
struct SessionInfo {
    server_database: Box<str>,
    /// The name of its transactions' spans.
    transaction_name: Box<str>,
    /// The attributes of the session's transaction spans and of its statement spans (see
    /// [`common_attributes`]).
    transaction_shared: SharedAttributes,
    statement_shared: SharedAttributes,
}

/// A logged-in session being followed.
#[derive(Debug)]
struct SessionTrace {
    info: SessionInfo,
    parent: Option<TraceParent>,
    transaction: Option<Transaction>,
    /// Statements sent whose answers have not ended, in order.
    statements: VecDeque<Statement>,
}

impl SessionTrace {
    /// Starts the session's transaction if none is open (`waited`: for a server connection,
    /// up to `at`).
    fn begin(&mut self, rng: &mut u64, settings: &TraceSettings, at: Instant, waited: Duration) {
        if self.transaction.is_some() {
            return;
        }
        let (trace_id, sampled) = match self.parent {
            Some(p) => (p.trace_id, p.sampled()),
            None => {
                let id = trace_id(rng);
                (id, settings.keeps(&id))
            }
        };
        self.transaction = Some(Transaction {
            trace_id,
            span_id: span_id(rng),
            sampled,
            start: at.checked_sub(waited).unwrap_or(at),
            waited,
            statements: 0,
            failed: None,
        });
    }
}

#[derive(Debug)]
struct Transaction {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
    /// When the client asked for a server connection.
    start: Instant,
    waited: Duration,
    statements: u32,
    failed: Option<SqlState>,
}

#[derive(Debug, Default)]
struct Statement {
    text: Option<String>,
    parent: Option<TraceParent>,
    application_name: Option<String>,
}

/// The most statements kept waiting for their end per session: a client pipelines at most
/// `relay::MAX_PIPELINE` requests.
const MAX_PENDING: usize = crate::client::relay::MAX_PIPELINE;

/// Hashes client pids (unique in the process, not chosen by clients) with one multiply.
#[derive(Default)]
struct PidHasher(u64);

impl std::hash::Hasher for PidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Pids = std::hash::BuildHasherDefault<PidHasher>;

/// Turns one engine's events into spans, encoded into the reactor's [`SpanBatch`] as they
/// end. A traced transaction allocates nothing here once the sink has warmed up: names are
/// written into a kept buffer, attributes are arrays on the stack, a session's shared
/// attributes are encoded once, and query texts are copied into strings the sink keeps for
/// reuse.
pub struct SpanSink {
    batch: SpanBatch,
    settings: Arc<TraceSettings>,
    sessions: HashMap<u32, SessionTrace, Pids>,
    /// xorshift64* state for span and trace ids.
    rng: u64,
    /// Instants to Unix times.
    clock: NanoClock,
    /// A span's name is written here.
    name: String,
    /// Query text buffers, for reuse.
    texts: Vec<String>,
    /// Match positions of `traceparent_sql` and `application_name_sql`, kept for reuse
    /// (`Regex::captures` allocates them for every search).
    traceparent_locs: Option<CaptureLocations>,
    application_name_locs: Option<CaptureLocations>,
}

/// Query text buffers a sink keeps for reuse, and the largest one kept: at most 256 KiB per
/// reactor.
const SPARE_TEXTS: usize = 64;
const SPARE_TEXT_BYTES: usize = 4096;

/// A span's own attributes, on the stack.
struct Attributes<'a> {
    items: [(&'a str, Value<'a>); 6],
    len: usize,
}

impl<'a> Attributes<'a> {
    fn new() -> Self {
        Attributes {
            items: [("", Value::Bool(false)); 6],
            len: 0,
        }
    }

    fn push(&mut self, key: &'a str, value: Value<'a>) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (key, value);
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[(&'a str, Value<'a>)] {
        self.items.get(..self.len).unwrap_or_default()
    }
}

/// xorshift64*: ids need to be unique, not secret.
fn next_u64(rng: &mut u64) -> u64 {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Keeps a query text buffer for a later statement.
fn recycle(texts: &mut Vec<String>, text: Option<String>) {
    if let Some(mut text) = text
        && texts.len() < SPARE_TEXTS
        && text.capacity() <= SPARE_TEXT_BYTES
    {
        text.clear();
        texts.push(text);
    }
}

fn trace_id(rng: &mut u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_u64(rng).to_be_bytes());
    id[8..].copy_from_slice(&span_id(rng));
    id
}

fn span_id(rng: &mut u64) -> [u8; 8] {
    loop {
        let id = next_u64(rng);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

impl SpanSink {
    /// A session's login and end, its transactions and statements.
    pub const INTEREST: Interest = Interest::LOGGED_IN
        .and(Interest::ACQUIRED)
        .and(Interest::STATEMENT_STARTED)
        .and(Interest::STATEMENT_ENDED)
        .and(Interest::TRANSACTION_ENDED)
        .and(Interest::CLIENT_CLOSED);

    pub fn new(exporter: Exporter, settings: Arc<TraceSettings>) -> SpanSink {
        let mut seed = [0u8; 8];
        crate::auth::Rng::fill(&mut crate::auth::OsRng, &mut seed);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, crate::observe::metrics::nanos);
        SpanSink {
            batch: exporter.batch(),
            sessions: HashMap::default(),
            rng: u64::from_le_bytes(seed) | 1,
            clock: NanoClock::new(Instant::now(), unix),
            name: String::new(),
            texts: Vec::new(),
            traceparent_locs: settings
                .traceparent_sql
                .as_ref()
                .map(Regex::capture_locations),
            application_name_locs: settings
                .application_name_sql
                .as_ref()
                .map(Regex::capture_locations),
            settings,
        }
    }

    fn statement_started(&mut self, pid: u32, at: Instant, text: &[u8]) {
        let SpanSink {
            settings,
            sessions,
            texts,
            traceparent_locs,
            application_name_locs,
            rng,
            ..
        } = self;
        let Some(session) = sessions.get_mut(&pid) else {
            return;
        };
        session.begin(rng, settings, at, Duration::ZERO);
        if session.statements.len() >= MAX_PENDING {
            return;
        }
        let sampled = session.transaction.as_ref().is_some_and(|t| t.sampled);
        let mut statement = Statement::default();
        // A statement's own trace context may sample it when its transaction is not.
        if let (Some(re), Some(locs)) = (&settings.traceparent_sql, traceparent_locs) {
            statement.parent = re
                .captures_read(locs, text)
                .and_then(|_| locs.get(1))
                .and_then(|(start, end)| text.get(start..end))
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| {
                    let parsed = TraceParent::parse(v);
                    if parsed.is_none() {
                        log::debug!("ignored an invalid traceparent in a statement's SQL");
                    }
                    parsed
                });
        }
        if sampled || statement.parent.is_some_and(|p| p.sampled()) {
            if let (Some(re), Some(locs)) = (&settings.application_name_sql, application_name_locs)
            {
                statement.application_name = re.captures_read(locs, text).and_then(|_| {
                    (1..locs.len())
                        .find_map(|i| locs.get(i))
                        .and_then(|(start, end)| text.get(start..end))
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                });
            }
            if settings.include_query_text {
                let mut buf = texts.pop().unwrap_or_default();
                match std::str::from_utf8(text) {
                    Ok(text) => buf.push_str(text),
                    Err(_) => buf.push_str(&String::from_utf8_lossy(text)),
                }
                statement.text = Some(buf);
            }
        }
        session.statements.push_back(statement);
    }

    #[allow(clippy::too_many_arguments)]
    fn statement_ended(
        &mut self,
        pid: u32,
        at: Instant,
        started: Instant,
        end: StatementEnd,
        tag: &[u8],
        sqlstate: Option<SqlState>,
    ) {
        let SpanSink {
            sessions,
            batch,
            rng,
            name,
            texts,
            clock,
            ..
        } = self;
        let Some(session) = sessions.get_mut(&pid) else {
            return;
        };
        let statement = session.statements.pop_front().unwrap_or_default();
        let Some(transaction) = session.transaction.as_mut() else {
            return recycle(texts, statement.text);
        };
        transaction.statements += 1;
        if end == StatementEnd::Failed {
            transaction.failed = sqlstate.or(transaction.failed);
        }
        let (trace_id, parent_span_id, remote, sampled) = match statement.parent {
            Some(p) => (p.trace_id, p.parent_id, true, p.sampled()),
            None => (
                transaction.trace_id,
                transaction.span_id,
                false,
                transaction.sampled,
            ),
        };
        if !sampled {
            return recycle(texts, statement.text);
        }
        let (start_ns, end_ns) = (clock.ns(started), clock.ns(at));
        let (operation, rows) = tag_parts(tag);
        let code = sqlstate.as_ref().map_or("", SqlState::as_str);
        let mut attributes = Attributes::new();
        if let Some(op) = operation {
            attributes.push("db.operation.name", Value::Str(op));
        }
        if let Some(rows) = rows {
            attributes.push("db.response.returned_rows", Value::Int(rows));
        }
        if let Some(text) = &statement.text {
            attributes.push("db.query.text", Value::Str(text));
        }
        if let Some(app) = &statement.application_name {
            attributes.push("pglink.application_name", Value::Str(app));
        }
        let status = match end {
            StatementEnd::Failed => {
                attributes.push("db.response.status_code", Value::Str(code));
                attributes.push("error.type", Value::Str(code));
                SpanStatus::Error(code)
            }
            StatementEnd::Skipped => {
                attributes.push("pglink.statement.skipped", Value::Bool(true));
                SpanStatus::Unset
            }
            StatementEnd::Completed => SpanStatus::Unset,
        };
        name.clear();
        if let Some(op) = operation {
            name.push_str(op);
            name.push(' ');
        }
        name.push_str(&session.info.server_database);
        batch.push(&Span {
            trace_id,
            span_id: span_id(rng),
            parent_span_id: Some(parent_span_id),
            parent_is_remote: remote,
            name,
            kind: SpanKind::Client,
            start_ns,
            end_ns,
            shared: &session.info.statement_shared,
            attributes: attributes.as_slice(),
            events: &[],
            status,
            sampled: true,
        });
        recycle(texts, statement.text);
    }

    /// Ends the session's transaction at `at` (`failure`: why, when it did not end well).
    fn end(&mut self, pid: u32, at: Instant, failure: Option<&str>) {
        if let Some(session) = self.sessions.get_mut(&pid) {
            end_transaction(
                session,
                &mut self.batch,
                &mut self.texts,
                &mut self.clock,
                at,
                failure,
            );
        }
    }
}

/// Ends `session`'s transaction at `at` (`failure`: why, when it did not end well), and
/// encodes its span into `batch` when it is sampled.
fn end_transaction(
    session: &mut SessionTrace,
    batch: &mut SpanBatch,
    texts: &mut Vec<String>,
    clock: &mut NanoClock,
    at: Instant,
    failure: Option<&str>,
) {
    if !session.statements.is_empty() {
        for statement in session.statements.drain(..) {
            recycle(texts, statement.text);
        }
    }
    let Some(t) = session.transaction.take() else {
        return;
    };
    if t.sampled {
        let (start_ns, end_ns) = (clock.ns(t.start), clock.ns(at));
        let parent = session.parent;
        let code = t.failed.as_ref().map(SqlState::as_str);
        let mut attributes = Attributes::new();
        attributes.push("pglink.statements", Value::Int(i64::from(t.statements)));
        let status = match (failure, code) {
            (Some(why), _) => SpanStatus::Error(why),
            (None, Some(code)) => {
                attributes.push("db.response.status_code", Value::Str(code));
                SpanStatus::Unset
            }
            (None, None) => SpanStatus::Unset,
        };
        let wait = [(
            "pglink.pool.wait_seconds",
            Value::F64(t.waited.as_secs_f64()),
        )];
        let events = [SpanEvent {
            name: "pool.wait",
            time_ns: start_ns,
            attributes: &wait,
        }];
        batch.push(&Span {
            trace_id: t.trace_id,
            span_id: t.span_id,
            parent_span_id: parent.map(|p| p.parent_id),
            parent_is_remote: parent.is_some(),
            name: &session.info.transaction_name,
            kind: SpanKind::Server,
            start_ns,
            end_ns,
            shared: &session.info.transaction_shared,
            attributes: attributes.as_slice(),
            events: &events,
            status,
            sampled: true,
        });
    }
}

impl EventSink for SpanSink {
    fn record(&mut self, at: Instant, event: &Event<'_>) {
        match *event {
            Event::LoggedIn {
                pid,
                database,
                user,
                peer,
                traceparent,
                server,
                ..
            } => {
                let (transaction_shared, statement_shared) =
                    common_attributes(database, user, peer, server);
                let info = SessionInfo {
                    server_database: server.database.into(),
                    transaction_name: format!("transaction {}", server.database).into(),
                    transaction_shared,
                    statement_shared,
                };
                self.sessions.insert(
                    pid,
                    SessionTrace {
                        info,
                        parent: traceparent,
                        transaction: None,
                        statements: VecDeque::new(),
                    },
                );
            }
            Event::Acquired { pid, waited, .. } => {
                let SpanSink {
                    sessions,
                    batch,
                    texts,
                    clock,
                    rng,
                    settings,
                    ..
                } = self;
                if let Some(session) = sessions.get_mut(&pid) {
                    // A transaction still open (a pinned session's) ends where the next
                    // begins.
                    end_transaction(session, batch, texts, clock, at, None);
                    session.begin(rng, settings, at, waited);
                }
            }
            Event::StatementStarted { pid, text, .. } => self.statement_started(pid, at, text),
            Event::StatementEnded {
                pid,
                started,
                end,
                tag,
                sqlstate,
                ..
            } => self.statement_ended(pid, at, started, end, tag, sqlstate),
            Event::TransactionEnded { pid, .. } => self.end(pid, at, None),
            Event::Client {
                pid,
                state: ClientState::Closed,
            } => {
                let open = self
                    .sessions
                    .get(&pid)
                    .is_some_and(|s| s.transaction.is_some());
                if open {
                    self.end(pid, at, Some("the client connection ended mid-transaction"));
                }
                self.sessions.remove(&pid);
            }
            _ => {}
        }
    }

    fn interest(&self) -> Interest {
        SpanSink::INTEREST
    }

    fn flush(&mut self) {
        self.batch.hand_over();
    }
}

/// The attributes a session's spans carry, encoded once per session: those of its
/// transaction spans, then those of its statement spans.
///
/// Both have the database's (`db.system.name`, `db.namespace`, `db.user`, and
/// `pglink.database` when the client's name for the database is not the server's). After the
/// OpenTelemetry conventions, the address of a span's other end goes by its kind: a
/// transaction span (kind server: pglink serving a client) has `client.address` and
/// `client.port`, the application's; a statement span (kind client: pglink asking a backend)
/// has `server.address` and `server.port`, the backend's. Each span goes out with these, so
/// bytes left out count at sampling 1.0.
fn common_attributes(
    database: &str,
    user: &str,
    peer: Option<core::net::SocketAddr>,
    server: crate::observe::events::ServerAddress<'_>,
) -> (SharedAttributes, SharedAttributes) {
    let client = peer.map(|p| p.ip().to_string());
    let mut a = Vec::with_capacity(6);
    a.push(("db.system.name", Value::Str("postgresql")));
    a.push(("db.namespace", Value::Str(server.database)));
    a.push(("db.user", Value::Str(user)));
    if database != server.database {
        a.push(("pglink.database", Value::Str(database)));
    }
    let common = a.len();
    if let (Some(peer), Some(client)) = (peer, &client) {
        a.push(("client.address", Value::Str(client)));
        a.push(("client.port", Value::Int(i64::from(peer.port()))));
    }
    let transaction = SharedAttributes::new(&a);
    a.truncate(common);
    a.push(("server.address", Value::Str(server.host)));
    a.push(("server.port", Value::Int(i64::from(server.port))));
    (transaction, SharedAttributes::new(&a))
}

/// The operation a command tag names, its words before the first number ("SELECT",
/// "INSERT", "CREATE TABLE"), and the row count that ends it ("SELECT 5", "INSERT 0 5",
/// "COPY 3").
fn tag_parts(tag: &[u8]) -> (Option<&str>, Option<i64>) {
    let Ok(text) = std::str::from_utf8(tag) else {
        return (None, None);
    };
    let digit = text
        .bytes()
        .position(|b| b.is_ascii_digit())
        .unwrap_or(text.len());
    let operation = text
        .get(..digit)
        .map(str::trim_end)
        .filter(|op| !op.is_empty());
    let rows = text
        .bytes()
        .rposition(|b| b == b' ')
        .and_then(|space| text.get(space + 1..))
        .and_then(|n| n.parse().ok());
    (operation, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_database_name_is_an_attribute_only_when_the_servers_differs() {
        let server = |database| crate::observe::events::ServerAddress {
            host: "db",
            port: 5432,
            database,
        };
        let expected = |extra: &[(&'static str, Value<'static>)]| {
            let mut a = vec![
                ("db.system.name", Value::Str("postgresql")),
                ("db.namespace", Value::Str("app")),
                ("db.user", Value::Str("u")),
            ];
            a.extend_from_slice(extra);
            let transaction = SharedAttributes::new(&a);
            a.push(("server.address", Value::Str("db")));
            a.push(("server.port", Value::Int(5432)));
            (transaction, SharedAttributes::new(&a))
        };
        assert_eq!(
            common_attributes("app", "u", None, server("app")),
            expected(&[])
        );
        assert_eq!(
            common_attributes("front", "u", None, server("app")),
            expected(&[("pglink.database", Value::Str("front"))])
        );
    }

    #[test]
    fn a_transaction_span_names_the_client_and_a_statement_span_the_server() {
        let server = crate::observe::events::ServerAddress {
            host: "db",
            port: 5432,
            database: "app",
        };
        let peer = "10.1.2.3:40000".parse().ok();
        let database = [
            ("db.system.name", Value::Str("postgresql")),
            ("db.namespace", Value::Str("app")),
            ("db.user", Value::Str("u")),
        ];
        let with = |end: [(&'static str, Value<'static>); 2]| {
            let mut a = database.to_vec();
            a.extend_from_slice(&end);
            SharedAttributes::new(&a)
        };
        assert_eq!(
            common_attributes("app", "u", peer, server),
            (
                with([
                    ("client.address", Value::Str("10.1.2.3")),
                    ("client.port", Value::Int(40000)),
                ]),
                with([
                    ("server.address", Value::Str("db")),
                    ("server.port", Value::Int(5432)),
                ]),
            )
        );
    }

    #[test]
    fn command_tags_give_operation_and_rows() {
        assert_eq!(tag_parts(b"SELECT 1"), (Some("SELECT"), Some(1)));
        assert_eq!(tag_parts(b"SELECT 12"), (Some("SELECT"), Some(12)));
        assert_eq!(tag_parts(b"INSERT 0 5"), (Some("INSERT"), Some(5)));
        assert_eq!(tag_parts(b"CREATE TABLE"), (Some("CREATE TABLE"), None));
        assert_eq!(tag_parts(b"BEGIN"), (Some("BEGIN"), None));
        assert_eq!(tag_parts(b"COPY 3"), (Some("COPY"), Some(3)));
        assert_eq!(tag_parts(b""), (None, None));
        assert_eq!(tag_parts(b"\xff 1"), (None, None));
    }

    #[test]
    fn the_ratio_sampler_keeps_about_its_share_of_trace_ids() {
        let settings = |rate| TraceSettings {
            sampling_rate: rate,
            include_query_text: false,
            traceparent_sql: None,
            application_name_sql: None,
        };
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let ids: Vec<[u8; 16]> = (0..10_000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&rng.to_be_bytes());
                id
            })
            .collect();
        let kept = |rate| ids.iter().filter(|id| settings(rate).keeps(id)).count();
        assert_eq!(kept(0.0), 0);
        assert_eq!(kept(1.0), 10_000);
        let tenth = kept(0.1);
        assert!((800..1200).contains(&tenth), "{tenth}");
    }
}
