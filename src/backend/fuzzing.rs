//! Helper behind the `backend_login` fuzz target (kept here, beside the code it drives, so the
//! target stays a one-liner and the seeds are checked by unit tests).
//!
//! The input is one flag byte, then everything "the server" sends, fed to a [`Login`] as a
//! reactor would: in pieces, offering what is left over again with each new piece. Whatever the
//! bytes, the login must end in `Ready`, a typed [`LoginError`] (FATAL, with the server's
//! SQLSTATE or 08006) or a wait for more, never a panic, and never consume more than it was
//! given. Everything is deterministic: fixed password, nonces, salt and binding data.
//!
//! Flag bits: 0–1 TLS (0 `disable`, 1 `prefer`, 2 or 3 `require`); 2 the TLS connection has
//! `tls-server-end-point` data (SCRAM-SHA-256-PLUS possible); 3–7 the piece size (0: all at
//! once). The SSL response must arrive alone, as from a real server: a piece size of 1 gets
//! past it.
// Assertions are the point of a fuzz harness: a violated invariant must crash loudly.
#![allow(clippy::panic)]

use std::sync::OnceLock;

use super::login::{Login, LoginError, LoginParams, LoginStep, TlsNegotiation};
use crate::auth::{FixedRng, ScramKeys};
use crate::protocol::{Severity, SqlState};

const USER: &str = "u";
const PASSWORD: &str = "pw";
const SALT: [u8; 16] = [7; 16];
const ITERATIONS: u32 = 4096;
const CB_DATA: [u8; 32] = [0x5a; 32];
const CLIENT_RNG: &[u8] = b"fuzzLoginNonce-0123456789";

/// How a fuzzed login ended.
#[derive(Debug, PartialEq)]
pub enum LoginOutcome {
    /// Logged in (the connection would be idle now).
    Ready,
    /// A typed error, as the engine would report it.
    Failed(LoginError),
    /// The input ran out first.
    NeedMore,
}

fn keys() -> &'static ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| ScramKeys::derive(PASSWORD.as_bytes(), &SALT, ITERATIONS))
}

fn tls_of(flags: u8) -> TlsNegotiation {
    match flags & 3 {
        0 => TlsNegotiation::Disable,
        1 => TlsNegotiation::Prefer,
        _ => TlsNegotiation::Require,
    }
}

fn params(tls: TlsNegotiation) -> LoginParams {
    LoginParams {
        user: USER.into(),
        password: PASSWORD.into(),
        database: "d".into(),
        startup_params: vec![("application_name".into(), "fuzz".into())],
        tls,
    }
}

/// Runs one login against the scripted server bytes.
pub fn fuzz_login(data: &[u8]) -> LoginOutcome {
    let Some((&flags, server)) = data.split_first() else {
        return LoginOutcome::NeedMore;
    };
    let tls = tls_of(flags);
    let binding = (flags & 4 != 0).then(|| CB_DATA.to_vec());
    let piece = match usize::from(flags >> 3) {
        0 => server.len().max(1),
        n => n,
    };
    let mut out = Vec::new();
    let mut login = Login::start(params(tls), &mut out);
    let mut rng = FixedRng::new(CLIENT_RNG);
    // PBKDF2 with a fuzzer-chosen iteration count would make every exec slow: the seeds' salt
    // gets the real keys, anything else cheap fake ones.
    let mut derive = |pw: &[u8], salt: &[u8], iterations: u32| {
        if salt == SALT && iterations == ITERATIONS {
            keys().clone()
        } else {
            ScramKeys::derive_prepared(pw, salt, iterations.min(2))
        }
    };
    let mut tls_up = false;
    let mut pending = Vec::new();
    for bytes in server.chunks(piece) {
        pending.extend_from_slice(bytes);
        loop {
            let offered = pending.len();
            let (n, step) = match login.on_data_with(&pending, &mut out, &mut rng, &mut derive) {
                Ok(step) => step,
                Err(e) => {
                    assert_eq!(e.severity(), Severity::Fatal, "{e}");
                    if !matches!(e, LoginError::Server(_)) {
                        assert_eq!(e.sqlstate(), SqlState::CONNECTION_FAILURE, "{e}");
                    }
                    assert!(!e.to_string().is_empty());
                    return LoginOutcome::Failed(e);
                }
            };
            assert!(n <= offered, "consumed {n} of {offered} bytes");
            pending.drain(..n);
            match step {
                LoginStep::Ready => return LoginOutcome::Ready,
                LoginStep::StartTls => {
                    assert!(tls != TlsNegotiation::Disable, "TLS it did not ask for");
                    assert!(!tls_up, "TLS twice");
                    tls_up = true;
                    login.on_tls_established(binding.clone(), &mut out);
                }
                LoginStep::NeedMore if n == 0 => break,
                LoginStep::NeedMore => {}
            }
        }
    }
    LoginOutcome::NeedMore
}

