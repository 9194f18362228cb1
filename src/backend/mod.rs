//! The server side: where backends are, how to log in to them, and how a cancel reaches them.
//! Server bytes never panic the process: indexing, `unwrap`, `expect` and `panic!` are denied
//! outside tests, as in `protocol`.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub(crate) mod cancel;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzzing;
pub mod login;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::ServerName;

use login::TlsNegotiation;

/// libpq's `sslmode` for backend connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// Plaintext first; TLS if the server refuses plaintext.
    Allow,
    /// TLS if the server offers it.
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// How the first connection attempt negotiates TLS.
    pub fn first_attempt(self) -> TlsNegotiation {
        match self {
            SslMode::Disable | SslMode::Allow => TlsNegotiation::Disable,
            SslMode::Prefer => TlsNegotiation::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => TlsNegotiation::Require,
        }
    }
}

/// A backend server of one database: over TCP (a host name or IP address) or over a unix
/// socket (a `host` that starts with `/` is the socket's directory, as in libpq).
pub struct Target {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub connect_timeout: Duration,
    pub sslmode: SslMode,
    /// Present unless `sslmode=disable`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: Option<ServerName<'static>>,
    /// `default_startup_parameters`.
    pub startup_params: Vec<(String, String)>,
    /// Resolved addresses, refreshed off the reactor threads (DNS may block); none for a
    /// unix socket.
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    /// `<host>/.s.PGSQL.<port>` when `host` is a socket directory.
    unix: Option<Arc<Path>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

impl Target {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: String,
        port: u16,
        database: String,
        connect_timeout: Duration,
        sslmode: SslMode,
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: Option<ServerName<'static>>,
        startup_params: Vec<(String, String)>,
    ) -> Target {
        Target {
            port,
            database,
            connect_timeout,
            sslmode,
            tls,
            server_name,
            startup_params,
            addrs: RwLock::new(Arc::new(Vec::new())),
            unix: unix_socket_path(&host, port).map(Arc::from),
            host,
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Target {
        Target::for_tests_at("127.0.0.1", 5432)
    }

    /// A plaintext target of database `db` at `host` and `port` (tests and the engine
    /// harness).
    #[cfg(any(test, fuzzing))]
    pub fn for_tests_at(host: &str, port: u16) -> Target {
        Target::new(
            host.into(),
            port,
            "db".into(),
            Duration::from_secs(1),
            SslMode::Disable,
            None,
            None,
            Vec::new(),
        )
    }

    /// The host is a name to look up in DNS (not an IP literal, not a socket directory).
    pub fn needs_dns(&self) -> bool {
        self.unix.is_none() && self.host.parse::<IpAddr>().is_err()
    }

    /// The unix socket to connect to, when `host` is a socket directory.
    pub fn unix_path(&self) -> Option<&Arc<Path>> {
        self.unix.as_ref()
    }

    /// Resolves the host (blocking; call off the reactor threads). A unix socket needs no
    /// resolving.
    pub fn resolve(&self) -> std::io::Result<()> {
        if self.unix.is_some() {
            return Ok(());
        }
        let found: Vec<SocketAddr> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        if found.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolved to no addresses", self.host),
            ));
        }
        *self
            .addrs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(found);
        Ok(())
    }

    /// TCP addresses to try, in order (none for a unix socket).
    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Whether a backend `host` names a unix socket directory (libpq: it starts with `/`).
pub fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// The socket file PostgreSQL listens on in directory `host` for `port`, as libpq finds it:
/// `<host>/.s.PGSQL.<port>`; `None` when `host` is not a directory path.
pub fn unix_socket_path(host: &str, port: u16) -> Option<PathBuf> {
    is_socket_dir(host).then(|| Path::new(host).join(format!(".s.PGSQL.{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_directory_hosts() {
        assert_eq!(
            unix_socket_path("/var/run/postgresql", 5433),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(unix_socket_path("db.example.com", 5432), None);
        let mut t = Target::for_tests();
        assert!(!t.needs_dns() && t.unix_path().is_none());
        t = Target::for_tests_at("/tmp", 5432);
        assert_eq!(
            t.unix_path().map(|p| p.to_path_buf()),
            Some("/tmp/.s.PGSQL.5432".into())
        );
        assert!(!t.needs_dns());
        t.resolve().unwrap();
        assert!(t.addrs().is_empty());
    }
}
