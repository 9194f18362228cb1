//! Scenarios for the client session state machine, driven byte by byte like the reactor does.

use std::collections::HashMap;
use std::sync::Arc;

use super::statements::Registry;
use super::users::{DbEntry, UserEntry, UserTable};
use super::*;
use crate::auth::{
    ClientChannelBinding, FixedRng, OsRng, ScramClient, ScramVerifier, md5_password,
};
use crate::protocol::backend::{Authentication, BackendMessage};
use crate::protocol::framing::Frames;
use crate::protocol::frontend;
use crate::protocol::startup::{cancel_request, ssl_request, startup_message};

const PASSWORD: &str = "secret";

fn users() -> UserTable {
    let mut rng = FixedRng::new(vec![7u8; 64]);
    let entry = UserEntry {
        name: "alice".into(),
        password: PASSWORD.into(),
        scram: ScramVerifier::generate(PASSWORD.as_bytes(), 4096, &mut rng),
        pool: 0,
    };
    let mut db = DbEntry::default();
    db.users.insert("alice".into(), Arc::new(entry));
    UserTable {
        databases: HashMap::from([("db".to_owned(), db)]),
        scram_iterations: 4096,
        mock_secret: [9; 32],
    }
}

fn config(auth_method: AuthMethod, tls: ClientTls) -> SessionConfig {
    SessionConfig {
        auth_method,
        tls,
        channel_binding: Some(vec![1; 32]),
        max_message_len: 1 << 20,
    }
}

/// A session plus everything the reactor would give it.
struct Harness {
    session: Session,
    config: SessionConfig,
    users: UserTable,
    params: Option<Arc<ParamList>>,
    /// Unconsumed client input.
    input: Vec<u8>,
    to_client: Vec<u8>,
    to_backend: Vec<u8>,
    backend: BackendContext,
    context: Arc<DatabaseContext>,
    actions: Vec<Action>,
    stats: ReactorStats,
}

impl Harness {
    fn new(auth_method: AuthMethod, tls: ClientTls) -> Harness {
        Harness {
            session: Session::new(CancelKey::new(42, [5; 32], 32), 1 << 20),
            config: config(auth_method, tls),
            users: users(),
            params: Some(Arc::new(vec![
                ("server_version".into(), "15.4".into()),
                ("application_name".into(), String::new()),
            ])),
            input: Vec::new(),
            to_client: Vec::new(),
            to_backend: Vec::new(),
            backend: BackendContext::new(4),
            context: Arc::new(DatabaseContext {
                registry: Registry::new(16, 16),
                track_extra: Vec::new(),
                overrides: Vec::new(),
                shared_params: Default::default(),
            }),
            actions: Vec::new(),
            stats: ReactorStats::new(4, 4),
        }
    }

