//! The relay: forwards one client's traffic to and from the backend it holds, and knows at
//! every moment what the backend still owes the client.
//!
//! Every message forwarded to the backend that produces a response pushes an [`Expect`] entry;
//! backend messages pop them. The backend goes back to the pool at the ReadyForQuery `I` that
//! leaves the queue empty with no unsynced extended-protocol messages: that is the only point
//! at which it has no state belonging to this client (outside pinned sessions).
//!
//! Two server behaviours the queue must mirror exactly, or a backend is released too early
//! (another client would read this one's results) or never:
//! - After an ErrorResponse in extended protocol the server discards messages up to the next
//!   Sync, producing nothing for them: the queue drops entries up to the next `Sync`.
//! - While in COPY IN the server ignores Sync and Flush: Syncs a client pipelined behind a
//!   COPY (tokio-postgres does) produce no ReadyForQuery. Entries for them are removed when the
//!   CopyInResponse shows the server entered COPY IN, up to the client's CopyDone/CopyFail.
//!
//! The hot path looks only at 5-byte headers; message bodies are copied through in as many
//! pieces as they arrive (a 100 MB DataRow never sits in a buffer). Only ReadyForQuery,
//! ErrorResponse, ParameterStatus and Describe's kind byte are read.
//!
//! Entries are not only the client's own messages. pglink also sends requests of its own
//! (a Parse its backend lacks, a Close to make room, a SET to bring parameters in line), whose
//! answers are swallowed, and answers requests itself (ParseComplete for a statement the
//! backend already has, a cached Describe, CloseComplete): such *local* entries carry their
//! bytes and are emitted when everything before them has been answered — and dropped, like
//! the server would drop them, when an earlier error makes it skip to Sync.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::statements::{ClientStatement, Statement};

use crate::observe::events::StatementEnd;
use crate::protocol::backend::tag as be;
use crate::protocol::framing::{FrameError, Header, peek_header};
use crate::protocol::frontend::tag as fe;
use crate::protocol::{ErrorFields, MessageType, Severity, SqlState, TransactionStatus};

/// Client messages the relay will queue before it stops reading from the client.
pub const MAX_PIPELINE: usize = 4096;
/// Streamed messages (DataRow, CopyData, ...) may be as large as PostgreSQL allows (1 GB of
/// data plus framing); `max_message_len` bounds only the messages the relay reads whole.
pub const MAX_STREAMED_MESSAGE: usize = (1 << 30) + (1 << 20);

/// What a message sent to the backend will produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Simple Query or FunctionCall: everything up to and including ReadyForQuery.
    Cycle,
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// Rows, then CommandComplete, EmptyQueryResponse or PortalSuspended (or a COPY).
    Execute,
    /// CloseComplete.
    Close,
    /// ReadyForQuery.
    Sync,
    /// The client's CopyDone/CopyFail: nothing, but marks where the server leaves COPY IN.
    CopyEnd,
    /// An answer pglink gives itself (the entry's bytes), in its place in the sequence.
    Local,
}

/// Where the responses to an entry go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the client.
    Forward,
    /// Dropped, except an ErrorResponse, which the client must see (pglink sent the request
    /// on its behalf: an injected Parse whose statement no longer parses, say).
    Swallow,
    /// Dropped entirely (cleanup after a vanished client, health checks).
    Discard,
    /// Dropped, and an ErrorResponse is replaced by the entry's bytes: pglink makes the server
    /// fail a batch (so it skips to Sync and aborts the implicit transaction exactly as it
    /// would have) and reports its own error in that place. A failed Query's ReadyForQuery
    /// still goes to the client.
    ReplaceError,
}

/// What pglink learns when an entry's request succeeds or fails.
#[derive(Debug, Clone, Default)]
pub enum Effect {
    #[default]
    None,
    /// A Parse of `statement` sent to the backend (for the client's `client_name`, if the
    /// client asked for it).
    Prepare {
        statement: Arc<Statement>,
        client_name: Option<Box<[u8]>>,
    },
    /// A Describe of `statement` whose answer is worth caching.
    Describe(Arc<Statement>),
    /// A query reading back these parameters (one row, one column each).
    Capture(Vec<String>),
    /// A query giving the backend these parameter values (`None`: reset).
    Sync(Vec<(String, Option<String>)>),
    /// A Bind of a shared statement (so a stale plan can be traced to it).
    Bound(Arc<Statement>),
    /// A Parse of the cached unnamed statement answered locally (see
    /// [`Relay::push_local_with`]): the client's unnamed statement became statement `id`.
    /// Failed (skipped after an earlier error of its batch), it was `previous` all along.
    UnnamedParsed {
        id: u64,
        previous: Option<Box<ClientStatement>>,
    },
}

/// An entry's effect resolved; the session applies these after each call.
#[derive(Debug)]
pub enum Outcome {
    Succeeded(Effect),
    /// Failed, or skipped after an earlier error.
    Failed(Effect),
    /// The ParameterDescription + RowDescription/NoData answering a Describe.
    Described(Arc<Statement>, Vec<u8>),
    /// Parameter values read back (`None` for a parameter the server does not know).
    Captured(Vec<String>, Vec<Option<String>>),
    /// The server failed a Bind or Describe of the statement with "cached plan must not
    /// change result type": its copy on this backend is stale.
    StalePlan(Arc<Statement>),
    /// A parameter sync (`Effect::Sync`) failed with this ErrorResponse (whole message).
    SyncFailed(Vec<u8>),
    /// The server reported DEALLOCATE ALL or DISCARD ALL (`CommandComplete`): every prepared
    /// statement on the backend is gone.
    Reset(ServerReset),
}

/// What a DEALLOCATE ALL or DISCARD ALL the server ran did, and where in the sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReset {
    /// DISCARD ALL (which also resets every parameter), not only DEALLOCATE ALL.
    pub discard_all: bool,
    /// The sequence number (see [`Relay::pushed`]) of the request that ran it: what was
    /// prepared under a number up to this one is gone, what came later is not.
    pub seq: u64,
    /// Statements whose Parse was sent after that request (still on their way): they
    /// exist after it.
    pub preparing: Vec<u64>,
}

