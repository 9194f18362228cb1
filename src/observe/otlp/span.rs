//! The span record the engine hands over (encoded by `super::encode`).

use std::time::SystemTime;

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
    /// Attributes many spans share (a session's database, user, addresses), sent before
    /// `attributes`: one reference count per span instead of a copy of each.
    pub shared_attributes: Option<std::sync::Arc<[(&'static str, AttrValue)]>>,
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