    /// Calls a session method with this harness's outputs.
    fn call<R>(&mut self, f: impl FnOnce(&mut Session, &mut Out<'_>) -> R) -> R {
        let mut out = Out {
            to_client: &mut self.to_client,
            to_backend: &mut self.to_backend,
            backend: &mut self.backend,
            actions: &mut self.actions,
            stats: &self.stats,
        };
        f(&mut self.session, &mut out)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        let params = self.params.clone();
        let lookup = move |_| params.clone();
        let context = self.context.clone();
        let database = move |_| Some(context.clone());
        let mut rng = OsRng;
        let mut env = Env {
            config: &self.config,
            users: &self.users,
            rng: &mut rng,
            server_params: &lookup,
            database: &database,
        };
        let mut out = Out {
            to_client: &mut self.to_client,
            to_backend: &mut self.to_backend,
            backend: &mut self.backend,
            actions: &mut self.actions,
            stats: &self.stats,
        };
        let n = self.session.on_client_data(&self.input, &mut env, &mut out);
        self.input.drain(..n);
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Backend messages sent to the client so far (tags), consuming them.
    fn client_tags(&mut self) -> Vec<u8> {
        let bytes = std::mem::take(&mut self.to_client);
        Frames::new(&bytes, 1 << 20)
            .map(|f| f.unwrap().tag)
            .collect()
    }

    fn client_error(&mut self) -> (String, String, String) {
        let bytes = std::mem::take(&mut self.to_client);
        for frame in Frames::new(&bytes, 1 << 20) {
            let frame = frame.unwrap();
            if let Ok(BackendMessage::ErrorResponse(e)) = frame.backend() {
                let s =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
                return (s(e.severity()), s(e.code()), s(e.message()));
            }
        }
        panic!("no ErrorResponse in {bytes:?}");
    }

    fn startup(&mut self, user: &str, database: &str) {
        let mut m = Vec::new();
        startup_message(
            &mut m,
            ProtocolVersion::V3_0,
            &[
                (b"user", user.as_bytes()),
                (b"database", database.as_bytes()),
            ],
        );
        self.send(&m);
    }

    /// Runs a SCRAM login for `user` with `password`.
    fn scram_login(&mut self, user: &str, password: &str) {
        self.startup(user, "db");
        let bytes = std::mem::take(&mut self.to_client);
        let frame = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
        assert!(matches!(
            frame.backend().unwrap(),
            BackendMessage::Authentication(Authentication::Sasl(_))
        ));
        let mut client = ScramClient::new(
            password.as_bytes(),
            ClientChannelBinding::Unsupported,
            &mut OsRng,
        );
        let mut m = Vec::new();
        frontend::sasl_initial_response(&mut m, b"SCRAM-SHA-256", Some(&client.client_first()));
        self.send(&m);
        let bytes = std::mem::take(&mut self.to_client);
        let Some(Ok(frame)) = Frames::new(&bytes, 1 << 20).next() else {
            panic!("no server-first");
        };
        let BackendMessage::Authentication(Authentication::SaslContinue { data }) =
            frame.backend().unwrap()
        else {
            self.to_client = bytes;
            return;
        };
        let last = client.on_server_first(data).unwrap();
        let mut m = Vec::new();
        frontend::sasl_response(&mut m, &last);
        self.send(&m);
    }

    fn logged_in(auth: AuthMethod) -> Harness {
        let mut h = Harness::new(auth, ClientTls::Optional);
        h.scram_login("alice", PASSWORD);
        assert!(h.session.is_logged_in(), "{:?}", h.session);
        h.to_client.clear();
        h.take_actions();
        h
    }
}

fn query(sql: &str) -> Vec<u8> {
    let mut m = Vec::new();
    frontend::query(&mut m, sql.as_bytes());
    m
}

#[test]
fn scram_login_sends_parameters_key_and_ready() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.scram_login("alice", PASSWORD);
    // SASLFinal, AuthenticationOk, 2 ParameterStatus, BackendKeyData, ReadyForQuery.
    assert_eq!(h.client_tags(), b"RRSSKZ");
    assert_eq!(h.take_actions(), vec![Action::LoggedIn]);
}

#[test]
fn first_login_of_a_pool_waits_for_server_parameters() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.params = None;
    h.scram_login("alice", PASSWORD);
    assert_eq!(h.client_tags(), b"RR");
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    let params = Arc::new(vec![("server_version".to_owned(), "15.4".to_owned())]);
    h.call(|s, out| s.on_backend_attached(&params, out));
    assert_eq!(h.client_tags(), b"SKZ");
    assert_eq!(h.take_actions(), vec![Action::LoggedIn, Action::Release]);
}

#[test]
fn client_startup_values_override_reported_parameters() {
    let mut h = Harness::new(AuthMethod::Md5, ClientTls::Optional);
    let mut m = Vec::new();
    startup_message(
        &mut m,
        ProtocolVersion::V3_0,
        &[
            (b"user", b"alice"),
            (b"database", b"db"),
            (b"application_name", b"psql"),
        ],
    );
    h.send(&m);
    let bytes = std::mem::take(&mut h.to_client);
    let frame = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
    let BackendMessage::Authentication(Authentication::Md5Password { salt }) =
        frame.backend().unwrap()
    else {
        panic!("expected md5 request");
    };
    let mut m = Vec::new();
    frontend::password(&mut m, &md5_password(b"alice", PASSWORD.as_bytes(), salt));
    h.send(&m);
    let bytes = std::mem::take(&mut h.to_client);
    let app = Frames::new(&bytes, 1 << 20)
        .filter_map(|f| match f.unwrap().backend() {
            Ok(BackendMessage::ParameterStatus(p)) if p.name == b"application_name" => {
                Some(p.value.to_vec())
            }
            _ => None,
        })
        .next();
    assert_eq!(app.as_deref(), Some(&b"psql"[..]));
}

#[test]
fn wrong_password_and_unknown_user_fail_the_same_way() {
    for (user, password) in [("alice", "wrong"), ("mallory", PASSWORD)] {
        let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
        h.scram_login(user, password);
        let (severity, code, message) = h.client_error();
        assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "28P01"));
        assert_eq!(
            message,
            format!("pglink: password authentication failed for user \"{user}\"")
        );
        assert!(h.take_actions().contains(&Action::Close));
    }
}

#[test]
fn md5_unknown_user_is_asked_for_a_password_then_refused() {
    let mut h = Harness::new(AuthMethod::Md5, ClientTls::Optional);
    h.startup("mallory", "db");
    assert_eq!(h.client_tags(), b"R");
    let mut m = Vec::new();
    frontend::password(&mut m, b"md5whatever");
    h.send(&m);
    assert_eq!(h.client_error().1, "28P01");
}

#[test]
fn unknown_database_is_3d000() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.startup("alice", "nope");
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "3D000"));
    assert!(message.contains("\"nope\""), "{message}");
}

#[test]
fn plaintext_needs_tls() {
    let mut h = Harness::new(AuthMethod::Plaintext, ClientTls::Optional);
    h.startup("alice", "db");
    assert_eq!(h.client_error().1, "28000");
}

