//! Message framing: the hot path. Zero allocation, no body parsing.
//!
//! A regular message is `tag: u8, len: u32 (counts itself, not the tag), body`. The proxy forwards
//! most messages by scanning headers only ([`peek_header`] / [`Frames`]) and copying whole
//! spans; only the tags it must understand are decoded into views. The length is validated
//! (>= 4, whole frame <= the caller's cap) before anyone reserves memory for the body.
//!
//! Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) have no tag:
//! see [`peek_startup_len`].

use std::fmt;

use super::{
    DecodeError, Severity, SqlState, TagName, backend::BackendMessage, frontend::FrontendMessage,
};

/// Default cap on a whole frame (tag + length + body) that the proxy *buffers* to inspect.
///
/// 64 MiB: far above anything a session sends in practice (PostgreSQL's own limit is 1 GiB for
/// large messages, 10 000 bytes for small ones), small enough that a hostile or broken peer cannot
/// make one connection reserve an unbounded buffer. Messages the proxy need not inspect (DataRow,
/// CopyData) are streamed through regardless of size, so this only bounds what is parsed whole.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// PostgreSQL's own cap on a startup-phase packet (`MAX_STARTUP_PACKET_LENGTH`), length word
/// included.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// The smallest startup-phase packet: length word + 4-byte protocol version/request code.
const MIN_STARTUP_PACKET_LEN: u32 = 8;

/// A message header: type byte and length word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The type byte.
    pub tag: u8,
    /// The length word: counts itself (4) and the body, not the tag.
    pub len: u32,
}

impl Header {
    /// Bytes in a header: tag + length word.
    pub const SIZE: usize = 5;

    /// The whole frame's size: tag + length word + body.
    pub fn frame_len(&self) -> usize {
        (self.len as usize).saturating_add(1)
    }

    /// The body's size (the length word minus its own 4 bytes).
    pub fn body_len(&self) -> usize {
        (self.len as usize).saturating_sub(4)
    }
}

/// A length word that cannot be accepted. `tag` is 0 for startup-phase packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length word is below the minimum (4 for messages, 8 for startup packets).
    LengthTooSmall { tag: u8, len: u32 },
    /// The frame would exceed the cap `max` (whole frame, tag included).
    LengthTooLarge { tag: u8, len: u32, max: usize },
}

impl FrameError {
    /// The SQLSTATE to report: PostgreSQL calls both cases "invalid message length" (08P01).
    pub fn sqlstate(&self) -> SqlState {
        SqlState::PROTOCOL_VIOLATION
    }

    /// Always FATAL: the stream cannot be resynchronised after a bad length word.
    pub fn severity(&self) -> Severity {
        Severity::Fatal
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::LengthTooSmall { tag, len } => {
                write!(f, "invalid {}: length {len} is too small", TagName(*tag))
            }
            FrameError::LengthTooLarge { tag, len, max } => write!(
                f,
                "invalid {}: length {len} exceeds the limit of {max} bytes",
                TagName(*tag)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Read and validate the header at the start of `buf`.
///
/// `Ok(None)`: fewer than 5 bytes buffered. `max_len` caps the whole frame (tag included).
/// The body need not be buffered yet: this is what tells the caller how much to wait for.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
    let Some((&tag, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let Some(len) = rest.first_chunk::<4>() else {
        return Ok(None);
    };
    let header = Header {
        tag,
        len: u32::from_be_bytes(*len),
    };
    if header.len < 4 {
        return Err(FrameError::LengthTooSmall {
            tag,
            len: header.len,
        });
    }
    if header.frame_len() > max_len {
        return Err(FrameError::LengthTooLarge {
            tag,
            len: header.len,
            max: max_len,
        });
    }
    Ok(Some(header))
}

/// Read and validate the length word of a startup-phase packet at the start of `buf`.
///
/// Returns the whole packet's length (length word included): `Ok(None)` if fewer than 4 bytes
/// are buffered; errors carry tag 0. Pass [`MAX_STARTUP_PACKET_LEN`] unless you have a reason.
pub fn peek_startup_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(len) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*len);
    if len < MIN_STARTUP_PACKET_LEN {
        return Err(FrameError::LengthTooSmall { tag: 0, len });
    }
    if len as usize > max_len {
        return Err(FrameError::LengthTooLarge {
            tag: 0,
            len,
            max: max_len,
        });
    }
    Ok(Some(len as usize))
}

/// One complete frame borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The type byte.
    pub tag: u8,
    /// The body (after the length word).
    pub body: &'a [u8],
    raw: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The whole message: tag, length word and body, ready to forward as is.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Decode as a client→server message.
    pub fn frontend(&self) -> Result<FrontendMessage<'a>, DecodeError> {
        FrontendMessage::decode(self.tag, self.body)
    }

    /// Decode as a server→client message.
    pub fn backend(&self) -> Result<BackendMessage<'a>, DecodeError> {
        BackendMessage::decode(self.tag, self.body)
    }
}

