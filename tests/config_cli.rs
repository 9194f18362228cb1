//! The `pglink` binary's command line and configuration errors, run as a real process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn pglink(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pglink"));
    cmd.args(args);
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglink-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let file = fixture("invalid_many.json");
    let started = Instant::now();
    let (code, stdout, stderr) = run(&mut pglink(&["-config", file.to_str().unwrap()]));
    let elapsed = started.elapsed();
    assert_eq!(code, 2, "stderr:\n{stderr}");
    assert!(stdout.is_empty());
    let mut expected = vec![
        r#"pglink: config: listen[1]: listen address "nohost" has no port (expected "host:port" or ":port")"#,
        "pglink: config: auth_method: plaintext sends passwords in clear text and needs TLS",
        "pglink: config: scram_iterations: expected an integer, found a string",
        "pglink: config: reactor_threads: must be between 0 and 1024",
        r#"pglink: config: client_login_timeout: duration "15 seconds" has unknown unit " seconds""#,
        "pglink: config: databases.typos.backend.pool_max_conns: must be > 0",
        "pglink: config: databases.typos.backend.port: must be between 1 and 65535",
        r#"pglink: config: databases.typos.backend.sslmode: invalid value "always": expected one of disable, allow, prefer, require, verify-ca, verify-full"#,
        r#"pglink: config: databases.typos.backend.connect_timeout: invalid duration "ten""#,
        // A type error in the backend leaves the rest of the database checked.
        "pglink: config: databases.semantic.backend.port: expected an integer, found a string",
        "pglink: config: databases.semantic.users[0].password: several secret sources: set exactly one of insecure_value, env_var or aws_secret_arn",
        "pglink: config: databases.semantic.users[1].username: duplicate username: same as databases.semantic.users[0].username",
        "pglink: config: databases.semantic.users[1].password.key: required with aws_secret_arn",
        "pglink: config: databases.semantic.backend.pool_min_idle_conns: 3 idle connections per user × 2 users = 6, more than pool_max_conns (4)",
        "pglink: config: warning: databases.semantic.backend.pool_max_con: unknown key (ignored)",
        "pglink: config: opentelemetry.sampling_rate: 2 is out of range: must be between 0 and 1",
        "pglink: config: opentelemetry.application_name_sql_regex: regular expression has no capture group",
        // ...and type errors in opentelemetry leave its other rules checked.
        "pglink: config: opentelemetry.traceparent_sql_regex: required when opentelemetry.enabled is true",
        "pglink: config: flight_recorder.output_dir: required field is missing",
    ];
    if !cfg!(feature = "otel") {
        expected.push(
            "pglink: config: opentelemetry.enabled: OpenTelemetry support is not compiled into this pglink",
        );
    }
    if cfg!(feature = "metrics") {
        expected.push(r#"pglink: config: prometheus.path: must start with "/""#);
    } else {
        expected.push(
            "pglink: config: prometheus: Prometheus metrics are not compiled into this pglink",
        );
    }
    let lines: Vec<&str> = stderr.lines().collect();
    for want in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "missing line starting with {want:?} in:\n{stderr}"
        );
    }
    assert!(
        lines.iter().all(|l| l.starts_with("pglink: config: ")),
        "unexpected line format:\n{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "a secret value was printed:\n{stderr}"
    );
    // Validation looks nothing up (no DNS for db.internal, no AWS call): quick even for a
    // debug binary started on a loaded machine.
    assert!(
        elapsed < Duration::from_secs(5),
        "validation took {elapsed:?}"
    );
}

#[test]
fn json_syntax_error_names_file_line_and_column() {
    let file = write_temp(
        "syntax.json",
        "{\n  \"databases\": {\n    \"a\": [1,]\n  }\n}\n",
    );
    let (code, _, stderr) = run(&mut pglink(&["-config", file.to_str().unwrap()]));
    assert_eq!(code, 2);
    let want = format!(
        "pglink: config: {}: invalid JSON at line 3, column 13: ",
        file.display()
    );
    assert!(stderr.starts_with(&want), "{stderr}");
}

#[test]
fn unknown_key_is_a_warning_not_an_error() {
    let text = r#"{"databases": {"mydb": {
        "users": [{"username": {"insecure_value": "u"}, "password": {"insecure_value": "p"}}],
        "backend": {"host": "h", "database": "d", "pool_max_conns": 2, "pool_max_con": 3}}}}"#;
    let file = write_temp("unknown.json", text);
    let (code, stdout, stderr) = run(&mut pglink(&["-config", file.to_str().unwrap(), "-check"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "pglink: config: warning: databases.mydb.backend.pool_max_con: unknown key (ignored); did you mean \"pool_max_conns\"?"
        ),
        "{stderr}"
    );
    assert!(stdout.starts_with("pglink: configuration OK"), "{stdout}");
}

