//! The temporary directory that holds one server's data, socket, certificates and log, and the
//! guarantee that neither it nor the server outlives the test process.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::process::{self, ServerUser};

/// A directory `pglink-pg-<pid>-<n>` under the temp dir, owned by the server user, mode 0700.
///
/// Cleanup happens twice over: `Drop` (which also runs while a panicking test unwinds) stops
/// the server and removes the directory; a detached watchdog does the same as soon as the test
/// process is gone without having dropped it (a static, `process::exit`, SIGKILL).
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    watchdog: Mutex<Option<Child>>,
    /// The process we spawned for the server (`postgres`, or `runuser` around it), reaped
    /// after the postmaster is gone.
    server: Mutex<Option<Child>>,
}

impl Workdir {
    /// Create a fresh directory `pglink-pg-<pid>-<label><n>`.
    pub fn create(user: &ServerUser, label: &str) -> Workdir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let base = temp_base(user);
        let pid = std::process::id();
        let path = loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("pglink-pg-{pid}-{label}{n}"));
            match fs::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("create {}: {e}", path.display()),
            }
        };
        // The watchdog first, so that even a SIGKILL during initdb leaves nothing behind.
        let watchdog = process::spawn_watchdog(&path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod workdir");
        user.chown(&path);
        Workdir {
            path,
            watchdog: Mutex::new(Some(watchdog)),
            server: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PostgreSQL data directory inside (the watchdog looks for `data/postmaster.pid`).
    pub fn data_dir(&self) -> PathBuf {
        self.path.join("data")
    }

    /// PID of the running postmaster according to `postmaster.pid`, if it is alive.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pidfile = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid = pidfile.lines().next()?.trim().parse().ok()?;
        process::process_alive(pid).then_some(pid)
    }

    /// Remember the spawned server process, reaping the previous one.
    pub fn set_server(&self, child: Child) {
        let previous = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(child);
        if let Some(mut previous) = previous {
            let _ = previous.wait();
        }
    }

    /// Whether the spawned server process has exited (then it is reaped).
    pub fn server_exited(&self) -> bool {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        match server.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => false,
            Some(_) => {
                *server = None;
                true
            }
            None => true,
        }
    }

    /// Send `signal` to the postmaster and wait until it is gone, escalating to SIGKILL
    /// after `grace`. Reaps the spawned process.
    pub fn stop_server(&self, signal: &str, grace: Duration) {
        if let Some(pid) = self.postmaster_pid() {
            process::signal(pid, signal);
            if !process::wait_gone(pid, grace) {
                process::signal(pid, "KILL");
                process::wait_gone(pid, Duration::from_secs(5));
            }
        }
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut server) = server {
            // `runuser` exits right after its child; a bare postgres is already gone.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while let Ok(None) = server.try_wait() {
                if std::time::Instant::now() >= deadline {
                    let _ = server.kill();
                    let _ = server.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Immediate shutdown (SIGQUIT), escalating to SIGKILL after 10 s; waits until gone.
    pub fn kill_server(&self) {
        self.stop_server("QUIT", Duration::from_secs(10));
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        self.kill_server();
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "pglink harness: could not remove {}: {e}",
                self.path.display()
            );
        }
        let watchdog = self.watchdog.get_mut().map(Option::take);
        if let Ok(Some(mut watchdog)) = watchdog {
            // Closing its stdin lets it run (finding nothing left to do) and exit.
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
    }
}

/// `std::env::temp_dir()`, unless the server user could not traverse it (then `/tmp`).
fn temp_base(user: &ServerUser) -> PathBuf {
    let base = std::env::temp_dir();
    if user.runuser.is_none() {
        return base;
    }
    let traversable = base
        .ancestors()
        .all(|dir| fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if traversable {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// A fresh directory `pglink-<label>-<pid>` under the temp dir for one test's own files
/// (certificates, sockets), removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("pglink-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `<dir>/<name>` and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
