//! Scenarios for the client session state machine, driven byte by byte like the reactor does.

use std::collections::HashMap;
use std::sync::Arc;

use super::statements::Registry;
use super::users::{DbEntry, ScramSecret, UserEntry, UserTable};
use super::*;
use crate::auth::{ClientChannelBinding, FixedRng, OsRng, ScramClient, md5_password};
use crate::engine::error::{ConnectFailure, ServerError};
use crate::observe::events::{Interest, Recorded};
use crate::protocol::TransactionStatus;
use crate::protocol::backend::{Authentication, BackendMessage};
use crate::protocol::framing::Frames;
use crate::protocol::frontend;
use crate::protocol::startup::{ProtocolVersion, cancel_request, ssl_request, startup_message};

const PASSWORD: &str = "secret";

/// The server connection the scenarios lend.
fn server_id() -> ServerId {
    ServerId::new(3, 1)
}

fn users() -> UserTable {
    let mut rng = FixedRng::new(vec![7u8; 64]);
    let scram = Arc::new(ScramSecret::new(PASSWORD, 4096, &mut rng));
    scram.derive();
    let entry = UserEntry::new("alice".into(), PASSWORD.into(), 0, scram);
    let mut db = DbEntry::default();
    db.users.insert("alice".into(), Arc::new(entry));
    UserTable {
        databases: HashMap::from([("db".to_owned(), db)]),
        scram_iterations: 4096,
        mock_secret: [9; 32],
        console: Default::default(),
    }
}

fn config(auth_method: AuthMethod, tls: ClientTls) -> SessionConfig {
    SessionConfig {
        auth_method,
        tls,
        channel_binding: Some(vec![1; 32]),
        traceparent_parameter: "traceparent".into(),
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
    /// The engine's clock for the next call.
    now: Instant,
    events: Recorded,
    relays: RelayPool,
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
                cache_unnamed: false,
            }),
            actions: Vec::new(),
            stats: ReactorStats::new(4, 4),
            now: crate::test_clock::epoch(),
            events: Recorded::default(),
            relays: RelayPool::default(),
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
            now: self.now,
            events: Some(&mut self.events),
            interest: Interest::ALL,
            relays: &mut self.relays,
        };
        f(&mut self.session, &mut out)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        let input = std::mem::take(&mut self.input);
        let n = self.with_env(|session, env, out| session.on_client_data(&input, env, out));
        self.input = input;
        self.input.drain(..n);
    }

    /// Calls a session method with everything the engine would give it.
    fn with_env<R>(&mut self, f: impl FnOnce(&mut Session, &mut Env<'_>, &mut Out<'_>) -> R) -> R {
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
            now: self.now,
            events: Some(&mut self.events),
            interest: Interest::ALL,
            relays: &mut self.relays,
        };
        f(&mut self.session, &mut env, &mut out)
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
        self.startup_with(user, database, &[]);
    }

    fn startup_with(&mut self, user: &str, database: &str, extra: &[(&str, &str)]) {
        let mut params: Vec<(&[u8], &[u8])> = vec![
            (b"user", user.as_bytes()),
            (b"database", database.as_bytes()),
        ];
        params.extend(extra.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let mut m = Vec::new();
        startup_message(&mut m, ProtocolVersion::V3_0, &params);
        self.send(&m);
    }

    /// Runs a SCRAM login for `user` with `password`.
    fn scram_login(&mut self, user: &str, password: &str) {
        self.scram_login_with(user, password, &[]);
    }

    /// The same with more startup parameters.
    fn scram_login_with(&mut self, user: &str, password: &str, extra: &[(&str, &str)]) {
        self.startup_with(user, "db", extra);
        let bytes = std::mem::take(&mut self.to_client);
        let frame = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
        assert!(matches!(
            frame.backend().unwrap(),
            BackendMessage::Authentication(Authentication::Sasl(_))
        ));
        self.scram_exchange(password);
    }

    /// The SCRAM exchange after the server's AuthenticationSASL: client-first, then
    /// client-final if the server answered with server-first (otherwise its answer stays in
    /// `to_client`).
    fn scram_exchange(&mut self, password: &str) {
        let mut client = ScramClient::new(
            password.as_bytes(),
            ClientChannelBinding::Unsupported,
            &mut OsRng,
        );
        self.to_client.clear();
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
        Harness::logged_in_with(auth, &[])
    }

    /// Logged in with these startup parameters.
    fn logged_in_with(auth: AuthMethod, extra: &[(&str, &str)]) -> Harness {
        let mut h = Harness::new(auth, ClientTls::Optional);
        h.scram_login_with("alice", PASSWORD, extra);
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
fn a_traceparent_startup_parameter_is_kept_by_the_session_not_sent_on() {
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let h = Harness::logged_in_with(AuthMethod::Scram, &[("traceparent", valid), ("x", "1")]);
    assert_eq!(
        h.session.trace_parent().map(ToString::to_string).as_deref(),
        Some(valid)
    );
    assert_eq!(h.session.startup_params, [("x".to_owned(), "1".to_owned())]);
    let h = Harness::logged_in_with(AuthMethod::Scram, &[("traceparent", "00-bad")]);
    assert!(h.session.trace_parent().is_none() && h.session.startup_params.is_empty());
}

/// A harness whose `alice` has a SCRAM verifier not derived yet (as right after a start or
/// a reload); that verifier's secret.
fn with_underived_verifier() -> (Harness, Arc<ScramSecret>) {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let mut rng = FixedRng::new(vec![8u8; 16]);
    let lazy = Arc::new(ScramSecret::new(PASSWORD, 4096, &mut rng));
    let entry = UserEntry::new("alice".into(), PASSWORD.into(), 0, lazy.clone());
    h.users
        .databases
        .get_mut("db")
        .unwrap()
        .users
        .insert("alice".into(), Arc::new(entry));
    (h, lazy)
}

#[test]
fn a_scram_login_waits_for_a_verifier_not_derived_yet() {
    let (mut h, lazy) = with_underived_verifier();
    h.startup("alice", "db");
    // Nothing goes out (the SASL offer would carry a salt the keys are not derived for yet);
    // the engine is asked to have it derived off the reactor.
    assert_eq!(h.client_tags(), b"");
    assert_eq!(h.take_actions(), vec![Action::DeriveVerifier(lazy.clone())]);
    assert!(
        lazy.get().is_none(),
        "the session does not derive it itself"
    );
    // A client that does not wait for the offer: its bytes stay unconsumed meanwhile.
    let mut early = Vec::new();
    frontend::sasl_response(&mut early, b"early");
    h.send(&early);
    assert_eq!(h.input, early);
    assert_eq!(h.client_tags(), b"");
    lazy.derive();
    h.with_env(|s, env, out| s.on_verifier_ready(env, out));
    assert_eq!(h.client_tags(), b"R", "AuthenticationSASL");
    assert_eq!(h.take_actions(), vec![Action::ResumeInput]);
    // A second report (a duplicate) changes nothing.
    h.with_env(|s, env, out| s.on_verifier_ready(env, out));
    assert_eq!(h.client_tags(), b"");
    assert!(h.take_actions().is_empty());
}

#[test]
fn a_scram_login_completes_once_its_verifier_is_derived() {
    let (mut h, lazy) = with_underived_verifier();
    h.startup("alice", "db");
    assert_eq!(h.take_actions(), vec![Action::DeriveVerifier(lazy.clone())]);
    lazy.derive();
    h.with_env(|s, env, out| s.on_verifier_ready(env, out));
    h.take_actions();
    // The offer is out: the rest of the exchange runs as for any user, against the salt
    // chosen before the keys were derived.
    h.scram_exchange(PASSWORD);
    assert!(h.session.is_logged_in(), "{:?}", h.session);
    assert_eq!(h.take_actions(), vec![Action::LoggedIn]);
}

/// A SCRAM-SHA-256-PLUS login over TLS bound to `binding`: whether it got in.
fn plus_login_with(h: &mut Harness, binding: Vec<u8>) -> bool {
    h.startup_with("alice", "db", &[]);
    let mut client = ScramClient::new(
        PASSWORD.as_bytes(),
        ClientChannelBinding::TlsServerEndPoint(binding),
        &mut OsRng,
    );
    h.to_client.clear();
    let mut m = Vec::new();
    let mechanism = crate::auth::SCRAM_SHA_256_PLUS.as_bytes();
    frontend::sasl_initial_response(&mut m, mechanism, Some(&client.client_first()));
    h.send(&m);
    let bytes = std::mem::take(&mut h.to_client);
    let frame = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
    let BackendMessage::Authentication(Authentication::SaslContinue { data }) =
        frame.backend().unwrap()
    else {
        return false;
    };
    let last = client.on_server_first(data).unwrap();
    let mut m = Vec::new();
    frontend::sasl_response(&mut m, &last);
    h.send(&m);
    h.session.is_logged_in()
}

#[test]
fn channel_binding_is_the_certificate_the_connection_was_served_not_the_configuration_now() {
    // The configuration's certificate hash is [1; 32] (see `config`); this connection's
    // handshake was served one whose hash is [2; 32] (a reload changed it in between).
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.call(|s, out| {
        s.set_channel_binding(Some(vec![2; 32]));
        s.on_tls_established(false, false, out);
    });
    assert!(
        plus_login_with(&mut h, vec![2; 32]),
        "bound to the served certificate"
    );
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.call(|s, out| {
        s.set_channel_binding(Some(vec![2; 32]));
        s.on_tls_established(false, false, out);
    });
    assert!(
        !plus_login_with(&mut h, vec![1; 32]),
        "not to the configuration's"
    );
}

/// A harness whose `alice` may (or may not) use the admin console.
fn console_harness(admin: bool) -> Harness {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let entry = h.users.databases["db"].users["alice"].clone();
    h.users.console.insert("alice".into(), (entry, admin));
    h
}

/// A SCRAM login of alice to the console database.
fn console_login(h: &mut Harness) {
    h.startup_with("alice", "pglink", &[]);
    h.scram_exchange(PASSWORD);
}

#[test]
fn an_admin_logs_in_to_the_console_and_its_queries_become_commands() {
    let mut h = console_harness(true);
    console_login(&mut h);
    assert!(h.session.is_logged_in(), "{:?}", h.session);
    assert_eq!(
        h.take_actions(),
        vec![Action::LoggedIn],
        "no server connection needed"
    );
    let tags = h.client_tags();
    assert_eq!(tags.first(), Some(&b'R'));
    assert!(tags.ends_with(b"KZ"), "{tags:?}");
    // A query is a command for the console thread; input waits until it is answered.
    h.send(&query("SHOW POOLS;"));
    assert_eq!(
        h.take_actions(),
        vec![Action::Console("SHOW POOLS;".into())]
    );
    h.send(&query("SHOW VERSION"));
    assert!(!h.input.is_empty(), "the second one waits");
    assert!(h.take_actions().is_empty());
    let mut answer = Vec::new();
    crate::protocol::backend::command_complete(&mut answer, b"SHOW");
    h.call(|s, out| s.on_console_reply(&answer, out));
    assert_eq!(h.client_tags(), b"CZ");
    assert_eq!(h.take_actions(), vec![Action::ResumeInput]);
    h.send(&[]);
    assert_eq!(
        h.take_actions(),
        vec![Action::Console("SHOW VERSION".into())]
    );
}

#[test]
fn a_user_not_in_admin_users_is_refused_42501_after_authenticating() {
    let mut h = console_harness(false);
    console_login(&mut h);
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "42501"));
    assert!(message.contains("admin_users"), "{message}");
    assert!(h.session.is_closed());
}

