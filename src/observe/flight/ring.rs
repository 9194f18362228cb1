//! One reactor's ring of recent events, as fixed-size [`Record`]s.
//!
//! A record is an [`Event`] flattened into 56 bytes of plain data: no pointer, no SQL text
//! (a statement's text is never asked for; a command tag is kept, truncated to
//! [`TAG_LEN`] bytes), so encoding one is a few stores and keeping one costs nothing more.
//! The state changes that go with an event, and a client's further messages of the same
//! instant, are kept in its record ([`Record::absorb`]): a one-statement transaction takes
//! five records where it has nine events, so the same `max_bytes` holds 1.8 times the
//! history.
//!
//! The ring is a `VecDeque` whose capacity grows lazily, by doubling, up to its share of
//! `max_bytes`: an idle pglink holds almost nothing. Before it grows it forgets the records
//! older than `min_age`, so it holds what `min_age` needs and no more; at its limit the
//! oldest record goes, and when that one is younger than `min_age` the loss is counted in
//! [`Ring::dropped`] (the memory bound won over `min_age`). Growing is the only allocation,
//! and it happens a bounded number of times (log2 of the limit), never per event.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::observe::clock::NanoClock;
use crate::observe::events::{ClientState, ErrorOrigin, Event, ServerState, StatementEnd};

/// Bytes of a command tag kept ("SELECT 1", "INSERT 0 5", "CREATE TABLE"), and the most
/// client messages one record holds.
pub const TAG_LEN: usize = 12;
/// Records the ring first makes room for (about 56 KiB), unless its limit is lower.
const INITIAL_RECORDS: usize = 1024;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
    LoggedIn,
    Acquired,
    ClientMessage,
    StatementEnded,
    TransactionEnded,
    Error,
}

/// [`Record::flags`]: `pid` is set.
pub const HAS_PID: u8 = 1;
/// [`Record::flags`]: `server` and `generation` are set.
pub const HAS_SERVER: u8 = 2;
/// [`Record::flags`]: `sqlstate` is set.
pub const HAS_SQLSTATE: u8 = 4;
/// [`Record::flags`]: the client (`pid`) changed state to `client_then` at the same instant,
/// after the record's own event (a state change folded into the record before it).
pub const CLIENT_THEN: u8 = 8;
/// [`Record::flags`]: the server connection (`server`) changed state to `server_then` at the
/// same instant, after the record's own event.
pub const SERVER_THEN: u8 = 16;

/// One event, flattened. Times are nanoseconds since the recorder's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub at: u64,
    /// `StatementEnded`, `TransactionEnded`: when it started (ns since the epoch);
    /// `Acquired`: how long the client waited (ns); `ClientMessage`: the messages' length
    /// in bytes.
    pub value: u64,
    pub pid: u32,
    /// The server connection's slot index and generation (within the ring's reactor).
    pub server: u32,
    pub generation: u32,
    pub pool: u32,
    pub kind: Kind,
    /// The state ([`client_state_name`] and [`server_state_name`] decode it), the error
    /// origin, or how a statement ended.
    pub detail: u8,
    pub flags: u8,
    pub sqlstate: [u8; 5],
    pub tag_len: u8,
    pub tag: [u8; TAG_LEN],
    /// With [`CLIENT_THEN`]: the client's state code after the event.
    pub client_then: u8,
    /// With [`SERVER_THEN`]: the server connection's state code after the event.
    pub server_then: u8,
}

/// Instants to nanoseconds since the recorder's epoch (see [`NanoClock`]).
pub type Clock = NanoClock;

impl Record {
    /// A record of nothing yet (a free slot).
    pub const EMPTY: Record = Record::new(Kind::Client, 0);

    const fn new(kind: Kind, at: u64) -> Record {
        Record {
            at,
            value: 0,
            pid: 0,
            server: 0,
            generation: 0,
            pool: 0,
            kind,
            detail: 0,
            flags: 0,
            sqlstate: [0; 5],
            tag_len: 0,
            tag: [0; TAG_LEN],
            client_then: 0,
            server_then: 0,
        }
    }

    fn set_pid(&mut self, pid: u32) {
        self.pid = pid;
        self.flags |= HAS_PID;
    }

