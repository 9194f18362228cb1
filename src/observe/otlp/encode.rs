//! A hand-written OTLP protobuf encoder: an `ExportTraceServiceRequest` written straight from
//! `&[SpanRecord]` into a reused buffer.
//!
//! Field numbers follow `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto` and
//! `collector/trace/v1/trace_service.proto`. A nested message is written as its tag, its
//! length and its bytes, so every length is computed (cheap arithmetic over the span) before
//! the bytes are written: no scratch buffer, no copy, and no allocation beyond the growth of
//! the output buffer, which is kept between batches.
//!
//! The resource and the instrumentation scope are the same in every request: they are
//! encoded once, at start, and copied into each request.

use std::time::{SystemTime, UNIX_EPOCH};

use super::span::{AttrValue, SpanEventRecord, SpanKind, SpanRecord, SpanStatus};

/// The protobuf wire types used here.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

// ExportTraceServiceRequest
const REQUEST_RESOURCE_SPANS: u32 = 1;
// ResourceSpans
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
// Resource
const RESOURCE_ATTRIBUTES: u32 = 1;
// ScopeSpans
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
// InstrumentationScope
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;
// Span
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_EVENTS: u32 = 11;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
// Span.Event
const EVENT_TIME: u32 = 1;
const EVENT_NAME: u32 = 2;
const EVENT_ATTRIBUTES: u32 = 3;
// Status
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
// KeyValue
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
// AnyValue (a oneof: the chosen field is always written, even when empty or zero)
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;

// SpanFlags
/// The context's is-remote flag is known (bit 8).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// The parent span is remote (bit 9).
const FLAG_IS_REMOTE: u32 = 0x200;
/// W3C trace flags: sampled.
const FLAG_SAMPLED: u32 = 0x01;

/// The instrumentation scope name, and `telemetry.sdk.name`.
pub(super) const SCOPE: &str = "pglink";
pub(super) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The request encoder: the pre-encoded resource and scope, and the output buffer.
#[derive(Debug)]
pub(super) struct RequestEncoder {
    /// The `Resource` message body.
    resource: Vec<u8>,
    /// The `InstrumentationScope` message body.
    scope: Vec<u8>,
    buf: Vec<u8>,
}

impl RequestEncoder {
    /// An encoder whose resource has `attributes` (in order; see [`resource_attributes`]).
    pub(super) fn new(attributes: &[(String, String)]) -> RequestEncoder {
        let mut resource = Vec::new();
        for (key, value) in attributes {
            put_len_prefix(&mut resource, RESOURCE_ATTRIBUTES, kv_str_len(key, value));
            put_kv_str(&mut resource, key, value);
        }
        let mut scope = Vec::new();
        put_str(&mut scope, SCOPE_NAME, SCOPE);
        put_str(&mut scope, SCOPE_VERSION, VERSION);
        RequestEncoder {
            resource,
            scope,
            buf: Vec::new(),
        }
    }

    /// The encoded `ExportTraceServiceRequest` carrying `spans`. The buffer is the encoder's:
    /// give it back with [`Self::recycle`] once sent, so that its allocation is reused.
    pub(super) fn encode(&mut self, spans: &[SpanRecord]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let spans_len: usize = spans
            .iter()
            .map(|s| field_len(SPAN_FIELD_KEY, span_len(s)))
            .sum();
        let scope_spans_len = field_len(SCOPE_SPANS_SCOPE_KEY, self.scope.len()) + spans_len;
        let resource_spans_len = field_len(RESOURCE_SPANS_RESOURCE_KEY, self.resource.len())
            + field_len(RESOURCE_SPANS_SCOPE_SPANS_KEY, scope_spans_len);
        buf.reserve(field_len(REQUEST_KEY, resource_spans_len));

        put_len_prefix(&mut buf, REQUEST_RESOURCE_SPANS, resource_spans_len);
        put_len_prefix(&mut buf, RESOURCE_SPANS_RESOURCE, self.resource.len());
        buf.extend_from_slice(&self.resource);
        put_len_prefix(&mut buf, RESOURCE_SPANS_SCOPE_SPANS, scope_spans_len);
        put_len_prefix(&mut buf, SCOPE_SPANS_SCOPE, self.scope.len());
        buf.extend_from_slice(&self.scope);
        for span in spans {
            put_len_prefix(&mut buf, SCOPE_SPANS_SPANS, span_len(span));
            put_span(&mut buf, span);
        }
        buf
    }

    /// Takes back a buffer [`Self::encode`] returned, for its allocation.
    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.buf.capacity() {
            self.buf = buf;
        }
    }
}

