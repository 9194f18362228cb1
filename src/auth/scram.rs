//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677): shared primitives, the verifier
//! PostgreSQL stores, and the server side of the exchange (a client logging in to pglink).
//!
//! The server follows PostgreSQL's `auth-scram.c`, including its refusals: no authorization
//! identity, no mandatory extensions (`m=`), only the `tls-server-end-point` channel binding, and
//! the downgrade check (a client saying `y` — "I support channel binding but think you don't" —
//! while this server offered `SCRAM-SHA-256-PLUS` means someone removed PLUS from the offer).
//! Where PostgreSQL is lax about syntax the RFC forbids (empty nonce, trailing comma) pglink is
//! strict; no real client sends those.
//!
//! ```text
//! client                                   ScramServer
//!   SASLInitialResponse(mech, client-first) ─▶ on_client_first ─▶ server-first (SASLContinue)
//!   SASLResponse(client-final)              ─▶ on_client_final ─▶ server-final (SASLFinal)
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub use super::error::{AuthFailureKind, ScramError};
pub use super::verifier::{ScramVerifier, ScramVerifierError};

use super::ct::constant_time_eq;
use super::rng::{Rng, generate_nonce, is_nonce_char};

/// `SCRAM-SHA-256`, the mechanism without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// `SCRAM-SHA-256-PLUS`, the mechanism with `tls-server-end-point` channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type PostgreSQL (and pglink) supports.
pub(crate) const CB_TYPE: &str = "tls-server-end-point";

/// Length of SHA-256 outputs and therefore of every SCRAM key, proof and signature.
pub const KEY_LEN: usize = 32;

/// The SASL mechanisms to offer in `AuthenticationSASL`, most preferred first.
///
/// `channel_binding_available` is true when the client connection is TLS and the
/// `tls-server-end-point` hash of our certificate could be computed.
#[must_use]
pub fn mechanisms(channel_binding_available: bool) -> &'static [&'static str] {
    if channel_binding_available {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    }
}

// ---------------------------------------------------------------------------------------------
// Primitives

pub(crate) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// HMAC-SHA-256 over the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC takes keys of any length (long keys are hashed), so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// PostgreSQL refuses to SASLprep passwords longer than this (`MAX_PASSWORD_LENGTH`).
const MAX_SASLPREP_LEN: usize = 1024;

/// The password bytes SCRAM hashes: SASLprep(password) when the password is valid UTF-8 and
/// SASLprep succeeds, the raw bytes otherwise — what PostgreSQL's `pg_saslprep` callers do.
///
/// Like PostgreSQL, pure ASCII is used as is and a password that maps to nothing is used raw.
pub(crate) fn prepare_password(password: &[u8]) -> Cow<'_, [u8]> {
    if password.is_ascii() || password.len() > MAX_SASLPREP_LEN {
        return Cow::Borrowed(password);
    }
    let Ok(s) = std::str::from_utf8(password) else {
        return Cow::Borrowed(password);
    };
    match stringprep::saslprep(s) {
        Ok(p) if !p.is_empty() => Cow::Owned(p.into_owned().into_bytes()),
        _ => Cow::Borrowed(password),
    }
}

/// ClientKey and ServerKey for one (password, salt, iterations): the output of the expensive
/// PBKDF2 step. Everything else in an exchange is a few HMACs.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// `HMAC(SaltedPassword, "Client Key")`.
    pub client_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl ScramKeys {
    /// SASLprep-or-raw, then PBKDF2-HMAC-SHA-256. `iterations` 0 behaves as 1.
    #[must_use]
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        Self::derive_prepared(&prepare_password(password), salt, iterations)
    }

    pub(crate) fn derive_prepared(prepared: &[u8], salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<Sha256>(prepared, salt, iterations.max(1), &mut salted);
        Self {
            client_key: hmac(&salted, &[b"Client Key"]),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// `H(ClientKey)`.
    #[must_use]
    pub fn stored_key(&self) -> [u8; KEY_LEN] {
        sha256(&self.client_key)
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramKeys { .. }")
    }
}

// ---------------------------------------------------------------------------------------------
// Attribute parsing shared by server and client

pub(crate) fn b64_decode(v: &[u8]) -> Option<Vec<u8>> {
    B64.decode(v).ok()
}

pub(crate) fn b64_encode(v: &[u8]) -> String {
    B64.encode(v)
}

pub(crate) fn decode_key(v: &[u8]) -> Option<[u8; KEY_LEN]> {
    b64_decode(v)?.try_into().ok()
}

/// The value of `field` when it is `<name>=<value>`.
pub(crate) fn attr(field: &[u8], name: u8) -> Option<&[u8]> {
    match field {
        [n, b'=', value @ ..] if *n == name => Some(value),
        _ => None,
    }
}

/// An optional extension attribute: `ALPHA "=" value` whose name is not one RFC 5802 defines
/// (those have fixed places; seeing one elsewhere is malformed).
pub(crate) fn is_extension(field: &[u8]) -> bool {
    match field {
        [n, b'=', ..] => n.is_ascii_alphabetic() && !b"acemnprsiv".contains(n),
        _ => false,
    }
}

/// A non-empty nonce of printable characters, as `&str`.
pub(crate) fn nonce_str(v: &[u8]) -> Option<&str> {
    if v.is_empty() || !v.iter().all(|b| is_nonce_char(*b)) {
        return None;
    }
    std::str::from_utf8(v).ok()
}

/// A positive decimal iteration count (digits only: no sign, no spaces).
pub(crate) fn parse_iterations(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v)
        .ok()?
        .parse::<u32>()
        .ok()
        .filter(|i| *i > 0)
}

