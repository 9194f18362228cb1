//! The exporter thread's batching loop, run on its current-thread runtime.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::encode::{RequestEncoder, span_fields_end, span_fields_within};
use super::transport::Transport;
use super::{ExportStats, ExporterConfig};

/// Spans waiting for the export thread, encoded: a byte vector behind a lock, swapped out
/// whole by the thread. A reactor hands over its batch with one copy under an uncontended
/// lock; the thread is woken when a request's worth is ready (or by its timer), not for every
/// hand-over, which at tens of thousands of spans a second would cost a futex wake and a
/// context switch each.
#[derive(Debug)]
pub(super) struct SpanQueue {
    queued: std::sync::Mutex<Queued>,
    ready: tokio::sync::Notify,
    /// The most spans queued.
    capacity: usize,
    /// The most bytes queued.
    max_bytes: usize,
    /// Spans queued at which the thread is woken.
    batch: usize,
    /// Bytes queued at which the thread is woken (a request's worth).
    batch_bytes: usize,
}

#[derive(Debug, Default)]
pub(super) struct Queued {
    run: Run,
    closed: bool,
}

/// A run of encoded spans: whole `ScopeSpans.spans` fields, how many, and where each
/// hand-over ends (bytes and spans so far), so that the run is cut after any number of spans
/// by reading at most one hand-over's spans, not every span before the cut.
#[derive(Debug, Default)]
pub(super) struct Run {
    pub(super) bytes: Vec<u8>,
    pub(super) spans: usize,
    ends: Vec<(usize, usize)>,
}

impl Run {
    fn push(&mut self, bytes: &[u8], spans: usize) {
        self.bytes.extend_from_slice(bytes);
        self.spans += spans;
        self.ends.push((self.bytes.len(), self.spans));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.spans = 0;
        self.ends.clear();
    }

    /// The cut after at most `n` spans and `max_bytes` bytes from `from` (bytes and spans of
    /// a cut), as (bytes, spans) from the run's start; at least one span when `one` and there
    /// is one, however long it is.
    fn cut(&self, from: (usize, usize), n: usize, max_bytes: usize, one: bool) -> (usize, usize) {
        let end = self.end_after(from, n);
        let spans = n.min(self.spans.saturating_sub(from.1));
        if end - from.0 <= max_bytes {
            return (end, from.1 + spans);
        }
        // Too long: span by span (a rare cut, of long query texts' spans).
        let rest = self.bytes.get(from.0..end).unwrap_or_default();
        let (bytes, count) = span_fields_within(rest, max_bytes);
        if count == 0 && one && spans > 0 {
            return (from.0 + span_fields_end(rest, 1), from.1 + 1);
        }
        (from.0 + bytes, from.1 + count)
    }

    /// The end (in bytes) of the first `n` spans after `from` (bytes and spans of a cut),
    /// or of the run when there are fewer.
    fn end_after(&self, from: (usize, usize), n: usize) -> usize {
        let target = from.1 + n;
        if target >= self.spans {
            return self.bytes.len();
        }
        // The last hand-over that ends at or before the target, unless the cut is later.
        let i = self.ends.partition_point(|&(_, spans)| spans <= target);
        let mut start = i
            .checked_sub(1)
            .and_then(|i| self.ends.get(i))
            .copied()
            .unwrap_or((0, 0));
        if start.1 < from.1 {
            start = from;
        }
        if start.1 == target {
            return start.0;
        }
        let rest = self.bytes.get(start.0..).unwrap_or_default();
        start.0 + span_fields_end(rest, target - start.1)
    }
}

