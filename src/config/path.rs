//! JSON paths (`databases.mydb.users[0].password`) and the problems reported against them.

use std::collections::BTreeSet;
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

    /// Whether this path is `outer` or leads into it (`a.b[0]` is within `a.b`, `a.bc` is not).
    pub fn is_within(&self, outer: &Path) -> bool {
        match self.0.strip_prefix(&outer.0) {
            Some(rest) => outer.0.is_empty() || rest.is_empty() || rest.starts_with(['.', '[']),
            None => false,
        }
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

/// Errors and warnings collected while loading, and the paths of the values the schema pass
/// removed because they were wrong.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Values removed by the schema pass (their errors are in `errors`). The typed config
    /// holds defaults in their place, so rules reading them are skipped.
    pruned: BTreeSet<Path>,
}

impl Problems {
    pub fn error(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.errors.push(Problem::new(path, message));
    }
    pub fn warn(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, message));
    }
    /// Records that the value at `path` was wrong and has been removed.
    pub fn prune(&mut self, path: Path) {
        self.pruned.insert(path);
    }
    /// Whether the value at exactly `path` was removed.
    pub fn was_pruned(&self, path: &Path) -> bool {
        self.pruned.contains(path)
    }
    /// Whether the value at `path`, or anything inside it, was removed.
    pub fn pruned_within(&self, path: &Path) -> bool {
        self.pruned.iter().any(|q| q.is_within(path))
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

    #[test]
    fn within() {
        let tls = Path::root().key("tls");
        assert!(tls.key("cert_path").is_within(&tls));
        assert!(tls.is_within(&tls));
        assert!(tls.is_within(&Path::root()));
        assert!(!Path::root().key("tlsx").is_within(&tls));
        let users = Path::root().key("users");
        assert!(users.index(0).key("password").is_within(&users));
        let mut p = Problems::default();
        p.prune(Path::root().key("a-b"));
        p.prune(Path::root().key("a").key("c"));
        assert!(p.pruned_within(&Path::root().key("a")));
        assert!(!p.was_pruned(&Path::root().key("a")));
        assert!(!p.pruned_within(&Path::root().key("b")));
    }
}
