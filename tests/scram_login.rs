//! pglink's backend login (`pglink::backend::login::Login`, sans-IO) driven over blocking
//! sockets against the real harness PostgreSQL, without the proxy: SSL negotiation, SCRAM-SHA-256
//! and SCRAM-SHA-256-PLUS (with PostgreSQL checking the channel binding), md5, cleartext,
//! trust and certificate roles.

mod support;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use pglink::auth::{OsRng, SaltedKeyCache, tls_server_end_point};
use pglink::backend::login::{Login, LoginError, LoginParams, LoginStep, TlsNegotiation};
use pglink::tls::{BackendTlsSource, Verify, backend_client_config};
use support::wire::{Conn, Transport};
use support::{
    CERT_USER, CLEAR_USER, MD5_USER, PgOptions, PgServer, SCRAM_USER, TEST_DATABASE, TLS_ONLY_USER,
    TRUST_USER, TestUser,
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// How to treat the channel binding once TLS is up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cb {
    /// The real `tls-server-end-point` hash of the server's certificate.
    Real,
    /// None: SCRAM-SHA-256 without binding.
    Withheld,
    /// 32 bytes that are not the hash.
    Wrong,
}

struct Setup {
    tls: TlsNegotiation,
    verify: Verify,
    cb: Cb,
    /// Present the harness client certificate.
    client_cert: bool,
    password: Option<String>,
    database: String,
    /// `sslrootcert` other than the harness CA.
    root_cert: Option<String>,
}

impl Setup {
    fn new(tls: TlsNegotiation) -> Setup {
        Setup {
            tls,
            verify: Verify::ChainAndName,
            cb: Cb::Real,
            client_cert: false,
            password: None,
            database: TEST_DATABASE.into(),
            root_cert: None,
        }
    }
}

/// A logged-in connection (usable for queries), or why the login failed.
struct Outcome {
    conn: Conn,
    login: Login,
    /// The server said 'S' to SSLRequest and the handshake ran.
    tls: bool,
}

/// Runs `login` until it needs TLS or is done, over `io`.
fn drive(
    io: &mut dyn Transport,
    login: &mut Login,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    keys: &mut SaltedKeyCache,
) -> Result<LoginStep, LoginError> {
    loop {
        if !out.is_empty() {
            io.write_all(out).expect("write to server");
            io.flush().expect("flush");
            out.clear();
        }
        let (n, step) = login.on_data(buf, out, &mut OsRng, keys)?;
        buf.drain(..n);
        if step != LoginStep::NeedMore {
            if !out.is_empty() {
                io.write_all(out).expect("write to server");
                io.flush().expect("flush");
                out.clear();
            }
            return Ok(step);
        }
        if n > 0 {
            continue;
        }
        let mut chunk = [0u8; 8192];
        let got = io
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("read from server: {e}"));
        assert!(got > 0, "server closed the connection during login");
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn tls_config(pg: &PgServer, setup: &Setup) -> Arc<rustls::ClientConfig> {
    let mut src = BackendTlsSource {
        root_cert: Some(
            setup
                .root_cert
                .clone()
                .unwrap_or_else(|| pg.ca_cert_path().to_str().unwrap().into()),
        ),
        ..BackendTlsSource::default()
    };
    if setup.client_cert {
        src.client_cert = Some(pg.client_cert_path());
        src.client_key = Some(pg.client_key_path());
    }
    backend_client_config(setup.verify, &src).expect("backend TLS config")
}

fn log_in(pg: &PgServer, user: &TestUser, setup: &Setup) -> Result<Outcome, LoginError> {
    let tcp = TcpStream::connect(pg.addr()).expect("connect");
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(TIMEOUT)).unwrap();
    let params = LoginParams {
        user: user.name.into(),
        password: setup
            .password
            .clone()
            .unwrap_or_else(|| user.password.unwrap_or("").into()),
        database: setup.database.clone(),
        startup_params: vec![("application_name".into(), "scram_login".into())],
        tls: setup.tls,
    };
    let mut out = Vec::new();
    let mut login = Login::start(params, &mut out);
    let mut keys = SaltedKeyCache::new(SaltedKeyCache::DEFAULT_CAPACITY);
    let mut buf = Vec::new();
    let mut io: Box<dyn Transport> = Box::new(tcp.try_clone().unwrap());
    let mut step = drive(io.as_mut(), &mut login, &mut out, &mut buf, &mut keys)?;
    let mut tls = false;
    if step == LoginStep::StartTls {
        assert!(buf.is_empty(), "bytes after 'S' must not be accepted");
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(tls_config(pg, setup), name).unwrap();
        let mut sock = tcp.try_clone().unwrap();
        while conn.is_handshaking() {
            if conn.complete_io(&mut sock).is_err() {
                return Err(LoginError::Protocol("TLS handshake failed"));
            }
        }
        let leaf = conn.peer_certificates().expect("server certificate")[0].to_vec();
        assert_eq!(leaf, pg.server_cert_der(), "the harness certificate");
        let cb = match setup.cb {
            Cb::Real => Some(tls_server_end_point(&leaf).expect("hash")),
            Cb::Withheld => None,
            Cb::Wrong => Some(vec![0x5a; 32]),
        };
        login.on_tls_established(cb, &mut out);
        io = Box::new(rustls::StreamOwned::new(conn, sock));
        tls = true;
        step = drive(io.as_mut(), &mut login, &mut out, &mut buf, &mut keys)?;
    }
    assert_eq!(step, LoginStep::Ready);
    Ok(Outcome {
        conn: Conn::from_stream(io, tcp, buf),
        login,
        tls,
    })
}

