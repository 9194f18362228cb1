//! The `pglink` command line. It lives in the binary, not the library: installing signal
//! handlers and a logger is the program's business, never an embedder's.
//!
//! Flags follow Go's `flag` package, as the original pglink did: single dash (`-config FILE`),
//! double dash accepted too, `-config=FILE`, boolean flags as `-json` or `-json=false`. The
//! flags themselves are documented in the field table ([`pglink::config::docs::FLAGS`]).
//!
//! Exit status: 0 success, 1 startup failure (including unreadable secrets), 2 usage error or
//! invalid configuration.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use pglink::observe::log::Format as LogFormat;

use pglink::config::{self, LoadError, LoadedConfig, SecretsOptions, docs};

/// Exit status for a bad command line or an invalid configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when pglink cannot start (e.g. a secret cannot be read).
pub const EXIT_FAILURE: u8 = 1;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Run {
        config: PathBuf,
        json_logs: bool,
        /// `-check`: validate configuration and secrets, then exit.
        check_only: bool,
    },
}

/// Entry point of the `pglink` binary.
pub fn main() -> ExitCode {
    run(std::env::args_os().skip(1))
}

/// Runs the command line `args` (without the program name).
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match parse_args(args.into_iter().collect()) {
        Err(message) => {
            eprintln!("pglink: {message}");
            eprint!("{}", docs::usage());
            ExitCode::from(EXIT_USAGE)
        }
        Ok(Command::Help) => {
            print!("{}", docs::help_text());
            ExitCode::SUCCESS
        }
        Ok(Command::Run {
            config,
            json_logs,
            check_only,
        }) => load_and_start(config, json_logs, check_only),
    }
}