    fn set_server(&mut self, server: crate::engine::id::ServerId) {
        (self.server, self.generation) = server_key(server);
        self.flags |= HAS_SERVER;
    }

    fn set_sqlstate(&mut self, code: Option<crate::protocol::SqlState>) {
        if let Some(code) = code {
            self.sqlstate = *code.as_bytes();
            self.flags |= HAS_SQLSTATE;
        }
    }

    /// `event` at `at` as a record, times counted from `epoch`; `None` for what the
    /// recorder does not keep (a statement's start: its text is not wanted, and its end
    /// says when it started).
    pub fn encode(epoch: Instant, at: Instant, event: &Event<'_>) -> Option<Record> {
        let mut record = Record::EMPTY;
        Record::encode_into(&mut Clock::new(epoch, 0), at, event, &mut record).then_some(record)
    }

    /// [`Record::encode`] into `r` (whatever it held), with times counted by `clock`: the
    /// record is written where it is kept. False (and `r` left as it was) for what the
    /// recorder does not keep.
    pub fn encode_into(clock: &mut Clock, at: Instant, event: &Event<'_>, r: &mut Record) -> bool {
        let kind = match event {
            Event::Client { .. } => Kind::Client,
            Event::Server { .. } => Kind::Server,
            Event::LoggedIn { .. } => Kind::LoggedIn,
            Event::Acquired { .. } => Kind::Acquired,
            Event::ClientMessage { .. } => Kind::ClientMessage,
            Event::StatementStarted { .. } => return false,
            Event::StatementEnded { .. } => Kind::StatementEnded,
            Event::TransactionEnded { .. } => Kind::TransactionEnded,
            Event::Error { .. } => Kind::Error,
        };
        *r = Record::new(kind, clock.ns(at));
        match *event {
            Event::Client { pid, state } => {
                r.set_pid(pid);
                r.detail = client_state(state);
            }
            Event::Server {
                server,
                pool,
                state,
            } => {
                r.set_server(server);
                r.pool = pool;
                r.detail = server_state(state);
            }
            Event::LoggedIn { pid, pool, .. } => {
                r.set_pid(pid);
                r.pool = pool;
            }
            Event::Acquired {
                pid,
                server,
                pool,
                waited,
            } => {
                r.set_pid(pid);
                r.set_server(server);
                r.pool = pool;
                r.value = nanos(waited);
            }
            Event::ClientMessage { pid, tag, len } => {
                r.set_pid(pid);
                r.value = u64::from(len);
                r.tag[0] = tag;
                r.tag_len = 1;
            }
            Event::StatementStarted { .. } => {}
            Event::StatementEnded {
                pid,
                server,
                pool,
                started,
                end,
                tag,
                sqlstate,
            } => {
                r.set_pid(pid);
                r.set_server(server);
                r.set_sqlstate(sqlstate);
                r.pool = pool;
                r.value = clock.ns(started);
                r.detail = statement_end(end);
                let n = tag.len().min(TAG_LEN);
                r.tag[..n].copy_from_slice(&tag[..n]);
                r.tag_len = n as u8;
            }
            Event::TransactionEnded {
                pid,
                server,
                pool,
                started,
            } => {
                r.set_pid(pid);
                r.set_server(server);
                r.pool = pool;
                r.value = clock.ns(started);
            }
            Event::Error {
                pid,
                server,
                origin,
                sqlstate,
            } => {
                r.detail = error_origin(origin);
                r.set_sqlstate(Some(sqlstate));
                if let Some(pid) = pid {
                    r.set_pid(pid);
                }
                if let Some(server) = server {
                    r.set_server(server);
                }
            }
        }
        true
    }

