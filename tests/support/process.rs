//! Process plumbing for the PostgreSQL harness: finding the server binaries, the OS user the
//! server runs as, running commands with a deadline, signals, and the cleanup watchdog.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// How to install what the harness needs; part of every "not found" panic.
const INSTALL_HINT: &str = "install PostgreSQL with `apt-get install -y postgresql` (scripts/test \
     installs it), or point PGLINK_PG_BINDIR at a directory holding initdb, postgres and psql";

/// Absolute paths of the PostgreSQL programs the harness runs.
#[derive(Debug)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub initdb: PathBuf,
    pub postgres: PathBuf,
    pub psql: PathBuf,
}

/// The binaries, found once per process by [`locate_binaries`] (panicking with its message).
pub fn binaries() -> &'static PgBinaries {
    static BINARIES: OnceLock<PgBinaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        locate_binaries(std::env::var_os("PGLINK_PG_BINDIR").as_deref())
            .unwrap_or_else(|message| panic!("{message}"))
    })
}

/// Finds the binaries: in `bindir_override` (the value of `PGLINK_PG_BINDIR`) if given, else
/// in `pg_config --bindir` if it holds `initdb` and `postgres`, else in the highest
/// `/usr/lib/postgresql/<version>/bin`. The error is the whole message for the user, saying
/// what is missing and what to install.
pub fn locate_binaries(bindir_override: Option<&OsStr>) -> Result<PgBinaries, String> {
    let bindir = find_bindir(bindir_override)
        .map_err(|why| format!("PostgreSQL not found: {why}; {INSTALL_HINT}"))?;
    let psql = [bindir.join("psql"), PathBuf::from("/usr/bin/psql")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("psql not found in {}; {INSTALL_HINT}", bindir.display()))?;
    Ok(PgBinaries {
        initdb: bindir.join("initdb"),
        postgres: bindir.join("postgres"),
        psql,
        bindir,
    })
}

fn find_bindir(bindir_override: Option<&OsStr>) -> Result<PathBuf, String> {
    let complete = |dir: &Path| ["initdb", "postgres"].iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = bindir_override {
        let dir = PathBuf::from(dir);
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "PGLINK_PG_BINDIR={} lacks initdb or postgres",
                dir.display()
            ))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if complete(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no pg_config on PATH and no /usr/lib/postgresql".to_string())?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| "no /usr/lib/postgresql/<version>/bin with initdb and postgres".to_string())
}

/// The OS account the server runs as: `postgres` when the tests run as root (initdb and
/// postgres refuse root), otherwise the current user.
#[derive(Clone, Debug)]
pub struct ServerUser {
    /// `Some(name)` when commands must go through `runuser -u name`.
    pub runuser: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

pub fn server_user() -> &'static ServerUser {
    static USER: OnceLock<ServerUser> = OnceLock::new();
    USER.get_or_init(|| {
        let me = fs::metadata("/proc/self").expect("stat /proc/self");
        if me.uid() != 0 {
            return ServerUser {
                runuser: None,
                uid: me.uid(),
                gid: me.gid(),
            };
        }
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let (uid, gid) = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == "postgres")
            .map(|f| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
            .unwrap_or_else(|| {
                panic!("running as root but there is no `postgres` OS user to run the server as; {INSTALL_HINT}")
            });
        ServerUser {
            runuser: Some("postgres".into()),
            uid,
            gid,
        }
    })
}

impl ServerUser {
    /// A command for `program` (absolute path) that runs as this user, with the `PG*`
    /// environment of the outer shell removed.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = match &self.runuser {
            Some(user) => {
                let mut c = Command::new(runuser_path());
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        clear_pg_env(&mut cmd);
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        cmd
    }

    /// Make `path` belong to this user (a no-op unless running as root).
    pub fn chown(&self, path: &Path) {
        if self.runuser.is_some() {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

fn runuser_path() -> &'static Path {
    [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.is_file())
    .unwrap_or(Path::new("runuser"))
}

/// Remove every `PG*` variable (PGHOST, PGPORT, PGSSLMODE, ...) inherited from the outer
/// environment so it cannot redirect or alter what a test runs.
pub fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(&key);
        }
    }
}

/// Run `cmd` to completion, killing it after `timeout`. Stdout and stderr are captured.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{:?} did not finish within {timeout:?}; stderr so far: {}",
                cmd.get_program(),
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            ));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Send `signal` (a name such as `QUIT` or `KILL`) to `pid` with kill(1). Returns whether it
/// was delivered.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a live (not zombie) process `pid` exists.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Wait until `pid` is gone; false if it is still alive after `timeout`.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Script of the cleanup watchdog. Its stdin is a pipe whose only writer is the test process,
/// so `read` returns the moment that process is gone, however it died. `$1` is the directory to
/// remove; `$1/data/postmaster.pid` names the server to stop (read then, so restarts count).
const WATCHDOG_SCRIPT: &str = r#"
read -r _
alive() { [ -e "/proc/$1" ] && ! grep -qs '^State:[[:space:]]*[ZX]' "/proc/$1/status"; }
pm=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pm" ] && kill -s QUIT "$pm" 2>/dev/null; then
  i=0
  while alive "$pm" && [ "$i" -lt 200 ]; do sleep 0.02; i=$((i+1)); done
  kill -s KILL "$pm" 2>/dev/null
fi
rm -rf "$1"
"#;

/// Start a detached watchdog that stops the server whose data directory is `dir/data` and
/// removes `dir` once the returned child's stdin is closed: when it is dropped, or when the
/// test process exits for any reason (including SIGKILL; the kernel closes the pipe). It runs
/// in its own process group so a terminal's Ctrl-C does not take it down with the tests.
pub fn spawn_watchdog(dir: &Path) -> Child {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("pglink-watchdog")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn cleanup watchdog")
}

/// Render a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}
