//! Counters, gauges and histograms updated on the hot path, in every build.
//!
//! Each reactor owns one [`ReactorStats`] — its own allocation, with a [`PoolStats`] per pool
//! and a [`DatabaseStats`] per database inside — and only that reactor's thread writes it.
//! With a single writer an increment is a relaxed load and a relaxed store, not a locked
//! read-modify-write, and no two reactors ever write the same cache line. Nothing here
//! allocates, locks or looks up a label after startup: a value's position (pool index, enum
//! discriminant) is its label, turned into names only when the metrics are scraped, which
//! sums the reactors' values (`observe::prometheus`, with the `metrics` feature).
//!
//! Sans-IO like the session it serves: no clock reads. Durations come from the reactor's
//! one clock read per loop turn.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::client::inspect::PinReason;
use crate::protocol::SqlState;

/// A monotonic counter with one writer thread (its reactor, or whoever holds the lock that
/// guards it). Readers on other threads see some recent value.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // One writer: a plain load and store (no locked instruction) lose nothing.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, with one writer thread (see [`Counter`]). Gauges of
/// different reactors are summed when read; each one alone never goes below zero.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds (inclusive, in microseconds) of the acquire-wait histogram's buckets; a last
/// bucket takes everything above. A wait is measured on the reactor's turn clock, so a
/// backend that was free at once counts as 0.
pub const ACQUIRE_WAIT_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// Bucket bounds of transaction durations, in µs.
pub const TRANSACTION_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000, 60_000_000,
];

/// Nanoseconds in `d`, saturating (at 584 years).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A histogram with fixed buckets: one counter per bucket (not cumulative) plus the sum.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds_us: &'static [u64; N],
    /// `counts[i]` for `bounds_us[i]`, `counts[N]` above the last bound.
    counts: Box<[Counter]>,
    sum_ns: Counter,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds_us: &'static [u64; N]) -> Self {
        Histogram {
            bounds_us,
            counts: (0..=N).map(|_| Counter::default()).collect(),
            sum_ns: Counter::default(),
        }
    }

    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let at = self.bounds_us.iter().position(|&b| us <= b).unwrap_or(N);
        if let Some(c) = self.counts.get(at) {
            c.inc();
        }
        self.sum_ns.add(nanos(d));
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn bounds_us(&self) -> &'static [u64; N] {
        self.bounds_us
    }

    /// Observations per bucket (the last one above every bound), not cumulative.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().map(Counter::get)
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.get())
    }
}

