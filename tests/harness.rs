//! Proves the PostgreSQL test harness in `tests/support`: the server starts, every role logs in
//! with its authentication method over plain TCP and TLS, and nothing outlives a test.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::process::process_alive;
use support::{
    ADMIN_USER, CERT_USER, CLEAR_USER, MD5_USER, PgServer, SCRAM_USER, SslMode, TEST_DATABASE,
    TLS_ONLY_USER, TRUST_USER, TestCerts, TestUser, run_psql,
};

/// Env var telling [`child_process_holding_a_server`] that it was started by the watchdog test.
const CHILD_ENV: &str = "PGLINK_HARNESS_CHILD";

const WHO_AND_TLS: &str = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[test]
fn shared_server_is_started_once_for_concurrent_callers() {
    let addrs: Vec<usize> = (0..4)
        .map(|_| thread::spawn(|| PgServer::shared() as *const PgServer as usize))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(addrs.windows(2).all(|w| w[0] == w[1]), "one shared server");
    let pg = PgServer::shared();
    println!("shared PostgreSQL started in {:?}", pg.start_time());
    assert!(pg.is_running());
    assert_eq!(pg.admin_sql("SELECT 1"), "1");
    let version: u32 = pg.admin_sql("SHOW server_version_num").parse().unwrap();
    assert!(
        version >= 130000,
        "channel binding needs PostgreSQL 13+, got {version}"
    );
    assert_eq!(pg.admin_sql("SHOW max_connections"), "200");
    assert_eq!(pg.admin_sql("SHOW password_encryption"), "scram-sha-256");
    assert_eq!(pg.admin_sql("SHOW ssl"), "on");
    assert!(
        pg.socket_dir()
            .join(format!(".s.PGSQL.{}", pg.port()))
            .exists()
    );
}

#[test]
fn password_and_trust_roles_log_in_with_and_without_tls() {
    let pg = PgServer::shared();
    let mark = pg.log_mark();
    for user in [SCRAM_USER, MD5_USER, CLEAR_USER, TRUST_USER, ADMIN_USER] {
        for (mode, tls) in [(SslMode::Disable, "f"), (SslMode::Require, "t")] {
            let out = pg.psql_user(&user, WHO_AND_TLS, &format!("sslmode={}", mode.as_str()));
            assert_eq!(
                out,
                Ok(format!("{}|{tls}", user.name)),
                "{} {mode:?}",
                user.name
            );
        }
    }
    // The password methods really ran (log_connections logs the authenticated identity).
    let log = pg.log_since(mark);
    for (user, method) in [
        (SCRAM_USER, "scram-sha-256"),
        (MD5_USER, "md5"),
        (CLEAR_USER, "password"),
    ] {
        let line = format!("identity=\"{}\" method={method}", user.name);
        assert!(log.contains(&line), "log lacks {line}:\n{log}");
    }
}

#[test]
fn md5_role_password_is_stored_as_md5() {
    let pg = PgServer::shared();
    let stored = |role: &str| {
        pg.admin_sql(&format!(
            "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = '{role}'"
        ))
    };
    assert!(stored(MD5_USER.name).starts_with("md5"));
    assert_eq!(stored(SCRAM_USER.name), "SCRAM-SHA-256");
}

#[test]
fn wrong_password_is_rejected() {
    let pg = PgServer::shared();
    for user in [SCRAM_USER, MD5_USER, CLEAR_USER, TLS_ONLY_USER] {
        let err = pg
            .psql_as(user.name, Some("wrong"), "SELECT 1", "sslmode=require")
            .unwrap_err();
        assert!(
            err.contains("password authentication failed"),
            "{}: {err}",
            user.name
        );
        let err = pg.psql_as(user.name, None, "SELECT 1", "sslmode=require");
        assert!(err.is_err(), "{} without a password", user.name);
    }
}

#[test]
fn verify_full_works_with_the_ca_and_localhost() {
    let pg = PgServer::shared();
    let user = SCRAM_USER;
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let dsn = pg.dsn_ssl(user.name, TEST_DATABASE, mode);
        assert_eq!(
            run_psql(&dsn, user.password, WHO_AND_TLS),
            Ok("pglink_scram|t".into())
        );
    }
    // 127.0.0.1 is a SAN too.
    let dsn = format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.dsn(user.name, TEST_DATABASE),
        pg.ca_cert_path().display()
    );
    assert_eq!(run_psql(&dsn, user.password, "SELECT 1"), Ok("1".into()));
    // Another CA does not verify it.
    let other_ca = pg
        .dir()
        .join(format!("other-ca-{}.crt", std::process::id()));
    fs::write(&other_ca, TestCerts::generate("x").ca_cert_pem).unwrap();
    let dsn = format!(
        "{} sslmode=verify-ca sslrootcert={}",
        pg.dsn(user.name, TEST_DATABASE),
        other_ca.display()
    );
    let err = run_psql(&dsn, user.password, "SELECT 1").unwrap_err();
    fs::remove_file(&other_ca).unwrap();
    assert!(err.contains("certificate verify failed"), "{err}");
}