fn server_code(e: LoginError) -> (String, String) {
    match e {
        LoginError::Server(s) => (s.code.as_str().to_string(), s.message),
        other => panic!("expected a server error, got {other}"),
    }
}

/// Who we are and whether the session is encrypted, asked of the server itself.
fn whoami(o: &mut Outcome) -> String {
    let rows = o
        .conn
        .simple_query(
            "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .expect("query after login");
    rows[0][0].clone().unwrap()
}

fn assert_logged_in(o: &mut Outcome, user: &TestUser, tls: bool) {
    assert_eq!(o.tls, tls);
    let ssl = if tls { "true" } else { "false" };
    assert_eq!(whoami(o), format!("{} {ssl}", user.name));
    let params = &o.login.server_params;
    for name in [
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
    ] {
        assert!(params.iter().any(|(n, _)| n == name), "{name}: {params:?}");
    }
    assert!(
        params.contains(&("application_name".into(), "scram_login".into())),
        "startup parameters are sent: {params:?}"
    );
    let (pid, key) = o.login.cancel_key.clone().expect("BackendKeyData");
    assert!(pid > 0);
    assert_eq!(key.len(), 4);
}

#[test]
fn scram_without_tls() {
    let pg = PgServer::shared();
    let mark = pg.log_mark();
    let mut o = log_in(pg, &SCRAM_USER, &Setup::new(TlsNegotiation::Disable)).unwrap();
    assert_logged_in(&mut o, &SCRAM_USER, false);
    let log = pg.log_since(mark);
    assert!(
        log.contains("identity=\"pglink_scram\" method=scram-sha-256"),
        "{log}"
    );
}

#[test]
fn scram_plus_over_tls_and_postgresql_checks_the_binding() {
    let pg = PgServer::shared();
    for tls in [TlsNegotiation::Require, TlsNegotiation::Prefer] {
        let mut o = log_in(pg, &SCRAM_USER, &Setup::new(tls)).unwrap();
        assert_logged_in(&mut o, &SCRAM_USER, true);
    }
    // Deliberately wrong binding data: only SCRAM-SHA-256-PLUS carries it to the server,
    // and PostgreSQL refuses the exchange, so the PLUS path is what runs with TLS.
    let wrong = Setup {
        cb: Cb::Wrong,
        ..Setup::new(TlsNegotiation::Require)
    };
    let (code, message) = server_code(log_in(pg, &SCRAM_USER, &wrong).err().unwrap());
    // PostgreSQL 15 reports "SCRAM channel binding check failed" as 28000.
    assert!(
        ["08P01", "28P01", "28000"].contains(&code.as_str()),
        "{code}: {message}"
    );
    assert!(message.contains("channel binding"), "{message}");
    // Without binding data the login uses plain SCRAM-SHA-256 over TLS and works.
    let withheld = Setup {
        cb: Cb::Withheld,
        ..Setup::new(TlsNegotiation::Require)
    };
    let mut o = log_in(pg, &SCRAM_USER, &withheld).unwrap();
    assert_logged_in(&mut o, &SCRAM_USER, true);
}

#[test]
fn md5_cleartext_and_trust_with_and_without_tls() {
    let pg = PgServer::shared();
    let mark = pg.log_mark();
    for user in [MD5_USER, CLEAR_USER, TRUST_USER] {
        for tls in [TlsNegotiation::Disable, TlsNegotiation::Require] {
            let mut o = log_in(pg, &user, &Setup::new(tls)).unwrap();
            assert_logged_in(&mut o, &user, tls == TlsNegotiation::Require);
        }
    }
    let log = pg.log_since(mark);
    for line in [
        "identity=\"pglink_md5\" method=md5",
        "identity=\"pglink_clear\" method=password",
    ] {
        assert!(log.contains(line), "server log lacks {line}");
    }
}

#[test]
fn certificate_role_and_tls_only_role() {
    let pg = PgServer::shared();
    let with_cert = Setup {
        client_cert: true,
        ..Setup::new(TlsNegotiation::Require)
    };
    let mut o = log_in(pg, &CERT_USER, &with_cert).unwrap();
    assert_logged_in(&mut o, &CERT_USER, true);
    // Without the certificate the server refuses.
    let (code, message) = server_code(
        log_in(pg, &CERT_USER, &Setup::new(TlsNegotiation::Require))
            .err()
            .unwrap(),
    );
    assert_eq!(code, "28000", "{message}");

    let mut o = log_in(pg, &TLS_ONLY_USER, &Setup::new(TlsNegotiation::Prefer)).unwrap();
    assert_logged_in(&mut o, &TLS_ONLY_USER, true);
    let (code, message) = server_code(
        log_in(pg, &TLS_ONLY_USER, &Setup::new(TlsNegotiation::Disable))
            .err()
            .unwrap(),
    );
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("pg_hba.conf rejects connection"),
        "{message}"
    );
}