#[test]
fn the_console_takes_simple_queries_only() {
    let mut h = console_harness(true);
    console_login(&mut h);
    h.take_actions();
    h.to_client.clear();
    let mut parse = Vec::new();
    frontend::parse(&mut parse, b"", b"SHOW POOLS", &[]);
    h.send(&parse);
    let (severity, code, _) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "08P01"));
}

#[test]
fn first_login_of_a_pool_waits_for_server_parameters() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.params = None;
    h.scram_login("alice", PASSWORD);
    assert_eq!(h.client_tags(), b"RR");
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    let params = Arc::new(vec![("server_version".to_owned(), "15.4".to_owned())]);
    h.call(|s, out| s.on_backend_attached(server_id(), &params, false, out));
    assert_eq!(h.client_tags(), b"SKZ");
    assert_eq!(
        h.take_actions(),
        vec![Action::LoggedIn, Action::Release(server_id())]
    );
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

/// What a client does after its startup packet: `(harness, user, password, auth request)`.
type LoginStep = dyn Fn(&mut Harness, &str, &str, &[u8]);

/// Everything a failed login sent the client, frame by frame, with `user`'s name written as
/// `alice` (the names compared have the same length, so lengths are comparable too).
fn failed_login_frames(h: &mut Harness, user: &str) -> Vec<(u8, Vec<u8>)> {
    let bytes = std::mem::take(&mut h.to_client);
    let frames: Vec<(u8, Vec<u8>)> = Frames::new(&bytes, 1 << 20)
        .map(|f| {
            let f = f.unwrap();
            (f.tag, f.body.to_vec())
        })
        .collect();
    assert!(
        h.take_actions().contains(&Action::Close),
        "the session ends"
    );
    let needle = user.as_bytes();
    assert_eq!(needle.len(), 5, "compare names as long as alice");
    frames
        .into_iter()
        .map(|(tag, mut body)| {
            let mut from = 0;
            while let Some(i) = body[from..].windows(5).position(|w| w == needle) {
                body[from + i..from + i + 5].copy_from_slice(b"alice");
                from += i + 5;
            }
            (tag, body)
        })
        .collect()
}

