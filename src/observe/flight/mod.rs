//! The flight recorder (`flight_recorder` config): a bounded in-memory record of recent
//! events that is saved as a Chrome trace file when asked or triggered.
//!
//! Each reactor's engine gets a [`Sink`] that encodes every [`Event`] into a fixed-size
//! [`Record`](ring::Record) in that reactor's [`Ring`]: no allocation (the ring grows a
//! bounded number of times), no syscall, no text copied. The rings together hold at most
//! `max_bytes` (each reactor has its share) and keep `min_age` of history when that fits.
//!
//! The ring sits behind a `Mutex` the reactor locks once per event. Nothing else takes it
//! except a snapshot (which copies the ring, a memcpy of at most the reactor's share) and a
//! status read, so the lock is uncontended: an atomic swap in and out, cheaper than a
//! message to the reactor and an extra loop turn per snapshot, and it keeps snapshots out
//! of the reactor's code entirely.
//!
//! Snapshots are taken on the recorder's own thread (`pglink-flight`): it copies the
//! rings, merges them in time order, renders the JSON (`chrome`) and writes it atomically
//! into `output_dir` (`file`). It also runs the periodic timer. Requests reach it through
//! a bounded channel: the reactors' automatic ones (a slow statement, an error) are
//! `try_send`s that a full channel drops, and at most one is in flight at a time; the
//! cooldown between automatic snapshots is enforced by the thread, and published as an
//! atomic deadline so a storm of slow statements costs the reactors one load each.

mod chrome;
mod file;
pub mod ring;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

pub use file::FileError;
use ring::{Clock, Record, Ring, nanos};

use crate::config::FlightRecorderConfig;
use crate::observe::events::{ErrorOrigin, Event, EventSink, Interest};

/// Requests queued for the recorder's thread at most (a full queue drops automatic ones).
const QUEUE: usize = 16;
/// How long a caller waits for its snapshot.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What asked for a snapshot; its label is in the file name and in
/// `pglink_flight_recorder_snapshots_total{trigger}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGUSR1 (`triggers.on_signal`).
    Signal,
    /// `GET /debug/flight-recorder/snapshot`.
    Http,
    /// The embedding API ([`crate::ServerHandle::flight_recorder_snapshot`]).
    Api,
    /// `periodic_interval`.
    Periodic,
    /// `triggers.on_slow_query_ms`.
    SlowQuery,
    /// `triggers.on_error`.
    Error,
}

impl Trigger {
    pub const ALL: [Trigger; 6] = [
        Trigger::Signal,
        Trigger::Http,
        Trigger::Api,
        Trigger::Periodic,
        Trigger::SlowQuery,
        Trigger::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Http => "http",
            Trigger::Api => "api",
            Trigger::Periodic => "periodic",
            Trigger::SlowQuery => "slow_query",
            Trigger::Error => "error",
        }
    }

    /// Whether `triggers.cooldown` limits it.
    fn automatic(self) -> bool {
        matches!(self, Trigger::SlowQuery | Trigger::Error)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A snapshot written.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub trigger: Trigger,
    /// The file written.
    pub path: PathBuf,
    /// Its contents: Chrome trace-event JSON.
    pub json: String,
    /// Records it was made from.
    pub records: usize,
}