/// Iterator over the complete frames at the start of a buffer.
///
/// Yields `Ok(frame)` per complete frame and stops (`None`) at an incomplete tail; yields one
/// `Err` for an invalid length word and nothing after it. [`consumed`](Frames::consumed) +
/// [`remaining`](Frames::remaining) always cover the input exactly; after an error the bad
/// header is the start of `remaining()`.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max_len: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Scan `buf`, rejecting frames larger than `max_len` (whole frame, tag included).
    pub fn new(buf: &'a [u8], max_len: usize) -> Self {
        Frames {
            buf,
            pos: 0,
            max_len,
            failed: false,
        }
    }

    /// Bytes of complete frames yielded so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The bytes after the last yielded frame (an incomplete frame, or the bad header).
    pub fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.remaining();
        let header = match peek_header(rest, self.max_len) {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let raw = rest.get(..header.frame_len())?;
        let body = raw.get(Header::SIZE..)?;
        self.pos = self.pos.saturating_add(raw.len());
        Some(Ok(Frame {
            tag: header.tag,
            body,
            raw,
        }))
    }
}

impl std::iter::FusedIterator for Frames<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"", 100), Ok(None));
        assert_eq!(peek_header(b"Z\0\0\0", 100), Ok(None));
        let h = peek_header(b"Z\0\0\0\x05", 100).unwrap().unwrap();
        assert_eq!(h, Header { tag: b'Z', len: 5 });
        assert_eq!((h.frame_len(), h.body_len()), (6, 1));
    }

    #[test]
    fn length_below_four_is_rejected() {
        assert_eq!(
            peek_header(b"Z\0\0\0\x03", 100),
            Err(FrameError::LengthTooSmall { tag: b'Z', len: 3 })
        );
    }

    #[test]
    fn length_over_cap_is_rejected_before_body_arrives() {
        // A 4 GiB claim with only the header buffered: rejected without reserving anything.
        assert_eq!(
            peek_header(b"D\xff\xff\xff\xff", DEFAULT_MAX_MESSAGE_LEN),
            Err(FrameError::LengthTooLarge {
                tag: b'D',
                len: u32::MAX,
                max: DEFAULT_MAX_MESSAGE_LEN
            })
        );
        // The cap is on the whole frame: len 9 is a 10-byte frame.
        assert!(peek_header(b"Q\0\0\0\x09", 10).unwrap().is_some());
        assert!(peek_header(b"Q\0\0\0\x0a", 10).is_err());
        // The largest length word does not overflow frame_len.
        let h = Header {
            tag: b'D',
            len: u32::MAX,
        };
        assert_eq!(h.frame_len(), u32::MAX as usize + 1);
    }

    #[test]
    fn frames_stop_at_incomplete_tail() {
        let buf = b"1\0\0\0\x042\0\0\0\x04C\0\0\0\x09SEL";
        let mut frames = Frames::new(buf, 100);
        let a = frames.next().unwrap().unwrap();
        assert_eq!(
            (a.tag, a.body, a.raw()),
            (b'1', &b""[..], &b"1\0\0\0\x04"[..])
        );
        assert_eq!(frames.next().unwrap().unwrap().tag, b'2');
        assert!(frames.next().is_none());
        assert_eq!(frames.consumed(), 10);
        assert_eq!(frames.remaining(), b"C\0\0\0\x09SEL");
    }

    #[test]
    fn frames_yield_one_error_then_nothing() {
        let buf = b"1\0\0\0\x04X\0\0\0\x01\x001\0\0\0\x04";
        let mut frames = Frames::new(buf, 100);
        assert!(frames.next().unwrap().is_ok());
        assert_eq!(
            frames.next(),
            Some(Err(FrameError::LengthTooSmall { tag: b'X', len: 1 }))
        );
        assert_eq!(frames.next(), None);
        assert_eq!(frames.consumed(), 5);
        assert_eq!(frames.remaining().len(), buf.len() - 5);
    }

    #[test]
    fn frames_decode_views() {
        let buf = b"Z\0\0\0\x05IQ\0\0\0\x05\0";
        let mut frames = Frames::new(buf, 100);
        let z = frames.next().unwrap().unwrap();
        assert!(matches!(z.backend(), Ok(BackendMessage::ReadyForQuery(_))));
        let q = frames.next().unwrap().unwrap();
        assert!(matches!(q.frontend(), Ok(FrontendMessage::Query(_))));
    }

    #[test]
    fn startup_len() {
        assert_eq!(peek_startup_len(b"\0\0\0", 100), Ok(None));
        assert_eq!(peek_startup_len(b"\0\0\0\x08", 100), Ok(Some(8)));
        assert_eq!(
            peek_startup_len(b"\0\0\0\x07", 100),
            Err(FrameError::LengthTooSmall { tag: 0, len: 7 })
        );
        assert_eq!(
            peek_startup_len(b"\x7f\0\0\0", MAX_STARTUP_PACKET_LEN),
            Err(FrameError::LengthTooLarge {
                tag: 0,
                len: 0x7f00_0000,
                max: MAX_STARTUP_PACKET_LEN
            })
        );
        assert_eq!(
            FrameError::LengthTooSmall { tag: 0, len: 7 }.to_string(),
            "invalid startup packet: length 7 is too small"
        );
    }
}