#[test]
fn channel_binding_is_required_and_works_for_scram_over_tls() {
    let pg = PgServer::shared();
    let cb = "sslmode=require channel_binding=require";
    assert_eq!(
        pg.psql_user(&SCRAM_USER, WHO_AND_TLS, cb),
        Ok("pglink_scram|t".into())
    );
    assert_eq!(pg.psql_user(&TLS_ONLY_USER, "SELECT 1", cb), Ok("1".into()));
    let err = pg.psql_user(&MD5_USER, "SELECT 1", cb).unwrap_err();
    assert!(err.contains("channel binding"), "{err}");
    let err = pg
        .psql_user(
            &SCRAM_USER,
            "SELECT 1",
            "sslmode=disable channel_binding=require",
        )
        .unwrap_err();
    assert!(err.contains("channel binding"), "{err}");
}

#[test]
fn tls_only_role_is_rejected_without_tls() {
    let pg = PgServer::shared();
    let err = pg
        .psql_user(&TLS_ONLY_USER, "SELECT 1", "sslmode=disable")
        .unwrap_err();
    assert!(err.contains("pg_hba.conf rejects connection"), "{err}");
    let out = pg.psql_user(&TLS_ONLY_USER, WHO_AND_TLS, "sslmode=require");
    assert_eq!(out, Ok("pglink_tlsonly|t".into()));
}

#[test]
fn cert_role_authenticates_with_the_client_certificate() {
    let pg = PgServer::shared();
    let dsn = pg.dsn_ssl(CERT_USER.name, TEST_DATABASE, SslMode::VerifyFull);
    let with_cert = format!("{dsn} {}", pg.client_cert_params());
    assert_eq!(
        run_psql(&with_cert, None, WHO_AND_TLS),
        Ok("pglink_cert|t".into())
    );
    let err = run_psql(&dsn, None, "SELECT 1").unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    let plain = format!("{} sslmode=disable", pg.dsn(CERT_USER.name, TEST_DATABASE));
    assert!(run_psql(&plain, None, "SELECT 1").is_err());
}

#[test]
fn every_role_can_create_objects_in_the_test_database() {
    let pg = PgServer::shared();
    let users: [(TestUser, &str); 4] = [
        (SCRAM_USER, "sslmode=disable"),
        (MD5_USER, "sslmode=disable"),
        (TLS_ONLY_USER, "sslmode=require"),
        (TRUST_USER, "sslmode=disable"),
    ];
    for (user, extra) in users {
        let sql = format!(
            "CREATE TABLE harness_{0} (x int); INSERT INTO harness_{0} VALUES (7); \
             SELECT x FROM harness_{0}; DROP TABLE harness_{0}",
            user.name
        );
        assert_eq!(
            pg.psql_user(&user, &sql, extra),
            Ok("7".into()),
            "{}",
            user.name
        );
    }
    let extra = format!("sslmode=require {}", pg.client_cert_params());
    let out = pg.psql_as(CERT_USER.name, None, "CREATE TEMP TABLE t (x int)", &extra);
    assert_eq!(out, Ok(String::new()));
}

#[test]
fn server_presents_the_generated_certificate() {
    let pg = PgServer::shared();
    let presented = tls_peer_certificate(pg, "localhost");
    assert_eq!(presented, pg.server_cert_der());
    let mode = fs::metadata(pg.server_key_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for path in [
        pg.ca_cert_path(),
        pg.server_cert_path(),
        pg.client_cert_path(),
        pg.client_key_path(),
    ] {
        assert!(
            fs::read_to_string(&path).unwrap().starts_with("-----BEGIN"),
            "{path:?}"
        );
    }
}

#[test]
fn backend_helpers_count_and_terminate_sessions() {
    let pg = PgServer::shared();
    let role = "pglink_harness_helpers";
    pg.admin_sql(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'"));
    let mut session = support::psql_command(Some("pw"))
        .arg("-d")
        .arg(pg.dsn(role, TEST_DATABASE))
        .args(["-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the session to connect", || pg.backend_count(role) == 1);
    assert_eq!(pg.terminate_backends(role), 1);
    let status = session.wait().unwrap();
    let mut stderr = String::new();
    session
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(stderr.contains("terminating connection"), "{stderr}");
    wait_for("the backend to exit", || pg.backend_count(role) == 0);
}

#[test]
fn local_server_stops_and_restarts_on_the_same_port() {
    let pg = PgServer::start_with(
        support::PgOptions::default()
            .max_connections(20)
            .setting("cluster_name", "harness it's"),
    );
    println!("local PostgreSQL started in {:?}", pg.start_time());
    assert_eq!(pg.admin_sql("SHOW max_connections"), "20");
    assert_eq!(pg.admin_sql("SHOW cluster_name"), "harness it's");
    let port = pg.port();
    assert_ne!(port, PgServer::shared().port());

    pg.stop();
    assert!(!pg.is_running());
    assert!(
        pg.psql_user(&SCRAM_USER, "SELECT 1", "sslmode=disable")
            .is_err()
    );
    pg.restart();
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql_user(&SCRAM_USER, "SELECT 1", "sslmode=require"),
        Ok("1".into())
    );

    pg.stop_immediate();
    assert!(!pg.is_running());
    pg.restart(); // crash recovery
    assert_eq!(
        pg.psql_user(&MD5_USER, "SELECT 2", "sslmode=disable"),
        Ok("2".into())
    );
    assert!(
        pg.log_contents()
            .contains("database system is ready to accept connections")
    );
}

#[test]
fn local_server_without_ssl_refuses_tls() {
    let pg = PgServer::start_with(support::PgOptions::default().without_ssl());
    assert_eq!(pg.admin_sql("SHOW ssl"), "off");
    let err = pg
        .psql_user(&SCRAM_USER, "SELECT 1", "sslmode=require")
        .unwrap_err();
    assert!(err.contains("does not support SSL"), "{err}");
    assert_eq!(
        pg.psql_user(&SCRAM_USER, WHO_AND_TLS, "sslmode=prefer"),
        Ok("pglink_scram|f".into())
    );
}

#[test]
fn local_server_is_gone_after_drop() {
    let pg = PgServer::start();
    let (dir, pid) = (pg.dir().to_path_buf(), pg.postmaster_pid().unwrap());
    assert!(dir.exists() && process_alive(pid));
    drop(pg);
    assert_gone(&dir, pid);
}

#[test]
fn local_server_is_gone_when_its_test_panics() {
    let (tx, rx) = mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let pg = PgServer::start();
        tx.send((pg.dir().to_path_buf(), pg.postmaster_pid().unwrap()))
            .unwrap();
        panic!("deliberate panic while holding a server");
    });
    assert!(result.is_err());
    let (dir, pid) = rx.recv().unwrap();
    assert_gone(&dir, pid);
}

