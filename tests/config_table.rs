//! Keeps the field table (`src/config/docs.rs`) and the typed structs (`src/config/types.rs`)
//! in step, in both directions:
//!
//! - `every_field.json` sets every field of the table to a non-default value; it must load
//!   with no warning (so every key it uses is in the table), every table field must be used by
//!   it, and the typed config, serialized back, must hold exactly those values (so every table
//!   field reaches a struct field, and every struct field is in the table);
//! - a minimal config, serialized back, must hold the table's documented defaults.
//!
//! Needs every feature, since the fixture configures AWS secrets, tracing and metrics.
#![cfg(all(feature = "aws", feature = "otel", feature = "metrics"))]

use std::collections::BTreeSet;

use pglink::config::docs::{self, Default, Kind, Section};
use pglink::config::{REDACTED, duration};
use serde_json::{Value, json};

fn load(text: &str) -> (Value, Vec<String>) {
    let parsed = pglink::config::parse(text).unwrap_or_else(|e| panic!("invalid: {e}"));
    let warnings = parsed.warnings.iter().map(ToString::to_string).collect();
    (serde_json::to_value(&parsed.config).unwrap(), warnings)
}

/// Values as the typed config prints them, for comparison.
fn normalize(kind: Kind, v: &Value) -> Value {
    match (kind, v) {
        (Kind::Duration, v) => json!(duration::format(duration::from_json(v).unwrap())),
        (Kind::ListenList, Value::String(s)) => json!([s]),
        _ => v.clone(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn walk(
    section: &'static Section,
    sample: &Value,
    typed: &Value,
    path: &str,
    used: &mut BTreeSet<(&'static str, &'static str)>,
) {
    let sample = sample
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    let typed = typed
        .as_object()
        .unwrap_or_else(|| panic!("{path}: typed not an object"));
    for key in typed.keys() {
        assert!(
            section.field(key).is_some(),
            "{path}.{key}: the typed struct has a field the table ({}) does not document",
            section.name
        );
    }
    for field in section.fields {
        let Some(s) = sample.get(field.name) else {
            continue;
        };
        used.insert((section.name, field.name));
        let here = join(path, field.name);
        let t = typed.get(field.name).unwrap_or_else(|| {
            panic!("{here}: documented in the table but not kept by the typed struct")
        });
        match field.kind {
            Kind::Section(sub) => walk(sub, s, t, &here, used),
            Kind::Map(sub) => {
                for (k, v) in s.as_object().unwrap() {
                    walk(sub, v, &t[k], &format!("{here}.{k}"), used);
                }
            }
            Kind::List(sub) => {
                for (i, v) in s.as_array().unwrap().iter().enumerate() {
                    walk(sub, v, &t[i], &format!("{here}[{i}]"), used);
                }
            }
            kind => {
                let expected = if field.sensitive {
                    json!(REDACTED)
                } else {
                    normalize(kind, s)
                };
                assert_eq!(t, &expected, "{here}: typed value differs from the sample");
                if let Default::Json(d) = field.default {
                    let d: Value = serde_json::from_str(d).unwrap();
                    assert_ne!(
                        normalize(kind, &d),
                        normalize(kind, s),
                        "{here}: the sample must use a non-default value"
                    );
                }
            }
        }
    }
}

#[test]
fn every_table_field_round_trips_through_the_typed_config() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/config/every_field.json"
    ))
    .unwrap();
    let sample: Value = serde_json::from_str(&text).unwrap();
    let (typed, warnings) = load(&text);
    assert!(warnings.is_empty(), "{warnings:#?}");
    let mut used = BTreeSet::new();
    walk(&docs::CONFIG, &sample, &typed, "", &mut used);
    for section in docs::SECTIONS {
        for field in section.fields {
            assert!(
                used.contains(&(section.name, field.name)),
                "every_field.json does not set {}.{}",
                section.name,
                field.name
            );
        }
    }
}

/// Checks that fields absent from `sample` hold the table's default in `typed`.
fn check_defaults(
    section: &'static Section,
    sample: &Value,
    typed: &Value,
    path: &str,
    seen: &mut usize,
) {
    for field in section.fields {
        let here = join(path, field.name);
        match (sample.get(field.name), field.kind) {
            (Some(s), Kind::Section(sub)) => {
                check_defaults(sub, s, &typed[field.name], &here, seen)
            }
            (Some(s), Kind::Map(sub)) => {
                for (k, v) in s.as_object().unwrap() {
                    check_defaults(sub, v, &typed[field.name][k], &here, seen);
                }
            }
            (Some(_), _) => {}
            (None, kind) => {
                if let Default::Json(d) = field.default {
                    let d: Value = serde_json::from_str(d).unwrap();
                    let t = typed
                        .get(field.name)
                        .unwrap_or_else(|| panic!("{here}: absent from typed"));
                    assert_eq!(
                        normalize(kind, t),
                        normalize(kind, &d),
                        "{here}: documented default differs"
                    );
                    *seen += 1;
                }
            }
        }
    }
}

#[test]
fn documented_defaults_are_the_real_defaults() {
    let dummy = "tests/fixtures/config/dummy.pem";
    let sample = json!({
        "tls": {"cert_path": dummy, "cert_private_key_path": dummy},
        "databases": {"app": {
            "users": [{"username": {"insecure_value": "u"}, "password": {"insecure_value": "p"}}],
            "backend": {"host": "h", "database": "d", "pool_max_conns": 1}
        }},
        "opentelemetry": {},
        "prometheus": {},
        "flight_recorder": {"output_dir": "/tmp/pglink-flight", "triggers": {}},
        "peer_id": 1,
        "peers": {"2": {"address": "10.0.0.2:6432"}}
    });
    let (typed, warnings) = load(&sample.to_string());
    assert!(warnings.is_empty());
    let mut seen = 0;
    check_defaults(&docs::CONFIG, &sample, &typed, "", &mut seen);
    let documented = docs::SECTIONS
        .iter()
        .flat_map(|s| s.fields)
        .filter(|f| matches!(f.default, Default::Json(_)))
        .count();
    assert_eq!(seen, documented, "every documented default was checked");
}