/// An unknown user and a known user with the wrong password get the same answers, byte for
/// byte, with every method (only what is random in every exchange differs: the md5 salt, the
/// SCRAM nonce and salt); a message of the wrong kind is refused the same way for both.
#[test]
fn unknown_user_and_wrong_password_are_answered_byte_for_byte_alike() {
    // (user, password): a wrong password for alice, alice's password for an unknown user.
    let attempts = [("alice", "wrong!"), ("ghost", PASSWORD)];
    let run = |method: AuthMethod, step: &LoginStep| {
        let mut results = Vec::new();
        for (user, password) in attempts {
            let mut h = Harness::new(method, ClientTls::Optional);
            h.session.set_local();
            h.startup(user, "db");
            let request = std::mem::take(&mut h.to_client);
            step(&mut h, user, password, &request);
            results.push((request, failed_login_frames(&mut h, user)));
        }
        results
    };
    let error_is_28p01 = |frames: &[(u8, Vec<u8>)]| {
        let last = frames.last().unwrap();
        assert_eq!(last.0, b'E');
        let BackendMessage::ErrorResponse(e) = BackendMessage::decode(last.0, &last.1).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(e.code(), Some(&b"28P01"[..]));
    };

    // Cleartext (over a unix socket): the same request, the same refusal.
    let r = run(AuthMethod::Plaintext, &|h, _, password, _| {
        let mut m = Vec::new();
        frontend::password(&mut m, password.as_bytes());
        h.send(&m);
    });
    assert_eq!(r[0], r[1], "cleartext");
    error_is_28p01(&r[0].1);

    // md5: requests alike but for the random salt, the same refusal.
    let r = run(AuthMethod::Md5, &|h, user, password, request| {
        let salt: [u8; 4] = request[request.len() - 4..].try_into().unwrap();
        let mut m = Vec::new();
        frontend::password(
            &mut m,
            &md5_password(user.as_bytes(), password.as_bytes(), salt),
        );
        h.send(&m);
    });
    let (a, b) = (&r[0].0, &r[1].0);
    assert_eq!(
        (a.len(), &a[..a.len() - 4]),
        (b.len(), &b[..b.len() - 4]),
        "md5 request"
    );
    assert_eq!(r[0].1, r[1].1, "md5");
    error_is_28p01(&r[0].1);

    // SCRAM: the same mechanisms, a server-first of the same shape (nonce, salt and
    // iteration count alike in length; the same count), then the same refusal.
    let r = run(AuthMethod::Scram, &|h, _, password, _| {
        h.scram_exchange(password);
    });
    assert_eq!(r[0].0, r[1].0, "SCRAM mechanisms");
    assert_eq!(r[0].1, r[1].1, "SCRAM refusal");
    error_is_28p01(&r[0].1);
    let server_first = |user: &str| {
        let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
        h.startup(user, "db");
        h.to_client.clear();
        let client = ScramClient::new(
            b"x",
            ClientChannelBinding::Unsupported,
            &mut FixedRng::new([1; 18]),
        );
        let mut m = Vec::new();
        frontend::sasl_initial_response(&mut m, b"SCRAM-SHA-256", Some(&client.client_first()));
        h.send(&m);
        let bytes = std::mem::take(&mut h.to_client);
        let frame = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
        let Ok(BackendMessage::Authentication(Authentication::SaslContinue { data })) =
            frame.backend()
        else {
            panic!("no server-first for {user}");
        };
        let text = String::from_utf8(data.to_vec()).unwrap();
        text.split(',')
            .map(|kv| match kv.split_once('=') {
                Some(("i", n)) => format!("i={n}"),
                Some((k, v)) => format!("{k}=<{} chars>", v.len()),
                None => kv.to_owned(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        server_first("alice"),
        server_first("ghost"),
        "SCRAM server-first"
    );

    // A password message where a SASL one is due: the same protocol error for both.
    let r = run(AuthMethod::Scram, &|h, _, password, _| {
        let mut m = Vec::new();
        frontend::password(&mut m, password.as_bytes());
        h.send(&m);
    });
    assert_eq!(r[0].1, r[1].1, "wrong message kind");
    let (tag, body) = r[0].1.last().unwrap();
    let Ok(BackendMessage::ErrorResponse(e)) = BackendMessage::decode(*tag, body) else {
        panic!("no error")
    };
    assert_eq!(e.code(), Some(&b"08P01"[..]));
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

/// A unix-socket client is local, as PostgreSQL treats it: SSLRequest gets 'N' and a
/// ClientHello is refused whatever `tls.sslmode` says; `require` and plaintext passwords do
/// not need TLS there.
#[test]
fn unix_socket_clients_get_no_tls_and_need_none() {
    let local = |auth, tls| {
        let mut h = Harness::new(auth, tls);
        h.session.set_local();
        h
    };
    for tls in [ClientTls::Optional, ClientTls::Required] {
        let mut h = local(AuthMethod::Scram, tls);
        let mut m = Vec::new();
        ssl_request(&mut m);
        h.send(&m);
        assert_eq!(h.to_client, b"N");
        assert!(h.take_actions().is_empty());
        h.to_client.clear();
        h.scram_login("alice", PASSWORD);
        assert!(h.session.is_logged_in(), "{tls:?}: {:?}", h.session);

        let mut h = local(AuthMethod::Scram, tls);
        h.send(&[0x16, 0x03, 0x01, 0x00, 0x10]);
        assert_eq!(h.client_error().1, "08P01");
    }
    let mut h = local(AuthMethod::Plaintext, ClientTls::Required);
    h.startup("alice", "db");
    let bytes = std::mem::take(&mut h.to_client);
    let frame = Frames::new(&bytes, 1 << 20).next().unwrap().unwrap();
    assert!(matches!(
        frame.backend().unwrap(),
        BackendMessage::Authentication(Authentication::CleartextPassword)
    ));
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
    assert_eq!(h.take_actions(), vec![Action::Release(server_id())]);
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
        last_failure: None,
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
    let error = AcquireError::Server(ConnectFailure::new(
        "db:5432",
        ServerError::Connect(std::io::ErrorKind::ConnectionRefused.into()),
    ));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.send(&[]);
    h.take_actions();
    h.call(|s, out| s.on_backend_lost(out));
    assert_eq!(h.client_error().1, "08006");
    assert_eq!(
        h.take_actions(),
        vec![Action::DropBackend(server_id()), Action::Close]
    );
}

#[test]
fn copy_both_from_the_server_is_refused_clearly() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("START_REPLICATION 0/0"));
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.send(&[]);
    h.take_actions();
    // CopyBothResponse: text format, no columns.
    let reply = [b'W', 0, 0, 0, 7, 0, 0, 0];
    h.call(|s, out| s.on_backend_data(&reply, out));
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "0A000"));
    assert!(message.contains("COPY BOTH"), "{message}");
    assert_eq!(
        h.take_actions(),
        vec![Action::DropBackend(server_id()), Action::Close]
    );
}

#[test]
fn detach_decides_the_backend_fate() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("BEGIN"));
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert!(matches!(h.call(|s, out| s.detach(out)),
        Some((id, BackendFate::Reset(_))) if id == server_id()));

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
        matches!(h.call(|s, out| s.detach(out)),
        Some((id, BackendFate::Drop)) if id == server_id()),
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
        self.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
        self.take_actions();
    }

    /// Holds `backend`, given the client's settings already (no sync needed).
    fn attach_matching_backend(&mut self, backend: BackendContext) {
        self.backend = backend;
        self.backend.params = (*self.session.desired).clone();
        self.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    assert_eq!(h.backend(&ready()), vec![Action::Release(server_id())]);
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
    assert_eq!(h.backend(&ready()), vec![Action::Release(server_id())]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"2Z");
    // Once a server accepted it, a Parse of the same text by a new name needs no backend.
    h.send(&[parse_msg("s2", "SELECT 1"), sync_msg()].concat());
    assert!(h.take_actions().is_empty());
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"1Z");
    // A backend that has it with the same shape needs nothing before the Bind.
    h.send(&[bind_msg("s2"), sync_msg()].concat());
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    assert_eq!(h.backend(&ready()), vec![Action::Release(server_id())]);
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
        vec![Action::Release(server_id()), Action::Close],
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    assert_eq!(h.backend(&rows), vec![Action::Release(server_id())]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"2TDCZ");
    // Once only: a second stale plan in the replay is the client's error.
    h.send(&batch);
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
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

#[test]
fn duplicate_parse_without_a_backend_is_42p05_and_skips_to_sync() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELECT 1"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    let server = names(&h.take_backend())[0].1.clone();
    assert_eq!(
        h.backend(&[prepared_reply("x"), ready()].concat()),
        vec![Action::Release(server_id())]
    );
    h.to_client.clear();
    // No backend is held: the duplicate is answered locally, the rest of its batch dropped.
    h.send(&[parse_msg("s", "SELECT 2"), bind_msg("s"), sync_msg()].concat());
    assert!(h.take_actions().is_empty(), "no backend needed");
    let bytes = h.to_client.clone();
    let (severity, code, message) = h.client_error();
    assert_eq!((severity.as_str(), code.as_str()), ("ERROR", "42P05"));
    assert!(message.contains("\"s\" already exists"), "{message}");
    assert_eq!(
        tags(&bytes),
        b"EZ",
        "the Bind was skipped, the Sync answered"
    );
    // The name still means the first statement.
    h.send(&[bind_msg("s"), sync_msg()].concat());
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(names(&h.take_backend()), vec![(b'B', server)]);
}

