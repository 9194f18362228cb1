//! Rule 1 of the house style: the protocol codec, authentication, the client session, the
//! backend login, the engine (pool policy, server-connection lifecycle, timers), the pool
//! state and the hot-path counters take bytes and `now` and hand back bytes and actions. Only
//! the reactor (and the server shell that starts it) touches sockets, runtimes, TLS sessions,
//! threads or the clock. This test reads the sources of those modules and fails on any use of
//! `mio`, `tokio`, `std::net` (the address values of `core::net` are allowed) or a clock read — and, in the engine, of `rustls` or threads.

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
    // `net::` however imported, but not `core::net`: its addresses are values, not I/O.
    r"(^|[^:\w])net::",
    CLOCK[0],
    CLOCK[1],
];

/// Clock reads: banned in production code. Test code (a file's `#[cfg(test)] mod tests` at
/// its end, and `tests.rs` files) may read the clock once to anchor a virtual one.
const CLOCK: [&str; 2] = [r"\bInstant::now\b", r"\bSystemTime::now\b"];

/// What the engine must not use either: TLS sessions and threads are the driver's.
const ENGINE: &str = "src/engine";
const ENGINE_BANNED: &[&str] = &[
    r"\brustls\b",
    r"\bthread::",
    r"\bstd::thread\b",
    r"\bmpsc\b",
];

fn banned() -> Vec<Regex> {
    BANNED.iter().map(|p| Regex::new(p).unwrap()).collect()
}

fn engine_banned() -> Vec<Regex> {
    BANNED
        .iter()
        .chain(ENGINE_BANNED)
        .map(|p| Regex::new(p).unwrap())
        .collect()
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

/// Where a file's test code starts (as a line index): all of a `tests.rs`, else the
/// `#[cfg(test)] mod tests` at its end, if any.
fn test_code_from(path: &Path, text: &str) -> usize {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return 0;
    }
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod tests {"))
        .unwrap_or(lines.len())
}

/// Banned uses in a file: everything in production code, all but clock reads in tests.
fn file_violations(path: &Path, text: &str, banned: &[Regex]) -> Vec<(usize, String)> {
    let clock: Vec<Regex> = CLOCK.iter().map(|p| Regex::new(p).unwrap()).collect();
    let tests_from = test_code_from(path, text);
    violations(text, banned)
        .into_iter()
        .filter(|(line, code)| *line <= tests_from || !clock.iter().any(|re| re.is_match(code)))
        .collect()
}

#[test]
fn core_modules_stay_sans_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (banned, engine_banned) = (banned(), engine_banned());
    let mut found = Vec::new();
    for entry in SANS_IO {
        let files = rust_files(&root.join(entry));
        assert!(!files.is_empty(), "{entry}: no Rust files (moved?)");
        let banned = if *entry == ENGINE {
            &engine_banned
        } else {
            &banned
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (line, code) in file_violations(&file, &text, banned) {
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
        "use std::net::{self, TcpStream};",
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
        "use core::net::SocketAddr;",
    ] {
        assert_eq!(violations(fine, &banned), Vec::new(), "{fine}");
    }
    let engine = engine_banned();
    for bad in [
        "let tls = rustls::ClientConnection::new(config, name);",
        "std::thread::spawn(move || deliver());",
        "let (tx, rx) = std::sync::mpsc::channel();",
    ] {
        assert_eq!(violations(bad, &engine).len(), 1, "{bad}");
    }
    assert_eq!(
        violations("/// Starts TLS (the driver runs it).", &engine),
        Vec::new()
    );
    // A test may anchor a virtual clock; production code may not read it.
    let code = "fn f() { let t = Instant::now(); }\n#[cfg(test)]\nmod tests {\n    fn g() { Instant::now(); }\n}\n";
    let found = file_violations(Path::new("src/engine/timer.rs"), code, &banned);
    assert_eq!(found.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1]);
    let mio = "#[cfg(test)]\nmod tests {\n    use mio::Poll;\n}\n";
    assert_eq!(
        file_violations(Path::new("src/x.rs"), mio, &banned).len(),
        1
    );
    assert!(file_violations(Path::new("src/engine/tests.rs"), code, &banned).is_empty());
}
