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
use std::time::{Duration, Instant, SystemTime};

use regex::bytes::Regex;

use super::events::{ClientState, Event, EventSink, StatementEnd};
use super::otlp::{AttrValue, Exporter, SpanEventRecord, SpanKind, SpanRecord, SpanStatus};
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
    server_database: Arc<str>,
    /// Every span's attributes of the session (see [`common_attributes`]).
    common: Arc<[(&'static str, AttrValue)]>,
}

/// A logged-in session being followed.
#[derive(Debug)]
struct SessionTrace {
    info: Arc<SessionInfo>,
    parent: Option<TraceParent>,
    transaction: Option<Transaction>,
    /// Statements sent whose answers have not ended, in order.
    statements: VecDeque<Statement>,
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

/// Turns one engine's events into spans.
pub struct SpanSink {
    exporter: Exporter,
    settings: Arc<TraceSettings>,
    sessions: HashMap<u32, SessionTrace, Pids>,
    /// xorshift64* state for span and trace ids.
    rng: u64,
    /// An instant and the wall-clock time it was.
    anchor: (Instant, SystemTime),
}

impl SpanSink {
    pub fn new(exporter: Exporter, settings: Arc<TraceSettings>) -> SpanSink {
        let mut seed = [0u8; 8];
        crate::auth::Rng::fill(&mut crate::auth::OsRng, &mut seed);
        SpanSink {
            exporter,
            settings,
            sessions: HashMap::default(),
            rng: u64::from_le_bytes(seed) | 1,
            anchor: (Instant::now(), SystemTime::now()),
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*: ids need to be unique, not secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id = self.next_u64();
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.span_id());
        id
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (instant, wall) = self.anchor;
        match at.checked_duration_since(instant) {
            Some(after) => wall + after,
            None => wall - instant.saturating_duration_since(at),
        }
    }

    /// Starts the session's transaction if none is open (`waited`: for a server connection,
    /// up to `at`).
    fn begin(&mut self, pid: u32, at: Instant, waited: Duration) {
        let Some(session) = self.sessions.get(&pid) else {
            return;
        };
        if session.transaction.is_some() {
            return;
        }
        let parent = session.parent;
        let (trace_id, sampled) = match parent {
            Some(p) => (p.trace_id, p.sampled()),
            None => {
                let id = self.trace_id();
                (id, self.settings.keeps(&id))
            }
        };
        let span_id = self.span_id();
        if let Some(session) = self.sessions.get_mut(&pid) {
            session.transaction = Some(Transaction {
                trace_id,
                span_id,
                sampled,
                start: at.checked_sub(waited).unwrap_or(at),
                waited,
                statements: 0,
                failed: None,
            });
        }
    }

    fn statement_started(&mut self, pid: u32, at: Instant, text: &[u8]) {
        self.begin(pid, at, Duration::ZERO);
        let SpanSink {
            settings, sessions, ..
        } = self;
        let Some(session) = sessions.get_mut(&pid) else {
            return;
        };
        if session.statements.len() >= MAX_PENDING {
            return;
        }
        let sampled = session.transaction.as_ref().is_some_and(|t| t.sampled);
        let mut statement = Statement::default();
        // A statement's own trace context may sample it when its transaction is not.
        if let Some(re) = &settings.traceparent_sql {
            statement.parent = re
                .captures(text)
                .and_then(|c| c.get(1))
                .and_then(|m| std::str::from_utf8(m.as_bytes()).ok())
                .and_then(|v| {
                    let parsed = TraceParent::parse(v);
                    if parsed.is_none() {
                        log::debug!("ignored an invalid traceparent in a statement's SQL");
                    }
                    parsed
                });
        }
        if sampled || statement.parent.is_some_and(|p| p.sampled()) {
            if let Some(re) = &settings.application_name_sql {
                statement.application_name = re.captures(text).and_then(|c| {
                    c.iter()
                        .skip(1)
                        .flatten()
                        .next()
                        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                });
            }
            if settings.include_query_text {
                statement.text = Some(String::from_utf8_lossy(text).into_owned());
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
        let Some(session) = self.sessions.get_mut(&pid) else {
            return;
        };
        let statement = session.statements.pop_front().unwrap_or_default();
        let info = session.info.clone();
        let Some(transaction) = session.transaction.as_mut() else {
            return;
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
            return;
        }
        let operation = operation_name(tag);
        let mut attributes = Vec::new();
        if let Some(op) = operation {
            attributes.push(("db.operation.name", operation_value(op)));
        }
        if let Some(rows) = returned_rows(tag) {
            attributes.push(("db.response.returned_rows", AttrValue::Int(rows)));
        }
        if let Some(text) = statement.text {
            attributes.push(("db.query.text", AttrValue::Str(text)));
        }
        if let Some(name) = statement.application_name {
            attributes.push(("pglink.application_name", AttrValue::Str(name)));
        }
        let status = match (end, sqlstate) {
            (StatementEnd::Failed, code) => {
                let code = code.map(|c| c.to_string()).unwrap_or_default();
                attributes.push(("db.response.status_code", code.clone().into()));
                attributes.push(("error.type", code.clone().into()));
                SpanStatus::Error(code)
            }
            (StatementEnd::Skipped, _) => {
                attributes.push(("pglink.statement.skipped", AttrValue::Bool(true)));
                SpanStatus::Unset
            }
            (StatementEnd::Completed, _) => SpanStatus::Unset,
        };
        let name = match operation {
            Some(op) => format!("{op} {}", info.server_database),
            None => info.server_database.to_string(),
        };
        let span = SpanRecord {
            trace_id,
            span_id: self.span_id(),
            parent_span_id: Some(parent_span_id),
            parent_is_remote: remote,
            name,
            kind: SpanKind::Client,
            start: self.wall(started),
            end: self.wall(at),
            shared_attributes: Some(info.common.clone()),
            attributes,
            events: Vec::new(),
            status,
            sampled: true,
        };
        self.exporter.submit(span);
    }

    /// Ends the session's transaction at `at` (`failure`: why, when it did not end well).
    fn end(&mut self, pid: u32, at: Instant, failure: Option<&str>) {
        let Some(session) = self.sessions.get_mut(&pid) else {
            return;
        };
        session.statements.clear();
        let Some(t) = session.transaction.take() else {
            return;
        };
        if !t.sampled {
            return;
        }
        let parent = session.parent;
        let info = session.info.clone();
        let mut attributes = vec![("pglink.statements", AttrValue::Int(i64::from(t.statements)))];
        let status = match (failure, t.failed) {
            (Some(why), _) => SpanStatus::Error(why.to_owned()),
            (None, Some(code)) => {
                attributes.push(("db.response.status_code", code.to_string().into()));
                SpanStatus::Unset
            }
            (None, None) => SpanStatus::Unset,
        };
        let events = vec![SpanEventRecord {
            name: "pool.wait".to_owned(),
            time: self.wall(t.start),
            attributes: vec![(
                "pglink.pool.wait_seconds",
                AttrValue::F64(t.waited.as_secs_f64()),
            )],
        }];
        let span = SpanRecord {
            trace_id: t.trace_id,
            span_id: t.span_id,
            parent_span_id: parent.map(|p| p.parent_id),
            parent_is_remote: parent.is_some(),
            name: format!("transaction {}", info.server_database),
            kind: SpanKind::Server,
            start: self.wall(t.start),
            end: self.wall(at),
            shared_attributes: Some(info.common.clone()),
            attributes,
            events,
            status,
            sampled: true,
        };
        self.exporter.submit(span);
    }
}

impl EventSink for SpanSink {
    fn record(&mut self, at: Instant, event: Event<'_>) {
        match event {
            Event::LoggedIn {
                pid,
                database,
                user,
                peer,
                traceparent,
                server,
                ..
            } => {
                let info = Arc::new(SessionInfo {
                    server_database: server.database.into(),
                    common: common_attributes(database, user, peer, server).into(),
                });
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
                // A transaction still open (a pinned session's) ends where the next begins.
                self.end(pid, at, None);
                self.begin(pid, at, waited);
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

    fn wants_statements(&self) -> bool {
        true
    }
}

/// Attributes every span of a session has, built once per session and shared by its spans.
fn common_attributes(
    database: &str,
    user: &str,
    peer: Option<core::net::SocketAddr>,
    server: crate::observe::events::ServerAddress<'_>,
) -> Vec<(&'static str, AttrValue)> {
    let mut a = Vec::with_capacity(8);
    a.push(("db.system.name", AttrValue::Static("postgresql")));
    a.push(("db.namespace", server.database.into()));
    a.push(("db.user", user.into()));
    a.push(("pglink.database", database.into()));
    a.push(("server.address", server.host.into()));
    a.push(("server.port", AttrValue::Int(i64::from(server.port))));
    if let Some(peer) = peer {
        a.push(("client.address", peer.ip().to_string().into()));
        a.push(("client.port", AttrValue::Int(i64::from(peer.port()))));
    }
    a
}

/// The operation a command tag names: its words before the row counts ("SELECT",
/// "INSERT", "CREATE TABLE").
fn operation_name(tag: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(tag).ok()?;
    let end = text
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(text.len());
    Some(text.get(..end)?.trim_end()).filter(|op| !op.is_empty())
}

/// The operation as an attribute value: the common ones without an allocation.
fn operation_value(op: &str) -> AttrValue {
    const COMMON: [&str; 12] = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "BEGIN", "COMMIT", "ROLLBACK", "SET",
        "FETCH", "COPY", "CALL",
    ];
    match COMMON.iter().find(|c| **c == op) {
        Some(c) => AttrValue::Static(c),
        None => op.into(),
    }
}

/// The row count at the end of a command tag ("SELECT 5", "INSERT 0 5", "COPY 3").
fn returned_rows(tag: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(tag).ok()?;
    let (_, last) = text.rsplit_once(' ')?;
    last.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_give_operation_and_rows() {
        assert_eq!(operation_name(b"SELECT 1"), Some("SELECT"));
        assert_eq!(operation_name(b"INSERT 0 5"), Some("INSERT"));
        assert_eq!(operation_name(b"CREATE TABLE"), Some("CREATE TABLE"));
        assert_eq!(operation_name(b""), None);
        assert_eq!(returned_rows(b"SELECT 12"), Some(12));
        assert_eq!(returned_rows(b"INSERT 0 5"), Some(5));
        assert_eq!(returned_rows(b"CREATE TABLE"), None);
        assert_eq!(returned_rows(b"BEGIN"), None);
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
