//! End to end: pglink's authentication and TLS, on both sides, against a real PostgreSQL with
//! real clients (psql/libpq 15) and a raw wire client for what psql cannot show (SQLSTATEs,
//! offered mechanisms, direct TLS, protocol 3.2).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use pglink::protocol::ProtocolVersion;
use support::process::server_user;
use support::wire::{Binding, Conn, LoginOptions, client_config_any_cert, client_config_trusting};
use support::workdir::Workdir;
use support::{
    CERT_USER, CLEAR_USER, MD5_USER, PgServer, Proxy, ProxyConfig, SCRAM_USER, TEST_DATABASE,
    TLS_ONLY_USER, TRUST_USER, TestCerts, TestUser, run_psql, run_psql_commands,
};

const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A private temporary directory (removed on drop).
fn tempdir() -> Workdir {
    Workdir::create(server_user(), "e2e")
}

fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn path_json(p: &Path) -> serde_json::Value {
    json!(p.to_str().unwrap())
}

/// `user` logs in through `proxy` with `extra` conninfo and runs `sql`.
fn via(proxy: &Proxy, user: &TestUser, extra: &str, sql: &str) -> Result<String, String> {
    run_psql(
        &proxy.dsn_with(user, extra),
        Some(Proxy::password(user)),
        sql,
    )
}

// ---- 1. client-side TLS modes --------------------------------------------------------------