    /// Takes `event`, at `at` (ns since the epoch), into this record, the one before it,
    /// when they are of the same instant and the record has room: a client's consecutive
    /// messages (the messages of one read: a pipeline's Bind, Execute and Sync make one
    /// record), and a connection's change of state after an event that names it (a client
    /// going active as it acquires a server connection, and idle as its transaction ends;
    /// the server connection lent or back to idle with it). False otherwise: `event` needs a
    /// record of its own. A one-statement transaction's nine events make five records.
    pub fn absorb(&mut self, at: u64, event: &Event<'_>) -> bool {
        if self.at != at {
            return false;
        }
        match *event {
            Event::ClientMessage { pid, tag, len } => self.merge_message(pid, tag, len),
            Event::Client { pid, state } => {
                if !self.has(HAS_PID) || self.pid != pid || self.has(CLIENT_THEN) {
                    return false;
                }
                self.client_then = client_state(state);
                self.flags |= CLIENT_THEN;
                true
            }
            Event::Server {
                server,
                pool,
                state,
            } => {
                if self.has(SERVER_THEN) {
                    return false;
                }
                if self.has(HAS_SERVER) {
                    // The same connection (and so the same pool).
                    if (self.server, self.generation) != server_key(server) || self.pool != pool {
                        return false;
                    }
                } else if self.kind == Kind::Client {
                    // A client's state record has no server or pool of its own.
                    self.set_server(server);
                    self.pool = pool;
                } else {
                    return false;
                }
                self.server_then = server_state(state);
                self.flags |= SERVER_THEN;
                true
            }
            _ => false,
        }
    }

    /// Adds a message of `pid`'s to this record when it holds the same client's messages
    /// and has room.
    fn merge_message(&mut self, pid: u32, tag: u8, len: u32) -> bool {
        let n = usize::from(self.tag_len);
        if self.kind != Kind::ClientMessage || self.pid != pid || n == 0 {
            return false;
        }
        let Some(slot) = self.tag.get_mut(n) else {
            return false;
        };
        *slot = tag;
        self.tag_len += 1;
        self.value = self.value.saturating_add(u64::from(len));
        true
    }

    /// A `ClientMessage` record's message types, in order.
    pub fn message_types(&self) -> &[u8] {
        self.tag()
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The command tag kept (possibly truncated); a `ClientMessage` record's message types.
    pub fn tag(&self) -> &[u8] {
        self.tag.get(..usize::from(self.tag_len)).unwrap_or(&[])
    }

    pub fn sqlstate_str(&self) -> Option<&str> {
        if !self.has(HAS_SQLSTATE) {
            return None;
        }
        std::str::from_utf8(&self.sqlstate).ok()
    }
}

pub use crate::observe::metrics::nanos;

/// A server connection as a record names it: its slot index and generation.
fn server_key(server: crate::engine::id::ServerId) -> (u32, u32) {
    (
        u32::try_from(server.index()).unwrap_or(u32::MAX),
        server.generation(),
    )
}

const CLIENT_STATES: [(ClientState, &str); 8] = [
    (ClientState::AwaitingStartup, "awaiting startup"),
    (ClientState::AwaitingTls, "tls handshake"),
    (ClientState::Authenticating, "authenticating"),
    (ClientState::AwaitingParameters, "awaiting parameters"),
    (ClientState::Idle, "idle"),
    (ClientState::Acquiring, "acquiring"),
    (ClientState::Active, "active"),
    (ClientState::Closed, "closed"),
];

const SERVER_STATES: [(ServerState, &str); 8] = [
    (ServerState::Connecting, "connecting"),
    (ServerState::LoggingIn, "logging in"),
    (ServerState::Idle, "idle"),
    (ServerState::Lent, "lent"),
    (ServerState::Draining, "draining"),
    (ServerState::Parked, "parked"),
    (ServerState::HandedOff, "handed off"),
    (ServerState::Closed, "closed"),
];

fn client_state(state: ClientState) -> u8 {
    CLIENT_STATES
        .iter()
        .position(|(s, _)| *s == state)
        .unwrap_or(0) as u8
}

fn server_state(state: ServerState) -> u8 {
    SERVER_STATES
        .iter()
        .position(|(s, _)| *s == state)
        .unwrap_or(0) as u8
}

/// A client state code's name, and whether it is the final one.
pub fn client_state_name(code: u8) -> (&'static str, bool) {
    let state = CLIENT_STATES.get(usize::from(code));
    (
        state.map_or("unknown", |(_, name)| name),
        state.is_some_and(|(s, _)| *s == ClientState::Closed),
    )
}

/// A server state code's name, and whether the connection is gone from this reactor.
pub fn server_state_name(code: u8) -> (&'static str, bool) {
    let state = SERVER_STATES.get(usize::from(code));
    (
        state.map_or("unknown", |(_, name)| name),
        state.is_some_and(|(s, _)| matches!(s, ServerState::Closed | ServerState::HandedOff)),
    )
}

fn error_origin(origin: ErrorOrigin) -> u8 {
    match origin {
        ErrorOrigin::Server => 0,
        ErrorOrigin::Proxy => 1,
        ErrorOrigin::Protocol => 2,
    }
}

pub fn error_origin_name(code: u8) -> &'static str {
    match code {
        0 => "server",
        1 => "proxy",
        _ => "protocol",
    }
}

