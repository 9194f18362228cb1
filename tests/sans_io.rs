//! Rule 1 of the house style: the protocol codec, authentication, the client session, the
//! backend login, the pool decisions and the hot-path counters take bytes and `now` and hand
//! back bytes and actions. Only the reactor (and the server shell that starts it) touches
//! sockets, runtimes or the clock. This test reads the sources of those modules and fails on
//! any use of `mio`, `tokio`, `std::net` or a clock read.

use std::path::{Path, PathBuf};

use regex::Regex;

/// Directories (recursively) and files that must stay free of I/O and clock reads.
const SANS_IO: &[&str] = &[
    "src/protocol",
    "src/auth",
    "src/client",
    "src/backend/login.rs",
    "src/pool",
    "src/observe/metrics.rs",
    "src/observe/events.rs",
    "src/engine",
];

/// What they must not use, as patterns over code with `//` comments removed.
const BANNED: &[&str] = &[
    r"\bmio::",
    r"\btokio::",
    r"\buse\s+(mio|tokio)\b",
    r"\bstd::net\b",
    r"\bnet::",
    r"\bInstant::now\b",
    r"\bSystemTime::now\b",
];

fn banned() -> Vec<Regex> {
    BANNED.iter().map(|p| Regex::new(p).unwrap()).collect()
}

/// Rust files at `path` (a file, or a directory searched recursively).
fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The lines of `text` that use something banned, as `(line number, line)`.
fn violations(text: &str, banned: &[Regex]) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split_once("//").map_or(*line, |(code, _)| code);
            banned.iter().any(|re| re.is_match(code))
        })
        .map(|(i, line)| (i + 1, line.trim().to_owned()))
        .collect()
}

#[test]
fn core_modules_stay_sans_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let banned = banned();
    let mut found = Vec::new();
    for entry in SANS_IO {
        let files = rust_files(&root.join(entry));
        assert!(!files.is_empty(), "{entry}: no Rust files (moved?)");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (line, code) in violations(&text, &banned) {
                let file = file.strip_prefix(root).unwrap_or(&file).display();
                found.push(format!("{file}:{line}: {code}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "I/O or clock use in sans-IO modules (take `now` and bytes from the reactor \
         instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_guard_catches_what_it_bans() {
    let banned = banned();
    for bad in [
        "use mio::net::TcpStream;",
        "use tokio::runtime::Runtime;",
        "let s = std::net::TcpStream::connect(addr);",
        "use std::{io, net::SocketAddr};",
        "let now = Instant::now();",
        "let t = std::time::SystemTime::now();",
    ] {
        assert_eq!(violations(bad, &banned).len(), 1, "{bad}");
    }
    for fine in [
        "// tokio-postgres sends Sync after CopyDone; std::net is not used here",
        "fn on_timeout(&mut self, now: Instant) {",
        "let deadline = now + self.timeout; // not Instant::now()",
        "pub struct Mio;",
    ] {
        assert_eq!(violations(fine, &banned), Vec::new(), "{fine}");
    }
}
