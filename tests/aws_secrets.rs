//! AWS Secrets Manager secrets against a fake Secrets Manager on 127.0.0.1.
//!
//! The SDK reads region, credentials and endpoint from the environment, which is process-wide
//! (and `set_var` is unsafe, which this crate forbids), so every case runs in a child process
//! with its own environment: the real `pglink -check` binary for the one-shot cases, this
//! test binary itself (`rotation_child`) for the refresh case, and a running `pglink` in front
//! of the harness PostgreSQL for the end-to-end rotations (`rotation_*`). One parent test
//! drives the first two in sequence.
#![cfg(feature = "aws")]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const APP_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf";
const TEXT_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:text-AbCdEf";
const BINARY_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:bin-AbCdEf";
const ROTATING_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rot-AbCdEf";
const MISSING_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing";

/// What the fake answers for one secret id.
#[derive(Clone)]
enum Answer {
    String(String),
    Binary,
    /// The n-th request (from 0) gets `answers[min(n, len-1)]`; `None` answers "not found".
    Sequence(Vec<Option<String>>),
}

#[derive(Clone, Default)]
struct Fake {
    secrets: Arc<Mutex<HashMap<String, Answer>>>,
    requests: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
}

impl Fake {
    fn start() -> (Fake, u16) {
        let fake = Fake::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        (fake, port)
    }

    fn set(&self, id: &str, answer: Answer) {
        self.secrets.lock().unwrap().insert(id.into(), answer);
    }

