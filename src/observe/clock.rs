//! Instants as nanosecond counts, for the observers' records and spans.

use std::time::Instant;

use super::metrics::nanos;

/// Turns instants into nanoseconds on a scale where `anchor` is `base` (the flight recorder
/// counts from its epoch, spans from the Unix epoch); an earlier instant counts down from
/// `base`, never below 0. The last two instants converted are remembered: the events of one
/// engine call share its `now`, and a transaction and its statement most often begin at one
/// instant and end at another, so most conversions are a comparison.
#[derive(Debug, Clone, Copy)]
pub struct NanoClock {
    anchor: Instant,
    base: u64,
    last: [(Instant, u64); 2],
    /// The slot of `last` the next new instant goes to.
    next: usize,
}

impl NanoClock {
    pub fn new(anchor: Instant, base: u64) -> NanoClock {
        NanoClock {
            anchor,
            base,
            last: [(anchor, base); 2],
            next: 0,
        }
    }

    /// `at` in nanoseconds on the clock's scale.
    #[inline]
    pub fn ns(&mut self, at: Instant) -> u64 {
        if let Some(&(_, ns)) = self.last.iter().find(|(i, _)| *i == at) {
            return ns;
        }
        let ns = match at.checked_duration_since(self.anchor) {
            Some(after) => self.base.saturating_add(nanos(after)),
            None => self
                .base
                .saturating_sub(nanos(self.anchor.saturating_duration_since(at))),
        };
        if let Some(slot) = self.last.get_mut(self.next) {
            *slot = (at, ns);
        }
        self.next ^= 1;
        ns
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_instant_gets_its_time_whether_remembered_or_not() {
        let t0 = Instant::now();
        let unix = 1_700_000_000_000_000_000;
        let mut clock = NanoClock::new(t0, unix);
        let ms = |n: u64| Duration::from_millis(n);
        let earlier = t0.checked_sub(ms(5)).unwrap_or(t0);
        let want = |at: Instant| match at.checked_duration_since(t0) {
            Some(d) => unix + d.as_nanos() as u64,
            None => unix - t0.duration_since(at).as_nanos() as u64,
        };
        // Repeats, alternations, three in turn (past what is remembered), and the past.
        let order = [0, 1, 1, 0, 2, 0, 1, 2, 3, 3, 0];
        let instants = [t0 + ms(1), t0 + ms(2), t0 + ms(3), earlier];
        for i in order {
            let at = instants[i];
            assert_eq!(clock.ns(at), want(at), "instant {i}");
        }
        assert_eq!(clock.ns(t0), unix);
    }
}
