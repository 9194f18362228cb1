//! The minimal build (`--no-default-features`) stays the proxy alone: no async runtime, no AWS
//! SDK, no OTLP transport, no HTTP server or client. No build has an OpenTelemetry crate:
//! pglink encodes OTLP itself. Checked on the resolved dependency graph
//! (`cargo tree`, offline, from Cargo.lock), so it needs no build of either feature set.

use std::process::Command;

/// Crates the minimal build must not contain, each with what brings it in with default
/// features. A name also covers its family: `tokio` covers `tokio-util` and `tokio_x`.
const FEATURE_ONLY: &[(&str, &str)] = &[
    ("tokio", "the AWS SDK's runtime (feature `aws`)"),
    ("aws", "the AWS SDK (feature `aws`)"),
    ("prometheus", "the metrics registry (feature `metrics`)"),
    (
        "hyper",
        "the AWS SDK's and the OTLP exporter's HTTP client (features `aws`, `otel`)",
    ),
    ("tonic", "the OTLP exporter's gRPC client (feature `otel`)"),
];

/// The crate names in `cargo tree -e normal` for this package, with `extra` arguments.
fn crate_names(extra: &[&str]) -> Vec<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "-e", "normal", "--prefix", "none", "--frozen"])
        .args(["--manifest-path", manifest])
        .args(extra)
        .output()
        .expect("run cargo tree");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "cargo tree {extra:?} failed (offline: run `cargo fetch` first if a crate is missing):\n{stderr}"
    );
    let mut names: Vec<String> = String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn matching<'a>(names: &'a [String], pattern: &str) -> Vec<&'a str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|name| {
            name.strip_prefix(pattern)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '_']))
        })
        .collect()
}

#[test]
fn minimal_build_has_no_runtime_sdk_telemetry_or_http() {
    let minimal = crate_names(&["--no-default-features"]);
    assert!(
        minimal.iter().any(|n| n == "rustls") && minimal.iter().any(|n| n == "mio"),
        "cargo tree output not understood: {minimal:?}"
    );
    let full = crate_names(&[]);
    for (pattern, what) in FEATURE_ONLY {
        let found = matching(&minimal, pattern);
        assert!(
            found.is_empty(),
            "--no-default-features pulls in {found:?}, which belong(s) to {what}"
        );
        // The check above can fail: the default build does contain each of them.
        assert!(
            !matching(&full, pattern).is_empty(),
            "no crate matching {pattern:?} in the default build any more: update this test"
        );
    }
}

#[test]
fn no_build_has_the_opentelemetry_sdk() {
    for extra in [
        &[][..],
        &["--no-default-features", "--features", "otel"][..],
    ] {
        let names = crate_names(extra);
        assert!(
            names.iter().any(|n| n == "tonic"),
            "cargo tree {extra:?}: no tonic, the OTLP gRPC client: {names:?}"
        );
        let found = matching(&names, "opentelemetry");
        assert!(
            found.is_empty(),
            "cargo tree {extra:?} has {found:?}: pglink encodes OTLP itself (src/observe/otlp/encode.rs)"
        );
    }
}

#[test]
fn pattern_matching() {
    let names: Vec<String> = [
        "tokio",
        "tokio-util",
        "tokio_x",
        "tokiox",
        "hyper-util",
        "aws-config",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        matching(&names, "tokio"),
        ["tokio", "tokio-util", "tokio_x"]
    );
    assert_eq!(matching(&names, "hyper"), ["hyper-util"]);
    assert_eq!(matching(&names, "aws"), ["aws-config"]);
    assert!(matching(&names, "reqwest").is_empty());
}
