//! Randomness for salts and nonces, injectable so exchanges are reproducible.

/// A source of random bytes.
///
/// Production code uses [`OsRng`]; tests and fuzz targets use [`FixedRng`] so that nonces and
/// salts, and therefore whole SCRAM exchanges, are deterministic.
pub trait Rng {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system's CSPRNG (`getrandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRng;

impl Rng for OsRng {
    // The OS CSPRNG failing is not something a login can recover from, and carrying on with
    // predictable nonces or salts would be a security bug; stop loudly instead.
    #[allow(clippy::panic)]
    fn fill(&mut self, buf: &mut [u8]) {
        if let Err(e) = getrandom::fill(buf) {
            panic!("OS random number generator failed: {e}");
        }
    }
}

/// A deterministic "random" source for tests and fuzzing: yields its bytes in order and starts
/// over when they run out (zeros if it holds none). Never use it outside tests.
#[derive(Debug, Clone)]
pub struct FixedRng {
    bytes: Vec<u8>,
    pos: usize,
}

impl FixedRng {
    /// A source that repeats `bytes` forever.
    #[must_use]
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            pos: 0,
        }
    }
}

impl Rng for FixedRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.bytes.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
            if self.pos >= self.bytes.len() {
                self.pos = 0;
            }
        }
    }
}

/// Characters a SCRAM nonce may contain: printable ASCII except `,` (RFC 5802 `printable`).
pub(crate) fn is_nonce_char(b: u8) -> bool {
    matches!(b, 0x21..=0x2b | 0x2d..=0x7e)
}

/// Length of the nonces pglink generates: 24 characters from a 93-symbol alphabet, about
/// 157 bits (PostgreSQL sends 18 random bytes, 144 bits, as base64).
pub(crate) const NONCE_LEN: usize = 24;

/// Draws a nonce of [`NONCE_LEN`] printable characters.
///
/// Each random byte's low 7 bits are kept when they are a nonce character and skipped
/// otherwise (rejection sampling, so the characters are uniform). A [`FixedRng`] holding
/// printable bytes therefore yields exactly those bytes. Termination is guaranteed even for a
/// degenerate source: after a bounded number of draws the remaining characters are taken modulo
/// the alphabet.
pub(crate) fn generate_nonce(rng: &mut dyn Rng) -> String {
    const ALPHABET_LEN: u8 = 93;
    let mut out = String::with_capacity(NONCE_LEN);
    let mut buf = [0u8; 32];
    for _ in 0..8 {
        rng.fill(&mut buf);
        for &b in &buf {
            let c = b & 0x7f;
            if is_nonce_char(c) && out.len() < NONCE_LEN {
                out.push(char::from(c));
            }
        }
        if out.len() == NONCE_LEN {
            return out;
        }
    }
    rng.fill(&mut buf);
    for &b in &buf {
        if out.len() == NONCE_LEN {
            break;
        }
        // 0x21 + n for n in 0..93, skipping ',' (0x2c).
        let mut c = 0x21 + b % ALPHABET_LEN;
        if c >= 0x2c {
            c += 1;
        }
        out.push(char::from(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rng_repeats() {
        let mut r = FixedRng::new(vec![1, 2, 3]);
        let mut buf = [0u8; 7];
        r.fill(&mut buf);
        assert_eq!(buf, [1, 2, 3, 1, 2, 3, 1]);
        let mut empty = FixedRng::new(Vec::new());
        empty.fill(&mut buf);
        assert_eq!(buf, [0; 7]);
    }

    #[test]
    fn nonce_from_printable_bytes_is_those_bytes() {
        let mut r = FixedRng::new(b"abc,def\x01ghijklmnopqrstuvwxyz0123".to_vec());
        assert_eq!(generate_nonce(&mut r), "abcdefghijklmnopqrstuvwx");
    }

    #[test]
    fn nonce_terminates_on_degenerate_source() {
        for fill in [0u8, b',', 0x7f, 0xff] {
            let n = generate_nonce(&mut FixedRng::new(vec![fill]));
            assert_eq!(n.len(), NONCE_LEN);
            assert!(n.bytes().all(is_nonce_char), "{n:?}");
        }
    }

    #[test]
    fn os_rng_nonces_are_printable_and_differ() {
        let a = generate_nonce(&mut OsRng);
        let b = generate_nonce(&mut OsRng);
        assert!(a.bytes().all(is_nonce_char));
        assert_eq!(a.len(), NONCE_LEN);
        assert_ne!(a, b);
    }
}
