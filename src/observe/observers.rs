//! One reactor's observers: the flight recorder's sink and (feature `otel`) the span sink,
//! as the one [`EventSink`] its engine holds.
//!
//! Each event goes to the observers that want its kind, through direct calls: the engine
//! makes one virtual call per event, not one per observer.

use std::time::Instant;

use super::events::{Event, EventSink, Interest};
use super::flight;
#[cfg(feature = "otel")]
use super::spans::SpanSink;

/// A reactor's observers (none, one or both).
#[derive(Default)]
pub struct Observers {
    flight: Option<flight::Sink>,
    #[cfg(feature = "otel")]
    spans: Option<SpanSink>,
}

impl Observers {
    pub fn with_flight(mut self, sink: flight::Sink) -> Observers {
        self.flight = Some(sink);
        self
    }

    #[cfg(feature = "otel")]
    pub fn with_spans(mut self, sink: SpanSink) -> Observers {
        self.spans = Some(sink);
        self
    }

    /// Whether there is any observer.
    pub fn is_empty(&self) -> bool {
        #[cfg(feature = "otel")]
        if self.spans.is_some() {
            return false;
        }
        self.flight.is_none()
    }
}

impl EventSink for Observers {
    fn record(&mut self, at: Instant, event: &Event<'_>) {
        let kind = event.kind();
        if let Some(sink) = &mut self.flight
            && flight::Sink::INTEREST.wants(kind)
        {
            sink.record(at, event);
        }
        #[cfg(feature = "otel")]
        if let Some(sink) = &mut self.spans
            && SpanSink::INTEREST.wants(kind)
        {
            sink.record(at, event);
        }
    }

    fn interest(&self) -> Interest {
        let mut interest = Interest::NONE;
        if self.flight.is_some() {
            interest = interest.and(flight::Sink::INTEREST);
        }
        #[cfg(feature = "otel")]
        if self.spans.is_some() {
            interest = interest.and(SpanSink::INTEREST);
        }
        interest
    }

    fn flush(&mut self) {
        if let Some(sink) = &mut self.flight {
            sink.flush();
        }
        #[cfg(feature = "otel")]
        if let Some(sink) = &mut self.spans {
            sink.flush();
        }
    }
}