// ---------------------------------------------------------------------------------------------
// Server

/// The server side of one SCRAM exchange.
///
/// Create one per login with the user's verifier (or [`ScramVerifier::mock`] for an unknown
/// user), feed it the client's messages, send back what it returns. Any error poisons it: every
/// later call returns [`ScramError::OutOfOrder`].
pub struct ScramServer {
    verifier: Arc<ScramVerifier>,
    channel_binding: Option<Vec<u8>>,
    server_nonce: String,
    used_channel_binding: bool,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal(Box<PendingFinal>),
    Done,
    Failed,
}

/// What the server remembers between its first and final message.
struct PendingFinal {
    client_first_bare: Vec<u8>,
    server_first: String,
    combined_nonce: String,
    /// The `c=` value the client must send: base64(gs2 header [+ binding data]).
    expected_cbind: String,
}

/// gs2 channel binding flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gs2Flag<'a> {
    /// `n`: client does not support channel binding.
    No,
    /// `y`: client supports it but thinks the server does not.
    Yes,
    /// `p=<type>`: client uses channel binding of this type.
    Plus(&'a [u8]),
}

struct ClientFirst<'a> {
    flag: Gs2Flag<'a>,
    gs2_header: &'a [u8],
    bare: &'a [u8],
    nonce: &'a str,
}

impl ScramServer {
    /// A server for one login.
    ///
    /// `channel_binding` is the `tls-server-end-point` data of *this* connection's certificate
    /// ([`super::tls_server_end_point`]) when the connection is TLS, else `None`; with `Some`,
    /// offer [`mechanisms(true)`](mechanisms) to the client.
    #[must_use]
    pub fn new(
        verifier: impl Into<Arc<ScramVerifier>>,
        channel_binding: Option<Vec<u8>>,
        rng: &mut dyn Rng,
    ) -> Self {
        Self::with_nonce(verifier.into(), channel_binding, generate_nonce(rng))
    }

    pub(crate) fn with_nonce(
        verifier: Arc<ScramVerifier>,
        channel_binding: Option<Vec<u8>>,
        server_nonce: String,
    ) -> Self {
        Self {
            verifier,
            channel_binding,
            server_nonce,
            used_channel_binding: false,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// The mechanisms to offer on this connection.
    #[must_use]
    pub fn mechanisms(&self) -> &'static [&'static str] {
        mechanisms(self.channel_binding.is_some())
    }

    /// True once the client's proof checked out and server-final was produced.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        matches!(self.state, ServerState::Done)
    }

    /// True when the client selected SCRAM-SHA-256-PLUS (known after client-first).
    #[must_use]
    pub fn channel_binding_used(&self) -> bool {
        self.used_channel_binding
    }

    /// Handles `SASLInitialResponse`: the selected `mechanism` and the client-first-message.
    /// Returns the server-first-message to send in `AuthenticationSASLContinue`.
    pub fn on_client_first(
        &mut self,
        mechanism: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFirst =
            std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let (pending, reply) = self.client_first(mechanism, data)?;
        self.state = ServerState::AwaitingClientFinal(Box::new(pending));
        Ok(reply)
    }