#[test]
fn spec_example_passes_check_with_env_vars() {
    let file = fixture("example.json");
    let (code, stdout, stderr) = run(pglink(&["-check", "-config", file.to_str().unwrap()])
        .env("PG_USER", "app")
        .env("PG_PASSWORD", "secret-password"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("(1 databases, 1 users)"), "{stdout}");
    assert!(!stdout.contains("secret-password") && !stderr.contains("secret-password"));
}

#[test]
fn unset_env_var_is_named_with_its_path() {
    let file = fixture("example.json");
    let (code, _, stderr) = run(pglink(&["-check", "-config", file.to_str().unwrap()])
        .env("PG_USER", "app")
        .env_remove("PG_PASSWORD"));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.trim(),
        "pglink: secrets: databases.mydb.users[0].password: environment variable PG_PASSWORD is not set"
    );
}

#[test]
fn valid_config_starts_logs_json_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("pglink-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pglink.json");
    // Nothing connects, so the backend need not exist.
    std::fs::write(
        &file,
        r#"{"listen": "127.0.0.1:0", "tls": {"sslmode": "disable"},
            "databases": {"db": {"users": [{"username": {"insecure_value": "u"},
                                            "password": {"env_var": "PG_PASSWORD"}}],
                                 "backend": {"host": "127.0.0.1", "port": 1, "database": "db",
                                             "pool_max_conns": 1}}}}"#,
    )
    .unwrap();
    let mut child = pglink(&["-config", file.to_str().unwrap(), "-json"])
        .env("PG_PASSWORD", "secret-password")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let msg = v["msg"].as_str().unwrap().to_owned();
        seen.push(msg.clone());
        if msg.starts_with("ready") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|m| m.starts_with("pglink listening on 127.0.0.1:")),
        "{seen:?}"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    assert!(
        !seen
            .iter()
            .chain(&rest)
            .any(|l| l.contains("secret-password"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The messages of the error-level JSON log lines on stderr.
fn logged_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect()
}

/// A configuration of one database, listening on an ephemeral port, with `extra` members.
fn config_with(extra: &str) -> String {
    format!(
        r#"{{"listen": "127.0.0.1:0", "tls": {{"sslmode": "disable"}}, {extra}
            "databases": {{"db": {{"users": [{{"username": {{"insecure_value": "u"}},
                                              "password": {{"insecure_value": "p"}}}}],
                                   "backend": {{"host": "127.0.0.1", "port": 1,
                                               "database": "db", "pool_max_conns": 1}}}}}}}}"#
    )
}

