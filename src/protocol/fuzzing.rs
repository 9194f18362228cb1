//! Fuzzing entry points, kept beside the parser (rustls style): each `fuzz/fuzz_targets/*.rs` is
//! a one-liner over one of these. Not a stable API. They assert the codec's invariants and panic
//! when one breaks, which is what the fuzzer looks for; they are also run over the captured wire
//! fixtures by the unit tests.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use super::{
    BackendMessage, DEFAULT_MAX_MESSAGE_LEN, FrameError, Frames, FrontendMessage, Header,
    MAX_STARTUP_PACKET_LEN, StartupPacket,
    backend::Authentication,
    frontend::{PasswordMessage, SaslInitialResponse},
    peek_header, peek_startup_len,
};

/// Framing never panics; frames tile the input; consumed + remaining == input; one error at most.
pub fn fuzz_framing(data: &[u8]) {
    // The first byte also picks the cap, so that LengthTooLarge is reachable.
    let caps = [16, 300, 1 << 16, DEFAULT_MAX_MESSAGE_LEN];
    let max = caps[usize::from(data.first().copied().unwrap_or(0) & 3)];
    let mut frames = Frames::new(data, max);
    let mut pos = 0;
    while let Some(item) = frames.next() {
        match item {
            Ok(f) => {
                let raw = f.raw();
                assert!(raw.len() <= max && raw.len() >= Header::SIZE);
                assert_eq!(raw, &data[pos..pos + raw.len()]);
                assert_eq!((raw[0], &raw[Header::SIZE..]), (f.tag, f.body));
                let h = peek_header(raw, max).unwrap().unwrap();
                assert_eq!((h.frame_len(), h.body_len()), (raw.len(), f.body.len()));
                pos += raw.len();
                let _ = f.frontend();
                let _ = f.backend();
            }
            Err(e) => {
                assert_eq!(peek_header(&data[pos..], max), Err(e));
                assert!(frames.next().is_none());
                break;
            }
        }
    }
    assert_eq!(frames.consumed(), pos);
    assert_eq!(frames.remaining(), &data[pos..]);
    assert_eq!(frames.consumed() + frames.remaining().len(), data.len());
    if let Ok(Some(h)) = peek_header(frames.remaining(), max) {
        assert!(
            frames.remaining().len() < h.frame_len(),
            "complete frame left behind"
        );
    }
    match peek_startup_len(data, MAX_STARTUP_PACKET_LEN) {
        Ok(Some(n)) => assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&n)),
        Ok(None) => assert!(data.len() < 4),
        Err(FrameError::LengthTooSmall { tag, .. } | FrameError::LengthTooLarge { tag, .. }) => {
            assert_eq!(tag, 0)
        }
    }
}

fn check_frame(out: &[u8], tag: u8, body: &[u8]) {
    assert_eq!(out[0], tag);
    assert_eq!(&out[Header::SIZE..], body, "re-encoding differs");
    let len = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, body.len() + 4);
}

/// `data` = tag byte + body. Decode → encode is byte-exact and decoding the encoding gives the
/// same view; the views' iterators yield exactly the counts that were validated.
pub fn fuzz_frontend_roundtrip(data: &[u8]) {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    if let Ok(msg) = FrontendMessage::decode(tag, body) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        check_frame(&out, tag, body);
        assert_eq!(msg.tag(), tag);
        assert_eq!(FrontendMessage::decode(tag, &out[5..]).unwrap(), msg);
        exercise_frontend(&msg);
    }
    if let Ok(m) = PasswordMessage::decode(body) {
        let mut out = Vec::new();
        m.encode(&mut out);
        check_frame(&out, b'p', body);
    }
    if let Ok(m) = SaslInitialResponse::decode(body) {
        let mut out = Vec::new();
        m.encode(&mut out);
        check_frame(&out, b'p', body);
    }
}

