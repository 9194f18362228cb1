//! Fuzzing entry point for the client session: the fuzz target `client_session` is a one-liner
//! over [`fuzz_session`]. Not a stable API.
//!
//! The input is a script of operations the reactor could perform, in any order: client bytes,
//! a backend attached, backend bytes, an acquire failure, a lost backend, TLS established, the
//! login timeout, the client going away. The session must never panic, never consume more
//! than it was given, and never write to a backend it does not hold. Logins use `plaintext`
//! after TLS with the password `pw`, which a fuzzer finds quickly from the seeds.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::statements::Registry;
use super::users::{DbEntry, ScramSecret, UserEntry, UserTable};
use super::{
    AcquireError, AuthMethod, BackendContext, CancelKey, ClientTls, DatabaseContext, Env, Out,
    ParamList, Session, SessionConfig,
};
use crate::auth::FixedRng;
use crate::engine::error::{ConnectFailure, ServerError};
use crate::engine::id::ServerId;
use crate::observe::events::{Interest, OwnedEvent, Recorded};

fn users() -> &'static UserTable {
    static USERS: OnceLock<UserTable> = OnceLock::new();
    USERS.get_or_init(|| {
        let mut rng = FixedRng::new(vec![3u8; 32]);
        let scram = Arc::new(ScramSecret::new("pw", 4096, &mut rng));
        scram.derive();
        let entry = UserEntry::new("u".into(), "pw".into(), 0, scram);
        let mut db = DbEntry::default();
        db.users.insert("u".into(), Arc::new(entry));
        UserTable {
            databases: HashMap::from([("d".to_owned(), db)]),
            scram_iterations: 4096,
            mock_secret: [1; 32],
            console: Default::default(),
        }
    })
}

/// Runs one operation script.
pub fn fuzz_session(data: &[u8]) {
    run_script(data);
}