#[test]
fn client_sslmode_matrix_with_psql() {
    let pg = PgServer::shared();
    for proxy_mode in ["disable", "allow", "prefer", "require"] {
        let proxy = ProxyConfig::new(pg)
            .user(&SCRAM_USER)
            .set("tls.sslmode", json!(proxy_mode))
            .start();
        for psql_mode in ["disable", "prefer", "require"] {
            let what = format!("pglink tls.sslmode={proxy_mode}, psql sslmode={psql_mode}");
            let got = run_psql_commands(
                &proxy.dsn_with(&SCRAM_USER, &format!("sslmode={psql_mode}")),
                SCRAM_USER.password,
                &["\\conninfo", "SELECT 'query ok'"],
            );
            // None: must fail; Some(tls): must work, over TLS or not.
            let expect_tls = match (proxy_mode, psql_mode) {
                ("disable", "require") => None,
                ("require", "disable") => None,
                ("disable", _) | (_, "disable") => Some(false),
                _ => Some(true),
            };
            match (expect_tls, got) {
                (Some(tls), Ok(out)) => {
                    assert!(out.ends_with("query ok"), "{what}: {out}");
                    assert_eq!(out.contains("SSL connection"), tls, "{what}: {out}");
                }
                (None, Err(e)) if proxy_mode == "disable" => {
                    assert!(e.contains("server does not support SSL"), "{what}: {e}")
                }
                (None, Err(e)) => assert!(
                    e.contains("pglink: this server accepts only TLS connections"),
                    "{what}: {e}"
                ),
                (expected, got) => panic!("{what}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}

#[test]
fn client_sslmode_answers_on_the_wire() {
    let pg = PgServer::shared();
    // disable: SSLRequest is answered 'N' and the session continues in plaintext.
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("tls.sslmode", json!("disable"))
        .start();
    let err = Conn::tls(proxy.addr, client_config_any_cert(true), "localhost")
        .err()
        .expect("TLS must be refused");
    assert!(err.contains("'N'"), "{err}");
    // require: a plaintext StartupMessage gets FATAL 28000.
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("tls.sslmode", json!("require"))
        .start();
    let mut c = Conn::plain(proxy.addr);
    let e = c
        .login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap_err()
        .server_error();
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("FATAL", "28000"),
        "{e}"
    );
    assert!(c.read_until_closed(support::wire::IO_TIMEOUT).closed);
    // ... and over TLS it works.
    let mut c = Conn::tls(proxy.addr, client_config_any_cert(true), "localhost").unwrap();
    c.login(
        SCRAM_USER.name,
        TEST_DATABASE,
        "scram_pw",
        &LoginOptions::default(),
    )
    .unwrap();
    assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
}

// ---- 2. backend TLS modes ------------------------------------------------------------------

#[test]
fn backend_sslmodes_connect_and_really_use_tls() {
    let pg = PgServer::shared();
    let ca = pg.ca_cert_path();
    for (mode, tls) in [
        ("disable", "f"),
        ("allow", "f"),
        ("prefer", "t"),
        ("require", "t"),
        ("verify-ca", "t"),
        ("verify-full", "t"),
    ] {
        let mut config = ProxyConfig::new(pg)
            .user(&SCRAM_USER)
            .backend("sslmode", json!(mode));
        if mode.starts_with("verify") {
            config = config.backend("sslrootcert", path_json(&ca));
        }
        if mode == "verify-full" {
            // The name pglink checks (and sends as SNI); the certificate names localhost.
            config = config.backend("host", json!("localhost"));
        }
        let proxy = config.start();
        assert_eq!(
            via(&proxy, &SCRAM_USER, "", SSL_IN_USE),
            Ok(tls.to_string()),
            "backend sslmode={mode}"
        );
    }
}

/// A stand-in server that answers SSLRequest with 'S' and completes a TLS handshake with
/// `cert` (signed by the harness CA), recording the SNI each client sent; it never gets as
/// far as PostgreSQL's startup.
fn fake_tls_server(
    cert: support::certs::LeafCert,
) -> (u16, std::sync::mpsc::Receiver<Option<String>>) {
    use rustls::pki_types::pem::PemObject as _;
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let chain = vec![rustls::pki_types::CertificateDer::from(
        cert.cert_der.clone(),
    )];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let config = std::sync::Arc::new(config);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut sock) = conn else { return };
            let mut request = [0u8; 8];
            if sock.read_exact(&mut request).is_err() || sock.write_all(b"S").is_err() {
                continue;
            }
            let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
            while tls.is_handshaking() {
                if tls.complete_io(&mut sock).is_err() {
                    break;
                }
            }
            if tx.send(tls.server_name().map(str::to_owned)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn verify_full_checks_the_host_name_and_sends_it_as_sni() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let ca = write(dir.path(), "ca.crt", &pg.certs().ca_cert_pem, 0o644);
    // Signed by the CA pglink trusts, but for another name than the one it connects to.
    let (port, sni) = fake_tls_server(pg.certs().issue_server(&["elsewhere.invalid"]));
    for (mode, name_error) in [("verify-full", true), ("verify-ca", false)] {
        let proxy = ProxyConfig::new(pg)
            .user(&SCRAM_USER)
            .backend("host", json!("localhost"))
            .backend("port", json!(port))
            .backend("sslmode", json!(mode))
            .backend("sslrootcert", path_json(&ca))
            .backend("connect_timeout", json!("2s"))
            .start();
        let mut c = Conn::plain(proxy.addr);
        let e = c
            .login(
                SCRAM_USER.name,
                TEST_DATABASE,
                "scram_pw",
                &LoginOptions::default(),
            )
            .unwrap_err()
            .server_error();
        // verify-ca accepts the certificate (and then the stand-in server goes silent).
        assert_eq!(e.code, "08006", "{mode}: {e}");
        assert_eq!(e.message.contains("certificate"), name_error, "{mode}: {e}");
        assert_eq!(
            sni.recv_timeout(std::time::Duration::from_secs(5))
                .unwrap()
                .as_deref(),
            Some("localhost"),
            "{mode}: SNI"
        );
    }
}

/// Bug reason shared by the tests that see a failed backend login hidden behind a pool timeout.
const RETRY_STORM: &str = "pglink bug: a failed backend login is retried at once in a loop; \
                           waiters get 53300 pool timeout instead of the cause";

#[test]
fn backend_certificate_from_a_foreign_ca_is_refused_with_08006() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let foreign = TestCerts::generate("nobody");
    let foreign_ca = write(dir.path(), "foreign-ca.crt", &foreign.ca_cert_pem, 0o644);
    for mode in ["verify-ca", "verify-full", "require"] {
        // libpq: `require` with a root certificate verifies the chain like verify-ca.
        let proxy = ProxyConfig::new(pg)
            .user(&SCRAM_USER)
            .backend("sslmode", json!(mode))
            .backend("sslrootcert", path_json(&foreign_ca))
            .start();
        let err = via(&proxy, &SCRAM_USER, "", "SELECT 1").unwrap_err();
        assert!(err.contains("certificate"), "{mode}: {err}");
        let mut c = Conn::plain(proxy.addr);
        let e = c
            .login(
                SCRAM_USER.name,
                TEST_DATABASE,
                "scram_pw",
                &LoginOptions::default(),
            )
            .unwrap_err()
            .server_error();
        assert_eq!(e.code, "08006", "{mode}: {e}");
        assert!(e.message.contains("certificate"), "{mode}: {e}");
    }
}

#[test]
fn backend_certificate_from_a_foreign_ca_fails_the_login_without_hanging() {
    // The part of the test above that holds today: the login fails in bounded time.
    let pg = PgServer::shared();
    let dir = tempdir();
    let foreign = TestCerts::generate("nobody");
    let foreign_ca = write(dir.path(), "foreign-ca.crt", &foreign.ca_cert_pem, 0o644);
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("sslmode", json!("verify-ca"))
        .backend("sslrootcert", path_json(&foreign_ca))
        .start();
    let e = Conn::plain(proxy.addr)
        .login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap_err()
        .server_error();
    assert_eq!(e.severity, "FATAL", "{e}");
}

/// `sslrootcert: "system"` means the platform's trust store, which does not hold the
/// harness CA that signed the test server's certificate: the login fails with 08006 naming
/// the certificate problem. (Were the harness CA used, as with `sslrootcert: <ca file>`,
/// the same configuration would log in: `backend_sslmodes_connect_and_really_use_tls`.)
#[test]
fn sslrootcert_system_does_not_trust_the_harness_ca() {
    let pg = PgServer::shared();
    // With sslmode written out, and left to its libpq default (verify-full with "system").
    for sslmode in [Some("verify-full"), None] {
        let mut config = ProxyConfig::new(pg)
            .user(&SCRAM_USER)
            .backend("host", json!("localhost"))
            .backend("sslrootcert", json!("system"));
        config = match sslmode {
            Some(mode) => config.backend("sslmode", json!(mode)),
            None => {
                let backend = &mut config.json_mut()["databases"][TEST_DATABASE]["backend"];
                backend.as_object_mut().unwrap().remove("sslmode");
                config
            }
        };
        let proxy = config.start();
        let e = Conn::plain(proxy.addr)
            .login(
                SCRAM_USER.name,
                TEST_DATABASE,
                "scram_pw",
                &LoginOptions::default(),
            )
            .unwrap_err()
            .server_error();
        assert_eq!(e.code, "08006", "{sslmode:?}: {e}");
        assert!(
            e.message.contains("certificate") && e.message.contains("UnknownIssuer"),
            "{sslmode:?}: {e}"
        );
        // libpq's client sees the same.
        let err = via(&proxy, &SCRAM_USER, "", "SELECT 1").unwrap_err();
        assert!(err.contains("certificate"), "{sslmode:?}: {err}");
    }
}

/// `SSL_CERT_FILE` and `SSL_CERT_DIR` change what "system" trusts, as they do for OpenSSL
/// and so for libpq. Set only on a child pglink: tests share this process's environment.
#[test]
fn sslrootcert_system_honours_ssl_cert_file_and_ssl_cert_dir() {
    let pg = PgServer::shared();
    let dir = tempdir();
    // An OpenSSL hashed directory holding the harness CA (`openssl rehash` names).
    let certs = dir.path().join("certs");
    fs::create_dir(&certs).unwrap();
    let hash = Command::new("openssl")
        .args(["x509", "-noout", "-subject_hash", "-in"])
        .arg(pg.ca_cert_path())
        .output()
        .expect("the openssl command line tool is needed");
    assert!(hash.status.success());
    let hash = String::from_utf8(hash.stdout).unwrap();
    write(
        &certs,
        &format!("{}.0", hash.trim()),
        &pg.certs().ca_cert_pem,
        0o644,
    );
    let config = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .backend("host", json!("localhost"))
        .backend("sslmode", json!("verify-full"))
        .backend("sslrootcert", json!("system"));
    let ca = pg.ca_cert_path();
    let certs_dir = certs.to_str().unwrap();
    for (name, env) in [
        ("sysroot-file", [("SSL_CERT_FILE", ca.to_str().unwrap())]),
        ("sysroot-dir", [("SSL_CERT_DIR", certs_dir)]),
    ] {
        let proxy = support::proxy::ChildProxy::start_with_env(&config, name, &env);
        let dsn = format!(
            "host=127.0.0.1 port={} user={} dbname={TEST_DATABASE} sslmode=disable",
            proxy.addr.port(),
            SCRAM_USER.name
        );
        assert_eq!(
            run_psql(&dsn, SCRAM_USER.password, SSL_IN_USE),
            Ok("t".to_string()),
            "{name}: the harness CA is trusted through {env:?}"
        );
    }
}

#[test]
fn tls_only_role_works_with_allow() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&TLS_ONLY_USER)
        .backend("sslmode", json!("allow"))
        .start();
    // allow: plaintext first (refused by pg_hba.conf), then again with TLS.
    let mark = pg.log_mark();
    assert_eq!(via(&proxy, &TLS_ONLY_USER, "", SSL_IN_USE), Ok("t".into()));
    let log = pg.log_since(mark);
    assert!(log.contains("pg_hba.conf rejects connection"), "{log}");
}

#[test]
fn tls_only_role_fails_with_disable_naming_the_cause() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&TLS_ONLY_USER)
        .backend("sslmode", json!("disable"))
        .start();
    let err = via(&proxy, &TLS_ONLY_USER, "", "SELECT 1").unwrap_err();
    assert!(err.contains("pg_hba.conf rejects connection"), "{err}");
    let mut c = Conn::plain(proxy.addr);
    let e = c
        .login(
            TLS_ONLY_USER.name,
            TEST_DATABASE,
            "tls_pw",
            &LoginOptions::default(),
        )
        .unwrap_err()
        .server_error();
    assert_eq!(e.code, "28000", "{e}");
}