    fn requests_for(&self, id: &str) -> usize {
        self.requests.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// Serves HTTP/1.1 requests on one connection until the client closes it.
    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut headers = HashMap::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers
                .get("content-length")
                .map_or(0, |v| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let (status, reply) = self.answer(&request_line, &headers, &body);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\n\
                 x-amzn-requestid: 00000000-0000-0000-0000-000000000000\r\n\
                 content-length: {}\r\n\r\n{reply}",
                reply.len()
            );
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn answer(
        &self,
        request_line: &str,
        headers: &HashMap<String, String>,
        body: &[u8],
    ) -> (&'static str, String) {
        self.total.fetch_add(1, Ordering::SeqCst);
        assert!(request_line.starts_with("POST / "), "{request_line}");
        assert_eq!(
            headers.get("x-amz-target").map(String::as_str),
            Some("secretsmanager.GetSecretValue")
        );
        assert!(headers.contains_key("authorization"), "requests are signed");
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let id = body["SecretId"].as_str().unwrap().to_owned();
        let n = {
            let mut requests = self.requests.lock().unwrap();
            let n = requests.entry(id.clone()).or_default();
            *n += 1;
            *n - 1
        };
        let not_found = || {
            (
                "400 Bad Request",
                serde_json::json!({
                    "__type": "ResourceNotFoundException",
                    "Message": "Secrets Manager can't find the specified secret."
                })
                .to_string(),
            )
        };
        let found = |field: &str, value: serde_json::Value| {
            let mut reply = serde_json::json!({
                "ARN": id,
                "Name": id.rsplit(':').next().unwrap(),
                "VersionId": format!("v{n}"),
                "VersionStages": ["AWSCURRENT"],
                "CreatedDate": 1_700_000_000.0
            });
            reply[field] = value;
            ("200 OK", reply.to_string())
        };
        match self.secrets.lock().unwrap().get(&id).cloned() {
            None => not_found(),
            Some(Answer::String(s)) => found("SecretString", s.into()),
            Some(Answer::Binary) => found("SecretBinary", "aGVsbG8=".into()),
            Some(Answer::Sequence(seq)) => match &seq[n.min(seq.len() - 1)] {
                Some(s) => found("SecretString", s.clone().into()),
                None => not_found(),
            },
        }
    }
}

fn creds(username: &str, password: &str) -> String {
    serde_json::json!({"username": username, "password": password}).to_string()
}

fn config_text(username: (&str, &str), password: (&str, &str), refresh: &str) -> String {
    serde_json::json!({
        "secret_refresh_interval": refresh,
        "databases": {"mydb": {
            "users": [
                {"username": {"aws_secret_arn": username.0, "key": username.1},
                 "password": {"aws_secret_arn": password.0, "key": password.1}},
                {"username": {"insecure_value": "local"}, "password": {"insecure_value": "local-pw"}}
            ],
            "backend": {"host": "127.0.0.1", "database": "app", "pool_max_conns": 4}
        }}
    })
    .to_string()
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglink-aws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A clean AWS environment pointing at `port`, with nothing that could reach the network.
fn aws_env(cmd: &mut Command, port: u16) -> &mut Command {
    for var in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDPGLINKTEST")
        .env("AWS_SECRET_ACCESS_KEY", "pglink-test-secret-key")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env(
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            format!("http://127.0.0.1:{port}"),
        )
}

fn check(port: u16, name: &str, text: &str) -> (i32, String, String, Duration) {
    let file = write_config(name, text);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pglink"));
    cmd.args(["-check", "-config", file.to_str().unwrap()]);
    let started = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = aws_env(&mut cmd, port).output().unwrap();
    (
        status.code().unwrap(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
        started.elapsed(),
    )
}

#[test]
fn aws_secrets_end_to_end() {
    let (fake, port) = Fake::start();
    fake.set(APP_ARN, Answer::String(creds("app_user", "app-pass-0001")));
    fake.set(TEXT_ARN, Answer::String("plain-text-secret-0002".into()));
    fake.set(BINARY_ARN, Answer::Binary);

    // Success: both keys from one secret, fetched once.
    let (code, stdout, stderr, _) = check(
        port,
        "ok.json",
        &config_text((APP_ARN, "username"), (APP_ARN, "password"), "5m"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("configuration OK") && stdout.contains("(1 databases, 2 users)"),
        "{stdout}"
    );
    assert_eq!(
        fake.requests_for(APP_ARN),
        1,
        "each ARN is fetched once per round"
    );
    assert!(!stdout.contains("app-pass-0001") && !stderr.contains("app-pass-0001"));

    // Wrong key.
    let (code, _, stderr, _) = check(
        port,
        "wrong-key.json",
        &config_text((APP_ARN, "username"), (APP_ARN, "pass"), "5m"),
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "pglink: secrets: databases.mydb.users[0].password: AWS secret {APP_ARN} has no key \"pass\""
        )
    );

    // SecretString that is not JSON: named, never printed.
    let (code, _, stderr, _) = check(
        port,
        "not-json.json",
        &config_text((APP_ARN, "username"), (TEXT_ARN, "password"), "5m"),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "databases.mydb.users[0].password: AWS secret {TEXT_ARN}: SecretString is not valid JSON"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("plain-text-secret-0002"), "{stderr}");

    // SecretBinary only.
    let (code, _, stderr, _) = check(
        port,
        "binary.json",
        &config_text((APP_ARN, "username"), (BINARY_ARN, "password"), "5m"),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("AWS secret {BINARY_ARN}: holds only SecretBinary")),
        "{stderr}"
    );

    // Unknown secret: the service error is passed on.
    let (code, _, stderr, _) = check(
        port,
        "missing.json",
        &config_text((MISSING_ARN, "username"), (APP_ARN, "password"), "5m"),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "databases.mydb.users[0].username: AWS secret {MISSING_ARN}: fetch failed: "
        )) && stderr.contains("ResourceNotFoundException"),
        "{stderr}"
    );

    // Endpoint down: a clear error, well within the startup bound.
    let closed_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, _, stderr, elapsed) = check(
        closed_port,
        "down.json",
        &config_text((APP_ARN, "username"), (APP_ARN, "password"), "5m"),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "databases.mydb.users[0].username: AWS secret {APP_ARN}: fetch failed: "
        )),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused") || stderr.contains("dispatch failure"),
        "the cause is named: {stderr}"
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");

    // Rotation: the refresh thread publishes the new value, then survives failures.
    fake.set(
        ROTATING_ARN,
        Answer::Sequence(vec![
            Some(creds("rot_user", "old-pass")),
            Some(creds("rot_user", "new-pass")),
            None,
        ]),
    );
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "rotation_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PGLINK_AWS_ROTATION_CHILD", "1");
    let out = aws_env(&mut child, port).output().unwrap();
    let child_output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "rotation child failed:\n{child_output}"
    );
    assert!(
        child_output.contains("1 passed"),
        "the child ran the case:\n{child_output}"
    );
    assert!(
        fake.requests_for(ROTATING_ARN) >= 3,
        "refreshes continued after the failure"
    );
    assert!(fake.total.load(Ordering::SeqCst) > 0);
}

