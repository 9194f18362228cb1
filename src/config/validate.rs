//! Second loading pass: rules that span fields, files on disk, and compiled-in features.
//!
//! Runs on the typed [`Config`] left after the schema pass pruned broken values, so that a
//! config with a type error in one database, or in one member of a section, still gets the
//! rest checked. A pruned member reads as its default here; a rule that reads it is skipped
//! (see [`any_pruned`]), so the user hears about the value they wrote, not about a default
//! they never chose.

use std::collections::HashMap;
use std::path::Path as FsPath;

use super::listen::Listen;
use super::path::{Path, Problems};
use super::schema::check_pattern;
use super::types::{
    AuthMethod, BackendConfig, BackendSslMode, Config, DatabaseConfig, FlightRecorderConfig,
    OpenTelemetryConfig, PeerConfig, PrometheusConfig, SecretRef, TlsConfig,
};

/// Checks every cross-field rule, adding errors (and warnings) to `p`.
/// The admin console's virtual database.
pub const ADMIN_DATABASE: &str = "pglink";

pub(crate) fn validate(config: &Config, p: &mut Problems) {
    let root = Path::root();
    if config.auth_method == AuthMethod::Plaintext && !config.client_sslmode().tls_enabled() {
        p.error(
            root.key("auth_method"),
            "plaintext sends passwords in clear text and needs TLS, but tls.sslmode is \
             \"disable\"; enable TLS or use scram-sha-256",
        );
    }
    if let Some(tls) = &config.tls {
        validate_tls(tls, &root.key("tls"), p);
    }
    for (name, db) in &config.databases {
        validate_database(name, db, &root.key("databases").key(name), p);
    }
    if config.databases.contains_key(ADMIN_DATABASE) {
        p.error(
            root.key("databases").key(ADMIN_DATABASE),
            "the database name \"pglink\" is the admin console's; give this one another name",
        );
    }
    for (i, name) in config.admin_users.iter().enumerate() {
        if name.is_empty() {
            p.error(
                root.key("admin_users").index(i),
                "a user name cannot be empty",
            );
        }
    }
    validate_peers(config, &root, p);
    if let Some(otel) = &config.opentelemetry {
        validate_otel(otel, &root.key("opentelemetry"), p);
    }
    if let Some(prom) = &config.prometheus {
        validate_prometheus(prom, &root.key("prometheus"), p);
    }
    if let Some(fr) = &config.flight_recorder {
        validate_flight_recorder(fr, &root.key("flight_recorder"), p);
    }
}

