//! The engine's timers: a small fixed table of deadlines per connection, indexed by a closed
//! enum per connection kind, and one earliest-deadline heap over all of them.
//!
//! The table is the truth: setting a timer writes its slot and pushes a heap entry, stopping
//! one clears the slot. Heap entries are never removed early; when one comes due it fires
//! only if its connection still exists (same generation) and the slot still holds that very
//! deadline. The heap therefore holds at most a few entries per connection plus those
//! superseded within their own timeout, which bounds it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::marker::PhantomData;
use std::time::Instant;

use super::id::{ClientId, ServerId};

/// A client connection's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientTimer {
    /// Startup and authentication must finish (`client_login_timeout`).
    Login,
    /// A wait for a server connection gives up (`pool_acquire_timeout_milliseconds`).
    Acquire,
}

/// A server connection's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServerTimer {
    /// The TCP connection and login must complete (`connect_timeout`).
    Connect,
    /// A cleanup after a vanished client, or a health check, must reach idle.
    Drain,
    /// A cancel being delivered must have reported back (a safety net: the delivery
    /// reports itself; this only covers a report that was lost).
    Cancel,
}

/// A closed set of per-connection timers: each has a slot in its connection's table.
pub trait TimerKind: Copy {
    /// How many slots a table needs.
    const COUNT: usize;
    fn slot(self) -> usize;
}

impl TimerKind for ClientTimer {
    const COUNT: usize = 2;

    fn slot(self) -> usize {
        self as usize
    }
}

impl TimerKind for ServerTimer {
    const COUNT: usize = 3;

    fn slot(self) -> usize {
        self as usize
    }
}

/// The most slots a table has (of all kinds).
const MAX_SLOTS: usize = 3;

/// What a heap entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Client(ClientId, ClientTimer),
    Server(ServerId, ServerTimer),
    /// Periodic pool maintenance (idle and lifetime expiry, health checks, minimum idle).
    Maintenance,
    /// The shutdown grace period is over.
    Shutdown,
    /// The handover after a stop (`Context::handover`) is over: drain.
    Handover,
}

/// A connection's deadline table: one slot per timer of its kind.
#[derive(Debug, Clone)]
pub struct Deadlines<T> {
    at: [Option<Instant>; MAX_SLOTS],
    kind: PhantomData<T>,
}

impl<T> Default for Deadlines<T> {
    fn default() -> Self {
        Deadlines {
            at: [None; MAX_SLOTS],
            kind: PhantomData,
        }
    }
}

/// Deadlines of a client connection.
pub type ClientDeadlines = Deadlines<ClientTimer>;
/// Deadlines of a server connection.
pub type ServerDeadlines = Deadlines<ServerTimer>;

impl<T: TimerKind> Deadlines<T> {
    fn set(&mut self, timer: T, at: Option<Instant>) {
        debug_assert!(T::COUNT <= MAX_SLOTS && timer.slot() < T::COUNT);
        if let Some(s) = self.at.get_mut(timer.slot()) {
            *s = at;
        }
    }

    pub fn stop(&mut self, timer: T) {
        self.set(timer, None);
    }

    /// Whether `timer` is armed for exactly `at` (a heap entry for it is current).
    pub fn is_at(&self, timer: T, at: Instant) -> bool {
        self.at.get(timer.slot()).copied().flatten() == Some(at)
    }

    /// Clears `timer` if it is due exactly `at` (the heap entry is current); says so.
    pub fn take_due(&mut self, timer: T, at: Instant) -> bool {
        let due = self.is_at(timer, at);
        if due {
            self.stop(timer);
        }
        due
    }
}

/// The earliest-deadline structure of one engine.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    /// Arms a client timer: writes its slot and schedules it.
    pub fn client(
        &mut self,
        deadlines: &mut ClientDeadlines,
        id: ClientId,
        t: ClientTimer,
        at: Instant,
    ) {
        deadlines.set(t, Some(at));
        self.heap.push(Reverse((at, Timer::Client(id, t))));
    }

    /// Arms a server timer.
    pub fn server(
        &mut self,
        deadlines: &mut ServerDeadlines,
        id: ServerId,
        t: ServerTimer,
        at: Instant,
    ) {
        deadlines.set(t, Some(at));
        self.heap.push(Reverse((at, Timer::Server(id, t))));
    }

    /// Schedules an engine-wide timer (the engine keeps its own slot for those).
    pub fn engine(&mut self, timer: Timer, at: Instant) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest entry (possibly stale).
    pub fn peek(&self) -> Option<(Instant, Timer)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    /// Drops the earliest entry.
    pub fn pop(&mut self) {
        self.heap.pop();
    }

    /// Pops one entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_order_and_only_when_current() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut timers = Timers::default();
        let (a, b) = (ClientId::new(3, 1), ClientId::new(1, 1));
        let (mut da, mut db) = (ClientDeadlines::default(), ClientDeadlines::default());
        timers.client(&mut da, a, ClientTimer::Login, now + ms(30));
        timers.client(&mut db, b, ClientTimer::Acquire, now + ms(10));
        timers.engine(Timer::Maintenance, now + ms(20));
        assert_eq!(timers.peek().map(|(at, _)| at), Some(now + ms(10)));
        assert_eq!(timers.pop_due(now), None);
        let later = now + ms(25);
        let (at, t) = timers.pop_due(later).unwrap();
        assert_eq!(t, Timer::Client(b, ClientTimer::Acquire));
        assert!(db.take_due(ClientTimer::Acquire, at));
        assert!(!db.take_due(ClientTimer::Acquire, at), "fires once");
        assert_eq!(timers.pop_due(later).unwrap().1, Timer::Maintenance);
        assert_eq!(timers.pop_due(later), None);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn a_rearmed_timer_makes_the_old_entry_stale() {
        let now = Instant::now();
        let s = ServerId::new(0, 4);
        let mut timers = Timers::default();
        let mut d = ServerDeadlines::default();
        timers.server(&mut d, s, ServerTimer::Drain, now);
        timers.server(&mut d, s, ServerTimer::Drain, now + Duration::from_secs(1));
        let (at, _) = timers.pop_due(now).unwrap();
        assert!(!d.take_due(ServerTimer::Drain, at), "superseded");
        d.stop(ServerTimer::Drain);
        let (at, _) = timers.pop_due(now + Duration::from_secs(1)).unwrap();
        assert!(!d.take_due(ServerTimer::Drain, at), "stopped");
        assert!(timers.is_empty());
    }
}
