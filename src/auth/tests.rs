//! Exchange-level tests: recorded RFC 7677 exchange, client against server, verifiers produced
//! by real PostgreSQL, and tables of malformed messages.

use std::sync::Arc;

use super::rng::FixedRng;
use super::scram::{ScramKeys, ScramServer, ScramVerifier, b64_decode, b64_encode};
use super::scram_client::{ClientChannelBinding, SaltedKeyCache, ScramClient, select_mechanism};
use super::{AuthFailureKind, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError};

// RFC 7677 §3.
const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
// StoredKey and ServerKey of "pencil" with the RFC's salt, computed independently with Python's
// hashlib.pbkdf2_hmac and hmac.
const RFC_STORED_KEY: &str = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";
const RFC_SERVER_KEY: &str = "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

fn rfc_verifier() -> Arc<ScramVerifier> {
    static V: std::sync::OnceLock<Arc<ScramVerifier>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let salt = b64_decode(RFC_SALT.as_bytes()).unwrap();
        Arc::new(ScramVerifier::derive(b"pencil", &salt, 4096))
    })
    .clone()
}

fn s(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[test]
fn rfc7677_recorded_exchange() {
    let v = rfc_verifier();
    assert_eq!(b64_encode(&v.stored_key), RFC_STORED_KEY);
    assert_eq!(b64_encode(&v.server_key), RFC_SERVER_KEY);

    let mut client = ScramClient::with_nonce(
        b"pencil",
        ClientChannelBinding::Unsupported,
        "user",
        RFC_CLIENT_NONCE.into(),
    );
    let mut server = ScramServer::with_nonce(v, None, RFC_SERVER_NONCE.into());
    assert_eq!(client.mechanism(), SCRAM_SHA_256);

    let first = client.client_first();
    assert_eq!(s(&first), RFC_CLIENT_FIRST);
    let server_first = server.on_client_first(b"SCRAM-SHA-256", &first).unwrap();
    assert_eq!(s(&server_first), RFC_SERVER_FIRST);
    let last = client.on_server_first(&server_first).unwrap();
    assert_eq!(s(&last), RFC_CLIENT_FINAL);
    let server_final = server.on_client_final(&last).unwrap();
    assert_eq!(s(&server_final), RFC_SERVER_FINAL);
    assert!(server.is_complete());
    client.on_server_final(&server_final).unwrap();
    assert!(client.is_complete());
}

#[test]
fn rfc7677_each_side_against_recorded_peer() {
    // Server fed the RFC's client messages, client fed the RFC's server messages.
    let mut server = ScramServer::with_nonce(rfc_verifier(), None, RFC_SERVER_NONCE.into());
    server
        .on_client_first(b"SCRAM-SHA-256", RFC_CLIENT_FIRST.as_bytes())
        .unwrap();
    let v = server.on_client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(s(&v), RFC_SERVER_FINAL);

    let mut client = ScramClient::with_nonce(
        b"pencil",
        ClientChannelBinding::Unsupported,
        "user",
        RFC_CLIENT_NONCE.into(),
    );
    let mut cache = SaltedKeyCache::default();
    let last = client
        .on_server_first_cached(RFC_SERVER_FIRST.as_bytes(), &mut cache)
        .unwrap();
    assert_eq!(s(&last), RFC_CLIENT_FINAL);
    client.on_server_final(RFC_SERVER_FINAL.as_bytes()).unwrap();
}

/// One login: the client picks from what the server offers (possibly `tampered_offer` instead).
struct Login<'a> {
    password: &'a [u8],
    verifier: Arc<ScramVerifier>,
    server_cb: Option<Vec<u8>>,
    client_cb: Option<Vec<u8>>,
    require_cb: bool,
    tampered_offer: Option<&'a [&'a str]>,
}

