//! ErrorResponse ('E') and NoticeResponse ('N'): the field list view, severities, and the builder
//! for the errors and notices the proxy itself sends.

use std::fmt;

use super::{
    DecodeError, SqlState,
    cursor::Cursor,
    write::{put_cstr, write_message},
};

/// Field type codes of ErrorResponse / NoticeResponse.
pub mod field {
    /// Severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (9.6+).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
    pub const POSITION: u8 = b'P';
    pub const INTERNAL_POSITION: u8 = b'p';
    pub const INTERNAL_QUERY: u8 = b'q';
    pub const WHERE: u8 = b'W';
    pub const SCHEMA: u8 = b's';
    pub const TABLE: u8 = b't';
    pub const COLUMN: u8 = b'c';
    pub const DATA_TYPE: u8 = b'd';
    pub const CONSTRAINT: u8 = b'n';
    pub const FILE: u8 = b'F';
    pub const LINE: u8 = b'L';
    pub const ROUTINE: u8 = b'R';
}

/// Message severity (the non-localized 'V' field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    /// The wire spelling (`"ERROR"`, `"FATAL"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }

    /// Parse the non-localized spelling.
    pub fn from_bytes(s: &[u8]) -> Option<Severity> {
        Some(match s {
            b"ERROR" => Severity::Error,
            b"FATAL" => Severity::Fatal,
            b"PANIC" => Severity::Panic,
            b"WARNING" => Severity::Warning,
            b"NOTICE" => Severity::Notice,
            b"DEBUG" => Severity::Debug,
            b"INFO" => Severity::Info,
            b"LOG" => Severity::Log,
            _ => return None,
        })
    }

    /// FATAL and PANIC end the session.
    pub fn ends_session(self) -> bool {
        matches!(self, Severity::Fatal | Severity::Panic)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated field list of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// The fields without the final terminator; validated.
    raw: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    /// Validate a body: `(code: u8 != 0, value: cstr)*` then a 0 byte, nothing after it.
    pub fn decode(tag: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(tag, body);
        loop {
            let code = c.u8("field type")?;
            if code == 0 {
                break;
            }
            c.cstr("field value")?;
        }
        c.finish()?;
        let raw = body.split_last().map(|(_, raw)| raw).unwrap_or_default();
        Ok(ErrorFields { raw })
    }

    /// All fields in wire order: `(field type, value)`.
    pub fn iter(&self) -> FieldIter<'a> {
        FieldIter(Cursor::new(0, self.raw))
    }

    /// The first field of type `code`.
    pub fn get(&self, code: u8) -> Option<&'a [u8]> {
        self.iter().find(|&(c, _)| c == code).map(|(_, v)| v)
    }

    /// The non-localized severity ('V'), falling back to 'S' (servers before 9.6).
    pub fn severity(&self) -> Option<&'a [u8]> {
        self.get(field::SEVERITY_NONLOCALIZED)
            .or_else(|| self.get(field::SEVERITY))
    }

    /// [`severity`](Self::severity) parsed.
    pub fn severity_kind(&self) -> Option<Severity> {
        self.severity().and_then(Severity::from_bytes)
    }

    /// The raw SQLSTATE field ('C').
    pub fn code(&self) -> Option<&'a [u8]> {
        self.get(field::CODE)
    }

    /// The SQLSTATE, if the 'C' field is a well-formed code.
    pub fn sqlstate(&self) -> Option<SqlState> {
        self.code().and_then(SqlState::from_bytes)
    }

    /// The primary message ('M').
    pub fn message(&self) -> Option<&'a [u8]> {
        self.get(field::MESSAGE)
    }

    pub fn detail(&self) -> Option<&'a [u8]> {
        self.get(field::DETAIL)
    }

    pub fn hint(&self) -> Option<&'a [u8]> {
        self.get(field::HINT)
    }

    /// Append as a message with `tag` ([`ERROR`](super::backend::tag::ERROR_RESPONSE) or
    /// [`NOTICE`](super::backend::tag::NOTICE_RESPONSE)).
    pub fn encode(&self, out: &mut Vec<u8>, tag: u8) {
        write_message(out, tag, |b| {
            b.extend_from_slice(self.raw);
            b.push(0);
        });
    }
}

/// Iterator over `(field type, value)` pairs of a validated [`ErrorFields`].
#[derive(Debug, Clone)]
pub struct FieldIter<'a>(Cursor<'a>);

impl<'a> Iterator for FieldIter<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        if self.0.is_empty() {
            return None;
        }
        let field = (|| Ok::<_, DecodeError>((self.0.u8("")?, self.0.cstr("")?)))().ok();
        if field.is_none() {
            self.0 = Cursor::new(0, &[]);
        }
        field
    }
}

/// An error or notice the proxy sends. Messages are UTF-8 (pglink's own texts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBuilder<'a> {
    pub severity: Severity,
    pub code: SqlState,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
    /// The server function that raised it, for errors pglink raises in PostgreSQL's place
    /// (drivers recognise some errors by it).
    pub routine: Option<&'a str>,
}