fn validate_tls(tls: &TlsConfig, path: &Path, p: &mut Problems) {
    if any_pruned(p, path, &["cert_path", "cert_private_key_path"]) {
        return;
    }
    // Whether a certificate is needed, and may be generated, depends on these two.
    let settled = !any_pruned(p, path, &["sslmode", "generate_cert"]);
    let enabled = tls.sslmode.tls_enabled();
    match (&tls.cert_path, &tls.cert_private_key_path) {
        (Some(_), None) => p.error(
            path.key("cert_private_key_path"),
            "required when cert_path is set (give both or neither)",
        ),
        (None, Some(_)) => p.error(
            path.key("cert_path"),
            "required when cert_private_key_path is set (give both or neither)",
        ),
        (None, None) if settled && enabled && !tls.generate_cert => p.error(
            path,
            format!(
                "sslmode {} needs a certificate: set cert_path and cert_private_key_path, or \
                 generate_cert: true",
                tls.sslmode
            ),
        ),
        (Some(cert), Some(key)) if settled && enabled => {
            let cert_exists = cert.exists();
            let key_exists = key.exists();
            if tls.generate_cert {
                if cert_exists != key_exists {
                    let (missing, present) = if cert_exists {
                        ("cert_private_key_path", "cert_path")
                    } else {
                        ("cert_path", "cert_private_key_path")
                    };
                    p.error(
                        path.key(missing),
                        format!(
                            "file does not exist but {present} does; with generate_cert both \
                             files must exist (to be used) or neither (to be generated)"
                        ),
                    );
                } else if !cert_exists {
                    for (field, file) in [("cert_path", cert), ("cert_private_key_path", key)] {
                        check_parent_dir(file, &path.key(field), p);
                    }
                }
            } else {
                for (field, file, exists) in [
                    ("cert_path", cert, cert_exists),
                    ("cert_private_key_path", key, key_exists),
                ] {
                    if !exists {
                        p.error(
                            path.key(field),
                            format!(
                                "file {} does not exist (set generate_cert: true to create it)",
                                file.display()
                            ),
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

fn check_parent_dir(file: &FsPath, path: &Path, p: &mut Problems) {
    let parent = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => FsPath::new("."),
    };
    if !parent.is_dir() {
        p.error(
            path,
            format!(
                "cannot write the generated file: directory {} does not exist",
                parent.display()
            ),
        );
    }
}

fn validate_database(name: &str, db: &DatabaseConfig, path: &Path, p: &mut Problems) {
    if name.is_empty() {
        p.error(path, "database name must not be empty");
    }
    let users = path.key("users");
    let mut seen_usernames: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, user) in db.users.iter().enumerate() {
        let user_path = users.index(i);
        validate_secret(&user.username, &user_path.key("username"), p);
        validate_secret(&user.password, &user_path.key("password"), p);
        // Duplicates among values known at load time; resolved values are compared again when
        // secrets are read.
        let known = match (&user.username.insecure_value, &user.username.env_var) {
            _ if p.pruned_within(&user_path.key("username")) => None,
            (Some(v), None) => Some(("value", v.as_str())),
            (None, Some(var)) => Some(("env", var.as_str())),
            _ => None,
        };
        if let Some(known) = known {
            if let Some(first) = seen_usernames.get(&known) {
                p.error(
                    user_path.key("username"),
                    format!(
                        "duplicate username: same as {}.username",
                        users.index(*first)
                    ),
                );
            } else {
                seen_usernames.insert(known, i);
            }
        }
    }
    validate_backend(&db.backend, &path.key("backend"), db.users.len(), p);
    for (i, param) in db.track_extra_parameters.iter().enumerate() {
        if !is_parameter_name(param) {
            p.error(
                path.key("track_extra_parameters").index(i),
                format!("{param:?} is not a valid parameter name"),
            );
        }
    }
}

fn validate_backend(b: &BackendConfig, path: &Path, users: usize, p: &mut Problems) {
    if b.host.trim().is_empty() {
        p.error(path.key("host"), "must not be empty");
    }
    if b.database.is_empty() {
        p.error(path.key("database"), "must not be empty");
    }
    let idle_total = u64::from(b.pool_min_idle_conns) * users as u64;
    if idle_total > u64::from(b.pool_max_conns) {
        p.error(
            path.key("pool_min_idle_conns"),
            format!(
                "{} idle connections per user × {users} users = {idle_total}, more than \
                 pool_max_conns ({})",
                b.pool_min_idle_conns, b.pool_max_conns
            ),
        );
    }
    if b.host.starts_with('/') {
        validate_unix_backend(b, path, p);
    }
    let pair_pruned = any_pruned(p, path, &["sslcert", "sslkey"]);
    match (&b.sslcert, &b.sslkey) {
        _ if pair_pruned => {}
        (Some(_), None) => p.error(path.key("sslkey"), "required when sslcert is set"),
        (None, Some(_)) => p.error(path.key("sslcert"), "required when sslkey is set"),
        _ => {}
    }
    if b.sslpassword.is_some() && b.sslkey.is_none() && !pair_pruned {
        p.warn(path.key("sslpassword"), "ignored without sslkey");
    }
    validate_system_roots(b, path, p);
    let root_file = b.sslrootcert.as_deref().filter(|_| !b.uses_system_roots());
    for (field, file) in [
        ("sslcert", b.sslcert.as_deref()),
        ("sslkey", b.sslkey.as_deref()),
        ("sslrootcert", root_file),
    ] {
        if let Some(file) = file
            && !file.is_file()
        {
            p.error(
                path.key(field),
                format!("file {} does not exist", file.display()),
            );
        }
    }
    for key in b.default_startup_parameters.keys() {
        if !is_parameter_name(key) {
            p.error(
                path.key("default_startup_parameters").key(key),
                format!("{key:?} is not a valid parameter name"),
            );
        }
    }
    if b.pool_max_conn_lifetime_jitter > b.pool_max_conn_lifetime
        && !b.pool_max_conn_lifetime.is_zero()
        && !any_pruned(p, path, &["pool_max_conn_lifetime"])
    {
        p.warn(
            path.key("pool_max_conn_lifetime_jitter"),
            "larger than pool_max_conn_lifetime",
        );
    }
}

/// libpq's rule for `sslrootcert=system`: anyone can get a certificate from a public CA for a
/// name they control, so only `verify-full` means anything against the system store. An
/// unset `sslmode` already became `verify-full` (see `schema::imply_defaults`); a weaker one
/// written in the file is refused, as libpq refuses it.
fn validate_system_roots(b: &BackendConfig, path: &Path, p: &mut Problems) {
    if b.uses_system_roots()
        && b.sslmode != BackendSslMode::VerifyFull
        && !any_pruned(p, path, &["sslmode"])
    {
        p.error(
            path.key("sslmode"),
            format!(
                "weak sslmode \"{}\" may not be used with sslrootcert \"system\" (use \
                 \"verify-full\", as libpq requires)",
                b.sslmode
            ),
        );
    }
}

/// A backend `host` that is a socket directory: no TLS there (PostgreSQL offers TLS only
/// over TCP). libpq silently ignores `sslmode` for unix sockets; pglink refuses the modes
/// that promise encryption or verification rather than connect in plaintext against them.
fn validate_unix_backend(b: &BackendConfig, path: &Path, p: &mut Problems) {
    use super::types::BackendSslMode as M;
    if matches!(b.sslmode, M::Require | M::VerifyCa | M::VerifyFull)
        && !any_pruned(p, path, &["sslmode"])
    {
        p.error(
            path.key("sslmode"),
            format!(
                "{} needs TLS, but host {:?} is a unix socket directory and PostgreSQL offers \
                 TLS only over TCP; use disable or prefer (libpq ignores sslmode for unix \
                 sockets), or a TCP host",
                b.sslmode, b.host
            ),
        );
    }
    for (field, set) in [
        ("sslcert", b.sslcert.is_some()),
        ("sslkey", b.sslkey.is_some()),
        ("sslrootcert", b.sslrootcert.is_some()),
        ("sslpassword", b.sslpassword.is_some()),
    ] {
        if set {
            p.warn(
                path.key(field),
                "ignored: the host is a unix socket (no TLS)",
            );
        }
    }
}

/// PostgreSQL GUC names: letters, digits, `_`, `.` (custom options), `$`.
fn is_parameter_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$'))
}

fn validate_secret(s: &SecretRef, path: &Path, p: &mut Problems) {
    let sources = [
        s.insecure_value.is_some(),
        s.env_var.is_some(),
        s.aws_secret_arn.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    match sources {
        _ if any_pruned(p, path, &["insecure_value", "env_var", "aws_secret_arn"]) => {}
        0 => p.error(
            path,
            "no secret source: set exactly one of insecure_value, env_var or aws_secret_arn",
        ),
        1 => {}
        _ => p.error(
            path,
            "several secret sources: set exactly one of insecure_value, env_var or \
             aws_secret_arn",
        ),
    }
    match (&s.aws_secret_arn, &s.key) {
        _ if any_pruned(p, path, &["aws_secret_arn", "key"]) => {}
        (Some(_), None) => p.error(
            path.key("key"),
            "required with aws_secret_arn (the member of the secret's JSON object to use)",
        ),
        (None, Some(_)) => p.error(path.key("key"), "only valid together with aws_secret_arn"),
        (Some(arn), Some(key)) => {
            if arn.trim().is_empty() {
                p.error(path.key("aws_secret_arn"), "must not be empty");
            }
            if key.is_empty() {
                p.error(path.key("key"), "must not be empty");
            }
        }
        (None, None) => {}
    }
    if s.aws_secret_arn.is_some() && !cfg!(feature = "aws") {
        p.error(
            path.key("aws_secret_arn"),
            "AWS Secrets Manager support is not compiled into this pglink (rebuild with cargo \
             feature \"aws\")",
        );
    }
    if let Some(var) = &s.env_var
        && (var.is_empty() || var.contains(['=', '\0']))
    {
        p.error(
            path.key("env_var"),
            format!("{var:?} is not a valid environment variable name"),
        );
    }
}

fn validate_otel(o: &OpenTelemetryConfig, path: &Path, p: &mut Problems) {
    if !o.enabled {
        return;
    }
    if !cfg!(feature = "otel") {
        p.error(
            path.key("enabled"),
            "OpenTelemetry support is not compiled into this pglink (rebuild with cargo \
             feature \"otel\")",
        );
    }
    if o.traceparent_sql_regex.is_none() && !any_pruned(p, path, &["traceparent_sql_regex"]) {
        p.error(
            path.key("traceparent_sql_regex"),
            "required when opentelemetry.enabled is true (true, false or a regular expression)",
        );
    }
    if o.service_name.is_empty() {
        p.error(path.key("service_name"), "must not be empty");
    }
    if o.traceparent_startup_parameter.is_empty() {
        p.error(
            path.key("traceparent_startup_parameter"),
            "must not be empty",
        );
    }
    // Patterns were compiled by the schema pass; this keeps the rule visible here too.
    for (field, value) in [
        ("traceparent_sql_regex", o.traceparent_sql_regex.as_ref()),
        (
            "application_name_sql_regex",
            Some(&o.application_name_sql_regex),
        ),
    ] {
        if let Some(super::types::BoolOrString::String(pattern)) = value
            && let Err(e) = check_pattern(pattern)
        {
            p.error(path.key(field), e);
        }
    }
}

fn validate_prometheus(prom: &PrometheusConfig, path: &Path, p: &mut Problems) {
    if !cfg!(feature = "metrics") {
        p.error(
            path,
            "Prometheus metrics are not compiled into this pglink (rebuild with cargo feature \
             \"metrics\", or remove the prometheus section)",
        );
    }
    if !prom.path.starts_with('/') {
        p.error(path.key("path"), "must start with \"/\"");
    } else if prom.path == "/healthz"
        || prom.path == "/debug/pools"
        || prom.path.starts_with("/debug/flight-recorder/")
    {
        p.error(
            path.key("path"),
            format!(
                "{} is served by the admin endpoint; choose another path",
                prom.path
            ),
        );
    }
}

/// `peer_id` and `peers`: ids in range, a list only with an id of our own, TLS settings
/// that can be met.
fn validate_peers(config: &Config, root: &Path, p: &mut Problems) {
    if config.peers.is_empty() {
        return;
    }
    if config.peer_id.is_none() && !any_pruned(p, root, &["peer_id"]) {
        p.error(
            root.key("peers"),
            "needs peer_id: cancel keys name their instance only when it has an id",
        );
    }
    for (key, peer) in &config.peers {
        let path = root.key("peers").key(key);
        if parse_peer_id(key).is_none() {
            p.error(
                path.clone(),
                format!("{key:?} is not a peer id: use a number from 1 to 16383"),
            );
        }
        validate_peer(peer, &path, p);
    }
}

/// A `peers` key: the decimal id, 1 to 16383.
pub fn parse_peer_id(key: &str) -> Option<u16> {
    if key.is_empty() || key.len() > 5 || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok().filter(|id| (1..=16383).contains(id))
}

fn validate_peer(peer: &PeerConfig, path: &Path, p: &mut Problems) {
    use super::types::BackendSslMode as M;
    if any_pruned(p, path, &["address", "sslmode", "sslrootcert"]) {
        return;
    }
    let verifies = matches!(peer.sslmode, M::VerifyCa | M::VerifyFull);
    match &peer.address {
        Listen::Unix(_) if matches!(peer.sslmode, M::Require) || verifies => p.error(
            path.key("sslmode"),
            format!(
                "{} needs TLS, but the address is a unix socket, where pglink offers no TLS; \
                 use disable or prefer",
                peer.sslmode
            ),
        ),
        Listen::Tcp(addr) if addr.port == 0 => {
            p.error(path.key("address"), "a peer's port cannot be 0");
        }
        _ => {}
    }
    let system = peer.sslrootcert.as_deref() == Some(FsPath::new("system"));
    match &peer.sslrootcert {
        None if verifies => p.error(
            path.key("sslrootcert"),
            format!("required with sslmode {}", peer.sslmode),
        ),
        Some(_) if system && peer.sslmode != M::VerifyFull => p.error(
            path.key("sslmode"),
            format!(
                "weak sslmode \"{}\" may not be used with sslrootcert \"system\" (use \
                 \"verify-full\", as libpq requires)",
                peer.sslmode
            ),
        ),
        Some(file) if !system && !file.is_file() => p.error(
            path.key("sslrootcert"),
            format!("file {} does not exist", file.display()),
        ),
        _ => {}
    }
}

fn validate_flight_recorder(fr: &FlightRecorderConfig, path: &Path, p: &mut Problems) {
    if fr.output_dir.as_os_str().is_empty() {
        p.error(path.key("output_dir"), "must not be empty");
    } else if fr.output_dir.exists() && !fr.output_dir.is_dir() {
        p.error(
            path.key("output_dir"),
            format!("{} exists and is not a directory", fr.output_dir.display()),
        );
    }
}

/// Whether the schema pass removed any of `fields` of the section at `path`, or something
/// inside one of them.
fn any_pruned(p: &Problems, path: &Path, fields: &[&str]) -> bool {
    fields.iter().any(|f| p.pruned_within(&path.key(f)))
}
