//! A hand-written OTLP protobuf encoder.
//!
//! A reactor encodes each finished [`Span`] at once, as a `ScopeSpans.spans` field, into its
//! batch of bytes ([`put_span_field`]); the export thread frames a run of such fields as an
//! `ExportTraceServiceRequest` ([`RequestEncoder::encode`]). The spans' bytes are the
//! request's bytes: nothing is decoded or re-encoded between the two.
//!
//! Field numbers follow `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto` and
//! `collector/trace/v1/trace_service.proto`. A nested message is written as its tag, its
//! length and its bytes. A small one's length (an attribute's, a status's) is computed before
//! its bytes are written, by cheap arithmetic; a span's and an event's are written in bytes
//! kept before their body, once it is written (two for a span, one for an event: the usual
//! sizes; a body of another size is moved to make the length minimal, as prost writes it).
//! So the span is walked once: no scratch buffer, no copy, and no allocation beyond the
//! growth of the output buffer, which is kept between batches.
//!
//! The resource and the instrumentation scope are the same in every request: they are
//! encoded once, at start, and copied into each request; so are a session's shared span
//! attributes ([`super::SharedAttributes`]), once per session.

use super::span::{Span, SpanEvent, SpanKind, SpanStatus, Value};

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
        let attributes: Vec<(&str, Value<'_>)> = attributes
            .iter()
            .map(|(k, v)| (k.as_str(), Value::Str(v)))
            .collect();
        let mut resource = Vec::new();
        put_attributes(&mut resource, RESOURCE_ATTRIBUTES, &attributes);
        let mut scope = Vec::new();
        put_str(&mut scope, SCOPE_NAME, SCOPE);
        put_str(&mut scope, SCOPE_VERSION, VERSION);
        RequestEncoder {
            resource,
            scope,
            buf: Vec::new(),
        }
    }

    /// The encoded `ExportTraceServiceRequest` carrying `spans`: whole `ScopeSpans.spans`
    /// fields, as [`put_span_field`] writes them. The buffer is the encoder's: give it back
    /// with [`Self::recycle`] once sent, so that its allocation is reused.
    #[cfg(test)]
    pub(super) fn encode(&mut self, spans: &[u8]) -> Vec<u8> {
        self.encode_parts(spans, &[])
    }

    /// [`Self::encode`] of the spans of `first` then those of `second`.
    pub(super) fn encode_parts(&mut self, first: &[u8], second: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let scope_spans_len =
            field_len(SCOPE_SPANS_SCOPE_KEY, self.scope.len()) + first.len() + second.len();
        let resource_spans_len = field_len(RESOURCE_SPANS_RESOURCE_KEY, self.resource.len())
            + field_len(RESOURCE_SPANS_SCOPE_SPANS_KEY, scope_spans_len);
        buf.reserve(field_len(REQUEST_KEY, resource_spans_len));

        put_len_prefix(&mut buf, REQUEST_RESOURCE_SPANS, resource_spans_len);
        put_len_prefix(&mut buf, RESOURCE_SPANS_RESOURCE, self.resource.len());
        buf.extend_from_slice(&self.resource);
        put_len_prefix(&mut buf, RESOURCE_SPANS_SCOPE_SPANS, scope_spans_len);
        put_len_prefix(&mut buf, SCOPE_SPANS_SCOPE, self.scope.len());
        buf.extend_from_slice(&self.scope);
        buf.extend_from_slice(first);
        buf.extend_from_slice(second);
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
pub(super) fn percent_decode(s: &str) -> String {
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
#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    ((((v | 1).leading_zeros() ^ 63) * 9 + 73) / 64) as usize
}

/// Bytes of a length-delimited field: key, length, body.
#[inline]
fn field_len(key: u32, len: usize) -> usize {
    varint_len(u64::from(key)) + varint_len(len as u64) + len
}

/// Bytes of a string field written only when not empty (proto3 default).
#[inline]
fn str_field_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(key(field, LEN), s.len())
    }
}

#[inline]
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn put_key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    // One byte for fields 1 to 15, which a constant folds to.
    match u8::try_from(key(field, wire_type)) {
        Ok(k) if k < 0x80 => buf.push(k),
        _ => put_varint(buf, u64::from(key(field, wire_type))),
    }
}

/// The key and length of a length-delimited field; its body follows.
#[inline]
fn put_len_prefix(buf: &mut Vec<u8>, field: u32, len: usize) {
    put_key(buf, field, LEN);
    put_varint(buf, len as u64);
}

#[inline]
fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len_prefix(buf, field, bytes.len());
    buf.extend_from_slice(bytes);
}

/// A string field, omitted when empty.
#[inline]
fn put_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(buf, field, s.as_bytes());
    }
}