/// Runs only as the child process started by `aws_secrets_end_to_end`.
#[test]
fn rotation_child() {
    if std::env::var_os("PGLINK_AWS_ROTATION_CHILD").is_none() {
        return;
    }
    use pglink::config::{SecretsOptions, SecretsWatcher};
    let text = config_text(
        (ROTATING_ARN, "username"),
        (ROTATING_ARN, "password"),
        "150ms",
    );
    let config = pglink::config::parse(&text).unwrap().config;
    let options = SecretsOptions {
        initial_timeout: Duration::from_secs(20),
        refresh_interval: config.secret_refresh(),
    };
    let watcher = SecretsWatcher::start(&config, options).unwrap();
    assert!(watcher.is_refreshing());
    let first = watcher.current();
    assert_eq!(first.users("mydb")[0].username, "rot_user");
    assert_eq!(first.users("mydb")[0].password, "old-pass");
    assert_eq!(first.users("mydb")[1].password, "local-pw");

    let (tx, rx) = std::sync::mpsc::channel();
    watcher.set_on_change(Box::new(move |s| {
        let _ = tx.send(s);
    }));
    let changed = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the callback sees the rotated secret");
    assert_eq!(changed.users("mydb")[0].password, "new-pass");
    assert_eq!(watcher.current().users("mydb")[0].password, "new-pass");
    assert!(
        !format!("{changed:?}").contains("new-pass"),
        "Debug redacts"
    );

    // Later refreshes fail (secret gone): the last good values stay, no callback.
    std::thread::sleep(Duration::from_millis(700));
    assert!(rx.try_recv().is_err());
    assert_eq!(watcher.current().users("mydb")[0].password, "new-pass");
    let started = Instant::now();
    watcher.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop joins promptly"
    );
}

// ---- rotation end to end: a running pglink, the harness PostgreSQL ---------------------------

/// How the running pglink learns of the rotated secret.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pickup {
    /// Its own refresh (`secret_refresh_interval: "1s"`).
    RefreshTimer,
    /// SIGHUP with refreshing off (`secret_refresh_interval: 0`): the reload fetches again.
    Sighup,
}