impl SpanQueue {
    pub(super) fn new(
        capacity: usize,
        max_bytes: usize,
        batch: usize,
        batch_bytes: usize,
    ) -> SpanQueue {
        SpanQueue {
            queued: std::sync::Mutex::new(Queued::default()),
            ready: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
            max_bytes,
            batch: batch.clamp(1, capacity.max(1)),
            batch_bytes: batch_bytes.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `spans` encoded spans (`bytes`); false, queuing none, when they do not fit or
    /// the queue is closed.
    pub(super) fn push(&self, bytes: &[u8], spans: usize) -> bool {
        let (before, after) = {
            let mut q = self.lock();
            if q.closed
                || q.run.spans + spans > self.capacity
                || q.run.bytes.len() + bytes.len() > self.max_bytes
            {
                return false;
            }
            let before = (q.run.spans, q.run.bytes.len());
            q.run.push(bytes, spans);
            (before, (q.run.spans, q.run.bytes.len()))
        };
        let crossed = |limit: usize, before: usize, after: usize| before < limit && after >= limit;
        if crossed(self.batch, before.0, after.0) || crossed(self.batch_bytes, before.1, after.1) {
            self.ready.notify_one();
        }
        true
    }

    /// Everything queued, swapped into `run` (whose allocations the queue keeps).
    fn take(&self, run: &mut Run) {
        run.clear();
        std::mem::swap(&mut self.lock().run, run);
    }

    /// No span is taken any more.
    fn close(&self) {
        self.lock().closed = true;
    }
}

/// What woke the batching loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// A request's worth of spans is queued: whole requests are sent, the rest waits.
    Full,
    /// The batch delay passed: everything queued is sent.
    Due,
    Shutdown,
}

/// The exporter thread's state, run on its current-thread runtime.
pub(super) struct Worker {
    spans: Arc<SpanQueue>,
    /// Taken once the shutdown request (or the loss of its sender) has been seen.
    shutdown: Option<oneshot::Receiver<Instant>>,
    /// Set by shutdown: nothing is sent after it.
    deadline: Option<Instant>,
    transport: Transport,
    encoder: RequestEncoder,
    stats: Arc<ExportStats>,
    config: ExporterConfig,
    /// Spans taken from the queue and not sent yet (fewer than a request's worth, kept for
    /// the next wake-up so that a request carries `max_batch` spans while spans keep coming):
    /// they begin the next request.
    held: Vec<u8>,
    held_spans: usize,
    /// The spans taken from the queue at the last wake-up.
    taken: Run,
    /// When a lost export was last logged at warn level.
    warned: Throttle,
}

/// How often a failed export is logged at warn level at most (the others at debug): a dead
/// collector is said once a minute, not for every request.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Lets something happen at most once per interval.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// Whether it may happen at `now` (and if so, it counts as having happened).
    pub(super) fn allow(&mut self, now: Instant, every: std::time::Duration) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

impl Worker {
    pub(super) fn new(
        spans: Arc<SpanQueue>,
        shutdown: oneshot::Receiver<Instant>,
        transport: Transport,
        encoder: RequestEncoder,
        stats: Arc<ExportStats>,
        config: ExporterConfig,
    ) -> Worker {
        Worker {
            spans,
            shutdown: Some(shutdown),
            deadline: None,
            transport,
            encoder,
            stats,
            config,
            held: Vec::new(),
            held_spans: 0,
            taken: Run::default(),
            warned: Throttle::default(),
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let wake = self.next().await;
            if wake == Wake::Shutdown {
                self.spans.close();
            }
            let mut taken = std::mem::take(&mut self.taken);
            self.spans.take(&mut taken);
            self.export_all(&taken, wake == Wake::Full).await;
            self.taken = taken;
            if wake == Wake::Shutdown {
                break;
            }
        }
    }

    /// Sends the held spans and then `taken`'s in requests of at most `max_batch` spans and
    /// `max_request_bytes` (only full requests when `whole`: what is left is held for the
    /// next wake-up). After the shutdown deadline, what is left is counted as failed.
    async fn export_all(&mut self, taken: &Run, whole: bool) {
        let max_batch = self.config.max_batch.max(1);
        let max_bytes = self.config.max_request_bytes.max(1);
        // Where `taken` is cut: bytes and spans sent from it.
        let mut at = (0, 0);
        loop {
            let left = self.held_spans + taken.spans - at.1;
            if left == 0 {
                return;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                ExportStats::add(&self.stats.failed, left);
                self.held.clear();
                self.held_spans = 0;
                return;
            }
            let left_bytes = self.held.len() + taken.bytes.len() - at.0;
            if whole && left < max_batch && left_bytes < max_bytes {
                break;
            }
            // What is held is less than a request's worth (see above); it goes first, and
            // alone when no span of `taken` fits beside it.
            let from_taken = max_batch.saturating_sub(self.held_spans);
            let room = max_bytes.saturating_sub(self.held.len());
            let cut = taken.cut(at, from_taken, room, self.held_spans == 0);
            let part = taken.bytes.get(at.0..cut.0).unwrap_or_default();
            let request = self.encoder.encode_parts(&self.held, part);
            let count = self.held_spans + (cut.1 - at.1);
            self.held.clear();
            self.held_spans = 0;
            at = cut;
            self.export(request, count).await;
        }
        // Fewer than a request's worth: held (after what is already held) for the next one.
        self.held
            .extend_from_slice(taken.bytes.get(at.0..).unwrap_or_default());
        self.held_spans += taken.spans - at.1;
    }

