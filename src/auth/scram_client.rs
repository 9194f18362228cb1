//! SCRAM-SHA-256(-PLUS) client: pglink logging in to a PostgreSQL backend.
//!
//! Mechanism and gs2 flag follow libpq (`fe-auth.c`, `fe-auth-scram.c`):
//!
//! | server offers PLUS | we have TLS binding data | result |
//! |---|---|---|
//! | yes | yes | `SCRAM-SHA-256-PLUS`, `p=tls-server-end-point` |
//! | no  | yes | `SCRAM-SHA-256`, `y` (a server that does support binding then knows PLUS was stripped) |
//! | any | no  | `SCRAM-SHA-256`, `n` |
//!
//! With `require_cb`, anything but the first row is [`ScramError::ChannelBindingRequired`].
//!
//! Server input is validated strictly: the nonce must extend ours, the salt must be base64, the
//! iteration count must lie in `1..=`[`MAX_SERVER_ITERATIONS`] so a hostile server cannot make
//! us spin on PBKDF2, and the server signature is checked in constant time.
//!
//! The caller must also refuse an `AuthenticationOk` that arrives before
//! [`ScramClient::is_complete`] is true: a server (or impostor) could otherwise skip the
//! exchange and never prove it knows the password (libpq checks this since PostgreSQL 16).

use std::collections::VecDeque;
use std::fmt;

use super::ct::constant_time_eq;
use super::rng::{Rng, generate_nonce};
pub use super::scram::ScramKeys;
use super::scram::{
    CB_TYPE, KEY_LEN, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError, attr, b64_decode, b64_encode,
    decode_key, hmac, nonce_str, parse_iterations, prepare_password, xor,
};

/// The largest iteration count pglink accepts from a server (PostgreSQL's default is 4096).
/// Ten million PBKDF2 rounds already cost seconds of CPU.
pub const MAX_SERVER_ITERATIONS: u32 = 10_000_000;

/// The channel binding a client uses, i.e. its gs2 flag.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientChannelBinding {
    /// `n`: no TLS (or no binding data): we do not support channel binding here.
    Unsupported,
    /// `y`: we could bind, but the server did not offer PLUS.
    NotUsed,
    /// `p=tls-server-end-point`: bind to this `tls-server-end-point` hash of the server's
    /// certificate ([`super::tls_server_end_point`]).
    TlsServerEndPoint(Vec<u8>),
}

impl ClientChannelBinding {
    fn gs2_header(&self) -> String {
        match self {
            Self::Unsupported => "n,,".to_owned(),
            Self::NotUsed => "y,,".to_owned(),
            Self::TlsServerEndPoint(_) => format!("p={CB_TYPE},,"),
        }
    }

    /// The mechanism this binding goes with.
    #[must_use]
    pub fn mechanism(&self) -> &'static str {
        match self {
            Self::TlsServerEndPoint(_) => SCRAM_SHA_256_PLUS,
            Self::Unsupported | Self::NotUsed => SCRAM_SHA_256,
        }
    }
}

impl fmt::Debug for ClientChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported => f.write_str("Unsupported"),
            Self::NotUsed => f.write_str("NotUsed"),
            Self::TlsServerEndPoint(d) => write!(f, "TlsServerEndPoint({} bytes)", d.len()),
        }
    }
}

/// Picks the mechanism and channel binding from the server's `AuthenticationSASL` list.
///
/// `tls_cb` is the `tls-server-end-point` hash of the backend's certificate when the
/// connection is TLS and the hash could be computed, else `None`. `require_cb` is libpq's
/// `channel_binding=require`.
pub fn select_mechanism<'a>(
    server_mechanisms: impl IntoIterator<Item = &'a [u8]>,
    tls_cb: Option<Vec<u8>>,
    require_cb: bool,
) -> Result<(&'static str, ClientChannelBinding), ScramError> {
    let (mut plus, mut plain) = (false, false);
    for m in server_mechanisms {
        plus |= m == SCRAM_SHA_256_PLUS.as_bytes();
        plain |= m == SCRAM_SHA_256.as_bytes();
    }
    let cb = match (plus, tls_cb) {
        (true, Some(data)) => {
            return Ok((
                SCRAM_SHA_256_PLUS,
                ClientChannelBinding::TlsServerEndPoint(data),
            ));
        }
        _ if require_cb => return Err(ScramError::ChannelBindingRequired),
        (false, Some(_)) => ClientChannelBinding::NotUsed,
        (_, None) => ClientChannelBinding::Unsupported,
    };
    if plain {
        Ok((SCRAM_SHA_256, cb))
    } else {
        Err(ScramError::UnsupportedMechanism)
    }
}

