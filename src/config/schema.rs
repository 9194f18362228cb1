//! First loading pass: walk the raw JSON against the field table in [`super::docs`].
//!
//! Working on a `serde_json::Value` rather than deserializing straight into the typed structs
//! lets us report *every* type error (serde stops at the first), warn about unknown keys with
//! their paths, and prune what is broken so that the typed pass and the semantic checks can
//! still run on the rest:
//!
//! - a member whose value is wrong is removed (its default applies, or its section becomes
//!   incomplete), and its path is remembered as pruned ([`Problems::prune`]) so that the
//!   semantic pass does not report rules about a default the user never wrote;
//! - a section stays as long as every required member is left: a database whose backend
//!   `port` is wrong still has its users and pool sizes checked, an `opentelemetry` section
//!   with a bad `sampling_rate` still gets its required-when and compiled-in checks;
//! - a section that lost a required member is removed from its parent in turn (its errors are
//!   already reported); an array with an item that had to go is removed whole, so that the
//!   indices in later messages still match the file;
//! - `null` counts as absent, as in Go's `encoding/json`.
//!
//! After this pass, `serde_json::from_value::<Config>` succeeds on what is left.

use serde_json::{Map, Value};

use super::docs::{CONFIG, EnumDoc, Kind, Required, Section};
use super::duration;
use super::listen::{Listen, ListenAddr};
use super::path::{Path, Problems};
use super::types::SYSTEM_ROOT_CERT;

/// Checks and prunes the whole document. Returns false if it is not an object at all.
pub(crate) fn check_root(value: &mut Value, p: &mut Problems) -> bool {
    let Some(map) = value.as_object_mut() else {
        p.error(
            "",
            format!(
                "the configuration must be a JSON object, found {}",
                json_type_name(value)
            ),
        );
        return false;
    };
    check_section(map, &CONFIG, &Path::root(), p);
    // Keep the typed pass going even when `databases` was missing or broken.
    map.entry("databases")
        .or_insert_with(|| Value::Object(Map::new()));
    true
}

/// Defaults that depend on another field, applied to what [`check_root`] left. One, from
/// libpq: a backend whose `sslrootcert` is `"system"` and that sets no `sslmode` gets
/// `verify-full` (a weaker `sslmode` written in the file is refused by the validation pass).
pub(crate) fn imply_defaults(value: &mut Value) {
    let Some(databases) = value.get_mut("databases").and_then(Value::as_object_mut) else {
        return;
    };
    for db in databases.values_mut() {
        let Some(backend) = db.get_mut("backend").and_then(Value::as_object_mut) else {
            continue;
        };
        let system = backend.get("sslrootcert").and_then(Value::as_str) == Some(SYSTEM_ROOT_CERT);
        if system && !backend.contains_key("sslmode") {
            backend.insert("sslmode".to_owned(), Value::from("verify-full"));
        }
    }
}

/// Checks one object against `section`, removing the members that are wrong. Returns whether
/// what is left is still a `section`: false when a required member is absent or was removed.
fn check_section(
    map: &mut Map<String, Value>,
    section: &Section,
    path: &Path,
    p: &mut Problems,
) -> bool {
    map.retain(|_, v| !v.is_null());
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let member = path.key(&key);
        let Some(field) = section.field(&key) else {
            p.warn(&member, unknown_key_message(&key, section));
            map.remove(&key);
            continue;
        };
        let keep = match map.get_mut(&key) {
            Some(value) => check_value(value, field.kind, &member, p),
            None => true,
        };
        if !keep {
            map.remove(&key);
            p.prune(member);
        }
    }
    let mut complete = true;
    for field in section.fields {
        if field.required == Required::Yes && !map.contains_key(field.name) {
            complete = false;
            let member = path.key(field.name);
            if !p.was_pruned(&member) {
                p.error(member, "required field is missing");
            }
        }
    }
    complete
}

