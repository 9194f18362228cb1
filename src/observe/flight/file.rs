//! Snapshot files: their names (UTC time to the millisecond, and the trigger) and their
//! atomic writing (a temporary name in the same directory, then a rename), so a reader never
//! sees half a file.

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a snapshot file could not be written.
#[derive(Debug)]
pub enum FileError {
    /// `output_dir` could not be created.
    CreateDir { dir: PathBuf, error: io::Error },
    /// The temporary file could not be written.
    Write { path: PathBuf, error: io::Error },
    /// It could not be renamed to its final name.
    Rename { path: PathBuf, error: io::Error },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::CreateDir { dir, error } => {
                write!(f, "cannot create {}: {error}", dir.display())
            }
            FileError::Write { path, error } => {
                write!(f, "cannot write {}: {error}", path.display())
            }
            FileError::Rename { path, error } => {
                write!(f, "cannot rename to {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for FileError {}

/// `pglink-flight-20261205T123456.789Z-signal.json`.
pub fn name(at: SystemTime, trigger: &str) -> String {
    format!("pglink-flight-{}-{trigger}.json", utc_compact(at))
}

/// Writes `contents` to `dir/name` atomically (creating `dir` if needed); its path.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf, FileError> {
    std::fs::create_dir_all(dir).map_err(|error| FileError::CreateDir {
        dir: dir.to_owned(),
        error,
    })?;
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(FileError::Write { path: temp, error });
    }
    if let Err(error) = std::fs::rename(&temp, &path) {
        let _ = std::fs::remove_file(&temp);
        return Err(FileError::Rename { path, error });
    }
    Ok(path)
}

/// `20261205T123456.789Z`: sorts as it reads, and has no `:` (awkward in file names).
pub fn utc_compact(at: SystemTime) -> String {
    let (date, (h, m, s), ms) = utc_parts(at);
    format!("{}T{h:02}{m:02}{s:02}.{ms:03}Z", date.replace('-', ""))
}

/// `2026-12-05T12:34:56.789Z` (RFC 3339).
pub fn utc_rfc3339(at: SystemTime) -> String {
    let (date, (h, m, s), ms) = utc_parts(at);
    format!("{date}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// The date (`YYYY-MM-DD`), time of day and milliseconds of `at` in UTC (before 1970 counts
/// as 1970).
fn utc_parts(at: SystemTime) -> (String, (u64, u64, u64), u32) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, d) = civil_from_days(days);
    (
        format!("{y:04}-{mo:02}-{d:02}"),
        (rem / 3600, rem % 3600 / 60, rem % 60),
        since.subsec_millis(),
    )
}

/// Year, month and day of the `days`th day after 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century year), 2026-12-05 12:34:56.789.
        assert_eq!(utc_rfc3339(at(951_782_400, 1)), "2000-02-29T00:00:00.001Z");
        assert_eq!(
            utc_rfc3339(at(1_796_474_096, 789)),
            "2026-12-05T12:34:56.789Z"
        );
        assert_eq!(utc_compact(at(1_796_474_096, 789)), "20261205T123456.789Z");
        assert_eq!(
            name(at(1_796_474_096, 7), "slow_query"),
            "pglink-flight-20261205T123456.007Z-slow_query.json"
        );
    }

    #[test]
    fn writes_atomically_and_creates_the_directory() {
        let dir = std::env::temp_dir().join(format!("pglink-flight-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nested = dir.join("a/b");
        let path = write_atomically(&nested, "x.json", b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let names: Vec<_> = std::fs::read_dir(&nested)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.json"], "no temporary file left");
        // A file where the directory should be: a typed error, not a panic.
        let blocked = dir.join("file");
        std::fs::write(&blocked, b"").unwrap();
        let e = write_atomically(&blocked.join("sub"), "x.json", b"{}").unwrap_err();
        assert!(matches!(e, FileError::CreateDir { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
