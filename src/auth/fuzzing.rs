//! Helpers behind the `scram_server` and `scram_client` fuzz targets (kept here, beside the
//! code they drive, so the targets stay one-liners and the seeds are checked by unit tests).
//!
//! Input layout for both: one flag byte, then messages separated by NUL (which no SCRAM message
//! may contain). Everything is deterministic: fixed password, salt, nonces and binding data.
// Assertions are the point of a fuzz harness: a violated invariant must crash loudly.
#![allow(clippy::panic)]

use std::sync::{Arc, OnceLock};

use super::ScramError;
#[cfg(test)]
use super::mechanisms;
use super::rng::FixedRng;
use super::scram::{ScramKeys, ScramServer, ScramVerifier};
use super::scram_client::{ScramClient, select_mechanism};

const PASSWORD: &[u8] = b"pencil";
/// RFC 7677's salt ("W22ZaJ0SNY7soEsUEjb6gQ==").
const SALT: [u8; 16] = [
    0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81,
];
const ITERATIONS: u32 = 4096;
const CB_DATA: [u8; 32] = [0x5a; 32];
const CLIENT_RNG: &[u8] = b"fuzzClientNonce-0123456789";
const SERVER_RNG: &[u8] = b"fuzzServerNonce+abcdefghij";

fn keys() -> &'static ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| ScramKeys::derive(PASSWORD, &SALT, ITERATIONS))
}

fn verifier() -> Arc<ScramVerifier> {
    static VERIFIER: OnceLock<Arc<ScramVerifier>> = OnceLock::new();
    VERIFIER
        .get_or_init(|| Arc::new(ScramVerifier::from_keys(&SALT, ITERATIONS, keys())))
        .clone()
}

fn split(data: &[u8]) -> (u8, Vec<&[u8]>) {
    match data.split_first() {
        Some((flags, rest)) => (*flags, rest.split(|b| *b == 0).collect()),
        None => (0, Vec::new()),
    }
}

/// Server target: `flags` bit 0 = the connection has channel binding data (PLUS offered);
/// then `mechanism \0 client-first \0 client-final`. Returns true when the login succeeded.
pub fn scram_server_exchange(data: &[u8]) -> bool {
    let (flags, parts) = split(data);
    let cb = (flags & 1 == 1).then(|| CB_DATA.to_vec());
    let mut server = ScramServer::new(verifier(), cb, &mut FixedRng::new(SERVER_RNG));
    let mut parts = parts.into_iter();
    let (Some(mech), Some(first)) = (parts.next(), parts.next()) else {
        return false;
    };
    if let Err(e) = server.on_client_first(mech, first) {
        assert_eq!(
            server.on_client_final(b"c=biws"),
            Err(ScramError::OutOfOrder),
            "{e}"
        );
        return false;
    }
    let Some(last) = parts.next() else {
        return false;
    };
    let done = server.on_client_final(last).is_ok();
    assert_eq!(done, server.is_complete());
    assert_eq!(server.on_client_final(last), Err(ScramError::OutOfOrder));
    done
}

/// Client target: `flags` bit 0 = we have TLS binding data, bit 1 = channel binding required;
/// then `mechanisms (space separated) \0 server-first \0 server-final`. Returns true when the
/// server was authenticated.
pub fn scram_client_exchange(data: &[u8]) -> bool {
    let (flags, parts) = split(data);
    let mut parts = parts.into_iter();
    let Some(mechs) = parts.next() else {
        return false;
    };
    let tls_cb = (flags & 1 == 1).then(|| CB_DATA.to_vec());
    let Ok((_, cb)) = select_mechanism(mechs.split(|b| *b == b' '), tls_cb, flags & 2 == 2) else {
        return false;
    };
    let mut client = ScramClient::new(PASSWORD, cb, &mut FixedRng::new(CLIENT_RNG));
    let _ = client.client_first();
    let Some(first) = parts.next() else {
        return false;
    };
    // PBKDF2 with a fuzzer-chosen iteration count would make every exec slow: the seeds' salt
    // gets the real keys, anything else gets cheap fake ones.
    let mut derive = |pw: &[u8], salt: &[u8], iterations: u32| {
        if salt == SALT && iterations == ITERATIONS {
            keys().clone()
        } else {
            ScramKeys::derive_prepared(pw, salt, iterations.min(2))
        }
    };
    if client.on_server_first_with(first, &mut derive).is_err() {
        assert_eq!(client.on_server_final(b"v="), Err(ScramError::OutOfOrder));
        return false;
    }
    let Some(last) = parts.next() else {
        return false;
    };
    let done = client.on_server_final(last).is_ok();
    assert_eq!(done, client.is_complete());
    done
}