/// Declares a closed set of label values: `ALL`, `COUNT`, `index()` (its slot in a
/// per-value array) and `label()` (its Prometheus label value).
macro_rules! label_enum {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident = $label:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            pub const COUNT: usize = Self::ALL.len();

            /// The label value in metrics.
            #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Its slot in an array of `COUNT` values.
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use label_enum;

label_enum! {
    /// Why a client connection was turned away before its startup.
    pub enum RefuseReason {
        /// `max_client_connections` reached (FATAL 53300).
        TooManyClients = "too_many_clients",
        /// `max_logins_in_progress` connections are logging in already (FATAL 53300).
        TooManyLogins = "too_many_logins",
        /// Shutdown in progress (FATAL 57P03).
        ShuttingDown = "shutting_down",
    }
}

label_enum! {
    /// What became of a CancelRequest for a session of this reactor.
    pub enum CancelOutcome {
        /// Sent on to the server running the session's query.
        Forwarded = "forwarded",
        /// The session held no server connection: nothing to cancel.
        Idle = "idle",
        /// The session's statement was waiting for a server connection: it failed with
        /// 57014 and left the queue.
        Waiting = "waiting",
        /// No session has that key.
        UnknownKey = "unknown_key",
        /// Dropped: too many deliveries in flight, or the owning reactor's queue was full.
        Overloaded = "overloaded",
        /// Sent on to the pglink instance (`peers`) that issued the key.
        Peer = "peer",
        /// The key names a peer missing from `peers`: dropped.
        UnknownPeer = "unknown_peer",
        /// Forwarded by a peer but issued by neither: dropped, never forwarded twice.
        Loop = "loop",
    }
}

label_enum! {
    /// What a server connection is doing.
    pub enum BackendState {
        /// Connecting, TLS and login.
        Opening = "opening",
        /// In the pool.
        Idle = "idle",
        /// Lent to a client.
        InUse = "in_use",
        /// Being cleaned up after a client that left mid-transaction, answering a health
        /// check, or waiting for a cancel to be delivered before it can be lent again.
        Draining = "draining",
    }
}

label_enum! {
    /// Why pglink closed a server connection that had logged in.
    pub enum CloseReason {
        /// The server closed it, it failed, or it ended the session (FATAL).
        ServerClosed = "server_closed",
        /// The server sent something unexpected or malformed.
        ProtocolError = "protocol_error",
        /// The client left mid-message; what the server got is unknowable.
        ClientGone = "client_gone",
        /// The client's session ended with an error that left the connection unusable.
        Unusable = "unusable",
        /// A pinned session ended: its server-side state must not reach anyone else.
        Pinned = "pinned",
        /// Cleanup after a client that left mid-transaction failed or timed out.
        ResetFailed = "reset_failed",
        /// A health check failed or timed out.
        HealthCheckFailed = "health_check_failed",
        /// `pool_max_conn_lifetime` reached.
        Lifetime = "lifetime",
        /// `pool_max_conn_idle_time` reached.
        IdleTimeout = "idle_timeout",
        /// The pool's credentials changed (secret rotation).
        CredentialsChanged = "credentials_changed",
        /// Closed so that another user of the database, at `pool_max_conns`, could connect.
        MakingRoom = "making_room",
        /// pglink is shutting down.
        Shutdown = "shutdown",
        /// A reload changed its server's settings, lowered `pool_max_conns` below the
        /// connections open, or removed its user or database.
        Reconfigured = "reconfigured",
    }
}

/// The SQLSTATE classes PostgreSQL defines (`errcodes.txt`); an error of any other class
/// counts as `other`.
pub const SQLSTATE_CLASSES: [&str; 43] = [
    "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21", "22", "23",
    "24", "25", "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D", "3F", "40", "42",
    "44", "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX",
];

/// Slot of `code`'s class in [`SQLSTATE_CLASSES`], `SQLSTATE_CLASSES.len()` for others.
pub fn sqlstate_class_index(code: SqlState) -> usize {
    let class = code.class();
    SQLSTATE_CLASSES
        .iter()
        .position(|c| *c == class)
        .unwrap_or(SQLSTATE_CLASSES.len())
}

/// One reactor's counters. Written by that reactor's thread only (the sessions it drives
/// included); summed over reactors when read.
#[derive(Debug)]
pub struct ReactorStats {
    /// Loop turns (returns from `poll`).
    pub wakeups: Counter,
    /// Client connections accepted and counted against `max_client_connections`.
    pub clients_accepted: Counter,
    pub clients_refused: [Counter; RefuseReason::COUNT],
    /// Protocol bytes (after TLS decryption) read from and written to clients and servers.
    pub client_bytes_received: Counter,
    pub client_bytes_sent: Counter,
    pub server_bytes_received: Counter,
    pub server_bytes_sent: Counter,
    pub cancels: [Counter; CancelOutcome::COUNT],
    /// ErrorResponses pglink itself sent to clients, by SQLSTATE class
    /// ([`sqlstate_class_index`]).
    pub errors_sent: Box<[Counter]>,
    pools: Grow<PoolStats>,
    databases: Grow<DatabaseStats>,
    /// The reactor thread's kernel thread id (0 until known), so that its CPU time can be
    /// read from `/proc` at scrape time instead of timing every loop turn.
    thread_id: AtomicU64,
}

impl ReactorStats {
    pub fn new(pools: usize, databases: usize) -> ReactorStats {
        ReactorStats {
            wakeups: Counter::default(),
            clients_accepted: Counter::default(),
            clients_refused: Default::default(),
            client_bytes_received: Counter::default(),
            client_bytes_sent: Counter::default(),
            server_bytes_received: Counter::default(),
            server_bytes_sent: Counter::default(),
            cancels: Default::default(),
            errors_sent: (0..=SQLSTATE_CLASSES.len())
                .map(|_| Counter::default())
                .collect(),
            pools: Grow::with_len(pools),
            databases: Grow::with_len(databases),
            thread_id: AtomicU64::new(0),
        }
    }

    /// The counters of pool `pool` (`None` for an index this reactor does not know).
    #[inline]
    pub fn pool(&self, pool: usize) -> Option<&PoolStats> {
        self.pools.get(pool)
    }

    /// Makes room for counters of `pools` pools and `databases` databases (a reload added
    /// some); the counters already there stay where they are.
    pub fn grow(&self, pools: usize, databases: usize) {
        self.pools.grow(pools);
        self.databases.grow(databases);
    }

    #[inline]
    pub fn database(&self, db: usize) -> Option<&DatabaseStats> {
        self.databases.get(db)
    }

    /// pglink sent an ErrorResponse with `code`.
    pub fn error_sent(&self, code: SqlState) {
        if let Some(c) = self.errors_sent.get(sqlstate_class_index(code)) {
            c.inc();
        }
    }

    pub fn set_thread_id(&self, tid: u64) {
        self.thread_id.store(tid, Relaxed);
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub fn thread_id(&self) -> Option<u64> {
        Some(self.thread_id.load(Relaxed)).filter(|&t| t != 0)
    }
}

/// One pool's counters on one reactor. Cache-line aligned so that neighbouring pools' hot
/// counters do not share a line with another reactor's allocation.
#[derive(Debug)]
#[repr(align(64))]
pub struct PoolStats {
    /// Logged-in clients of this pool.
    pub clients: Gauge,
    /// Successful logins.
    pub logins: Counter,
    /// Server connections by [`BackendState`].
    pub backends: [Gauge; BackendState::COUNT],
    /// Transactions (and statements outside one) that ran to their end on a server
    /// connection.
    pub transactions: Counter,
    pub acquire_timeouts: Counter,
    /// Time from needing a server connection to getting one (successful acquires).
    pub acquire_wait: Histogram<{ ACQUIRE_WAIT_BOUNDS_US.len() }>,
    /// Transactions (and statements outside one) from the first message on a server
    /// connection to the end.
    pub transaction_time: Histogram<{ TRANSACTION_BOUNDS_US.len() }>,
    /// Client statements (a simple Query, an Execute), from when the server began on one to
    /// the end of its answer.
    pub query_time: Histogram<{ TRANSACTION_BOUNDS_US.len() }>,
    /// ErrorResponses the servers sent this pool's clients, by [`sqlstate_class_index`]
    /// (the last slot: classes PostgreSQL does not define).
    pub server_errors: [Counter; SQLSTATE_CLASSES.len() + 1],
    pub connect_attempts: Counter,
    pub connect_failures: Counter,
    pub closes: [Counter; CloseReason::COUNT],
    /// Sessions pinned to their server connection, by reason.
    pub pinned: [Counter; PinReason::COUNT],
    /// Sessions pinned right now, by reason.
    pub pinned_now: [Gauge; PinReason::COUNT],
}

impl Default for PoolStats {
    fn default() -> PoolStats {
        PoolStats {
            clients: Gauge::default(),
            logins: Counter::default(),
            backends: Default::default(),
            transactions: Counter::default(),
            acquire_timeouts: Counter::default(),
            acquire_wait: Histogram::new(&ACQUIRE_WAIT_BOUNDS_US),
            transaction_time: Histogram::new(&TRANSACTION_BOUNDS_US),
            query_time: Histogram::new(&TRANSACTION_BOUNDS_US),
            server_errors: std::array::from_fn(|_| Counter::default()),
            connect_attempts: Counter::default(),
            connect_failures: Counter::default(),
            closes: Default::default(),
            pinned: Default::default(),
            pinned_now: Default::default(),
        }
    }
}

impl PoolStats {
    /// A server connection moved from state `from` to `to` (`None`: it arrived on or left
    /// this reactor).
    #[inline]
    pub fn backend_moved(&self, from: Option<BackendState>, to: Option<BackendState>) {
        if from == to {
            return;
        }
        if let Some(g) = from.and_then(|s| self.backends.get(s.index())) {
            g.dec();
        }
        if let Some(g) = to.and_then(|s| self.backends.get(s.index())) {
            g.inc();
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        if let Some(c) = self.closes.get(reason.index()) {
            c.inc();
        }
    }

    pub fn pinned(&self, reason: PinReason) {
        if let Some(c) = self.pinned.get(reason.index()) {
            c.inc();
        }
        if let Some(g) = self.pinned_now.get(reason.index()) {
            g.inc();
        }
    }

    /// A pinned session ended.
    pub fn unpinned(&self, reason: PinReason) {
        if let Some(g) = self.pinned_now.get(reason.index()) {
            g.dec();
        }
    }
}

/// One database's counters on one reactor.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct DatabaseStats {
    /// Failed password checks (unknown user or wrong password: the same to the client).
    pub auth_failures: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_add_up() {
        let c = Counter::default();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        let g = Gauge::default();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::new(&ACQUIRE_WAIT_BOUNDS_US);
        h.observe(Duration::ZERO);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(60));
        let counts: Vec<u64> = h.counts().collect();
        assert_eq!(counts.len(), ACQUIRE_WAIT_BOUNDS_US.len() + 1);
        assert_eq!(counts[0], 2, "0 and 50 µs are ≤ 50 µs");
        assert_eq!(counts[1], 1, "51 µs is ≤ 100 µs");
        assert_eq!(
            counts[ACQUIRE_WAIT_BOUNDS_US.len()],
            1,
            "60 s is above every bound"
        );
        assert_eq!(counts.iter().sum::<u64>(), 4);
        assert_eq!(h.sum(), Duration::from_micros(60_000_101));
    }

    #[test]
    fn backend_moves_keep_gauges_exact() {
        let p = PoolStats::default();
        p.backend_moved(None, Some(BackendState::Opening));
        p.backend_moved(Some(BackendState::Opening), Some(BackendState::Idle));
        p.backend_moved(Some(BackendState::Idle), Some(BackendState::InUse));
        p.backend_moved(Some(BackendState::InUse), Some(BackendState::InUse));
        let by_state: Vec<i64> = p.backends.iter().map(Gauge::get).collect();
        assert_eq!(by_state, [0, 0, 1, 0]);
        p.backend_moved(Some(BackendState::InUse), None);
        assert!(p.backends.iter().all(|g| g.get() == 0));
    }

    #[test]
    fn errors_count_by_sqlstate_class() {
        let r = ReactorStats::new(1, 1);
        r.error_sent(SqlState::TOO_MANY_CONNECTIONS);
        r.error_sent(SqlState::TOO_MANY_CONNECTIONS);
        r.error_sent(SqlState::INVALID_PASSWORD);
        r.error_sent(SqlState::from_bytes(b"ZZ001").unwrap());
        let at = |class: &str| SQLSTATE_CLASSES.iter().position(|c| *c == class).unwrap();
        assert_eq!(r.errors_sent[at("53")].get(), 2);
        assert_eq!(r.errors_sent[at("28")].get(), 1);
        assert_eq!(r.errors_sent[SQLSTATE_CLASSES.len()].get(), 1, "other");
        assert!(r.pool(1).is_none() && r.database(1).is_none());
    }

    #[test]
    fn label_values_are_unique_snake_case() {
        let labels: Vec<&str> = CloseReason::ALL
            .iter()
            .map(|r| r.label())
            .chain(BackendState::ALL.iter().map(|s| s.label()))
            .chain(PinReason::ALL.iter().map(|r| r.label()))
            .chain(CancelOutcome::ALL.iter().map(|o| o.label()))
            .chain(RefuseReason::ALL.iter().map(|r| r.label()))
            .collect();
        for l in &labels {
            assert!(
                l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
        }
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}

/// One pool's counters on every reactor, summed when read (the metrics exposition,
/// `/debug/pools` and the admin console's SHOW commands read them so).
pub struct PoolTotals<'a>(Vec<&'a PoolStats>);

impl<'a> PoolTotals<'a> {
    pub fn of(reactors: &'a [std::sync::Arc<ReactorStats>], pool: usize) -> PoolTotals<'a> {
        PoolTotals(reactors.iter().filter_map(|r| r.pool(pool)).collect())
    }

    /// A counter summed over the reactors.
    pub fn count(&self, get: impl Fn(&PoolStats) -> u64) -> u64 {
        self.0.iter().map(|s| get(s)).sum()
    }

    /// A gauge summed over the reactors.
    pub fn level(&self, get: impl Fn(&PoolStats) -> i64) -> i64 {
        self.0.iter().map(|s| get(s)).sum()
    }

    /// Server connections in `state`.
    pub fn backends(&self, state: BackendState) -> i64 {
        self.level(|s| s.backends.get(state.index()).map_or(0, Gauge::get))
    }

    /// Every reactor's counters of the pool.
    pub fn reactors(&self) -> &[&'a PoolStats] {
        &self.0
    }
}

/// An append-only table of counters that grows without moving them: segments of doubling
/// size (64, 128, 256, ...), each allocated once, so readers on other threads and `&self`
/// references stay valid while a reload adds pools.
#[derive(Debug)]
struct Grow<T> {
    segments: [std::sync::OnceLock<Box<[T]>>; GROW_SEGMENTS],
    len: AtomicU64,
}

const GROW_BASE: usize = 64;
const GROW_SEGMENTS: usize = 24;

impl<T: Default> Grow<T> {
    fn with_len(len: usize) -> Grow<T> {
        let table = Grow {
            segments: std::array::from_fn(|_| std::sync::OnceLock::new()),
            len: AtomicU64::new(0),
        };
        table.grow(len);
        table
    }

    /// Segment and offset of index `i`.
    fn locate(i: usize) -> (usize, usize) {
        let q = i / GROW_BASE + 1;
        let segment = (usize::BITS - 1 - q.leading_zeros()) as usize;
        (segment, i - GROW_BASE * ((1 << segment) - 1))
    }

    /// Ensures indices below `len` exist.
    fn grow(&self, len: usize) {
        if len == 0 {
            return;
        }
        let (last, _) = Self::locate(len - 1);
        for (k, segment) in self.segments.iter().enumerate().take(last + 1) {
            segment.get_or_init(|| (0..GROW_BASE << k).map(|_| T::default()).collect());
        }
        self.len.fetch_max(len as u64, Relaxed);
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&T> {
        if i as u64 >= self.len.load(Relaxed) {
            return None;
        }
        let (segment, offset) = Self::locate(i);
        self.segments.get(segment)?.get()?.get(offset)
    }
}

#[cfg(test)]
mod grow_tests {
    use super::*;

    #[test]
    fn grows_without_moving_what_is_there() {
        let table: Grow<Counter> = Grow::with_len(3);
        assert!(table.get(2).is_some() && table.get(3).is_none());
        table.get(1).unwrap().inc();
        let before: *const Counter = table.get(1).unwrap();
        table.grow(1000);
        assert!(std::ptr::eq(before, table.get(1).unwrap()));
        assert_eq!(table.get(1).unwrap().get(), 1);
        assert!(table.get(999).is_some() && table.get(1000).is_none());
        // Every index lands in its own slot.
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            assert!(seen.insert(table.get(i).unwrap() as *const Counter), "{i}");
        }
        assert_eq!(Grow::<Counter>::locate(63), (0, 63));
        assert_eq!(Grow::<Counter>::locate(64), (1, 0));
        assert_eq!(Grow::<Counter>::locate(191), (1, 127));
        assert_eq!(Grow::<Counter>::locate(192), (2, 0));
    }
}