#[test]
fn tls_required_refuses_plaintext_startup() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Required);
    h.startup("alice", "db");
    assert_eq!(h.client_error().1, "28000");
}

#[test]
fn ssl_request_is_accepted_and_unencrypted_data_after_it_is_refused() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let mut m = Vec::new();
    ssl_request(&mut m);
    h.send(&m);
    assert_eq!(h.to_client, b"S");
    assert_eq!(h.take_actions(), vec![Action::StartTls { direct: false }]);

    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let mut m = Vec::new();
    ssl_request(&mut m);
    m.extend_from_slice(&query("SELECT 1"));
    h.send(&m);
    assert_eq!(h.client_error().1, "08P01");

    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Disabled);
    let mut m = Vec::new();
    ssl_request(&mut m);
    h.send(&m);
    assert_eq!(h.to_client, b"N");
}

#[test]
fn direct_tls_client_hello_starts_tls_without_consuming() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.send(&[0x16, 0x03, 0x01, 0x00, 0x10]);
    assert_eq!(h.take_actions(), vec![Action::StartTls { direct: true }]);
    assert_eq!(h.input.len(), 5, "the ClientHello stays for the TLS layer");
    h.call(|s, out| s.on_tls_established(true, false, out));
    assert_eq!(
        h.client_error().1,
        "08P01",
        "direct TLS needs ALPN postgresql"
    );
}

#[test]
fn cancel_request_is_reported_and_closes() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let mut m = Vec::new();
    cancel_request(&mut m, 77, &[1, 2, 3, 4]);
    h.send(&m);
    let actions = h.take_actions();
    assert_eq!(actions.len(), 2);
    let Action::Cancel(key) = &actions[0] else {
        panic!("{actions:?}");
    };
    assert_eq!((key.pid, key.secret()), (77, &[1u8, 2, 3, 4][..]));
    assert_eq!(actions[1], Action::Close);
    assert!(h.to_client.is_empty(), "cancel requests get no answer");
}

#[test]
fn newer_protocol_minor_is_negotiated_down_and_gets_a_long_key() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let mut m = Vec::new();
    startup_message(
        &mut m,
        ProtocolVersion { major: 3, minor: 9 },
        &[
            (b"user", b"alice"),
            (b"database", b"db"),
            (b"_pq_.foo", b"1"),
        ],
    );
    h.send(&m);
    let bytes = std::mem::take(&mut h.to_client);
    let first = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
    let BackendMessage::NegotiateProtocolVersion(n) = first.backend().unwrap() else {
        panic!("expected NegotiateProtocolVersion");
    };
    assert_eq!(n.newest_minor, 2);
    assert_eq!(
        n.unrecognized_options().collect::<Vec<_>>(),
        vec![&b"_pq_.foo"[..]]
    );
    assert_eq!(h.session.cancel_key().secret().len(), 32);

    let mut old = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    old.startup("alice", "db");
    assert_eq!(
        old.session.cancel_key().secret().len(),
        4,
        "3.0 keys are 4 bytes"
    );
    assert!(!old.client_tags().contains(&b'v'));
}

#[test]
fn unsupported_major_version_is_refused() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let mut m = Vec::new();
    startup_message(
        &mut m,
        ProtocolVersion { major: 2, minor: 0 },
        &[(b"user", b"alice")],
    );
    h.send(&m);
    assert_eq!(h.client_error().1, "0A000");
}

#[test]
fn garbage_startup_is_a_protocol_violation() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.send(&[0, 0, 0, 3, 1, 2, 3, 4]);
    assert_eq!(h.client_error().1, "08P01");
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.send(&[0x7f, 0xff, 0xff, 0xff]);
    assert_eq!(h.client_error().1, "08P01");
}

#[test]
fn query_while_idle_waits_for_a_backend_then_flows() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let q = query("SELECT 1");
    h.send(&q);
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    assert_eq!(h.input, q, "the message waits unconsumed");
    assert!(h.session.is_acquiring());
    h.attach_fresh_backend(4);
    assert!(h.session.holds_backend());
    h.send(&[]);
    assert_eq!(h.to_backend, q);
    let mut reply = Vec::new();
    crate::protocol::backend::command_complete(&mut reply, b"SELECT 1");
    crate::protocol::backend::ready_for_query(&mut reply, TransactionStatus::Idle);
    let n = h.call(|s, out| s.on_backend_data(&reply, out));
    assert_eq!(n, reply.len());
    assert_eq!(h.take_actions(), vec![Action::Release]);
    assert_eq!(h.to_client, reply);
    assert!(!h.session.holds_backend());
}

