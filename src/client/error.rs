//! The errors a client session raises itself, each with its SQLSTATE and severity.
//!
//! Every error pglink sends a client on its own account is a [`SessionError`], and every one
//! is written by [`SessionError::encode`], which is the only place that adds the `pglink: `
//! prefix (so clients and logs can tell pglink's errors from the server's) and counts the
//! error. The texts are part of the interface: drivers, tests and people's scripts match
//! them, so they change only on purpose.
//!
//! Severity decides what happens to the session: a FATAL error ends it (the session goes to
//! `Closed` and stays there, whatever arrives later); an ERROR is reported in the place of the
//! message that caused it, as PostgreSQL would, and the session goes on.

use std::fmt;

use crate::observe::events::ErrorOrigin;
use crate::observe::metrics::ReactorStats;
use crate::protocol::framing::FrameError;
use crate::protocol::{DecodeError, ErrorBuilder, MessageType, Severity, SqlState};

use super::relay::RelayError;
use crate::engine::error::ConnectFailure;

/// Why no server connection could be had for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireError {
    /// Nothing free within `pool_acquire_timeout_milliseconds`.
    Timeout {
        database: String,
        pool_size: usize,
        waited_ms: u64,
        /// Why the pool could not open a connection meanwhile, if its last attempt failed.
        last_failure: Option<ConnectFailure>,
    },
    /// Connecting or logging in to the server failed: which server and why (the SQLSTATE
    /// is the one the server gave, or 08006).
    Server(ConnectFailure),
    /// pglink is shutting down.
    ShuttingDown,
    /// The client canceled the statement (CancelRequest) while it waited.
    Canceled,
}

impl AcquireError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            AcquireError::Timeout { .. } => SqlState::TOO_MANY_CONNECTIONS,
            AcquireError::Server(failure) => failure.sqlstate(),
            AcquireError::ShuttingDown => SqlState::ADMIN_SHUTDOWN,
            AcquireError::Canceled => SqlState::QUERY_CANCELED,
        }
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Timeout {
                database,
                pool_size,
                waited_ms,
                last_failure,
            } => {
                write!(
                    f,
                    "no server connection for database \"{database}\" became free within \
                     {waited_ms} ms (pool_max_conns {pool_size})"
                )?;
                match last_failure {
                    Some(failure) => write!(f, "; the last attempt to open one failed: {failure}"),
                    None => Ok(()),
                }
            }
            AcquireError::Server(failure) => write!(f, "{failure}"),
            AcquireError::ShuttingDown => f.write_str(SHUTTING_DOWN),
            AcquireError::Canceled => f.write_str(
                "canceling statement due to user request (it was waiting for a server connection)",
            ),
        }
    }
}

impl std::error::Error for AcquireError {}

const SHUTTING_DOWN: &str = "the proxy is shutting down";

