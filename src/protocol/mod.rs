//! PostgreSQL wire protocol codec (sans-IO), protocol 3.0 and 3.2.
//!
//! Three layers, cheapest first:
//!
//! 1. [`framing`]: scan 5-byte headers ([`peek_header`], [`Frames`]) and hand out whole frames as
//!    borrowed slices. This is all the hot path needs to forward bytes: no allocation, no parsing
//!    of bodies. Startup-phase packets have no tag; see [`peek_startup_len`].
//! 2. Borrowed views: [`FrontendMessage::decode`], [`BackendMessage::decode`] and
//!    [`StartupPacket::decode`] validate a body *once* (counts, lengths, NULs, trailing bytes) and
//!    return views whose lazy iterators can then neither fail nor panic (smoltcp's "check once").
//!    Decoding is strict: whenever it succeeds, `encode` reproduces the input byte for byte.
//! 3. Builders: free functions such as [`backend::ready_for_query`] or [`frontend::bind`] append
//!    a complete message to a `Vec<u8>`, back-patching the length ([`write_message`]).
//!
//! Strings on the wire are in the client encoding, not necessarily UTF-8, so views expose them as
//! `&[u8]` without the NUL; `*_str()` accessors give `Option<&str>` where that is convenient.
//!
//! Peer bytes never panic: this module denies indexing, `unwrap`, `expect` and `panic!` outside
//! tests, and every read goes through a checked cursor.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod backend;
mod cursor;
pub mod error;
pub mod framing;
pub mod frontend;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzzing;
pub mod sqlstate;
pub mod startup;
#[cfg(test)]
mod wire_fixtures;
mod write;

use std::fmt;

pub use backend::{BackendMessage, TransactionStatus};
pub use cursor::{I16s, Oids, Values};
pub use error::{ErrorBuilder, ErrorFields, Severity, error_response, notice_response};
pub use framing::{
    DEFAULT_MAX_MESSAGE_LEN, Frame, FrameError, Frames, Header, MAX_STARTUP_PACKET_LEN,
    peek_header, peek_startup_len,
};
pub use frontend::FrontendMessage;
pub use sqlstate::SqlState;
pub use startup::{CancelRequest, ProtocolVersion, StartupMessage, StartupPacket};
pub use write::write_message;

/// CopyData ('d'): a chunk of a COPY stream. The same message in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyData<'a> {
    /// The chunk, opaque to the protocol.
    pub data: &'a [u8],
}

impl<'a> CopyData<'a> {
    /// The tag, identical for frontend and backend.
    pub const TAG: u8 = b'd';

    /// Append this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        copy_data(out, self.data);
    }
}

/// Append a CopyData message (either direction).
pub fn copy_data(out: &mut Vec<u8>, data: &[u8]) {
    write_message(out, CopyData::TAG, |b| b.extend_from_slice(data));
}

/// Append a CopyDone message (either direction).
pub fn copy_done(out: &mut Vec<u8>) {
    write_message(out, b'c', |_| {});
}

/// Why a message body (or startup packet) could not be decoded.
///
/// `tag` is the message's type byte, or 0 for a startup-phase packet (which has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended while reading `what`.
    UnexpectedEof { tag: u8, what: &'static str },
    /// A C string (`what`) had no terminating NUL before the end of the body.
    MissingNul { tag: u8, what: &'static str },
    /// The structure ended `extra` bytes before the body did.
    TrailingBytes { tag: u8, extra: usize },
    /// A field held a value the protocol does not allow (negative length, bad count, unknown code).
    InvalidValue {
        tag: u8,
        what: &'static str,
        value: i64,
    },
    /// The type byte is not a message this direction can send.
    UnknownTag { tag: u8 },
    /// The length word itself was unacceptable.
    Framing(FrameError),
}

impl DecodeError {
    /// The SQLSTATE to report to the peer: every malformed message is a protocol violation.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            DecodeError::Framing(e) => e.sqlstate(),
            DecodeError::UnexpectedEof { .. }
            | DecodeError::MissingNul { .. }
            | DecodeError::TrailingBytes { .. }
            | DecodeError::InvalidValue { .. }
            | DecodeError::UnknownTag { .. } => SqlState::PROTOCOL_VIOLATION,
        }
    }

    /// Always FATAL: after a malformed message the stream cannot be trusted.
    pub fn severity(&self) -> Severity {
        Severity::Fatal
    }
}

/// A message type byte for texts: `'Q'` when printable, `0x01` otherwise (never a raw
/// control byte, which could not be carried in an ErrorResponse field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType(pub u8);

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            t if t.is_ascii_graphic() => write!(f, "'{}'", char::from(t)),
            t => write!(f, "0x{t:02x}"),
        }
    }
}

/// Formats a message tag for error texts: `message 'Q'`, `message 0x01`, or `startup packet`.
pub(crate) struct TagName(pub(crate) u8);

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("startup packet"),
            t if t.is_ascii_graphic() => write!(f, "message '{}'", char::from(t)),
            t => write!(f, "message 0x{t:02x}"),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnexpectedEof { tag, what } => {
                write!(f, "invalid {}: ends inside {what}", TagName(*tag))
            }
            DecodeError::MissingNul { tag, what } => {
                write!(f, "invalid {}: {what} is not NUL-terminated", TagName(*tag))
            }
            DecodeError::TrailingBytes { tag, extra } => {
                write!(
                    f,
                    "invalid {}: {extra} unexpected trailing bytes",
                    TagName(*tag)
                )
            }
            DecodeError::InvalidValue { tag, what, value } => {
                write!(
                    f,
                    "invalid {}: {what} {value} is not allowed",
                    TagName(*tag)
                )
            }
            DecodeError::UnknownTag { tag } => write!(f, "unknown {}", TagName(*tag)),
            DecodeError::Framing(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Framing(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FrameError> for DecodeError {
    fn from(e: FrameError) -> Self {
        DecodeError::Framing(e)
    }
}

/// `Some(&str)` when `bytes` are valid UTF-8 (the usual client encoding).
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_error_display_names_the_message() {
        let e = DecodeError::MissingNul {
            tag: b'Q',
            what: "query",
        };
        assert_eq!(
            e.to_string(),
            "invalid message 'Q': query is not NUL-terminated"
        );
        let e = DecodeError::TrailingBytes { tag: 0, extra: 3 };
        assert_eq!(
            e.to_string(),
            "invalid startup packet: 3 unexpected trailing bytes"
        );
        assert_eq!(
            DecodeError::UnknownTag { tag: 1 }.to_string(),
            "unknown message 0x01"
        );
        assert_eq!(e.sqlstate(), SqlState::PROTOCOL_VIOLATION);
    }

    #[test]
    fn copy_messages_encode() {
        let mut out = Vec::new();
        CopyData { data: b"ab" }.encode(&mut out);
        copy_done(&mut out);
        assert_eq!(out, b"d\0\0\0\x06abc\0\0\0\x04");
    }
}
