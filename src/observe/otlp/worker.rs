//! The exporter thread's batching loop, run on its current-thread runtime.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::encode::{RequestEncoder, span_fields_end};
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
}

#[derive(Debug, Default)]
pub(super) struct Queued {
    /// Whole `ScopeSpans.spans` fields.
    pub(super) bytes: Vec<u8>,
    pub(super) spans: usize,
    closed: bool,
}

impl SpanQueue {
    pub(super) fn new(capacity: usize, max_bytes: usize, batch: usize) -> SpanQueue {
        SpanQueue {
            queued: std::sync::Mutex::new(Queued::default()),
            ready: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
            max_bytes,
            batch: batch.clamp(1, capacity.max(1)),
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
                || q.spans + spans > self.capacity
                || q.bytes.len() + bytes.len() > self.max_bytes
            {
                return false;
            }
            q.bytes.extend_from_slice(bytes);
            let before = q.spans;
            q.spans += spans;
            (before, q.spans)
        };
        if before < self.batch && after >= self.batch {
            self.ready.notify_one();
        }
        true
    }

    /// Everything queued, swapped for `empty` (kept for its allocation).
    fn take(&self, mut empty: Vec<u8>) -> (Vec<u8>, usize) {
        empty.clear();
        let mut q = self.lock();
        let spans = std::mem::take(&mut q.spans);
        (std::mem::replace(&mut q.bytes, empty), spans)
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
    /// the next wake-up so that a request carries `max_batch` spans while spans keep coming).
    held: Vec<u8>,
    held_spans: usize,
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
        }
    }

    pub(super) async fn run(mut self) {
        let mut spare = Vec::new();
        loop {
            let wake = self.next().await;
            if wake == Wake::Shutdown {
                self.spans.close();
            }
            let (mut queued, n) = self.spans.take(spare);
            if self.held_spans > 0 {
                // The held spans go first: they were handed over first.
                self.held.extend_from_slice(&queued);
                std::mem::swap(&mut self.held, &mut queued);
                self.held.clear();
            }
            let n = n + std::mem::take(&mut self.held_spans);
            let (left, at) = self.export_all(&queued, n, wake == Wake::Full).await;
            if left > 0 {
                self.held
                    .extend_from_slice(queued.get(at..).unwrap_or_default());
                self.held_spans = left;
            }
            spare = queued;
            if wake == Wake::Shutdown {
                break;
            }
        }
    }

    /// Sends the `n` encoded spans of `all` in requests of at most `max_batch` (only whole
    /// requests when `whole`). Returns the spans not sent and where their bytes begin: they
    /// wait for the next wake-up. After the shutdown deadline, what is left is counted as
    /// failed.
    async fn export_all(&mut self, all: &[u8], mut n: usize, whole: bool) -> (usize, usize) {
        let max_batch = self.config.max_batch.max(1);
        let mut spans = all;
        while n > 0 {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                ExportStats::add(&self.stats.failed, n);
                return (0, all.len());
            }
            if whole && n < max_batch {
                break;
            }
            let count = n.min(max_batch);
            let end = if count == n {
                spans.len()
            } else {
                span_fields_end(spans, count)
            };
            let (batch, rest) = spans.split_at(end.min(spans.len()));
            let request = self.encoder.encode(batch);
            spans = rest;
            n -= count;
            self.export(request, count).await;
        }
        (n, all.len() - spans.len())
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
        match self.send(request).await {
            Some(Ok(())) => ExportStats::add(&self.stats.exported, n),
            Some(Err(e)) => {
                log::debug!("OTLP export of {n} spans failed: {e}");
                ExportStats::add(&self.stats.failed, n);
            }
            None => {
                log::debug!("OTLP export of {n} spans timed out");
                ExportStats::add(&self.stats.failed, n);
            }
        }
    }
}