/// An error the session sends a client on its own account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    // ---- refused before the startup packet is read -----------------------------------------
    /// `max_client_connections` clients are connected already.
    TooManyClients { max_client_connections: usize },
    /// `max_logins_in_progress` connections are logging in already.
    TooManyLogins { max_logins_in_progress: usize },
    /// The reactor has no slot left to give a client a cancel key.
    NoClientSlot,
    /// Shutdown has begun: new connections are refused.
    NotAccepting,

    // ---- startup and authentication --------------------------------------------------------
    /// A direct-TLS ClientHello while `tls.sslmode` is `disable`, or over a unix socket.
    TlsDisabled,
    /// The startup packet's length word is out of range.
    StartupPacketLength(FrameError),
    /// The startup packet does not decode.
    InvalidStartupPacket(DecodeError),
    /// Bytes after an SSLRequest, before the handshake (CVE-2021-23214).
    UnencryptedDataAfterSslRequest,
    /// Direct TLS without ALPN `postgresql`.
    DirectTlsWithoutAlpn,
    /// A protocol major version other than 3.
    UnsupportedProtocol { major: u16, minor: u16 },
    /// `tls.sslmode` is `require` and the client did not use TLS.
    TlsRequired,
    /// The startup packet names no user.
    NoUserName,
    /// `replication=true` (or `database`): a walsender connection.
    ReplicationUnsupported,
    /// No configured database of this name.
    UnknownDatabase { database: String },
    /// `auth_method` `plaintext` over a connection without TLS.
    PlaintextNeedsTls,
    /// Something other than a password message during authentication.
    ExpectedPassword { tag: u8 },
    /// A password or SASL message that does not decode.
    MalformedAuthMessage,
    /// Wrong password or unknown user (the two look the same).
    PasswordFailed { user: String },
    /// `client_login_timeout` passed before authentication finished.
    LoginTimeout,

    // ---- the client's messages -------------------------------------------------------------
    /// A message length word out of range.
    Framing(FrameError),
    /// A message that does not decode.
    InvalidMessage(DecodeError),
    /// A message type not valid after startup.
    UnexpectedMessage { tag: u8 },
    /// A message pglink must read whole is over `max_message_len`.
    MessageTooLong { len: usize, max: usize },
    /// The relay refused a client message (or, COPY BOTH, a server one).
    Relay(RelayError),
    /// A named statement without a database context (cannot happen for a logged-in client).
    NoStatementRegistry,

    // ---- server connections ----------------------------------------------------------------
    /// No server connection for a message that needed one: an ERROR in its place.
    NoServer(AcquireError),
    /// No server connection for a login that had to learn the server's parameters first.
    NoServerForLogin(AcquireError),
    /// The held server connection failed mid-transaction.
    ServerLost,
    /// The query bringing a server connection's settings in line with the client's failed:
    /// `code` and `message` are the server's (XX000 and empty if it gave none).
    SettingsRejected { code: SqlState, message: String },
    /// The proxy is shutting down and ends the session.
    ShuttingDown,
    /// A reload removed the session's user or database from the configuration.
    Removed { user: String, database: String },
    /// A user not in `admin_users` logged in to the admin console (42501).
    NotAdmin { user: String },
    /// The admin console got a message other than a simple Query or Terminate (08P01).
    ConsoleProtocol { tag: u8 },

    // ---- prepared statements (ERROR, the batch skips to Sync) ------------------------------
    /// Parse of a name the client has in use (42P05).
    DuplicateStatement { name: String },
    /// Bind, Describe or DEALLOCATE of a name the client does not have, or of one of
    /// pglink's own server names (26000).
    UnknownStatement { name: String },
    /// DDL changed the result type of a prepared statement the client has seen.
    ///
    /// This is PostgreSQL's own error, raised in its place (the server would raise it if the
    /// client's statement lived there): word for word, without the `pglink: ` prefix and with
    /// PostgreSQL's routine name, because drivers (asyncpg, pgjdbc) recognise it by its text
    /// and prepare the statement again.
    StalePlan,
}

impl SessionError {
    /// A Parse of a name in use.
    pub(super) fn duplicate_statement(name: &[u8]) -> SessionError {
        SessionError::DuplicateStatement {
            name: String::from_utf8_lossy(name).into_owned(),
        }
    }

    /// A name the client does not have.
    pub(super) fn unknown_statement(name: &[u8]) -> SessionError {
        SessionError::UnknownStatement {
            name: String::from_utf8_lossy(name).into_owned(),
        }
    }

    /// Whether the client broke the protocol (what the flight recorder calls a protocol
    /// error), or pglink refused or failed something on its own account.
    pub fn origin(&self) -> ErrorOrigin {
        match self {
            SessionError::StartupPacketLength(_)
            | SessionError::InvalidStartupPacket(_)
            | SessionError::UnencryptedDataAfterSslRequest
            | SessionError::DirectTlsWithoutAlpn
            | SessionError::ExpectedPassword { .. }
            | SessionError::MalformedAuthMessage
            | SessionError::Framing(_)
            | SessionError::InvalidMessage(_)
            | SessionError::UnexpectedMessage { .. }
            | SessionError::MessageTooLong { .. }
            | SessionError::Relay(_)
            | SessionError::ConsoleProtocol { .. } => ErrorOrigin::Protocol,
            _ => ErrorOrigin::Proxy,
        }
    }