#[test]
fn wrong_password_and_unknown_database() {
    let pg = PgServer::shared();
    for user in [SCRAM_USER, MD5_USER, CLEAR_USER] {
        for tls in [TlsNegotiation::Disable, TlsNegotiation::Require] {
            let bad = Setup {
                password: Some("not the password".into()),
                ..Setup::new(tls)
            };
            let (code, message) = server_code(log_in(pg, &user, &bad).err().unwrap());
            assert_eq!(code, "28P01", "{}: {message}", user.name);
            assert!(
                message.contains("password authentication failed"),
                "{message}"
            );
        }
    }
    let no_db = Setup {
        database: "no_such_database".into(),
        ..Setup::new(TlsNegotiation::Disable)
    };
    let (code, message) = server_code(log_in(pg, &SCRAM_USER, &no_db).err().unwrap());
    assert_eq!(code, "3D000", "{message}");
}

#[test]
fn certificate_verification_uses_the_root_certificate() {
    let pg = PgServer::shared();
    let ca_only = Setup {
        verify: Verify::Chain,
        ..Setup::new(TlsNegotiation::Require)
    };
    let mut o = log_in(pg, &SCRAM_USER, &ca_only).unwrap();
    assert_logged_in(&mut o, &SCRAM_USER, true);
    // A CA that did not sign the server's certificate: no login, for every mode that
    // verifies (libpq's `require` with a root certificate verifies the chain too).
    let dir = support::workdir::Workdir::create(support::process::server_user(), "e2e");
    let foreign = support::TestCerts::generate("nobody");
    let path = dir.path().join("foreign-ca.crt");
    std::fs::write(&path, &foreign.ca_cert_pem).unwrap();
    for verify in [Verify::Nothing, Verify::Chain, Verify::ChainAndName] {
        let setup = Setup {
            verify,
            root_cert: Some(path.to_str().unwrap().into()),
            ..Setup::new(TlsNegotiation::Require)
        };
        match log_in(pg, &SCRAM_USER, &setup) {
            Err(LoginError::Protocol("TLS handshake failed")) => {}
            Err(e) => panic!("{verify:?}: expected a handshake failure, got {e}"),
            Ok(_) => panic!("{verify:?}: logged in with a foreign CA"),
        }
    }
}

#[test]
fn server_without_ssl_refuses_require_and_allows_prefer() {
    let pg = PgServer::start_with(PgOptions::default().without_ssl());
    match log_in(&pg, &SCRAM_USER, &Setup::new(TlsNegotiation::Require)) {
        Err(LoginError::TlsRefused) => {}
        Err(e) => panic!("expected TlsRefused, got {e}"),
        Ok(_) => panic!("sslmode=require logged in without TLS"),
    }
    let mut o = log_in(&pg, &SCRAM_USER, &Setup::new(TlsNegotiation::Prefer)).unwrap();
    assert_logged_in(&mut o, &SCRAM_USER, false);
}
