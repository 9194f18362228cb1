//! The span record the engine hands over, and its conversion into the SDK's span data.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    self as otel_trace, SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

/// One finished span, as the engine hands it over.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came from another process (a client's `traceparent`).
    pub parent_is_remote: bool,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub events: Vec<SpanEventRecord>,
    pub status: SpanStatus,
    /// The W3C sampled flag carried in the exported span's flags. Sampling itself is the
    /// caller's decision: every submitted span is sent.
    pub sampled: bool,
}

/// The span kinds pglink produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Work done for a client (a transaction, a statement).
    Server,
    /// Work pglink asks of a backend.
    Client,
    Internal,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    /// A constant: no allocation per span.
    Static(&'static str),
    /// Shared by many spans (a session's database, user, addresses): a reference count per
    /// span, not a copy.
    Shared(std::sync::Arc<str>),
    Int(i64),
    Bool(bool),
    F64(f64),
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_owned())
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::F64(v)
    }
}

/// A timestamped event inside a span (e.g. `pool.wait` with its duration).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEventRecord {
    pub name: String,
    pub time: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

/// A span's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum SpanStatus {
    #[default]
    Unset,
    Ok,
    /// Failed, with a description.
    Error(String),
}

pub(super) fn instrumentation_scope() -> InstrumentationScope {
    InstrumentationScope::builder("pglink")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The SDK's span data for `span`.
pub(super) fn to_span_data(span: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let flags = if span.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let mut events = SpanEvents::default();
    events.events = span
        .events
        .into_iter()
        .map(|e| otel_trace::Event::new(e.name, e.time, key_values(e.attributes), 0))
        .collect();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            flags,
            false,
            TraceState::NONE,
        ),
        parent_span_id: span
            .parent_span_id
            .map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: span.parent_span_id.is_some() && span.parent_is_remote,
        span_kind: match span.kind {
            SpanKind::Server => otel_trace::SpanKind::Server,
            SpanKind::Client => otel_trace::SpanKind::Client,
            SpanKind::Internal => otel_trace::SpanKind::Internal,
        },
        name: Cow::Owned(span.name),
        start_time: span.start,
        end_time: span.end.max(span.start),
        attributes: key_values(span.attributes),
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: match span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Ok => Status::Ok,
            SpanStatus::Error(description) => Status::error(description),
        },
        instrumentation_scope: scope.clone(),
    }
}

fn key_values(attributes: Vec<(&'static str, AttrValue)>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                AttrValue::Str(s) => Value::from(s),
                AttrValue::Static(s) => Value::from(s),
                AttrValue::Shared(s) => Value::String(s.into()),
                AttrValue::Int(i) => Value::I64(i),
                AttrValue::Bool(b) => Value::Bool(b),
                AttrValue::F64(f) => Value::F64(f),
            };
            KeyValue::new(Key::from_static_str(key), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn span_record_converts_to_span_data() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let span = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            parent_is_remote: true,
            name: "transaction".into(),
            kind: SpanKind::Server,
            start: t0,
            end: t0 - Duration::from_secs(1), // a clock step back: clamped
            attributes: vec![("db.system", "postgresql".into()), ("n", 7i64.into())],
            events: vec![SpanEventRecord {
                name: "pool.wait".into(),
                time: t0,
                attributes: vec![("wait.seconds", 0.25.into())],
            }],
            status: SpanStatus::Error("boom".into()),
            sampled: true,
        };
        let data = to_span_data(span, &instrumentation_scope());
        assert_eq!(data.span_context.trace_id(), TraceId::from_bytes([1; 16]));
        assert!(data.span_context.is_sampled());
        assert_eq!(data.parent_span_id, SpanId::from_bytes([3; 8]));
        assert!(data.parent_span_is_remote);
        assert_eq!(data.end_time, t0);
        assert_eq!(data.attributes[1], KeyValue::new("n", 7i64));
        assert_eq!(data.events.events[0].name, "pool.wait");
        assert_eq!(data.status, Status::error("boom"));
    }
}
