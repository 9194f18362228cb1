//! Startup-phase packets: no tag, a length word (counting itself), then a 32-bit protocol version
//! or special request code. Find the packet's extent with
//! [`peek_startup_len`](super::peek_startup_len), then decode it whole.

use super::{
    DecodeError,
    backend::CANCEL_KEY_LEN,
    cursor::{CStrs, Cursor},
    write::{put_cstr, put_u32, write_length_prefixed},
};

/// Request code of SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// The major "version" that marks a special request code rather than a protocol version.
const REQUEST_CODE_MAJOR: u16 = 1234;

/// A protocol version as sent in StartupMessage (major in the high 16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };
    /// PostgreSQL 18: variable-length cancel keys.
    pub const V3_2: ProtocolVersion = ProtocolVersion { major: 3, minor: 2 };

    pub fn from_u32(v: u32) -> Self {
        ProtocolVersion {
            major: (v >> 16) as u16,
            minor: (v & 0xffff) as u16,
        }
    }

    pub fn to_u32(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }
}

/// StartupMessage: protocol version and `name\0value\0` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupMessage<'a> {
    /// Any version with a major other than 1234; the session decides what it accepts.
    pub version: ProtocolVersion,
    /// The pairs without the list's final NUL; validated.
    params: &'a [u8],
}

impl<'a> StartupMessage<'a> {
    /// `(name, value)` pairs in wire order (names include `_pq_.*` protocol options).
    pub fn params(&self) -> Params<'a> {
        Params(CStrs::new(self.params))
    }

    /// The value of the first parameter called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.params().find(|&(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn user(&self) -> Option<&'a [u8]> {
        self.get(b"user")
    }

    /// `database`, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> Option<&'a [u8]> {
        self.get(b"database")
            .filter(|d| !d.is_empty())
            .or_else(|| self.user())
    }
}

/// Iterator over validated startup parameters.
#[derive(Debug, Clone)]
pub struct Params<'a>(CStrs<'a>);

impl<'a> Iterator for Params<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        Some((self.0.next()?, self.0.next()?))
    }
}

/// CancelRequest: the target's process ID and secret key (4 bytes in 3.0, up to 256 in 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest<'a> {
    pub pid: u32,
    pub key: &'a [u8],
}

/// Any startup-phase packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    Startup(StartupMessage<'a>),
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest<'a>),
}

impl<'a> StartupPacket<'a> {
    /// Decode a whole packet, length word included (`packet.len()` must equal it).
    pub fn decode(packet: &'a [u8]) -> Result<Self, DecodeError> {
        let mut c = Cursor::new(0, packet);
        let len = c.u32("packet length")?;
        if len as usize != packet.len() {
            return Err(c.invalid("packet length", len));
        }
        let code = c.u32("protocol version")?;
        let packet = match code {
            SSL_REQUEST_CODE => StartupPacket::SslRequest,
            GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
            CANCEL_REQUEST_CODE => {
                let pid = c.u32("process ID")?;
                let key = c.rest()?;
                if !CANCEL_KEY_LEN.contains(&key.len()) {
                    return Err(c.invalid("cancel key length", key.len() as i64));
                }
                StartupPacket::Cancel(CancelRequest { pid, key })
            }
            _ => {
                let version = ProtocolVersion::from_u32(code);
                if version.major == REQUEST_CODE_MAJOR {
                    return Err(c.invalid("request code", code));
                }
                let start = c.remaining();
                while !c.cstr("parameter name")?.is_empty() {
                    c.cstr("parameter value")?;
                }
                let params = c.since(start).split_last().map(|(_, p)| p);
                StartupPacket::Startup(StartupMessage {
                    version,
                    params: params.unwrap_or_default(),
                })
            }
        };
        c.finish()?;
        Ok(packet)
    }

    /// Append the whole packet, length word included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            StartupPacket::Startup(m) => write_length_prefixed(out, |b| {
                put_u32(b, m.version.to_u32());
                b.extend_from_slice(m.params);
                b.push(0);
            }),
            StartupPacket::SslRequest => ssl_request(out),
            StartupPacket::GssEncRequest => gssenc_request(out),
            StartupPacket::Cancel(c) => cancel_request(out, c.pid, c.key),
        }
    }
}

/// Append a StartupMessage. Parameter names and values must not contain NUL; an empty name
/// would end the list early and is skipped.
pub fn startup_message(out: &mut Vec<u8>, version: ProtocolVersion, params: &[(&[u8], &[u8])]) {
    write_length_prefixed(out, |b| {
        put_u32(b, version.to_u32());
        for (name, value) in params.iter().filter(|(n, _)| !n.is_empty()) {
            put_cstr(b, name);
            put_cstr(b, value);
        }
        b.push(0);
    });
}