#[test]
fn a_refused_backend_login_is_not_retried_in_a_tight_loop() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg)
        .user(&TLS_ONLY_USER)
        .backend("sslmode", json!("disable"))
        .start();
    let mark = pg.log_mark();
    let _ = Conn::plain(proxy.addr).login(
        TLS_ONLY_USER.name,
        TEST_DATABASE,
        "tls_pw",
        &LoginOptions::default(),
    );
    drop(proxy);
    let attempts = pg
        .log_since(mark)
        .matches("pg_hba.conf rejects connection")
        .count();
    // One client logging in once: one attempt (libpq makes one; a few retries would be fine).
    assert!(
        attempts <= 3,
        "{attempts} backend login attempts for one client login ({RETRY_STORM})"
    );
}

#[test]
fn unreachable_backend_gives_08006_with_the_cause() {
    // A PostgreSQL of our own, stopped after the first login taught pglink its parameters.
    let pg = PgServer::start();
    let proxy = ProxyConfig::new(&pg).user(&SCRAM_USER).start();
    let mut c = Conn::plain(proxy.addr);
    c.login(
        SCRAM_USER.name,
        TEST_DATABASE,
        "scram_pw",
        &LoginOptions::default(),
    )
    .unwrap();
    assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
    pg.stop();
    // The idle backend is gone with the server; the next query needs a new one.
    let mut failures = Vec::new();
    for _ in 0..2 {
        match c.simple_query("SELECT 1") {
            Err(support::wire::Failure::Server(e)) => failures.push(e),
            other => panic!("query with the server down: {other:?}"),
        }
    }
    // ERROR, not FATAL: the session stays usable; SQLSTATE 08006 and the cause.
    for e in &failures {
        assert_eq!(
            (e.severity.as_str(), e.code.as_str()),
            ("ERROR", "08006"),
            "{e}"
        );
        assert!(e.message.contains("refused"), "{e}");
    }
}

// ---- 3. backend client certificates --------------------------------------------------------

fn cert_proxy(pg: &PgServer, key: &Path, password: Option<&str>) -> ProxyConfig {
    let mut config = ProxyConfig::new(pg)
        .user(&CERT_USER)
        .backend("sslmode", json!("verify-full"))
        .backend("host", json!("localhost"))
        .backend("sslrootcert", path_json(&pg.ca_cert_path()))
        .backend("sslcert", path_json(&pg.client_cert_path()))
        .backend("sslkey", path_json(key));
    if let Some(pw) = password {
        config = config.backend("sslpassword", json!(pw));
    }
    config
}