/// Why no snapshot was taken.
#[derive(Debug)]
pub enum SnapshotError {
    /// No `flight_recorder` section is configured.
    NotConfigured,
    /// The trigger is turned off (`triggers.on_signal` is false).
    Disabled(Trigger),
    /// The recorder's queue is full.
    Busy,
    /// The recorder has stopped (shutdown), or did not answer in time.
    Stopped,
    /// The snapshot was made but its file could not be written.
    File(FileError),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::NotConfigured => f.write_str("no flight_recorder is configured"),
            SnapshotError::Disabled(t) => write!(
                f,
                "the {} trigger is turned off (flight_recorder.triggers)",
                t.label()
            ),
            SnapshotError::Busy => f.write_str("the flight recorder is busy"),
            SnapshotError::Stopped => f.write_str("the flight recorder has stopped"),
            SnapshotError::File(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SnapshotError {}

type Reply = SyncSender<Result<Snapshot, SnapshotError>>;

enum Request {
    Take {
        trigger: Trigger,
        reply: Option<Reply>,
    },
    /// The settings changed (a reload): the periodic timer starts over.
    Reconfigured,
    Stop,
}

/// The settings the recorder's thread reads (the reactors read theirs from atomics).
#[derive(Debug, Clone)]
struct Settings {
    output_dir: PathBuf,
    periodic: Duration,
    cooldown: Duration,
    on_signal: bool,
    max_bytes: u64,
    min_age: Duration,
}

impl From<&FlightRecorderConfig> for Settings {
    fn from(c: &FlightRecorderConfig) -> Settings {
        Settings {
            output_dir: c.output_dir.clone(),
            periodic: c.periodic_interval,
            cooldown: c.triggers.cooldown,
            on_signal: c.triggers.on_signal,
            max_bytes: c.max_bytes,
            min_age: c.min_age,
        }
    }
}

/// The last snapshot written, for the status page.
#[derive(Debug, Clone)]
struct Last {
    path: PathBuf,
    trigger: Trigger,
    at: SystemTime,
}

/// `user@database` of each pool id, read when a snapshot is taken.
pub type PoolLabels = Box<dyn Fn() -> Vec<String> + Send>;

/// The recorder: every reactor's ring, the settings, the counters and the way to its thread.
pub struct FlightRecorder {
    epoch: Instant,
    epoch_wall: SystemTime,
    rings: Vec<Arc<Mutex<Ring>>>,
    settings: Mutex<Settings>,
    /// `triggers.on_slow_query_ms` in ns (0: off).
    slow_ns: AtomicU64,
    on_error: AtomicBool,
    /// No automatic request before this (ns since the epoch): the cooldown.
    auto_after: AtomicU64,
    /// An automatic request is queued and not yet handled.
    auto_queued: AtomicBool,
    tx: SyncSender<Request>,
    rx: Mutex<Option<Receiver<Request>>>,
    snapshots: [AtomicU64; Trigger::ALL.len()],
    failures: AtomicU64,
    /// Automatic requests dropped: the queue was full.
    requests_dropped: AtomicU64,
    last: Mutex<Option<Last>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FlightRecorder {
    /// A recorder for `reactors` reactors (nothing recorded, nothing allocated for records
    /// yet); [`FlightRecorder::start`] starts its thread.
    pub fn new(config: &FlightRecorderConfig, reactors: usize) -> Arc<FlightRecorder> {
        let reactors = reactors.max(1);
        let share = config.max_bytes / reactors as u64;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let recorder = FlightRecorder {
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
            rings: (0..reactors)
                .map(|_| Arc::new(Mutex::new(Ring::new(share, config.min_age))))
                .collect(),
            settings: Mutex::new(Settings::from(config)),
            slow_ns: AtomicU64::new(0),
            on_error: AtomicBool::new(false),
            auto_after: AtomicU64::new(0),
            auto_queued: AtomicBool::new(false),
            tx,
            rx: Mutex::new(Some(rx)),
            snapshots: Default::default(),
            failures: AtomicU64::new(0),
            requests_dropped: AtomicU64::new(0),
            last: Mutex::new(None),
        };
        recorder.set_triggers(config);
        Arc::new(recorder)
    }

    fn set_triggers(&self, config: &FlightRecorderConfig) {
        let slow = Duration::from_millis(config.triggers.on_slow_query_ms);
        self.slow_ns.store(nanos(slow), Ordering::Relaxed);
        self.on_error
            .store(config.triggers.on_error, Ordering::Relaxed);
    }

    /// The sink for reactor `reactor`'s engine.
    pub fn sink(self: &Arc<Self>, reactor: usize) -> Sink {
        let ring = self.rings[reactor.min(self.rings.len() - 1)].clone();
        Sink {
            ring,
            clock: Clock::new(self.epoch, 0),
            recorder: self.clone(),
            pending: vec![Record::EMPTY; PENDING].into_boxed_slice(),
            pending_len: 0,
        }
    }

    /// Applies a reloaded section: bounds, directory, schedule and triggers all take effect
    /// now (the rings keep what fits the new bounds).
    pub fn reconfigure(&self, config: &FlightRecorderConfig) {
        let settings = Settings::from(config);
        let share = settings.max_bytes / self.rings.len() as u64;
        for ring in &self.rings {
            lock(ring).set_bounds(share, settings.min_age);
        }
        self.set_triggers(config);
        *lock(&self.settings) = settings;
        // The thread owns the cooldown: the next automatic request asks it again.
        self.auto_after.store(0, Ordering::Relaxed);
        // Not from a reactor: this may wait for the thread to make room in its queue.
        let _ = self.tx.send(Request::Reconfigured);
    }

    /// Starts the recorder's thread. `pools` names the pools when a snapshot is rendered.
    pub fn start(self: &Arc<Self>, pools: PoolLabels) -> std::io::Result<RecorderThread> {
        let Some(rx) = lock(&self.rx).take() else {
            return Err(std::io::Error::other("the flight recorder runs already"));
        };
        let recorder = self.clone();
        let thread = std::thread::Builder::new()
            .name("pglink-flight".into())
            .spawn(move || recorder.run(&rx, &pools))?;
        Ok(RecorderThread {
            tx: self.tx.clone(),
            thread: Some(thread),
        })
    }

    /// Takes a snapshot for `trigger` (a manual one: never limited by the cooldown) and
    /// waits for it to be written.
    pub fn snapshot(&self, trigger: Trigger) -> Result<Snapshot, SnapshotError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.tx
            .try_send(Request::Take {
                trigger,
                reply: Some(reply),
            })
            .map_err(|e| match e {
                TrySendError::Full(_) => SnapshotError::Busy,
                TrySendError::Disconnected(_) => SnapshotError::Stopped,
            })?;
        answer
            .recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| SnapshotError::Stopped)?
    }

    /// SIGUSR1: asks for a snapshot (unless `triggers.on_signal` is off) without waiting;
    /// the thread logs where it went.
    pub fn signal(&self) -> Result<(), SnapshotError> {
        if !lock(&self.settings).on_signal {
            return Err(SnapshotError::Disabled(Trigger::Signal));
        }
        self.tx
            .try_send(Request::Take {
                trigger: Trigger::Signal,
                reply: None,
            })
            .map_err(|e| match e {
                TrySendError::Full(_) => SnapshotError::Busy,
                TrySendError::Disconnected(_) => SnapshotError::Stopped,
            })
    }

    /// From a reactor: an automatic trigger fired at `at_ns`. Never blocks: outside the
    /// cooldown, and when no automatic request is queued already, one is `try_send`-ed.
    fn auto(&self, trigger: Trigger, at_ns: u64) {
        if at_ns < self.auto_after.load(Ordering::Relaxed)
            || self.auto_queued.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let request = Request::Take {
            trigger,
            reply: None,
        };
        if self.tx.try_send(request).is_err() {
            self.auto_queued.store(false, Ordering::Release);
            self.requests_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn run(&self, rx: &Receiver<Request>, pools: &PoolLabels) {
        let mut next_periodic = self.next_periodic(Instant::now());
        let mut last_auto: Option<Instant> = None;
        loop {
            let request = match next_periodic {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match request {
                Err(RecvTimeoutError::Disconnected) | Ok(Request::Stop) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    next_periodic = self.next_periodic(now);
                    self.log_result(self.take(Trigger::Periodic, pools));
                }
                Ok(Request::Reconfigured) => {
                    next_periodic = self.next_periodic(Instant::now());
                }
                Ok(Request::Take { trigger, reply }) => {
                    if trigger.automatic() {
                        self.auto_queued.store(false, Ordering::Release);
                        let now = Instant::now();
                        let cooldown = lock(&self.settings).cooldown;
                        if last_auto.is_some_and(|t| now.saturating_duration_since(t) < cooldown) {
                            continue;
                        }
                        last_auto = Some(now);
                        let until = now.saturating_duration_since(self.epoch) + cooldown;
                        self.auto_after.store(nanos(until), Ordering::Relaxed);
                    }
                    let result = self.take(trigger, pools);
                    match reply {
                        Some(reply) => {
                            let _ = reply.try_send(result);
                        }
                        None => self.log_result(result),
                    }
                }
            }
        }
    }

    fn next_periodic(&self, now: Instant) -> Option<Instant> {
        let every = lock(&self.settings).periodic;
        (!every.is_zero()).then(|| now + every)
    }

    fn log_result(&self, result: Result<Snapshot, SnapshotError>) {
        // A failure is logged by `take`.
        if let Ok(s) = result {
            log::info!(
                "flight recorder: {} snapshot written to {} ({} events)",
                s.trigger.label(),
                s.path.display(),
                s.records
            );
        }
    }

    /// Copies and merges the rings, renders them and writes the file.
    fn take(&self, trigger: Trigger, pools: &PoolLabels) -> Result<Snapshot, SnapshotError> {
        let copies: Vec<(usize, Vec<Record>)> = self
            .rings
            .iter()
            .enumerate()
            .map(|(i, ring)| (i, lock(ring).copy()))
            .collect();
        let now = Instant::now();
        let taken_at = SystemTime::now();
        let merged = ring::merge(copies);
        let labels = pools();
        let info = chrome::TraceInfo {
            trigger: trigger.label(),
            taken_at,
            end: nanos(now.saturating_duration_since(self.epoch)),
            epoch_wall: self.epoch_wall,
            pools: &labels,
            reactors: self.rings.len(),
            dropped: self.dropped(),
        };
        let json = chrome::render(&merged, &info);
        let dir = lock(&self.settings).output_dir.clone();
        let name = file::name(taken_at, trigger.label());
        match file::write_atomically(&dir, &name, json.as_bytes()) {
            Ok(path) => {
                self.snapshots[trigger.index()].fetch_add(1, Ordering::Relaxed);
                *lock(&self.last) = Some(Last {
                    path: path.clone(),
                    trigger,
                    at: taken_at,
                });
                Ok(Snapshot {
                    trigger,
                    path,
                    json,
                    records: merged.len(),
                })
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "flight recorder: {} snapshot not saved: {e}",
                    trigger.label()
                );
                Err(SnapshotError::File(e))
            }
        }
    }

    /// Snapshots written for `trigger`.
    pub fn snapshots(&self, trigger: Trigger) -> u64 {
        self.snapshots[trigger.index()].load(Ordering::Relaxed)
    }

    /// Snapshots whose file could not be written.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Memory the rings hold.
    pub fn bytes(&self) -> u64 {
        self.rings.iter().map(|r| lock(r).bytes()).sum()
    }

    /// Events lost to `max_bytes` before they were `min_age` old. (Automatic requests
    /// dropped for a full queue are counted apart, in [`FlightRecorder::status_json`].)
    pub fn dropped(&self) -> u64 {
        self.rings.iter().map(|r| lock(r).dropped()).sum()
    }

    /// `/debug/flight-recorder/status`.
    pub fn status_json(&self) -> String {
        let settings = lock(&self.settings).clone();
        let now = nanos(self.epoch.elapsed());
        let (mut events, mut oldest) = (0, None::<u64>);
        for ring in &self.rings {
            let ring = lock(ring);
            events += ring.len();
            if let Some(at) = ring.oldest() {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        let snapshots: serde_json::Map<String, serde_json::Value> = Trigger::ALL
            .iter()
            .map(|t| (t.label().to_owned(), self.snapshots(*t).into()))
            .collect();
        let last = lock(&self.last).clone().map(|l| {
            serde_json::json!({
                "path": l.path.display().to_string(),
                "trigger": l.trigger.label(),
                "taken_at": file::utc_rfc3339(l.at),
            })
        });
        serde_json::json!({
            "enabled": true,
            "reactors": self.rings.len(),
            "events": events,
            "history_seconds": oldest.map(|o| now.saturating_sub(o) as f64 / 1e9),
            "bytes": self.bytes(),
            "max_bytes": settings.max_bytes,
            "min_age_seconds": settings.min_age.as_secs_f64(),
            "events_dropped": self.dropped(),
            "requests_dropped": self.requests_dropped.load(Ordering::Relaxed),
            "output_dir": settings.output_dir.display().to_string(),
            "periodic_interval_seconds": settings.periodic.as_secs_f64(),
            "cooldown_seconds": settings.cooldown.as_secs_f64(),
            "on_signal": settings.on_signal,
            "on_error": self.on_error.load(Ordering::Relaxed),
            "on_slow_query_ms": self.slow_ns.load(Ordering::Relaxed) / 1_000_000,
            "snapshots": snapshots,
            "snapshot_failures": self.failures(),
            "last_snapshot": last,
        })
        .to_string()
    }
}

/// The recorder's thread; stopped and joined by [`RecorderThread::stop`] (or when dropped).
pub struct RecorderThread {
    tx: SyncSender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl RecorderThread {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Blocks only while the queue is full, which the thread is emptying.
            let _ = self.tx.send(Request::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for RecorderThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Records a sink collects before taking its ring's lock (see [`Sink`]).
const PENDING: usize = 64;

/// One reactor's sink: records into its ring, and fires the automatic triggers.
///
/// Records are collected in a small buffer and moved into the ring under one lock every
/// [`PENDING`] events, when the reactor is about to write its loop turn's output or to wait
/// for I/O (`flush`), and before an automatic trigger fires (so that its snapshot has the
/// event that fired it): a lock or two per loop turn instead of one per event; nothing left
/// in the buffer while the reactor sleeps; and a client that has its answer finds the events
/// behind it in a snapshot.
pub struct Sink {
    ring: Arc<Mutex<Ring>>,
    /// The recorder's epoch, and the last time converted.
    clock: Clock,
    recorder: Arc<FlightRecorder>,
    /// Records not in the ring yet: the first `pending_len` (fewer than [`PENDING`] between
    /// calls).
    pending: Box<[Record]>,
    pending_len: usize,
}

impl Sink {
    /// Everything but a statement's start: its end says when it started.
    pub const INTEREST: Interest = Interest::DEFAULT;

    fn hand_over(&mut self) {
        if self.pending_len > 0 {
            let records = self.pending.get(..self.pending_len).unwrap_or_default();
            lock(&self.ring).push_all(records);
            self.pending_len = 0;
        }
    }
}

impl EventSink for Sink {
    fn record(&mut self, at: Instant, event: &Event<'_>) {
        // A client's consecutive messages of one instant (of one loop turn: a pipeline's
        // Bind, Execute and Sync) go into one record, and so do the state changes that go
        // with an event (see `Record::absorb`).
        if matches!(
            event,
            Event::ClientMessage { .. } | Event::Client { .. } | Event::Server { .. }
        ) && let Some(last) = self
            .pending_len
            .checked_sub(1)
            .and_then(|i| self.pending.get_mut(i))
            && last.absorb(self.clock.ns(at), event)
        {
            return;
        }
        // Never full here: handed over as soon as it fills.
        let Some(slot) = self.pending.get_mut(self.pending_len) else {
            return;
        };
        if !Record::encode_into(&mut self.clock, at, event, slot) {
            return;
        }
        let recorded_at = slot.at;
        self.pending_len += 1;
        let recorder = &*self.recorder;
        let trigger = match event {
            Event::StatementEnded { started, .. } => {
                let slow = recorder.slow_ns.load(Ordering::Relaxed);
                (slow > 0 && nanos(at.saturating_duration_since(*started)) >= slow)
                    .then_some(Trigger::SlowQuery)
            }
            Event::Error {
                origin: ErrorOrigin::Protocol | ErrorOrigin::Proxy,
                ..
            } if recorder.on_error.load(Ordering::Relaxed) => Some(Trigger::Error),
            _ => None,
        };
        if trigger.is_some() || self.pending_len >= PENDING {
            self.hand_over();
        }
        if let Some(trigger) = trigger {
            self.recorder.auto(trigger, recorded_at);
        }
    }

    fn interest(&self) -> Interest {
        Sink::INTEREST
    }

    fn flush(&mut self) {
        self.hand_over();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.hand_over();
    }
}

#[cfg(test)]
mod tests;