/// A small bounded cache of [`ScramKeys`] per (password, salt, iterations), so a pool opening
/// many backends to the same server pays PBKDF2 once per password instead of once per login.
///
/// Entries are tagged with a keyed fingerprint of the password, so a rotated password never
/// reuses stale keys. Oldest entries are evicted first.
pub struct SaltedKeyCache {
    entries: VecDeque<CacheEntry>,
    capacity: usize,
}

struct CacheEntry {
    password_tag: [u8; KEY_LEN],
    salt: Vec<u8>,
    iterations: u32,
    keys: ScramKeys,
}

impl SaltedKeyCache {
    /// Enough for one password across a primary and a few replicas (each has its own salt).
    pub const DEFAULT_CAPACITY: usize = 4;

    /// An empty cache holding at most `capacity` entries (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Number of cached entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn get_or_derive(
        &mut self,
        prepared: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> ScramKeys {
        let tag = hmac(prepared, &[b"pglink scram key cache"]);
        let hit = self.entries.iter().find(|e| {
            e.iterations == iterations && e.salt == salt && constant_time_eq(&e.password_tag, &tag)
        });
        if let Some(e) = hit {
            return e.keys.clone();
        }
        let keys = ScramKeys::derive_prepared(prepared, salt, iterations);
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(CacheEntry {
            password_tag: tag,
            salt: salt.to_vec(),
            iterations,
            keys: keys.clone(),
        });
        keys
    }
}

impl Default for SaltedKeyCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl fmt::Debug for SaltedKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaltedKeyCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// `derive(prepared_password, salt, iterations)`: where a client gets its keys.
pub(crate) type DeriveKeys<'a> = dyn FnMut(&[u8], &[u8], u32) -> ScramKeys + 'a;

/// The client side of one SCRAM exchange. Any error poisons it: every later call returns
/// [`ScramError::OutOfOrder`].
pub struct ScramClient {
    /// SASLprep'd (or raw) password.
    password: Vec<u8>,
    cb: ClientChannelBinding,
    nonce: String,
    client_first_bare: String,
    state: ClientState,
}

enum ClientState {
    AwaitingServerFirst,
    AwaitingServerFinal { server_signature: [u8; KEY_LEN] },
    Done,
    Failed,
}

impl ScramClient {
    /// A client for one login with `password` (SASLprep is applied as PostgreSQL does) and the
    /// channel binding chosen by [`select_mechanism`].
    #[must_use]
    pub fn new(password: &[u8], cb: ClientChannelBinding, rng: &mut dyn Rng) -> Self {
        // Like libpq, send an empty username: PostgreSQL uses the startup packet's.
        Self::with_nonce(password, cb, "", generate_nonce(rng))
    }

    /// `username` must already be a SASL `saslname` (`=` and `,` escaped).
    pub(crate) fn with_nonce(
        password: &[u8],
        cb: ClientChannelBinding,
        username: &str,
        nonce: String,
    ) -> Self {
        Self {
            password: prepare_password(password).into_owned(),
            cb,
            client_first_bare: format!("n={username},r={nonce}"),
            nonce,
            state: ClientState::AwaitingServerFirst,
        }
    }