    pub fn sqlstate(&self) -> SqlState {
        match self {
            SessionError::TooManyClients { .. }
            | SessionError::TooManyLogins { .. }
            | SessionError::NoClientSlot => SqlState::TOO_MANY_CONNECTIONS,
            SessionError::NotAccepting => SqlState::CANNOT_CONNECT_NOW,
            SessionError::TlsDisabled
            | SessionError::StartupPacketLength(_)
            | SessionError::InvalidStartupPacket(_)
            | SessionError::UnencryptedDataAfterSslRequest
            | SessionError::DirectTlsWithoutAlpn
            | SessionError::ExpectedPassword { .. }
            | SessionError::MalformedAuthMessage
            | SessionError::Framing(_)
            | SessionError::InvalidMessage(_)
            | SessionError::UnexpectedMessage { .. }
            | SessionError::MessageTooLong { .. }
            | SessionError::NoStatementRegistry => SqlState::PROTOCOL_VIOLATION,
            SessionError::Relay(e) => match e {
                RelayError::CopyBoth => SqlState::FEATURE_NOT_SUPPORTED,
                RelayError::Framing(_)
                | RelayError::ClientMessage { .. }
                | RelayError::Desync { .. } => SqlState::PROTOCOL_VIOLATION,
            },
            SessionError::UnsupportedProtocol { .. }
            | SessionError::ReplicationUnsupported
            | SessionError::StalePlan => SqlState::FEATURE_NOT_SUPPORTED,
            SessionError::TlsRequired
            | SessionError::NoUserName
            | SessionError::PlaintextNeedsTls => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SessionError::UnknownDatabase { .. } => SqlState::INVALID_CATALOG_NAME,
            SessionError::PasswordFailed { .. } => SqlState::INVALID_PASSWORD,
            SessionError::LoginTimeout => SqlState::QUERY_CANCELED,
            SessionError::NoServer(e) | SessionError::NoServerForLogin(e) => e.sqlstate(),
            SessionError::ServerLost => SqlState::CONNECTION_FAILURE,
            SessionError::SettingsRejected { code, .. } => *code,
            SessionError::ShuttingDown | SessionError::Removed { .. } => SqlState::ADMIN_SHUTDOWN,
            SessionError::NotAdmin { .. } => SqlState::INSUFFICIENT_PRIVILEGE,
            SessionError::ConsoleProtocol { .. } => SqlState::PROTOCOL_VIOLATION,
            SessionError::DuplicateStatement { .. } => SqlState::DUPLICATE_PSTATEMENT,
            SessionError::UnknownStatement { .. } => SqlState::INVALID_SQL_STATEMENT_NAME,
        }
    }

    /// FATAL ends the session; ERROR takes the place of the message that caused it.
    pub fn severity(&self) -> Severity {
        match self {
            SessionError::NoServer(_)
            | SessionError::DuplicateStatement { .. }
            | SessionError::UnknownStatement { .. }
            | SessionError::StalePlan => Severity::Error,
            SessionError::TooManyClients { .. }
            | SessionError::TooManyLogins { .. }
            | SessionError::NoClientSlot
            | SessionError::NotAccepting
            | SessionError::TlsDisabled
            | SessionError::StartupPacketLength(_)
            | SessionError::InvalidStartupPacket(_)
            | SessionError::UnencryptedDataAfterSslRequest
            | SessionError::DirectTlsWithoutAlpn
            | SessionError::UnsupportedProtocol { .. }
            | SessionError::TlsRequired
            | SessionError::NoUserName
            | SessionError::ReplicationUnsupported
            | SessionError::UnknownDatabase { .. }
            | SessionError::PlaintextNeedsTls
            | SessionError::ExpectedPassword { .. }
            | SessionError::MalformedAuthMessage
            | SessionError::PasswordFailed { .. }
            | SessionError::LoginTimeout
            | SessionError::Framing(_)
            | SessionError::InvalidMessage(_)
            | SessionError::UnexpectedMessage { .. }
            | SessionError::MessageTooLong { .. }
            | SessionError::Relay(_)
            | SessionError::NoStatementRegistry
            | SessionError::NoServerForLogin(_)
            | SessionError::ServerLost
            | SessionError::SettingsRejected { .. }
            | SessionError::ShuttingDown
            | SessionError::Removed { .. }
            | SessionError::NotAdmin { .. }
            | SessionError::ConsoleProtocol { .. } => Severity::Fatal,
        }
    }

