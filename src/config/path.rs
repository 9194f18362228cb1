//! JSON paths (`databases.mydb.users[0].password`) and the problems reported against them.

use std::fmt;

/// A JSON path inside `pglink.json`, printed the way users write it.
///
/// Keys that are plain identifiers print as `.key`; others (dots, spaces, empty) print as
/// `["key"]` so the path stays unambiguous.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(String);

impl Path {
    /// The document root (prints as an empty string).
    pub fn root() -> Path {
        Path(String::new())
    }

    /// This path extended by an object key.
    pub fn key(&self, key: &str) -> Path {
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let mut s = self.0.clone();
        if plain {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(key);
        } else {
            s.push('[');
            s.push_str(&serde_json::Value::from(key).to_string());
            s.push(']');
        }
        Path(s)
    }

    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One problem found in a config: where, and what is wrong.
///
/// `path` is the JSON path of the offending value (`databases.mydb.backend.pool_max_conns`), or
/// the file name for problems with the file as a whole (unreadable, not JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl fmt::Display, message: impl Into<String>) -> Problem {
        Problem {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Errors and warnings collected while loading.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Problems {
    pub fn error(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.errors.push(Problem::new(path, message));
    }
    pub fn warn(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_print_like_users_write_them() {
        let p = Path::root()
            .key("databases")
            .key("mydb")
            .key("users")
            .index(0);
        assert_eq!(p.to_string(), "databases.mydb.users[0]");
        assert_eq!(
            Path::root().key("databases").key("my.db").to_string(),
            r#"databases["my.db"]"#
        );
        assert_eq!(Path::root().key("").to_string(), r#"[""]"#);
    }
}
