//! AWS Secrets Manager secrets against a fake Secrets Manager on 127.0.0.1.
//!
//! The SDK reads region, credentials and endpoint from the environment, which is process-wide
//! (and `set_var` is unsafe, which this crate forbids), so every case runs in a child process
//! with its own environment: the real `pglink -check` binary for the one-shot cases, and this
//! test binary itself (`rotation_child`) for the refresh case. One parent test drives them all
//! in sequence.
#![cfg(feature = "aws")]

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