#[test]
fn acquire_timeout_on_a_simple_query_is_an_error_and_the_session_goes_on() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("SELECT 1"));
    h.take_actions();
    let error = AcquireError::Timeout {
        database: "db".into(),
        pool_size: 5,
        waited_ms: 1000,
    };
    h.call(|s, out| s.on_acquire_failed(error, out));
    h.send(&[]);
    let bytes = h.to_client.clone();
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("ERROR", "53300"));
    assert!(
        message.contains("\"db\"") && message.contains("pool_max_conns 5"),
        "{message}"
    );
    assert_eq!(bytes.last(), Some(&b'I'), "ReadyForQuery follows");
    assert!(h.input.is_empty());
    assert!(h.session.is_logged_in());
    h.send(&query("SELECT 2"));
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
}

#[test]
fn acquire_failure_in_extended_protocol_skips_to_sync() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let mut batch = Vec::new();
    frontend::parse(&mut batch, b"", b"SELECT 1", &[]);
    frontend::bind(&mut batch, b"", b"", &[], [], &[]);
    frontend::execute(&mut batch, b"", 0);
    h.send(&batch);
    h.take_actions();
    let error = AcquireError::Server {
        code: SqlState::CONNECTION_FAILURE,
        message: "cannot connect".into(),
    };
    h.call(|s, out| s.on_acquire_failed(error, out));
    h.send(&[]);
    assert_eq!(h.client_tags(), b"E");
    assert!(h.input.is_empty(), "Bind and Execute are dropped");
    let mut sync = Vec::new();
    frontend::sync(&mut sync);
    h.send(&sync);
    assert_eq!(h.client_tags(), b"Z");
    assert!(
        h.take_actions().is_empty(),
        "no backend needed for the Sync"
    );
}

#[test]
fn lone_sync_and_flush_are_answered_locally() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let mut m = Vec::new();
    frontend::flush(&mut m);
    frontend::sync(&mut m);
    h.send(&m);
    assert_eq!(h.client_tags(), b"Z");
    assert!(h.take_actions().is_empty());
}

#[test]
fn backend_loss_mid_transaction_is_fatal_08006() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("BEGIN"));
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.send(&[]);
    h.take_actions();
    h.call(|s, out| s.on_backend_lost(out));
    assert_eq!(h.client_error().1, "08006");
    assert_eq!(h.take_actions(), vec![Action::DropBackend, Action::Close]);
}

#[test]
fn copy_both_from_the_server_is_refused_clearly() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("START_REPLICATION 0/0"));
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.send(&[]);
    h.take_actions();
    // CopyBothResponse: text format, no columns.
    let reply = [b'W', 0, 0, 0, 7, 0, 0, 0];
    h.call(|s, out| s.on_backend_data(&reply, out));
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "0A000"));
    assert!(message.contains("COPY BOTH"), "{message}");
    assert_eq!(h.take_actions(), vec![Action::DropBackend, Action::Close]);
}

#[test]
fn detach_decides_the_backend_fate() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("BEGIN"));
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert!(matches!(h.session.detach(), Some(BackendFate::Reset(_))));

    // Messages pglink need not read whole (here CopyData) are streamed: half of one sent
    // leaves the server waiting for the rest, so the backend cannot be reused.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("BEGIN"));
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    let mut copy = Vec::new();
    frontend::copy_data(&mut copy, b"a long row of data");
    h.send(&copy[..9]);
    assert_eq!(h.to_backend, &copy[..9], "the known part is streamed on");
    assert!(
        matches!(h.session.detach(), Some(BackendFate::Drop)),
        "half a message was sent"
    );
}

#[test]
fn login_timeout_is_fatal() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.startup("alice", "db");
    h.to_client.clear();
    h.call(|s, out| s.on_login_timeout(out));
    assert_eq!(h.client_error().1, "57014");
}

#[test]
fn terminate_while_idle_closes_without_a_backend() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let mut m = Vec::new();
    frontend::terminate(&mut m);
    h.send(&m);
    assert_eq!(h.take_actions(), vec![Action::Close]);
}

// ---- named prepared statements ------------------------------------------------------------

/// Tags of the messages in `bytes`.
fn tags(bytes: &[u8]) -> Vec<u8> {
    Frames::new(bytes, 1 << 20)
        .map(|f| f.unwrap().tag)
        .collect()
}

/// The statement names of the Parse/Bind/Close messages in `bytes`, in order.
fn names(bytes: &[u8]) -> Vec<(u8, String)> {
    use crate::protocol::FrontendMessage;
    Frames::new(bytes, 1 << 20)
        .filter_map(|f| {
            let f = f.unwrap();
            let name = match FrontendMessage::decode(f.tag, f.body).unwrap() {
                FrontendMessage::Parse(p) => p.name.to_vec(),
                FrontendMessage::Bind(b) => b.statement.to_vec(),
                FrontendMessage::Close(c) => c.name.to_vec(),
                FrontendMessage::Describe(d) => d.name.to_vec(),
                _ => return None,
            };
            Some((f.tag, String::from_utf8(name).unwrap()))
        })
        .collect()
}

fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut m = Vec::new();
    frontend::parse(&mut m, name.as_bytes(), sql.as_bytes(), &[]);
    m
}

fn bind_msg(name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    frontend::bind(&mut m, b"", name.as_bytes(), &[], [], &[]);
    m
}

fn sync_msg() -> Vec<u8> {
    let mut m = Vec::new();
    frontend::sync(&mut m);
    m
}

impl Harness {
    /// Holds a fresh backend (with its own prepared-statement set) for what follows.
    fn attach_fresh_backend(&mut self, capacity: usize) {
        // Like a backend that just logged in: it knows the server's parameters.
        self.backend = BackendContext::new(capacity);
        for (name, value) in self.params.iter().flat_map(|p| p.iter()) {
            self.backend.params.set(name, value);
        }
        self.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
        self.take_actions();
    }

    /// Feeds backend bytes, returning the actions.
    fn backend(&mut self, bytes: &[u8]) -> Vec<Action> {
        let n = self.call(|s, out| s.on_backend_data(bytes, out));
        assert_eq!(n, bytes.len());
        self.take_actions()
    }

    fn take_backend(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_backend)
    }
}

fn ready() -> Vec<u8> {
    let mut m = Vec::new();
    crate::protocol::backend::ready_for_query(&mut m, TransactionStatus::Idle);
    m
}

fn simple_reply(tags_and_bodies: &[(u8, &[u8])]) -> Vec<u8> {
    let mut m = Vec::new();
    for (tag, body) in tags_and_bodies {
        crate::protocol::write_message(&mut m, *tag, |b| b.extend_from_slice(body));
    }
    m
}

/// A Describe (statement) answer: no parameters, one int4 column named `column`.
fn shape_answer(column: &str) -> Vec<u8> {
    let mut row = 1u16.to_be_bytes().to_vec();
    row.extend_from_slice(column.as_bytes());
    row.push(0);
    row.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // table, column
    row.extend_from_slice(&23u32.to_be_bytes());
    row.extend_from_slice(&[0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0]); // size, modifier, format
    simple_reply(&[(b't', b"\0\0"), (b'T', &row)])
}

/// ParseComplete and the shape answer of pglink's Describe.
fn prepared_reply(column: &str) -> Vec<u8> {
    [simple_reply(&[(b'1', b"")]), shape_answer(column)].concat()
}

fn stale_error() -> Vec<u8> {
    simple_reply(&[(
        b'E',
        b"SERROR\0VERROR\0C0A000\0Mcached plan must not change result type\0\0",
    )])
}

#[test]
fn prepared_statement_is_reprepared_on_a_new_backend() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s1", "SELECT 1"), sync_msg()].concat());
    assert_eq!(
        h.take_actions(),
        vec![Action::Acquire],
        "never parsed: a server must check it"
    );
    h.attach_fresh_backend(4);
    h.send(&[]);
    let sent = names(&h.take_backend());
    let (tag, server) = sent[0].clone();
    assert_eq!(tag, b'P');
    assert!(server.starts_with("pglink_"), "{server}");
    assert_eq!(
        sent,
        vec![(b'P', server.clone()), (b'D', server.clone())],
        "a Describe learns the statement's shape"
    );
    assert_eq!(h.backend(&prepared_reply("x")), vec![]);
    assert_eq!(h.backend(&ready()), vec![Action::Release]);
    assert_eq!(
        tags(&std::mem::take(&mut h.to_client)),
        b"1Z",
        "only the client's own answers are shown"
    );
    // Another backend, which lacks it: the Parse (and Describe) go before the Bind, under
    // the server name, and the Bind waits for the shape, which the client has seen.
    h.send(&[bind_msg("s1"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    let sent = h.take_backend();
    assert_eq!(
        tags(&sent),
        b"PDH",
        "Parse, Describe, Flush; the Bind waits"
    );
    assert_eq!(
        h.backend(&prepared_reply("x")),
        vec![Action::ResumeInput],
        "same shape: go on"
    );
    h.send(&[]);
    assert_eq!(names(&h.take_backend()), vec![(b'B', server.clone())]);
    h.backend(&simple_reply(&[(b'2', b"")]));
    assert_eq!(h.backend(&ready()), vec![Action::Release]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"2Z");
    // Once a server accepted it, a Parse of the same text by a new name needs no backend.
    h.send(&[parse_msg("s2", "SELECT 1"), sync_msg()].concat());
    assert!(h.take_actions().is_empty());
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"1Z");
    // A backend that has it with the same shape needs nothing before the Bind.
    h.send(&[bind_msg("s2"), sync_msg()].concat());
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"BS");
}