impl<'a> ErrorBuilder<'a> {
    pub fn new(severity: Severity, code: SqlState, message: &'a str) -> Self {
        ErrorBuilder {
            severity,
            code,
            message,
            detail: None,
            hint: None,
            routine: None,
        }
    }

    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }

    pub fn routine(mut self, routine: &'a str) -> Self {
        self.routine = Some(routine);
        self
    }

    /// Append as an ErrorResponse.
    pub fn encode_error(&self, out: &mut Vec<u8>) {
        self.encode(out, super::backend::tag::ERROR_RESPONSE);
    }

    /// Append as a NoticeResponse.
    pub fn encode_notice(&self, out: &mut Vec<u8>) {
        self.encode(out, super::backend::tag::NOTICE_RESPONSE);
    }

    fn encode(&self, out: &mut Vec<u8>, tag: u8) {
        write_message(out, tag, |b| {
            // Texts may quote peer input; a NUL would end the field early, so it is shown
            // as `\0` instead.
            let mut put = |code: u8, value: &[u8]| {
                b.push(code);
                if value.contains(&0) {
                    let mut escaped = Vec::with_capacity(value.len() + 2);
                    for &c in value {
                        match c {
                            0 => escaped.extend_from_slice(b"\\0"),
                            c => escaped.push(c),
                        }
                    }
                    put_cstr(b, &escaped);
                } else {
                    put_cstr(b, value);
                }
            };
            put(field::SEVERITY, self.severity.as_str().as_bytes());
            put(
                field::SEVERITY_NONLOCALIZED,
                self.severity.as_str().as_bytes(),
            );
            put(field::CODE, self.code.as_str().as_bytes());
            put(field::MESSAGE, self.message.as_bytes());
            if let Some(d) = self.detail {
                put(field::DETAIL, d.as_bytes());
            }
            if let Some(h) = self.hint {
                put(field::HINT, h.as_bytes());
            }
            if let Some(r) = self.routine {
                put(field::ROUTINE, r.as_bytes());
            }
            b.push(0);
        });
    }
}

/// Append an ErrorResponse with just severity, code and message.
pub fn error_response(out: &mut Vec<u8>, severity: Severity, code: SqlState, message: &str) {
    ErrorBuilder::new(severity, code, message).encode_error(out);
}

/// Append a NoticeResponse with just severity, code and message.
pub fn notice_response(out: &mut Vec<u8>, severity: Severity, code: SqlState, message: &str) {
    ErrorBuilder::new(severity, code, message).encode_notice(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_a_text_is_escaped_not_a_field_end() {
        let mut out = Vec::new();
        ErrorBuilder::new(
            Severity::Error,
            SqlState::PROTOCOL_VIOLATION,
            "type \0 here",
        )
        .encode_error(&mut out);
        let fields = ErrorFields::decode(b'E', &out[5..]).unwrap();
        assert_eq!(fields.message(), Some(&b"type \\0 here"[..]));
    }

    #[test]
    fn builder_writes_both_severities_and_round_trips() {
        let mut out = Vec::new();
        ErrorBuilder::new(
            Severity::Fatal,
            SqlState::TOO_MANY_CONNECTIONS,
            "pglink: too many clients",
        )
        .hint("raise max_client_connections")
        .encode_error(&mut out);
        let expected: &[u8] = b"E\0\0\0\x52SFATAL\0VFATAL\0C53300\0Mpglink: too many clients\0\
            Hraise max_client_connections\0\0";
        assert_eq!(out, expected);
        let f = ErrorFields::decode(b'E', &out[5..]).unwrap();
        assert_eq!(f.severity_kind(), Some(Severity::Fatal));
        assert_eq!(f.sqlstate(), Some(SqlState::TOO_MANY_CONNECTIONS));
        assert_eq!(f.message(), Some(&b"pglink: too many clients"[..]));
        assert_eq!(f.hint(), Some(&b"raise max_client_connections"[..]));
        assert_eq!(f.detail(), None);
        let mut again = Vec::new();
        f.encode(&mut again, b'E');
        assert_eq!(again, out);
    }

    #[test]
    fn severity_falls_back_to_localized_field() {
        let f = ErrorFields::decode(b'N', b"SNOTICE\0Mhi\0\0").unwrap();
        assert_eq!(f.severity_kind(), Some(Severity::Notice));
        assert_eq!(f.iter().count(), 2);
        let mut out = Vec::new();
        notice_response(&mut out, Severity::Warning, SqlState::WARNING, "w");
        assert_eq!(
            ErrorFields::decode(b'N', &out[5..]).unwrap().severity(),
            Some(&b"WARNING"[..])
        );
        assert!(Severity::Panic.ends_session() && !Severity::Error.ends_session());
    }

    #[test]
    fn rejects_malformed_field_lists() {
        assert!(matches!(
            ErrorFields::decode(b'E', b"SERROR\0"),
            Err(DecodeError::UnexpectedEof { .. })
        ));
        assert!(matches!(
            ErrorFields::decode(b'E', b"SERROR"),
            Err(DecodeError::MissingNul { .. })
        ));
        assert_eq!(
            ErrorFields::decode(b'E', b"\0\0"),
            Err(DecodeError::TrailingBytes {
                tag: b'E',
                extra: 1
            })
        );
        assert_eq!(ErrorFields::decode(b'E', b"\0").unwrap().iter().count(), 0);
    }
}