    /// Handles `SASLResponse`: the client-final-message. Returns the server-final-message
    /// (`v=<ServerSignature>`) to send in `AuthenticationSASLFinal`, followed by
    /// `AuthenticationOk`. A wrong password is [`ScramError::InvalidProof`].
    pub fn on_client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFinal(pending) =
            std::mem::replace(&mut self.state, ServerState::Failed)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let reply = self.client_final(&pending, data)?;
        self.state = ServerState::Done;
        Ok(reply)
    }

    fn client_first(
        &mut self,
        mechanism: &[u8],
        data: &[u8],
    ) -> Result<(PendingFinal, Vec<u8>), ScramError> {
        let plus = if mechanism == SCRAM_SHA_256_PLUS.as_bytes() && self.channel_binding.is_some() {
            true
        } else if mechanism == SCRAM_SHA_256.as_bytes() {
            false
        } else {
            return Err(ScramError::UnsupportedMechanism);
        };
        let msg = parse_client_first(data)?;
        let mut cbind_input = msg.gs2_header.to_vec();
        match (msg.flag, plus) {
            (Gs2Flag::Plus(_), false) => return Err(ScramError::UnexpectedChannelBinding),
            (Gs2Flag::No | Gs2Flag::Yes, true) => return Err(ScramError::ChannelBindingNotSent),
            (Gs2Flag::Yes, false) if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBindingDowngrade);
            }
            (Gs2Flag::Plus(cb_type), true) => {
                if cb_type != CB_TYPE.as_bytes() {
                    return Err(ScramError::UnsupportedChannelBindingType);
                }
                cbind_input.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
            }
            (Gs2Flag::No | Gs2Flag::Yes, false) => {}
        }
        self.used_channel_binding = plus;
        let combined_nonce = format!("{}{}", msg.nonce, self.server_nonce);
        let server_first = format!(
            "r={combined_nonce},s={},i={}",
            b64_encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        let pending = PendingFinal {
            client_first_bare: msg.bare.to_vec(),
            server_first,
            combined_nonce,
            expected_cbind: b64_encode(&cbind_input),
        };
        Ok((pending, reply))
    }

    fn client_final(&self, pending: &PendingFinal, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ClientFinal {
            without_proof,
            cbind,
            nonce,
            proof,
        } = parse_client_final(data)?;
        if cbind != pending.expected_cbind.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if nonce != pending.combined_nonce.as_bytes() {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message: [&[u8]; 5] = [
            &pending.client_first_bare,
            b",",
            pending.server_first.as_bytes(),
            b",",
            without_proof,
        ];
        let v = &self.verifier;
        let client_signature = hmac(&v.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        if !constant_time_eq(&sha256(&client_key), &v.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&v.server_key, &auth_message);
        Ok(format!("v={}", b64_encode(&server_signature)).into_bytes())
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "AwaitingClientFirst",
            ServerState::AwaitingClientFinal(_) => "AwaitingClientFinal",
            ServerState::Done => "Done",
            ServerState::Failed => "Failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .field("channel_binding_offered", &self.channel_binding.is_some())
            .finish_non_exhaustive()
    }
}

/// `gs2-header client-first-message-bare`:
/// `(n|y|p=<type>) "," "," "n=" user "," "r=" nonce ("," ext)*`.
fn parse_client_first(data: &[u8]) -> Result<ClientFirst<'_>, ScramError> {
    let bad = |what| ScramError::MalformedClientFirst { what };
    if data.is_empty() {
        return Err(bad("empty message"));
    }
    if data.contains(&0) {
        return Err(bad("NUL byte"));
    }
    let mut fields = data.split(|b| *b == b',');
    let flag_field = fields.next().unwrap_or_default();
    let flag = match flag_field {
        b"n" => Gs2Flag::No,
        b"y" => Gs2Flag::Yes,
        [b'p', b'=', cb_type @ ..] if !cb_type.is_empty() => Gs2Flag::Plus(cb_type),
        _ => return Err(bad("channel binding flag is not n, y or p=<type>")),
    };
    let authzid = fields.next().ok_or(bad("truncated gs2 header"))?;
    if authzid.starts_with(b"a=") {
        return Err(ScramError::AuthzidUnsupported);
    }
    if !authzid.is_empty() {
        return Err(bad("gs2 header: expected authzid a= or nothing"));
    }
    let header_len = flag_field.len() + 2;
    let gs2_header = data.get(..header_len).ok_or(bad("truncated gs2 header"))?;
    let bare = data.get(header_len..).ok_or(bad("truncated gs2 header"))?;
    let user = fields.next().ok_or(bad("missing username"))?;
    if user.first() == Some(&b'm') {
        return Err(ScramError::ExtensionUnsupported);
    }
    // The username is ignored, as PostgreSQL does: the startup packet's user is authoritative.
    attr(user, b'n').ok_or(bad("expected username attribute n="))?;
    let nonce = fields.next().ok_or(bad("missing nonce"))?;
    let nonce = attr(nonce, b'r').ok_or(bad("expected nonce attribute r="))?;
    let nonce = nonce_str(nonce).ok_or(bad("nonce is empty or not printable ASCII"))?;
    if !fields.all(is_extension) {
        return Err(bad("invalid attribute after nonce (or trailing comma)"));
    }
    Ok(ClientFirst {
        flag,
        gs2_header,
        bare,
        nonce,
    })
}

