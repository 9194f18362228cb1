//! Captured PostgreSQL 15 sessions (`tests/fixtures/wire`, recorded with `scripts/capture-wire`):
//! every packet and frame decodes, re-encodes byte for byte, and the sessions contain the
//! message kinds they are supposed to exercise.

use std::collections::HashMap;

use super::{
    BackendMessage, DEFAULT_MAX_MESSAGE_LEN, Frames, FrontendMessage, MAX_STARTUP_PACKET_LEN,
    Severity, SqlState, StartupPacket, TransactionStatus,
    backend::{Authentication, tag as be},
    frontend::{PasswordMessage, SaslInitialResponse, SaslResponse, tag as fe},
    fuzzing, peek_startup_len,
};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/wire/",
            $name
        ))
    };
}

struct Session {
    startup: Vec<StartupPacket<'static>>,
    fe: Vec<FrontendMessage<'static>>,
    be: Vec<BackendMessage<'static>>,
}

impl Session {
    fn fe_count(&self, tag: u8) -> usize {
        self.fe.iter().filter(|m| m.tag() == tag).count()
    }

    fn be_count(&self, tag: u8) -> usize {
        self.be.iter().filter(|m| m.tag() == tag).count()
    }

    fn auth(&self) -> Vec<Authentication<'static>> {
        self.be
            .iter()
            .filter_map(|m| match m {
                BackendMessage::Authentication(a) => Some(*a),
                _ => None,
            })
            .collect()
    }
}

/// Split the client stream: startup packets (SSLRequest/GSSENCRequest first, if any), then frames.
fn split_frontend(stream: &'static [u8]) -> (Vec<StartupPacket<'static>>, &'static [u8]) {
    let mut rest = stream;
    let mut packets = Vec::new();
    loop {
        let len = peek_startup_len(rest, MAX_STARTUP_PACKET_LEN)
            .unwrap()
            .unwrap();
        let (packet, tail) = rest.split_at(len);
        fuzzing::fuzz_startup_packet(packet);
        let decoded = StartupPacket::decode(packet).unwrap();
        let mut out = Vec::new();
        decoded.encode(&mut out);
        assert_eq!(out, packet);
        packets.push(decoded);
        rest = tail;
        if !matches!(
            decoded,
            StartupPacket::SslRequest | StartupPacket::GssEncRequest
        ) {
            return (packets, rest);
        }
    }
}

fn frames(stream: &'static [u8]) -> impl Iterator<Item = (u8, &'static [u8], &'static [u8])> {
    let mut frames = Frames::new(stream, DEFAULT_MAX_MESSAGE_LEN);
    let all: Vec<_> = frames
        .by_ref()
        .map(|f| {
            let f = f.unwrap();
            (f.tag, f.body, f.raw())
        })
        .collect();
    assert!(frames.remaining().is_empty(), "stream ends mid-frame");
    all.into_iter()
}

fn session(fe_stream: &'static [u8], be_stream: &'static [u8]) -> Session {
    let (startup, rest) = split_frontend(fe_stream);
    let mut fe = Vec::new();
    for (tag, body, raw) in frames(rest) {
        fuzzing::fuzz_frontend_roundtrip(&[&[tag][..], body].concat());
        let msg = FrontendMessage::decode(tag, body).unwrap();
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, raw);
        fe.push(msg);
    }
    // The server answers SSLRequest with one unframed byte ('N' here: no TLS).
    let mut be_stream = be_stream;
    for p in &startup {
        if matches!(p, StartupPacket::SslRequest) {
            let (answer, rest) = be_stream.split_first().unwrap();
            assert_eq!(*answer, b'N');
            be_stream = rest;
        }
    }
    let mut be = Vec::new();
    for (tag, body, raw) in frames(be_stream) {
        fuzzing::fuzz_backend_roundtrip(&[&[tag][..], body].concat());
        let msg = BackendMessage::decode(tag, body).unwrap();
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, raw);
        be.push(msg);
    }
    let s = Session { startup, fe, be };
    check_password_family(&s);
    s
}

/// Each 'p' answers the preceding authentication request; decode it as what was asked for.
fn check_password_family(s: &Session) {
    let requests: Vec<_> = s
        .auth()
        .into_iter()
        .filter(|a| !matches!(a, Authentication::Ok | Authentication::SaslFinal { .. }))
        .collect();
    let answers: Vec<_> =
        s.fe.iter()
            .filter_map(|m| match m {
                FrontendMessage::PasswordFamily(p) => Some(p.body),
                _ => None,
            })
            .collect();
    assert_eq!(requests.len(), answers.len());
    for (request, body) in requests.iter().zip(answers) {
        let mut out = Vec::new();
        match request {
            Authentication::Sasl(m) => {
                let init = SaslInitialResponse::decode(body).unwrap();
                assert!(m.contains(init.mechanism));
                assert!(init.data.unwrap().starts_with(b"n,,n=,r="));
                init.encode(&mut out);
            }
            Authentication::SaslContinue { .. } => {
                let r = SaslResponse::decode(body).unwrap();
                assert!(r.data.starts_with(b"c=biws,r="));
                r.encode(&mut out);
            }
            Authentication::Md5Password { .. } => {
                let p = PasswordMessage::decode(body).unwrap();
                assert!(p.password.starts_with(b"md5") && p.password.len() == 35);
                p.encode(&mut out);
            }
            other => panic!("unexpected request {other:?}"),
        }
        assert_eq!(&out[5..], body);
    }
}