fn load_and_start(file: PathBuf, json_logs: bool, check_only: bool) -> ExitCode {
    let format = if json_logs {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    if let Err(message) = pglink::observe::log::init(format) {
        eprintln!("pglink: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let parsed = match config::load_file(&file) {
        Ok(parsed) => parsed,
        Err(e) => {
            print_problems("warning: ", &e.warnings);
            print_problems("", &e.errors);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    print_problems("warning: ", &parsed.warnings);
    let options = if check_only {
        SecretsOptions::once()
    } else {
        SecretsOptions::for_config(&parsed.config)
    };
    let loaded = match LoadedConfig::from_parsed(&file, parsed, Some(options)) {
        Ok(loaded) => loaded,
        Err(LoadError::Secrets(e)) => {
            for problem in &e.problems {
                eprintln!("pglink: secrets: {problem}");
            }
            return ExitCode::from(EXIT_FAILURE);
        }
        Err(LoadError::Config(e)) => {
            print_problems("", &e.errors);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if check_only {
        // Refuse what a start would refuse, with the same message and status.
        if let Err(e) = pglink::server::refuse_unimplemented(&loaded.config) {
            log::error!("cannot start: {e}");
            loaded.secrets.stop();
            return ExitCode::from(EXIT_FAILURE);
        }
        let secrets = loaded.secrets.current();
        let users: usize = secrets.databases.values().map(Vec::len).sum();
        println!(
            "pglink: configuration OK: {} ({} databases, {users} users)",
            loaded.path.display(),
            secrets.databases.len()
        );
        loaded.secrets.stop();
        return ExitCode::SUCCESS;
    }
    start(loaded, json_logs)
}

fn print_problems(prefix: &str, problems: &[config::Problem]) {
    for problem in problems {
        eprintln!("pglink: config: {prefix}{problem}");
    }
}

/// Runs the proxy for a validated configuration whose secrets are resolved (and, for AWS
/// secrets, being refreshed by `loaded.secrets`) until SIGINT or SIGTERM. The first signal
/// stops gracefully (open transactions may finish); a second one exits at once.
pub fn start(loaded: LoadedConfig, _json_logs: bool) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Order matters: the conditional exit sees the flag set by an earlier signal.
        let registered = signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()));
        if let Err(e) = registered {
            eprintln!("pglink: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    // SIGUSR1 asks for a flight-recorder snapshot: noted (so that it never ends the
    // process), and passed on by the loop below.
    let snapshot = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(SIGUSR1, snapshot.clone()) {
        eprintln!("pglink: cannot install signal handlers: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    if let Err(e) = signal_hook::flag::register(SIGHUP, reload.clone()) {
        eprintln!("pglink: cannot install signal handlers: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let path = loaded.path.clone();
    let tls = pglink::server::describe_tls(&loaded.config);
    let server = match pglink::Server::start_loaded(loaded) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    log::info!("ready ({tls})");
    // Until a signal, or the admin console's SHUTDOWN.
    while !stop.load(Ordering::Acquire) && !server.is_stopping() {
        if reload.swap(false, Ordering::AcqRel) {
            log::info!("SIGHUP: reloading {}", path.display());
            // Problems are logged (each with its JSON path) and counted by the server.
            let _ = server.reload_file(&path);
        }
        if snapshot.swap(false, Ordering::AcqRel) {
            // The recorder's thread logs where the snapshot went.
            match server.flight_recorder_signal() {
                Ok(()) => log::info!("SIGUSR1: flight-recorder snapshot requested"),
                Err(e) => log::warn!("SIGUSR1: no flight-recorder snapshot: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log::info!("shutting down: waiting for open transactions (a second signal exits now)");
    server.shutdown();
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// Parses the command line. `Err` carries a message for the user.
pub fn parse_args(args: Vec<OsString>) -> Result<Command, String> {
    let normalized = normalize(args)?;
    let mut args = pico_args::Arguments::from_vec(normalized);
    let mut help = false;
    while args.contains("--help") {
        help = true;
    }
    let mut json_logs = false;
    while args.contains("--json") {
        json_logs = true;
    }
    let mut check_only = false;
    while args.contains("--check") {
        check_only = true;
    }
    let mut config = None;
    loop {
        match args.opt_value_from_os_str("--config", |s| Ok::<_, String>(PathBuf::from(s))) {
            Ok(Some(path)) => config = Some(path),
            Ok(None) => break,
            Err(_) => return Err("flag needs an argument: -config".into()),
        }
    }
    let rest = args.finish();
    if let Some(extra) = rest.first() {
        return Err(format!("unexpected argument {:?}", extra.to_string_lossy()));
    }
    if help {
        return Ok(Command::Help);
    }
    match config {
        Some(config) => Ok(Command::Run {
            config,
            json_logs,
            check_only,
        }),
        None => Err("-config is required".into()),
    }
}

/// Rewrites Go-style flags into the `--name` form pico-args understands, rejecting unknown
/// flags the way Go's `flag` package does.
fn normalize(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.extend(iter.by_ref());
            break;
        }
        let Some(flag) = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-'))
            .filter(|f| !f.is_empty())
        else {
            out.push(arg);
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        match name {
            "config" => {
                out.push("--config".into());
                if let Some(value) = inline {
                    out.push(value.into());
                } else if let Some(value) = iter.next() {
                    // Go takes the next argument as the value even if it starts with '-'.
                    out.push(value);
                }
            }
            "json" | "check" | "help" | "h" => {
                let on = match inline {
                    None => true,
                    Some(v) => parse_bool(v)
                        .ok_or_else(|| format!("invalid boolean value {v:?} for -{name}"))?,
                };
                if on {
                    out.push(
                        if name == "h" {
                            "--help"
                        } else {
                            name_flag(name)
                        }
                        .into(),
                    );
                }
            }
            _ => return Err(format!("flag provided but not defined: -{name}")),
        }
    }
    Ok(out)
}

fn name_flag(name: &str) -> &'static str {
    match name {
        "json" => "--json",
        "check" => "--check",
        _ => "--help",
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(OsString::from).collect())
    }

    fn run_cmd(config: &str, json_logs: bool, check_only: bool) -> Command {
        Command::Run {
            config: config.into(),
            json_logs,
            check_only,
        }
    }

    #[test]
    fn go_style_flags() {
        assert_eq!(
            parse(&["-config", "a.json"]),
            Ok(run_cmd("a.json", false, false))
        );
        assert_eq!(
            parse(&["--config", "a.json", "-json"]),
            Ok(run_cmd("a.json", true, false))
        );
        assert_eq!(
            parse(&["-config=a.json", "--check"]),
            Ok(run_cmd("a.json", false, true))
        );
        assert_eq!(
            parse(&["--config=a=b.json"]),
            Ok(run_cmd("a=b.json", false, false))
        );
        assert_eq!(
            parse(&["-json=false", "-config", "x"]),
            Ok(run_cmd("x", false, false))
        );
        assert_eq!(
            parse(&["-config", "x", "-config", "y"]),
            Ok(run_cmd("y", false, false))
        );
        for help in ["-help", "--help", "-h", "-help=true"] {
            assert_eq!(parse(&[help]), Ok(Command::Help));
        }
        assert_eq!(parse(&["-config", "x", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn bad_command_lines() {
        assert_eq!(parse(&[]), Err("-config is required".into()));
        assert_eq!(parse(&["-json"]), Err("-config is required".into()));
        assert_eq!(
            parse(&["-config"]),
            Err("flag needs an argument: -config".into())
        );
        assert_eq!(
            parse(&["-config", "x", "-bogus"]),
            Err("flag provided but not defined: -bogus".into())
        );
        assert_eq!(
            parse(&["-config", "x", "extra"]),
            Err("unexpected argument \"extra\"".into())
        );
        assert!(parse(&["-json=maybe", "-config", "x"]).is_err());
    }
}
