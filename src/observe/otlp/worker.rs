//! The exporter thread's batching loop, run on its current-thread runtime.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::span::{SpanRecord, instrumentation_scope, to_span_data};
use super::{ExportStats, ExporterConfig};

/// What woke the batching loop.
enum Wake {
    Span(SpanRecord),
    /// Every [`Exporter`] is gone.
    Closed,
    Shutdown,
    BatchDue,
}

/// The exporter thread's state, run on its current-thread runtime.
pub(super) struct Worker {
    spans: mpsc::Receiver<SpanRecord>,
    /// Taken once the shutdown request (or the loss of its sender) has been seen.
    shutdown: Option<oneshot::Receiver<Instant>>,
    /// Set by shutdown: nothing is sent after it.
    deadline: Option<Instant>,
    exporter: opentelemetry_otlp::SpanExporter,
    stats: Arc<ExportStats>,
    scope: InstrumentationScope,
    config: ExporterConfig,
}

impl Worker {
    pub(super) fn new(
        spans: mpsc::Receiver<SpanRecord>,
        shutdown: oneshot::Receiver<Instant>,
        exporter: opentelemetry_otlp::SpanExporter,
        stats: Arc<ExportStats>,
        config: ExporterConfig,
    ) -> Worker {
        Worker {
            spans,
            shutdown: Some(shutdown),
            deadline: None,
            exporter,
            stats,
            scope: instrumentation_scope(),
            config,
        }
    }

    pub(super) async fn run(mut self) {
        let max_batch = self.config.max_batch.max(1);
        let mut batch = Vec::new();
        let mut due: Option<Instant> = None;
        loop {
            match self.next(due).await {
                Wake::Span(span) => {
                    if batch.is_empty() {
                        due = Some(Instant::now() + self.config.batch_delay);
                    }
                    batch.push(to_span_data(span, &self.scope));
                    if batch.len() >= max_batch {
                        self.export(std::mem::take(&mut batch)).await;
                        due = None;
                    }
                }
                Wake::BatchDue => {
                    self.export(std::mem::take(&mut batch)).await;
                    due = None;
                }
                Wake::Closed | Wake::Shutdown => break,
            }
        }
        // Flush: what is batched, then what is queued, until the deadline.
        self.spans.close();
        loop {
            while batch.len() < max_batch {
                match self.spans.try_recv() {
                    Ok(span) => batch.push(to_span_data(span, &self.scope)),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                ExportStats::add(&self.stats.failed, batch.len());
                batch.clear();
                continue;
            }
            self.export(std::mem::take(&mut batch)).await;
        }
    }

    /// Waits for a span, the shutdown request, or the batch's due time.
    async fn next(&mut self, due: Option<Instant>) -> Wake {
        let mut timer = pin!(tokio::time::sleep_until(
            due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
        ));
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
            match self.spans.poll_recv(cx) {
                Poll::Ready(Some(span)) => return Poll::Ready(Wake::Span(span)),
                Poll::Ready(None) => return Poll::Ready(Wake::Closed),
                Poll::Pending => {}
            }
            if due.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::BatchDue);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends one batch, bounded by the export timeout and the shutdown deadline (which may
    /// arrive while the request is in flight); `None` when the time ran out.
    async fn send(&mut self, batch: Vec<SpanData>) -> Option<OTelSdkResult> {
        let timeout = Instant::now() + self.config.export_timeout;
        let limit = self.deadline.map_or(timeout, |d| d.min(timeout));
        let Worker {
            exporter,
            shutdown,
            deadline,
            ..
        } = self;
        let mut request = pin!(exporter.export(batch));
        let mut timer = pin!(tokio::time::sleep_until(limit));
        poll_fn(|cx| {
            if let Poll::Ready(result) = request.as_mut().poll(cx) {
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

    /// Sends one batch and counts the result.
    async fn export(&mut self, batch: Vec<SpanData>) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        match self.send(batch).await {
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