#[test]
fn watchdog_removes_the_server_of_a_killed_test_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process_holding_a_server",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        // Must not leak into the harness's own psql runs (the child checks it still works).
        .env("PGHOST", "/nonexistent")
        .env("PGPORT", "1")
        .env("PGUSER", "nobody")
        .env("PGSSLMODE", "verify-full")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("PGLINK_CHILD ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60));
    let child_pid = child.id();
    child.kill().unwrap(); // SIGKILL: no destructors, no unwinding
    child.wait().unwrap();
    let ready = ready.expect("the child reports its server");
    let (dir, pid) = ready.split_once(' ').unwrap();
    let (dir, pid) = (PathBuf::from(dir), pid.parse::<u32>().unwrap());
    assert_gone(&dir, pid);
    // The child's initdb template is cleaned up as well.
    let prefix = format!("pglink-pg-{child_pid}-");
    wait_for("the child's template dir to go", || {
        fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(&prefix))
    });
}

/// Run only as a child of [`watchdog_removes_the_server_of_a_killed_test_process`].
#[test]
#[ignore = "helper process for the watchdog test"]
fn child_process_holding_a_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let pg = PgServer::start();
    assert_eq!(pg.psql_user(&SCRAM_USER, "SELECT 1", ""), Ok("1".into()));
    assert_eq!(pg.admin_sql("SELECT 1"), "1");
    println!(
        "PGLINK_CHILD {} {}",
        pg.dir().display(),
        pg.postmaster_pid().unwrap()
    );
    std::io::stdout().flush().unwrap();
    thread::sleep(Duration::from_secs(120));
}

// ---- helpers ---------------------------------------------------------------------------

/// The directory is removed and no process is left: not the postmaster, and nothing whose
/// command line mentions the directory (postmaster `-D`, watchdog).
#[test]
fn missing_binaries_say_what_to_install() {
    let dir = std::env::temp_dir().join(format!("pglink-no-postgres-{}", std::process::id()));
    let message = support::process::locate_binaries(Some(dir.as_os_str())).unwrap_err();
    let want = format!(
        "PostgreSQL not found: PGLINK_PG_BINDIR={} lacks initdb or postgres; install \
         PostgreSQL with `apt-get install -y postgresql`",
        dir.display()
    );
    assert!(message.starts_with(&want), "{message}");
    assert!(
        message.contains("point PGLINK_PG_BINDIR at a directory holding initdb, postgres and psql")
    );
    // The discovery the other tests use still works.
    let found = support::process::binaries();
    assert!(found.initdb.is_file() && found.postgres.is_file() && found.psql.is_file());
}

fn assert_gone(dir: &Path, postmaster: u32) {
    let needle = dir.to_string_lossy().into_owned();
    wait_for("the server directory and processes to go", || {
        !dir.exists() && !process_alive(postmaster) && processes_mentioning(&needle).is_empty()
    });
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Speak SSLRequest, then a rustls handshake trusting only the harness CA; the leaf presented.
fn tls_peer_certificate(pg: &PgServer, name: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut tcp = TcpStream::connect(pg.addr()).unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .unwrap(); // SSLRequest
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'S');
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(pg.certs().ca_cert_der.clone()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    tls.peer_certificates().unwrap()[0].to_vec()
}