impl Login<'_> {
    fn new(password: &[u8]) -> Login<'_> {
        Login {
            password,
            verifier: rfc_verifier(),
            server_cb: None,
            client_cb: None,
            require_cb: false,
            tampered_offer: None,
        }
    }

    fn tls(mut self, server: &[u8], client: &[u8]) -> Self {
        self.server_cb = Some(server.to_vec());
        self.client_cb = Some(client.to_vec());
        self
    }

    fn run(self) -> Result<(ScramServer, ScramClient), ScramError> {
        let mut server = ScramServer::new(
            self.verifier,
            self.server_cb,
            &mut FixedRng::new(b"server-random".to_vec()),
        );
        let offer = self.tampered_offer.unwrap_or(server.mechanisms());
        let (mech, cb) = select_mechanism(
            offer.iter().map(|m| m.as_bytes()),
            self.client_cb,
            self.require_cb,
        )?;
        let mut client =
            ScramClient::new(self.password, cb, &mut FixedRng::new(b"client".to_vec()));
        assert_eq!(client.mechanism(), mech);
        let first = server.on_client_first(mech.as_bytes(), &client.client_first())?;
        let last = client.on_server_first(&first)?;
        let fin = server.on_client_final(&last)?;
        client.on_server_final(&fin)?;
        assert!(server.is_complete() && client.is_complete());
        Ok((server, client))
    }
}

#[test]
fn plain_login() {
    let (server, client) = Login::new(b"pencil").run().unwrap();
    assert!(!server.channel_binding_used());
    assert!(!client.uses_channel_binding());
}

#[test]
fn plus_login_with_matching_binding() {
    let cb = [7u8; 32];
    let (server, client) = Login::new(b"pencil").tls(&cb, &cb).run().unwrap();
    assert!(server.channel_binding_used());
    assert!(client.uses_channel_binding());
    assert_eq!(client.mechanism(), SCRAM_SHA_256_PLUS);
}

#[test]
fn plus_login_with_other_binding_fails() {
    // A man in the middle terminating TLS shows the client its own certificate.
    let err = Login::new(b"pencil")
        .tls(&[7; 32], &[8; 32])
        .run()
        .unwrap_err();
    assert_eq!(err, ScramError::ChannelBindingMismatch);
    assert_eq!(err.kind(), AuthFailureKind::InvalidCredentials);
}

#[test]
fn stripped_plus_offer_is_a_downgrade() {
    let mut login = Login::new(b"pencil").tls(&[7; 32], &[7; 32]);
    login.tampered_offer = Some(&[SCRAM_SHA_256]);
    assert_eq!(
        login.run().unwrap_err(),
        ScramError::ChannelBindingDowngrade
    );
}

#[test]
fn y_flag_is_fine_when_server_has_no_tls_binding() {
    let mut login = Login::new(b"pencil");
    login.client_cb = Some(vec![7; 32]);
    let (server, client) = login.run().unwrap();
    assert!(!server.channel_binding_used() && !client.uses_channel_binding());
}

#[test]
fn require_cb_without_plus_offer() {
    let mut login = Login::new(b"pencil");
    login.client_cb = Some(vec![7; 32]);
    login.require_cb = true;
    assert_eq!(login.run().unwrap_err(), ScramError::ChannelBindingRequired);
}

#[test]
fn wrong_password_is_invalid_proof() {
    let err = Login::new(b"pencil2").run().unwrap_err();
    assert_eq!(err, ScramError::InvalidProof);
    assert_eq!(err.kind(), AuthFailureKind::InvalidCredentials);
}

#[test]
fn unknown_user_fails_at_the_proof_like_a_wrong_password() {
    let secret = b"per-process random secret";
    let mock = ScramVerifier::mock(b"nobody", secret, 4096);
    assert_eq!(mock, ScramVerifier::mock(b"nobody", secret, 4096));
    assert_ne!(
        mock.salt,
        ScramVerifier::mock(b"somebody", secret, 4096).salt
    );
    assert_ne!(
        mock.salt,
        ScramVerifier::mock(b"nobody", b"other secret", 4096).salt
    );
    assert_eq!(mock.salt.len(), 16);
    for pw in [&b"pencil"[..], b"", b"nobody"] {
        let mut login = Login::new(pw);
        login.verifier = Arc::new(mock.clone());
        assert_eq!(login.run().unwrap_err(), ScramError::InvalidProof);
    }
}

#[test]
fn tampered_server_final_is_rejected() {
    let mut server = ScramServer::new(rfc_verifier(), None, &mut FixedRng::new(b"s".to_vec()));
    let mut client = ScramClient::new(
        b"pencil",
        ClientChannelBinding::Unsupported,
        &mut FixedRng::new(b"c".to_vec()),
    );
    let first = server
        .on_client_first(b"SCRAM-SHA-256", &client.client_first())
        .unwrap();
    let last = client.on_server_first(&first).unwrap();
    let mut fin = server.on_client_final(&last).unwrap();
    fin[2] = if fin[2] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        client.on_server_final(&fin),
        Err(ScramError::ServerSignatureMismatch)
    );
    assert!(!client.is_complete());
    assert_eq!(client.on_server_final(&fin), Err(ScramError::OutOfOrder));
}

