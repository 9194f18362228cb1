//! The span the engine hands over: borrowed, so that building one allocates nothing. It is
//! encoded at once (by `super::encode`) into the reactor's batch of protobuf bytes.

/// One finished span, borrowing everything it names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came from another process (a client's `traceparent`).
    pub parent_is_remote: bool,
    pub name: &'a str,
    pub kind: SpanKind,
    /// Nanoseconds since the Unix epoch (0: unknown, not sent).
    pub start_ns: u64,
    /// Nanoseconds since the Unix epoch; an end before the start is sent as the start.
    pub end_ns: u64,
    /// Attributes many spans share (a session's database, user, addresses), encoded once by
    /// [`SharedAttributes::new`] and copied as they are, before `attributes`.
    pub shared: &'a SharedAttributes,
    pub attributes: &'a [(&'a str, Value<'a>)],
    pub events: &'a [SpanEvent<'a>],
    pub status: SpanStatus<'a>,
    /// The W3C sampled flag carried in the exported span's flags. Sampling itself is the
    /// caller's decision: every span handed over is sent.
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
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    F64(f64),
}

/// A timestamped event inside a span (e.g. `pool.wait` with its duration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpanEvent<'a> {
    pub name: &'a str,
    /// Nanoseconds since the Unix epoch (0: not sent).
    pub time_ns: u64,
    pub attributes: &'a [(&'a str, Value<'a>)],
}

/// A span's status.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum SpanStatus<'a> {
    #[default]
    Unset,
    Ok,
    /// Failed, with a description.
    Error(&'a str),
}

/// Span attributes encoded once (as `Span.attributes` fields) for the many spans that carry
/// them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedAttributes(pub(super) Vec<u8>);

impl SharedAttributes {
    /// None.
    pub const EMPTY: &'static SharedAttributes = &SharedAttributes(Vec::new());

    pub fn new(attributes: &[(&str, Value<'_>)]) -> SharedAttributes {
        let mut bytes = Vec::new();
        super::encode::put_span_attributes(&mut bytes, attributes);
        bytes.shrink_to_fit();
        SharedAttributes(bytes)
    }
}