/// The resource attributes: `telemetry.sdk.*`, then `OTEL_RESOURCE_ATTRIBUTES` (`env`), then
/// `service.name`; a later key replaces an earlier one.
pub(super) fn resource_attributes(service_name: &str, env: Option<&str>) -> Vec<(String, String)> {
    let mut attributes: Vec<(String, String)> = vec![
        ("telemetry.sdk.name".into(), SCOPE.into()),
        ("telemetry.sdk.language".into(), "rust".into()),
        ("telemetry.sdk.version".into(), VERSION.into()),
    ];
    let mut set = |key: String, value: String| {
        if let Some(slot) = attributes.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            attributes.push((key, value));
        }
    };
    for entry in env.unwrap_or("").split(',') {
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        let key = percent_decode(key.trim());
        if key.is_empty() {
            continue;
        }
        set(key, percent_decode(value.trim()));
    }
    set("service.name".into(), service_name.to_owned());
    attributes
}

/// `%XX` sequences decoded (the W3C Baggage octet encoding `OTEL_RESOURCE_ATTRIBUTES` uses);
/// a `%` not followed by two hex digits is kept as it is, and so are bytes that do not
/// decode to UTF-8 (replaced).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

// Keys (tag and wire type) of the length-delimited fields whose sizes are summed.
const REQUEST_KEY: u32 = key(REQUEST_RESOURCE_SPANS, LEN);
const RESOURCE_SPANS_RESOURCE_KEY: u32 = key(RESOURCE_SPANS_RESOURCE, LEN);
const RESOURCE_SPANS_SCOPE_SPANS_KEY: u32 = key(RESOURCE_SPANS_SCOPE_SPANS, LEN);
const SCOPE_SPANS_SCOPE_KEY: u32 = key(SCOPE_SPANS_SCOPE, LEN);
const SPAN_FIELD_KEY: u32 = key(SCOPE_SPANS_SPANS, LEN);

const fn key(field: u32, wire_type: u32) -> u32 {
    field << 3 | wire_type
}

/// Bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    ((((v | 1).leading_zeros() ^ 63) * 9 + 73) / 64) as usize
}

/// Bytes of a length-delimited field: key, length, body.
fn field_len(key: u32, len: usize) -> usize {
    varint_len(u64::from(key)) + varint_len(len as u64) + len
}

/// Bytes of a string field written only when not empty (proto3 default).
fn str_field_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(key(field, LEN), s.len())
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(buf, u64::from(key(field, wire_type)));
}

/// The key and length of a length-delimited field; its body follows.
fn put_len_prefix(buf: &mut Vec<u8>, field: u32, len: usize) {
    put_key(buf, field, LEN);
    put_varint(buf, len as u64);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len_prefix(buf, field, bytes.len());
    buf.extend_from_slice(bytes);
}

/// A string field, omitted when empty.
fn put_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(buf, field, s.as_bytes());
    }
}

fn put_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Nanoseconds since the Unix epoch; 0 before it, saturated far after.
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, crate::observe::metrics::nanos)
}