#[test]
fn server_error_attribute() {
    let mut client = ScramClient::with_nonce(
        b"pencil",
        ClientChannelBinding::Unsupported,
        "user",
        RFC_CLIENT_NONCE.into(),
    );
    client.on_server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    let err = client.on_server_final(b"e=invalid-proof\x07").unwrap_err();
    assert_eq!(err, ScramError::ServerError("invalid-proof".into()));
    assert_eq!(err.kind(), AuthFailureKind::InvalidCredentials);
}

#[test]
fn out_of_order_calls() {
    let mut server = ScramServer::new(rfc_verifier(), None, &mut FixedRng::new(b"s".to_vec()));
    assert_eq!(
        server.on_client_final(RFC_CLIENT_FINAL.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
    // Poisoned: even a valid first message is refused now.
    assert_eq!(
        server.on_client_first(b"SCRAM-SHA-256", RFC_CLIENT_FIRST.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
    let mut client = ScramClient::new(
        b"pencil",
        ClientChannelBinding::Unsupported,
        &mut FixedRng::new(b"c".to_vec()),
    );
    assert_eq!(
        client.on_server_final(RFC_SERVER_FINAL.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
    assert_eq!(
        client.on_server_first(RFC_SERVER_FIRST.as_bytes()),
        Err(ScramError::OutOfOrder)
    );
}

// --- Verifiers produced by PostgreSQL 15 (`CREATE ROLE x PASSWORD '...'`, read back from
// pg_authid.rolpassword on a throwaway initdb cluster).

const PG15_SECRET: &str = "SCRAM-SHA-256$4096:S/rAg3Csnm/aTNTifPHZYw==$nkXZUssWpFzFFMZS9OTnYW8h21LcFq/xdozIAeGMJcM=:Pb6J9NNTN1H4/9VfEvuaq4zvy/Hd+IXkzVtPc/WOn4M=";
/// Password `pässwörd` (NFC, already SASLprep-stable).
const PG15_UMLAUT: &str = "SCRAM-SHA-256$4096:2f2AAFvJv5hkMBot1M5O4Q==$oTvyDnXxDcQvm2GCN2YZ7EYEgIWgQFx2r6Vm2r+OfqU=:2VFmQL4lyYwkv/blKYNYcAK/ElG55fo0r3Md5jLkAEs=";
/// Password `I\u{2168}` (ROMAN NUMERAL NINE): SASLprep's NFKC turns it into `IIX`.
const PG15_ROMAN: &str = "SCRAM-SHA-256$4096:RQeSm/R7srkVU9aPdzPTXw==$gp7rSB9uF5rRMxzDSthmM5PSkiqPz8k1CCwV3Upysl4=:97OUiJx4CC0Xm1WoqQ01RRJp7mVjvY6PsLD3dcO2OX0=";

#[test]
fn derive_matches_postgres_15() {
    for (password, stored) in [
        ("secret", PG15_SECRET),
        ("pässwörd", PG15_UMLAUT),
        ("I\u{2168}", PG15_ROMAN),
    ] {
        let pg = ScramVerifier::parse(stored).unwrap();
        assert_eq!(pg.iterations, 4096);
        let ours = ScramVerifier::derive(password.as_bytes(), &pg.salt, pg.iterations);
        assert_eq!(ours, pg, "{password}");
        assert_eq!(ours.to_pg_string(), stored);
    }
    // SASLprep really was applied: NFKC form gives the same keys, the raw bytes do not.
    let pg = ScramVerifier::parse(PG15_ROMAN).unwrap();
    assert_eq!(ScramVerifier::derive(b"IIX", &pg.salt, 4096), pg);
}

// --- SCRAM-SHA-256-PLUS exchanges recorded against real peers (user "x", password "secret",
// verifier PG15_SECRET), replayed with the recorded nonces: every message must match.

/// pglink's client against PostgreSQL 15 over TLS (server certificate
/// testdata/pg15_server_rsa2048_sha384.der).
const PG15_PLUS: [&str; 5] = [
    "p=tls-server-end-point,,n=,r=*oNKJ5J>z@~cUHImt^oxhtzZ",
    "r=*oNKJ5J>z@~cUHImt^oxhtzZxhr+UtvSNCHAHauewgBacmam,s=S/rAg3Csnm/aTNTifPHZYw==,i=4096",
    "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws3D8hg/PEBTIaC/K9ewXcF6ZGp7SE7FQQsEB3MpSF7k3PT4IIiqOXbRdyd\
     GpsHJmt,r=*oNKJ5J>z@~cUHImt^oxhtzZxhr+UtvSNCHAHauewgBacmam,\
     p=ni7Wgj4h3LatOb9goqXfJlB/lmTIpYkfeBfunYb9qPk=",
    "v=AKz6kDmLmIh7DQetevkWcBYF2aQ8myEvio1r4P4xBGo=",
    "xhr+UtvSNCHAHauewgBacmam",
];

/// libpq 15 (psql, `channel_binding=require`) against pglink's server with certificate
/// testdata/ecdsa_p256_sha256.der; libpq accepted the server-final.
const LIBPQ15_PLUS: [&str; 5] = [
    "p=tls-server-end-point,,n=,r=4uIm948v22tK6EMWTGTyplMq",
    "r=4uIm948v22tK6EMWTGTyplMqP+`nq/>r0LXGO?UP^`-Ruqpw,s=S/rAg3Csnm/aTNTifPHZYw==,i=4096",
    "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsIQ8S4HoMMR7Hcdnwqd9MPkVRf5XKbO5PBkFPOs1Eh+M=,\
     r=4uIm948v22tK6EMWTGTyplMqP+`nq/>r0LXGO?UP^`-Ruqpw,\
     p=5aegc6jijpoWINbGWQwGgw+fj45TB6FHGik6MGfgALs=",
    "v=TKK6WM9xD2hegk5qUZ+LYrpL80qKyla/lw6NEhYLKBY=",
    "P+`nq/>r0LXGO?UP^`-Ruqpw",
];

fn replay_plus(cert: &[u8], msgs: [&str; 5]) {
    let [
        client_first,
        server_first,
        client_final,
        server_final,
        server_nonce,
    ] = msgs;
    let cb = super::tls_server_end_point(cert).unwrap();
    let verifier = Arc::new(ScramVerifier::parse(PG15_SECRET).unwrap());

    let client_nonce = &client_first[client_first.find(",r=").unwrap() + 3..];
    let mut client = ScramClient::with_nonce(
        b"secret",
        ClientChannelBinding::TlsServerEndPoint(cb.clone()),
        "",
        client_nonce.into(),
    );
    assert_eq!(client.mechanism(), SCRAM_SHA_256_PLUS);
    assert_eq!(s(&client.client_first()), client_first);
    assert_eq!(
        s(&client.on_server_first(server_first.as_bytes()).unwrap()),
        client_final
    );
    client.on_server_final(server_final.as_bytes()).unwrap();

    let mut server = ScramServer::with_nonce(verifier, Some(cb), server_nonce.into());
    let sf = server
        .on_client_first(b"SCRAM-SHA-256-PLUS", client_first.as_bytes())
        .unwrap();
    assert_eq!(s(&sf), server_first);
    let fin = server.on_client_final(client_final.as_bytes()).unwrap();
    assert_eq!(s(&fin), server_final);
    assert!(server.channel_binding_used());
}

#[test]
fn recorded_plus_exchange_with_postgres_15() {
    replay_plus(
        include_bytes!("testdata/pg15_server_rsa2048_sha384.der"),
        PG15_PLUS,
    );
}

#[test]
fn recorded_plus_exchange_with_libpq_15() {
    replay_plus(
        include_bytes!("testdata/ecdsa_p256_sha256.der"),
        LIBPQ15_PLUS,
    );
}

#[test]
fn recorded_plus_exchange_fails_with_another_certificate() {
    // Same messages, but this side sees a different certificate (a TLS-terminating MITM).
    let cb = super::tls_server_end_point(include_bytes!("testdata/rsa_sha256.der")).unwrap();
    let verifier = Arc::new(ScramVerifier::parse(PG15_SECRET).unwrap());
    let mut server = ScramServer::with_nonce(verifier, Some(cb), LIBPQ15_PLUS[4].into());
    server
        .on_client_first(b"SCRAM-SHA-256-PLUS", LIBPQ15_PLUS[0].as_bytes())
        .unwrap();
    assert_eq!(
        server.on_client_final(LIBPQ15_PLUS[2].as_bytes()),
        Err(ScramError::ChannelBindingMismatch)
    );
}

#[test]
fn client_logs_in_against_postgres_verifier_with_saslprep() {
    let mut login = Login::new("I\u{2168}".as_bytes());
    login.verifier = Arc::new(ScramVerifier::parse(PG15_ROMAN).unwrap());
    login.run().unwrap();
}

#[test]
fn saltedpassword_cache() {
    let salt = b64_decode(RFC_SALT.as_bytes()).unwrap();
    let mut cache = SaltedKeyCache::new(2);
    let run = |pw: &[u8], cache: &mut SaltedKeyCache| {
        let mut client = ScramClient::with_nonce(
            pw,
            ClientChannelBinding::Unsupported,
            "user",
            RFC_CLIENT_NONCE.into(),
        );
        client
            .on_server_first_cached(RFC_SERVER_FIRST.as_bytes(), cache)
            .map(|m| s(&m).to_owned())
    };
    assert_eq!(run(b"pencil", &mut cache).unwrap(), RFC_CLIENT_FINAL);
    assert_eq!(cache.len(), 1);
    assert_eq!(run(b"pencil", &mut cache).unwrap(), RFC_CLIENT_FINAL);
    assert_eq!(cache.len(), 1);
    // A rotated password must not reuse the old keys.
    assert_ne!(run(b"pencil2", &mut cache).unwrap(), RFC_CLIENT_FINAL);
    assert_eq!(cache.len(), 2);
    assert_ne!(run(b"pencil3", &mut cache).unwrap(), RFC_CLIENT_FINAL);
    assert_eq!(cache.len(), 2, "bounded");
    assert_eq!(run(b"pencil", &mut cache).unwrap(), RFC_CLIENT_FINAL);
    assert_eq!(
        ScramKeys::derive(b"pencil", &salt, 4096).stored_key(),
        rfc_verifier().stored_key
    );
}

// --- Malformed input tables. Each message is fed to a fresh, correctly advanced peer; the
// result must be the given error (or any error when `None`), and the peer poisoned after.

fn server_after_first(cb: Option<Vec<u8>>, mech: &str, first: &str) -> ScramServer {
    let mut server = ScramServer::with_nonce(rfc_verifier(), cb, RFC_SERVER_NONCE.into());
    server
        .on_client_first(mech.as_bytes(), first.as_bytes())
        .unwrap();
    server
}

#[test]
fn malformed_client_first() {
    use ScramError::*;
    let cases: &[(&str, &[u8], Option<ScramError>)] = &[
        ("SCRAM-SHA-256", b"", None),
        ("SCRAM-SHA-256", b"n", None),
        ("SCRAM-SHA-256", b"n,", None),
        ("SCRAM-SHA-256", b"n,,", None),
        ("SCRAM-SHA-256", b"n,,n=user", None),
        ("SCRAM-SHA-256", b"n,,n=user,", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=abc,", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=abc,,", None),
        ("SCRAM-SHA-256", b"n,,r=abc,n=user", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=ab\x01c", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=ab c", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=ab\xffc", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=\xc3\xa9", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=abc\0", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=abc,r=def", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=abc,1=x", None),
        ("SCRAM-SHA-256", b"n,,n=user,r=abc,xx", None),
        ("SCRAM-SHA-256", b"n,,,n=user,r=abc", None),
        ("SCRAM-SHA-256", b",,n=user,r=abc", None),
        ("SCRAM-SHA-256", b"x,,n=user,r=abc", None),
        ("SCRAM-SHA-256", b"nn,,n=user,r=abc", None),
        ("SCRAM-SHA-256", b"p,,n=user,r=abc", None),
        ("SCRAM-SHA-256", b"p=,,n=user,r=abc", None),
        ("SCRAM-SHA-256", b"n,x,n=user,r=abc", None),
        ("SCRAM-SHA-256", b"n,,user,r=abc", None),
        ("SCRAM-SHA-256", b"n,,n=user,nonce", None),
        (
            "SCRAM-SHA-256",
            b"n,a=admin,n=user,r=abc",
            Some(AuthzidUnsupported),
        ),
        (
            "SCRAM-SHA-256",
            b"n,,m=ext,n=user,r=abc",
            Some(ExtensionUnsupported),
        ),
        (
            "SCRAM-SHA-1",
            b"n,,n=user,r=abc",
            Some(UnsupportedMechanism),
        ),
        ("", b"n,,n=user,r=abc", Some(UnsupportedMechanism)),
        (
            "SCRAM-SHA-256-PLUS",
            b"p=tls-server-end-point,,n=,r=abc",
            Some(UnsupportedMechanism),
        ),
        (
            "SCRAM-SHA-256",
            b"p=tls-server-end-point,,n=,r=abc",
            Some(UnexpectedChannelBinding),
        ),
    ];
    for (mech, msg, expected) in cases {
        let mut server = ScramServer::with_nonce(rfc_verifier(), None, RFC_SERVER_NONCE.into());
        let err = server.on_client_first(mech.as_bytes(), msg).unwrap_err();
        if let Some(e) = expected {
            assert_eq!(&err, e, "{}", String::from_utf8_lossy(msg));
        } else {
            assert!(
                matches!(err, MalformedClientFirst { .. }),
                "{}: {err:?}",
                String::from_utf8_lossy(msg)
            );
        }
        assert_eq!(err.kind(), AuthFailureKind::ProtocolViolation);
        assert_eq!(
            server.on_client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(OutOfOrder)
        );
    }
}

#[test]
fn client_first_accepted_variants() {
    // Extensions after the nonce are ignored (as PostgreSQL does); the username is ignored.
    for msg in [
        "n,,n=,r=abc",
        "n,,n=user,r=abc,x=1",
        "n,,n=us=3Der,r=abc,x=,y=2",
        "y,,n=*,r=!~+",
    ] {
        let mut server = ScramServer::with_nonce(rfc_verifier(), None, RFC_SERVER_NONCE.into());
        server
            .on_client_first(b"SCRAM-SHA-256", msg.as_bytes())
            .unwrap();
    }
}

#[test]
fn channel_binding_flag_rules_on_a_tls_connection() {
    use ScramError::*;
    let cb = Some(vec![1u8; 32]);
    let cases: &[(&str, &str, Option<ScramError>)] = &[
        (
            "SCRAM-SHA-256-PLUS",
            "p=tls-server-end-point,,n=,r=abc",
            None,
        ),
        ("SCRAM-SHA-256", "n,,n=,r=abc", None),
        (
            "SCRAM-SHA-256",
            "y,,n=,r=abc",
            Some(ChannelBindingDowngrade),
        ),
        (
            "SCRAM-SHA-256-PLUS",
            "n,,n=,r=abc",
            Some(ChannelBindingNotSent),
        ),
        (
            "SCRAM-SHA-256-PLUS",
            "y,,n=,r=abc",
            Some(ChannelBindingNotSent),
        ),
        (
            "SCRAM-SHA-256",
            "p=tls-server-end-point,,n=,r=abc",
            Some(UnexpectedChannelBinding),
        ),
        (
            "SCRAM-SHA-256-PLUS",
            "p=tls-unique,,n=,r=abc",
            Some(UnsupportedChannelBindingType),
        ),
        (
            "SCRAM-SHA-256-PLUS",
            "p=tls-exporter,,n=,r=abc",
            Some(UnsupportedChannelBindingType),
        ),
    ];
    for (mech, msg, expected) in cases {
        let mut server = ScramServer::with_nonce(rfc_verifier(), cb.clone(), "srv".into());
        let got = server.on_client_first(mech.as_bytes(), msg.as_bytes());
        match expected {
            None => assert!(got.is_ok(), "{mech} {msg}: {got:?}"),
            Some(e) => assert_eq!(got.as_ref(), Err(e), "{mech} {msg}"),
        }
    }
}

#[test]
fn malformed_client_final() {
    use ScramError::*;
    let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
    let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let cases: Vec<(String, Option<ScramError>)> = vec![
        (String::new(), None),
        ("c=biws".into(), None),
        (format!("c=biws,r={nonce}"), None),
        (format!("c=biws,r={nonce},"), None),
        (format!("c=biws,r={nonce},p="), None),
        (format!("c=biws,r={nonce},p={proof},"), None),
        (
            format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ"),
            None,
        ),
        (format!("c=biws,r={nonce},p=!!!!"), None),
        (format!("c=biws,r={nonce},p=AAAA"), None),
        (format!("c=biws,r={nonce},p={proof}AAAA"), None),
        (format!("c=biws,r={nonce},p={proof},x=1"), None),
        (format!("r={nonce},c=biws,p={proof}"), None),
        (format!("c=biws,p={proof},r={nonce}"), None),
        (format!("c=biws,,r={nonce},p={proof}"), None),
        (format!("c=biws,r={nonce},,p={proof}"), None),
        (format!("c=biws,r={nonce},p=x,p={proof}"), None),
        (format!("c=biws,r={nonce},r={nonce},p={proof}"), None),
        (format!("c=biws,r={nonce},1=2,p={proof}"), None),
        (format!("c=biws,r={nonce}\0,p={proof}"), None),
        (format!("p={proof}"), None),
        (format!("c=biws,r=,p={proof}"), Some(NonceMismatch)),
        (
            format!("c=biws,r={RFC_CLIENT_NONCE},p={proof}"),
            Some(NonceMismatch),
        ),
        (format!("c=biws,r={nonce}x,p={proof}"), Some(NonceMismatch)),
        (
            format!("c=eSws,r={nonce},p={proof}"),
            Some(ChannelBindingMismatch),
        ),
        (
            format!("c=,r={nonce},p={proof}"),
            Some(ChannelBindingMismatch),
        ),
        (
            format!("c=biws=,r={nonce},p={proof}"),
            Some(ChannelBindingMismatch),
        ),
        (
            format!("c=biws,r={nonce},x=ext,p={proof}"),
            Some(InvalidProof),
        ),
        (
            format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Some(InvalidProof),
        ),
    ];
    for (msg, expected) in &cases {
        let mut server = server_after_first(None, "SCRAM-SHA-256", RFC_CLIENT_FIRST);
        let err = server.on_client_final(msg.as_bytes()).unwrap_err();
        match expected {
            Some(e) => assert_eq!(&err, e, "{msg}"),
            None => assert!(matches!(err, MalformedClientFinal { .. }), "{msg}: {err:?}"),
        }
        assert!(!server.is_complete());
        assert_eq!(
            server.on_client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(OutOfOrder)
        );
    }
    // Invalid UTF-8 anywhere.
    let mut server = server_after_first(None, "SCRAM-SHA-256", RFC_CLIENT_FIRST);
    let mut bad = RFC_CLIENT_FINAL.as_bytes().to_vec();
    bad[10] = 0xff;
    assert!(server.on_client_final(&bad).is_err());
}

#[test]
fn client_final_channel_binding_data_must_match() {
    let cb = vec![3u8; 32];
    let header = b"p=tls-server-end-point,,";
    let first = "p=tls-server-end-point,,n=,r=abc";
    for (data, ok) in [
        ([&header[..], &cb].concat(), true),
        ([&header[..], &[4u8; 32]].concat(), false),
        (header.to_vec(), false),
        ([&b"n,,"[..], &cb].concat(), false),
    ] {
        let mut server = server_after_first(Some(cb.clone()), "SCRAM-SHA-256-PLUS", first);
        let msg = format!(
            "c={},r=abc{RFC_SERVER_NONCE},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            b64_encode(&data)
        );
        let err = server.on_client_final(msg.as_bytes()).unwrap_err();
        // With the right binding the exchange proceeds to (and fails at) the proof.
        let expected = if ok {
            ScramError::InvalidProof
        } else {
            ScramError::ChannelBindingMismatch
        };
        assert_eq!(err, expected);
    }
}

fn client_after_first() -> ScramClient {
    ScramClient::with_nonce(
        b"pencil",
        ClientChannelBinding::Unsupported,
        "user",
        RFC_CLIENT_NONCE.into(),
    )
}

#[test]
fn malformed_server_first() {
    use ScramError::*;
    let n = RFC_CLIENT_NONCE;
    let cases: Vec<(String, Option<ScramError>)> = vec![
        (String::new(), None),
        (format!("r={n}"), Some(NonceMismatch)),
        (format!("r={n}srv"), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ=="), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i="), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0"), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1"), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096"), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i= 4096"), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096x"), None),
        (
            format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001"),
            None,
        ),
        (
            format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4294967296"),
            None,
        ),
        (
            format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999999999999"),
            None,
        ),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"), None),
        (
            format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=1"),
            None,
        ),
        (format!("r={n}srv,s=,i=4096"), None),
        (format!("r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ,i=4096"), None),
        (format!("r={n}srv,s=!!!!,i=4096"), None),
        (format!("r={n}srv,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ=="), None),
        (format!("s=W22ZaJ0SNY7soEsUEjb6gQ==,r={n}srv,i=4096"), None),
        (format!("r={n}srv,,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), None),
        (
            format!("r={n}s\x01v,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            None,
        ),
        (
            format!("r={n}\u{e9},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            None,
        ),
        (
            format!("r={n}srv\0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            None,
        ),
        ("r=,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(), None),
        (
            "r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
            Some(NonceMismatch),
        ),
        (
            format!("r=x{n},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Some(NonceMismatch),
        ),
        (
            format!("m=ext,r={n}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Some(ExtensionUnsupported),
        ),
        (format!("e=other-error,r={n}srv"), None),
    ];
    for (msg, expected) in &cases {
        let mut client = client_after_first();
        let err = client.on_server_first(msg.as_bytes()).unwrap_err();
        match expected {
            Some(e) => assert_eq!(&err, e, "{msg}"),
            None => assert!(
                matches!(err, InvalidServerResponse { .. }),
                "{msg}: {err:?}"
            ),
        }
        assert_eq!(
            client.on_server_final(RFC_SERVER_FINAL.as_bytes()),
            Err(OutOfOrder)
        );
    }
    let mut client = client_after_first();
    assert!(
        client
            .on_server_first(b"r=rOprNGfwEbeRWgbNEkqO\xff,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1")
            .is_err()
    );
}

#[test]
fn malformed_server_final() {
    use ScramError::*;
    let cases: &[(&[u8], Option<ScramError>)] = &[
        (b"", None),
        (b"v=", None),
        (b"v", None),
        (b"x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", None),
        (b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4", None),
        (b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,", None),
        (b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,x=1", None),
        (b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=\0", None),
        (b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=\xff", None),
        (b"v=AAAA", None),
        (b",v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", None),
        (
            b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            Some(ServerSignatureMismatch),
        ),
        (b"e=invalid-proof", Some(ServerError(String::new()))),
        (b"e=", Some(ServerError(String::new()))),
        (b"e=\xff\xfe,v=x", Some(ServerError(String::new()))),
    ];
    for (msg, expected) in cases {
        let mut client = client_after_first();
        client.on_server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
        let err = client.on_server_final(msg).unwrap_err();
        let m = String::from_utf8_lossy(msg);
        match expected {
            Some(ServerError(_)) => assert!(matches!(err, ServerError(_)), "{m}: {err:?}"),
            Some(e) => assert_eq!(&err, e, "{m}"),
            None => assert!(matches!(err, InvalidServerResponse { .. }), "{m}: {err:?}"),
        }
        assert!(!client.is_complete());
        assert_eq!(
            client.on_server_final(RFC_SERVER_FINAL.as_bytes()),
            Err(OutOfOrder)
        );
    }
}

#[test]
fn giant_server_error_is_bounded() {
    let mut client = client_after_first();
    client.on_server_first(RFC_SERVER_FIRST.as_bytes()).unwrap();
    let msg = [&b"e="[..], &[b'x'; 100_000]].concat();
    let ScramError::ServerError(e) = client.on_server_final(&msg).unwrap_err() else {
        panic!("expected ServerError");
    };
    assert_eq!(e.len(), 200);
}

#[test]
fn errors_display_and_kind() {
    let all = [
        ScramError::MalformedClientFirst { what: "x" },
        ScramError::MalformedClientFinal { what: "x" },
        ScramError::InvalidServerResponse { what: "x" },
        ScramError::UnsupportedMechanism,
        ScramError::UnsupportedChannelBindingType,
        ScramError::ChannelBindingNotSent,
        ScramError::UnexpectedChannelBinding,
        ScramError::ChannelBindingDowngrade,
        ScramError::ChannelBindingMismatch,
        ScramError::ChannelBindingRequired,
        ScramError::AuthzidUnsupported,
        ScramError::ExtensionUnsupported,
        ScramError::NonceMismatch,
        ScramError::InvalidProof,
        ScramError::ServerSignatureMismatch,
        ScramError::ServerError("boom".into()),
        ScramError::OutOfOrder,
    ];
    for e in &all {
        assert!(!e.to_string().is_empty());
        let _: &dyn std::error::Error = e;
    }
    let credentials = all
        .iter()
        .filter(|e| e.kind() == AuthFailureKind::InvalidCredentials)
        .count();
    assert_eq!(credentials, 6);
}
