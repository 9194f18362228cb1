//! The exporter thread's batching loop, run on its current-thread runtime.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::encode::RequestEncoder;
use super::span::SpanRecord;
use super::transport::Transport;
use super::{ExportStats, ExporterConfig};

/// Spans waiting for the export thread: a vector behind a lock, swapped out whole by the
/// thread. A span costs a push under an uncontended lock; the thread is woken when a batch is
/// ready (or by its timer), not for every span, which at tens of thousands of spans a
/// second would cost a futex wake and a context switch each.
#[derive(Debug)]
pub(super) struct SpanQueue {
    spans: std::sync::Mutex<(Vec<SpanRecord>, bool)>,
    ready: tokio::sync::Notify,
    capacity: usize,
    /// Queue length at which the thread is woken.
    batch: usize,
}

impl SpanQueue {
    pub(super) fn new(capacity: usize, batch: usize) -> SpanQueue {
        SpanQueue {
            spans: std::sync::Mutex::new((Vec::new(), false)),
            ready: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
            batch: batch.clamp(1, capacity.max(1)),
        }
    }

    /// Queues `span`; false when the queue is full or closed.
    pub(super) fn push(&self, span: SpanRecord) -> bool {
        let len = {
            let mut guard = self
                .spans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (spans, closed) = &mut *guard;
            if *closed || spans.len() >= self.capacity {
                return false;
            }
            spans.push(span);
            spans.len()
        };
        if len == self.batch {
            self.ready.notify_one();
        }
        true
    }

    /// Everything queued, swapped for `empty` (kept for its allocation).
    fn take(&self, empty: Vec<SpanRecord>) -> Vec<SpanRecord> {
        let mut guard = self
            .spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut guard.0, empty)
    }

    /// No span is taken any more.
    fn close(&self) {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1 = true;
    }
}

/// What woke the batching loop.
enum Wake {
    /// A batch is queued, or the batch delay passed.
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
        }
    }

    pub(super) async fn run(mut self) {
        let mut spare = Vec::new();
        loop {
            let wake = self.next().await;
            if matches!(wake, Wake::Shutdown) {
                self.spans.close();
            }
            let mut queued = self.spans.take(spare);
            self.export_all(&mut queued).await;
            spare = queued;
            if matches!(wake, Wake::Shutdown) {
                break;
            }
        }
    }

    /// Sends `spans` in batches of `max_batch` (emptying it); after the shutdown deadline,
    /// what is left is counted as failed.
    async fn export_all(&mut self, spans: &mut Vec<SpanRecord>) {
        let max_batch = self.config.max_batch.max(1);
        while !spans.is_empty() {
            let n = spans.len().min(max_batch);
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                ExportStats::add(&self.stats.failed, spans.len());
                spans.clear();
                return;
            }
            let request = self.encoder.encode(spans.get(..n).unwrap_or(spans));
            spans.drain(..n);
            self.export(request, n).await;
        }
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
            if ready.as_mut().poll(cx).is_ready() || timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Due);
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