#[test]
fn cached_describe_is_answered_in_its_place_while_a_backend_is_held() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s", "SELECT 1"), describe_named("s"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    let answer = shape_answer("x");
    h.backend(&[prepared_reply("x"), answer.clone(), ready()].concat());
    h.to_client.clear();
    // The Bind needs the backend; the Describe that follows it is pglink's to answer, after
    // the answers to what went before it.
    let mut batch = bind_msg("s");
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&describe_named("s"));
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"BES",
        "no Describe goes to the server"
    );
    let rows = simple_reply(&[
        (b'2', b""),
        (b'D', b"\0\x01\0\0\0\x011"),
        (b'C', b"SELECT 1\0"),
    ]);
    assert_eq!(
        h.backend(&[rows.clone(), ready()].concat()),
        vec![Action::Release(server_id())]
    );
    assert_eq!(h.to_client, [rows, answer, ready()].concat());
}

fn syntax_error() -> Vec<u8> {
    simple_reply(&[(b'E', b"SERROR\0VERROR\0C42601\0Msyntax error\0\0")])
}

/// Bind of `name`, Describe of its portal, Execute, Sync (libpq's PQexecPrepared).
fn exec_prepared(name: &str) -> Vec<u8> {
    let mut m = [bind_msg(name), describe_portal_msg()].concat();
    frontend::execute(&mut m, b"", 0);
    m.extend_from_slice(&sync_msg());
    m
}

/// What a server answers to `exec_prepared` of a one-column statement.
fn exec_reply() -> Vec<u8> {
    [
        simple_reply(&[(b'2', b"")]),
        shape_answer("x")[7..].to_vec(), // the portal's RowDescription
        simple_reply(&[(b'D', b"\0\x01\0\0\0\x011"), (b'C', b"SELECT 1\0")]),
        ready(),
    ]
    .concat()
}

/// A client that prepared `s1` on one backend, now about to use a fresh one.
fn client_with_s1() -> Harness {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("s1", "SELECT 1"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    h.backend(&[prepared_reply("x"), ready()].concat());
    h.to_client.clear();
    h
}

#[test]
fn pipeline_error_before_a_batch_that_needs_an_injected_parse() {
    let mut h = client_with_s1();
    let mut failing = parse_msg("", "SELEC 1");
    frontend::bind(&mut failing, b"", b"", &[], [], &[]);
    frontend::execute(&mut failing, b"", 0);
    failing.extend_from_slice(&sync_msg());
    h.send(&[failing, exec_prepared("s1")].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"PBESPDBDES",
        "the failing batch as sent, then s1 prepared before its Bind"
    );
    // The first batch fails; the server skips to its Sync and runs the second.
    let answers = [syntax_error(), ready(), prepared_reply("x"), exec_reply()].concat();
    assert_eq!(h.backend(&answers), vec![Action::Release(server_id())]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"EZ2TDCZ");
}

#[test]
fn pipeline_error_skips_an_injected_parse_that_a_later_batch_relies_on() {
    let mut h = client_with_s1();
    // The first batch fails before s1, prepared for it, exists; the second uses s1 again.
    let failing = [parse_msg("", "SELEC 1"), exec_prepared("s1")].concat();
    h.send(&[failing, exec_prepared("s1")].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"PPDBDES",
        "the second batch waits: its statement is prepared in a batch that may fail"
    );
    let skipped = [syntax_error(), ready()].concat();
    assert_eq!(h.backend(&skipped), vec![Action::ResumeInput]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"EZ");
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"CPDBDES",
        "the skipped copy is prepared again"
    );
    let answers = [
        simple_reply(&[(b'3', b"")]),
        prepared_reply("x"),
        exec_reply(),
    ]
    .concat();
    assert_eq!(h.backend(&answers), vec![Action::Release(server_id())]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"2TDCZ");
}

#[test]
fn a_parse_answered_from_a_copy_prepared_in_an_earlier_batch_waits_for_nothing() {
    // The same name by another Parse in a later batch: prepared again rather than relying on
    // a copy whose batch may fail.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&[parse_msg("a", "SELECT 1"), sync_msg()].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    h.backend(&[prepared_reply("x"), ready()].concat());
    h.to_client.clear();
    let failing = [parse_msg("", "SELEC 1"), exec_prepared("a")].concat();
    let later = [parse_msg("b", "SELECT 1"), exec_prepared("b")].concat();
    h.send(&[failing, later].concat());
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(tags(&h.take_backend()), b"PPDBDESCPDBDES");
    let answers = [
        syntax_error(),
        ready(),
        simple_reply(&[(b'3', b"")]),
        prepared_reply("x"),
        exec_reply(),
    ]
    .concat();
    assert_eq!(h.backend(&answers), vec![Action::Release(server_id())]);
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"EZ12TDCZ");
}

#[test]
fn a_parse_known_to_the_registry_goes_out_with_the_answers_to_its_batch() {
    let mut h = client_with_s1();
    let backend = std::mem::replace(&mut h.backend, BackendContext::new(4));
    // Without a backend, a Parse some server has accepted is answered locally...
    h.send(
        &[
            parse_msg("s2", "SELECT 1"),
            describe_named("s2"),
            sync_msg(),
        ]
        .concat(),
    );
    assert!(h.take_actions().is_empty(), "no backend needed");
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"1tTZ");
    // ...but when a Bind follows, the batch needs a backend anyway: the ParseComplete waits
    // for the server's answers, so that the client gets the batch in one write.
    h.send(&[parse_msg("s3", "SELECT 1"), exec_prepared("s3")].concat());
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    assert!(
        h.to_client.is_empty(),
        "nothing written before the backend answers"
    );
    h.attach_matching_backend(backend);
    h.send(&[]);
    assert_eq!(
        tags(&h.take_backend()),
        b"BDES",
        "the backend has the statement"
    );
    assert_eq!(h.backend(&exec_reply()), vec![Action::Release(server_id())]);
    assert_eq!(
        h.to_client,
        [simple_reply(&[(b'1', b"")]), exec_reply()].concat()
    );
}

