//! Durations as written in `pglink.json`.
//!
//! Two spellings are accepted, because configs written for the Go original use both:
//! Go-style strings (`"1h"`, `"5m30s"`, `"250ms"`, `"1.5h"`, `"300us"`) and plain numbers of
//! seconds, either as a JSON number (`5`, `0.5`) or as a numeric string (`"5"`, which is how the
//! spec writes `connect_timeout`). Negative durations are rejected.
//!
//! Values are printed back in a compact Go-compatible form (`"1h30m"`, `"250ms"`, `"0s"`) so a
//! printed config parses to the same value.

use std::fmt::Write as _;
use std::time::Duration;

/// Units in the order Go's `time.ParseDuration` knows them, with their length in nanoseconds.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration string: Go syntax, or a bare non-negative number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') {
        return Err(format!("duration {text:?} must not be negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if is_plain_number(s) {
        return seconds_from_str(s).ok_or_else(|| invalid(text));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} is missing a unit (use e.g. \"30s\")"))?;
        let (number, tail) = rest.split_at(num_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid(text));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(|| {
                format!("duration {text:?} has unknown unit {unit:?} (use ns, us, ms, s, m or h)")
            })?;
        total = total
            .checked_add(scaled(number, scale).ok_or_else(|| invalid(text))?)
            .ok_or_else(|| invalid(text))?;
        rest = tail;
    }
    nanos_to_duration(total).ok_or_else(|| invalid(text))
}

/// Converts a JSON number of seconds.
pub fn from_seconds_f64(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() {
        return Err("duration must be a finite number of seconds".into());
    }
    if secs < 0.0 {
        return Err(format!("duration {secs} must not be negative"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {secs} is too large"))
}

/// The longest duration accepted: Go's (`math.MaxInt64` nanoseconds, about 292 years). It
/// also keeps `Instant + duration` from overflowing anywhere a setting is added to the clock.
pub const MAX: Duration = Duration::from_nanos(i64::MAX as u64);

/// Interprets a JSON value as a duration (string or number of seconds), at most [`MAX`].
pub fn from_json(value: &serde_json::Value) -> Result<Duration, String> {
    let d = unbounded_from_json(value)?;
    if d > MAX {
        return Err(format!(
            "duration {value} is too long (at most {}, about 292 years, as in Go)",
            format(MAX)
        ));
    }
    Ok(d)
}

fn unbounded_from_json(value: &serde_json::Value) -> Result<Duration, String> {
    match value {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Ok(Duration::from_secs(secs)),
            (None, Some(f)) => from_seconds_f64(f),
            (None, None) => Err("duration is not a representable number".into()),
        },
        _ => Err(format!(
            "expected a duration such as \"30s\" or a number of seconds, found {}",
            super::schema::json_type_name(value)
        )),
    }
}

/// Formats a duration in the compact Go-compatible form used for printing configs.
pub fn format(d: Duration) -> String {
    let mut nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, scale) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        let n = nanos / scale;
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
            nanos %= scale;
        }
    }
    out
}

fn invalid(text: &str) -> String {
    format!(
        "invalid duration {text:?} (expected e.g. \"30s\", \"5m30s\", \"250ms\" or a number of seconds)"
    )
}

fn is_plain_number(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.chars().any(|c| c.is_ascii_digit())
        && s.matches('.').count() <= 1
}

fn seconds_from_str(s: &str) -> Option<Duration> {
    nanos_to_duration(scaled(s, 1_000_000_000)?)
}

/// `number` (digits with at most one '.') times `scale` nanoseconds, truncated to whole nanos.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(scale)?;
    let mut place = scale;
    for digit in frac.chars() {
        place /= 10;
        if place == 0 {
            break;
        }
        total = total.checked_add(u128::from(digit.to_digit(10)?) * place)?;
    }
    Some(total)
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

/// `#[serde(with = "duration::serde_duration")]` for `Duration` fields.
pub mod serde_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        super::from_json(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn durations_longer_than_gos_are_refused() {
        use serde_json::json;
        assert_eq!(
            from_json(&json!("2562047h")).unwrap(),
            Duration::from_secs(2562047 * 3600)
        );
        assert!(
            from_json(&json!("2562048h"))
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            from_json(&json!(u64::MAX))
                .unwrap_err()
                .contains("too long")
        );
        assert!(from_json(&json!(1e300)).is_err());
        assert_eq!(
            from_json(&MAX.as_secs().into()).unwrap(),
            Duration::from_secs(MAX.as_secs())
        );
    }

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn go_style() {
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("5m30s").unwrap(), Duration::from_secs(330));
        assert_eq!(parse("250ms").unwrap(), ms(250));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("300us").unwrap(), Duration::from_micros(300));
        assert_eq!(parse("300µs").unwrap(), Duration::from_micros(300));
        assert_eq!(parse("7ns").unwrap(), Duration::from_nanos(7));
        assert_eq!(
            parse("1h2m3s4ms").unwrap(),
            Duration::from_millis(3_723_004)
        );
        assert_eq!(parse(".5s").unwrap(), ms(500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("+2s").unwrap(), Duration::from_secs(2));
    }

    #[test]
    fn plain_seconds() {
        assert_eq!(parse("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("1.25").unwrap(), ms(1250));
        assert_eq!(
            from_json(&serde_json::json!(10)).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(from_json(&serde_json::json!(0.5)).unwrap(), ms(500));
        assert_eq!(
            from_json(&serde_json::json!("5")).unwrap(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "", "-1s", "5x", "s", "1.2.3s", "1h-5m", "ms5", "1..5s", "abc", "1 h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(from_json(&serde_json::json!(-1)).is_err());
        assert!(from_json(&serde_json::json!(true)).is_err());
        assert!(parse("99999999999999999999h").is_err());
    }

    #[test]
    fn format_round_trips() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(5400), "1h30m"),
            (ms(250), "250ms"),
            (Duration::from_secs(330), "5m30s"),
            (Duration::from_nanos(1_500), "1us500ns"),
        ] {
            assert_eq!(format(d), s);
            assert_eq!(parse(s).unwrap(), d);
        }
    }
}