    /// Waits for a ready batch, the batch delay, or the shutdown request.
    async fn next(&mut self) -> Wake {
        let mut timer = pin!(tokio::time::sleep(self.config.batch_delay));
        let mut ready = pin!(self.spans.ready.notified());
        poll_fn(|cx| {
            // Shutdown may have been asked for while a batch was being sent.
            if self.deadline.is_some() {
                return Poll::Ready(Wake::Shutdown);
            }
            if let Some(shutdown) = self.shutdown.as_mut()
                && let Poll::Ready(request) = Pin::new(shutdown).poll(cx)
            {
                self.shutdown = None;
                // A dropped ExporterThread means stop now, with nothing more to wait for.
                self.deadline = Some(request.unwrap_or_else(|_| Instant::now()));
                return Poll::Ready(Wake::Shutdown);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Due);
            }
            if ready.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Full);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends one batch, bounded by the export timeout and the shutdown deadline (which may
    /// arrive while the request is in flight); `None` when the time ran out.
    async fn send(&mut self, request: Vec<u8>) -> Option<Result<(), String>> {
        let timeout = Instant::now() + self.config.export_timeout;
        let limit = self.deadline.map_or(timeout, |d| d.min(timeout));
        let Worker {
            transport,
            encoder,
            shutdown,
            deadline,
            ..
        } = self;
        let mut request = pin!(transport.send(request));
        let mut timer = pin!(tokio::time::sleep_until(limit));
        poll_fn(|cx| {
            if let Poll::Ready((result, buffer)) = request.as_mut().poll(cx) {
                if let Some(buffer) = buffer {
                    encoder.recycle(buffer);
                }
                return Poll::Ready(Some(result));
            }
            if let Some(rx) = shutdown.as_mut()
                && let Poll::Ready(request) = Pin::new(rx).poll(cx)
            {
                *shutdown = None;
                let d = request.unwrap_or_else(|_| Instant::now());
                *deadline = Some(d);
                if d < timer.deadline() {
                    timer.as_mut().reset(d);
                }
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends one encoded batch of `n` spans and counts the result.
    async fn export(&mut self, request: Vec<u8>, n: usize) {
        if n == 0 {
            return;
        }
        let why = match self.send(request).await {
            Some(Ok(())) => return ExportStats::add(&self.stats.exported, n),
            Some(Err(e)) => format!("failed: {e}"),
            None => "timed out".to_owned(),
        };
        ExportStats::add(&self.stats.failed, n);
        if self.warned.allow(Instant::now(), WARN_EVERY) {
            log::warn!(
                "OTLP export of {n} spans {why}; spans lost are counted in \
                 pglink_trace_spans_total{{outcome=\"failed\"}} (this warning is given at most \
                 once a minute)"
            );
        } else {
            log::debug!("OTLP export of {n} spans {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::otlp::encode::put_span_field;
    use crate::observe::otlp::{SharedAttributes, Span, SpanKind, SpanStatus};

    #[test]
    fn a_throttle_lets_one_through_per_interval() {
        let minute = std::time::Duration::from_secs(60);
        let t0 = Instant::now();
        let mut throttle = Throttle::default();
        assert!(throttle.allow(t0, minute));
        assert!(!throttle.allow(t0, minute));
        assert!(!throttle.allow(t0 + minute / 2, minute));
        assert!(throttle.allow(t0 + minute, minute));
        assert!(!throttle.allow(t0 + minute + minute / 2, minute));
        assert!(throttle.allow(t0 + minute * 3, minute));
    }

    /// A run of `sizes.len()` hand-overs of `sizes[i]` spans each, whose names make them
    /// differ in length; and every span's end, in bytes.
    fn run(sizes: &[usize]) -> (Run, Vec<usize>) {
        let mut run = Run::default();
        let mut ends = Vec::new();
        let mut n = 0;
        for &size in sizes {
            let mut batch = Vec::new();
            for _ in 0..size {
                let name = "s".repeat(n % 7);
                put_span_field(
                    &mut batch,
                    &Span {
                        trace_id: [1; 16],
                        span_id: [2; 8],
                        parent_span_id: None,
                        parent_is_remote: false,
                        name: &name,
                        kind: SpanKind::Client,
                        start_ns: 1,
                        end_ns: 2,
                        shared: SharedAttributes::EMPTY,
                        attributes: &[],
                        events: &[],
                        status: SpanStatus::Unset,
                        sampled: true,
                    },
                );
                ends.push(run.bytes.len() + batch.len());
                n += 1;
            }
            run.push(&batch, size);
        }
        (run, ends)
    }

    #[test]
    fn a_run_is_cut_after_any_number_of_spans_from_any_cut() {
        let (run, ends) = run(&[3, 1, 5, 2]);
        assert_eq!(run.spans, 11);
        let end = |spans: usize| if spans == 0 { 0 } else { ends[spans - 1] };
        for from in 0..=11 {
            for n in 0..=13 {
                let want = end((from + n).min(11));
                assert_eq!(
                    run.end_after((end(from), from), n),
                    want,
                    "{n} after {from}"
                );
            }
        }
        let mut empty = Run::default();
        assert_eq!(empty.end_after((0, 0), 5), 0);
        assert_eq!(empty.cut((0, 0), 5, 0, true), (0, 0));
        empty.push(&[], 0);
        assert_eq!(empty.end_after((0, 0), 1), 0);
    }

    #[test]
    fn a_run_is_cut_at_a_byte_limit_between_spans() {
        let (run, ends) = run(&[3, 1, 5, 2]);
        let end = |spans: usize| if spans == 0 { 0 } else { ends[spans - 1] };
        for from in 0..=11 {
            for n in 0..=13 {
                for max_bytes in 0..=run.bytes.len() + 1 {
                    for one in [false, true] {
                        let there = n.min(11 - from);
                        let mut want = (0..=there)
                            .rev()
                            .find(|&k| end(from + k) - end(from) <= max_bytes)
                            .unwrap();
                        if want == 0 && one && there > 0 {
                            want = 1;
                        }
                        assert_eq!(
                            run.cut((end(from), from), n, max_bytes, one),
                            (end(from + want), from + want),
                            "{n} spans and {max_bytes} bytes after {from} ({one})"
                        );
                    }
                }
            }
        }
    }
}