/// Checks one value; returns false when it must be removed from its parent.
fn check_value(value: &mut Value, kind: Kind, path: &Path, p: &mut Problems) -> bool {
    let result: Result<(), String> = match kind {
        Kind::String => expect_string(value).map(drop),
        Kind::Path => match expect_string(value) {
            Ok("") => Err("path must not be empty".into()),
            other => other.map(drop),
        },
        Kind::Bool => match value {
            Value::Bool(_) => Ok(()),
            other => Err(type_error("true or false", other)),
        },
        Kind::Integer { min, max } => check_integer(value, min, max),
        Kind::Number { min, max } => check_number(value, min, max),
        Kind::Duration => duration::from_json(value).map(drop),
        Kind::Enum(doc) => check_enum(value, doc),
        Kind::Listen => expect_string(value).and_then(|s| ListenAddr::parse(s).map(drop)),
        Kind::Address => expect_string(value).and_then(|s| Listen::parse(s).map(drop)),
        Kind::ListenList => return check_listen_list(value, path, p),
        Kind::Regex => check_regex(value),
        Kind::StringList => return check_array(value, path, p, |v| expect_string(v).map(drop)),
        Kind::StringMap => return check_string_map(value, path, p),
        Kind::Section(section) => {
            return match value.as_object_mut() {
                Some(map) => check_section(map, section, path, p),
                None => {
                    p.error(
                        path,
                        type_error(&format!("an object ({})", section.name), value),
                    );
                    false
                }
            };
        }
        Kind::Map(section) => return check_map(value, section, path, p),
        Kind::List(section) => return check_list(value, section, path, p),
    };
    match result {
        Ok(()) => true,
        Err(message) => {
            p.error(path, message);
            false
        }
    }
}

fn check_integer(value: &Value, min: u64, max: u64) -> Result<(), String> {
    let Value::Number(n) = value else {
        return Err(type_error("an integer", value));
    };
    let Some(v) = n.as_u64() else {
        return Err(match n.as_i64() {
            Some(_) if min == 1 => "must be > 0".into(),
            Some(_) => "must not be negative".into(),
            None => format!("expected an integer, found {n}"),
        });
    };
    if v < min || v > max {
        let open_ended = max >= u64::from(u32::MAX);
        return Err(match (v < min, min) {
            _ if !open_ended => format!("must be between {min} and {max}"),
            (true, 1) => "must be > 0".into(),
            (true, _) => format!("must be at least {min}"),
            (false, _) => format!("must be at most {max}"),
        });
    }
    Ok(())
}

fn check_number(value: &Value, min: f64, max: f64) -> Result<(), String> {
    match value.as_f64() {
        Some(v) if (min..=max).contains(&v) => Ok(()),
        Some(v) => Err(format!(
            "{v} is out of range: must be between {min} and {max}"
        )),
        None => Err(type_error("a number", value)),
    }
}

fn check_enum(value: &Value, doc: &EnumDoc) -> Result<(), String> {
    let s = expect_string(value)?;
    if doc.accepted().any(|v| v == s) {
        return Ok(());
    }
    if let Some(message) = doc
        .values
        .iter()
        .find(|v| v.name == s)
        .and_then(|v| v.rejected)
    {
        return Err(message.into());
    }
    Err(format!(
        "invalid value {s:?}: expected one of {}",
        doc.accepted().collect::<Vec<_>>().join(", ")
    ))
}

fn check_regex(value: &Value) -> Result<(), String> {
    match value {
        Value::Bool(_) => Ok(()),
        Value::String(pattern) => check_pattern(pattern),
        other => Err(type_error("true, false or a regular expression", other)),
    }
}

/// A custom extraction pattern must compile and have a capture group.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    match regex::Regex::new(pattern) {
        Ok(re) if re.captures_len() > 1 => Ok(()),
        Ok(_) => {
            Err("regular expression has no capture group; wrap the part to extract in (...)".into())
        }
        Err(e) => {
            let text = e.to_string();
            let reason = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .map(str::to_owned)
                .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "));
            let hint = if reason.contains("unicode-case") {
                " (case-insensitive matching is ASCII-only here: write (?i-u:...) instead of (?i))"
            } else {
                ""
            };
            Err(format!("invalid regular expression: {reason}{hint}"))
        }
    }
}