/// The ParameterStatus messages in `bytes`, as (name, value).
fn parameter_statuses(bytes: &[u8]) -> Vec<(String, String)> {
    Frames::new(bytes, 1 << 20)
        .filter_map(|f| match f.unwrap().backend() {
            Ok(BackendMessage::ParameterStatus(p)) => Some((
                String::from_utf8_lossy(p.name).into_owned(),
                String::from_utf8_lossy(p.value).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// Runs `sql` on a fresh backend that answers with `reply` then ReadyForQuery (idle).
fn run_query(h: &mut Harness, sql: &str, reply: &[u8]) {
    h.send(&query(sql));
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    h.attach_fresh_backend(4);
    h.send(&[]);
    assert_eq!(h.take_backend(), query(sql));
    assert_eq!(
        h.backend(&[reply, &ready()[..]].concat()),
        vec![Action::Release(server_id())]
    );
}

#[test]
fn a_session_holds_a_relay_only_while_it_holds_a_backend() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    assert!(!h.session.relay.is_held(), "logged in and idle: no relay");
    run_query(&mut h, "SELECT 1", &select_one_rows());
    assert!(!h.session.relay.is_held(), "given back with the backend");
    assert_eq!(h.relays.free_count(), 1);
    let pushed = h.session.relay.pushed();
    assert!(pushed > 0);
    // The next lending takes it again, and the count of requests goes on from there.
    h.send(&query("SELECT 1"));
    assert_eq!(h.take_actions(), vec![Action::Acquire]);
    h.attach_fresh_backend(4);
    assert!(h.session.relay.is_held());
    assert_eq!(h.relays.free_count(), 0);
    h.send(&[]);
    assert!(h.session.relay.pushed() > pushed);
    h.take_backend();
    h.backend(&[select_one_rows(), ready()].concat());
    assert_eq!(h.relays.free_count(), 1);
}

#[test]
fn a_locally_answered_discard_all_reports_the_parameters_it_resets() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    let set = simple_reply(&[(b'C', b"SET\0"), (b'S', b"application_name\0mine\0")]);
    run_query(&mut h, "SET application_name = 'mine'", &set);
    h.to_client.clear();
    h.send(&query("DISCARD ALL"));
    assert!(h.take_actions().is_empty(), "answered without a backend");
    let bytes = std::mem::take(&mut h.to_client);
    assert_eq!(
        tags(&bytes),
        b"CSZ",
        "as PostgreSQL: the change before ReadyForQuery"
    );
    assert_eq!(
        parameter_statuses(&bytes),
        [("application_name".to_owned(), String::new())]
    );
    // Nothing changed this time: nothing reported.
    h.send(&query("DISCARD ALL"));
    assert_eq!(tags(&std::mem::take(&mut h.to_client)), b"CZ");
}

// ---- DEALLOCATE ALL / DISCARD ALL run by the server ---------------------------------------

fn command_complete(tag: &str) -> Vec<u8> {
    let mut m = Vec::new();
    crate::protocol::backend::command_complete(&mut m, tag.as_bytes());
    m
}

fn ready_with(status: TransactionStatus) -> Vec<u8> {
    let mut m = Vec::new();
    crate::protocol::backend::ready_for_query(&mut m, status);
    m
}

/// Rows of `SELECT 1` as a simple query answers them (without ReadyForQuery).
fn select_one_rows() -> Vec<u8> {
    [
        shape_answer("x")[7..].to_vec(),
        simple_reply(&[(b'D', b"\0\x01\0\0\0\x011")]),
        command_complete("SELECT 1"),
    ]
    .concat()
}

#[test]
fn deallocate_all_in_a_longer_query_forgets_the_backends_statements() {
    let mut h = client_with_s1();
    let server = h.session.statements.get(b"s1").unwrap().statement.id;
    assert!(h.backend.statements.contains(server));
    let sql = "DEALLOCATE ALL; SELECT 1";
    h.send(&query(sql));
    assert_eq!(
        h.take_actions(),
        vec![Action::Acquire],
        "for the server to run"
    );
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(h.take_backend(), query(sql));
    let answer = [
        command_complete("DEALLOCATE ALL"),
        select_one_rows(),
        ready(),
    ]
    .concat();
    assert_eq!(h.backend(&answer), vec![Action::Release(server_id())]);
    assert_eq!(h.to_client, answer);
    assert!(h.backend.statements.is_empty(), "the server has none left");
    assert!(h.session.statements.is_empty(), "nor has the client");
    // The next use of the text on that backend prepares it again.
    h.to_client.clear();
    h.send(
        &[
            parse_msg("again", "SELECT 1"),
            bind_msg("again"),
            sync_msg(),
        ]
        .concat(),
    );
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    // The Bind follows the Parse, so the Parse waited for the backend: it prepares the
    // statement again in the client's batch, and the Bind goes with it.
    assert_eq!(
        tags(&h.take_backend()),
        b"PDBS",
        "prepared again, in the client's batch"
    );
}

#[test]
fn a_server_reset_spares_what_was_pipelined_after_it() {
    let mut h = client_with_s1();
    let sql = "DEALLOCATE ALL; SELECT 1";
    h.send(&query(sql));
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    // Before its answer, a new statement (prepared on the backend) and a new name for a
    // statement pglink answers locally (the backend has it, until the reset runs).
    h.send(
        &[
            parse_msg("s2", "SELECT 2"),
            parse_msg("s3", "SELECT 1"),
            sync_msg(),
        ]
        .concat(),
    );
    assert_eq!(tags(&h.take_backend()), b"QPDS");
    let s2 = h.session.statements.get(b"s2").unwrap().statement.id;
    let s3 = h.session.statements.get(b"s3").unwrap().statement.id;
    h.backend(
        &[
            command_complete("DEALLOCATE ALL"),
            select_one_rows(),
            ready(),
        ]
        .concat(),
    );
    assert!(!h.session.statements.contains(b"s1"));
    assert!(h.session.statements.contains(b"s2") && h.session.statements.contains(b"s3"));
    assert!(
        h.backend.statements.contains(s2),
        "prepared after the reset"
    );
    assert!(!h.backend.statements.contains(s3), "dropped by the reset");
    assert_eq!(
        h.backend(&[prepared_reply("y"), ready()].concat()),
        vec![Action::Release(server_id())]
    );
}

#[test]
fn discard_all_through_the_extended_protocol_resets_statements_and_parameters() {
    let mut h = client_with_s1();
    let set = simple_reply(&[(b'C', b"SET\0"), (b'S', b"application_name\0mine\0")]);
    h.send(&query("SET application_name = 'mine'"));
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    h.take_backend();
    h.backend(&[set, ready()].concat());
    h.to_client.clear();
    let mut batch = parse_msg("", "DISCARD ALL");
    frontend::bind(&mut batch, b"", b"", &[], [], &[]);
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(h.take_backend(), batch, "the server runs it");
    let answer = [
        simple_reply(&[(b'1', b""), (b'2', b"")]),
        command_complete("DISCARD ALL"),
        simple_reply(&[(b'S', b"application_name\0\0")]),
        ready(),
    ]
    .concat();
    assert_eq!(h.backend(&answer), vec![Action::Release(server_id())]);
    assert_eq!(h.to_client, answer, "the server's own report of the reset");
    assert!(h.backend.statements.is_empty() && h.session.statements.is_empty());
    assert_eq!(h.session.desired.get("application_name"), Some(""));
}

#[test]
fn discard_all_refused_in_a_transaction_block_forgets_nothing() {
    let mut h = client_with_s1();
    h.send(&query("BEGIN"));
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    h.take_backend();
    h.backend(
        &[
            command_complete("BEGIN"),
            ready_with(TransactionStatus::InBlock),
        ]
        .concat(),
    );
    h.send(&query("DISCARD ALL"));
    assert_eq!(h.take_backend(), query("DISCARD ALL"), "the server decides");
    let refused = simple_reply(&[(
        b'E',
        b"SERROR\0VERROR\0C25001\0MDISCARD ALL cannot run inside a transaction block\0\0",
    )]);
    h.backend(&[refused, ready_with(TransactionStatus::Failed)].concat());
    assert_eq!(h.session.statements.len(), 1);
    assert_eq!(h.backend.statements.len(), 1, "the server still has it");
}

#[test]
fn deallocating_a_server_name_is_refused() {
    // Without a backend: answered locally.
    let mut h = client_with_s1();
    h.send(&query("DEALLOCATE pglink_1"));
    assert!(h.take_actions().is_empty());
    let bytes = h.to_client.clone();
    let (_, code, message) = h.client_error();
    assert_eq!(code, "26000");
    assert!(message.contains("\"pglink_1\" does not exist"), "{message}");
    assert_eq!(tags(&bytes), b"EZ");
    // In a transaction block: the server fails a query in its place, so the block is
    // aborted as PostgreSQL would abort it.
    h.send(&query("BEGIN"));
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    h.take_backend();
    h.backend(
        &[
            command_complete("BEGIN"),
            ready_with(TransactionStatus::InBlock),
        ]
        .concat(),
    );
    h.to_client.clear();
    h.send(&query("SELECT 1; DEALLOCATE pglink_1"));
    let sent = h.take_backend();
    assert_ne!(sent, query("SELECT 1; DEALLOCATE pglink_1"));
    assert!(!sent.windows(8).any(|w| w == b"pglink_1"), "not sent");
    let server_error = simple_reply(&[(b'E', b"SERROR\0VERROR\0C26000\0Mno such statement\0\0")]);
    h.backend(&[server_error, ready_with(TransactionStatus::Failed)].concat());
    let bytes = h.to_client.clone();
    let (_, code, message) = h.client_error();
    assert_eq!(code, "26000");
    assert!(message.starts_with("pglink: "), "{message}");
    assert_eq!(tags(&bytes), b"EZ");
    assert_eq!(bytes.last(), Some(&b'E'), "the block is aborted");
    // Through the extended protocol, named or not.
    h.send(&[parse_msg("", "DEALLOCATE pglink_1"), sync_msg()].concat());
    assert_eq!(
        tags(&h.take_backend()),
        b"BS",
        "a Bind the server fails in its place"
    );
}

#[test]
fn reset_all_puts_back_the_clients_startup_values_before_anything_else_runs() {
    let mut h = Harness::logged_in_with(
        AuthMethod::Scram,
        &[("application_name", "psql"), ("options", "-c work_mem=5MB")],
    );
    assert_eq!(h.session.desired.get("work_mem"), Some("5MB"));
    h.send(&query("RESET ALL"));
    // A backend that already has the client's settings.
    h.backend = BackendContext::new(4);
    h.backend.params = (*h.session.desired).clone();
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    assert_eq!(h.take_backend(), query("RESET ALL"));
    // The server goes back to its own startup values and reports the reported ones.
    let answer = [
        command_complete("RESET"),
        simple_reply(&[(b'S', b"application_name\0\0")]),
        ready(),
    ]
    .concat();
    assert_eq!(h.backend(&answer), vec![]);
    let bytes = std::mem::take(&mut h.to_client);
    assert_eq!(tags(&bytes), b"CSZS");
    assert_eq!(
        parameter_statuses(&bytes),
        [
            ("application_name".to_owned(), String::new()),
            ("application_name".to_owned(), "psql".to_owned())
        ],
        "the server's report, then the client's own value, as PostgreSQL would give it"
    );
    let sync = String::from_utf8_lossy(&h.take_backend()[5..]).into_owned();
    assert!(
        sync.contains("'application_name', E'psql'") && sync.contains("'work_mem', E'5MB'"),
        "{sync}"
    );
    assert_eq!(
        h.backend(
            &[
                simple_reply(&[(b'T', b"\0\0"), (b'C', b"SELECT 1\0")]),
                ready()
            ]
            .concat()
        ),
        vec![Action::Release(server_id())]
    );
    assert_eq!(h.session.desired.get("work_mem"), Some("5MB"));
    assert_eq!(h.backend.params.get("work_mem"), Some("5MB"));
}

#[test]
fn clients_with_different_search_paths_do_not_share_a_statement_or_its_description() {
    let mut a = Harness::logged_in_with(AuthMethod::Scram, &[("options", "-c search_path=a")]);
    a.send(
        &[
            parse_msg("s", "SELECT * FROM t"),
            describe_named("s"),
            sync_msg(),
        ]
        .concat(),
    );
    a.attach_matching_backend(BackendContext::new(4));
    a.send(&[]);
    let a_server = names(&a.take_backend())[0].1.clone();
    a.backend(&[prepared_reply("from_a"), shape_answer("from_a"), ready()].concat());
    // The same text from a client whose path resolves it to another table: not answered
    // from A's statement (verified, described and cached), but prepared for its own path.
    let mut b = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    b.context = a.context.clone();
    b.scram_login_with("alice", PASSWORD, &[("options", "-c search_path=b")]);
    b.to_client.clear();
    b.take_actions();
    b.send(
        &[
            parse_msg("s", "SELECT * FROM t"),
            describe_named("s"),
            sync_msg(),
        ]
        .concat(),
    );
    assert_eq!(
        b.take_actions(),
        vec![Action::Acquire],
        "a server must check it"
    );
    // A's backend, with B's settings by now.
    b.attach_matching_backend(std::mem::replace(&mut a.backend, BackendContext::new(0)));
    b.send(&[]);
    let sent = names(&b.take_backend());
    assert_eq!(
        sent.len(),
        3,
        "Parse, Describe and the client's Describe: {sent:?}"
    );
    assert_ne!(sent[0].1, a_server, "a server statement of its own");
    // A client with A's path shares A's statement, answered without a backend.
    let mut c = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    c.context = a.context.clone();
    c.scram_login_with("alice", PASSWORD, &[("options", "-c search_path=a")]);
    c.to_client.clear();
    c.take_actions();
    c.send(
        &[
            parse_msg("mine", "SELECT * FROM t"),
            describe_named("mine"),
            sync_msg(),
        ]
        .concat(),
    );
    assert!(c.take_actions().is_empty());
    assert_eq!(
        c.to_client,
        [
            simple_reply(&[(b'1', b"")]),
            shape_answer("from_a"),
            ready()
        ]
        .concat()
    );
}

// ---- track_extra_parameters ---------------------------------------------------------------

/// A harness whose database reads back `extras` (`track_extra_parameters`).
fn logged_in_tracking(extras: &[&str]) -> Harness {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.context = Arc::new(DatabaseContext {
        registry: Registry::new(16, 16),
        track_extra: extras.iter().map(|e| e.to_string()).collect(),
        overrides: Vec::new(),
        shared_params: Default::default(),
        cache_unnamed: false,
    });
    h.scram_login("alice", PASSWORD);
    h.to_client.clear();
    h.take_actions();
    h
}

/// The answer to a read-back of one parameter.
fn captured(value: &str) -> Vec<u8> {
    let mut row = 1u16.to_be_bytes().to_vec();
    row.extend_from_slice(&(value.len() as u32).to_be_bytes());
    row.extend_from_slice(value.as_bytes());
    [
        shape_answer("current_setting")[7..].to_vec(),
        simple_reply(&[(b'D', &row), (b'C', b"SELECT 1\0")]),
        ready(),
    ]
    .concat()
}

#[test]
fn extras_are_read_back_after_a_set_config_with_bound_arguments() {
    let mut h = logged_in_tracking(&["search_path"]);
    let mut batch = parse_msg("", "SELECT set_config($1, $2, false)");
    frontend::bind(&mut batch, b"", b"", &[], [], &[]);
    frontend::execute(&mut batch, b"", 0);
    batch.extend_from_slice(&sync_msg());
    h.send(&batch);
    h.attach_matching_backend(BackendContext::new(4));
    h.send(&[]);
    assert_eq!(h.take_backend(), batch);
    let answer = [
        simple_reply(&[(b'1', b""), (b'2', b"")]),
        simple_reply(&[(b'D', b"\0\x01\0\0\0\x08a_schema"), (b'C', b"SELECT 1\0")]),
        ready(),
    ]
    .concat();
    assert_eq!(
        h.backend(&answer),
        vec![],
        "the backend is kept for the read-back"
    );
    assert_eq!(
        h.to_client, answer,
        "the client has its ReadyForQuery already"
    );
    let sent = h.take_backend();
    assert_eq!(tags(&sent), b"Q");
    assert!(
        String::from_utf8_lossy(&sent).contains("current_setting(E'search_path', true)"),
        "{sent:?}"
    );
    h.to_client.clear();
    assert_eq!(
        h.backend(&captured("a_schema")),
        vec![Action::Release(server_id())]
    );
    assert!(h.to_client.is_empty(), "the read-back is not shown");
    assert_eq!(h.session.desired.get("search_path"), Some("a_schema"));
    assert_eq!(h.backend.params.get("search_path"), Some("a_schema"));
}

#[test]
fn extras_are_read_back_after_every_transaction_that_ran_a_statement() {
    let mut h = logged_in_tracking(&["search_path", "application_name"]);
    h.send(&query("SELECT f()"));
    h.attach_matching_backend(BackendContext::new(4));
    h.send(&[]);
    h.take_backend();
    assert_eq!(h.backend(&[select_one_rows(), ready()].concat()), vec![]);
    let sent = String::from_utf8_lossy(&h.take_backend()).into_owned();
    assert!(sent.contains("'search_path'"), "{sent}");
    assert!(
        !sent.contains("application_name"),
        "reported parameters need no reading: {sent}"
    );
    assert_eq!(
        h.backend(&captured("other")),
        vec![Action::Release(server_id())]
    );
    assert_eq!(h.session.desired.get("search_path"), Some("other"));
    // A lending that ran nothing (a Describe pglink could not answer) reads nothing back.
    h.send(&[parse_msg("s", "SELECT 1"), sync_msg()].concat());
    h.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    h.take_actions();
    h.send(&[]);
    h.take_backend();
    assert_eq!(
        h.backend(&[prepared_reply("x"), ready()].concat()),
        vec![Action::Release(server_id())]
    );
    // Without extras nothing is read back either.
    let mut plain = Harness::logged_in(AuthMethod::Scram);
    plain.send(&query("SELECT f()"));
    plain.attach_matching_backend(BackendContext::new(4));
    plain.send(&[]);
    plain.take_backend();
    assert_eq!(
        plain.backend(&[select_one_rows(), ready()].concat()),
        vec![Action::Release(server_id())]
    );
}

// ---- default_startup_parameters ---------------------------------------------------------

#[test]
fn default_startup_parameters_override_the_clients_own() {
    let context = Arc::new(DatabaseContext {
        registry: Registry::new(16, 16),
        track_extra: Vec::new(),
        overrides: vec![("statement_timeout".into(), "1234ms".into())],
        shared_params: Default::default(),
        cache_unnamed: false,
    });
    let login = |extra: &[(&str, &str)]| {
        let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
        h.context = context.clone();
        h.scram_login_with("alice", PASSWORD, extra);
        h.to_client.clear();
        h.take_actions();
        h
    };
    let mut a = login(&[("options", "-c statement_timeout=4321 -c work_mem=7MB")]);
    assert_eq!(a.session.desired.get("statement_timeout"), Some("1234ms"));
    assert_eq!(
        a.session.desired.get("work_mem"),
        Some("7MB"),
        "others are kept"
    );
    // A server connection that logged in with the configured value needs only work_mem.
    let mut fresh = BackendContext::new(4);
    let reported: ParamList = a.params.as_deref().cloned().unwrap_or_default();
    fresh.set_login_params(&reported, &context.overrides);
    a.send(&query("SET statement_timeout = '5s'"));
    a.backend = fresh;
    a.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    a.take_actions();
    a.send(&[]);
    let sync = String::from_utf8_lossy(&a.take_backend()).into_owned();
    assert!(
        sync.contains("'work_mem', E'7MB'") && !sync.contains("statement_timeout"),
        "{sync}"
    );
    let synced = [
        simple_reply(&[(b'T', b"\0\0"), (b'C', b"SELECT 1\0")]),
        ready(),
    ]
    .concat();
    assert_eq!(a.backend(&synced), vec![Action::ResumeInput]);
    a.send(&[]);
    assert_eq!(a.take_backend(), query("SET statement_timeout = '5s'"));
    // The client's own SET afterwards is its own.
    assert_eq!(
        a.backend(&[command_complete("SET"), ready()].concat()),
        vec![]
    );
    a.take_backend();
    assert_eq!(
        a.backend(&captured("5s")),
        vec![Action::Release(server_id())]
    );
    assert_eq!(a.session.desired.get("statement_timeout"), Some("5s"));
    // Another client on that connection gets the configured value back first.
    let mut b = login(&[("options", "-c statement_timeout=1")]);
    b.send(&query("SHOW statement_timeout"));
    b.backend = std::mem::replace(&mut a.backend, BackendContext::new(0));
    b.call(|s, out| s.on_backend_attached(server_id(), &Arc::new(Vec::new()), false, out));
    b.send(&[]);
    let sync = String::from_utf8_lossy(&b.take_backend()).into_owned();
    assert!(sync.contains("'statement_timeout', E'1234ms'"), "{sync}");
}

#[test]
fn a_backend_whose_settings_are_in_doubt_is_not_reused_after_its_client_leaves() {
    // The client's SET is on its way when it leaves: what it did is unknown.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("SET work_mem = '77MB'"));
    h.attach_matching_backend(BackendContext::new(4));
    h.send(&[]);
    assert!(matches!(h.call(|s, out| s.detach(out)),
        Some((id, BackendFate::Drop)) if id == server_id()));
    // The same once it is done but the value is still being read back.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("SET work_mem = '77MB'"));
    h.attach_matching_backend(BackendContext::new(4));
    h.send(&[]);
    assert_eq!(
        h.backend(&[command_complete("SET"), ready()].concat()),
        vec![]
    );
    assert!(matches!(h.call(|s, out| s.detach(out)),
        Some((id, BackendFate::Drop)) if id == server_id()));
    // A reported parameter is reported to whoever drains the backend: it can be reused.
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("SET application_name = 'gone'"));
    h.attach_matching_backend(BackendContext::new(4));
    h.send(&[]);
    assert!(matches!(h.call(|s, out| s.detach(out)),
        Some((id, BackendFate::Reset(_))) if id == server_id()));
}

// ---- states, events, errors ----------------------------------------------------------------

#[test]
fn state_changes_are_recorded_as_events_with_the_engines_clock() {
    use crate::observe::events::OwnedEvent;
    use std::time::Duration;
    let ms = Duration::from_millis;
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let t0 = h.now;
    h.scram_login("alice", PASSWORD);
    assert!(h.session.is_logged_in());
    h.now = t0 + ms(5);
    h.send(&query("SELECT 1"));
    assert!(h.session.is_acquiring());
    assert_eq!(h.session.waiting_since(), Some(t0 + ms(5)));
    assert_eq!(h.session.server(), None);
    h.now = t0 + ms(7);
    h.attach_fresh_backend(4);
    assert_eq!(h.session.server(), Some(server_id()));
    assert_eq!(h.session.waiting_since(), None);
    h.send(&[]);
    h.now = t0 + ms(8);
    let reply = [command_complete("SELECT 1"), ready()].concat();
    assert_eq!(h.backend(&reply), vec![Action::Release(server_id())]);
    assert_eq!(h.session.server(), None);
    h.now = t0 + ms(9);
    assert!(h.call(|s, out| s.detach(out)).is_none());
    let walk: Vec<(Duration, String)> = h
        .events
        .0
        .iter()
        .map(|(at, event)| {
            let what = match event {
                OwnedEvent::Client { pid: 42, state } => format!("{state:?}"),
                OwnedEvent::Acquired {
                    pid: 42,
                    server,
                    pool: 0,
                    waited,
                } if *server == server_id() => format!("acquired after {waited:?}"),
                OwnedEvent::ClientMessage { pid: 42, tag, len } => {
                    format!("message {} of {len}", char::from(*tag))
                }
                OwnedEvent::StatementStarted {
                    pid: 42,
                    text,
                    extended: false,
                    ..
                } => format!("started {}", String::from_utf8_lossy(text)),
                OwnedEvent::StatementEnded {
                    pid: 42,
                    started,
                    end,
                    tag,
                    sqlstate: None,
                    ..
                } => format!(
                    "{end:?} {} since {:?}",
                    String::from_utf8_lossy(tag),
                    started.duration_since(t0)
                ),
                OwnedEvent::TransactionEnded {
                    pid: 42, started, ..
                } => {
                    format!("transaction since {:?}", started.duration_since(t0))
                }
                other => panic!("{other:?}"),
            };
            (at.duration_since(t0), what)
        })
        .collect();
    let expected = [
        (0, "Authenticating"),
        (0, "Idle"),
        (5, "Acquiring"),
        (7, "Active"),
        (7, "acquired after 2ms"),
        (7, "started SELECT 1"),
        (7, "message Q of 14"),
        (8, "Completed SELECT 1 since 7ms"),
        (8, "transaction since 7ms"),
        (8, "Idle"),
        (9, "Closed"),
    ];
    assert_eq!(
        walk,
        expected
            .iter()
            .map(|(at, what)| (ms(*at), what.to_string()))
            .collect::<Vec<_>>(),
        "one event per change of state (SASL's steps are one state), with the wait, the \
         message, the statement and the transaction"
    );
}

#[test]
fn a_login_waiting_for_server_parameters_says_since_when() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.params = None;
    h.now += std::time::Duration::from_secs(1);
    h.scram_login("alice", PASSWORD);
    assert!(h.session.is_acquiring() && !h.session.is_logged_in());
    assert_eq!(h.session.waiting_since(), Some(h.now));
    let error = AcquireError::Server(ConnectFailure::new(
        "db:5432",
        ServerError::Connect(std::io::Error::other("refused")),
    ));
    h.to_client.clear();
    h.take_actions();
    h.call(|s, out| s.on_acquire_failed(error, out));
    let (severity, code, message) = h.client_error();
    assert_eq!(
        (severity.as_str(), code.as_str(), message.as_str()),
        (
            "FATAL",
            "08006",
            "pglink: cannot connect to server db:5432: refused"
        )
    );
    assert_eq!(h.take_actions(), vec![Action::Close]);
    assert_eq!(h.session.waiting_since(), None);
}

#[test]
fn shutdown_ends_an_idle_session_with_57p01_for_good() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.call(|s, out| s.on_shutdown(out));
    let (severity, code, message) = h.client_error();
    assert_eq!(
        (severity.as_str(), code.as_str(), message.as_str()),
        ("FATAL", "57P01", "pglink: the proxy is shutting down")
    );
    assert_eq!(h.take_actions(), vec![Action::Close]);
    assert!(h.session.is_closed());
    // A fatal error is sticky: nothing is read or said any more.
    h.send(&query("SELECT 1"));
    h.call(|s, out| s.on_login_timeout(out));
    h.call(|s, out| s.on_backend_lost(out));
    h.call(|s, out| s.on_shutdown(out));
    assert!(h.to_client.is_empty(), "{:?}", h.to_client);
    assert_eq!(h.take_actions(), vec![Action::Close]);
    assert!(h.call(|s, out| s.detach(out)).is_none());
}

