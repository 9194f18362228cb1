//! Unit tests of the loading passes: one test per rule, each on a small valid base config with
//! one thing changed.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;

fn base() -> Value {
    json!({
        "databases": {
            "mydb": {
                "users": [
                    {"username": {"insecure_value": "alice"}, "password": {"insecure_value": "pw"}},
                    {"username": {"env_var": "PGLINK_TEST_USER"}, "password": {"env_var": "PGLINK_TEST_PW"}}
                ],
                "backend": {"host": "db.internal", "database": "app", "pool_max_conns": 10}
            }
        }
    })
}

/// Applies `(json pointer, value)` edits to [`base`]; `Value::Null` deletes.
fn with(edits: &[(&str, Value)]) -> Value {
    let mut v = base();
    for (pointer, value) in edits {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut v
        } else {
            v.pointer_mut(parent)
                .unwrap_or_else(|| panic!("no {parent}"))
        };
        let obj = target.as_object_mut().unwrap();
        if value.is_null() {
            obj.remove(key);
        } else {
            obj.insert(key.to_owned(), value.clone());
        }
    }
    v
}

fn errors_of(v: &Value) -> Vec<String> {
    match parse(&v.to_string()) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[track_caller]
fn assert_error(edits: &[(&str, Value)], want: &str) {
    let errors = errors_of(&with(edits));
    assert!(
        errors.iter().any(|e| e == want),
        "expected {want:?} in {errors:#?}"
    );
}

#[track_caller]
fn assert_error_starts(edits: &[(&str, Value)], want: &str) {
    let errors = errors_of(&with(edits));
    assert!(
        errors.iter().any(|e| e.starts_with(want)),
        "expected {want:?}... in {errors:#?}"
    );
}

#[track_caller]
fn assert_ok(edits: &[(&str, Value)]) -> ParsedConfig {
    match parse(&with(edits).to_string()) {
        Ok(p) => p,
        Err(e) => panic!("unexpected errors: {e}"),
    }
}

const BACKEND: &str = "/databases/mydb/backend";
const USER0: &str = "/databases/mydb/users/0";

#[test]
fn defaults() {
    let c = assert_ok(&[]).config;
    assert_eq!(
        c.listen,
        vec![Listen::Tcp(ListenAddr::parse(":16432").unwrap())]
    );
    assert_eq!(c.auth_method, AuthMethod::ScramSha256);
    assert_eq!(c.scram_iterations, 4096);
    assert_eq!(c.max_client_connections, 1000);
    assert_eq!(c.client_sslmode(), SslMode::Prefer);
    assert_eq!(c.client_tls(), CertSource::GenerateInMemory);
    assert_eq!(c.reactor_threads, 0);
    assert!(c.effective_reactor_threads() >= 1);
    assert_eq!(c.client_login_timeout, Duration::from_secs(15));
    assert_eq!(c.max_logins_in_progress, 256);
    assert_eq!(c.secret_refresh(), Some(Duration::from_secs(300)));
    let db = &c.databases["mydb"];
    assert_eq!(db.pool_acquire_timeout(), Duration::from_millis(1000));
    assert_eq!(db.path, "databases.mydb");
    assert_eq!(db.name, "mydb");
    assert_eq!(db.users[1].path, "databases.mydb.users[1]");
    let b = &db.backend;
    assert_eq!(b.port, 5432);
    assert_eq!(b.sslmode, BackendSslMode::Prefer);
    assert_eq!(b.connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(
        (
            b.statement_cache_capacity,
            b.description_cache_capacity,
            b.prepared_statement_cache_size
        ),
        (512, 512, 1000)
    );
    assert_eq!(b.max_conn_lifetime(), Some(Duration::from_secs(3600)));
    assert_eq!(b.max_conn_idle_time(), Some(Duration::from_secs(1800)));
    assert_eq!(b.health_check_period(), Some(Duration::from_secs(60)));
    assert!(c.opentelemetry.is_none() && c.prometheus.is_none() && c.flight_recorder.is_none());
}

#[test]
fn section_defaults() {
    let mut edits = vec![("/flight_recorder", json!({"output_dir": "/tmp/pglink-fr"}))];
    if cfg!(feature = "metrics") {
        edits.push(("/prometheus", json!({})));
    }
    if cfg!(feature = "otel") {
        edits.push((
            "/opentelemetry",
            json!({"enabled": true, "traceparent_sql_regex": true}),
        ));
    }
    let c = assert_ok(&edits).config;
    let fr = c.flight_recorder.unwrap();
    assert_eq!(fr.min_age, Duration::from_secs(10));
    assert_eq!(fr.max_bytes, 10_485_760);
    assert_eq!(fr.periodic(), None);
    assert_eq!(fr.triggers, FlightRecorderTriggers::default());
    assert!(fr.triggers.on_signal);
    assert_eq!(fr.triggers.cooldown, Duration::from_secs(60));
    if let Some(p) = c.prometheus {
        assert_eq!(p.listen.to_string(), ":9090");
        assert_eq!(p.path, "/metrics");
    }
    if let Some(o) = c.opentelemetry {
        assert_eq!(o.service_name, "pglink");
        assert_eq!(o.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(o.sampling_rate, 1.0);
        assert_eq!(o.traceparent_startup_parameter, "traceparent");
        assert!(o.traceparent_regex().is_some());
        assert!(o.application_name_regex().is_none());
    }
}

#[test]
fn listen_forms_and_tls_block_defaults() {
    let c = assert_ok(&[
        ("/listen", json!("6432")),
        ("/tls", json!({"generate_cert": true})),
    ])
    .config;
    assert!(matches!(&c.listen[0], Listen::Tcp(a) if a.is_all_interfaces()));
    assert_eq!(c.client_sslmode(), SslMode::Prefer);
    let c = assert_ok(&[(
        "/listen",
        json!([
            ":1",
            "127.0.0.1:2",
            "[::1]:3",
            "localhost:4",
            "/tmp/.s.PGSQL.5"
        ]),
    )])
    .config;
    assert_eq!(c.listen.len(), 5);
    assert_eq!(c.listen[4], Listen::Unix("/tmp/.s.PGSQL.5".into()));
    assert_error_starts(&[("/listen", json!("/tmp/"))], "listen: listen path");
    assert_error_starts(
        &[("/listen", json!(["nope"]))],
        "listen[0]: listen address \"nope\" has no port",
    );
    assert_error(
        &[("/listen", json!([]))],
        "listen: at least one listen address is required",
    );
}

#[test]
fn json_syntax_error_has_line_and_column() {
    let e = parse("{\n  \"databases\": {,\n}").unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert!(
        e.errors[0]
            .message
            .starts_with("invalid JSON at line 2, column 17: "),
        "{}",
        e.errors[0]
    );
}

#[test]
fn databases_and_users_required() {
    assert_error(
        &[("/databases", json!({}))],
        "databases: at least one entry is required",
    );
    assert_error(
        &[("/databases", Value::Null)],
        "databases: required field is missing",
    );
    assert_error(
        &[("/databases/mydb/users", json!([]))],
        "databases.mydb.users: at least one entry is required",
    );
    assert_error(
        &[(&format!("{BACKEND}/host"), Value::Null)],
        "databases.mydb.backend.host: required field is missing",
    );
    assert_error(
        &[(&format!("{BACKEND}/host"), json!(" "))],
        "databases.mydb.backend.host: must not be empty",
    );
    assert_error(
        &[(&format!("{BACKEND}/database"), Value::Null)],
        "databases.mydb.backend.database: required field is missing",
    );
    assert_error(
        &[(&format!("{BACKEND}/pool_max_conns"), Value::Null)],
        "databases.mydb.backend.pool_max_conns: required field is missing",
    );
    assert_error(
        &[(&format!("{BACKEND}/pool_max_conns"), json!(0))],
        "databases.mydb.backend.pool_max_conns: must be > 0",
    );
}

#[test]
fn duplicate_usernames_known_at_load() {
    assert_error(
        &[(
            &format!("{USER0}/username"),
            json!({"env_var": "PGLINK_TEST_USER"}),
        )],
        "databases.mydb.users[1].username: duplicate username: same as databases.mydb.users[0].username",
    );
    let mut v = base();
    v["databases"]["mydb"]["users"][1]["username"] = json!({"insecure_value": "alice"});
    let errors = errors_of(&v);
    assert!(
        errors.iter().any(|e| e.contains("duplicate username")),
        "{errors:?}"
    );
    assert!(
        !errors.join("\n").contains("alice"),
        "usernames are not echoed: {errors:?}"
    );
}

#[test]
fn min_idle_times_users_within_max() {
    assert_error(
        &[(&format!("{BACKEND}/pool_min_idle_conns"), json!(6))],
        "databases.mydb.backend.pool_min_idle_conns: 6 idle connections per user × 2 users = 12, more than pool_max_conns (10)",
    );
    assert_ok(&[(&format!("{BACKEND}/pool_min_idle_conns"), json!(5))]);
}

#[test]
fn auth_method_values() {
    assert_error(
        &[("/auth_method", json!("md5"))],
        "auth_method: invalid value \"md5\": expected one of plaintext, md5_password, scram-sha-256",
    );
    assert_error_starts(
        &[("/auth_method", json!("scram-sha-256-plus"))],
        "auth_method: \"scram-sha-256-plus\" cannot be configured directly; use \"scram-sha-256\"",
    );
    assert_ok(&[("/auth_method", json!("md5_password"))]);
    assert_ok(&[("/auth_method", json!("plaintext"))]);
}

#[test]
fn plaintext_needs_tls() {
    assert_error_starts(
        &[
            ("/auth_method", json!("plaintext")),
            ("/tls", json!({"sslmode": "disable"})),
        ],
        "auth_method: plaintext sends passwords in clear text and needs TLS",
    );
}

#[test]
fn sslmode_values_both_sides() {
    assert_error(
        &[(
            "/tls",
            json!({"sslmode": "verify-full", "generate_cert": true}),
        )],
        "tls.sslmode: invalid value \"verify-full\": expected one of disable, allow, prefer, require",
    );
    assert_error(
        &[(&format!("{BACKEND}/sslmode"), json!("sometimes"))],
        "databases.mydb.backend.sslmode: invalid value \"sometimes\": expected one of disable, allow, prefer, require, verify-ca, verify-full",
    );
    let c = assert_ok(&[(&format!("{BACKEND}/sslmode"), json!("verify-full"))]).config;
    assert_eq!(
        c.databases["mydb"].backend.sslmode,
        BackendSslMode::VerifyFull
    );
    let c = assert_ok(&[("/tls", json!({"sslmode": "disable"}))]).config;
    assert_eq!(c.client_tls(), CertSource::Disabled);
}

#[test]
fn certificate_paths() {
    let dir = std::env::temp_dir().join(format!("pglink-cfg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("c.pem");
    let key = dir.join("k.pem");
    let cert_s = cert.to_str().unwrap();
    let key_s = key.to_str().unwrap();
    std::fs::remove_file(&cert).ok();
    std::fs::remove_file(&key).ok();

    assert_error(
        &[("/tls", json!({"cert_path": cert_s}))],
        "tls.cert_private_key_path: required when cert_path is set (give both or neither)",
    );
    assert_error(
        &[(
            "/tls",
            json!({"cert_private_key_path": key_s, "generate_cert": true}),
        )],
        "tls.cert_path: required when cert_private_key_path is set (give both or neither)",
    );
    assert_error(
        &[("/tls", json!({"sslmode": "require"}))],
        "tls: sslmode require needs a certificate: set cert_path and cert_private_key_path, or generate_cert: true",
    );
    assert_error(
        &[(
            "/tls",
            json!({"cert_path": cert_s, "cert_private_key_path": key_s}),
        )],
        &format!(
            "tls.cert_path: file {cert_s} does not exist (set generate_cert: true to create it)"
        ),
    );
    // generate_cert: absent files are where the generated pair goes.
    let c = assert_ok(&[(
        "/tls",
        json!({"cert_path": cert_s, "cert_private_key_path": key_s, "generate_cert": true}),
    )])
    .config;
    assert_eq!(
        c.client_tls(),
        CertSource::Files {
            cert: &cert,
            key: &key,
            generate_if_missing: true
        }
    );
    assert_error_starts(
        &[(
            "/tls",
            json!({"cert_path": "/nonexistent-dir/c.pem", "cert_private_key_path": key_s, "generate_cert": true}),
        )],
        "tls.cert_path: cannot write the generated file: directory /nonexistent-dir does not exist",
    );
    std::fs::write(&cert, "x").unwrap();
    assert_error_starts(
        &[(
            "/tls",
            json!({"cert_path": cert_s, "cert_private_key_path": key_s, "generate_cert": true}),
        )],
        "tls.cert_private_key_path: file does not exist but cert_path does",
    );
    std::fs::write(&key, "x").unwrap();
    assert_ok(&[(
        "/tls",
        json!({"cert_path": cert_s, "cert_private_key_path": key_s}),
    )]);
    // Backend client certificates.
    assert_error(
        &[(&format!("{BACKEND}/sslcert"), json!(cert_s))],
        "databases.mydb.backend.sslkey: required when sslcert is set",
    );
    assert_error(
        &[(
            &format!("{BACKEND}/sslrootcert"),
            json!("/nonexistent/root.pem"),
        )],
        "databases.mydb.backend.sslrootcert: file /nonexistent/root.pem does not exist",
    );
    assert_ok(&[
        (&format!("{BACKEND}/sslcert"), json!(cert_s)),
        (&format!("{BACKEND}/sslkey"), json!(key_s)),
        (&format!("{BACKEND}/sslrootcert"), json!(cert_s)),
        (&format!("{BACKEND}/sslpassword"), json!("pass")),
    ]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sslrootcert_system_is_the_trust_store_and_needs_verify_full() {
    let root = format!("{BACKEND}/sslrootcert");
    let mode = format!("{BACKEND}/sslmode");
    // "system" is not a file: accepted, and without an sslmode it means verify-full (libpq).
    let c = assert_ok(&[(&root, json!("system"))]).config;
    let b = &c.databases["mydb"].backend;
    assert!(b.uses_system_roots());
    assert_eq!(b.sslmode, BackendSslMode::VerifyFull);
    let c = assert_ok(&[(&root, json!("system")), (&mode, json!("verify-full"))]).config;
    assert_eq!(
        c.databases["mydb"].backend.sslmode,
        BackendSslMode::VerifyFull
    );
    // Anything weaker written in the file is refused, as libpq refuses it.
    for weak in ["disable", "allow", "prefer", "require", "verify-ca"] {
        assert_error(
            &[(&root, json!("system")), (&mode, json!(weak))],
            &format!(
                "databases.mydb.backend.sslmode: weak sslmode \"{weak}\" may not be used with \
                 sslrootcert \"system\" (use \"verify-full\", as libpq requires)"
            ),
        );
    }
    // A broken sslmode is reported once, as itself.
    let errors = errors_of(&with(&[(&root, json!("system")), (&mode, json!("always"))]));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("databases.mydb.backend.sslmode: invalid value"));
    // Any other name is a file, which must exist; "./system" is how to name such a file.
    for path in ["./system", "System", "/etc/system"] {
        assert_error(
            &[(&root, json!(path))],
            &format!("databases.mydb.backend.sslrootcert: file {path} does not exist"),
        );
    }
    // Without "system", the sslmode default stays prefer.
    assert_eq!(
        assert_ok(&[]).config.databases["mydb"].backend.sslmode,
        BackendSslMode::Prefer
    );
    // What it means is in the reference (-help and the README table come from it).
    let help = render::help_text();
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for said in [
        "or `\"system\"` for the platform's trust store, as libpq's `sslrootcert=system`",
        "`SSL_CERT_FILE` and `SSL_CERT_DIR`",
        "only `sslmode` `verify-full` is allowed, and it is the default",
        "With `sslrootcert` `\"system\"` the default is `verify-full`",
    ] {
        assert!(flat.contains(said), "-help lacks {said:?}");
    }
}

#[test]
fn ports_and_durations() {
    assert_error(
        &[(&format!("{BACKEND}/port"), json!(0))],
        "databases.mydb.backend.port: must be between 1 and 65535",
    );
    assert_error(
        &[(&format!("{BACKEND}/port"), json!(65536))],
        "databases.mydb.backend.port: must be between 1 and 65535",
    );
    assert_error(
        &[(&format!("{BACKEND}/port"), json!("5432"))],
        "databases.mydb.backend.port: expected an integer, found a string",
    );
    let c = assert_ok(&[
        (&format!("{BACKEND}/connect_timeout"), json!("5")),
        (&format!("{BACKEND}/pool_max_conn_lifetime"), json!("1.5h")),
        (&format!("{BACKEND}/pool_max_conn_idle_time"), json!(90)),
        (&format!("{BACKEND}/pool_health_check_period"), json!("0")),
    ])
    .config;
    let b = &c.databases["mydb"].backend;
    assert_eq!(b.connect_timeout, Duration::from_secs(5));
    assert_eq!(b.pool_max_conn_lifetime, Duration::from_secs(5400));
    assert_eq!(b.pool_max_conn_idle_time, Duration::from_secs(90));
    assert_eq!(b.health_check_period(), None);
    assert_error_starts(
        &[(&format!("{BACKEND}/connect_timeout"), json!("5 minutes"))],
        "databases.mydb.backend.connect_timeout: duration \"5 minutes\" has unknown unit",
    );
    assert_error(
        &[("/client_login_timeout", json!("-1s"))],
        "client_login_timeout: duration \"-1s\" must not be negative",
    );
}

#[test]
fn reactor_threads_bounded() {
    assert_error(
        &[("/reactor_threads", json!(5000))],
        "reactor_threads: must be between 0 and 1024",
    );
    assert_eq!(
        assert_ok(&[("/reactor_threads", json!(4))])
            .config
            .effective_reactor_threads(),
        4
    );
}

#[test]
fn secret_refs() {
    assert_error(
        &[(&format!("{USER0}/password"), json!({}))],
        "databases.mydb.users[0].password: no secret source: set exactly one of insecure_value, env_var or aws_secret_arn",
    );
    assert_error(
        &[(
            &format!("{USER0}/password"),
            json!({"insecure_value": "a", "env_var": "B"}),
        )],
        "databases.mydb.users[0].password: several secret sources: set exactly one of insecure_value, env_var or aws_secret_arn",
    );
    assert_error(
        &[(
            &format!("{USER0}/password"),
            json!({"aws_secret_arn": "arn:aws:secretsmanager:x"}),
        )],
        "databases.mydb.users[0].password.key: required with aws_secret_arn (the member of the secret's JSON object to use)",
    );
    assert_error(
        &[(
            &format!("{USER0}/password"),
            json!({"env_var": "X", "key": "k"}),
        )],
        "databases.mydb.users[0].password.key: only valid together with aws_secret_arn",
    );
    assert_error(
        &[(&format!("{USER0}/password"), json!({"env_var": "A=B"}))],
        "databases.mydb.users[0].password.env_var: \"A=B\" is not a valid environment variable name",
    );
    let aws = [(
        &*format!("{USER0}/password"),
        json!({"aws_secret_arn": "arn:aws:secretsmanager:us-east-1:1:secret:x", "key": "password"}),
    )];
    if cfg!(feature = "aws") {
        assert_ok(&aws);
    } else {
        assert_error(
            &aws,
            "databases.mydb.users[0].password.aws_secret_arn: AWS Secrets Manager support is not compiled into this pglink (rebuild with cargo feature \"aws\")",
        );
    }
}

#[test]
fn debug_output_hides_secrets() {
    let c = assert_ok(&[
        (
            &format!("{USER0}/password"),
            json!({"insecure_value": "hunter2-secret"}),
        ),
        (&format!("{BACKEND}/sslpassword"), json!("key-pass-secret")),
    ])
    .config;
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("hunter2-secret") && !dbg.contains("key-pass-secret"),
        "{dbg}"
    );
    let json = serde_json::to_string(&c).unwrap();
    assert!(
        !json.contains("hunter2-secret") && !json.contains("key-pass-secret"),
        "{json}"
    );
}

#[test]
fn secret_values_never_in_messages() {
    let v = with(&[(
        &format!("{USER0}/password"),
        json!({"insecure_value": 12345678}),
    )]);
    let errors = errors_of(&v);
    assert_eq!(
        errors,
        vec!["databases.mydb.users[0].password.insecure_value: expected a string, found a number"]
    );
}

#[test]
fn opentelemetry_rules() {
    let otel = |o: Value| [("/opentelemetry", o)];
    if !cfg!(feature = "otel") {
        assert_error(
            &otel(json!({"enabled": true, "traceparent_sql_regex": false})),
            "opentelemetry.enabled: OpenTelemetry support is not compiled into this pglink (rebuild with cargo feature \"otel\")",
        );
    }
    assert_error(
        &otel(json!({"enabled": true})),
        "opentelemetry.traceparent_sql_regex: required when opentelemetry.enabled is true (true, false or a regular expression)",
    );
    assert_error(
        &otel(json!({"traceparent_sql_regex": "tp=(\\w+"})),
        "opentelemetry.traceparent_sql_regex: invalid regular expression: unclosed group",
    );
    assert_error(
        &otel(json!({"application_name_sql_regex": "app=\\w+"})),
        "opentelemetry.application_name_sql_regex: regular expression has no capture group; wrap the part to extract in (...)",
    );
    assert_error(
        &otel(json!({"sampling_rate": 1.5})),
        "opentelemetry.sampling_rate: 1.5 is out of range: must be between 0 and 1",
    );
    assert_error(
        &otel(json!({"otlp_protocol": "udp"})),
        "opentelemetry.otlp_protocol: invalid value \"udp\": expected one of grpc, http",
    );
    // Disabled tracing needs neither the feature nor the regex.
    let c = assert_ok(&otel(json!({"enabled": false}))).config;
    assert!(!c.opentelemetry.unwrap().enabled);
}

#[test]
fn prometheus_rules() {
    let prom = |p: Value| [("/prometheus", p)];
    if cfg!(feature = "metrics") {
        assert_error(
            &prom(json!({"path": "metrics"})),
            "prometheus.path: must start with \"/\"",
        );
        assert_error(
            &prom(json!({"path": "/healthz"})),
            "prometheus.path: /healthz is served by the admin endpoint; choose another path",
        );
        assert_error_starts(
            &prom(json!({"listen": "localhost"})),
            "prometheus.listen: listen address \"localhost\" has no port",
        );
        let c = assert_ok(&prom(json!({"listen": "127.0.0.1:9187"}))).config;
        assert_eq!(c.prometheus.unwrap().listen.port, 9187);
    } else {
        assert_error(
            &prom(json!({})),
            "prometheus: Prometheus metrics are not compiled into this pglink (rebuild with cargo feature \"metrics\", or remove the prometheus section)",
        );
    }
}

#[test]
fn flight_recorder_rules() {
    assert_error(
        &[("/flight_recorder", json!({"min_age": "1m"}))],
        "flight_recorder.output_dir: required field is missing",
    );
    assert_error(
        &[("/flight_recorder", json!({"output_dir": ""}))],
        "flight_recorder.output_dir: path must not be empty",
    );
    assert_error(
        &[(
            "/flight_recorder",
            json!({"output_dir": "/tmp", "max_bytes": 0}),
        )],
        "flight_recorder.max_bytes: must be > 0",
    );
    let c = assert_ok(&[(
        "/flight_recorder",
        json!({"output_dir": "/tmp", "periodic_interval": "5m", "triggers": {"on_error": true}}),
    )])
    .config;
    let fr = c.flight_recorder.unwrap();
    assert_eq!(fr.periodic(), Some(Duration::from_secs(300)));
    assert!(fr.triggers.on_error && fr.triggers.on_signal);
}

#[test]
fn startup_parameter_names() {
    assert_error(
        &[(
            &format!("{BACKEND}/default_startup_parameters"),
            json!({"bad name": "x"}),
        )],
        "databases.mydb.backend.default_startup_parameters[\"bad name\"]: \"bad name\" is not a valid parameter name",
    );
    assert_error(
        &[(
            &format!("{BACKEND}/default_startup_parameters"),
            json!({"statement_timeout": 5}),
        )],
        "databases.mydb.backend.default_startup_parameters.statement_timeout: expected a string, found a number",
    );
    assert_error(
        &[(
            "/databases/mydb/track_extra_parameters",
            json!(["search_path", 3]),
        )],
        "databases.mydb.track_extra_parameters[1]: expected a string, found a number",
    );
}

#[test]
fn broken_database_does_not_hide_others() {
    let mut v = base();
    v["databases"]["other"] =
        json!({"users": "nope", "backend": {"host": "h", "database": "d", "pool_max_conns": 1}});
    v["databases"]["mydb"]["backend"]["pool_min_idle_conns"] = json!(100);
    let errors = errors_of(&v);
    assert!(
        errors.contains(
            &"databases.other.users: expected an array of UserConfig, found a string".to_string()
        ),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("databases.mydb.backend.pool_min_idle_conns: 100 idle")),
        "{errors:#?}"
    );
}

#[test]
fn type_error_in_a_member_keeps_the_section_checked() {
    let mut v = with(&[
        (
            "/opentelemetry",
            json!({"enabled": true, "sampling_rate": 2}),
        ),
        (&format!("{BACKEND}/port"), json!("x")),
        (&format!("{BACKEND}/pool_min_idle_conns"), json!(6)),
    ]);
    v["databases"]["mydb"]["users"][1]["username"] = json!({"insecure_value": "alice"});
    let mut want = vec![
        "databases.mydb.backend.port: expected an integer, found a string",
        "opentelemetry.sampling_rate: 2 is out of range: must be between 0 and 1",
        "databases.mydb.users[1].username: duplicate username: same as databases.mydb.users[0].username",
        "databases.mydb.backend.pool_min_idle_conns: 6 idle connections per user × 2 users = 12, more than pool_max_conns (10)",
    ];
    if !cfg!(feature = "otel") {
        want.push(
            "opentelemetry.enabled: OpenTelemetry support is not compiled into this pglink (rebuild with cargo feature \"otel\")",
        );
    }
    want.push(
        "opentelemetry.traceparent_sql_regex: required when opentelemetry.enabled is true (true, false or a regular expression)",
    );
    assert_eq!(errors_of(&v), want);
}

#[test]
fn pruned_members_raise_no_rules_about_their_defaults() {
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/config/dummy.pem"
    );
    for (edits, want) in [
        (
            vec![("/tls", json!({"sslmode": "bogus"}))],
            "tls.sslmode: invalid value \"bogus\": expected one of disable, allow, prefer, require",
        ),
        (
            vec![(
                "/tls",
                json!({"cert_path": "", "cert_private_key_path": key}),
            )],
            "tls.cert_path: path must not be empty",
        ),
        (
            vec![(
                "/tls",
                json!({"sslmode": "require", "generate_cert": "yes"}),
            )],
            "tls.generate_cert: expected true or false, found a string",
        ),
        (
            vec![(
                &*format!("{USER0}/password"),
                json!({"aws_secret_arn": 7, "key": "k"}),
            )],
            "databases.mydb.users[0].password.aws_secret_arn: expected a string, found a number",
        ),
        (
            vec![
                (&*format!("{BACKEND}/sslcert"), json!(key)),
                (&*format!("{BACKEND}/sslkey"), json!("")),
            ],
            "databases.mydb.backend.sslkey: path must not be empty",
        ),
        (
            vec![(
                "/opentelemetry",
                json!({"traceparent_sql_regex": 5, "enabled": false}),
            )],
            "opentelemetry.traceparent_sql_regex: expected true, false or a regular expression, found a number",
        ),
    ] {
        assert_eq!(errors_of(&with(&edits)), vec![want], "{edits:?}");
    }
}

#[test]
fn unknown_keys_are_warnings() {
    let p = assert_ok(&[
        (&format!("{BACKEND}/pool_max_con"), json!(3)),
        ("/colour", json!("blue")),
    ]);
    let w: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|w| w.starts_with("databases.mydb.backend.pool_max_con: unknown key (ignored)")),
        "{w:?}"
    );
    assert!(
        w.contains(&"colour: unknown key (ignored)".to_string()),
        "{w:?}"
    );
}

#[test]
fn load_file_names_the_file() {
    let e = load_file("/nonexistent/pglink.json".as_ref()).unwrap_err();
    assert!(
        e.errors[0]
            .to_string()
            .starts_with("/nonexistent/pglink.json: cannot read file: ")
    );
}

#[test]
fn unix_socket_backend_has_no_tls() {
    let host = (&*format!("{BACKEND}/host"), json!("/var/run/postgresql"));
    let p = assert_ok(std::slice::from_ref(&host));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_ok(&[
        host.clone(),
        (&format!("{BACKEND}/sslmode"), json!("disable")),
    ]);
    for mode in ["require", "verify-ca", "verify-full"] {
        assert_error_starts(
            &[host.clone(), (&format!("{BACKEND}/sslmode"), json!(mode))],
            &format!("databases.mydb.backend.sslmode: {mode} needs TLS, but host"),
        );
    }
    let p = assert_ok(&[
        host,
        (&format!("{BACKEND}/sslrootcert"), json!("/etc/hosts")),
    ]);
    let w: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        vec!["databases.mydb.backend.sslrootcert: ignored: the host is a unix socket (no TLS)"]
    );
}