#[test]
fn a_changed_result_type_is_postgresqls_error_not_misread_rows() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELECT * FROM t"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    let server = names(&h.take_backend())[0].1.clone();
    h.backend(&[prepared_reply("old"), ready()].concat());
    h.to_client.clear();
    // On a new backend the fresh copy shows another shape (DDL happened meanwhile): the
    // client's Bind + Execute must not run; it gets 0A000 as from PostgreSQL.
    let mut batch = bind_msg("s");
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"PDH");
    assert_eq!(h.backend(&prepared_reply("new")), vec![Action::ResumeInput]);
    h.send(&[]);
    let sent = h.take_backend();
    assert_eq!(
        tags(&sent),
        b"BES",
        "a Bind the server fails, then the rest"
    );
    assert_ne!(names(&sent)[0].1, server, "not the statement's Bind");
    let server_error = simple_reply(&[(b'E', b"SERROR\0VERROR\0C26000\0Mno such statement\0\0")]);
    h.backend(&[server_error, ready()].concat());
    let bytes = h.to_client.clone();
    let (_, code, message) = h.client_error();
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("0A000", "cached plan must not change result type")
    );
    let error = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
    let fields = crate::protocol::ErrorFields::decode(error.tag, error.body).unwrap();
    assert_eq!(
        fields.get(b'R'),
        Some(&b"RevalidateCachedQuery"[..]),
        "drivers recognise the error by its routine"
    );
    // A new name for the same text takes the new shape and runs.
    h.send(
        &[
            parse_msg("s2", "SELECT * FROM t"),
            bind_msg("s2"),
            sync_msg(),
        ]
        .concat(),
    );
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"BS",
        "the backend has the new copy"
    );
}

#[test]
fn a_stale_copy_on_a_backend_is_replaced_for_clients_that_prepare_again() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELECT * FROM t"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    let server = names(&h.take_backend())[0].1.clone();
    h.backend(&[prepared_reply("old"), ready()].concat());
    h.to_client.clear();
    // The server reports the copy stale: PostgreSQL's error reaches the client unchanged,
    // and nothing is retried behind its back.
    let mut batch = bind_msg("s");
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(names(&h.take_backend()), vec![(b'B', server.clone())]);
    h.backend(&[stale_error(), ready()].concat());
    assert_eq!(h.client_error().1, "0A000");
    assert!(h.take_backend().is_empty(), "nothing retried");
    // The client prepares it again under a new name: the stale copy is closed and replaced,
    // and the new name runs with the new shape.
    h.send(
        &[
            parse_msg("s2", "SELECT * FROM t"),
            bind_msg("s2"),
            sync_msg(),
        ]
        .concat(),
    );
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    let sent = h.take_backend();
    assert_eq!(tags(&sent), b"CPDBS", "{:?}", names(&sent));
    assert!(names(&sent).iter().all(|(_, n)| *n == server));
    h.backend(
        &[
            simple_reply(&[(b'3', b"")]),
            prepared_reply("new"),
            simple_reply(&[(b'2', b"")]),
            ready(),
        ]
        .concat(),
    );
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"12Z");
    // The old name, whose shape is the old one, gets 0A000 again (as in PostgreSQL).
    h.send(&batch);
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"CPDH",
        "the copy is checked again"
    );
    let answers = [simple_reply(&[(b'3', b"")]), prepared_reply("new")].concat();
    assert_eq!(h.backend(&answers), vec![Action::ResumeInput]);
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"BES");
}

#[test]
fn eviction_closes_the_least_recently_used_then_reuse_reprepares() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&parse_msg("a", "SELECT 'a'"));
    h.attach_fresh_backend(1);
    h.send(&[parse_msg("b", "SELECT 'b'"), bind_msg("a"), sync_msg()].concat());
    let sent = names(&h.take_backend());
    let server = |i: usize| sent[i].1.clone();
    // Parse a, then b evicts a (Close), then Bind a evicts b and re-prepares a. a's shape is
    // not known yet, so the Bind need not wait for it.
    assert_eq!(
        sent.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        b"PDCPDCPDB",
        "{sent:?}"
    );
    assert_eq!(server(2), server(0), "a is closed to make room for b");
    assert_eq!(server(5), server(3), "then b for a");
    assert_eq!(server(6), server(0));
    assert_eq!(h.backend.statements.len(), 1);
}

#[test]
fn close_then_reparse_of_the_same_name_is_allowed() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&parse_msg("s", "SELECT 1"));
    h.attach_fresh_backend(4);
    h.send(&[]);
    let mut close = Vec::new();
    frontend::close(
        &mut close,
        crate::protocol::frontend::Target::Statement,
        b"s",
    );
    h.send(&[close, parse_msg("s", "SELECT 2"), sync_msg()].concat());
    let sent = tags(&h.take_backend());
    assert_eq!(
        sent, b"PDPDS",
        "the Close stays local; the second Parse goes out"
    );
    h.backend(&[prepared_reply("a"), prepared_reply("b")].concat());
    h.backend(&ready());
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"131Z");
}