impl ServerReset {
    /// `Some(discard_all)` if a CommandComplete body is one of the two tags.
    fn from_tag(body: &[u8]) -> Option<bool> {
        match body {
            b"DISCARD ALL\0" => Some(true),
            b"DEALLOCATE ALL\0" => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Its place in the sequence of requests (see [`Relay::pushed`]).
    seq: u64,
    expect: Expect,
    route: Route,
    effect: Effect,
    /// A local entry's answer, or the error that replaces the server's.
    bytes: Option<Arc<[u8]>>,
    /// A client statement (Query, FunctionCall, Execute): when it was sent.
    sent: Option<Instant>,
}

/// A CommandComplete tag ("SELECT 1", "INSERT 0 5"), kept inline; longer ones (none of
/// PostgreSQL's) are cut.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommandTag {
    bytes: [u8; CommandTag::MAX],
    len: u8,
}

impl CommandTag {
    const MAX: usize = 46;
    /// The longest CommandComplete frame whose tag is read.
    const MAX_FRAME: usize = Header::SIZE + CommandTag::MAX + 1;

    pub const EMPTY: CommandTag = CommandTag {
        bytes: [0; CommandTag::MAX],
        len: 0,
    };

    fn new(tag: &[u8]) -> CommandTag {
        let tag = tag.strip_suffix(&[0]).unwrap_or(tag);
        let mut bytes = [0; CommandTag::MAX];
        let len = bytes.iter_mut().zip(tag).map(|(b, t)| *b = *t).count();
        CommandTag {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl std::fmt::Debug for CommandTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A client statement whose answer ended (see [`Relay::take_statements`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementDone {
    /// When the server began on it: when it was sent, or when the statement before it
    /// ended, whichever is later.
    pub started: Instant,
    pub end: StatementEnd,
    /// The (last) CommandComplete's tag; empty for other ends.
    pub tag: CommandTag,
    pub sqlstate: Option<SqlState>,
}

/// Why the relay cannot go on. The backend is not reusable after any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// A length field out of range.
    Framing(FrameError),
    /// The client sent something not allowed here.
    ClientMessage { tag: u8, reason: &'static str },
    /// The backend sent a message the queue does not account for.
    Desync { tag: u8, expected: Option<Expect> },
    /// The backend started COPY BOTH. PostgreSQL uses it only for streaming replication,
    /// whose connections pglink refuses at startup, so it is not relayed.
    CopyBoth,
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Framing(e) => write!(f, "{e}"),
            RelayError::ClientMessage { tag, reason } => {
                write!(
                    f,
                    "unexpected client message type {}: {reason}",
                    MessageType(*tag)
                )
            }
            RelayError::Desync { tag, expected } => write!(
                f,
                "server sent message type {} while expecting {expected:?}",
                MessageType(*tag)
            ),
            RelayError::CopyBoth => {
                write!(f, "COPY BOTH (streaming replication) is not supported")
            }
        }
    }
}

impl std::error::Error for RelayError {}

impl From<FrameError> for RelayError {
    fn from(e: FrameError) -> Self {
        RelayError::Framing(e)
    }
}

/// Why `on_client_data` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStop {
    /// Everything complete enough was forwarded; the rest needs more bytes.
    NeedMore,
    /// The client sent Terminate (consumed, not forwarded).
    Terminate,
    /// The pipeline is full: stop reading from the client until responses drain.
    PipelineFull,
}

/// Why `on_backend_data` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStop {
    /// Everything complete enough was handled; the rest needs more bytes.
    NeedMore,
    /// The transaction is over and nothing is outstanding: the backend can be released.
    /// Bytes after this point are not the client's.
    Idle,
    /// A ParameterStatus message; its body is at this range of the input. `forwarded`: the
    /// client saw it (its own statement changed the value), not pglink's.
    ParameterStatus {
        start: usize,
        end: usize,
        forwarded: bool,
    },
    /// The server reported a FATAL error (forwarded); it will close the connection.
    Fatal,
    /// "cached plan must not change result type" for a shared statement (`take_stale`) in a
    /// batch that may be replayed: it started outside a transaction and has shown the client
    /// nothing yet. Not forwarded: the session either replays the batch (`abandon_batch`)
    /// or passes the error on (`forward_error`); the ErrorResponse is at this range of the
    /// input.
    StalePlan { start: usize, end: usize },
}

/// Relays no session holds, kept for their allocations (one engine's): a session holds a
/// relay only while it holds a backend, so an idle client costs none.
#[derive(Debug, Default)]
pub struct RelayPool {
    // Boxed: a session holds its relay boxed, so taking and giving one moves a pointer.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Relay>>,
}

impl RelayPool {
    /// Relays kept at most; more are freed.
    pub const MAX_FREE: usize = 256;

    fn take(&mut self) -> Box<Relay> {
        self.free.pop().unwrap_or_else(|| Box::new(Relay::new(0)))
    }

    fn give(&mut self, relay: Box<Relay>) {
        if self.free.len() < Self::MAX_FREE {
            self.free.push(relay);
        }
    }

    #[cfg(test)]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

/// A session's relay: one from the engine's [`RelayPool`] while it holds a backend, none
/// while it is idle. Reading it without one reads an empty relay; changing it without one
/// takes a new one (rare: an answer pglink gives itself while idle), given back at the next
/// release. The sequence of recorded requests goes on over all lendings.
#[derive(Debug)]
pub struct RelaySlot {
    relay: Option<Box<Relay>>,
    /// [`Relay::pushed`] while no relay is held.
    pushed: u64,
    max_message_len: usize,
}

/// What a session without a relay reads.
static NO_RELAY: Relay = Relay::new(0);

impl RelaySlot {
    pub fn new(max_message_len: usize) -> RelaySlot {
        RelaySlot {
            relay: None,
            pushed: 0,
            max_message_len,
        }
    }