fn encrypt_key(plain: &Path, out: &Path, password: &str) {
    let status = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout"])
        .arg(format!("pass:{password}"))
        .arg("-in")
        .arg(plain)
        .arg("-out")
        .arg(out)
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl pkcs8 failed");
    fs::set_permissions(out, fs::Permissions::from_mode(0o600)).unwrap();
    let pem = fs::read_to_string(out).unwrap();
    assert!(pem.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{pem}");
}

#[test]
fn backend_client_certificate_plain_and_encrypted_key() {
    let pg = PgServer::shared();
    let proxy = cert_proxy(pg, &pg.client_key_path(), None).start();
    assert_eq!(
        via(&proxy, &CERT_USER, "", "SELECT current_user"),
        Ok(CERT_USER.name.into())
    );
    drop(proxy);

    let dir = tempdir();
    let encrypted = dir.path().join("client-enc.key");
    encrypt_key(&pg.client_key_path(), &encrypted, "pw");
    let proxy = cert_proxy(pg, &encrypted, Some("pw")).start();
    assert_eq!(
        via(&proxy, &CERT_USER, "", "SELECT current_user"),
        Ok(CERT_USER.name.into())
    );
    drop(proxy);

    let err = match cert_proxy(pg, &encrypted, Some("not-pw")).try_start() {
        Ok(_) => panic!("pglink started with a wrong sslpassword"),
        Err(e) => e,
    };
    assert!(err.contains(encrypted.to_str().unwrap()), "{err}");
    assert!(err.contains("sslpassword"), "{err}");
    let err = match cert_proxy(pg, &encrypted, None).try_start() {
        Ok(_) => panic!("pglink started without the sslpassword of an encrypted key"),
        Err(e) => e,
    };
    assert!(err.contains(encrypted.to_str().unwrap()), "{err}");
}

// ---- 4. client auth methods × backend auth methods -----------------------------------------

const BACKEND_ROLES: [TestUser; 4] = [SCRAM_USER, MD5_USER, CLEAR_USER, TRUST_USER];

fn auth_proxy(pg: &PgServer, method: &str) -> Proxy {
    let mut config = ProxyConfig::new(pg).set("auth_method", json!(method));
    for user in &BACKEND_ROLES {
        config = config.user(user);
    }
    config.start()
}

#[test]
fn every_client_method_logs_in_to_every_backend_method() {
    let pg = PgServer::shared();
    for method in ["scram-sha-256", "md5_password", "plaintext"] {
        let proxy = auth_proxy(pg, method);
        let ssl = if method == "plaintext" {
            "sslmode=require"
        } else {
            "sslmode=disable"
        };
        for user in &BACKEND_ROLES {
            assert_eq!(
                via(&proxy, user, ssl, "SELECT current_user"),
                Ok(user.name.to_string()),
                "auth_method {method}, backend role {}",
                user.name
            );
        }
    }
    // The backend logins really used each role's method.
    let log = pg.log_contents();
    for (user, method) in [
        (SCRAM_USER, "scram-sha-256"),
        (MD5_USER, "md5"),
        (CLEAR_USER, "password"),
    ] {
        let line = format!("identity=\"{}\" method={method}", user.name);
        assert!(log.contains(&line), "server log lacks {line}");
    }
}

#[test]
fn login_failures_look_alike_with_the_right_sqlstate() {
    let pg = PgServer::shared();
    for method in ["scram-sha-256", "md5_password", "plaintext"] {
        let proxy = auth_proxy(pg, method);
        let ssl = if method == "plaintext" {
            "sslmode=require"
        } else {
            "sslmode=disable"
        };
        // psql: wrong password and unknown user give the same message.
        let bad = run_psql(&proxy.dsn_with(&SCRAM_USER, ssl), Some("wrong"), "SELECT 1");
        let bad = bad.unwrap_err();
        assert!(
            bad.contains("password authentication failed for user \"pglink_scram\""),
            "{method}: {bad}"
        );
        let ghost = TestUser {
            name: "pglink_ghost",
            ..SCRAM_USER
        };
        let unknown = run_psql(&proxy.dsn_with(&ghost, ssl), Some("scram_pw"), "SELECT 1");
        let unknown = unknown.unwrap_err();
        assert_eq!(
            unknown.replace("pglink_ghost", "pglink_scram"),
            bad,
            "{method}: unknown user and wrong password must look alike"
        );
        // Raw client: the SQLSTATEs.
        let connect = || match method {
            "plaintext" => Conn::tls(proxy.addr, client_config_any_cert(true), "localhost")
                .expect("TLS to pglink"),
            _ => Conn::plain(proxy.addr),
        };
        let o = LoginOptions::default();
        for (user, db, pw, code) in [
            (SCRAM_USER.name, TEST_DATABASE, "wrong", "28P01"),
            ("pglink_ghost", TEST_DATABASE, "scram_pw", "28P01"),
            (SCRAM_USER.name, "no_such_db", "scram_pw", "3D000"),
        ] {
            let e = connect()
                .login(user, db, pw, &o)
                .unwrap_err()
                .server_error();
            assert_eq!(
                (e.severity.as_str(), e.code.as_str()),
                ("FATAL", code),
                "{method} {user}@{db}: {e}"
            );
        }
        let e = connect()
            .login(SCRAM_USER.name, "no_such_db", "scram_pw", &o)
            .unwrap_err()
            .server_error();
        assert!(e.message.contains("\"no_such_db\" does not exist"), "{e}");
    }
}

/// A whole run's log output, at the most verbose level and as JSON lines, holds no password:
/// neither those clients sent in failed logins (distinctive ones, with every method, plaintext
/// included, where pglink receives them as they are) nor the configured ones; and no SQL text
/// below `trace`. Connection lines carry the client's address, database, user and connection
/// id, server connection lines the backend's pid.
/// A query whose text must not appear in logs below trace level.
const SQL_MARKER: &str = "Zq7-sql-Heron";

#[test]
fn no_password_appears_in_the_log_output() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let wrong = ["Zq7-wrong-Kestrel", "Zq7-ghost-Marmot", "Zq7-nodb-Ocelot"];
    for method in ["plaintext", "md5_password", "scram-sha-256"] {
        let mut config = ProxyConfig::new(pg).set("auth_method", json!(method));
        for user in &BACKEND_ROLES {
            config = config.user(user);
        }
        let log = dir.path().join(format!("{method}.log"));
        let file = fs::File::create(&log).unwrap();
        let mut proxy =
            support::proxy::ChildProxy::start_with(&config, &format!("nolog-{method}"), |cmd| {
                cmd.arg("-json").env("PGLINK_LOG", "trace").stderr(file);
            });
        let connect = || match method {
            "plaintext" => Conn::tls(proxy.addr, client_config_any_cert(true), "localhost")
                .expect("TLS to pglink"),
            _ => Conn::plain(proxy.addr),
        };
        let o = LoginOptions::default();
        for (user, db, pw) in [
            (SCRAM_USER.name, TEST_DATABASE, wrong[0]),
            ("pglink_ghost", TEST_DATABASE, wrong[1]),
            (SCRAM_USER.name, "no_such_db", wrong[2]),
        ] {
            let e = connect()
                .login(user, db, pw, &o)
                .unwrap_err()
                .server_error();
            assert_eq!(e.severity, "FATAL", "{method} {user}@{db}: {e}");
        }
        // And logins that work, so that the log has them too.
        for user in [SCRAM_USER, CLEAR_USER] {
            let mut c = connect();
            c.login(user.name, TEST_DATABASE, user.password.unwrap(), &o)
                .unwrap_or_else(|e| panic!("{method} {}: {e:?}", user.name));
            assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
            assert_eq!(
                c.query_value(&format!("SELECT '{SQL_MARKER}'"))
                    .unwrap()
                    .as_deref(),
                Some(SQL_MARKER)
            );
        }
        let status = Command::new("kill")
            .args(["-TERM", &proxy.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(
            proxy
                .wait_exit(std::time::Duration::from_secs(20))
                .is_some(),
            "{method}: pglink did not stop"
        );
        let text = fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 3, "{method}: hardly any log output: {text}");
        let records: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{method}: not a JSON line ({e}): {line}"))
            })
            .collect();
        for (line, record) in lines.iter().zip(&records) {
            assert!(
                record["level"] == "trace" || !line.contains(SQL_MARKER),
                "{method}: SQL text below trace level: {line}"
            );
        }
        let logged_in = records
            .iter()
            .find(|r| r["msg"] == "client logged in" && r["user"] == SCRAM_USER.name)
            .unwrap_or_else(|| panic!("{method}: no login line: {text}"));
        assert_eq!(logged_in["database"], TEST_DATABASE, "{logged_in}");
        assert!(logged_in["conn"].as_u64().is_some(), "{logged_in}");
        assert!(
            logged_in["client"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{logged_in}"
        );
        assert!(
            records.iter().any(|r| r["backend_pid"].as_u64().is_some()),
            "{method}: no server connection line names its backend pid: {text}"
        );
        assert!(
            text.contains("pglink_ghost") || text.contains("logged in"),
            "{method}: the log says nothing about the logins, so the test proves nothing: {text}"
        );
        let configured = BACKEND_ROLES.iter().filter_map(|u| u.password);
        for secret in wrong.iter().copied().chain(configured) {
            assert!(
                !text.contains(secret),
                "{method}: password {secret:?} in the log output:\n{text}"
            );
        }
    }
}