fn exercise_frontend(msg: &FrontendMessage<'_>) {
    match msg {
        FrontendMessage::Parse(p) => {
            assert_eq!(p.param_types().count(), p.param_type_count());
            let mut out = Vec::new();
            p.encode_renamed(&mut out, b"pglink_1");
            let FrontendMessage::Parse(r) = FrontendMessage::decode(out[0], &out[5..]).unwrap()
            else {
                panic!("renamed Parse is not a Parse")
            };
            assert!(r.param_types().eq(p.param_types()) && r.query == p.query);
        }
        FrontendMessage::Bind(b) => {
            assert_eq!(b.params().count(), b.param_count());
            let formats = b.param_formats().len();
            assert!(formats <= 1 || formats == b.param_count());
            (0..b.param_count()).for_each(|i| {
                b.param_format(i);
            });
            b.result_formats().for_each(drop);
            let mut out = Vec::new();
            b.encode_with_statement(&mut out, b"pglink_1");
            let FrontendMessage::Bind(r) = FrontendMessage::decode(out[0], &out[5..]).unwrap()
            else {
                panic!("renamed Bind is not a Bind")
            };
            assert!(r.params().eq(b.params()) && r.portal == b.portal);
        }
        FrontendMessage::FunctionCall(f) => {
            assert_eq!(f.args().count(), f.arg_count());
            f.arg_formats().for_each(drop);
        }
        FrontendMessage::PasswordFamily(p) => {
            let _ = p.password();
            let _ = p.sasl_initial_response();
        }
        _ => {}
    }
}

/// `data` = tag byte + body; same invariants as [`fuzz_frontend_roundtrip`].
pub fn fuzz_backend_roundtrip(data: &[u8]) {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    let Ok(msg) = BackendMessage::decode(tag, body) else {
        return;
    };
    let mut out = Vec::new();
    msg.encode(&mut out);
    check_frame(&out, tag, body);
    assert_eq!(msg.tag(), tag);
    assert_eq!(BackendMessage::decode(tag, &out[5..]).unwrap(), msg);
    match msg {
        BackendMessage::RowDescription(r) => assert_eq!(r.fields().count(), r.field_count()),
        BackendMessage::DataRow(r) => assert_eq!(r.columns().count(), r.column_count()),
        BackendMessage::ParameterDescription(p) => p.types().for_each(drop),
        BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f) => {
            f.iter().for_each(drop);
            let _ = (f.severity_kind(), f.sqlstate(), f.message());
        }
        BackendMessage::Authentication(Authentication::Sasl(m)) => m.iter().for_each(drop),
        BackendMessage::NegotiateProtocolVersion(n) => {
            assert_eq!(n.unrecognized_options().count(), n.option_count())
        }
        BackendMessage::CommandComplete(c) => {
            let _ = (c.rows(), c.command());
        }
        _ => {}
    }
}

/// Startup packet decode never panics, round-trips, and agrees with `peek_startup_len`.
pub fn fuzz_startup_packet(data: &[u8]) {
    let _ = peek_startup_len(data, MAX_STARTUP_PACKET_LEN);
    let Ok(packet) = StartupPacket::decode(data) else {
        return;
    };
    assert_eq!(peek_startup_len(data, usize::MAX), Ok(Some(data.len())));
    let mut out = Vec::new();
    packet.encode(&mut out);
    assert_eq!(out, data, "re-encoding differs");
    assert_eq!(StartupPacket::decode(&out).unwrap(), packet);
    if let StartupPacket::Startup(m) = packet {
        for (name, _) in m.params() {
            assert!(!name.is_empty());
            assert!(m.get(name).is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_accept_edge_inputs() {
        for data in [
            &b""[..],
            b"Q",
            b"\0\0\0\x08",
            b"Z\0\0\0\x05I",
            b"B\0\0\0\0\0\0\0",
            b"\0\0\0\x08\x04\xd2\x16\x2f",
            b"D\0\0\0\x03",
        ] {
            fuzz_framing(data);
            fuzz_frontend_roundtrip(data);
            fuzz_backend_roundtrip(data);
            fuzz_startup_packet(data);
        }
    }
}