    /// A relay for a new lending, reset, from `pool` unless one is held already.
    pub fn attach(&mut self, pool: &mut RelayPool) {
        let relay = self.hold(|| pool.take());
        relay.reset();
    }

    /// Gives the relay back to `pool` if it has nothing of the session's any more.
    pub fn park(&mut self, pool: &mut RelayPool) {
        if let Some(relay) = self.relay.take_if(|r| r.is_parkable()) {
            self.pushed = relay.pushed;
            pool.give(relay);
        }
    }

    /// The relay, for a cleanup that outlives the session.
    pub fn take(&mut self) -> Box<Relay> {
        let relay = match self.relay.take() {
            Some(relay) => relay,
            None => stamped(Box::new(Relay::new(0)), self.pushed, self.max_message_len),
        };
        self.pushed = relay.pushed;
        relay
    }

    /// How many requests were recorded before now, over all lendings (never reset): a
    /// request recorded later has a sequence number at least this.
    pub fn pushed(&self) -> u64 {
        self.relay.as_ref().map_or(self.pushed, |r| r.pushed)
    }

    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Whether a relay is held (tests).
    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        self.relay.is_some()
    }

    /// The relay held, or `new` as this session's (every mutable use of the relay passes
    /// here: a relay held costs one check).
    fn hold(&mut self, new: impl FnOnce() -> Box<Relay>) -> &mut Relay {
        let (pushed, max) = (self.pushed, self.max_message_len);
        self.relay
            .get_or_insert_with(|| stamped(new(), pushed, max))
    }
}

/// `relay` made a session's: its count of requests and its message size limit.
fn stamped(mut relay: Box<Relay>, pushed: u64, max_message_len: usize) -> Box<Relay> {
    relay.pushed = pushed;
    relay.max_message_len = max_message_len;
    relay
}

impl std::ops::Deref for RelaySlot {
    type Target = Relay;

    fn deref(&self) -> &Relay {
        self.relay.as_deref().unwrap_or(&NO_RELAY)
    }
}

impl std::ops::DerefMut for RelaySlot {
    fn deref_mut(&mut self) -> &mut Relay {
        self.hold(|| Box::new(Relay::new(0)))
    }
}

/// Per-lending state between one client and one backend.
#[derive(Debug)]
pub struct Relay {
    queue: VecDeque<Entry>,
    /// Extended-protocol messages were sent after the last Sync.
    unsynced: bool,
    /// The server reads client messages in COPY IN mode.
    server_copy_in: bool,
    /// Bytes of a client message still to forward.
    client_partial: usize,
    /// Bytes of a backend message still to pass on, and where they go.
    backend_partial: usize,
    backend_partial_route: Route,
    /// From the last ReadyForQuery.
    status: TransactionStatus,
    max_message_len: usize,
    /// Resolved effects the session has not collected yet.
    outcomes: Vec<Outcome>,
    /// SQLSTATEs of the ErrorResponses the server sent since the last `take_server_errors`.
    server_errors: Vec<crate::protocol::SqlState>,
    /// A Describe answer being collected for the statement at the head.
    capture: Vec<u8>,
    /// Values of a parameter read-back at the head.
    captured: Vec<Option<String>>,
    /// The simple-query cycle at the head met an ErrorResponse (kept if it is a sync's).
    cycle_failed: bool,
    sync_error: Option<Vec<u8>>,
    /// The current batch (entries since the queue was last empty) started outside a
    /// transaction and nothing of it has reached the client yet: it could be replayed.
    batch_replayable: bool,
    /// The statement of the last `StalePlan`.
    stale: Option<Arc<Statement>>,
    /// An extended-protocol error arrived and the server discards everything up to a Sync
    /// pglink has not sent yet: requests sent meanwhile produce nothing.
    skipping_to_sync: bool,
    /// Requests recorded so far, over all lendings (see [`Relay::pushed`]).
    pushed: u64,
    /// The time of the current call, from the session (see [`Relay::set_now`]).
    now: Option<Instant>,
    /// When the last client statement ended in this lending.
    last_end: Option<Instant>,
    /// The last CommandComplete tag of the statement at the head.
    head_tag: CommandTag,
    /// The SQLSTATE of an ErrorResponse not yet pinned on a statement.
    error_code: Option<SqlState>,
    /// Client statements ended since the last `take_statements`.
    statements: Vec<StatementDone>,
}

impl Relay {
    pub const fn new(max_message_len: usize) -> Relay {
        Relay {
            queue: VecDeque::new(),
            unsynced: false,
            server_copy_in: false,
            client_partial: 0,
            backend_partial: 0,
            backend_partial_route: Route::Forward,
            status: TransactionStatus::Idle,
            max_message_len,
            outcomes: Vec::new(),
            server_errors: Vec::new(),
            capture: Vec::new(),
            captured: Vec::new(),
            cycle_failed: false,
            sync_error: None,
            skipping_to_sync: false,
            batch_replayable: false,
            stale: None,
            pushed: 0,
            now: None,
            last_end: None,
            head_tag: CommandTag::EMPTY,
            error_code: None,
            statements: Vec::new(),
        }
    }

    /// The time of the call about to be made: client statements are timed with it.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Stops timing client statements (the relay now cleans up after a client that left).
    pub fn stop_timing(&mut self) {
        self.now = None;
        self.statements.clear();
    }

    /// Client statements whose answers ended since the last call, in order.
    pub fn take_statements(&mut self) -> std::vec::Drain<'_, StatementDone> {
        self.statements.drain(..)
    }

    pub fn has_statements(&self) -> bool {
        !self.statements.is_empty()
    }

    /// Notes the end of a client statement sent at `sent`.
    fn statement_ended(&mut self, sent: Instant, end: StatementEnd, sqlstate: Option<SqlState>) {
        let Some(now) = self.now else {
            return;
        };
        let started = self.last_end.map_or(sent, |last| last.max(sent)).min(now);
        self.last_end = Some(now);
        let tag = std::mem::replace(&mut self.head_tag, CommandTag::EMPTY);
        self.statements.push(StatementDone {
            started,
            end,
            tag: if end == StatementEnd::Completed {
                tag
            } else {
                CommandTag::EMPTY
            },
            sqlstate,
        });
    }

