//! Per-reactor deadlines: a binary heap with lazy cancellation.
//!
//! Entries are never removed early. When one fires, the reactor checks it against the current
//! state of its target (same generation, still waiting for this deadline) and ignores it
//! otherwise. The heap therefore holds at most a few entries per connection plus those that
//! were superseded within their own timeout, which bounds it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::token::Tok;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// The client must finish startup and authentication.
    ClientLogin(TokKey),
    /// A client waiting for a backend gives up.
    AcquireTimeout(TokKey),
    /// A backend connection attempt or login must complete.
    BackendConnect(TokKey),
    /// A backend being cleaned up after its client vanished must be back to idle.
    BackendReset(TokKey),
    /// A health-check query must answer.
    HealthCheck(TokKey),
    /// Periodic pool maintenance (idle/lifetime expiry, min idle, health checks).
    PoolMaintenance,
}

/// `Tok` in a form that orders (the heap needs `Ord` for ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokKey {
    pub index: u32,
    pub generation: u32,
}

impl From<Tok> for TokKey {
    fn from(t: Tok) -> Self {
        TokKey {
            index: t.index,
            generation: t.generation,
        }
    }
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn add(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// Time until the earliest deadline (zero if already due), or `None` with no deadlines.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// Pops one due timer.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order() {
        let now = Instant::now();
        let mut t = Timers::default();
        let key = |i| TokKey {
            index: i,
            generation: 1,
        };
        t.add(now + Duration::from_millis(30), Timer::ClientLogin(key(3)));
        t.add(
            now + Duration::from_millis(10),
            Timer::AcquireTimeout(key(1)),
        );
        t.add(now + Duration::from_millis(20), Timer::PoolMaintenance);
        assert_eq!(t.next_timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(t.pop_due(now), None);
        let later = now + Duration::from_millis(25);
        assert_eq!(t.pop_due(later).unwrap().1, Timer::AcquireTimeout(key(1)));
        assert_eq!(t.pop_due(later).unwrap().1, Timer::PoolMaintenance);
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.next_timeout(later), Some(Duration::from_millis(5)));
        assert_eq!(t.len(), 1);
    }
}
