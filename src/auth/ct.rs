//! Constant-time comparisons for secrets.

use sha2::{Digest, Sha256};
use std::hint::black_box;

/// Compares two byte strings without data-dependent branches on their contents.
///
/// The lengths may leak (a length mismatch returns early); the contents do not: every byte pair
/// is visited and folded into one accumulator, and `black_box` keeps the optimiser from turning
/// the fold back into an early exit. Use it for every comparison involving a secret (proofs,
/// signatures, password hashes).
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b) {
        acc = black_box(acc | (x ^ y));
    }
    black_box(acc) == 0
}

/// Checks a cleartext `PasswordMessage` against the expected password in constant time.
///
/// `received` is the message payload **without** its terminating NUL (the caller strips it when
/// it parses the C string). Both sides are hashed with SHA-256 first and the digests compared
/// with [`constant_time_eq`], so not even the password's length leaks through timing.
#[must_use]
pub fn cleartext_verify(expected_password: &[u8], received: &[u8]) -> bool {
    let a = Sha256::digest(expected_password);
    let b = Sha256::digest(received);
    constant_time_eq(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_basics() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"\x80bc", b"\x00bc"));
    }

    #[test]
    fn cleartext() {
        assert!(cleartext_verify(b"secret", b"secret"));
        assert!(!cleartext_verify(b"secret", b"secret\0"));
        assert!(!cleartext_verify(b"secret", b"Secret"));
        assert!(!cleartext_verify(b"secret", b""));
        assert!(cleartext_verify(b"", b""));
    }
}