/// Runs a script and returns the session as it ended.
fn run_script(data: &[u8]) -> Session {
    let config = SessionConfig {
        auth_method: match data.first().copied().unwrap_or(0) % 3 {
            0 => AuthMethod::Plaintext,
            1 => AuthMethod::Md5,
            _ => AuthMethod::Scram,
        },
        tls: ClientTls::Optional,
        channel_binding: Some(vec![7; 32]),
        traceparent_parameter: "traceparent".into(),
    };
    let params: Arc<ParamList> = Arc::new(vec![("server_version".into(), "15".into())]);
    let lookup = |_| Some(params.clone());
    let mut rng = FixedRng::new(vec![5u8; 16]);
    let mut session = Session::new(CancelKey::new(1, [2; 32], 32), 1 << 16);
    let (mut to_client, mut to_backend, mut actions) = (Vec::new(), Vec::new(), Vec::new());
    let mut backend = BackendContext::new(4);
    let stats = crate::observe::metrics::ReactorStats::new(4, 4);
    let context = Arc::new(DatabaseContext {
        registry: Registry::new(16, 16),
        track_extra: vec!["search_path".into()],
        overrides: Vec::new(),
        shared_params: Default::default(),
        // The first byte's high bit: the unnamed statement cached too.
        cache_unnamed: data.first().is_some_and(|b| b & 0x80 != 0),
    });
    let database = |_| Some(context.clone());
    let mut pending: Vec<u8> = Vec::new();
    let mut now = crate::test_clock::epoch();
    let mut attached = 0;
    let mut events = Recorded::default();
    let mut relays = crate::client::relay::RelayPool::default();
    let mut ops = data.get(1..).unwrap_or_default();
    while let Some((&op, rest)) = ops.split_first() {
        now += std::time::Duration::from_millis(1);
        let len = rest
            .first()
            .map_or(0, |&l| usize::from(l))
            .min(rest.len().saturating_sub(1));
        let arg = rest.get(1..1 + len).unwrap_or_default();
        ops = rest.get(1 + len..).unwrap_or_default();
        let held_before = session.holds_backend();
        let mut out = Out {
            to_client: &mut to_client,
            to_backend: &mut to_backend,
            backend: &mut backend,
            actions: &mut actions,
            stats: &stats,
            now,
            events: Some(&mut events),
            interest: Interest::ALL,
            relays: &mut relays,
        };
        match op % 8 {
            0 => {
                pending.extend_from_slice(arg);
                let mut env = Env {
                    config: &config,
                    users: users(),
                    rng: &mut rng,
                    server_params: &lookup,
                    database: &database,
                };
                let n = session.on_client_data(&pending, &mut env, &mut out);
                assert!(n <= pending.len(), "consumed more than given");
                pending.drain(..n);
            }
            1 => {
                attached += 1;
                session.on_backend_attached(ServerId::new(0, attached), &params, false, &mut out);
            }
            2 => {
                let n = session.on_backend_data(arg, &mut out);
                assert!(n <= arg.len(), "consumed more than given");
            }
            3 => {
                let error =
                    AcquireError::Server(ConnectFailure::new("db:5432", ServerError::Timeout));
                session.on_acquire_failed(error, &mut out);
            }
            4 if session.holds_backend() => session.on_backend_lost(&mut out),
            5 => session.on_tls_established(false, true, &mut out),
            6 => session.on_login_timeout(&mut out),
            7 => {
                let _ = session.detach(&mut out);
            }
            _ => {}
        }
        if !held_before && !session.holds_backend() {
            assert!(to_backend.is_empty(), "wrote to a backend it does not hold");
        }
        assert_eq!(session.server().is_some(), session.holds_backend());
        assert_eq!(session.waiting_since().is_some(), session.is_acquiring());
        if let [
            ..,
            (_, OwnedEvent::Client { state: a, .. }),
            (_, OwnedEvent::Client { state: b, .. }),
        ] = events.0.as_slice()
        {
            assert_ne!(a, b, "an event for a state change that changed nothing");
        }
        to_client.clear();
        to_backend.clear();
        actions.clear();
    }
    session
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend;
    use crate::protocol::startup::{ProtocolVersion, startup_message};

    /// A login (plaintext after TLS) then a query, as an operation script; also the seed the
    /// fuzz corpus starts from.
    pub fn login_and_query_script() -> Vec<u8> {
        let mut script = vec![0u8]; // plaintext
        let mut push = |op: u8, bytes: &[u8]| {
            if bytes.is_empty() {
                script.extend_from_slice(&[op, 0]);
            }
            for chunk in bytes.chunks(255) {
                script.push(op);
                script.push(chunk.len() as u8);
                script.extend_from_slice(chunk);
            }
        };
        push(5, b"");
        let mut m = Vec::new();
        startup_message(
            &mut m,
            ProtocolVersion::V3_0,
            &[(b"user", b"u"), (b"database", b"d")],
        );
        frontend::password(&mut m, b"pw");
        frontend::query(&mut m, b"SELECT 1");
        push(0, &m);
        push(1, b"");
        push(0, b"");
        let mut reply = Vec::new();
        crate::protocol::backend::command_complete(&mut reply, b"SELECT 1");
        crate::protocol::backend::ready_for_query(
            &mut reply,
            crate::protocol::TransactionStatus::Idle,
        );
        push(2, &reply);
        // The database tracks search_path: its value is read back before the backend goes.
        let mut read_back = Vec::new();
        crate::protocol::write_message(&mut read_back, b'T', |b| {
            b.extend_from_slice(&1u16.to_be_bytes());
            b.extend_from_slice(b"current_setting\0");
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xff, 0xff]);
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        });
        crate::protocol::write_message(&mut read_back, b'D', |b| {
            b.extend_from_slice(&[0, 1, 0, 0, 0, 6]);
            b.extend_from_slice(b"public");
        });
        crate::protocol::backend::command_complete(&mut read_back, b"SELECT 1");
        crate::protocol::backend::ready_for_query(
            &mut read_back,
            crate::protocol::TransactionStatus::Idle,
        );
        push(2, &read_back);
        script
    }

    #[test]
    fn seed_script_logs_in_and_runs_a_query() {
        let session = run_script(&login_and_query_script());
        assert!(session.is_logged_in(), "{session:?}");
        assert!(
            !session.holds_backend(),
            "the query finished and the backend went back"
        );
    }

    fn seed_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_session")
    }

    #[test]
    fn committed_seed_is_current() {
        let committed = std::fs::read(seed_dir().join("login-query")).unwrap();
        assert!(
            committed == login_and_query_script(),
            "stale seed: run `cargo test -p pglink write_fuzz_seed -- --ignored`"
        );
    }

    /// `cargo test -p pglink write_fuzz_seed -- --ignored` refreshes the committed seed.
    #[test]
    #[ignore]
    fn write_fuzz_seed() {
        std::fs::create_dir_all(seed_dir()).unwrap();
        std::fs::write(seed_dir().join("login-query"), login_and_query_script()).unwrap();
    }

    #[test]
    fn arbitrary_scripts_do_not_panic() {
        let mut state = 0x1234_5678_u64;
        for _ in 0..2000 {
            let len = (state % 300) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            fuzz_session(&data);
        }
    }
}