fn kind_code(kind: SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

fn span_flags(span: &SpanRecord) -> u32 {
    let mut flags = FLAG_HAS_IS_REMOTE;
    if span.sampled {
        flags |= FLAG_SAMPLED;
    }
    if span.parent_span_id.is_some() && span.parent_is_remote {
        flags |= FLAG_IS_REMOTE;
    }
    flags
}

/// (start, end) in nanoseconds, the end no earlier than the start.
fn span_times(span: &SpanRecord) -> (u64, u64) {
    let start = unix_nanos(span.start);
    (start, unix_nanos(span.end).max(start))
}

fn status_parts(status: &SpanStatus) -> (u64, &str) {
    match status {
        SpanStatus::Unset => (0, ""),
        SpanStatus::Ok => (1, ""),
        SpanStatus::Error(message) => (2, message),
    }
}

fn status_len(status: &SpanStatus) -> usize {
    let (code, message) = status_parts(status);
    str_field_len(STATUS_MESSAGE, message) + if code == 0 { 0 } else { 1 + varint_len(code) }
}

fn any_len(value: &AttrValue) -> usize {
    // Every AnyValue key is one byte.
    1 + match value {
        AttrValue::Str(s) => varint_len(s.len() as u64) + s.len(),
        AttrValue::Static(s) => varint_len(s.len() as u64) + s.len(),
        AttrValue::Shared(s) => varint_len(s.len() as u64) + s.len(),
        AttrValue::Int(i) => varint_len(*i as u64),
        AttrValue::Bool(_) => 1,
        AttrValue::F64(_) => 8,
    }
}

fn kv_len(key_name: &str, value: &AttrValue) -> usize {
    str_field_len(KV_KEY, key_name) + field_len(key(KV_VALUE, LEN), any_len(value))
}

fn kv_str_len(key_name: &str, value: &str) -> usize {
    let any = 1 + varint_len(value.len() as u64) + value.len();
    str_field_len(KV_KEY, key_name) + field_len(key(KV_VALUE, LEN), any)
}

fn attributes_len(field: u32, attributes: &[(&'static str, AttrValue)]) -> usize {
    attributes
        .iter()
        .map(|(k, v)| field_len(key(field, LEN), kv_len(k, v)))
        .sum()
}

fn event_len(event: &SpanEventRecord) -> usize {
    let time = unix_nanos(event.time);
    (if time == 0 { 0 } else { 1 + 8 })
        + str_field_len(EVENT_NAME, &event.name)
        + attributes_len(EVENT_ATTRIBUTES, &event.attributes)
}

/// Bytes of the `Span` message body.
fn span_len(span: &SpanRecord) -> usize {
    let (start, end) = span_times(span);
    let fixed64 = |v: u64| if v == 0 { 0 } else { 1 + 8 };
    (1 + 1 + 16)
        + (1 + 1 + 8)
        + span.parent_span_id.map_or(0, |_| 1 + 1 + 8)
        + str_field_len(SPAN_NAME, &span.name)
        + (1 + varint_len(kind_code(span.kind)))
        + fixed64(start)
        + fixed64(end)
        + span
            .shared_attributes
            .as_deref()
            .map_or(0, |a| attributes_len(SPAN_ATTRIBUTES, a))
        + attributes_len(SPAN_ATTRIBUTES, &span.attributes)
        + span
            .events
            .iter()
            .map(|e| field_len(key(SPAN_EVENTS, LEN), event_len(e)))
            .sum::<usize>()
        + field_len(key(SPAN_STATUS, LEN), status_len(&span.status))
        + (2 + 4)
}

fn put_any(buf: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Str(s) => put_bytes(buf, ANY_STRING, s.as_bytes()),
        AttrValue::Static(s) => put_bytes(buf, ANY_STRING, s.as_bytes()),
        AttrValue::Shared(s) => put_bytes(buf, ANY_STRING, s.as_bytes()),
        AttrValue::Int(i) => {
            put_key(buf, ANY_INT, VARINT);
            put_varint(buf, *i as u64);
        }
        AttrValue::Bool(b) => {
            put_key(buf, ANY_BOOL, VARINT);
            buf.push(u8::from(*b));
        }
        AttrValue::F64(f) => put_fixed64(buf, ANY_DOUBLE, f.to_bits()),
    }
}

fn put_kv_str(buf: &mut Vec<u8>, key_name: &str, value: &str) {
    put_str(buf, KV_KEY, key_name);
    put_len_prefix(
        buf,
        KV_VALUE,
        1 + varint_len(value.len() as u64) + value.len(),
    );
    put_bytes(buf, ANY_STRING, value.as_bytes());
}

fn put_attributes(buf: &mut Vec<u8>, field: u32, attributes: &[(&'static str, AttrValue)]) {
    for (k, v) in attributes {
        put_len_prefix(buf, field, kv_len(k, v));
        put_str(buf, KV_KEY, k);
        put_len_prefix(buf, KV_VALUE, any_len(v));
        put_any(buf, v);
    }
}

fn put_event(buf: &mut Vec<u8>, event: &SpanEventRecord) {
    let time = unix_nanos(event.time);
    if time != 0 {
        put_fixed64(buf, EVENT_TIME, time);
    }
    put_str(buf, EVENT_NAME, &event.name);
    put_attributes(buf, EVENT_ATTRIBUTES, &event.attributes);
}

/// The `Span` message body, [`span_len`] bytes.
fn put_span(buf: &mut Vec<u8>, span: &SpanRecord) {
    let (start, end) = span_times(span);
    put_bytes(buf, SPAN_TRACE_ID, &span.trace_id);
    put_bytes(buf, SPAN_SPAN_ID, &span.span_id);
    if let Some(parent) = &span.parent_span_id {
        put_bytes(buf, SPAN_PARENT_SPAN_ID, parent);
    }
    put_str(buf, SPAN_NAME, &span.name);
    put_key(buf, SPAN_KIND, VARINT);
    put_varint(buf, kind_code(span.kind));
    if start != 0 {
        put_fixed64(buf, SPAN_START, start);
    }
    if end != 0 {
        put_fixed64(buf, SPAN_END, end);
    }
    if let Some(shared) = span.shared_attributes.as_deref() {
        put_attributes(buf, SPAN_ATTRIBUTES, shared);
    }
    put_attributes(buf, SPAN_ATTRIBUTES, &span.attributes);
    for event in &span.events {
        put_len_prefix(buf, SPAN_EVENTS, event_len(event));
        put_event(buf, event);
    }
    put_len_prefix(buf, SPAN_STATUS, status_len(&span.status));
    let (code, message) = status_parts(&span.status);
    put_str(buf, STATUS_MESSAGE, message);
    if code != 0 {
        put_key(buf, STATUS_CODE, VARINT);
        put_varint(buf, code);
    }
    // Last, in field order, as prost writes it (a decoder takes fields in any order).
    put_key(buf, SPAN_FLAGS, FIXED32);
    buf.extend_from_slice(&span_flags(span).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
    use prost::Message;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)
    }

    fn full_span() -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            parent_is_remote: true,
            name: "transaction ünïcødé ✓".into(),
            kind: SpanKind::Server,
            start: t0(),
            end: t0() - Duration::from_secs(1), // a clock step back: clamped
            shared_attributes: Some(Arc::from(vec![
                ("shared.a", AttrValue::Shared(Arc::from("sa"))),
                ("shared.n", AttrValue::Int(3)),
            ])),
            attributes: vec![
                ("db.system", AttrValue::Static("postgresql")),
                ("db.name", AttrValue::Str("bäse".into())),
                ("db.user", AttrValue::Shared(Arc::from("ü"))),
                ("empty", AttrValue::Str(String::new())),
                ("n", AttrValue::Int(7)),
                ("neg", AttrValue::Int(-5)),
                ("zero", AttrValue::Int(0)),
                ("min", AttrValue::Int(i64::MIN)),
                ("yes", AttrValue::Bool(true)),
                ("no", AttrValue::Bool(false)),
                ("f", AttrValue::F64(0.25)),
                ("f0", AttrValue::F64(0.0)),
                ("", AttrValue::Str("no key".into())),
                ("long", AttrValue::Str("x".repeat(300))),
            ],
            events: vec![
                SpanEventRecord {
                    name: "pool.wait".into(),
                    time: t0() + Duration::from_millis(1),
                    attributes: vec![("wait.seconds", AttrValue::F64(0.5))],
                },
                SpanEventRecord {
                    name: String::new(),
                    time: UNIX_EPOCH,
                    attributes: Vec::new(),
                },
            ],
            status: SpanStatus::Error("deadlock détecté".into()),
            sampled: true,
        }
    }

    fn bare_span() -> SpanRecord {
        SpanRecord {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            parent_span_id: None,
            parent_is_remote: true, // no parent: not remote
            name: String::new(),
            kind: SpanKind::Internal,
            start: UNIX_EPOCH - Duration::from_secs(5),
            end: UNIX_EPOCH,
            shared_attributes: None,
            attributes: Vec::new(),
            events: Vec::new(),
            status: SpanStatus::Unset,
            sampled: false,
        }
    }

    fn decode(bytes: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(bytes).expect("a valid ExportTraceServiceRequest")
    }

    fn any(v: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: any(v),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), n, "{v}");
        }
    }

    #[test]
    fn request_decodes_with_every_field() {
        let mut encoder = RequestEncoder::new(&resource_attributes("svc", None));
        let bytes = encoder.encode(&[full_span(), bare_span()]);
        let request = decode(&bytes);
        assert_eq!(request.resource_spans.len(), 1);
        let rs = &request.resource_spans[0];
        let resource = rs.resource.as_ref().unwrap();
        assert_eq!(
            resource.attributes,
            vec![
                kv("telemetry.sdk.name", s("pglink")),
                kv("telemetry.sdk.language", s("rust")),
                kv("telemetry.sdk.version", s(VERSION)),
                kv("service.name", s("svc")),
            ]
        );
        assert_eq!(rs.scope_spans.len(), 1);
        let ss = &rs.scope_spans[0];
        let scope = ss.scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("pglink", VERSION)
        );
        assert_eq!(ss.spans.len(), 2);

        let start = 1_700_000_000_123_456_789;
        let expected = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            flags: 0x301,
            name: "transaction ünïcødé ✓".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start,
            attributes: vec![
                kv("shared.a", s("sa")),
                kv("shared.n", any_value::Value::IntValue(3)),
                kv("db.system", s("postgresql")),
                kv("db.name", s("bäse")),
                kv("db.user", s("ü")),
                kv("empty", s("")),
                kv("n", any_value::Value::IntValue(7)),
                kv("neg", any_value::Value::IntValue(-5)),
                kv("zero", any_value::Value::IntValue(0)),
                kv("min", any_value::Value::IntValue(i64::MIN)),
                kv("yes", any_value::Value::BoolValue(true)),
                kv("no", any_value::Value::BoolValue(false)),
                kv("f", any_value::Value::DoubleValue(0.25)),
                kv("f0", any_value::Value::DoubleValue(0.0)),
                kv("", s("no key")),
                kv("long", s(&"x".repeat(300))),
            ],
            events: vec![
                span::Event {
                    time_unix_nano: start + 1_000_000,
                    name: "pool.wait".into(),
                    attributes: vec![kv("wait.seconds", any_value::Value::DoubleValue(0.5))],
                    dropped_attributes_count: 0,
                },
                span::Event::default(),
            ],
            status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                message: "deadlock détecté".into(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        };
        assert_eq!(ss.spans[0], expected);

        let bare = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            flags: 0x100,
            kind: span::SpanKind::Internal as i32,
            status: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(ss.spans[1], bare);
        // What prost itself would write for the same message: the encoding is canonical.
        assert_eq!(bytes, request.encode_to_vec());
    }

    #[test]
    fn kinds_statuses_and_flags() {
        let mut encoder = RequestEncoder::new(&[]);
        let mut spans = Vec::new();
        for (kind, status, sampled, parent, remote) in [
            (SpanKind::Client, SpanStatus::Ok, false, Some([9; 8]), false),
            (SpanKind::Internal, SpanStatus::Unset, true, None, false),
            (
                SpanKind::Server,
                SpanStatus::Error(String::new()),
                true,
                Some([8; 8]),
                true,
            ),
        ] {
            let mut span = bare_span();
            span.kind = kind;
            span.status = status;
            span.sampled = sampled;
            span.parent_span_id = parent;
            span.parent_is_remote = remote;
            span.end = t0();
            spans.push(span);
        }
        let request = decode(&encoder.encode(&spans));
        let rs = &request.resource_spans[0];
        assert!(rs.resource.as_ref().unwrap().attributes.is_empty());
        let got = &rs.scope_spans[0].spans;
        let summary: Vec<_> = got
            .iter()
            .map(|s| {
                let st = s.status.clone().unwrap();
                (
                    s.kind,
                    st.code,
                    s.flags,
                    s.parent_span_id.len(),
                    s.end_time_unix_nano,
                )
            })
            .collect();
        let end = 1_700_000_000_123_456_789;
        assert_eq!(
            summary,
            vec![
                (3, 1, 0x100, 8, end),
                (1, 0, 0x101, 0, end),
                (2, 2, 0x301, 8, end),
            ]
        );
    }

    #[test]
    fn empty_batch_and_buffer_reuse() {
        let mut encoder = RequestEncoder::new(&resource_attributes("pglink", None));
        let request = decode(&encoder.encode(&[]));
        assert!(request.resource_spans[0].scope_spans[0].spans.is_empty());

        let spans = vec![full_span(); 50];
        let bytes = encoder.encode(&spans);
        let (ptr, cap) = (bytes.as_ptr(), bytes.capacity());
        assert_eq!(
            decode(&bytes).resource_spans[0].scope_spans[0].spans.len(),
            50
        );
        encoder.recycle(bytes);
        let again = encoder.encode(&spans[..10]);
        assert_eq!((again.as_ptr(), again.capacity()), (ptr, cap));
        assert_eq!(
            decode(&again).resource_spans[0].scope_spans[0].spans.len(),
            10
        );
    }

    #[test]
    fn resource_attributes_from_env() {
        let attrs = resource_attributes(
            "svc",
            Some(
                " deployment.environment = prod ,team=db%20ops,bad,=x,service.name=other,k=%zz%4,telemetry.sdk.language=x,u=%C3%BC",
            ),
        );
        let pairs: Vec<(&str, &str)> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("telemetry.sdk.name", "pglink"),
                ("telemetry.sdk.language", "x"),
                ("telemetry.sdk.version", VERSION),
                ("deployment.environment", "prod"),
                ("team", "db ops"),
                ("service.name", "svc"),
                ("k", "%zz%4"),
                ("u", "ü"),
            ]
        );
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(percent_decode("a%"), "a%");
    }
}
