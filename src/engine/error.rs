//! Why a server connection could not be made, or was lost.

use std::fmt;
use std::sync::Arc;

use super::io::Failure;
use crate::backend::login::LoginError;
use crate::protocol::{Severity, SqlState};

/// A server connection's failure.
#[derive(Debug)]
pub enum ServerError {
    /// No connection could be made (refused, unreachable, the host has no address, no socket).
    Connect(std::io::Error),
    /// `connect_timeout` passed before the login finished.
    Timeout,
    /// The driver lost the connection (the server closed it, I/O or TLS failed).
    Lost(Failure),
    /// The server refused the login, or broke the protocol during it.
    Login(LoginError),
}

impl ServerError {
    /// The SQLSTATE clients waiting for this connection are given.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ServerError::Login(e) => e.sqlstate(),
            ServerError::Connect(_) | ServerError::Timeout | ServerError::Lost(_) => {
                SqlState::CONNECTION_FAILURE
            }
        }
    }

    /// Every one of these ends the server connection: FATAL. (A client that waited for it is
    /// told with the severity its own wait calls for, as [`LoginError::severity`] says.)
    pub fn severity(&self) -> Severity {
        match self {
            ServerError::Login(e) => e.severity(),
            ServerError::Connect(_) | ServerError::Timeout | ServerError::Lost(_) => {
                Severity::Fatal
            }
        }
    }

    /// Whether the server answered and refused (as opposed to never answering usefully).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ServerError::Login(LoginError::Server(_)))
    }

    /// What a waiting client is told, naming the server (`host:port`).
    pub fn for_client(&self, server: &str) -> String {
        match self {
            ServerError::Login(e) => format!("cannot log in to server {server}: {e}"),
            _ => format!("cannot connect to server {server}: {self}"),
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Connect(e) => write!(f, "{e}"),
            ServerError::Timeout => f.write_str("timeout expired"),
            ServerError::Lost(Failure::Eof) => f.write_str("server closed the connection"),
            ServerError::Lost(Failure::Read(e)) => write!(f, "server read failed: {e}"),
            ServerError::Lost(Failure::Write(e)) => write!(f, "server write failed: {e}"),
            ServerError::Lost(Failure::Register(e)) => {
                write!(f, "cannot register server socket: {e}")
            }
            ServerError::Lost(Failure::TlsNotConfigured) => {
                f.write_str("TLS is not configured for this backend")
            }
            ServerError::Lost(Failure::Tls(e)) => write!(f, "TLS setup failed: {e}"),
            ServerError::Login(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// A server connection that could not be had, as the clients that waited for it hear of it:
/// which server (`host:port`) and why. Cheap to clone for every waiter.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    server: Arc<str>,
    error: Arc<ServerError>,
}

impl ConnectFailure {
    pub fn new(server: impl Into<Arc<str>>, error: ServerError) -> ConnectFailure {
        ConnectFailure {
            server: server.into(),
            error: Arc::new(error),
        }
    }

    pub fn sqlstate(&self) -> SqlState {
        self.error.sqlstate()
    }

    pub fn severity(&self) -> Severity {
        self.error.severity()
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error.for_client(&self.server))
    }
}

/// Two failures are the same when they name the same server, code and cause.
impl PartialEq for ConnectFailure {
    fn eq(&self, other: &Self) -> bool {
        self.server == other.server
            && self.sqlstate() == other.sqlstate()
            && self.to_string() == other.to_string()
    }
}

impl Eq for ConnectFailure {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::login::ServerError as Refusal;

    #[test]
    fn texts_and_codes() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = ServerError::Connect(refused);
        assert_eq!(e.sqlstate(), SqlState::CONNECTION_FAILURE);
        assert_eq!(e.severity(), Severity::Fatal);
        assert!(
            e.for_client("h:5432")
                .starts_with("cannot connect to server h:5432: ")
        );
        assert_eq!(
            ServerError::Timeout.for_client("h:1"),
            "cannot connect to server h:1: timeout expired"
        );
        assert_eq!(
            ServerError::Lost(Failure::Eof).to_string(),
            "server closed the connection"
        );
        let login = ServerError::Login(LoginError::Server(Refusal {
            code: SqlState::INVALID_PASSWORD,
            message: "password authentication failed".into(),
            detail: None,
        }));
        assert_eq!(login.sqlstate(), SqlState::INVALID_PASSWORD);
        assert!(login.is_refusal());
        assert!(
            login
                .for_client("h:1")
                .starts_with("cannot log in to server h:1: ")
        );
    }
}