#[test]
fn check_refuses_what_start_refuses() {
    // A directory of its own: valid_config_starts_logs_json_and_stops_on_sigterm removes the
    // shared one when it finishes.
    let dir = std::env::temp_dir().join(format!("pglink-cli-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The flight recorder is implemented: -check accepts it.
    let file = dir.join("flight_recorder.json");
    std::fs::write(
        &file,
        config_with(&format!(
            r#""flight_recorder": {{"output_dir": {:?}}},"#,
            dir.join("flight").to_str().unwrap()
        )),
    )
    .unwrap();
    let (code, stdout, stderr) = run(&mut pglink(&["-config", file.to_str().unwrap(), "-check"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    // Tracing is implemented: -check accepts it, over https too, and checks what the
    // exporter takes from the environment (headers, the CA file of an https collector).
    if cfg!(feature = "otel") {
        let otel = |endpoint: &str| {
            format!(
                r#""opentelemetry": {{"enabled": true, "traceparent_sql_regex": true,
                    "otlp_endpoint": "{endpoint}"}},"#
            )
        };
        let file = dir.join("otel.json");
        std::fs::write(&file, config_with(&otel("http://127.0.0.1:4317"))).unwrap();
        let (code, stdout, stderr) =
            run(&mut pglink(&["-config", file.to_str().unwrap(), "-check"]));
        assert_eq!(code, 0, "{stdout}{stderr}");
        std::fs::write(&file, config_with(&otel("https://collector:4317"))).unwrap();
        let ca = dir.join("otlp-ca.pem");
        std::fs::write(&ca, pglink::tls::generate_self_signed().unwrap().cert_pem).unwrap();
        let check = |env: &[(&str, &Path)]| {
            let mut cmd = pglink(&["-config", file.to_str().unwrap(), "-check", "-json"]);
            for (k, v) in env {
                cmd.env(k, v);
            }
            run(&mut cmd)
        };
        let (code, stdout, stderr) = check(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        let missing = dir.join("no-such-ca.pem");
        let (code, stdout, stderr) = check(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", &missing)]);
        assert_eq!(code, 1, "{stdout}{stderr}");
        let errors = logged_errors(&stderr);
        assert!(
            errors.len() == 1
                && errors[0].contains("opentelemetry: ")
                && errors[0].contains("no-such-ca.pem"),
            "{stderr}"
        );
        let (code, stdout, stderr) = check(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_HEADERS", Path::new("novalue")),
        ]);
        assert_eq!(code, 1, "{stdout}{stderr}");
        let errors = logged_errors(&stderr);
        assert!(
            errors.len() == 1 && errors[0].contains("OTEL_EXPORTER_OTLP_HEADERS"),
            "{stderr}"
        );
    }
    // Prometheus is implemented: -check accepts it (and a build without the feature rejects
    // it as invalid, see invalid_config_lists_every_problem).
    if cfg!(feature = "metrics") {
        let file = dir.join("prometheus.json");
        std::fs::write(
            &file,
            config_with(r#""prometheus": {"listen": "127.0.0.1:0"},"#),
        )
        .unwrap();
        let (code, stdout, stderr) =
            run(&mut pglink(&["-config", file.to_str().unwrap(), "-check"]));
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.contains("configuration OK"), "{stdout}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn taken_metrics_port_fails_the_start_naming_prometheus_listen() {
    if !cfg!(feature = "metrics") {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("pglink-cli-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("taken.json");
    let prometheus = format!(r#""prometheus": {{"listen": "{addr}"}},"#);
    std::fs::write(&file, config_with(&prometheus)).unwrap();
    let (code, _, stderr) = run(&mut pglink(&["-config", file.to_str().unwrap(), "-json"]));
    assert_eq!(code, 1, "{stderr}");
    let errors = logged_errors(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with(&format!(
            "cannot start: prometheus.listen: cannot listen on {addr}:"
        )),
        "{errors:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn usage_errors_exit_2() {
    for (args, first_line) in [
        (&[][..], "pglink: -config is required"),
        (&["-json"][..], "pglink: -config is required"),
        (&["-config"][..], "pglink: flag needs an argument: -config"),
        (
            &["-config", "x.json", "-verbose"][..],
            "pglink: flag provided but not defined: -verbose",
        ),
        (
            &["-config", "x.json", "stray"][..],
            "pglink: unexpected argument \"stray\"",
        ),
    ] {
        let (code, stdout, stderr) = run(&mut pglink(args));
        assert_eq!(code, 2, "{args:?}");
        assert!(stdout.is_empty());
        let mut lines = stderr.lines();
        assert_eq!(lines.next(), Some(first_line), "{args:?}: {stderr}");
        assert_eq!(
            lines.next(),
            Some("usage: pglink -config FILE [-json] [-check]")
        );
    }
}

#[test]
fn missing_file_exits_2() {
    let (code, _, stderr) = run(&mut pglink(&["-config=/nonexistent/pglink.json"]));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("pglink: config: /nonexistent/pglink.json: cannot read file: "),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_field() {
    for flag in ["-help", "--help", "-h"] {
        let (code, stdout, stderr) = run(&mut pglink(&[flag]));
        assert_eq!(code, 0);
        assert!(stderr.is_empty());
        assert_eq!(stdout, pglink::config::docs::help_text());
    }
    let (_, help, _) = run(&mut pglink(&["-help"]));
    for section in pglink::config::docs::SECTIONS {
        assert!(help.contains(section.name), "{}", section.name);
        for field in section.fields {
            assert!(
                help.contains(&format!("\n    {}\n", field.name)),
                "{}.{}",
                section.name,
                field.name
            );
        }
    }
    for e in pglink::config::docs::ENUMS {
        for v in e.values {
            assert!(help.contains(&format!("\n    {}\n", v.name)), "{}", v.name);
        }
    }
    for flag in pglink::config::docs::FLAGS {
        assert!(
            help.contains(&format!("\n    {}", flag.name)),
            "{}",
            flag.name
        );
    }
}