#[test]
fn plaintext_auth_needs_tls() {
    let pg = PgServer::shared();
    let proxy = auth_proxy(pg, "plaintext");
    let err = via(&proxy, &SCRAM_USER, "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(err.contains("requires a TLS connection"), "{err}");
    let e = Conn::plain(proxy.addr)
        .login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap_err()
        .server_error();
    assert_eq!(e.code, "28000", "{e}");
    assert_eq!(
        via(&proxy, &SCRAM_USER, "sslmode=require", "SELECT 1"),
        Ok("1".into())
    );
    let mut c = Conn::tls(proxy.addr, client_config_any_cert(true), "localhost").unwrap();
    let info = c
        .login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap();
    assert_eq!(info.method, "password");
}

// ---- 5. SCRAM-SHA-256-PLUS -----------------------------------------------------------------

#[test]
fn scram_plus_with_libpq_channel_binding() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    assert_eq!(
        via(
            &proxy,
            &SCRAM_USER,
            "sslmode=require channel_binding=require",
            "SELECT 1"
        ),
        Ok("1".into())
    );
    let err = via(
        &proxy,
        &SCRAM_USER,
        "sslmode=disable channel_binding=require",
        "SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("channel binding"), "{err}");
}

#[test]
fn scram_plus_is_offered_only_over_tls_and_the_binding_is_checked() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    let o = LoginOptions::default();
    let tls = || Conn::tls(proxy.addr, client_config_any_cert(true), "localhost").unwrap();

    let info = Conn::plain(proxy.addr)
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &o)
        .unwrap();
    assert_eq!(info.offered, ["SCRAM-SHA-256"]);
    assert_eq!(info.method, "SCRAM-SHA-256");

    let info = tls()
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &o)
        .unwrap();
    assert_eq!(info.offered, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    assert_eq!(info.method, "SCRAM-SHA-256-PLUS");

    // Wrong binding data: pglink must notice.
    let mut c = tls();
    let wrong = LoginOptions {
        binding: Binding::Wrong(vec![0x42; 32]),
        ..LoginOptions::default()
    };
    let e = c
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &wrong)
        .unwrap_err()
        .server_error();
    assert!(matches!(e.code.as_str(), "28P01" | "08P01"), "{e}");

    // gs2 flag 'y' while PLUS was offered: a downgrade, which must be refused.
    let downgrade = LoginOptions {
        binding: Binding::ClaimNotOffered,
        ..LoginOptions::default()
    };
    let e = tls()
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &downgrade)
        .unwrap_err()
        .server_error();
    assert!(matches!(e.code.as_str(), "28P01" | "08P01"), "{e}");

    // Over plaintext, a client that claims PLUS must be refused too.
    let e = Conn::plain(proxy.addr)
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &wrong)
        .unwrap_err()
        .server_error();
    assert!(matches!(e.code.as_str(), "28P01" | "08P01"), "{e}");

    // Without binding over TLS ('n') is allowed.
    let plain_scram = LoginOptions {
        binding: Binding::Disable,
        ..LoginOptions::default()
    };
    let info = tls()
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &plain_scram)
        .unwrap();
    assert_eq!(info.method, "SCRAM-SHA-256");
}