#[inline]
fn put_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn kind_code(kind: SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

fn span_flags(span: &Span<'_>) -> u32 {
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
fn span_times(span: &Span<'_>) -> (u64, u64) {
    (span.start_ns, span.end_ns.max(span.start_ns))
}

fn status_parts<'a>(status: &SpanStatus<'a>) -> (u64, &'a str) {
    match *status {
        SpanStatus::Unset => (0, ""),
        SpanStatus::Ok => (1, ""),
        SpanStatus::Error(message) => (2, message),
    }
}

fn status_len(status: &SpanStatus<'_>) -> usize {
    let (code, message) = status_parts(status);
    str_field_len(STATUS_MESSAGE, message) + if code == 0 { 0 } else { 1 + varint_len(code) }
}

#[inline]
fn any_len(value: &Value<'_>) -> usize {
    // Every AnyValue key is one byte.
    1 + match value {
        Value::Str(s) => varint_len(s.len() as u64) + s.len(),
        Value::Int(i) => varint_len(*i as u64),
        Value::Bool(_) => 1,
        Value::F64(_) => 8,
    }
}

#[inline]
fn kv_len(key_name: &str, value: &Value<'_>) -> usize {
    str_field_len(KV_KEY, key_name) + field_len(key(KV_VALUE, LEN), any_len(value))
}

#[inline]
fn put_any(buf: &mut Vec<u8>, value: &Value<'_>) {
    match *value {
        Value::Str(s) => put_bytes(buf, ANY_STRING, s.as_bytes()),
        Value::Int(i) => {
            put_key(buf, ANY_INT, VARINT);
            put_varint(buf, i as u64);
        }
        Value::Bool(b) => {
            put_key(buf, ANY_BOOL, VARINT);
            buf.push(u8::from(b));
        }
        Value::F64(f) => put_fixed64(buf, ANY_DOUBLE, f.to_bits()),
    }
}

fn put_attributes(buf: &mut Vec<u8>, field: u32, attributes: &[(&str, Value<'_>)]) {
    for (k, v) in attributes {
        put_len_prefix(buf, field, kv_len(k, v));
        put_str(buf, KV_KEY, k);
        put_len_prefix(buf, KV_VALUE, any_len(v));
        put_any(buf, v);
    }
}

/// `attributes` as `Span.attributes` fields (for [`super::SharedAttributes`]).
pub(super) fn put_span_attributes(buf: &mut Vec<u8>, attributes: &[(&str, Value<'_>)]) {
    put_attributes(buf, SPAN_ATTRIBUTES, attributes);
}

fn put_event(buf: &mut Vec<u8>, event: &SpanEvent<'_>) {
    if event.time_ns != 0 {
        put_fixed64(buf, EVENT_TIME, event.time_ns);
    }
    put_str(buf, EVENT_NAME, event.name);
    put_attributes(buf, EVENT_ATTRIBUTES, event.attributes);
}

/// A length-delimited field whose body `body` writes: its key, then its length, in the
/// `width` bytes kept for it before the body when it fits them as a varint (the usual case:
/// `width` is picked for the usual size), else in as many as it takes, the body moved.
#[inline]
fn put_message(buf: &mut Vec<u8>, field: u32, width: usize, body: impl FnOnce(&mut Vec<u8>)) {
    put_key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + width, 0);
    body(buf);
    let len = (buf.len() - at - width) as u64;
    if varint_len(len) == width
        && let Some(slot) = buf.get_mut(at..at + width)
    {
        let mut v = len;
        for (i, b) in slot.iter_mut().enumerate() {
            let more = if i + 1 < width { 0x80 } else { 0 };
            *b = (v & 0x7f) as u8 | more;
            v >>= 7;
        }
    } else {
        let (varint, n) = varint_bytes(len);
        let varint = varint.get(..n).unwrap_or_default();
        buf.splice(at..at + width, varint.iter().copied());
    }
}

/// `v` as a varint, in the first bytes of the array (how many: the second value).
#[inline]
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut n = 0;
    for b in bytes.iter_mut() {
        n += 1;
        if v < 0x80 {
            *b = v as u8;
            break;
        }
        *b = (v as u8) | 0x80;
        v >>= 7;
    }
    (bytes, n)
}

/// `span` as a `ScopeSpans.spans` field: its key, its length and the `Span` message.
pub(super) fn put_span_field(buf: &mut Vec<u8>, span: &Span<'_>) {
    // A span is 128 bytes to 16 KiB long but for a long query text: two bytes of length.
    put_message(buf, SCOPE_SPANS_SPANS, 2, |buf| put_span(buf, span));
}

/// The `Span` message body.
fn put_span(buf: &mut Vec<u8>, span: &Span<'_>) {
    let (start, end) = span_times(span);
    put_bytes(buf, SPAN_TRACE_ID, &span.trace_id);
    put_bytes(buf, SPAN_SPAN_ID, &span.span_id);
    if let Some(parent) = &span.parent_span_id {
        put_bytes(buf, SPAN_PARENT_SPAN_ID, parent);
    }
    put_str(buf, SPAN_NAME, span.name);
    put_key(buf, SPAN_KIND, VARINT);
    put_varint(buf, kind_code(span.kind));
    if start != 0 {
        put_fixed64(buf, SPAN_START, start);
    }
    if end != 0 {
        put_fixed64(buf, SPAN_END, end);
    }
    buf.extend_from_slice(&span.shared.0);
    put_attributes(buf, SPAN_ATTRIBUTES, span.attributes);
    for event in span.events {
        put_message(buf, SPAN_EVENTS, 1, |buf| put_event(buf, event));
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

/// The end of the first `n` span fields of `spans` (as [`put_span_field`] writes them), or
/// of all of them when there are fewer. Bytes that are not a whole span field (never there:
/// only `put_span_field` writes a batch) are taken with the rest, to the end.
pub(super) fn span_fields_end(spans: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        let Some(rest) = spans.get(at..) else { break };
        let Some((&field_key, rest)) = rest.split_first() else {
            break;
        };
        let Some((len, varint)) = read_varint(rest) else {
            return spans.len();
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| (at + 1 + varint).checked_add(len));
        match end {
            Some(end) if u32::from(field_key) == SPAN_FIELD_KEY && end <= spans.len() => at = end,
            _ => return spans.len(),
        }
    }
    at
}

/// The end and the number of the whole span fields at the start of `spans` (as
/// [`put_span_field`] writes them) that fit in `max_bytes`.
pub(super) fn span_fields_within(spans: &[u8], max_bytes: usize) -> (usize, usize) {
    let (mut at, mut n) = (0, 0);
    loop {
        let end = at + span_fields_end(spans.get(at..).unwrap_or_default(), 1);
        if end == at || end > max_bytes {
            return (at, n);
        }
        at = end;
        n += 1;
    }
}

/// A varint and its length in bytes.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::otlp::SharedAttributes;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{Span as ProtoSpan, span, status};
    use prost::Message;

    const T0: u64 = 1_700_000_000_123_456_789;

    const FULL_ATTRIBUTES: &[(&str, Value<'static>)] = &[
        ("db.system", Value::Str("postgresql")),
        ("db.name", Value::Str("bäse")),
        ("db.user", Value::Str("ü")),
        ("empty", Value::Str("")),
        ("n", Value::Int(7)),
        ("neg", Value::Int(-5)),
        ("zero", Value::Int(0)),
        ("min", Value::Int(i64::MIN)),
        ("yes", Value::Bool(true)),
        ("no", Value::Bool(false)),
        ("f", Value::F64(0.25)),
        ("f0", Value::F64(0.0)),
        ("", Value::Str("no key")),
    ];

    const FULL_EVENTS: &[SpanEvent<'static>] = &[
        SpanEvent {
            name: "pool.wait",
            time_ns: T0 + 1_000_000,
            attributes: &[("wait.seconds", Value::F64(0.5))],
        },
        SpanEvent {
            name: "",
            time_ns: 0,
            attributes: &[],
        },
    ];

    fn shared() -> SharedAttributes {
        SharedAttributes::new(&[("shared.a", Value::Str("sa")), ("shared.n", Value::Int(3))])
    }

    /// Every field, with `attributes` (which then get a long one too).
    fn full_span<'a>(
        shared: &'a SharedAttributes,
        attributes: &'a [(&'a str, Value<'a>)],
    ) -> Span<'a> {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            parent_is_remote: true,
            name: "transaction ünïcødé ✓",
            kind: SpanKind::Server,
            start_ns: T0,
            end_ns: T0 - 1_000_000_000, // a clock step back: clamped
            shared,
            attributes,
            events: FULL_EVENTS,
            status: SpanStatus::Error("deadlock détecté"),
            sampled: true,
        }
    }

    fn bare_span() -> Span<'static> {
        Span {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            parent_span_id: None,
            parent_is_remote: true, // no parent: not remote
            name: "",
            kind: SpanKind::Internal,
            start_ns: 0,
            end_ns: 0,
            shared: SharedAttributes::EMPTY,
            attributes: &[],
            events: &[],
            status: SpanStatus::Unset,
            sampled: false,
        }
    }

    /// The span fields of `spans`, as a batch holds them.
    fn fields(spans: &[Span<'_>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for span in spans {
            put_span_field(&mut bytes, span);
        }
        bytes
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
        let long = "x".repeat(300);
        let mut attributes = FULL_ATTRIBUTES.to_vec();
        attributes.push(("long", Value::Str(&long)));
        let shared = shared();
        let bytes = encoder.encode(&fields(&[full_span(&shared, &attributes), bare_span()]));
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

        let start = T0;
        let expected = ProtoSpan {
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

        let bare = ProtoSpan {
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
                SpanStatus::Error(""),
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
            span.end_ns = T0;
            spans.push(span);
        }
        let request = decode(&encoder.encode(&fields(&spans)));
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

        let shared = shared();
        let spans = fields(&vec![full_span(&shared, FULL_ATTRIBUTES); 50]);
        let bytes = encoder.encode(&spans);
        let (ptr, cap) = (bytes.as_ptr(), bytes.capacity());
        assert_eq!(
            decode(&bytes).resource_spans[0].scope_spans[0].spans.len(),
            50
        );
        encoder.recycle(bytes);
        let again = encoder.encode(&spans[..span_fields_end(&spans, 10)]);
        assert_eq!((again.as_ptr(), again.capacity()), (ptr, cap));
        assert_eq!(
            decode(&again).resource_spans[0].scope_spans[0].spans.len(),
            10
        );
    }

    #[test]
    fn span_fields_split_where_spans_end() {
        let shared = shared();
        let long = "y".repeat(200);
        let attributes = [("long", Value::Str(&long))];
        let spans = [bare_span(), full_span(&shared, &attributes), bare_span()];
        let bytes = fields(&spans);
        let ends: Vec<usize> = (0..5).map(|n| span_fields_end(&bytes, n)).collect();
        let one = fields(&spans[..1]).len();
        let two = fields(&spans[..2]).len();
        assert_eq!(ends, vec![0, one, two, bytes.len(), bytes.len()]);
        // Each part is a valid run of spans.
        let mut encoder = RequestEncoder::new(&[]);
        let part = decode(&encoder.encode(&bytes[one..two]));
        assert_eq!(
            part.resource_spans[0].scope_spans[0].spans[0].span_id,
            vec![2; 8]
        );
        // Bytes that are not span fields are taken whole.
        assert_eq!(span_fields_end(b"\x0a\x01z", 1), 3);
        assert_eq!(span_fields_end(b"\x12\x05ab", 1), 4);
        assert_eq!(span_fields_end(b"\x12\xff", 1), 2);
        assert_eq!(span_fields_end(b"", 3), 0);
        assert_eq!(span_fields_within(b"\x12\x01a\x12\x02bc", 0), (0, 0));
        assert_eq!(span_fields_within(b"\x12\x01a\x12\x02bc", 6), (3, 1));
        assert_eq!(span_fields_within(b"\x12\x01a\x12\x02bc", 7), (7, 2));
        assert_eq!(span_fields_within(b"\x12\x01a\x12\x02bc", 100), (7, 2));
        assert_eq!(span_fields_within(b"", 100), (0, 0));
    }

    #[test]
    fn a_span_of_any_length_has_its_length_in_as_few_bytes_as_it_takes() {
        // Bodies either side of one and two bytes of length (127 | 128, 16383 | 16384) and of
        // three (2097151 | 2097152): the length is written in place or the body is moved.
        let lengths = (60..120).chain(16_300..16_360).chain(2_097_080..2_097_130);
        for n in lengths.step_by(3) {
            let name = "n".repeat(n);
            let span = Span {
                name: &name,
                ..bare_span()
            };
            let bytes = fields(&[span]);
            let request = decode(&RequestEncoder::new(&[]).encode(&bytes));
            let decoded = &request.resource_spans[0].scope_spans[0].spans[0];
            assert_eq!(decoded.name.len(), n);
            // As prost writes the same span: the field key, a minimal length, the body.
            let mut want = vec![SPAN_FIELD_KEY as u8];
            decoded.encode_length_delimited(&mut want).unwrap();
            assert_eq!(bytes, want, "a name of {n} bytes");
        }
        // Events and attributes of every kind, and an event of more than 127 bytes.
        let shared = shared();
        let long = "e".repeat(300);
        let wait = [("why", Value::Str(&long))];
        let events = [
            FULL_EVENTS[0],
            SpanEvent {
                name: "long",
                time_ns: T0,
                attributes: &wait,
            },
        ];
        let span = Span {
            events: &events,
            ..full_span(&shared, FULL_ATTRIBUTES)
        };
        let bytes = fields(&[span]);
        let request = decode(&RequestEncoder::new(&[]).encode(&bytes));
        let decoded = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(decoded.events.len(), 2);
        let mut want = vec![SPAN_FIELD_KEY as u8];
        decoded.encode_length_delimited(&mut want).unwrap();
        assert_eq!(bytes, want);
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