fn check_listen_list(value: &mut Value, path: &Path, p: &mut Problems) -> bool {
    match value {
        Value::String(s) => match Listen::parse(s) {
            Ok(_) => true,
            Err(e) => {
                p.error(path, e);
                false
            }
        },
        Value::Array(items) if items.is_empty() => {
            p.error(path, "at least one listen address is required");
            false
        }
        Value::Array(_) => check_array(value, path, p, |v| {
            expect_string(v).and_then(|s| Listen::parse(s).map(drop))
        }),
        other => {
            p.error(path, type_error("a string or an array of strings", other));
            false
        }
    }
}

fn check_array(
    value: &mut Value,
    path: &Path,
    p: &mut Problems,
    check: impl Fn(&Value) -> Result<(), String>,
) -> bool {
    let Value::Array(items) = value else {
        p.error(path, type_error("an array", value));
        return false;
    };
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        if let Err(message) = check(item) {
            p.error(path.index(i), message);
            ok = false;
        }
    }
    ok
}

/// Keeps the members that are strings; a map key is its own path, so the rest stays valid.
fn check_string_map(value: &mut Value, path: &Path, p: &mut Problems) -> bool {
    let Value::Object(map) = value else {
        p.error(path, type_error("an object of strings", value));
        return false;
    };
    map.retain(|key, item| match expect_string(item) {
        Ok(_) => true,
        Err(message) => {
            let member = path.key(key);
            p.error(&member, message);
            p.prune(member);
            false
        }
    });
    true
}

fn check_map(value: &mut Value, section: &'static Section, path: &Path, p: &mut Problems) -> bool {
    let Value::Object(map) = value else {
        p.error(
            path,
            type_error(&format!("an object of {}", section.name), value),
        );
        return false;
    };
    if map.is_empty() {
        p.error(path, "at least one entry is required");
    }
    map.retain(|key, entry| {
        let entry_path = path.key(key);
        let keep = check_value(entry, Kind::Section(section), &entry_path, p);
        if !keep {
            p.prune(entry_path);
        }
        keep
    });
    true
}

/// An item that is not a complete `section` takes the whole array with it: removing just the
/// item would shift the indices of the paths reported later.
fn check_list(value: &mut Value, section: &'static Section, path: &Path, p: &mut Problems) -> bool {
    let Value::Array(items) = value else {
        p.error(
            path,
            type_error(&format!("an array of {}", section.name), value),
        );
        return false;
    };
    if items.is_empty() {
        p.error(path, "at least one entry is required");
        return false;
    }
    let mut ok = true;
    for (i, item) in items.iter_mut().enumerate() {
        ok &= check_value(item, Kind::Section(section), &path.index(i), p);
    }
    ok
}

fn expect_string(value: &Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| type_error("a string", value))
}

fn type_error(expected: &str, found: &Value) -> String {
    format!("expected {expected}, found {}", json_type_name(found))
}

