//! Renders the field table in [`super::docs`] as `-help` text and as README markdown.

use std::fmt::Write as _;

use super::docs::{
    Default, ENUMS, EnumDoc, FLAGS, Field, Kind, NOTES, Required, SECTIONS, Section,
};

const WIDTH: usize = 88;

/// The short usage shown on command-line errors.
pub fn usage() -> String {
    "usage: pglink -config FILE [-json] [-check]\n       pglink -help\n".to_owned()
}

/// The full `-help` text: flags, every configuration section and field, the value tables.
pub fn help_text() -> String {
    let mut out = String::new();
    out.push_str("pglink: PostgreSQL wire-protocol proxy with transaction pooling.\n\n");
    out.push_str("USAGE\n");
    out.push_str("    pglink -config FILE [-json]     run the proxy\n");
    out.push_str("    pglink -config FILE -check      validate the configuration and secrets\n");
    out.push_str("    pglink -help                    print this documentation\n\n");
    out.push_str("OPTIONS\n");
    for flag in FLAGS {
        let head = match flag.arg {
            Some(arg) => format!("{} {arg}", flag.name),
            None => flag.name.to_owned(),
        };
        let _ = writeln!(out, "    {head}    (also {})", flag.aliases);
        let doc = with_extension(flag.doc, flag.extension);
        wrap_into(&mut out, &doc, 8);
    }
    out.push_str("\nCONFIGURATION\n");
    wrap_into(
        &mut out,
        "pglink reads one JSON file. Its sections and fields follow; `<name>` stands for a \
         key you choose and `[]` for any element of an array.",
        4,
    );
    out.push_str("\n  Example\n");
    for line in EXAMPLE.lines() {
        let _ = writeln!(out, "    {line}");
    }
    for section in SECTIONS {
        out.push('\n');
        let _ = writeln!(out, "  {} ({})", section.name, location(section));
        wrap_into(&mut out, section.summary, 4);
        for field in section.fields {
            out.push('\n');
            let _ = writeln!(out, "    {}", field.name);
            let mut facts = vec![type_text(field.kind)];
            match field.required {
                Required::Yes => facts.push("required".into()),
                Required::When(when) => facts.push(format!("required {when}")),
                Required::No => {}
            }
            match field.default {
                Default::Json(json) => facts.push(format!("default {json}")),
                Default::Text(text) => facts.push(format!("default: {text}")),
                Default::None => {}
            }
            wrap_into(&mut out, &facts.join("; "), 8);
            wrap_into(&mut out, &field_doc(field), 8);
        }
    }
    for doc in ENUMS {
        out.push('\n');
        let _ = writeln!(out, "  {} values", doc.name);
        wrap_into(&mut out, doc.summary, 4);
        for value in doc.values {
            let _ = writeln!(out, "    {}", value.name);
            wrap_into(&mut out, value.doc, 8);
        }
    }
    for note in NOTES {
        out.push('\n');
        let _ = writeln!(out, "{}", note.title.to_uppercase());
        wrap_into(&mut out, note.body, 4);
    }
    out
}

/// The README's generated configuration reference (between the markers).
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "pglink reads a single JSON file, given with `-config`. The tables below list every \
         section and field; `<name>` stands for a key you choose and `[]` for any element of \
         an array. Fields marked *pglink extension* are additions of this implementation.\n\n",
    );
    out.push_str("### Command-line options\n\n");
    out.push_str("| Flag | Also accepted as | Description |\n|---|---|---|\n");
    for flag in FLAGS {
        let name = match flag.arg {
            Some(arg) => format!("`{} {arg}`", flag.name),
            None => format!("`{}`", flag.name),
        };
        let aliases = flag
            .aliases
            .split(", ")
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {name} | {aliases} | {} |",
            cell(&md_extension(&with_extension(flag.doc, flag.extension)))
        );
    }
    out.push('\n');
    write_example(&mut out);
    for section in SECTIONS {
        let _ = writeln!(out, "### {}\n", section.name);
        let _ = writeln!(
            out,
            "Location: {}. {}\n",
            location_markdown(section),
            section.summary
        );
        out.push_str("| Field | Type | Required | Default | Description |\n");
        out.push_str("|---|---|---|---|---|\n");
        for field in section.fields {
            let required = match field.required {
                Required::Yes => "yes".to_owned(),
                Required::No => "no".to_owned(),
                Required::When(when) => when.to_owned(),
            };
            let default = match field.default {
                Default::None => String::new(),
                Default::Json(json) => format!("`{json}`"),
                Default::Text(text) => format!("*{text}*"),
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {required} | {} | {} |",
                field.name,
                type_markdown(field.kind),
                cell(&default),
                cell(&md_extension(&field_doc(field)))
            );
        }
        out.push('\n');
    }
    for doc in ENUMS {
        write_enum_markdown(&mut out, doc);
    }
    for note in NOTES {
        let _ = writeln!(out, "### {}\n\n{}\n", note.title, note.body);
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn write_example(out: &mut String) {
    out.push_str("### Example\n\n```json\n");
    out.push_str(EXAMPLE);
    out.push_str("```\n\n");
}

/// A small complete configuration (kept in sync with `tests/fixtures/config/example.json`).
pub const EXAMPLE: &str = r#"{
  "listen": [":5432"],
  "auth_method": "scram-sha-256",
  "max_client_connections": 1000,
  "tls": {
    "sslmode": "prefer",
    "generate_cert": true
  },
  "databases": {
    "mydb": {
      "users": [
        {
          "username": {"env_var": "PG_USER"},
          "password": {"env_var": "PG_PASSWORD"}
        }
      ],
      "backend": {
        "host": "postgres.example.com",
        "port": 5432,
        "database": "mydb",
        "pool_max_conns": 20,
        "pool_min_idle_conns": 5,
        "sslmode": "require"
      }
    }
  }
}
"#;