    /// The mechanism to name in `SASLInitialResponse`.
    #[must_use]
    pub fn mechanism(&self) -> &'static str {
        self.cb.mechanism()
    }

    /// True when this exchange binds to the TLS channel (PLUS).
    #[must_use]
    pub fn uses_channel_binding(&self) -> bool {
        matches!(self.cb, ClientChannelBinding::TlsServerEndPoint(_))
    }

    /// The client-first-message for `SASLInitialResponse`.
    #[must_use]
    pub fn client_first(&self) -> Vec<u8> {
        let mut out = self.cb.gs2_header().into_bytes();
        out.extend_from_slice(self.client_first_bare.as_bytes());
        out
    }

    /// True once the server's signature checked out.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }

    /// Handles `AuthenticationSASLContinue` (server-first-message); returns the
    /// client-final-message for `SASLResponse`. Runs PBKDF2: see
    /// [`on_server_first_cached`](Self::on_server_first_cached).
    pub fn on_server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        self.on_server_first_with(data, &mut ScramKeys::derive_prepared)
    }

    /// Like [`on_server_first`](Self::on_server_first), taking the keys from `cache` when this
    /// password was already used with the server's salt and iteration count.
    pub fn on_server_first_cached(
        &mut self,
        data: &[u8],
        cache: &mut SaltedKeyCache,
    ) -> Result<Vec<u8>, ScramError> {
        self.on_server_first_with(data, &mut |pw, salt, iterations| {
            cache.get_or_derive(pw, salt, iterations)
        })
    }

    /// `derive(prepared_password, salt, iterations)` supplies the keys.
    pub(crate) fn on_server_first_with(
        &mut self,
        data: &[u8],
        derive: &mut DeriveKeys<'_>,
    ) -> Result<Vec<u8>, ScramError> {
        let ClientState::AwaitingServerFirst =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let (nonce, salt, iterations) = parse_server_first(data, &self.nonce)?;
        let keys = derive(&self.password, &salt, iterations);

        let mut cbind_input = self.cb.gs2_header().into_bytes();
        if let ClientChannelBinding::TlsServerEndPoint(d) = &self.cb {
            cbind_input.extend_from_slice(d);
        }
        let without_proof = format!("c={},r={nonce}", b64_encode(&cbind_input));
        let auth_message: [&[u8]; 5] = [
            self.client_first_bare.as_bytes(),
            b",",
            data,
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac(&keys.stored_key(), &auth_message);
        let proof = xor(&keys.client_key, &client_signature);
        let server_signature = hmac(&keys.server_key, &auth_message);
        self.state = ClientState::AwaitingServerFinal { server_signature };
        Ok(format!("{without_proof},p={}", b64_encode(&proof)).into_bytes())
    }

    /// Handles `AuthenticationSASLFinal` (server-final-message): checks the server signature in
    /// constant time. `e=<error>` from the server is [`ScramError::ServerError`].
    pub fn on_server_final(&mut self, data: &[u8]) -> Result<(), ScramError> {
        let ClientState::AwaitingServerFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let bad = |what| ScramError::InvalidServerResponse { what };
        if data.contains(&0) {
            return Err(bad("NUL byte in server-final-message"));
        }
        let mut fields = data.split(|b| *b == b',');
        let first = fields.next().unwrap_or_default();
        if let Some(e) = attr(first, b'e') {
            return Err(ScramError::ServerError(sanitize(e)));
        }
        let v = attr(first, b'v').ok_or(bad("server-final-message: expected v= or e="))?;
        let v = decode_key(v).ok_or(bad("server signature is not 32 bytes of base64"))?;
        if fields.next().is_some() {
            return Err(bad("garbage at end of server-final-message"));
        }
        if !constant_time_eq(&v, &server_signature) {
            return Err(ScramError::ServerSignatureMismatch);
        }
        self.state = ClientState::Done;
        Ok(())
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::AwaitingServerFirst => "AwaitingServerFirst",
            ClientState::AwaitingServerFinal { .. } => "AwaitingServerFinal",
            ClientState::Done => "Done",
            ClientState::Failed => "Failed",
        };
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// `"r=" nonce "," "s=" salt "," "i=" iterations`; the nonce must extend `client_nonce`.
fn parse_server_first<'a>(
    data: &'a [u8],
    client_nonce: &str,
) -> Result<(&'a str, Vec<u8>, u32), ScramError> {
    let bad = |what| ScramError::InvalidServerResponse { what };
    if data.contains(&0) {
        return Err(bad("NUL byte in server-first-message"));
    }
    let mut fields = data.split(|b| *b == b',');
    let nonce = fields.next().unwrap_or_default();
    if nonce.first() == Some(&b'm') {
        return Err(ScramError::ExtensionUnsupported);
    }
    let nonce = attr(nonce, b'r').ok_or(bad("server-first-message: expected nonce r="))?;
    let nonce = nonce_str(nonce).ok_or(bad("nonce is empty or not printable ASCII"))?;
    if nonce.len() <= client_nonce.len() || !nonce.starts_with(client_nonce) {
        return Err(ScramError::NonceMismatch);
    }
    let salt = fields
        .next()
        .ok_or(bad("server-first-message: missing salt"))?;
    let salt = attr(salt, b's').ok_or(bad("server-first-message: expected salt s="))?;
    let salt = b64_decode(salt)
        .filter(|s| !s.is_empty())
        .ok_or(bad("salt is not non-empty base64"))?;
    let iter = fields
        .next()
        .ok_or(bad("server-first-message: missing iteration count"))?;
    let iter = attr(iter, b'i').ok_or(bad("server-first-message: expected iteration count i="))?;
    let iterations =
        parse_iterations(iter).ok_or(bad("iteration count is not a positive number"))?;
    if iterations > MAX_SERVER_ITERATIONS {
        return Err(bad("iteration count above MAX_SERVER_ITERATIONS"));
    }
    if fields.next().is_some() {
        return Err(bad("garbage at end of server-first-message"));
    }
    Ok((nonce, salt, iterations))
}

