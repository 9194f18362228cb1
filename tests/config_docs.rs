//! The README's configuration reference is generated from the field table in
//! `src/config/docs.rs`; this test keeps the two identical.
//!
//! When it fails, run `PGLINK_BLESS=1 cargo test --test config_docs` to rewrite the section.

use pglink::config::docs;

const BEGIN: &str = "<!-- BEGIN GENERATED CONFIG REFERENCE";
const END: &str = "<!-- END GENERATED CONFIG REFERENCE -->";

/// Splits README.md into (before and including the BEGIN line, generated body, END and after).
fn split(readme: &str) -> (&str, &str, &str) {
    let begin = readme
        .find(BEGIN)
        .expect("README.md lacks the BEGIN marker");
    let body_start = begin + readme[begin..].find('\n').expect("BEGIN marker line") + 1;
    let end = readme.find(END).expect("README.md lacks the END marker");
    assert!(end >= body_start, "END marker before BEGIN marker");
    (
        &readme[..body_start],
        &readme[body_start..end],
        &readme[end..],
    )
}

#[test]
fn readme_config_reference_is_generated() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (head, body, tail) = split(&readme);
    let generated = docs::markdown();
    if body == generated {
        return;
    }
    if std::env::var_os("PGLINK_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(path, format!("{head}{generated}{tail}")).unwrap();
        eprintln!("README.md: configuration reference rewritten");
        return;
    }
    panic!(
        "README.md's configuration reference is out of date with src/config/docs.rs.\n\
         Run `PGLINK_BLESS=1 cargo test --test config_docs` to regenerate it."
    );
}

#[test]
fn markdown_covers_every_field_and_value() {
    let md = docs::markdown();
    for section in docs::SECTIONS {
        assert!(
            md.contains(&format!("### {}\n", section.name)),
            "{}",
            section.name
        );
        for field in section.fields {
            assert!(
                md.contains(&format!("| `{}` |", field.name)),
                "{}.{}",
                section.name,
                field.name
            );
        }
    }
    for e in docs::ENUMS {
        for v in e.values {
            assert!(md.contains(&format!("| `{}` |", v.name)), "{}", v.name);
        }
    }
    for flag in docs::FLAGS {
        assert!(md.contains(flag.name), "{}", flag.name);
    }
}

#[test]
fn example_in_docs_matches_fixture() {
    let fixture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/config/example.json"
    ))
    .unwrap();
    let a: serde_json::Value = serde_json::from_str(&fixture).unwrap();
    let md = docs::markdown();
    let start = md.find("```json\n").unwrap() + "```json\n".len();
    let end = start + md[start..].find("```").unwrap();
    let b: serde_json::Value = serde_json::from_str(&md[start..end]).unwrap();
    assert_eq!(a, b);
}