#[test]
fn shutdown_of_an_active_session_leaves_its_backend_to_detach() {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("SELECT pg_sleep(1)"));
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.call(|s, out| s.on_shutdown(out));
    assert_eq!(h.client_error().1, "57P01");
    assert_eq!(
        h.take_actions(),
        vec![Action::Close],
        "the backend is not dropped: it is cleaned up as for a client that left"
    );
    assert!(h.session.is_closed() && !h.session.holds_backend());
    assert!(matches!(
        h.call(|s, out| s.detach(out)),
        Some((id, BackendFate::Reset(_))) if id == server_id()
    ));
}

#[test]
fn a_refused_connection_is_told_after_tls_and_its_startup_packet() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    let error = SessionError::TooManyClients {
        max_client_connections: 3,
    };
    h.session = Session::refusing(CancelKey::new(42, [5; 32], 32), error);
    let mut m = Vec::new();
    ssl_request(&mut m);
    h.send(&m);
    assert_eq!(h.to_client, b"S");
    assert_eq!(h.take_actions(), vec![Action::StartTls { direct: false }]);
    h.to_client.clear();
    h.call(|s, out| s.on_tls_established(false, false, out));
    assert!(h.to_client.is_empty());
    h.startup("alice", "db");
    let (severity, code, message) = h.client_error();
    assert_eq!(
        (severity.as_str(), code.as_str(), message.as_str()),
        (
            "FATAL",
            "53300",
            "pglink: too many client connections (max_client_connections is 3)"
        )
    );
    assert_eq!(h.take_actions(), vec![Action::Close]);
}