/// Valid exchanges for the server target (plain, `y` without PLUS offered, PLUS).
#[cfg(test)]
pub fn scram_server_seeds() -> Vec<Vec<u8>> {
    [(0u8, false), (1, false), (1, true)]
        .into_iter()
        .filter_map(|(flags, plus)| {
            let cb = (flags & 1 == 1).then(|| CB_DATA.to_vec());
            let (mech, client_cb) = select_mechanism(
                mechanisms(plus).iter().map(|m| m.as_bytes()),
                cb.clone(),
                false,
            )
            .ok()?;
            let mut client = ScramClient::new(PASSWORD, client_cb, &mut FixedRng::new(CLIENT_RNG));
            let server_cb = if plus { cb } else { None };
            let mut server =
                ScramServer::new(verifier(), server_cb, &mut FixedRng::new(SERVER_RNG));
            let first = client.client_first();
            let server_first = server.on_client_first(mech.as_bytes(), &first).ok()?;
            let last = client.on_server_first(&server_first).ok()?;
            Some(
                [
                    &[u8::from(plus)][..],
                    mech.as_bytes(),
                    b"\0",
                    &first,
                    b"\0",
                    &last,
                ]
                .concat(),
            )
        })
        .collect()
}

/// Valid exchanges for the client target (`n`, `y`, PLUS).
#[cfg(test)]
pub fn scram_client_seeds() -> Vec<Vec<u8>> {
    [0u8, 1, 3]
        .into_iter()
        .filter_map(|flags| {
            let tls = flags & 1 == 1;
            let offer_plus = flags & 2 == 2;
            let offered = mechanisms(offer_plus).join(" ");
            let tls_cb = tls.then(|| CB_DATA.to_vec());
            let (mech, cb) =
                select_mechanism(offered.split(' ').map(str::as_bytes), tls_cb.clone(), false)
                    .ok()?;
            let mut client = ScramClient::new(PASSWORD, cb, &mut FixedRng::new(CLIENT_RNG));
            let server_cb = if offer_plus { tls_cb } else { None };
            let mut server =
                ScramServer::new(verifier(), server_cb, &mut FixedRng::new(SERVER_RNG));
            let server_first = server
                .on_client_first(mech.as_bytes(), &client.client_first())
                .ok()?;
            let last = client.on_server_first(&server_first).ok()?;
            let server_final = server.on_client_final(&last).ok()?;
            Some(
                [
                    &[flags & 1 | if offer_plus { 2 } else { 0 }][..],
                    offered.as_bytes(),
                    b"\0",
                    &server_first,
                    b"\0",
                    &server_final,
                ]
                .concat(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_seeds_complete() {
        let seeds = scram_server_seeds();
        assert_eq!(seeds.len(), 3);
        for s in &seeds {
            assert!(scram_server_exchange(s), "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn client_seeds_complete() {
        let seeds = scram_client_seeds();
        assert_eq!(seeds.len(), 3);
        for s in &seeds {
            assert!(scram_client_exchange(s), "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn garbage_does_not_complete() {
        for input in [
            &b""[..],
            b"\x00",
            b"\x01SCRAM-SHA-256\0n,,n=,r=x\0",
            b"\x03\xff\0\0",
        ] {
            assert!(!scram_server_exchange(input));
            assert!(!scram_client_exchange(input));
        }
    }

    /// Each target's seeds and the corpus directory they are committed in.
    fn committed_corpus() -> [(std::path::PathBuf, Vec<Vec<u8>>); 2] {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        [
            (root.join("scram_server"), scram_server_seeds()),
            (root.join("scram_client"), scram_client_seeds()),
        ]
    }

    fn seed_file(dir: &std::path::Path, i: usize) -> std::path::PathBuf {
        dir.join(format!("seed-{i}"))
    }

    /// The committed seeds are what this code produces (after a change to SCRAM or to the
    /// input layout, rewrite them with `write_fuzz_corpus`).
    #[test]
    fn committed_seeds_are_current() {
        for (dir, seeds) in committed_corpus() {
            for (i, seed) in seeds.iter().enumerate() {
                let file = seed_file(&dir, i);
                let committed =
                    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert!(
                    committed == *seed,
                    "{} is stale: run `cargo test --lib write_fuzz_corpus -- --ignored`",
                    file.display()
                );
            }
            let extra = seed_file(&dir, seeds.len());
            assert!(!extra.exists(), "{} is left over", extra.display());
        }
    }

    /// Writes the seeds to `fuzz/corpus/`: `cargo test --lib write_fuzz_corpus -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand when the seeds change"]
    fn write_fuzz_corpus() {
        for (dir, seeds) in committed_corpus() {
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(seed_file(&dir, i), s).unwrap();
            }
        }
    }
}
