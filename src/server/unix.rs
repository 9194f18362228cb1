//! Unix-socket listeners (`listen` entries that are absolute paths): creating the socket file
//! safely and removing it again.
//!
//! As PostgreSQL does with its own socket: a file left behind by a process that died is
//! replaced, but only once a connection attempt shows nobody listens on it any more; a live
//! socket makes the start fail, like a TCP port in use. The file gets mode 0777 (PostgreSQL's
//! default `unix_socket_permissions`: access is governed by the directory and by
//! authentication), and is removed on shutdown, if it is still the one pglink created.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::UnixListener;
use socket2::{Domain, SockAddr, Socket, Type};

use super::{BACKLOG, StartError};
use crate::reactor::Listener;

/// Mode of the socket file.
const SOCKET_MODE: u32 = 0o777;

/// A socket file pglink created. Dropping it removes the file, unless something else has
/// replaced it since (compared by device, inode and change time: an inode number is
/// reused at once on some file systems).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    identity: Identity,
}

type Identity = (u64, u64, i64, i64);

fn identity(m: &fs::Metadata) -> Identity {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl SocketFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.identity);
        if ours && let Err(e) = fs::remove_file(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Creates the unix socket `path` and listens on it.
pub(crate) fn bind(path: &Path) -> Result<(Listener, SocketFile), StartError> {
    let err = |error| StartError::Listen {
        addr: path.display().to_string(),
        error,
    };
    remove_stale(path).map_err(err)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket
        .bind(&SockAddr::unix(path).map_err(err)?)
        .map_err(err)?;
    // From here on the file is ours: removed again if anything below fails.
    let meta = fs::symlink_metadata(path).map_err(err)?;
    let mut file = SocketFile {
        path: path.to_path_buf(),
        identity: identity(&meta),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE)).map_err(err)?;
    // The change of mode changed its ctime.
    file.identity = identity(&fs::symlink_metadata(path).map_err(err)?);
    socket.listen(BACKLOG).map_err(err)?;
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(socket));
    let listener = Listener::Unix {
        listener,
        path: Arc::from(path),
    };
    Ok((listener, file))
}

/// Removes a socket file nobody listens on any more; fails if something answers on it, or if
/// the path is something other than a socket (pglink never deletes other files).
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    // Bounded: a live listener with a full backlog makes a blocking connect wait.
    match crate::backend::cancel::unix_connect(path, std::time::Duration::from_secs(2)) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket file {}", path.display());
            fs::remove_file(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Waited for: something is there, just busy.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on this socket (and not accepting)",
            ))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pglink-unix-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn stale_file_replaced_live_one_refused_removed_on_drop() {
        let dir = temp_dir("bind");
        let path = dir.join(".s.PGSQL.1");
        // A stale socket: bound, then its listener closed without removing the file.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (listener, file) = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        // A live one.
        let again = bind(&path).unwrap_err().to_string();
        assert!(again.contains("another process is listening"), "{again}");
        assert!(path.exists());
        drop(listener);
        drop(file);
        assert!(!path.exists());
        // Not a socket: left alone.
        fs::write(&path, "x").unwrap();
        let refused = bind(&path).unwrap_err().to_string();
        assert!(refused.contains("not a socket"), "{refused}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "x");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replaced_file_is_not_removed() {
        let dir = temp_dir("replaced");
        let path = dir.join("s");
        let (listener, file) = bind(&path).unwrap();
        drop(listener);
        fs::remove_file(&path).unwrap();
        fs::write(&path, "someone else's").unwrap();
        drop(file);
        assert!(path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