#[test]
fn a_fatal_error_is_sticky() {
    let mut h = Harness::new(AuthMethod::Scram, ClientTls::Optional);
    h.send(&[0, 0, 0, 3, 1, 2, 3, 4]);
    assert_eq!(h.client_error().1, "08P01");
    assert_eq!(h.take_actions(), vec![Action::Close]);
    h.call(|s, out| s.on_login_timeout(out));
    h.call(|s, out| s.on_tls_established(true, false, out));
    assert!(h.to_client.is_empty(), "one FATAL, not two");
    assert!(h.take_actions().is_empty());
}

/// A session in a transaction block, its backend held.
fn in_a_transaction() -> Harness {
    let mut h = Harness::logged_in(AuthMethod::Scram);
    h.send(&query("BEGIN"));
    h.attach_fresh_backend(4);
    h.send(&[]);
    h.take_backend();
    let begun = [
        command_complete("BEGIN"),
        ready_with(TransactionStatus::InBlock),
    ]
    .concat();
    assert!(h.backend(&begun).is_empty());
    h.to_client.clear();
    h
}

#[test]
fn statement_errors_are_the_same_with_and_without_a_backend() {
    let refused = parse_msg("d", "DEALLOCATE pglink_1");
    let cases = [
        (
            bind_msg("nope"),
            "26000",
            "pglink: prepared statement \"nope\" does not exist",
        ),
        (
            describe_named("nope"),
            "26000",
            "pglink: prepared statement \"nope\" does not exist",
        ),
        (
            refused,
            "26000",
            "pglink: prepared statement \"pglink_1\" does not exist",
        ),
    ];
    for (message, code, text) in cases {
        // Without a backend: the error at once, the rest of the batch skipped.
        let mut idle = Harness::logged_in(AuthMethod::Scram);
        idle.send(&[message.clone(), bind_msg(""), sync_msg()].concat());
        assert!(idle.take_actions().is_empty(), "no backend needed");
        assert_eq!(tags(&idle.to_client), b"EZ");
        let local = idle.client_error();
        // With one: the server fails a Bind in its place, which skips the rest too.
        let mut held = in_a_transaction();
        held.send(&[message, bind_msg(""), sync_msg()].concat());
        assert_eq!(tags(&held.take_backend()), b"BBS");
        let server_error =
            simple_reply(&[(b'E', b"SERROR\0VERROR\0C26000\0Mno such statement\0\0")]);
        held.backend(&[server_error, ready_with(TransactionStatus::Failed)].concat());
        let bytes = held.to_client.clone();
        assert_eq!(tags(&bytes), b"EZ");
        assert_eq!(held.client_error(), local);
        assert_eq!(
            local,
            ("ERROR".to_owned(), code.to_owned(), text.to_owned())
        );
    }
}