/// "a string", "an object", ... for messages. Never includes the value (it may be a secret).
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn unknown_key_message(key: &str, section: &Section) -> String {
    let suggestion = section
        .fields
        .iter()
        .map(|f| (edit_distance(key, f.name), f.name))
        .filter(|(d, name)| *d <= 2.max(name.len() / 5))
        .min_by_key(|(d, _)| *d);
    match suggestion {
        Some((_, name)) => format!("unknown key (ignored); did you mean {name:?}?"),
        None => "unknown key (ignored)".into(),
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != *cb);
            cur.push(substitution.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(mut v: Value) -> (Value, Problems) {
        let mut p = Problems::default();
        check_root(&mut v, &mut p);
        (v, p)
    }

    fn errors(p: &Problems) -> Vec<String> {
        p.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn reports_every_type_error_and_prunes() {
        let (v, p) = run(json!({
            "listen": 5432,
            "scram_iterations": "many",
            "max_client_connections": -3,
            "max_logins_in_progress": 0,
            "auth_method": "scram-sha-256-plus",
            "databases": {
                "good": {"users": [{"username": {"insecure_value": "u"}, "password": {"insecure_value": "p"}}],
                         "backend": {"host": "h", "database": "d", "pool_max_conns": 1}},
                "bad": {"users": [], "backend": {"host": 1, "database": "d", "pool_max_conns": 0, "port": 70000}}
            }
        }));
        let e = errors(&p);
        for want in [
            "listen: expected a string or an array of strings, found a number",
            "scram_iterations: expected an integer, found a string",
            "max_client_connections: must be > 0",
            "max_logins_in_progress: must be > 0",
            "databases.bad.users: at least one entry is required",
            "databases.bad.backend.host: expected a string, found a number",
            "databases.bad.backend.pool_max_conns: must be > 0",
            "databases.bad.backend.port: must be between 1 and 65535",
        ] {
            assert!(e.iter().any(|x| x == want), "missing {want:?} in {e:#?}");
        }
        assert!(e.iter().any(|x| x.starts_with("auth_method: \"scram-sha-256-plus\" cannot be configured directly; use \"scram-sha-256\"")));
        assert!(v["databases"].get("bad").is_none());
        assert!(v["databases"].get("good").is_some());
        assert!(v.get("listen").is_none());
    }

    #[test]
    fn unknown_keys_warn_with_path_and_hint() {
        let (_, p) = run(json!({
            "databases": {"mydb": {"users": [{"username": {"env_var": "U"}, "password": {"env_var": "P"}}],
                "backend": {"host": "h", "database": "d", "pool_max_con": 3, "pool_max_conns": 3, "zzz": 1}}},
            "extra": true
        }));
        let w: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            w.contains(&"databases.mydb.backend.zzz: unknown key (ignored)".to_string()),
            "{w:?}"
        );
        assert!(w.contains(&"extra: unknown key (ignored)".to_string()));
        assert!(w.contains(
            &"databases.mydb.backend.pool_max_con: unknown key (ignored); did you mean \"pool_max_conns\"?".to_string()
        ));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
    }

    #[test]
    fn required_and_null() {
        let (_, p) = run(
            json!({"databases": {"x": {"users": [{"username": null, "password": {"env_var": "P"}}],
            "backend": {"port": null}}}}),
        );
        let e = errors(&p);
        for want in [
            "databases.x.users[0].username: required field is missing",
            "databases.x.backend.host: required field is missing",
            "databases.x.backend.database: required field is missing",
            "databases.x.backend.pool_max_conns: required field is missing",
        ] {
            assert!(e.iter().any(|x| x == want), "missing {want:?} in {e:#?}");
        }
        let (_, p) = run(json!({}));
        assert_eq!(errors(&p), vec!["databases: required field is missing"]);
        let (_, p) = run(json!([]));
        assert_eq!(
            errors(&p),
            vec!["the configuration must be a JSON object, found an array"]
        );
    }

    #[test]
    fn leaf_kinds() {
        assert!(check_integer(&json!(1.5), 0, 10).is_err());
        assert!(check_integer(&json!(10), 0, 10).is_ok());
        assert_eq!(
            check_integer(&json!(11), 0, 10).unwrap_err(),
            "must be between 0 and 10"
        );
        assert_eq!(
            check_integer(&json!(0), 1, u64::from(u32::MAX)).unwrap_err(),
            "must be > 0"
        );
        assert_eq!(
            check_integer(&json!(5_000_000_000u64), 1, u64::from(u32::MAX)).unwrap_err(),
            "must be at most 4294967295"
        );
        assert_eq!(
            check_integer(&json!(-1), 0, u64::MAX).unwrap_err(),
            "must not be negative"
        );
        assert!(check_number(&json!(1.01), 0.0, 1.0).is_err());
        assert!(check_number(&json!(0), 0.0, 1.0).is_ok());
        assert!(check_regex(&json!(true)).is_ok());
        assert!(check_regex(&json!("a(b)")).is_ok());
        assert_eq!(
            check_regex(&json!("ab")).unwrap_err(),
            "regular expression has no capture group; wrap the part to extract in (...)"
        );
        assert!(
            check_regex(&json!("a(b"))
                .unwrap_err()
                .starts_with("invalid regular expression: ")
        );
        assert!(check_regex(&json!(3)).is_err());
        assert_eq!(edit_distance("pool_max_con", "pool_max_conns"), 2);
    }
}