fn statement_end(end: StatementEnd) -> u8 {
    match end {
        StatementEnd::Completed => 0,
        StatementEnd::Failed => 1,
        StatementEnd::Skipped => 2,
    }
}

pub fn statement_end_name(code: u8) -> &'static str {
    match code {
        0 => "completed",
        1 => "failed",
        _ => "skipped",
    }
}

/// A reactor's recent records, oldest first (times never decrease: a reactor's clock is
/// monotonic and it records in order).
#[derive(Debug)]
pub struct Ring {
    records: VecDeque<Record>,
    /// Most records held (the reactor's share of `max_bytes`).
    limit: usize,
    /// `min_age` in nanoseconds.
    min_age: u64,
    /// Records younger than `min_age` that the limit pushed out.
    dropped: u64,
}

impl Ring {
    /// An empty ring (nothing allocated yet) of at most `max_bytes`.
    pub fn new(max_bytes: u64, min_age: Duration) -> Ring {
        Ring {
            records: VecDeque::new(),
            limit: records_in(max_bytes),
            min_age: nanos(min_age),
            dropped: 0,
        }
    }

    pub fn push(&mut self, record: Record) {
        self.push_all(&[record]);
    }

    /// Appends `records` (in time order, none older than what the ring holds): one bounds
    /// check and at most two copies for the lot.
    pub fn push_all(&mut self, records: &[Record]) {
        let Some(newest) = records.last() else {
            return;
        };
        let n = records.len();
        let room = self.records.capacity().min(self.limit);
        if self.records.len() + n > room {
            // Room is needed: first forget what `min_age` does not ask to keep.
            self.trim(newest.at);
        }
        // What the limit pushes out, the oldest first: held records, then (with a limit
        // below the batch) the batch's own oldest. All are younger than `min_age`.
        let held = self.records.len();
        let over = (held + n).saturating_sub(self.limit);
        let mut records = records;
        if over > 0 {
            self.dropped += over as u64;
            self.records.drain(..over.min(held));
            records = records.get(over - over.min(held)..).unwrap_or_default();
        }
        let (len, n) = (self.records.len(), records.len());
        if len + n > self.records.capacity() {
            let target = (len * 2).max(len + n).max(INITIAL_RECORDS).min(self.limit);
            self.records.reserve_exact(target - len);
        }
        self.records.extend(records);
    }

    /// Forgets the records older than `min_age` at `now` (ns since the epoch).
    fn trim(&mut self, now: u64) {
        let horizon = now.saturating_sub(self.min_age);
        while self.records.front().is_some_and(|r| r.at < horizon) {
            self.records.pop_front();
        }
    }

    /// New bounds (a reload): records beyond the new limit go at once, the oldest first, and
    /// the memory above it is given back.
    pub fn set_bounds(&mut self, max_bytes: u64, min_age: Duration) {
        self.limit = records_in(max_bytes);
        self.min_age = nanos(min_age);
        let horizon = self
            .records
            .back()
            .map_or(0, |r| r.at.saturating_sub(self.min_age));
        while self.records.len() > self.limit {
            if self.records.pop_front().is_some_and(|r| r.at >= horizon) {
                self.dropped += 1;
            }
        }
        if self.records.capacity() > self.limit {
            self.records.shrink_to(self.limit);
        }
    }