fn startup_params(s: &Session) -> HashMap<&'static [u8], &'static [u8]> {
    let Some(StartupPacket::Startup(m)) = s.startup.last() else {
        panic!("no StartupMessage")
    };
    m.params().collect()
}

fn is_scram_login(s: &Session) -> bool {
    let auth = s.auth();
    matches!(auth.as_slice(), [
        Authentication::Sasl(m),
        Authentication::SaslContinue { .. },
        Authentication::SaslFinal { .. },
        Authentication::Ok
    ] if m.contains(b"SCRAM-SHA-256"))
}

#[test]
fn psql_scram_session() {
    let s = session(fixture!("psql_scram.fe.bin"), fixture!("psql_scram.be.bin"));
    assert_eq!(s.startup.len(), 1);
    assert_eq!(
        startup_params(&s).get(&b"user"[..]),
        Some(&&b"scram_user"[..])
    );
    assert!(is_scram_login(&s));
    assert_eq!(s.be_count(be::BACKEND_KEY_DATA), 1);
    assert!(s.be_count(be::PARAMETER_STATUS) >= 10);
    let errors: Vec<_> =
        s.be.iter()
            .filter_map(|m| match m {
                BackendMessage::ErrorResponse(f) => Some(*f),
                _ => None,
            })
            .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].sqlstate(), Some(SqlState::DIVISION_BY_ZERO));
    assert_eq!(errors[0].severity_kind(), Some(Severity::Error));
    assert!(s.be.iter().any(|m| matches!(m,
        BackendMessage::NoticeResponse(f)
            if f.severity_kind() == Some(Severity::Notice) && f.message() == Some(&b"x"[..]))));
    assert!(s.be.iter().any(|m| matches!(m,
        BackendMessage::NotificationResponse(n)
            if n.channel == b"pglink_chan" && n.payload == b"hello")));
    assert_eq!(s.be_count(be::COPY_IN_RESPONSE), 1);
    assert_eq!(s.be_count(be::COPY_OUT_RESPONSE), 2);
    assert!(s.be.iter().any(|m| matches!(m,
        BackendMessage::CopyOutResponse(r) if r.format == 1 && r.column_formats().eq([1]))));
    assert_eq!(s.fe_count(fe::COPY_DATA), 1);
    assert_eq!(s.fe_count(fe::COPY_DONE), 1);
    assert!(s.be_count(be::COPY_DATA) >= 4);
    assert_eq!(s.be_count(be::EMPTY_QUERY_RESPONSE), 1);
    assert_eq!(s.be_count(be::PARAMETER_DESCRIPTION), 1);
    assert!(s.fe_count(fe::FUNCTION_CALL) >= 3);
    assert_eq!(
        s.fe_count(fe::FUNCTION_CALL),
        s.be_count(be::FUNCTION_CALL_RESPONSE)
    );
    assert!(s.be.iter().any(|m| matches!(m,
        BackendMessage::DataRow(r) if r.columns().eq([Some(&b"1"[..]), Some(b"two"), None]))));
    assert!(s.be.iter().any(|m| matches!(m,
        BackendMessage::CommandComplete(c) if c.tag == b"COPY 2" && c.rows() == Some(2))));
    // One Query carrying three statements: three CommandCompletes before one ReadyForQuery.
    assert!(s.fe.iter().any(|m| matches!(m,
        FrontendMessage::Query(q) if q.query == b"SELECT 1 ; SELECT 2 ; SELECT 'multi';")));
    assert_eq!(s.fe.last(), Some(&FrontendMessage::Terminate));
    // One ReadyForQuery per Query, FunctionCall and Sync, plus the one ending startup.
    assert_eq!(
        s.be_count(be::READY_FOR_QUERY),
        s.fe_count(fe::QUERY) + s.fe_count(fe::FUNCTION_CALL) + s.fe_count(fe::SYNC) + 1
    );
}

