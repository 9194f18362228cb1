//! A small `log` backend: one line per record on stderr, human text or JSON lines.
//!
//! The level comes from `PGLINK_LOG` (`error`, `warn`, `info` (default), `debug`, `trace`),
//! optionally followed by per-target overrides: `PGLINK_LOG=info,rustls=debug`. Records are
//! formatted into one buffer and written with a single `write_all`, so lines from different
//! threads never interleave.
//!
//! A record's key-values (`log::info!(client:% = addr, user = name; "...")`) become fields of
//! a JSON line, and `key=value` after the message of a text line; empty values are left out.
//! Connection lines carry `client` (the client's address), `database`, `user`, `conn` (the
//! client's connection id, its BackendKeyData pid) and `backend_pid` (the PostgreSQL
//! backend's) where they apply. Nothing logs a secret, nor SQL text below `trace`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Key, Value, VisitSource, VisitValue};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// An optional value as a log field: left out when absent.
pub struct Field<T>(pub Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Field<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Parsed `PGLINK_LOG` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    default: LevelFilter,
    /// (target prefix, level), longest prefix wins.
    overrides: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Parses `level[,target=level]*`. Unknown words are errors so typos do not go unnoticed.
    pub fn parse(spec: &str) -> Result<Filter, String> {
        let mut filter = Filter {
            default: LevelFilter::Info,
            overrides: Vec::new(),
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((target, level)) => filter
                    .overrides
                    .push((target.trim().to_owned(), parse_level(level)?)),
                None => filter.default = parse_level(part)?,
            }
        }
        // rustls is chatty at debug; keep it at warn unless asked for explicitly.
        if !filter.overrides.iter().any(|(t, _)| t == "rustls") {
            filter
                .overrides
                .push(("rustls".to_owned(), filter.default.min(LevelFilter::Warn)));
        }
        filter
            .overrides
            .sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(filter)
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.overrides
            .iter()
            .find(|(prefix, _)| target.starts_with(prefix.as_str()))
            .map_or(self.default, |(_, level)| *level)
    }

    fn max(&self) -> LevelFilter {
        self.overrides
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, |a, b| a.max(b))
    }
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.trim().parse::<LevelFilter>().map_err(|_| {
        format!("PGLINK_LOG: unknown level {s:?} (use error, warn, info, debug, trace or off)")
    })
}

struct Logger {
    format: Format,
    filter: Filter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.filter.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_record(self.format, SystemTime::now(), record);
        // Nothing sensible to do if stderr is gone.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger. `PGLINK_LOG` is read here; an invalid value is returned as an error.
/// Calling it twice is harmless (the first logger stays).
pub fn init(format: Format) -> Result<(), String> {
    let filter = match std::env::var("PGLINK_LOG") {
        Ok(spec) => Filter::parse(&spec)?,
        Err(_) => Filter::parse("")?,
    };
    let max = filter.max();
    if log::set_boxed_logger(Box::new(Logger { format, filter })).is_ok() {
        log::set_max_level(max);
    }
    Ok(())
}

fn format_record(format: Format, now: SystemTime, record: &Record<'_>) -> String {
    let mut line = String::with_capacity(128);
    let ts = Timestamp::from(now);
    match format {
        Format::Text => {
            let _ = writeln!(
                line,
                "{ts} {:<5} {}: {}",
                record.level(),
                short_target(record.target()),
                record.args()
            );
            line.pop();
            let _ = record.key_values().visit(&mut Fields {
                line: &mut line,
                format,
            });
            line.push('\n');
        }
        Format::Json => {
            let _ = write!(
                line,
                "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"target\":",
                level_name(record.level())
            );
            push_json_string(&mut line, record.target());
            line.push_str(",\"msg\":");
            push_json_string(&mut line, &record.args().to_string());
            let _ = record.key_values().visit(&mut Fields {
                line: &mut line,
                format,
            });
            line.push_str("}\n");
        }
    }
    line
}

/// A field's value: numbers stay numbers in JSON.
enum Rendered {
    Null,
    Number(String),
    Text(String),
}

impl<'v> VisitValue<'v> for &mut Rendered {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), log::kv::Error> {
        **self = Rendered::Text(value.to_string());
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), log::kv::Error> {
        **self = Rendered::Null;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), log::kv::Error> {
        **self = Rendered::Number(value.to_string());
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), log::kv::Error> {
        **self = Rendered::Number(value.to_string());
        Ok(())
    }
}