#[test]
fn peers_need_an_id_of_our_own_valid_ids_and_tls_they_can_have() {
    let peer = |v: Value| json!({ "2": v });
    assert_error(
        &[("/peers", peer(json!({"address": "10.0.0.2:6432"})))],
        "peers: needs peer_id: cancel keys name their instance only when it has an id",
    );
    for key in ["0", "16384", "x", "01x"] {
        assert_error(
            &[
                ("/peer_id", json!(1)),
                ("/peers", json!({ key: {"address": "10.0.0.2:6432"} })),
            ],
            &format!("peers.{key}: {key:?} is not a peer id: use a number from 1 to 16383"),
        );
    }
    assert_error_starts(&[("/peer_id", json!(16384))], "peer_id:");
    assert_error_starts(
        &[
            ("/peer_id", json!(1)),
            (
                "/peers",
                peer(json!({"address": "/run/p/.s.PGSQL.6432", "sslmode": "require"})),
            ),
        ],
        "peers.2.sslmode: require needs TLS, but the address is a unix socket",
    );
    assert_error(
        &[
            ("/peer_id", json!(1)),
            (
                "/peers",
                peer(json!({"address": "10.0.0.2:6432", "sslmode": "verify-full"})),
            ),
        ],
        "peers.2.sslrootcert: required with sslmode verify-full",
    );
    assert_error(
        &[
            ("/peer_id", json!(1)),
            ("/peers", peer(json!({"address": "10.0.0.2:0"}))),
        ],
        "peers.2.address: a peer's port cannot be 0",
    );
    let ok = assert_ok(&[
        ("/peer_id", json!(16383)),
        ("/listen_reuse_port", json!(true)),
        (
            "/peers",
            json!({"16383": {"address": "/run/a/.s.PGSQL.1"}, "1": {"address": "h:1"}}),
        ),
    ]);
    assert_eq!(ok.config.peer_id, Some(16383));
    assert!(ok.config.listen_reuse_port);
}