fn write_enum_markdown(out: &mut String, doc: &EnumDoc) {
    let _ = writeln!(out, "### {}\n\n{}\n", doc.name, doc.summary);
    out.push_str("| Value | Description |\n|---|---|\n");
    for value in doc.values {
        let _ = writeln!(out, "| `{}` | {} |", value.name, cell(value.doc));
    }
    out.push('\n');
}

fn location(section: &Section) -> &'static str {
    section.location
}

fn location_markdown(section: &Section) -> String {
    if section.location == "top level" {
        return section.location.to_owned();
    }
    section
        .location
        .split(", ")
        .map(|l| format!("`{l}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn field_doc(field: &Field) -> String {
    let mut doc = with_extension(field.doc, field.extension);
    if field.sensitive {
        doc.push_str(" Never printed in logs or messages.");
    }
    doc
}

fn md_extension(doc: &str) -> String {
    doc.replace("(pglink extension)", "*(pglink extension)*")
}

fn with_extension(doc: &str, extension: bool) -> String {
    if extension {
        format!("{doc} (pglink extension)")
    } else {
        doc.to_owned()
    }
}

/// The type as shown in `-help`.
pub(crate) fn type_text(kind: Kind) -> String {
    match kind {
        Kind::String => "string".into(),
        Kind::Path => "string (path)".into(),
        Kind::Bool => "boolean".into(),
        Kind::Integer { min, max } => integer_type(min, max),
        Kind::Number { min, max } => format!("number ({min:.1} to {max:.1})"),
        Kind::Duration => "duration".into(),
        Kind::Enum(doc) => format!("string ({})", doc.name),
        Kind::ListenList => "string or array of strings (addresses)".into(),
        Kind::Listen => "string (address)".into(),
        Kind::Address => "string (address or socket path)".into(),
        Kind::Regex => "boolean or string (regular expression)".into(),
        Kind::StringList => "array of strings".into(),
        Kind::StringMap => "object of strings".into(),
        Kind::Section(s) => format!("object ({})", s.name),
        Kind::Map(s) => format!("object of {} by name", s.name),
        Kind::List(s) => format!("array of {}", s.name),
    }
}

fn type_markdown(kind: Kind) -> String {
    let link = |name: &str| format!("[{name}](#{})", name.to_lowercase());
    match kind {
        Kind::Enum(doc) => format!("string ({})", link(doc.name)),
        Kind::Section(s) => link(s.name),
        Kind::Map(s) => format!("object of {}", link(s.name)),
        Kind::List(s) => format!("array of {}", link(s.name)),
        Kind::Duration => "[duration](#durations)".into(),
        other => type_text(other),
    }
}

fn integer_type(min: u64, max: u64) -> String {
    match (min, max) {
        (0, m) if m >= u64::from(u32::MAX) => "integer (≥ 0)".into(),
        (1, m) if m >= u64::from(u32::MAX) => "integer (≥ 1)".into(),
        (min, max) => format!("integer ({min} to {max})"),
    }
}

/// Escapes text for a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Appends `text` word-wrapped at [`WIDTH`] columns with `indent` spaces.
fn wrap_into(out: &mut String, text: &str, indent: usize) {
    let mut line_len = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line_len > 0 && line_len + 1 + len > WIDTH {
            out.push('\n');
            line_len = 0;
        }
        if line_len == 0 {
            out.extend(std::iter::repeat_n(' ', indent));
            line_len = indent;
        } else {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += len;
    }
    if line_len > 0 {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_indents() {
        let mut s = String::new();
        wrap_into(&mut s, &"word ".repeat(40), 4);
        assert!(
            s.lines()
                .all(|l| l.len() <= WIDTH && l.starts_with("    word"))
        );
    }

    #[test]
    fn help_mentions_every_field_and_value() {
        let help = help_text();
        for section in SECTIONS {
            assert!(help.contains(section.name));
            for field in section.fields {
                assert!(
                    help.contains(&format!("    {}\n", field.name)),
                    "{}",
                    field.name
                );
            }
        }
        for doc in ENUMS {
            for v in doc.values {
                assert!(help.contains(v.name));
            }
        }
    }

    #[test]
    fn example_parses() {
        let loaded = crate::config::parse(EXAMPLE).unwrap();
        assert!(loaded.warnings.is_empty());
    }
}