/// A parsed client-final-message.
struct ClientFinal<'a> {
    /// Everything before `,p=`: part of the AuthMessage.
    without_proof: &'a [u8],
    cbind: &'a [u8],
    nonce: &'a [u8],
    proof: [u8; KEY_LEN],
}

/// `"c=" cbind "," "r=" nonce ("," ext)* "," "p=" proof`.
fn parse_client_final(data: &[u8]) -> Result<ClientFinal<'_>, ScramError> {
    let bad = |what| ScramError::MalformedClientFinal { what };
    if data.is_empty() {
        return Err(bad("empty message"));
    }
    if data.contains(&0) {
        return Err(bad("NUL byte"));
    }
    let mut halves = data.rsplitn(2, |b| *b == b',');
    let proof_field = halves.next().unwrap_or_default();
    let without_proof = halves.next().ok_or(bad("missing proof"))?;
    let proof = attr(proof_field, b'p').ok_or(bad("expected proof attribute p= at the end"))?;
    let proof = decode_key(proof).ok_or(bad("proof is not 32 bytes of base64"))?;
    let mut fields = without_proof.split(|b| *b == b',');
    let cbind = fields.next().unwrap_or_default();
    let cbind = attr(cbind, b'c').ok_or(bad("expected channel binding attribute c="))?;
    let nonce = fields.next().ok_or(bad("missing nonce"))?;
    let nonce = attr(nonce, b'r').ok_or(bad("expected nonce attribute r="))?;
    if !fields.all(is_extension) {
        return Err(bad(
            "invalid attribute between nonce and proof (or extra comma)",
        ));
    }
    Ok(ClientFinal {
        without_proof,
        cbind,
        nonce,
        proof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_lists() {
        assert_eq!(mechanisms(false), ["SCRAM-SHA-256"]);
        assert_eq!(mechanisms(true), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    }

    #[test]
    fn saslprep_or_raw() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"secret", b"secret"),
            // ASCII is never touched, control characters included (PostgreSQL's fast path).
            (b"a\x01b c", b"a\x01b c"),
            // Not UTF-8: raw.
            (b"p\xe4ss", b"p\xe4ss"),
            // NFKC: U+2168 ROMAN NUMERAL NINE -> "IX"; U+FB01 LATIN SMALL LIGATURE FI -> "fi".
            ("I\u{2168}".as_bytes(), b"IIX"),
            ("\u{fb01}x".as_bytes(), b"fix"),
            // Non-ASCII space maps to space; soft hyphen maps to nothing.
            ("a\u{a0}b\u{ad}c".as_bytes(), b"a bc"),
            // Maps to nothing at all: raw (PostgreSQL refuses an empty result).
            ("\u{ad}".as_bytes(), "\u{ad}".as_bytes()),
            // Prohibited (private use, U+E000): raw.
            ("x\u{e000}".as_bytes(), "x\u{e000}".as_bytes()),
            // Bidi violation (RandALCat mixed with LCat): raw.
            ("\u{5d0}a\u{5d0}".as_bytes(), "\u{5d0}a\u{5d0}".as_bytes()),
            // NFC text is stable.
            ("pässwörd".as_bytes(), "pässwörd".as_bytes()),
            // NFD (as typed on macOS) becomes NFC.
            (
                "pa\u{308}ss".as_bytes(),
                "pässwörd".get(..5).unwrap().as_bytes(),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(&*prepare_password(input), *expected, "{input:02x?}");
        }
    }

    #[test]
    fn attribute_helpers() {
        assert_eq!(attr(b"r=abc", b'r'), Some(&b"abc"[..]));
        assert_eq!(attr(b"r=", b'r'), Some(&b""[..]));
        assert_eq!(attr(b"r", b'r'), None);
        assert_eq!(attr(b"s=abc", b'r'), None);
        assert!(is_extension(b"x=1") && is_extension(b"Z="));
        assert!(!is_extension(b"p=1") && !is_extension(b"1=1") && !is_extension(b"x"));
        assert_eq!(nonce_str(b"abc~!"), Some("abc~!"));
        assert_eq!(nonce_str(b""), None);
        assert_eq!(nonce_str(b"a b"), None);
        assert_eq!(parse_iterations(b"4096"), Some(4096));
        assert_eq!(parse_iterations(b"4294967295"), Some(u32::MAX));
        for bad in [
            &b""[..],
            b"0",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"4294967296",
            b"00000000001",
        ] {
            assert_eq!(parse_iterations(bad), None, "{bad:?}");
        }
    }
}
