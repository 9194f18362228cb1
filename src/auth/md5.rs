//! PostgreSQL's legacy `md5` password method.
//!
//! Stored form: `"md5" + hex(md5(password || user))`. On the wire the server sends a 4-byte
//! salt and the client answers `"md5" + hex(md5(hex(md5(password || user)) || salt))`, so a
//! server needs only the stored form to check a login.
//!
//! Every `client_response` below is the `PasswordMessage` payload **without** its terminating
//! NUL, as for [`super::cleartext_verify`]; a response that still carries the NUL does not match.

use md5::{Digest, Md5};

use super::ct::constant_time_eq;

/// Length of `"md5"` followed by 32 lowercase hex digits.
pub const MD5_LEN: usize = 35;

fn md5_hex_prefixed(parts: &[&[u8]]) -> [u8; MD5_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut out = [0u8; MD5_LEN];
    let (prefix, hex) = out.split_at_mut(3);
    prefix.copy_from_slice(b"md5");
    for (pair, b) in hex.chunks_exact_mut(2).zip(digest.iter()) {
        for (slot, nibble) in pair.iter_mut().zip([b >> 4, b & 0x0f]) {
            *slot = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
        }
    }
    out
}

/// PostgreSQL's stored form of an md5 password: `"md5" + hex(md5(password || user))`.
#[must_use]
pub fn md5_stored(user: &[u8], password: &[u8]) -> [u8; MD5_LEN] {
    md5_hex_prefixed(&[password, user])
}

/// What a client sends for `AuthenticationMD5Password` with `salt`:
/// `"md5" + hex(md5(hex(md5(password || user)) || salt))`.
#[must_use]
pub fn md5_password(user: &[u8], password: &[u8], salt: [u8; 4]) -> [u8; MD5_LEN] {
    salted_from_stored(&md5_stored(user, password), salt)
}

fn salted_from_stored(stored: &[u8; MD5_LEN], salt: [u8; 4]) -> [u8; MD5_LEN] {
    let (_, hex) = stored.split_at(3);
    md5_hex_prefixed(&[hex, &salt])
}

/// Checks a client's md5 response against the user's password, in constant time.
#[must_use]
pub fn md5_verify(user: &[u8], password: &[u8], salt: [u8; 4], client_response: &[u8]) -> bool {
    constant_time_eq(&md5_password(user, password, salt), client_response)
}

/// Checks a client's md5 response against a stored `"md5<32 hex>"` secret (what
/// `pg_authid.rolpassword` holds for md5 users), in constant time. A `stored` value that is not
/// in that form never matches.
#[must_use]
pub fn md5_verify_stored(stored: &[u8], salt: [u8; 4], client_response: &[u8]) -> bool {
    let Ok(stored) = <&[u8; MD5_LEN]>::try_from(stored) else {
        return false;
    };
    let well_formed = stored.starts_with(b"md5")
        && stored
            .iter()
            .skip(3)
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    // Stored hex is case-sensitive in PostgreSQL too (it is always written lowercase).
    well_formed && constant_time_eq(&salted_from_stored(stored, salt), client_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CREATE ROLE y PASSWORD 'secret'` with `password_encryption = md5` on PostgreSQL 15.
    const PG15_STORED_Y: &[u8] = b"md5d18bf5f8eddaae3aed1d69b23a252748";

    #[test]
    fn stored_matches_postgres() {
        assert_eq!(&md5_stored(b"y", b"secret")[..], PG15_STORED_Y);
    }

    #[test]
    fn salted_response_known_value() {
        // md5(hex(md5("secret" || "y")) || 01 02 03 04), computed independently with Python's
        // hashlib: "md5" + hashlib.md5(b"d18bf5f8eddaae3aed1d69b23a252748" + b"\x01\x02\x03\x04")
        let r = md5_password(b"y", b"secret", [1, 2, 3, 4]);
        assert_eq!(&r[..], b"md59d5a65ea29a0dfa6decb3ca37621c86c");
    }

    #[test]
    fn verify() {
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let resp = md5_password(b"alice", b"pw", salt);
        assert!(md5_verify(b"alice", b"pw", salt, &resp));
        assert!(!md5_verify(b"alice", b"pw", [0, 0, 0, 0], &resp));
        assert!(!md5_verify(b"alice", b"pW", salt, &resp));
        assert!(!md5_verify(b"bob", b"pw", salt, &resp));
        let mut with_nul = resp.to_vec();
        with_nul.push(0);
        assert!(!md5_verify(b"alice", b"pw", salt, &with_nul));
        assert!(!md5_verify(b"alice", b"pw", salt, &resp[..34]));
        assert!(!md5_verify(b"alice", b"pw", salt, b""));
    }

    #[test]
    fn verify_stored() {
        let salt = [9, 8, 7, 6];
        let resp = md5_password(b"y", b"secret", salt);
        assert!(md5_verify_stored(PG15_STORED_Y, salt, &resp));
        assert!(!md5_verify_stored(PG15_STORED_Y, [0; 4], &resp));
        assert!(!md5_verify_stored(b"md5", salt, &resp));
        assert!(!md5_verify_stored(b"SCRAM-SHA-256$4096:xx", salt, &resp));
        let upper = PG15_STORED_Y.to_ascii_uppercase();
        assert!(!md5_verify_stored(&upper, salt, &resp));
    }
}