pub fn ssl_request(out: &mut Vec<u8>) {
    write_length_prefixed(out, |b| put_u32(b, SSL_REQUEST_CODE));
}

pub fn gssenc_request(out: &mut Vec<u8>) {
    write_length_prefixed(out, |b| put_u32(b, GSSENC_REQUEST_CODE));
}

/// Append a CancelRequest; `key` is as the server sent it in BackendKeyData (4..=256 bytes).
pub fn cancel_request(out: &mut Vec<u8>, pid: u32, key: &[u8]) {
    debug_assert!(CANCEL_KEY_LEN.contains(&key.len()));
    write_length_prefixed(out, |b| {
        put_u32(b, CANCEL_REQUEST_CODE);
        put_u32(b, pid);
        b.extend_from_slice(key);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> StartupPacket<'_> {
        let p = StartupPacket::decode(bytes).unwrap();
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(out, bytes);
        p
    }

    #[test]
    fn startup_message_round_trips() {
        let mut out = Vec::new();
        startup_message(
            &mut out,
            ProtocolVersion::V3_2,
            &[(b"user", b"alice"), (b"options", b"-c search_path=x")],
        );
        let StartupPacket::Startup(m) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(m.version, ProtocolVersion::V3_2);
        assert_eq!(m.user(), Some(&b"alice"[..]));
        assert_eq!(m.database(), Some(&b"alice"[..]));
        assert_eq!(m.get(b"options"), Some(&b"-c search_path=x"[..]));
        assert_eq!(m.params().count(), 2);
    }

    #[test]
    fn special_requests() {
        let mut out = Vec::new();
        ssl_request(&mut out);
        assert_eq!(out, [0, 0, 0, 8, 4, 210, 22, 47]);
        assert_eq!(roundtrip(&out), StartupPacket::SslRequest);
        out.clear();
        gssenc_request(&mut out);
        assert_eq!(roundtrip(&out), StartupPacket::GssEncRequest);
        out.clear();
        cancel_request(&mut out, 77, &[9; 32]);
        assert_eq!(
            roundtrip(&out),
            StartupPacket::Cancel(CancelRequest {
                pid: 77,
                key: &[9; 32]
            })
        );
    }

    #[test]
    fn other_versions_stay_decodable() {
        let mut out = Vec::new();
        startup_message(
            &mut out,
            ProtocolVersion { major: 3, minor: 9 },
            &[(b"user", b"u")],
        );
        let StartupPacket::Startup(m) = roundtrip(&out) else {
            panic!()
        };
        assert_eq!(m.version.minor, 9);
    }

    #[test]
    fn rejects_malformed_packets() {
        use DecodeError::*;
        let err = |b: &[u8]| StartupPacket::decode(b).unwrap_err();
        // Length word disagrees with the packet.
        assert!(matches!(
            err(b"\0\0\0\x09\x04\xd2\x16\x2f"),
            InvalidValue { value: 9, .. }
        ));
        // SSLRequest with trailing bytes.
        assert_eq!(
            err(b"\0\0\0\x09\x04\xd2\x16\x2f\0"),
            TrailingBytes { tag: 0, extra: 1 }
        );
        // Unknown 1234.x request code.
        assert!(matches!(
            err(b"\0\0\0\x08\x04\xd2\x16\x31"),
            InvalidValue {
                what: "request code",
                ..
            }
        ));
        // Startup without the list terminator, with a dangling name, with data after it.
        assert!(matches!(err(b"\0\0\0\x08\0\x03\0\0"), MissingNul { .. }));
        assert!(matches!(
            err(b"\0\0\0\x0e\0\x03\0\0user\0\0"),
            MissingNul { .. }
        ));
        assert_eq!(
            err(b"\0\0\0\x0b\0\x03\0\0\0x\0"),
            TrailingBytes { tag: 0, extra: 2 }
        );
        // Cancel keys outside 4..=256.
        assert!(matches!(
            err(b"\0\0\0\x0f\x04\xd2\x16\x2e\0\0\0\x01abc"),
            InvalidValue { value: 3, .. }
        ));
        assert!(matches!(err(b"\0\0\0"), UnexpectedEof { .. }));
    }

    #[test]
    fn database_falls_back_to_user() {
        let mut out = Vec::new();
        startup_message(
            &mut out,
            ProtocolVersion::V3_0,
            &[(b"user", b"u"), (b"database", b"d")],
        );
        let StartupPacket::Startup(m) = StartupPacket::decode(&out).unwrap() else {
            panic!()
        };
        assert_eq!(m.database(), Some(&b"d"[..]));
    }
}