    /// A copy of the records, oldest first.
    pub fn copy(&self) -> Vec<Record> {
        self.records.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Memory held for records.
    pub fn bytes(&self) -> u64 {
        (self.records.capacity() * std::mem::size_of::<Record>()) as u64
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// When the oldest record held happened (ns since the epoch).
    pub fn oldest(&self) -> Option<u64> {
        self.records.front().map(|r| r.at)
    }
}

/// Whole records in `bytes`.
fn records_in(bytes: u64) -> usize {
    usize::try_from(bytes / std::mem::size_of::<Record>() as u64).unwrap_or(usize::MAX)
}

/// The rings' copies (each with its reactor number) as one sequence in time order; records
/// of one time keep their reactor's order (the sort is stable, and each ring is in order).
pub fn merge(rings: Vec<(usize, Vec<Record>)>) -> Vec<(usize, Record)> {
    let mut all: Vec<(usize, Record)> = rings
        .into_iter()
        .flat_map(|(reactor, records)| records.into_iter().map(move |r| (reactor, r)))
        .collect();
    all.sort_by_key(|(_, r)| r.at);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::id::ServerId;
    use crate::test_clock::epoch;

    const SIZE: u64 = std::mem::size_of::<Record>() as u64;

    fn at(ms: u64) -> Instant {
        epoch() + Duration::from_millis(ms)
    }

    fn client(ms: u64, pid: u32) -> Record {
        Record::encode(
            epoch(),
            at(ms),
            &Event::Client {
                pid,
                state: ClientState::Idle,
            },
        )
        .unwrap()
    }

    fn times(ring: &Ring) -> Vec<u64> {
        ring.copy().iter().map(|r| r.at / 1_000_000).collect()
    }

    // A record is small and plain.
    const _: () = assert!(SIZE <= 56);

    #[test]
    fn nothing_is_allocated_before_the_first_event() {
        let ring = Ring::new(10 << 20, Duration::from_secs(10));
        assert_eq!(ring.bytes(), 0);
    }

    #[test]
    fn the_byte_bound_holds_and_young_losses_are_counted() {
        // Room for 4 records; min_age keeps everything, so the bound must win.
        let mut ring = Ring::new(4 * SIZE + SIZE / 2, Duration::from_secs(3600));
        for ms in 0..10 {
            ring.push(client(ms, 1));
        }
        assert_eq!(times(&ring), [6, 7, 8, 9]);
        assert!(ring.bytes() <= 4 * SIZE + SIZE / 2, "{}", ring.bytes());
        assert_eq!(ring.dropped(), 6);
    }

    #[test]
    fn old_records_are_trimmed_before_growing_and_not_counted() {
        let mut ring = Ring::new(1 << 30, Duration::from_millis(100));
        // Fill the first allocation over a long time: only the last 100 ms need keeping.
        for i in 0..INITIAL_RECORDS as u64 {
            ring.push(client(i, 1));
        }
        let before = ring.bytes();
        ring.push(client(INITIAL_RECORDS as u64, 1));
        assert_eq!(ring.bytes(), before, "trimmed instead of growing");
        assert_eq!(ring.len(), 101);
        assert_eq!(ring.dropped(), 0);
        assert_eq!(ring.oldest(), Some(nanos(Duration::from_millis(924))));
    }

    #[test]
    fn young_records_make_the_ring_grow_up_to_its_limit() {
        let limit = 3000;
        let mut ring = Ring::new(limit * SIZE, Duration::from_secs(60));
        for i in 0..limit {
            ring.push(client(i, 1));
        }
        assert_eq!(ring.len(), limit as usize);
        assert_eq!(ring.dropped(), 0);
        assert!(ring.bytes() <= limit * SIZE + SIZE, "{}", ring.bytes());
        ring.push(client(limit, 1));
        assert_eq!(ring.dropped(), 1);
        assert_eq!(ring.len(), limit as usize);
    }

    #[test]
    fn min_age_is_kept_when_memory_allows() {
        let mut ring = Ring::new(1 << 20, Duration::from_millis(500));
        for i in 0..5000u64 {
            ring.push(client(i, 1));
        }
        // Everything from the last 500 ms is there.
        let kept = times(&ring);
        assert!(
            kept.first().is_some_and(|&t| t <= 4499),
            "{:?}",
            kept.first()
        );
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn a_zero_limit_keeps_nothing_and_counts_it() {
        let mut ring = Ring::new(SIZE - 1, Duration::from_secs(1));
        ring.push(client(0, 1));
        assert_eq!((ring.len(), ring.dropped(), ring.bytes()), (0, 1, 0));
    }

    #[test]
    fn a_batch_is_kept_as_its_records_one_by_one_would_be() {
        // Room for 4, min_age keeps everything: a batch over a full ring pushes out the
        // oldest, counted, as single pushes would.
        let mut one_by_one = Ring::new(4 * SIZE, Duration::from_secs(3600));
        let mut batched = Ring::new(4 * SIZE, Duration::from_secs(3600));
        let records: Vec<Record> = (0..7).map(|ms| client(ms, 1)).collect();
        for r in &records {
            one_by_one.push(*r);
        }
        batched.push_all(&records[..3]);
        batched.push_all(&records[3..]);
        assert_eq!(times(&batched), [3, 4, 5, 6]);
        assert_eq!(times(&batched), times(&one_by_one));
        assert_eq!(batched.dropped(), 3);
        assert_eq!(batched.dropped(), one_by_one.dropped());
        // A batch larger than the limit keeps its newest.
        batched.push_all(&(10..16).map(|ms| client(ms, 1)).collect::<Vec<_>>());
        assert_eq!(times(&batched), [12, 13, 14, 15]);
        assert_eq!(batched.dropped(), 3 + 6);
        assert!(batched.bytes() <= 4 * SIZE, "{}", batched.bytes());
    }

    #[test]
    fn a_batch_trims_what_min_age_lets_go_before_it_counts_a_loss() {
        let mut ring = Ring::new(4 * SIZE, Duration::from_millis(100));
        ring.push_all(&[client(0, 1), client(1, 1), client(2, 1)]);
        // 150 ms later: the first three are older than min_age, so they go uncounted.
        ring.push_all(&[client(150, 1), client(151, 1), client(152, 1)]);
        assert_eq!(times(&ring), [150, 151, 152]);
        assert_eq!(ring.dropped(), 0);
        assert_eq!(ring.oldest(), Some(nanos(Duration::from_millis(150))));
    }

    #[test]
    fn the_clock_converts_repeated_instants_once_and_gets_them_right() {
        let mut clock = Clock::new(at(10), 0);
        assert_eq!(clock.ns(at(12)), 2_000_000);
        assert_eq!(clock.ns(at(12)), 2_000_000);
        assert_eq!(clock.ns(at(15)), 5_000_000);
        // Before the epoch counts as the epoch.
        assert_eq!(clock.ns(at(3)), 0);
        assert_eq!(clock.ns(at(15)), 5_000_000);
    }

    #[test]
    fn lowering_the_bound_gives_memory_back() {
        let mut ring = Ring::new(1 << 20, Duration::from_secs(1));
        for i in 0..2000 {
            ring.push(client(i, 1));
        }
        ring.set_bounds(10 * SIZE, Duration::from_secs(1));
        assert_eq!(ring.len(), 10);
        assert_eq!(times(&ring).first(), Some(&1990));
        assert!(ring.bytes() <= 10 * SIZE + SIZE, "{}", ring.bytes());
        // Only the records younger than min_age (999 ms and later) count as lost.
        assert_eq!(ring.dropped(), 991);
    }

    #[test]
    fn merge_orders_by_time_and_keeps_each_reactors_order_on_ties() {
        let a = vec![client(1, 10), client(5, 11), client(5, 12)];
        let b = vec![client(0, 20), client(5, 21), client(9, 22)];
        let merged = merge(vec![(0, a), (1, b)]);
        let order: Vec<(usize, u32)> = merged.iter().map(|(r, rec)| (*r, rec.pid)).collect();
        assert_eq!(
            order,
            [(1, 20), (0, 10), (0, 11), (0, 12), (1, 21), (1, 22)]
        );
    }

    #[test]
    fn events_encode_without_text_and_with_a_truncated_tag() {
        let server = ServerId::new(3, 7);
        let r = Record::encode(
            epoch(),
            at(20),
            &Event::StatementEnded {
                pid: 9,
                server,
                pool: 2,
                started: at(5),
                end: StatementEnd::Completed,
                tag: b"CREATE MATERIALIZED VIEW",
                sqlstate: None,
            },
        )
        .unwrap();
        assert_eq!(r.tag(), b"CREATE MATER");
        assert_eq!((r.server, r.generation, r.pool, r.pid), (3, 7, 2, 9));
        assert_eq!(r.value, nanos(Duration::from_millis(5)));
        assert!(r.has(HAS_SERVER) && r.has(HAS_PID) && !r.has(HAS_SQLSTATE));
        let started = Event::StatementStarted {
            pid: 9,
            server,
            text: b"SELECT secret",
            extended: false,
        };
        assert_eq!(Record::encode(epoch(), at(1), &started), None);
        let error = Record::encode(
            epoch(),
            at(1),
            &Event::Error {
                pid: None,
                server: Some(server),
                origin: ErrorOrigin::Protocol,
                sqlstate: crate::protocol::SqlState::PROTOCOL_VIOLATION,
            },
        )
        .unwrap();
        assert_eq!(error.sqlstate_str(), Some("08P01"));
        assert_eq!(error_origin_name(error.detail), "protocol");
        assert!(!error.has(HAS_PID));
        // Before the epoch counts as the epoch.
        let early = Record::encode(at(10), at(0), &started);
        assert_eq!(early, None);
        let r = Record::encode(
            at(10),
            at(0),
            &Event::Client {
                pid: 1,
                state: ClientState::Closed,
            },
        )
        .unwrap();
        assert_eq!((r.at, client_state_name(r.detail)), (0, ("closed", true)));
    }

    #[test]
    fn a_state_change_goes_into_the_record_before_it_only_when_that_names_its_connection() {
        let (s, other) = (ServerId::new(3, 7), ServerId::new(3, 8));
        let acquired = Record::encode(
            epoch(),
            at(5),
            &Event::Acquired {
                pid: 9,
                server: s,
                pool: 2,
                waited: Duration::ZERO,
            },
        )
        .unwrap();
        let ns = nanos(Duration::from_millis(5));
        let client = |pid, state| Event::Client { pid, state };
        let server = |server, pool, state| Event::Server {
            server,
            pool,
            state,
        };
        let mut r = acquired;
        // Another instant, another client, another connection or pool: a record of its own.
        assert!(!r.absorb(ns + 1, &client(9, ClientState::Active)));
        assert!(!r.absorb(ns, &client(8, ClientState::Active)));
        assert!(!r.absorb(ns, &server(other, 2, ServerState::Lent)));
        assert!(!r.absorb(ns, &server(s, 1, ServerState::Lent)));
        assert_eq!(r, acquired);
        assert!(r.absorb(ns, &client(9, ClientState::Active)));
        assert!(r.absorb(ns, &server(s, 2, ServerState::Lent)));
        assert_eq!(
            (
                client_state_name(r.client_then).0,
                server_state_name(r.server_then).0
            ),
            ("active", "lent")
        );
        // One of each per record.
        assert!(!r.absorb(ns, &client(9, ClientState::Idle)));
        assert!(!r.absorb(ns, &server(s, 2, ServerState::Idle)));
        // A client's state record takes a server connection's change of state, with its
        // connection and pool; another kind of record without a connection does not.
        let mut c = client_at(5, 9, ClientState::Acquiring);
        assert!(c.absorb(ns, &server(other, 4, ServerState::Lent)));
        assert!(c.has(HAS_SERVER) && c.has(SERVER_THEN));
        assert_eq!((c.server, c.generation, c.pool), (3, 8, 4));
        let mut login = Record::encode(
            epoch(),
            at(5),
            &Event::LoggedIn {
                pid: 9,
                pool: 2,
                database: "db",
                user: "u",
                peer: None,
                traceparent: None,
                server: crate::observe::events::ServerAddress {
                    host: "pg",
                    port: 5432,
                    database: "db",
                },
            },
        )
        .unwrap();
        assert!(!login.absorb(ns, &server(s, 2, ServerState::Idle)));
        assert!(login.absorb(ns, &client(9, ClientState::Idle)));
        // Messages only go with messages.
        let message = Event::ClientMessage {
            pid: 9,
            tag: b'Q',
            len: 20,
        };
        assert!(!login.absorb(ns, &message));
        let mut q = Record::encode(epoch(), at(5), &message).unwrap();
        assert!(q.absorb(ns, &message));
        assert!(q.absorb(ns, &client(9, ClientState::Acquiring)));
        assert_eq!((q.message_types(), q.value), (&b"QQ"[..], 40));
    }

    fn client_at(ms: u64, pid: u32, state: ClientState) -> Record {
        Record::encode(epoch(), at(ms), &Event::Client { pid, state }).unwrap()
    }
}