/// Appends a record's key-values to its line.
struct Fields<'a> {
    line: &'a mut String,
    format: Format,
}

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let mut rendered = Rendered::Null;
        value.visit(&mut rendered)?;
        let (text, number) = match rendered {
            Rendered::Null => return Ok(()),
            Rendered::Text(t) if t.is_empty() => return Ok(()),
            Rendered::Text(t) => (t, None),
            Rendered::Number(n) => (n.clone(), Some(n)),
        };
        match self.format {
            Format::Json => {
                self.line.push(',');
                push_json_string(self.line, key.as_str());
                self.line.push(':');
                match number {
                    Some(n) => self.line.push_str(&n),
                    None => push_json_string(self.line, &text),
                }
            }
            Format::Text => {
                let quote = text.contains(|c: char| c.is_whitespace() || c == '"' || c == '=');
                let _ = if quote {
                    write!(self.line, " {key}={text:?}")
                } else {
                    write!(self.line, " {key}={text}")
                };
            }
        }
        Ok(())
    }
}

fn short_target(target: &str) -> &str {
    target.strip_prefix("pglink::").unwrap_or(target)
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// UTC time formatted as RFC 3339 with milliseconds, without a date-time crate.
struct Timestamp {
    secs: u64,
    millis: u32,
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            secs: d.as_secs(),
            millis: d.subsec_millis(),
        }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days = self.secs / 86_400;
        let rem = self.secs % 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            self.millis
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_740_000_123);
        assert_eq!(Timestamp::from(t).to_string(), "2026-11-27T00:40:00.123Z");
        assert_eq!(
            Timestamp::from(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(
            Timestamp::from(leap).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn filter_parses_levels_and_overrides() {
        let f = Filter::parse("debug,pglink::pool=trace").unwrap();
        assert_eq!(f.level_for("pglink::pool::shard"), LevelFilter::Trace);
        assert_eq!(f.level_for("pglink::client"), LevelFilter::Debug);
        assert_eq!(f.level_for("rustls::conn"), LevelFilter::Warn);
        assert_eq!(f.max(), LevelFilter::Trace);
        assert!(Filter::parse("verbose").is_err());
        assert_eq!(Filter::parse("").unwrap().level_for("x"), LevelFilter::Info);
    }

    #[test]
    fn key_values_become_fields() {
        let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let none: Option<u32> = None;
        let kvs: [(&str, Value<'_>); 6] = [
            ("client", Value::from_display(&peer)),
            ("database", Value::from("app")),
            ("user", Value::from("al ice")),
            ("conn", Value::from(42u32)),
            ("backend_pid", log::kv::ToValue::to_value(&none)),
            ("empty", Value::from("")),
        ];
        let record = Record::builder()
            .level(Level::Info)
            .target("pglink::engine")
            .args(format_args!("logged in"))
            .key_values(&kvs)
            .build();
        let line = format_record(Format::Json, UNIX_EPOCH, &record);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["database"], "app");
        assert_eq!(v["conn"], 42);
        assert!(v.get("backend_pid").is_none(), "absent values are left out");
        assert!(v.get("empty").is_none(), "empty values are left out");
        assert_eq!(
            format_record(Format::Text, UNIX_EPOCH, &record),
            "1970-01-01T00:00:00.000Z INFO  engine: logged in client=127.0.0.1:5000 \
             database=app user=\"al ice\" conn=42\n"
        );
    }

    #[test]
    fn json_lines_escape_messages() {
        let record = Record::builder()
            .level(Level::Warn)
            .target("pglink::client")
            .args(format_args!("bad \"quote\"\nnext"))
            .build();
        let line = format_record(Format::Json, UNIX_EPOCH, &record);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "bad \"quote\"\nnext");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        let text = format_record(Format::Text, UNIX_EPOCH, &record);
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z WARN  client: bad \"quote\"\nnext\n"
        );
    }
}