    /// Resets for a new lending (keeps the queue's allocation).
    pub fn reset(&mut self) {
        self.queue.clear();
        self.unsynced = false;
        self.server_copy_in = false;
        self.client_partial = 0;
        self.backend_partial = 0;
        self.status = TransactionStatus::Idle;
        self.outcomes.clear();
        self.capture.clear();
        self.captured.clear();
        self.cycle_failed = false;
        self.sync_error = None;
        self.skipping_to_sync = false;
        self.batch_replayable = false;
        self.stale = None;
        self.last_end = None;
        self.head_tag = CommandTag::EMPTY;
        self.error_code = None;
        self.statements.clear();
    }

    /// Nothing outstanding and nothing left to report: a relay that can serve another
    /// session.
    fn is_parkable(&self) -> bool {
        self.is_idle()
            && self.outcomes.is_empty()
            && self.server_errors.is_empty()
            && self.statements.is_empty()
    }

    /// Nothing outstanding, no transaction open: the backend holds nothing of this client's.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && !self.unsynced
            && self.client_partial == 0
            && self.backend_partial == 0
            && self.status == TransactionStatus::Idle
    }

    pub fn status(&self) -> TransactionStatus {
        self.status
    }

    /// Messages forwarded whose responses have not all arrived.
    pub fn outstanding(&self) -> usize {
        // Local answers at the head are not outstanding: they only wait for the server's
        // next bytes to go out with (`push_local_deferred`).
        let leading = self
            .queue
            .iter()
            .take_while(|e| e.expect == Expect::Local)
            .count();
        self.queue.len() - leading
    }

    /// The client is in the middle of sending a message to the backend.
    pub fn client_mid_message(&self) -> bool {
        self.client_partial > 0
    }

    /// A backend message is being passed to the client and is not finished.
    pub fn backend_mid_message(&self) -> bool {
        self.backend_partial > 0
    }

    pub fn server_in_copy_in(&self) -> bool {
        self.server_copy_in
    }

    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Records a request whose bytes the caller sent to the backend itself.
    pub fn push(&mut self, expect: Expect, route: Route, effect: Effect) {
        self.push_entry(Entry {
            seq: 0,
            expect,
            route,
            effect,
            bytes: None,
            sent: None,
        });
    }

    /// Records a client statement (Query, FunctionCall, Execute) the caller sent; it is
    /// reported by [`take_statements`](Self::take_statements) when its answer ends.
    fn push_statement(&mut self, expect: Expect) {
        self.push_entry(Entry {
            seq: 0,
            expect,
            route: Route::Forward,
            effect: Effect::None,
            bytes: None,
            // Timed only once the session gives the relay its clock.
            sent: self.now,
        });
    }

    /// Records a request the server will fail (see [`Route::ReplaceError`]); `error` is the
    /// complete ErrorResponse the client gets instead of the server's.
    pub fn push_failing(&mut self, expect: Expect, error: Arc<[u8]>) {
        self.push_entry(Entry {
            seq: 0,
            expect,
            route: Route::ReplaceError,
            effect: Effect::None,
            bytes: Some(error),
            sent: None,
        });
    }

    /// An answer pglink gives itself: written to `to_client` now if nothing is outstanding,
    /// otherwise when everything before it has been answered; dropped, as the server drops
    /// its own, while it skips to Sync after an error.
    pub fn push_local(&mut self, answer: &[u8], to_client: &mut Vec<u8>) {
        self.push_local_with(answer, Effect::None, to_client);
    }

    /// [`push_local`](Self::push_local) with an effect that is reported as failed if the
    /// server skips to Sync before the answer is due (an error earlier in the batch), and
    /// dropped otherwise.
    pub fn push_local_with(&mut self, answer: &[u8], effect: Effect, to_client: &mut Vec<u8>) {
        if self.queue.is_empty() && self.backend_partial == 0 && !self.skipping_to_sync {
            to_client.extend_from_slice(answer);
            return;
        }
        self.push_local_deferred(answer, effect);
    }

    /// [`push_local_with`](Self::push_local_with), but queued even when nothing is
    /// outstanding: the answer goes out with the server's next answer (the caller knows one
    /// is coming: a Sync follows).
    pub fn push_local_deferred(&mut self, answer: &[u8], effect: Effect) {
        self.push_entry(Entry {
            seq: 0,
            expect: Expect::Local,
            route: Route::Forward,
            effect,
            bytes: Some(answer.into()),
            sent: None,
        });
    }

    /// Whether requests sent since the last Sync are still unanswered (an error among them
    /// would make the server skip what follows in the batch).
    pub fn batch_pending(&self) -> bool {
        self.queue
            .iter()
            .rev()
            .take_while(|e| e.expect != Expect::Sync)
            .any(|e| e.expect != Expect::Local)
    }

    fn push_entry(&mut self, mut entry: Entry) {
        entry.seq = self.pushed;
        self.pushed += 1;
        if entry.expect == Expect::CopyEnd && self.queue.is_empty() {
            // No command is pending, so the server cannot be in COPY IN: it ignores this.
            return;
        }
        match entry.expect {
            Expect::Sync => self.unsynced = false,
            Expect::Cycle | Expect::CopyEnd | Expect::Local => {}
            _ => self.unsynced = true,
        }
        if self.skipping_to_sync {
            if entry.expect != Expect::Sync {
                // The server ignores it (and pglink drops its own answers the same way).
                if let Some(sent) = entry.sent {
                    self.statement_ended(sent, StatementEnd::Skipped, None);
                }
                if !matches!(entry.effect, Effect::None) {
                    self.outcomes.push(Outcome::Failed(entry.effect));
                }
                return;
            }
            self.skipping_to_sync = false;
        }
        // A batch starts with the first request after nothing outstanding: local answers
        // deferred at the head of the queue (`push_local_deferred`) are not in the way.
        let starts_batch = self.queue.iter().all(|e| e.expect == Expect::Local);
        if starts_batch && self.queue.is_empty() {
            self.batch_replayable =
                self.status == TransactionStatus::Idle && entry.expect != Expect::Local;
        } else if starts_batch && entry.expect != Expect::Local {
            self.batch_replayable = self.status == TransactionStatus::Idle;
        } else if starts_batch {
            // Another deferred answer: as if written at once.
        } else if entry.expect == Expect::Local {
            // A local answer queued inside the batch would be lost by a replay.
            self.batch_replayable = false;
        }
        self.queue.push_back(entry);
    }

