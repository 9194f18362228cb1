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
pub mod login;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
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

/// A backend server of one database.
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
    /// Resolved addresses, refreshed off the reactor threads (DNS may block).
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
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
            host,
            port,
            database,
            connect_timeout,
            sslmode,
            tls,
            server_name,
            startup_params,
            addrs: RwLock::new(Arc::new(Vec::new())),
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Target {
        Target::new(
            "127.0.0.1".into(),
            5432,
            "db".into(),
            Duration::from_secs(1),
            SslMode::Disable,
            None,
            None,
            Vec::new(),
        )
    }

    /// The host is an IP literal: no DNS needed, ever.
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// Resolves the host (blocking; call off the reactor threads).
    pub fn resolve(&self) -> std::io::Result<()> {
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

    /// Addresses to try, in order.
    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