#[test]
fn describe_is_answered_from_the_cache_the_second_time() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let mut describe = Vec::new();
    frontend::describe(
        &mut describe,
        crate::protocol::frontend::Target::Statement,
        b"s",
    );
    h.send(&[parse_msg("s", "SELECT 1"), describe.clone(), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"PDDS",
        "pglink's Describe for the shape, then the client's"
    );
    let answer = shape_answer("x");
    h.backend(&[prepared_reply("x"), answer.clone()].concat());
    assert_eq!(h.backend(&ready()), vec![Action::Release]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"1tTZ");
    h.to_client.clear();
    // A second client of the database (same registry) describes it without a backend.
    let mut other = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    other.context = h.context.clone();
    other.scram_login("alice", PASSWORD);
    other.to_client.clear();
    other.take_actions();
    other.send(
        &[
            parse_msg("mine", "SELECT 1"),
            describe_named("mine"),
            sync_msg(),
        ]
        .concat(),
    );
    assert!(other.take_actions().is_empty(), "no backend needed");
    assert_eq!(
        other.to_client,
        [simple_reply(&[(b'1', b"")]), answer, ready()].concat()
    );
}

fn describe_named(name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    frontend::describe(
        &mut m,
        crate::protocol::frontend::Target::Statement,
        name.as_bytes(),
    );
    m
}

#[test]
fn duplicate_and_unknown_names_are_errors_in_their_place() {
    // Without a backend: answered locally, the rest of the batch skipped to Sync.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[bind_msg("nope"), parse_msg("x", "SELECT 1"), sync_msg()].concat());
    let bytes = h.to_client.clone();
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("ERROR", "26000"));
    assert!(message.contains("\"nope\""), "{message}");
    assert_eq!(tags(&bytes), b"EZ");
    // With a backend: the server is made to fail the batch, pglink's error in its place.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&parse_msg("s", "SELECT 1"));
    h.attach_fresh_backend(4);
    h.send(&[parse_msg("s", "SELECT 2"), sync_msg()].concat());
    let sent = h.take_backend();
    assert_eq!(
        tags(&sent),
        b"PDBS",
        "the duplicate becomes a Bind the server fails"
    );
    let server_error = simple_reply(&[(b'E', b"SERROR\0VERROR\0C26000\0Mno such statement\0\0")]);
    h.backend(&[prepared_reply("x"), server_error, ready()].concat());
    let (_, code, message) = h.client_error();
    assert_eq!(code, "42P05");
    assert!(message.contains("\"s\" already exists"), "{message}");
}

#[test]
fn failed_parse_forgets_the_name() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELEC 1"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    let syntax = simple_reply(&[(b'E', b"SERROR\0VERROR\0C42601\0Msyntax error\0\0")]);
    h.backend(&[syntax, ready()].concat());
    assert_eq!(h.client_error().1, "42601");
    // The name is free again, as in PostgreSQL.
    h.send(&[parse_msg("s", "SELECT 1"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"PDS");
    // On the backend where the Parse failed, the same text is closed before it is prepared
    // again: after a failure pglink cannot tell whether the server has a copy.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELEC 1"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    let syntax = simple_reply(&[(b'E', b"SERROR\0VERROR\0C42601\0Msyntax error\0\0")]);
    h.backend(&[syntax, ready()].concat());
    h.to_client.clear();
    h.send(&[parse_msg("t", "SELEC 1"), sync_msg()].concat());
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"CPDS");
}

#[test]
fn unnamed_statements_and_portals_pass_through_untouched() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let mut batch = parse_msg("", "SELECT 1");
    frontend::bind(&mut batch, b"p1", b"", &[], [], &[]);
    frontend::describe(&mut batch, crate::protocol::frontend::Target::Portal, b"p1");
    frontend::execute(&mut batch, b"p1", 0);
    frontend::close(&mut batch, crate::protocol::frontend::Target::Portal, b"p1");
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(h.take_backend(), batch);
}

#[test]
fn stale_plan_inside_a_transaction_is_the_clients_error() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELECT * FROM t"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    h.backend(&[prepared_reply("x"), ready()].concat());
    h.to_client.clear();
    h.send(&query("BEGIN"));
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    let mut in_block = Vec::new();
    crate::protocol::backend::command_complete(&mut in_block, b"BEGIN");
    crate::protocol::backend::ready_for_query(&mut in_block, TransactionStatus::InBlock);
    h.backend(&in_block);
    let mut batch = bind_msg("s");
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.take_backend();
    h.backend(&stale_error());
    assert!(h.take_backend().is_empty(), "nothing resent");
    assert_eq!(h.client_error().1, "0A000");
}

/// A client of `h` waiting with `SELECT 1` gets a backend that another client left with a
/// setting of its own; returns the query text pglink sent first.
fn attach_backend_with_foreign_setting(h: &mut Harness) -> String {
    h.send(&query("SELECT 1"));
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    h.backend = BackendContext::new(4);
    for (name, value) in h.params.iter().flat_map(|p| p.iter()) {
        h.backend.params.set(name, value);
    }
    h.backend.params.set("myapp.tenant", "other");
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.send(&[]);
    let sent = h.take_backend();
    assert_eq!(tags(&sent), b"Q", "only the sync: the client's query waits");
    String::from_utf8_lossy(&sent[5..]).into_owned()
}