/// `pglink_pool_server_closes_total{reason="credentials_changed"}` of `user`, when built with
/// metrics.
fn credentials_closes(metrics_port: u16, user: &str) -> Option<u64> {
    if !cfg!(feature = "metrics") {
        return None;
    }
    let (_, body) = support::http_get(([127, 0, 0, 1], metrics_port).into(), "/metrics");
    let labels = format!("user=\"{user}\",reason=\"credentials_changed\"}}");
    let line = body
        .lines()
        .find(|l| l.starts_with("pglink_pool_server_closes_total{") && l.contains(&labels))
        .unwrap_or_else(|| panic!("no {labels} closes in\n{body}"));
    Some(line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// The rotation the operations issue describes: the password changes in PostgreSQL, then in
/// the secret; pglink picks it up (`pickup`). A session inside a transaction keeps its server
/// connection to COMMIT; the idle server connection made with the old password is closed
/// (`credentials_changed`) without waiting for a client, and the idle session's next query
/// runs on a new one; new logins take the new password and refuse the old one with 28P01.
fn rotation_end_to_end(pickup: Pickup) {
    use support::wire::WireClient;
    use support::{PgServer, ProxyConfig, TEST_DATABASE, wait_until};

    let pg = PgServer::shared();
    let user = support::proxy::create_user(pg, "rot");
    let (old_pw, new_pw) = (user.password.unwrap(), "rotated-pw-0002");
    let arn = format!(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}",
        user.name
    );
    let (fake, port) = Fake::start();
    fake.set(&arn, Answer::String(creds(user.name, old_pw)));

    let refresh = match pickup {
        Pickup::RefreshTimer => "1s",
        Pickup::Sighup => "0",
    };
    let metrics_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = ProxyConfig::new(pg)
        .set("secret_refresh_interval", serde_json::json!(refresh))
        .set(
            &format!("databases.{TEST_DATABASE}.users"),
            serde_json::json!([{
                "username": {"aws_secret_arn": arn, "key": "username"},
                "password": {"aws_secret_arn": arn, "key": "password"}
            }]),
        );
    if cfg!(feature = "metrics") {
        config = config.set(
            "prometheus",
            serde_json::json!({"listen": format!("127.0.0.1:{metrics_port}")}),
        );
    }
    let log = std::env::temp_dir().join(format!(
        "pglink-rotation-{}-{:?}.log",
        std::process::id(),
        pickup
    ));
    let proxy =
        support::proxy::ChildProxy::start_with(&config, &format!("rotation-{pickup:?}"), |cmd| {
            aws_env(cmd, port)
                .env("PGLINK_LOG", "info")
                .stderr(std::fs::File::create(&log).unwrap());
        });
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let addr = proxy.addr;
    let login = |pw: &str| WireClient::connect(addr, user.name, pw, TEST_DATABASE);
    let pid_of = |c: &mut WireClient| c.query_column("SELECT pg_backend_pid()").unwrap()[0].clone();
    let table = format!("{}_t", user.name);

    // Session A inside a transaction, session B idle after a query: two server connections.
    let mut a = login(old_pw).unwrap();
    a.query_column("BEGIN").unwrap();
    let pid_a = pid_of(&mut a);
    a.query_column(&format!(
        "CREATE TABLE {table} (v int); INSERT INTO {table} VALUES (1)"
    ))
    .unwrap();
    let mut b = login(old_pw).unwrap();
    let pid_b = pid_of(&mut b);
    assert_ne!(pid_a, pid_b);

    // Rotate: PostgreSQL first, then the secret.
    pg.admin_sql(&format!("ALTER ROLE {} PASSWORD '{new_pw}'", user.name));
    fake.set(&arn, Answer::String(creds(user.name, new_pw)));
    if pickup == Pickup::Sighup {
        // Refreshing is off: nothing changes until the signal.
        std::thread::sleep(Duration::from_millis(1500));
        let refused = login(new_pw).err().unwrap_or_default();
        assert!(
            refused.starts_with("FATAL 28P01"),
            "before SIGHUP: {refused}"
        );
        assert_eq!(fake.requests_for(&arn), 1, "fetched once, at startup");
        assert!(support::process::signal(proxy.pid(), "HUP"));
    }
    wait_until(
        "pglink to take the new password",
        Duration::from_secs(20),
        || login(new_pw).is_ok(),
    );

    // The idle server connection made with the old password is retired while idle ...
    wait_until(
        "the idle old-password server connection to close",
        Duration::from_secs(10),
        || !pg.backend_pids(user.name).contains(&pid_b),
    );
    // ... while the one inside a transaction stays with its session to the end.
    assert!(
        pg.backend_pids(user.name).contains(&pid_a),
        "{}",
        log_text()
    );
    assert_eq!(
        pid_of(&mut a),
        pid_a,
        "same server connection within the transaction"
    );
    a.query_column("COMMIT").unwrap();
    wait_until(
        "the old-password server connection to close after COMMIT",
        Duration::from_secs(10),
        || !pg.backend_pids(user.name).contains(&pid_a),
    );

    // The idle session goes on, on a server connection made with the new password.
    let pid_b2 = pid_of(&mut b);
    assert!(pid_b2 != pid_a && pid_b2 != pid_b, "{pid_b2} is new");
    assert_eq!(
        b.query_column(&format!("SELECT sum(v) FROM {table}"))
            .unwrap(),
        ["1"]
    );

    // New logins: the new password works, the old one is refused like any wrong password.
    let mut c = login(new_pw).unwrap();
    assert_eq!(c.query_column("SELECT 1").unwrap(), ["1"]);
    let refused = login(old_pw).err().unwrap_or_default();
    assert!(
        refused.starts_with("FATAL 28P01"),
        "old password: {refused}"
    );
    if let Some(closed) = credentials_closes(metrics_port, user.name) {
        assert_eq!(closed, 2, "the two old-password connections");
    }
    c.query_column(&format!("DROP TABLE {table}")).unwrap();
    if pickup == Pickup::Sighup {
        assert!(
            log_text().contains("configuration reloaded"),
            "{}",
            log_text()
        );
    } else {
        assert!(fake.requests_for(&arn) >= 2);
        assert!(log_text().contains("secrets refreshed"), "{}", log_text());
    }
    let _ = std::fs::remove_file(&log);
}

#[test]
fn rotation_picked_up_by_the_refresh_timer() {
    rotation_end_to_end(Pickup::RefreshTimer);
}

#[test]
fn rotation_picked_up_by_sighup() {
    rotation_end_to_end(Pickup::Sighup);
}