/// A server's `e=` value made safe to log: lossy UTF-8, no control characters, bounded.
fn sanitize(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";
    const PLAIN: &[u8] = b"SCRAM-SHA-256";

    #[test]
    fn mechanism_selection_follows_libpq() {
        use ClientChannelBinding::*;
        let cb = || Some(vec![1u8, 2, 3]);
        let tsep = TlsServerEndPoint(vec![1, 2, 3]);
        type Case<'a> = (
            &'a [&'a [u8]],
            Option<Vec<u8>>,
            bool,
            Result<(&'static str, ClientChannelBinding), ScramError>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                &[PLUS, PLAIN],
                cb(),
                false,
                Ok((SCRAM_SHA_256_PLUS, tsep.clone())),
            ),
            (
                &[PLAIN, PLUS],
                cb(),
                true,
                Ok((SCRAM_SHA_256_PLUS, tsep.clone())),
            ),
            (&[PLUS], cb(), false, Ok((SCRAM_SHA_256_PLUS, tsep))),
            (&[PLAIN], cb(), false, Ok((SCRAM_SHA_256, NotUsed))),
            (&[PLAIN], None, false, Ok((SCRAM_SHA_256, Unsupported))),
            (
                &[PLUS, PLAIN],
                None,
                false,
                Ok((SCRAM_SHA_256, Unsupported)),
            ),
            (
                &[PLAIN],
                cb(),
                true,
                Err(ScramError::ChannelBindingRequired),
            ),
            (
                &[PLUS, PLAIN],
                None,
                true,
                Err(ScramError::ChannelBindingRequired),
            ),
            (&[PLUS], None, false, Err(ScramError::UnsupportedMechanism)),
            (&[], cb(), false, Err(ScramError::UnsupportedMechanism)),
            (
                &[b"SCRAM-SHA-1", b"scram-sha-256", b""],
                None,
                false,
                Err(ScramError::UnsupportedMechanism),
            ),
        ];
        for (offer, tls_cb, require, expected) in cases {
            let got = select_mechanism(offer.iter().copied(), tls_cb, require);
            assert_eq!(got, expected, "{offer:?} require={require}");
        }
    }

    #[test]
    fn client_first_per_binding() {
        use crate::auth::rng::FixedRng;
        let nonce = "abcdefghijklmnopqrstuvwx";
        for (cb, expected) in [
            (ClientChannelBinding::Unsupported, "n,,n=,r="),
            (ClientChannelBinding::NotUsed, "y,,n=,r="),
            (
                ClientChannelBinding::TlsServerEndPoint(vec![0; 32]),
                "p=tls-server-end-point,,n=,r=",
            ),
        ] {
            let c = ScramClient::new(b"pw", cb, &mut FixedRng::new(nonce.as_bytes().to_vec()));
            assert_eq!(c.client_first(), format!("{expected}{nonce}").into_bytes());
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = ScramClient::new(
            b"hunter2",
            ClientChannelBinding::TlsServerEndPoint(vec![0xab; 32]),
            &mut crate::auth::rng::OsRng,
        );
        let d = format!("{c:?}");
        assert!(
            !d.contains("hunter2") && d.contains("SCRAM-SHA-256-PLUS"),
            "{d}"
        );
        assert_eq!(
            format!(
                "{:?}",
                ClientChannelBinding::TlsServerEndPoint(vec![0xab; 32])
            ),
            "TlsServerEndPoint(32 bytes)"
        );
    }

    #[test]
    fn cache_capacity_is_at_least_one() {
        let mut c = SaltedKeyCache::new(0);
        assert!(c.is_empty());
        c.get_or_derive(b"pw", b"salt", 1);
        c.get_or_derive(b"pw", b"salt2", 1);
        assert_eq!(c.len(), 1);
        c.clear();
        assert!(c.is_empty());
    }
}