#[test]
fn client_statements_wait_for_the_parameter_sync() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let sql = attach_backend_with_foreign_setting(&mut h);
    assert!(sql.contains("RESET myapp.tenant"), "{sql}");
    let done = [simple_reply(&[(b'C', b"RESET\0")]), ready()].concat();
    assert_eq!(h.backend(&done), vec![Action::ResumeInput]);
    assert!(h.to_client.is_empty(), "the sync's answers are not shown");
    assert_eq!(h.backend.params.get("myapp.tenant"), None);
    h.send(&[]);
    assert_eq!(h.take_backend(), query("SELECT 1"));
}

#[test]
fn a_failed_parameter_sync_ends_the_session_before_its_statements_run() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    attach_backend_with_foreign_setting(&mut h);
    let error = simple_reply(&[(
        b'E',
        b"SERROR\0VERROR\0C42704\0Munrecognized configuration parameter \"myapp\"\0\0",
    )]);
    assert_eq!(
        h.backend(&[error, ready()].concat()),
        vec![Action::Release, Action::Close],
        "the backend is clean: back to the pool"
    );
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "42704"));
    assert!(
        message.contains("settings could not be applied"),
        "{message}"
    );
    assert!(
        message.contains("unrecognized configuration parameter"),
        "{message}"
    );
    h.send(&[]);
    assert!(h.take_backend().is_empty(), "the client's query never ran");
    assert_eq!(h.backend.params.get("myapp.tenant"), Some("other"));
}

fn describe_portal_msg() -> Vec<u8> {
    let mut m = Vec::new();
    frontend::describe(&mut m, crate::protocol::frontend::Target::Portal, b"");
    m
}

/// A client that prepared `SELECT * FROM t` (shape "old") and now holds a backend that has
/// the statement, about to send `batch`.
fn client_with_prepared_statement() -> (Harness, String) {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELECT * FROM t"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    let server = names(&h.take_backend())[0].1.clone();
    h.backend(&[prepared_reply("old"), ready()].concat());
    h.to_client.clear();
    (h, server)
}

#[test]
fn a_batch_that_describes_its_portal_is_replayed_after_a_stale_plan() {
    let (mut h, server) = client_with_prepared_statement();
    // libpq's PQexecPrepared: Bind, Describe portal, Execute, Sync.
    let mut batch = [bind_msg("s"), describe_portal_msg()].concat();
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"BDES");
    h.backend(&[stale_error(), ready()].concat());
    assert!(
        h.to_client.is_empty(),
        "the error and its ReadyForQuery are not shown"
    );
    let resent = h.take_backend();
    assert_eq!(
        tags(&resent),
        b"CPDBDES",
        "closed, prepared again, replayed"
    );
    assert!(names(&resent)[..4].iter().all(|(_, n)| *n == server));
    let rows = [
        simple_reply(&[(b'3', b"")]),
        prepared_reply("new"),
        simple_reply(&[(b'2', b"")]),
        shape_answer("new")[7..].to_vec(), // the portal's RowDescription
        simple_reply(&[(b'D', b"\0\x01\0\0\0\x011"), (b'C', b"SELECT 1\0")]),
        ready(),
    ]
    .concat();
    assert_eq!(h.backend(&rows), vec![Action::Release]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"2TDCZ");
    // Once only: a second stale plan in the replay is the client's error.
    h.send(&batch);
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"BDES");
    h.backend(&[stale_error(), ready()].concat());
    assert_eq!(tags(&h.take_backend()), b"CPDBDES");
    h.backend(
        &[
            simple_reply(&[(b'3', b"")]),
            prepared_reply("newer"),
            stale_error(),
            ready(),
        ]
        .concat(),
    );
    assert_eq!(h.client_error().1, "0A000");
}

#[test]
fn a_batch_that_relies_on_a_cached_description_gets_the_stale_plan_error() {
    let (mut h, _) = client_with_prepared_statement();
    let mut batch = bind_msg("s");
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.call(|s, out| s.on_backend_attached(&Arc::new(Vec::new()), out));
    h.take_actions();
    h.send(&[]);
    h.take_backend();
    h.backend(&[stale_error(), ready()].concat());
    assert_eq!(h.client_error().1, "0A000");
    assert!(h.take_backend().is_empty(), "nothing replayed");
}

#[test]
fn a_batch_that_describes_its_portal_adopts_a_fresh_shape_without_waiting() {
    let (mut h, _) = client_with_prepared_statement();
    let mut batch = [bind_msg("s"), describe_portal_msg()].concat();
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"PDBDES",
        "prepared and run in one go: the client learns the shape from its Describe"
    );
}
