//! The SCRAM-SHA-256 verifier PostgreSQL stores in `pg_authid.rolpassword`.

use std::fmt;
use std::str::FromStr;

use super::rng::Rng;
use super::scram::{
    KEY_LEN, ScramKeys, b64_decode, b64_encode, decode_key, hmac, parse_iterations,
};

/// What a server needs to check a SCRAM-SHA-256 login without knowing the password: PostgreSQL's
/// `rolpassword` format `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

/// Why a verifier string did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifierError {
    what: &'static str,
}

impl fmt::Display for ScramVerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SCRAM-SHA-256 verifier: {}", self.what)
    }
}

impl std::error::Error for ScramVerifierError {}

impl ScramVerifier {
    /// PostgreSQL's default `scram_iterations`.
    pub const DEFAULT_ITERATIONS: u32 = 4096;
    /// Salt length PostgreSQL and [`ScramVerifier::generate`] use.
    pub const SALT_LEN: usize = 16;

    /// Derives the verifier of `password` (SASLprep-or-raw, then PBKDF2). Costs `iterations`
    /// HMACs: do it when secrets load, not per login.
    #[must_use]
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        Self::from_keys(
            salt,
            iterations,
            &ScramKeys::derive(password, salt, iterations),
        )
    }

    /// The verifier matching already derived keys.
    #[must_use]
    pub fn from_keys(salt: &[u8], iterations: u32, keys: &ScramKeys) -> Self {
        Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: keys.stored_key(),
            server_key: keys.server_key,
        }
    }

    /// A verifier for `password` with a fresh random 16-byte salt.
    #[must_use]
    pub fn generate(password: &[u8], iterations: u32, rng: &mut dyn Rng) -> Self {
        let mut salt = [0u8; Self::SALT_LEN];
        rng.fill(&mut salt);
        Self::derive(password, &salt, iterations)
    }

    /// A deterministic fake verifier for a user that does not exist (or has no SCRAM secret),
    /// so the exchange runs normally and fails only at the proof, exactly like a wrong password:
    /// nobody can tell which users exist. The salt is stable per username (a second probe sees
    /// the same salt, as for a real user) and the keys are pseudo-random, so no proof matches.
    ///
    /// `server_secret` must be random per process (or per installation) and kept private;
    /// `iterations` should be the configured `scram_iterations` so fake and real look alike.
    #[must_use]
    pub fn mock(username: &[u8], server_secret: &[u8], iterations: u32) -> Self {
        let salt = hmac(server_secret, &[b"pglink mock salt\0", username]);
        Self {
            salt: salt.iter().take(Self::SALT_LEN).copied().collect(),
            iterations,
            stored_key: hmac(server_secret, &[b"pglink mock stored key\0", username]),
            server_key: hmac(server_secret, &[b"pglink mock server key\0", username]),
        }
    }

    /// Parses PostgreSQL's `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, ScramVerifierError> {
        let err = |what| ScramVerifierError { what };
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(err("does not start with SCRAM-SHA-256$"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(err("missing '$' before keys"))?;
        let (iter, salt) = iter_salt
            .split_once(':')
            .ok_or(err("missing ':' after iterations"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(err("missing ':' between keys"))?;
        let iterations = parse_iterations(iter.as_bytes())
            .filter(|i| *i <= i32::MAX as u32)
            .ok_or(err("iteration count is not a number in 1..=2147483647"))?;
        let salt = b64_decode(salt.as_bytes())
            .filter(|s| !s.is_empty())
            .ok_or(err("salt is not non-empty base64"))?;
        let stored_key = decode_key(stored.as_bytes()).ok_or(err("StoredKey is not 32 bytes"))?;
        let server_key = decode_key(server.as_bytes()).ok_or(err("ServerKey is not 32 bytes"))?;
        Ok(Self {
            salt,
            iterations,
            stored_key,
            server_key,
        })
    }

    /// The PostgreSQL `rolpassword` form (same as `Display`).
    #[must_use]
    pub fn to_pg_string(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            b64_encode(&self.salt),
            b64_encode(&self.stored_key),
            b64_encode(&self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    /// Keys are secrets (StoredKey lets anyone who sniffed one exchange impersonate the user to
    /// a server with this verifier); never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl FromStr for ScramVerifier {
    type Err = ScramVerifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rng::FixedRng;

    const GOOD: &str = "SCRAM-SHA-256$4096:S/rAg3Csnm/aTNTifPHZYw==$nkXZUssWpFzFFMZS9OTnYW8h21LcFq/xdozIAeGMJcM=:Pb6J9NNTN1H4/9VfEvuaq4zvy/Hd+IXkzVtPc/WOn4M=";

    #[test]
    fn parse_format_round_trip() {
        let v = ScramVerifier::parse(GOOD).unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert_eq!(v.to_pg_string(), GOOD);
        assert_eq!(v.to_string(), GOOD);
        assert_eq!(GOOD.parse::<ScramVerifier>().unwrap(), v);
    }

    #[test]
    fn parse_rejects() {
        let salt = "S/rAg3Csnm/aTNTifPHZYw==";
        let key = "nkXZUssWpFzFFMZS9OTnYW8h21LcFq/xdozIAeGMJcM=";
        let bad = [
            String::new(),
            "md5d18bf5f8eddaae3aed1d69b23a252748".into(),
            format!("SCRAM-SHA-1$4096:{salt}${key}:{key}"),
            format!("scram-sha-256$4096:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}"),
            format!("SCRAM-SHA-256$4096${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}:{key}:{key}"),
            format!("SCRAM-SHA-256$0:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$-1:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$+4096:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$2147483648:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$x:{salt}${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:!!!!${key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}$AAAA:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:AAAA"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key}$"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key}:{key}"),
            format!("SCRAM-SHA-256$4096:{salt}${key}:{key} "),
        ];
        for s in &bad {
            let e = ScramVerifier::parse(s).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid SCRAM-SHA-256 verifier"),
                "{s}"
            );
        }
        let max = format!("SCRAM-SHA-256$2147483647:{salt}${key}:{key}");
        assert_eq!(
            ScramVerifier::parse(&max).unwrap().iterations,
            i32::MAX as u32
        );
    }

    #[test]
    fn debug_does_not_print_keys() {
        let v = ScramVerifier::parse(GOOD).unwrap();
        let d = format!("{v:?}");
        assert!(
            d.contains("4096") && !d.contains("nkXZ") && !d.contains("Pb6J"),
            "{d}"
        );
        let k = ScramKeys::derive(b"pw", b"salt", 1);
        assert_eq!(format!("{k:?}"), "ScramKeys { .. }");
    }

    #[test]
    fn generate_uses_a_fresh_16_byte_salt() {
        let v =
            ScramVerifier::generate(b"pw", 16, &mut FixedRng::new((0u8..16).collect::<Vec<_>>()));
        assert_eq!(v.salt, (0u8..16).collect::<Vec<_>>());
        assert_eq!(v, ScramVerifier::derive(b"pw", &v.salt, 16));
        let a = ScramVerifier::generate(b"pw", 16, &mut crate::auth::rng::OsRng);
        let b = ScramVerifier::generate(b"pw", 16, &mut crate::auth::rng::OsRng);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
    }

    #[test]
    fn zero_iterations_behaves_as_one() {
        assert_eq!(
            ScramKeys::derive(b"pw", b"s", 0),
            ScramKeys::derive(b"pw", b"s", 1)
        );
    }
}