/// pglink serving a certificate for `localhost` issued by the harness CA.
fn proxy_with_cert_files(pg: &PgServer, dir: &Path) -> Proxy {
    let leaf = pg.certs().issue_server(&["localhost"]);
    let cert = write(dir, "pglink.crt", &leaf.cert_pem, 0o644);
    let key = write(dir, "pglink.key", &leaf.key_pem, 0o600);
    ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set(
            "tls",
            json!({
                "sslmode": "require",
                "cert_path": cert.to_str().unwrap(),
                "cert_private_key_path": key.to_str().unwrap(),
            }),
        )
        .start()
}

#[test]
fn verify_full_against_configured_certificate_files() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let proxy = proxy_with_cert_files(pg, dir.path());
    let ca = pg.ca_cert_path();
    let dsn = format!(
        "host=localhost port={} user={} dbname={TEST_DATABASE} sslmode=verify-full \
         sslrootcert={} channel_binding=require",
        proxy.port(),
        SCRAM_USER.name,
        ca.display()
    );
    assert_eq!(
        run_psql(&dsn, SCRAM_USER.password, "SELECT 1"),
        Ok("1".into())
    );
    // The name is checked: 127.0.0.1 is not in this certificate.
    let wrong_name = dsn.replace("host=localhost", "host=127.0.0.1");
    let err = run_psql(&wrong_name, SCRAM_USER.password, "SELECT 1").unwrap_err();
    assert!(err.contains("does not match host name"), "{err}");
    // And the chain: a CA that did not issue it.
    let foreign = TestCerts::generate("nobody");
    let foreign_ca = write(dir.path(), "foreign-ca.crt", &foreign.ca_cert_pem, 0o644);
    let err = run_psql(
        &dsn.replace(ca.to_str().unwrap(), foreign_ca.to_str().unwrap()),
        SCRAM_USER.password,
        "SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
}

// ---- 6. direct TLS -------------------------------------------------------------------------

#[test]
fn direct_tls_with_alpn_logs_in_and_without_is_refused() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let proxy = proxy_with_cert_files(pg, dir.path());
    let ca = &pg.certs().ca_cert_der;

    let mut c = Conn::direct_tls(proxy.addr, client_config_trusting(ca, true), "localhost")
        .expect("direct TLS handshake");
    assert_eq!(c.alpn.as_deref(), Some(&b"postgresql"[..]));
    let info = c
        .login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap();
    assert_eq!(info.method, "SCRAM-SHA-256-PLUS");
    assert_eq!(*info.tags.last().unwrap(), b'Z');
    assert_eq!(
        c.query_value("SELECT 40 + 2").unwrap().as_deref(),
        Some("42")
    );

    // No ALPN: the handshake may complete, but the session must be refused.
    match Conn::direct_tls(proxy.addr, client_config_trusting(ca, false), "localhost") {
        Err(_) => {}
        Ok(mut c) => {
            assert_eq!(c.alpn, None);
            c.send_startup(SCRAM_USER.name, TEST_DATABASE, &LoginOptions::default());
            let ending = c.read_until_closed(support::wire::IO_TIMEOUT);
            assert!(ending.closed, "{ending:?}");
            assert!(
                ending.other.is_empty(),
                "no authentication request: {ending:?}"
            );
            assert_eq!(ending.errors.len(), 1, "{ending:?}");
            assert_eq!(ending.errors[0].code, "08P01", "{ending:?}");
        }
    }
}

// ---- 7. protocol versions ------------------------------------------------------------------

fn login_with_version(proxy: &Proxy, version: ProtocolVersion) -> support::wire::LoginInfo {
    let mut c = Conn::plain(proxy.addr);
    let options = LoginOptions {
        version,
        ..LoginOptions::default()
    };
    let info = c
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &options)
        .unwrap_or_else(|e| panic!("login with {version:?}: {e:?}"));
    assert_eq!(c.query_value("SELECT 1").unwrap().as_deref(), Some("1"));
    info
}

#[test]
fn protocol_3_2_gets_long_cancel_keys_and_newer_minors_are_negotiated() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();

    let v30 = login_with_version(&proxy, ProtocolVersion::V3_0);
    assert_eq!(v30.negotiated_minor, None);
    assert_eq!(v30.key.as_ref().map(|k| k.1.len()), Some(4));

    let v32 = login_with_version(&proxy, ProtocolVersion::V3_2);
    assert_eq!(v32.negotiated_minor, None);
    assert_eq!(v32.key.as_ref().map(|k| k.1.len()), Some(32));

    let v35 = login_with_version(&proxy, ProtocolVersion { major: 3, minor: 5 });
    assert_eq!(v35.tags[0], b'v', "NegotiateProtocolVersion comes first");
    assert_eq!(v35.negotiated_minor, Some(2));
    assert_eq!(v35.key.as_ref().map(|k| k.1.len()), Some(32));

    // An unknown protocol option is reported back, the login goes on.
    let mut c = Conn::plain(proxy.addr);
    let options = LoginOptions {
        params: vec![("_pq_.pglink_test".into(), "1".into())],
        ..LoginOptions::default()
    };
    let info = c
        .login(SCRAM_USER.name, TEST_DATABASE, "scram_pw", &options)
        .unwrap();
    assert_eq!(info.tags[0], b'v');
    assert_eq!(info.negotiated_minor, Some(0));

    // Major versions other than 3 are refused.
    for version in [
        ProtocolVersion { major: 2, minor: 0 },
        ProtocolVersion { major: 4, minor: 0 },
    ] {
        let e = Conn::plain(proxy.addr)
            .login(
                SCRAM_USER.name,
                TEST_DATABASE,
                "scram_pw",
                &LoginOptions {
                    version,
                    ..LoginOptions::default()
                },
            )
            .unwrap_err()
            .server_error();
        assert_eq!(e.severity, "FATAL", "{version:?}: {e}");
        assert_eq!(e.code, "0A000", "{version:?}: {e}");
    }
}