    /// For PostgreSQL's own errors raised in its place: the routine PostgreSQL names. Such
    /// errors go out word for word, without the `pglink: ` prefix.
    fn postgresql_routine(&self) -> Option<&'static str> {
        match self {
            SessionError::StalePlan => Some("RevalidateCachedQuery"),
            _ => None,
        }
    }

    /// Appends this error as an ErrorResponse and counts it. The one place pglink's errors
    /// are written, and the one place their `pglink: ` prefix is added.
    pub fn encode(&self, buf: &mut Vec<u8>, stats: &ReactorStats) {
        let (severity, code) = (self.severity(), self.sqlstate());
        match self.postgresql_routine() {
            Some(routine) => ErrorBuilder::new(severity, code, &self.to_string())
                .routine(routine)
                .encode_error(buf),
            None => ErrorBuilder::new(severity, code, &format!("pglink: {self}")).encode_error(buf),
        }
        stats.error_sent(code);
    }
}

impl fmt::Display for SessionError {
    /// The text without the `pglink: ` prefix (see [`SessionError::encode`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::TooManyClients {
                max_client_connections,
            } => write!(
                f,
                "too many client connections (max_client_connections is \
                 {max_client_connections})"
            ),
            SessionError::TooManyLogins {
                max_logins_in_progress,
            } => write!(
                f,
                "too many connections are logging in (max_logins_in_progress is \
                 {max_logins_in_progress})"
            ),
            SessionError::NoClientSlot => f.write_str("too many client connections"),
            SessionError::NotAccepting | SessionError::ShuttingDown => f.write_str(SHUTTING_DOWN),
            SessionError::NotAdmin { user } => write!(
                f,
                "user \"{user}\" may not use the admin console (it is not in admin_users)"
            ),
            SessionError::ConsoleProtocol { tag } => write!(
                f,
                "the admin console takes simple queries only, not message type {}",
                char::from(*tag).escape_default()
            ),
            SessionError::Removed { user, database } => write!(
                f,
                "user \"{user}\" of database \"{database}\" is no longer in the configuration"
            ),
            SessionError::TlsDisabled => f.write_str("TLS is disabled on this server"),
            SessionError::StartupPacketLength(e) => write!(f, "invalid startup packet: {e}"),
            SessionError::InvalidStartupPacket(e) => write!(f, "invalid startup packet: {e}"),
            SessionError::UnencryptedDataAfterSslRequest => {
                f.write_str("received unencrypted data after SSL request")
            }
            SessionError::DirectTlsWithoutAlpn => {
                f.write_str("direct TLS connections must negotiate ALPN \"postgresql\"")
            }
            SessionError::UnsupportedProtocol { major, minor } => write!(
                f,
                "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2"
            ),
            SessionError::TlsRequired => {
                f.write_str("this server accepts only TLS connections (sslmode=require)")
            }
            SessionError::NoUserName => {
                f.write_str("no PostgreSQL user name specified in startup packet")
            }
            SessionError::ReplicationUnsupported => {
                f.write_str("replication connections are not supported")
            }
            SessionError::UnknownDatabase { database } => {
                write!(f, "database \"{database}\" does not exist")
            }
            SessionError::PlaintextNeedsTls => {
                f.write_str("plaintext password authentication requires a TLS connection")
            }
            SessionError::ExpectedPassword { tag } => write!(
                f,
                "expected a password response, got message type {}",
                MessageType(*tag)
            ),
            SessionError::MalformedAuthMessage => f.write_str("malformed authentication message"),
            SessionError::PasswordFailed { user } => {
                write!(f, "password authentication failed for user \"{user}\"")
            }
            SessionError::LoginTimeout => f.write_str("canceling authentication due to timeout"),
            SessionError::Framing(e) => write!(f, "{e}"),
            SessionError::InvalidMessage(e) => write!(f, "{e}"),
            SessionError::UnexpectedMessage { tag } => {
                write!(f, "invalid frontend message type {}", MessageType(*tag))
            }
            SessionError::MessageTooLong { len, max } => {
                write!(f, "message too long ({len} bytes, the limit is {max})")
            }
            SessionError::Relay(e) => write!(f, "{e}"),
            SessionError::NoStatementRegistry => f.write_str("no statement registry"),
            SessionError::NoServer(e) | SessionError::NoServerForLogin(e) => write!(f, "{e}"),
            SessionError::ServerLost => {
                f.write_str("lost the connection to the server during the transaction")
            }
            SessionError::SettingsRejected { message, .. } => write!(
                f,
                "this session's settings could not be applied on a server connection: {message}"
            ),
            SessionError::DuplicateStatement { name } => {
                write!(f, "prepared statement \"{name}\" already exists")
            }
            SessionError::UnknownStatement { name } if name.is_empty() => {
                f.write_str("unnamed prepared statement does not exist")
            }
            SessionError::UnknownStatement { name } => {
                write!(f, "prepared statement \"{name}\" does not exist")
            }
            SessionError::StalePlan => f.write_str("cached plan must not change result type"),
        }
    }
}