/// Server transcripts that log in (and one refusal), for the seed corpus.
#[cfg(test)]
pub fn login_seeds() -> Vec<Vec<u8>> {
    use crate::protocol::backend::{
        TransactionStatus, authentication_cleartext, authentication_md5, authentication_ok,
        backend_key_data, parameter_status, ready_for_query,
    };
    use crate::protocol::error_response;
    let tail = |out: &mut Vec<u8>| {
        authentication_ok(out);
        parameter_status(out, b"server_version", b"17.2");
        parameter_status(out, b"client_encoding", b"UTF8");
        backend_key_data(out, 4242, &[1, 2, 3, 4]);
        ready_for_query(out, TransactionStatus::Idle);
    };
    let mut seeds = Vec::new();
    // trust
    let mut s = vec![0u8];
    tail(&mut s);
    seeds.push(s);
    // cleartext, md5
    let mut s = vec![0u8];
    authentication_cleartext(&mut s);
    tail(&mut s);
    seeds.push(s);
    let mut s = vec![0u8];
    authentication_md5(&mut s, [1, 2, 3, 4]);
    tail(&mut s);
    seeds.push(s);
    // SCRAM-SHA-256 without TLS; `prefer` refused by the server, then trust
    seeds.push(scram_seed(0, false));
    let mut s = vec![1u8, b'N'];
    tail(&mut s);
    seeds.push(s);
    // `require` with binding data, piece size 1: SCRAM-SHA-256-PLUS inside TLS
    seeds.push(scram_seed(2 | 4 | (1 << 3), true));
    // A refusal
    let mut s = vec![0u8];
    error_response(
        &mut s,
        Severity::Fatal,
        SqlState::INVALID_PASSWORD,
        "password authentication failed for user \"u\"",
    );
    seeds.push(s);
    seeds
}

/// A SCRAM exchange the login completes: the server side computed with pglink's own server.
#[cfg(test)]
fn scram_seed(flags: u8, tls: bool) -> Vec<u8> {
    use std::sync::Arc;

    use crate::auth::{
        SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramClient, ScramServer, ScramVerifier,
        select_mechanism,
    };
    use crate::protocol::backend::{
        TransactionStatus, authentication_ok, authentication_sasl, ready_for_query, sasl_continue,
        sasl_final,
    };
    let binding = (flags & 4 != 0).then(|| CB_DATA.to_vec());
    let offered: [&[u8]; 2] = [SCRAM_SHA_256_PLUS.as_bytes(), SCRAM_SHA_256.as_bytes()];
    // The login's own choice and nonce (the same fixed random bytes).
    let (mechanism, cb) =
        select_mechanism(offered.iter().copied(), binding.clone(), false).unwrap();
    let mut client = ScramClient::new(PASSWORD.as_bytes(), cb, &mut FixedRng::new(CLIENT_RNG));
    let verifier = Arc::new(ScramVerifier::from_keys(&SALT, ITERATIONS, keys()));
    let mut server = ScramServer::new(verifier, binding, &mut FixedRng::new(b"server-nonce!"));
    let server_first = server
        .on_client_first(mechanism.as_bytes(), &client.client_first())
        .unwrap();
    let client_final = client.on_server_first(&server_first).unwrap();
    let server_final = server.on_client_final(&client_final).unwrap();
    let mut s = vec![flags];
    if tls {
        s.push(b'S');
    }
    authentication_sasl(&mut s, &offered);
    sasl_continue(&mut s, &server_first);
    sasl_final(&mut s, &server_final);
    authentication_ok(&mut s);
    ready_for_query(&mut s, TransactionStatus::Idle);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_log_in_and_the_refusal_is_the_servers_error() {
        let seeds = login_seeds();
        let (refusal, logins) = seeds.split_last().unwrap();
        for (i, s) in logins.iter().enumerate() {
            assert_eq!(fuzz_login(s), LoginOutcome::Ready, "seed {i}");
        }
        let LoginOutcome::Failed(LoginError::Server(e)) = fuzz_login(refusal) else {
            panic!("the refusal seed does not fail");
        };
        assert_eq!(e.code, SqlState::INVALID_PASSWORD);
    }

    #[test]
    fn garbage_fails_or_waits() {
        for input in [
            &b""[..],
            b"\x00",
            b"\x00R\x00\x00\x00\x08\x00\x00\x00\x07",
            b"\x01S",
            b"\x02N",
            b"\x09SR",
            b"\x00\xff\xff\xff\xff\xff",
        ] {
            assert_ne!(fuzz_login(input), LoginOutcome::Ready, "{input:?}");
        }
    }

    /// The reproducer of the one finding so far: an ErrorResponse answering the SSLRequest
    /// (as from a server at its connection limit) is the login's error, not a wait.
    #[test]
    fn an_error_answering_the_ssl_request_is_the_logins_error() {
        let input = std::fs::read(corpus_dir().join("repro-error-answering-ssl-request")).unwrap();
        let LoginOutcome::Failed(LoginError::Server(e)) = fuzz_login(&input) else {
            panic!("{:?}", fuzz_login(&input));
        };
        assert_eq!(e.code, SqlState::TOO_MANY_CONNECTIONS);
    }

    fn corpus_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/backend_login")
    }

    fn seed_file(i: usize) -> std::path::PathBuf {
        corpus_dir().join(format!("seed-{i}"))
    }

    /// The committed seeds are what this code produces (after a change to the login or to
    /// the input layout, rewrite them with `write_login_fuzz_corpus`). Other files in the
    /// directory (reproducers of past findings) must not panic either.
    #[test]
    fn committed_seeds_are_current_and_the_corpus_runs() {
        let seeds = login_seeds();
        for (i, seed) in seeds.iter().enumerate() {
            let file = seed_file(i);
            let committed =
                std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(
                committed == *seed,
                "{} is stale: run `cargo test --lib write_login_fuzz_corpus -- --ignored`",
                file.display()
            );
        }
        assert!(!seed_file(seeds.len()).exists(), "a seed file is left over");
        for entry in std::fs::read_dir(corpus_dir()).unwrap() {
            fuzz_login(&std::fs::read(entry.unwrap().path()).unwrap());
        }
    }

    /// Writes the seeds to `fuzz/corpus/backend_login/`:
    /// `cargo test --lib write_login_fuzz_corpus -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand when the seeds change"]
    fn write_login_fuzz_corpus() {
        std::fs::create_dir_all(corpus_dir()).unwrap();
        for (i, s) in login_seeds().iter().enumerate() {
            std::fs::write(seed_file(i), s).unwrap();
        }
    }
}