// ---- certificates of every kind for the client side ----------------------------------------

/// A self-signed certificate for localhost made by the openssl tool; returns (cert, key).
fn openssl_self_signed(dir: &Path, name: &str, key_args: &[&str]) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(key_args)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req {key_args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}

fn proxy_with_files(pg: &PgServer, cert: &Path, key: &Path) -> Proxy {
    ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set(
            "tls",
            json!({
                "sslmode": "require",
                "cert_path": cert.to_str().unwrap(),
                "cert_private_key_path": key.to_str().unwrap(),
            }),
        )
        .start()
}

/// `tls-server-end-point` hashes the certificate with its signature's hash (SHA-256 at least):
/// libpq computes it with OpenSSL, pglink with its own code; they must agree.
#[test]
fn channel_binding_agrees_with_libpq_for_rsa_and_ecdsa_certificates() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let kinds: [(&str, &[&str]); 4] = [
        ("rsa-sha256", &["-newkey", "rsa:2048", "-sha256"]),
        ("rsa-sha512", &["-newkey", "rsa:2048", "-sha512"]),
        (
            "p384-sha384",
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-sha384",
            ],
        ),
        (
            "p256-sha1",
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-sha1",
            ],
        ),
    ];
    for (name, args) in kinds {
        let (cert, key) = openssl_self_signed(dir.path(), name, args);
        let proxy = proxy_with_files(pg, &cert, &key);
        let dsn = format!(
            "host=localhost port={} user={} dbname={TEST_DATABASE} sslmode=verify-full \
             sslrootcert={} channel_binding=require",
            proxy.port(),
            SCRAM_USER.name,
            cert.display()
        );
        // SHA-1 signatures are refused by TLS 1.3 stacks; skip what OpenSSL itself refuses.
        match run_psql(&dsn, SCRAM_USER.password, "SELECT 1") {
            Ok(out) => assert_eq!(out, "1", "{name}"),
            Err(e) if name == "p256-sha1" && !e.contains("SCRAM") => {
                println!("{name}: not usable with this OpenSSL: {e}")
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

/// Ed25519 has no hash for `tls-server-end-point`: pglink must not offer PLUS, and logins with
/// libpq's default `channel_binding=prefer` must work.
#[test]
fn ed25519_certificate_logs_in_without_channel_binding() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let (cert, key) = openssl_self_signed(dir.path(), "ed25519", &["-newkey", "ed25519"]);
    let proxy = proxy_with_files(pg, &cert, &key);
    assert_eq!(
        via(&proxy, &SCRAM_USER, "sslmode=require", "SELECT 1"),
        Ok("1".into())
    );
    let err = via(
        &proxy,
        &SCRAM_USER,
        "sslmode=require channel_binding=require",
        "SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("channel binding"), "{err}");
    let mut c = Conn::tls(proxy.addr, client_config_any_cert(true), "localhost").unwrap();
    let info = c
        .login(
            SCRAM_USER.name,
            TEST_DATABASE,
            "scram_pw",
            &LoginOptions::default(),
        )
        .unwrap();
    assert_eq!(info.offered, ["SCRAM-SHA-256"]);
}

#[test]
fn generated_certificate_is_written_once_and_verifiable() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let cert = dir.path().join("gen.crt");
    let key = dir.path().join("gen.key");
    let config = || {
        ProxyConfig::new(pg).user(&SCRAM_USER).set(
            "tls",
            json!({
                "sslmode": "require",
                "generate_cert": true,
                "cert_path": cert.to_str().unwrap(),
                "cert_private_key_path": key.to_str().unwrap(),
            }),
        )
    };
    let proxy = config().start();
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = fs::read(&cert).unwrap();
    let dsn = |port: u16| {
        format!(
            "host=localhost port={port} user={} dbname={TEST_DATABASE} sslmode=verify-full \
             sslrootcert={} channel_binding=require",
            SCRAM_USER.name,
            cert.display()
        )
    };
    assert_eq!(
        run_psql(&dsn(proxy.port()), SCRAM_USER.password, "SELECT 1"),
        Ok("1".into())
    );
    drop(proxy);
    // A restart uses the same files.
    let proxy = config().start();
    assert_eq!(fs::read(&cert).unwrap(), first);
    assert_eq!(
        run_psql(&dsn(proxy.port()), SCRAM_USER.password, "SELECT 1"),
        Ok("1".into())
    );
    drop(proxy);
    // Without generate_cert, a missing file is a configuration error naming it.
    let missing = dir.path().join("missing.crt");
    let config = ProxyConfig::new(pg).user(&SCRAM_USER).set(
        "tls",
        json!({
            "sslmode": "require",
            "cert_path": missing.to_str().unwrap(),
            "cert_private_key_path": key.to_str().unwrap(),
        }),
    );
    let err = match pglink::config::parse(&config.json().to_string()) {
        Ok(_) => panic!("accepted a missing certificate file"),
        Err(e) => format!("{:?}", e.errors),
    };
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

#[test]
fn gssenc_request_is_declined_and_the_login_continues() {
    let pg = PgServer::shared();
    let proxy = ProxyConfig::new(pg).user(&SCRAM_USER).start();
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(proxy.addr).unwrap();
    tcp.set_read_timeout(Some(support::wire::IO_TIMEOUT))
        .unwrap();
    let mut req = Vec::new();
    pglink::protocol::startup::gssenc_request(&mut req);
    tcp.write_all(&req).unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'N');
    // The client goes on in plaintext on the same connection.
    let mut c = Conn::from_tcp(tcp);
    c.send_startup(SCRAM_USER.name, TEST_DATABASE, &LoginOptions::default());
    let info = c
        .authenticate(
            SCRAM_USER.name,
            "scram_pw",
            &Binding::Prefer,
            &mut pglink::auth::SaltedKeyCache::new(1),
        )
        .unwrap();
    assert_eq!(info.method, "SCRAM-SHA-256");
    // Direct TLS to a proxy with TLS disabled fails at once instead of hanging.
    let proxy = ProxyConfig::new(pg)
        .user(&SCRAM_USER)
        .set("tls.sslmode", json!("disable"))
        .start();
    let started = std::time::Instant::now();
    assert!(Conn::direct_tls(proxy.addr, client_config_any_cert(true), "localhost").is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// A root CA, an intermediate CA and a leaf for localhost (rcgen); the leaf file holds the
/// leaf and the intermediate, as servers usually deploy them.
fn chain_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root = ca_params("e2e root").self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(ca_params("e2e root"), root_key);
    let mid_key = KeyPair::generate().unwrap();
    let mut mid_params = ca_params("e2e intermediate");
    mid_params.use_authority_key_identifier_extension = true;
    let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = Issuer::new(ca_params("e2e intermediate"), mid_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();
    let root_path = write(dir, "chain-root.crt", &root.pem(), 0o644);
    let chain = format!("{}{}", leaf.pem(), mid.pem());
    let cert_path = write(dir, "chain-leaf.crt", &chain, 0o644);
    let key_path = write(dir, "chain-leaf.key", &leaf_key.serialize_pem(), 0o600);
    (root_path, cert_path, key_path)
}

#[test]
fn certificate_chain_is_served_and_tls12_binding_works() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let (root, cert, key) = chain_files(dir.path());
    let proxy = proxy_with_files(pg, &cert, &key);
    for extra in ["", "ssl_max_protocol_version=TLSv1.2"] {
        let dsn = format!(
            "host=localhost port={} user={} dbname={TEST_DATABASE} sslmode=verify-full \
             sslrootcert={} channel_binding=require {extra}",
            proxy.port(),
            SCRAM_USER.name,
            root.display()
        );
        assert_eq!(
            run_psql_commands(&dsn, SCRAM_USER.password, &["\\conninfo", "SELECT 1"]).map(
                |out| out.contains(if extra.is_empty() {
                    "TLSv1.3"
                } else {
                    "TLSv1.2"
                }) && out.ends_with('1')
            ),
            Ok(true),
            "verify-full through an intermediate CA {extra}"
        );
    }
}

/// Encrypted client keys as `openssl pkcs8 -topk8` writes them. pglink reads PKCS#8 PBES2;
/// whatever it cannot read must be a startup error naming the file, never a panic.
#[test]
fn encrypted_client_key_variants() {
    let pg = PgServer::shared();
    let dir = tempdir();
    let variants: [(&str, &[&str], bool); 6] = [
        ("openssl-default", &[], true),
        ("aes-128-cbc", &["-v2", "aes-128-cbc"], true),
        (
            "sha512-prf",
            &["-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA512"],
            false,
        ),
        ("scrypt", &["-scrypt"], false),
        ("des3", &["-v2", "des3"], false),
        ("pkcs12-pbe", &["-v1", "PBE-SHA1-3DES"], false),
    ];
    let mut report = Vec::new();
    for (name, args, must_work) in variants {
        let out = dir.path().join(format!("{name}.key"));
        let status = Command::new("openssl")
            .args(["pkcs8", "-topk8", "-passout", "pass:pw"])
            .args(args)
            .arg("-in")
            .arg(pg.client_key_path())
            .arg("-out")
            .arg(&out)
            .output()
            .expect("run openssl");
        if !status.status.success() {
            report.push(format!("{name}: openssl cannot write it"));
            continue;
        }
        match cert_proxy(pg, &out, Some("pw")).try_start() {
            Ok(proxy) => {
                assert_eq!(
                    via(&proxy, &CERT_USER, "", "SELECT current_user"),
                    Ok(CERT_USER.name.into()),
                    "{name}"
                );
                report.push(format!("{name}: works"));
            }
            Err(e) => {
                assert!(!must_work, "{name}: {e}");
                assert!(e.contains(out.to_str().unwrap()), "{name}: {e}");
                report.push(format!("{name}: refused: {e}"));
            }
        }
    }
    // Legacy OpenSSL PEM encryption (`Proc-Type: 4,ENCRYPTED`): refused with a hint.
    let legacy = dir.path().join("legacy.key");
    let out = Command::new("openssl")
        .args(["ec", "-aes256", "-passout", "pass:pw", "-in"])
        .arg(pg.client_key_path())
        .arg("-out")
        .arg(&legacy)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fs::read_to_string(&legacy)
            .unwrap()
            .contains("Proc-Type: 4,ENCRYPTED")
    );
    match cert_proxy(pg, &legacy, Some("pw")).try_start() {
        Ok(_) => report.push("legacy PEM: works".into()),
        Err(e) => {
            assert!(e.contains(legacy.to_str().unwrap()), "{e}");
            assert!(e.contains("openssl pkcs8 -topk8"), "{e}");
            report.push(format!("legacy PEM: refused: {e}"));
        }
    }
    println!("encrypted key variants:\n  {}", report.join("\n  "));
}