    /// The SQLSTATEs of the server's ErrorResponses since the last call.
    pub fn take_server_errors(&mut self) -> std::vec::Drain<'_, crate::protocol::SqlState> {
        self.server_errors.drain(..)
    }

    /// Effects resolved since the last call.
    pub fn take_outcomes(&mut self) -> std::vec::Drain<'_, Outcome> {
        self.outcomes.drain(..)
    }

    pub fn has_outcomes(&self) -> bool {
        !self.outcomes.is_empty()
    }

    /// Streams the rest of a client message whose beginning was forwarded.
    pub fn continue_client_message(&mut self, data: &[u8], to_backend: &mut Vec<u8>) -> usize {
        let n = self.client_partial.min(data.len());
        to_backend.extend_from_slice(data.get(..n).unwrap_or_default());
        self.client_partial -= n;
        n
    }

    /// Forwards one client message unchanged (as much of it as `data` holds; the rest
    /// follows through `continue_client_message`) and records what it will produce. `data`
    /// starts at the message; a Describe must include its kind byte.
    pub fn forward_client_message(
        &mut self,
        header: Header,
        data: &[u8],
        to_backend: &mut Vec<u8>,
    ) -> Result<usize, RelayError> {
        self.on_client_message(header, data.get(Header::SIZE).copied())?;
        let n = header.frame_len().min(data.len());
        to_backend.extend_from_slice(data.get(..n).unwrap_or_default());
        self.client_partial = header.frame_len() - n;
        Ok(n)
    }

    /// Whether more client messages may be queued now.
    pub fn pipeline_full(&self) -> bool {
        self.queue.len() >= MAX_PIPELINE
    }

    /// Forwards complete (or streamable) client messages from `data` to `to_backend`.
    /// Returns how many bytes were consumed and why it stopped.
    pub fn on_client_data(
        &mut self,
        data: &[u8],
        to_backend: &mut Vec<u8>,
    ) -> Result<(usize, ClientStop), RelayError> {
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            if self.client_partial > 0 {
                let n = self.continue_client_message(rest, to_backend);
                if n == 0 {
                    return Ok((pos, ClientStop::NeedMore));
                }
                pos += n;
                continue;
            }
            if self.pipeline_full() {
                return Ok((pos, ClientStop::PipelineFull));
            }
            let Some(header) = peek_header(rest, MAX_STREAMED_MESSAGE)? else {
                return Ok((pos, ClientStop::NeedMore));
            };
            if header.tag == fe::TERMINATE {
                if rest.len() < header.frame_len() {
                    return Ok((pos, ClientStop::NeedMore));
                }
                return Ok((pos + header.frame_len(), ClientStop::Terminate));
            }
            if header.tag == fe::DESCRIBE && rest.len() <= Header::SIZE {
                return Ok((pos, ClientStop::NeedMore)); // the kind byte decides the entry
            }
            pos += self.forward_client_message(header, rest, to_backend)?;
        }
    }

    fn on_client_message(
        &mut self,
        header: Header,
        first_body_byte: Option<u8>,
    ) -> Result<(), RelayError> {
        let tag = header.tag;
        if self.server_copy_in
            && !matches!(
                tag,
                fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL | fe::SYNC | fe::FLUSH
            )
        {
            return Err(RelayError::ClientMessage {
                tag,
                reason: "only COPY data may be sent during COPY FROM STDIN",
            });
        }
        let route = Route::Forward;
        let effect = Effect::None;
        match tag {
            fe::QUERY | fe::FUNCTION_CALL => self.push_statement(Expect::Cycle),
            fe::PARSE => self.push(Expect::Parse, route, effect.clone()),
            fe::BIND => self.push(Expect::Bind, route, effect.clone()),
            fe::DESCRIBE => match first_body_byte {
                Some(b'S') => self.push(Expect::DescribeStatement, route, effect.clone()),
                Some(b'P') => self.push(Expect::DescribePortal, route, effect.clone()),
                _ => {
                    return Err(RelayError::ClientMessage {
                        tag,
                        reason: "Describe must name a statement ('S') or portal ('P')",
                    });
                }
            },
            fe::EXECUTE => self.push_statement(Expect::Execute),
            fe::CLOSE => self.push(Expect::Close, route, effect.clone()),
            // The server ignores Sync during COPY IN: no ReadyForQuery will answer it.
            fe::SYNC if self.server_copy_in => {}
            fe::SYNC => self.push(Expect::Sync, route, effect.clone()),
            fe::FLUSH | fe::COPY_DATA => {}
            fe::COPY_DONE | fe::COPY_FAIL if self.server_copy_in => self.server_copy_in = false,
            fe::COPY_DONE | fe::COPY_FAIL => self.push(Expect::CopyEnd, route, effect.clone()),
            _ => {
                return Err(RelayError::ClientMessage {
                    tag,
                    reason: "not a valid message after startup",
                });
            }
        }
        Ok(())
    }

    /// Passes backend messages from `data` to `to_client` (or drops those pglink asked for).
    /// Returns how many bytes were consumed and why it stopped; call again with the rest
    /// unless it stopped for `NeedMore` or `Idle`.
    pub fn on_backend_data(
        &mut self,
        data: &[u8],
        to_client: &mut Vec<u8>,
    ) -> Result<(usize, BackendStop), RelayError> {
        // Local answers deferred to go out with this data (`push_local_deferred`).
        self.settle_head(to_client);
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            if self.backend_partial > 0 {
                let n = self.backend_partial.min(rest.len());
                if n == 0 {
                    return Ok((pos, BackendStop::NeedMore));
                }
                if self.backend_partial_route == Route::Forward {
                    to_client.extend_from_slice(rest.get(..n).unwrap_or_default());
                    self.batch_replayable = false;
                }
                self.backend_partial -= n;
                pos += n;
                if self.backend_partial == 0 {
                    self.settle_head(to_client);
                }
                continue;
            }
            let Some(header) = peek_header(rest, MAX_STREAMED_MESSAGE)? else {
                return Ok((pos, BackendStop::NeedMore));
            };
            let frame_len = header.frame_len();
            let whole = rest.get(..frame_len);
            let tag = header.tag;
            if frame_len > self.max_message_len && !Self::streamable(tag) {
                return Err(RelayError::Framing(FrameError::LengthTooLarge {
                    tag,
                    len: header.len,
                    max: self.max_message_len,
                }));
            }
            match tag {
                be::DATA_ROW if self.reading_back() => {
                    let Some(msg) = whole else {
                        return Ok((pos, BackendStop::NeedMore));
                    };
                    let body = msg.get(Header::SIZE..).unwrap_or_default();
                    if let Ok(crate::protocol::BackendMessage::DataRow(row)) =
                        crate::protocol::BackendMessage::decode(tag, body)
                    {
                        self.captured = row
                            .columns()
                            .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect();
                    }
                    self.on_streamed_message(tag)?;
                    pos += frame_len;
                }
                be::ROW_DESCRIPTION | be::PARAMETER_DESCRIPTION | be::NO_DATA
                    if self.capturing() =>
                {
                    let Some(msg) = whole else {
                        return Ok((pos, BackendStop::NeedMore));
                    };
                    self.capture.extend_from_slice(msg);
                    let route = self.on_streamed_message(tag)?;
                    if route == Route::Forward {
                        to_client.extend_from_slice(msg);
                        self.batch_replayable = false;
                    }
                    pos += frame_len;
                    self.settle_head(to_client);
                }
                // Tags are short: read whole (a longer one is passed through in pieces).
                be::COMMAND_COMPLETE if frame_len <= CommandTag::MAX_FRAME => {
                    let Some(msg) = whole else {
                        return Ok((pos, BackendStop::NeedMore));
                    };
                    let seq = self.queue.front().map_or(0, |e| e.seq);
                    if self.queue.front().is_some_and(|e| e.sent.is_some()) {
                        self.head_tag =
                            CommandTag::new(msg.get(Header::SIZE..).unwrap_or_default());
                    }
                    let route = self.on_streamed_message(tag)?;
                    if route == Route::Forward {
                        to_client.extend_from_slice(msg);
                        self.batch_replayable = false;
                    }
                    pos += frame_len;
                    if let Some(discard_all) =
                        ServerReset::from_tag(msg.get(Header::SIZE..).unwrap_or_default())
                    {
                        let preparing = self.queue.iter().filter_map(|e| match &e.effect {
                            Effect::Prepare { statement, .. } => Some(statement.id),
                            _ => None,
                        });
                        self.outcomes.push(Outcome::Reset(ServerReset {
                            discard_all,
                            seq,
                            preparing: preparing.collect(),
                        }));
                    }
                    self.settle_head(to_client);
                }
                t if Self::streamable(t) => {
                    let route = self.on_streamed_message(t)?;
                    let n = frame_len.min(rest.len());
                    if route == Route::Forward {
                        to_client.extend_from_slice(rest.get(..n).unwrap_or_default());
                        self.batch_replayable = false;
                    }
                    self.backend_partial = frame_len - n;
                    self.backend_partial_route = route;
                    pos += n;
                    if self.backend_partial == 0 {
                        self.settle_head(to_client);
                    }
                }
                be::READY_FOR_QUERY => {
                    let Some(msg) = whole else {
                        return Ok((pos, BackendStop::NeedMore));
                    };
                    let status = msg
                        .get(Header::SIZE)
                        .copied()
                        .and_then(TransactionStatus::from_byte)
                        .ok_or(RelayError::Desync {
                            tag,
                            expected: self.head(),
                        })?;
                    if !self
                        .queue
                        .front()
                        .is_some_and(|e| matches!(e.expect, Expect::Sync | Expect::Cycle))
                    {
                        return Err(RelayError::Desync {
                            tag,
                            expected: self.head(),
                        });
                    }
                    let route = self.pop_done();
                    self.status = status;
                    // A Query pglink makes the server fail is still the client's.
                    if matches!(route, Route::Forward | Route::ReplaceError) {
                        to_client.extend_from_slice(msg);
                    }
                    pos += frame_len;
                    self.settle_head(to_client);
                    if self.is_idle() {
                        return Ok((pos, BackendStop::Idle));
                    }
                }
                be::ERROR_RESPONSE => {
                    let Some(msg) = whole else {
                        return Ok((pos, BackendStop::NeedMore));
                    };
                    let fields =
                        ErrorFields::decode(tag, msg.get(Header::SIZE..).unwrap_or_default()).ok();
                    let fatal = fields
                        .and_then(|f| f.severity_kind())
                        .is_some_and(Severity::ends_session);
                    if let Some(code) = fields.and_then(|f| f.sqlstate()) {
                        self.server_errors.push(code);
                        self.error_code = Some(code);
                    }
                    if let Some(statement) = self.stale_plan(fields) {
                        if self.replayable() {
                            self.stale = Some(statement);
                            let start = pos;
                            pos += frame_len;
                            return Ok((pos, BackendStop::StalePlan { start, end: pos }));
                        }
                        self.outcomes.push(Outcome::StalePlan(statement));
                    }
                    if self
                        .queue
                        .front()
                        .is_some_and(|e| matches!(e.effect, Effect::Sync(_)))
                    {
                        self.sync_error = Some(msg.to_vec());
                    }
                    match self.queue.front() {
                        Some(e) if e.route == Route::ReplaceError && !fatal => {
                            to_client.extend_from_slice(e.bytes.as_deref().unwrap_or_default());
                        }
                        Some(e) if e.route == Route::Discard => {}
                        _ => to_client.extend_from_slice(msg),
                    }
                    pos += frame_len;
                    if fatal {
                        return Ok((pos, BackendStop::Fatal));
                    }
                    self.on_error(true);
                    self.settle_head(to_client);
                }
                be::PARAMETER_STATUS => {
                    let Some(msg) = whole else {
                        return Ok((pos, BackendStop::NeedMore));
                    };
                    let route = self.queue.front().map_or(Route::Forward, |e| e.route);
                    if route == Route::Forward {
                        to_client.extend_from_slice(msg);
                        self.batch_replayable = false;
                    }
                    let start = pos + Header::SIZE;
                    pos += frame_len;
                    return Ok((
                        pos,
                        BackendStop::ParameterStatus {
                            start,
                            end: pos,
                            forwarded: route == Route::Forward,
                        },
                    ));
                }
                be::COPY_BOTH_RESPONSE => return Err(RelayError::CopyBoth),
                tag => {
                    return Err(RelayError::Desync {
                        tag,
                        expected: self.head(),
                    });
                }
            }
        }
    }

    /// Messages passed through by tag alone, in pieces if need be.
    fn streamable(tag: u8) -> bool {
        matches!(
            tag,
            be::DATA_ROW
                | be::COPY_DATA
                | be::COPY_DONE
                | be::NOTICE_RESPONSE
                | be::NOTIFICATION_RESPONSE
                | be::ROW_DESCRIPTION
                | be::PARAMETER_DESCRIPTION
                | be::NO_DATA
                | be::PARSE_COMPLETE
                | be::BIND_COMPLETE
                | be::CLOSE_COMPLETE
                | be::COMMAND_COMPLETE
                | be::EMPTY_QUERY_RESPONSE
                | be::PORTAL_SUSPENDED
                | be::COPY_IN_RESPONSE
                | be::COPY_OUT_RESPONSE
                | be::FUNCTION_CALL_RESPONSE
        )
    }

    fn head(&self) -> Option<Expect> {
        self.queue.front().map(|e| e.expect)
    }

    /// The head is a Describe whose answer is being collected for the cache.
    fn capturing(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|e| matches!(e.effect, Effect::Describe(_)))
    }

    /// The statement whose stale plan this error reports.
    fn stale_plan(&self, fields: Option<ErrorFields<'_>>) -> Option<Arc<Statement>> {
        let fields = fields?;
        if fields.sqlstate() != Some(crate::protocol::SqlState::FEATURE_NOT_SUPPORTED)
            || fields.message() != Some(&b"cached plan must not change result type"[..])
        {
            return None;
        }
        match &self.queue.front()?.effect {
            Effect::Bound(statement) | Effect::Describe(statement) => Some(statement.clone()),
            _ => None,
        }
    }

    /// Whether the batch that just failed can be sent again: it started outside a
    /// transaction, the client has seen nothing of it, and nothing was sent after its Sync.
    fn replayable(&self) -> bool {
        let last = self.queue.len().saturating_sub(1);
        self.batch_replayable
            && !self.queue.is_empty()
            && self.queue.iter().position(|e| e.expect == Expect::Sync) == Some(last)
    }

    /// The statement of the last `StalePlan`.
    pub fn take_stale(&mut self) -> Option<Arc<Statement>> {
        self.stale.take()
    }

    /// After `StalePlan`, to replay: the failed batch's remaining answers (up to and
    /// including the ReadyForQuery of its Sync) are dropped; the caller sends it again.
    pub fn abandon_batch(&mut self) {
        // Replayed once: the replay is not replayed again.
        self.batch_replayable = false;
        // Its statements run again: they end then, not now.
        self.error_code = None;
        self.on_error(false);
        if let Some(sync) = self.queue.front_mut()
            && sync.expect == Expect::Sync
        {
            sync.route = Route::Discard;
        }
    }

    /// After `StalePlan`, not replaying: the error goes to the client as any other, and
    /// the statement (`stale`, from `take_stale`) is reported stale.
    pub fn forward_error(
        &mut self,
        error: &[u8],
        stale: Option<Arc<Statement>>,
        to_client: &mut Vec<u8>,
    ) {
        to_client.extend_from_slice(error);
        self.batch_replayable = false;
        if let Some(statement) = stale {
            self.outcomes.push(Outcome::StalePlan(statement));
        }
        self.on_error(true);
        self.settle_head(to_client);
    }

    /// Whether the server is discarding requests up to a Sync not yet sent.
    pub fn skipping_to_sync(&self) -> bool {
        self.skipping_to_sync
    }

    /// Whether an answer showing statement `id`'s shape is still to come.
    pub fn awaits_shape(&self, id: u64) -> bool {
        self.queue.iter().any(|e| match &e.effect {
            Effect::Describe(s) | Effect::Prepare { statement: s, .. } => s.id == id,
            _ => false,
        })
    }

    /// Whether statement `id` is being prepared in a batch whose Sync was sent already: an
    /// error earlier in that batch makes the server skip the Parse, so later batches must
    /// not count on the copy until its answer is in. (The latest Parse of it decides.)
    pub fn preparing_before_sync(&self, id: u64) -> bool {
        let (mut preparing, mut synced) = (false, false);
        for entry in &self.queue {
            match &entry.effect {
                Effect::Prepare { statement, .. } if statement.id == id => {
                    (preparing, synced) = (true, false);
                }
                _ if preparing && entry.expect == Expect::Sync => synced = true,
                _ => {}
            }
        }
        synced
    }

    /// Whether a parameter read-back (or a sync) is on its way.
    pub fn reads_back_parameters(&self) -> bool {
        self.queue
            .iter()
            .any(|e| matches!(e.effect, Effect::Capture(_) | Effect::Sync(_)))
    }

    /// The head is a parameter read-back whose row is being collected.
    fn reading_back(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|e| matches!(e.effect, Effect::Capture(_)))
    }

    /// Pops the head entry, which completed; returns its route.
    fn pop_done(&mut self) -> Route {
        let Some(entry) = self.queue.pop_front() else {
            return Route::Forward;
        };
        if let Some(sent) = entry.sent {
            let code = self.error_code.take().filter(|_| self.cycle_failed);
            let end = if self.cycle_failed {
                StatementEnd::Failed
            } else {
                StatementEnd::Completed
            };
            self.statement_ended(sent, end, code);
        }
        if std::mem::take(&mut self.cycle_failed) {
            self.captured.clear();
            let error = self.sync_error.take();
            match entry.effect {
                Effect::None => {}
                Effect::Sync(_) => self
                    .outcomes
                    .push(Outcome::SyncFailed(error.unwrap_or_default())),
                effect => self.outcomes.push(Outcome::Failed(effect)),
            }
            return entry.route;
        }
        match entry.effect {
            Effect::None => {}
            Effect::Describe(statement) => {
                let answer = std::mem::take(&mut self.capture);
                self.outcomes.push(Outcome::Described(statement, answer));
            }
            Effect::Capture(names) => {
                let values = std::mem::take(&mut self.captured);
                self.outcomes.push(Outcome::Captured(names, values));
            }
            Effect::Bound(_) => {}
            effect => self.outcomes.push(Outcome::Succeeded(effect)),
        }
        entry.route
    }

    /// After the head changed: drop COPY end markers and emit local answers now due.
    fn settle_head(&mut self, to_client: &mut Vec<u8>) {
        while let Some(e) = self.queue.front() {
            match e.expect {
                Expect::CopyEnd => {}
                Expect::Local => {
                    to_client.extend_from_slice(e.bytes.as_deref().unwrap_or_default())
                }
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    /// Applies a streamed backend message to the queue; returns where it goes.
    fn on_streamed_message(&mut self, tag: u8) -> Result<Route, RelayError> {
        use Expect::*;
        // Asynchronous messages can come at any time, even with nothing outstanding.
        if matches!(tag, be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE) {
            return Ok(self.queue.front().map_or(Route::Forward, |e| e.route));
        }
        let Some(head) = self.queue.front() else {
            return Err(RelayError::Desync {
                tag,
                expected: None,
            });
        };
        let (expect, route) = (head.expect, head.route);
        let desync = || RelayError::Desync {
            tag,
            expected: Some(expect),
        };
        let pops = match (tag, expect) {
            (
                be::DATA_ROW | be::COPY_DATA | be::COPY_DONE | be::COPY_OUT_RESPONSE,
                Cycle | Execute,
            ) => false,
            (be::ROW_DESCRIPTION | be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE, Cycle) => false,
            (be::FUNCTION_CALL_RESPONSE, Cycle) => false,
            (be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED, Execute) => {
                true
            }
            (be::COPY_IN_RESPONSE, Cycle | Execute) => {
                self.on_copy_in_started();
                false
            }
            (be::PARSE_COMPLETE, Parse)
            | (be::BIND_COMPLETE, Bind)
            | (be::CLOSE_COMPLETE, Close) => true,
            (be::PARAMETER_DESCRIPTION, DescribeStatement) => false,
            (be::ROW_DESCRIPTION | be::NO_DATA, DescribeStatement | DescribePortal) => true,
            _ => return Err(desync()),
        };
        if pops {
            self.pop_done();
        }
        Ok(route)
    }

    /// The server entered COPY IN for the head entry. Syncs the client sent after it, up to
    /// its CopyDone/CopyFail, were read in COPY mode and ignored: forget them.
    fn on_copy_in_started(&mut self) {
        let i = 1;
        while let Some(entry) = self.queue.get(i) {
            match entry.expect {
                Expect::Sync => {
                    self.queue.remove(i);
                }
                Expect::CopyEnd => {
                    // The client already finished the COPY; the server leaves COPY IN there.
                    self.queue.remove(i);
                    return;
                }
                // Any other message aborts the COPY with an error; the error path takes over.
                _ => break,
            }
        }
        self.server_copy_in = true;
    }

    /// After an ErrorResponse: a simple Query (or FunctionCall) or a Sync still ends with its
    /// ReadyForQuery. An extended-protocol error makes the server discard every message up to
    /// the next Sync, simple Queries included (PostgreSQL's `ignore_till_sync`): those
    /// requests never happen, and pglink's own answers among them are dropped too.
    ///
    /// The error's SQLSTATE is pinned on the first client statement it ends (the failed
    /// Query or Execute, or the Execute whose Parse or Bind failed); the statements skipped
    /// after it are reported skipped, unless `record` is false (the batch is replayed).
    fn on_error(&mut self, record: bool) {
        self.server_copy_in = false;
        self.capture.clear();
        if self
            .queue
            .front()
            .is_some_and(|e| matches!(e.expect, Expect::Cycle | Expect::Sync))
        {
            self.cycle_failed = self.queue.front().map(|e| e.expect) == Some(Expect::Cycle);
            if !self.cycle_failed {
                self.error_code = None;
            }
            return;
        }
        while self.queue.front().is_some_and(|e| e.expect != Expect::Sync) {
            let Some(entry) = self.queue.pop_front() else {
                break;
            };
            if let Some(sent) = entry.sent.filter(|_| record) {
                let code = self.error_code.take();
                let end = match code {
                    Some(_) => StatementEnd::Failed,
                    None => StatementEnd::Skipped,
                };
                self.statement_ended(sent, end, code);
            }
            if !matches!(entry.effect, Effect::None) {
                self.outcomes.push(Outcome::Failed(entry.effect));
            }
        }
        self.error_code = None;
        // No Sync sent yet: whatever is sent before one is discarded too.
        self.skipping_to_sync = self.queue.is_empty();
    }
}

#[cfg(test)]
mod tests;