#[test]
fn md5_login_after_ssl_refusal() {
    let s = session(fixture!("md5_login.fe.bin"), fixture!("md5_login.be.bin"));
    assert_eq!(s.startup[0], StartupPacket::SslRequest);
    assert!(matches!(
        s.auth().as_slice(),
        [Authentication::Md5Password { .. }, Authentication::Ok]
    ));
    assert_eq!(s.fe_count(fe::PASSWORD), 1);
}

#[test]
fn pgbench_extended_protocol() {
    let s = session(
        fixture!("pgbench_extended.fe.bin"),
        fixture!("pgbench_extended.be.bin"),
    );
    assert!(is_scram_login(&s));
    // 3 transactions x 7 statements, each Parse/Bind/Describe/Execute/Sync, unnamed.
    for tag in [fe::PARSE, fe::BIND, fe::DESCRIBE, fe::EXECUTE, fe::SYNC] {
        assert_eq!(s.fe_count(tag), 21, "tag {}", char::from(tag));
    }
    assert!(s.fe.iter().all(|m| match m {
        FrontendMessage::Parse(p) => p.name.is_empty(),
        FrontendMessage::Bind(b) => b.statement.is_empty() && b.portal.is_empty(),
        _ => true,
    }));
    assert_eq!(s.be_count(be::PARSE_COMPLETE), 21);
    assert_eq!(s.be_count(be::BIND_COMPLETE), 21);
    assert_eq!(s.be_count(be::READY_FOR_QUERY), 22);
    // BEGIN .. END: the ReadyForQuery after BEGIN is 'T'.
    assert!(s.be.contains(&BackendMessage::ReadyForQuery(TransactionStatus::InBlock)));
    // The UPDATEs bind parameters.
    assert!(s.fe.iter().any(|m| matches!(m,
        FrontendMessage::Bind(b) if b.param_count() == 2 && b.params().all(|p| p.is_some()))));
}

#[test]
fn pgbench_prepared_statements() {
    let s = session(
        fixture!("pgbench_prepared.fe.bin"),
        fixture!("pgbench_prepared.be.bin"),
    );
    assert_eq!(s.fe_count(fe::PARSE), 7);
    assert_eq!(s.fe_count(fe::BIND), 21);
    assert_eq!(s.fe_count(fe::EXECUTE), 21);
    assert_eq!(s.fe_count(fe::SYNC), 28);
    let names: Vec<_> =
        s.fe.iter()
            .filter_map(|m| match m {
                FrontendMessage::Parse(p) => Some(p.name),
                _ => None,
            })
            .collect();
    assert!(names.iter().all(|n| n.starts_with(b"P_")));
    assert!(s.fe.iter().all(|m| match m {
        FrontendMessage::Bind(b) => names.contains(&b.statement),
        _ => true,
    }));
}

#[test]
fn pgbench_setup_connection() {
    let s = session(
        fixture!("pgbench_setup.fe.bin"),
        fixture!("pgbench_setup.be.bin"),
    );
    assert!(is_scram_login(&s));
    assert_eq!(s.fe_count(fe::QUERY), 2);
}

#[test]
fn psql_cancel_matches_backend_key() {
    let s = session(
        fixture!("psql_cancel.fe.bin"),
        fixture!("psql_cancel.be.bin"),
    );
    let key =
        s.be.iter()
            .find_map(|m| match m {
                BackendMessage::BackendKeyData(k) => Some(*k),
                _ => None,
            })
            .unwrap();
    assert_eq!(key.key.len(), 4);
    assert!(s.be.iter().any(|m| matches!(m,
        BackendMessage::ErrorResponse(f) if f.sqlstate() == Some(SqlState::QUERY_CANCELED))));

    let cancel = fixture!("cancel_request.fe.bin");
    fuzzing::fuzz_startup_packet(cancel);
    let Ok(StartupPacket::Cancel(c)) = StartupPacket::decode(cancel) else {
        panic!("not a CancelRequest")
    };
    assert_eq!((c.pid, c.key), (key.pid, key.key));
}

#[test]
fn logical_replication_copy_both() {
    let s = session(
        fixture!("logical_replication.fe.bin"),
        fixture!("logical_replication.be.bin"),
    );
    assert_eq!(
        startup_params(&s).get(&b"replication"[..]),
        Some(&&b"database"[..])
    );
    assert_eq!(s.be_count(be::COPY_BOTH_RESPONSE), 1);
    assert!(s.fe_count(fe::COPY_DATA) >= 1);
    assert!(s.be_count(be::COPY_DATA) >= 2);
    assert_eq!(s.fe_count(fe::COPY_DONE), 1);
}

#[test]
fn fixtures_frame_in_one_pass() {
    // The framing fuzz helper's invariants hold on whole captured streams.
    for stream in [
        &fixture!("psql_scram.be.bin")[..],
        fixture!("pgbench_extended.be.bin"),
        fixture!("logical_replication.be.bin"),
    ] {
        fuzzing::fuzz_framing(stream);
    }
}