impl std::error::Error for SessionError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::login::{LoginError, ServerError as Refusal};
    use crate::engine::error::ServerError;
    use crate::protocol::BackendMessage;
    use crate::protocol::framing::Frames;

    /// (severity, code, message, routine) of the ErrorResponse `error` encodes to.
    fn sent(error: &SessionError) -> (String, String, String, Option<String>) {
        let stats = ReactorStats::new(0, 0);
        let mut buf = Vec::new();
        error.encode(&mut buf, &stats);
        let frame = Frames::new(&buf, 1 << 20).next().unwrap().unwrap();
        let Ok(BackendMessage::ErrorResponse(e)) = frame.backend() else {
            panic!("not an ErrorResponse: {buf:?}");
        };
        let s = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let routine = e
            .iter()
            .find(|(code, _)| *code == crate::protocol::error::field::ROUTINE)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        (
            s(e.severity()).unwrap(),
            s(e.code()).unwrap(),
            s(e.message()).unwrap(),
            routine,
        )
    }

    #[test]
    fn every_error_has_its_code_severity_and_exact_text() {
        use SessionError::*;
        let frame = FrameError::LengthTooSmall { tag: b'Q', len: 2 };
        let decode = DecodeError::TrailingBytes {
            tag: b'P',
            extra: 3,
        };
        let cases: Vec<(SessionError, &str, &str, String)> = vec![
            (
                TooManyClients {
                    max_client_connections: 7,
                },
                "FATAL",
                "53300",
                "pglink: too many client connections (max_client_connections is 7)".into(),
            ),
            (
                TooManyLogins {
                    max_logins_in_progress: 5,
                },
                "FATAL",
                "53300",
                "pglink: too many connections are logging in (max_logins_in_progress is 5)".into(),
            ),
            (
                NoClientSlot,
                "FATAL",
                "53300",
                "pglink: too many client connections".into(),
            ),
            (
                NotAccepting,
                "FATAL",
                "57P03",
                "pglink: the proxy is shutting down".into(),
            ),
            (
                TlsDisabled,
                "FATAL",
                "08P01",
                "pglink: TLS is disabled on this server".into(),
            ),
            (
                StartupPacketLength(FrameError::LengthTooSmall { tag: 0, len: 3 }),
                "FATAL",
                "08P01",
                "pglink: invalid startup packet: invalid startup packet: length 3 is too small"
                    .into(),
            ),
            (
                InvalidStartupPacket(DecodeError::TrailingBytes { tag: 0, extra: 2 }),
                "FATAL",
                "08P01",
                "pglink: invalid startup packet: invalid startup packet: 2 unexpected trailing \
                 bytes"
                    .into(),
            ),
            (
                UnencryptedDataAfterSslRequest,
                "FATAL",
                "08P01",
                "pglink: received unencrypted data after SSL request".into(),
            ),
            (
                DirectTlsWithoutAlpn,
                "FATAL",
                "08P01",
                "pglink: direct TLS connections must negotiate ALPN \"postgresql\"".into(),
            ),
            (
                UnsupportedProtocol { major: 2, minor: 0 },
                "FATAL",
                "0A000",
                "pglink: unsupported frontend protocol 2.0: server supports 3.0 to 3.2".into(),
            ),
            (
                TlsRequired,
                "FATAL",
                "28000",
                "pglink: this server accepts only TLS connections (sslmode=require)".into(),
            ),
            (
                NoUserName,
                "FATAL",
                "28000",
                "pglink: no PostgreSQL user name specified in startup packet".into(),
            ),
            (
                ReplicationUnsupported,
                "FATAL",
                "0A000",
                "pglink: replication connections are not supported".into(),
            ),
            (
                UnknownDatabase {
                    database: "nope".into(),
                },
                "FATAL",
                "3D000",
                "pglink: database \"nope\" does not exist".into(),
            ),
            (
                PlaintextNeedsTls,
                "FATAL",
                "28000",
                "pglink: plaintext password authentication requires a TLS connection".into(),
            ),
            (
                ExpectedPassword { tag: b'Q' },
                "FATAL",
                "08P01",
                "pglink: expected a password response, got message type 'Q'".into(),
            ),
            (
                MalformedAuthMessage,
                "FATAL",
                "08P01",
                "pglink: malformed authentication message".into(),
            ),
            (
                PasswordFailed {
                    user: "alice".into(),
                },
                "FATAL",
                "28P01",
                "pglink: password authentication failed for user \"alice\"".into(),
            ),
            (
                LoginTimeout,
                "FATAL",
                "57014",
                "pglink: canceling authentication due to timeout".into(),
            ),
            (
                Framing(frame),
                "FATAL",
                "08P01",
                "pglink: invalid message 'Q': length 2 is too small".into(),
            ),
            (
                InvalidMessage(decode),
                "FATAL",
                "08P01",
                "pglink: invalid message 'P': 3 unexpected trailing bytes".into(),
            ),
            (
                UnexpectedMessage { tag: 1 },
                "FATAL",
                "08P01",
                "pglink: invalid frontend message type 0x01".into(),
            ),
            (
                MessageTooLong { len: 10, max: 8 },
                "FATAL",
                "08P01",
                "pglink: message too long (10 bytes, the limit is 8)".into(),
            ),
            (
                Relay(RelayError::ClientMessage {
                    tag: b'X',
                    reason: "why",
                }),
                "FATAL",
                "08P01",
                "pglink: unexpected client message type 'X': why".into(),
            ),
            (
                Relay(RelayError::CopyBoth),
                "FATAL",
                "0A000",
                "pglink: COPY BOTH (streaming replication) is not supported".into(),
            ),
            (
                NoStatementRegistry,
                "FATAL",
                "08P01",
                "pglink: no statement registry".into(),
            ),
            (
                NoServer(AcquireError::Timeout {
                    database: "db".into(),
                    pool_size: 5,
                    waited_ms: 1000,
                    last_failure: None,
                }),
                "ERROR",
                "53300",
                "pglink: no server connection for database \"db\" became free within 1000 ms \
                 (pool_max_conns 5)"
                    .into(),
            ),
            (
                NoServer(AcquireError::Timeout {
                    database: "db".into(),
                    pool_size: 5,
                    waited_ms: 1000,
                    last_failure: Some(ConnectFailure::new("db:5432", ServerError::Timeout)),
                }),
                "ERROR",
                "53300",
                "pglink: no server connection for database \"db\" became free within 1000 ms \
                 (pool_max_conns 5); the last attempt to open one failed: cannot connect to \
                 server db:5432: timeout expired"
                    .into(),
            ),
            (
                NoServer(AcquireError::Server(ConnectFailure::new(
                    "db:5432",
                    ServerError::Login(LoginError::Server(Refusal {
                        code: SqlState::INVALID_PASSWORD,
                        message: "password authentication failed for user \"u\"".into(),
                        detail: None,
                    })),
                ))),
                "ERROR",
                "28P01",
                "pglink: cannot log in to server db:5432: server refused the login: password \
                 authentication failed for user \"u\" (SQLSTATE 28P01)"
                    .into(),
            ),
            (
                NoServer(AcquireError::ShuttingDown),
                "ERROR",
                "57P01",
                "pglink: the proxy is shutting down".into(),
            ),
            (
                NoServer(AcquireError::Canceled),
                "ERROR",
                "57014",
                "pglink: canceling statement due to user request (it was waiting for a server \
                 connection)"
                    .into(),
            ),
            (
                NoServerForLogin(AcquireError::Server(ConnectFailure::new(
                    "db:5432",
                    ServerError::Timeout,
                ))),
                "FATAL",
                "08006",
                "pglink: cannot connect to server db:5432: timeout expired".into(),
            ),
            (
                ServerLost,
                "FATAL",
                "08006",
                "pglink: lost the connection to the server during the transaction".into(),
            ),
            (
                SettingsRejected {
                    code: SqlState::from_bytes(b"22023").unwrap(),
                    message: "invalid value".into(),
                },
                "FATAL",
                "22023",
                "pglink: this session's settings could not be applied on a server connection: \
                 invalid value"
                    .into(),
            ),
            (
                ShuttingDown,
                "FATAL",
                "57P01",
                "pglink: the proxy is shutting down".into(),
            ),
            (
                DuplicateStatement { name: "s1".into() },
                "ERROR",
                "42P05",
                "pglink: prepared statement \"s1\" already exists".into(),
            ),
            (
                UnknownStatement { name: "s2".into() },
                "ERROR",
                "26000",
                "pglink: prepared statement \"s2\" does not exist".into(),
            ),
        ];
        for (error, severity, code, text) in cases {
            assert_eq!(error.severity().as_str(), severity, "{error:?}");
            assert_eq!(error.sqlstate().as_str(), code, "{error:?}");
            assert_eq!(
                format!("pglink: {error}"),
                text,
                "the text has no prefix of its own"
            );
            assert_eq!(
                sent(&error),
                (severity.into(), code.into(), text, None),
                "{error:?}"
            );
        }
    }

    #[test]
    fn the_stale_plan_error_is_postgresqls_word_for_word() {
        let error = SessionError::StalePlan;
        assert_eq!(
            sent(&error),
            (
                "ERROR".into(),
                "0A000".into(),
                "cached plan must not change result type".into(),
                Some("RevalidateCachedQuery".into())
            )
        );
    }

    #[test]
    fn sending_an_error_counts_it() {
        let stats = ReactorStats::new(0, 0);
        SessionError::LoginTimeout.encode(&mut Vec::new(), &stats);
        SessionError::ServerLost.encode(&mut Vec::new(), &stats);
        let sent: u64 = stats.errors_sent.iter().map(|c| c.get()).sum();
        assert_eq!(sent, 2);
    }
}
