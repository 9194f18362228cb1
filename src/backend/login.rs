//! Logging in to a PostgreSQL server, sans-IO: SSL negotiation, the startup packet,
//! authentication (trust, cleartext, md5, SCRAM-SHA-256, SCRAM-SHA-256-PLUS), and the
//! parameters and cancel key the server reports before its first ReadyForQuery.

use std::fmt;

use crate::auth::scram_client::DeriveKeys;
use crate::auth::{Rng, SaltedKeyCache, ScramClient, ScramError, md5_password, select_mechanism};
use crate::protocol::backend::{Authentication, BackendMessage};
use crate::protocol::framing::{Header, peek_header};
use crate::protocol::startup::{ProtocolVersion, ssl_request, startup_message};
use crate::protocol::{DecodeError, FrameError, Severity, SqlState, frontend};

/// Largest message accepted while logging in (authentication data, parameter values).
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

/// How to negotiate TLS (libpq's `allow` is `Disable` then a retry with `Require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsNegotiation {
    Disable,
    /// Ask; continue in plaintext if the server says no.
    Prefer,
    /// Ask; fail if the server says no.
    Require,
}

/// Everything needed to log in one backend connection.
#[derive(Clone)]
pub struct LoginParams {
    pub user: String,
    pub password: String,
    pub database: String,
    /// Extra startup parameters (`default_startup_parameters`).
    pub startup_params: Vec<(String, String)>,
    pub tls: TlsNegotiation,
}

impl fmt::Debug for LoginParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginParams")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("startup_params", &self.startup_params)
            .field("tls", &self.tls)
            .finish()
    }
}

/// An error the server sent, kept for the clients that were waiting for this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code.as_str())?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq)]
pub enum LoginError {
    /// The server refused with an ErrorResponse (wrong password, no such database, ...).
    Server(ServerError),
    /// `sslmode=require` or stricter, and the server does not do TLS.
    TlsRefused,
    /// The server asked for an authentication method pglink does not speak.
    UnsupportedAuth(&'static str),
    Scram(ScramError),
    Frame(FrameError),
    Decode(DecodeError),
    /// Something out of order (e.g. bytes after the SSL response).
    Protocol(&'static str),
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Server(e) => write!(f, "server refused the login: {e}"),
            LoginError::TlsRefused => {
                write!(f, "server does not support TLS but sslmode requires it")
            }
            LoginError::UnsupportedAuth(m) => {
                write!(f, "server requested unsupported authentication {m}")
            }
            LoginError::Scram(e) => write!(f, "SCRAM authentication with the server failed: {e}"),
            LoginError::Frame(e) => write!(f, "invalid message from server: {e}"),
            LoginError::Decode(e) => write!(f, "invalid message from server: {e}"),
            LoginError::Protocol(what) => write!(f, "protocol violation by server: {what}"),
        }
    }
}

impl std::error::Error for LoginError {}

impl LoginError {
    /// SQLSTATE to report to a client that waited for this connection: the server's own
    /// for a refusal, 08006 (connection failure) for everything else.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            LoginError::Server(e) => e.code,
            LoginError::TlsRefused
            | LoginError::UnsupportedAuth(_)
            | LoginError::Scram(_)
            | LoginError::Frame(_)
            | LoginError::Decode(_)
            | LoginError::Protocol(_) => SqlState::CONNECTION_FAILURE,
        }
    }

    /// Every login error ends the server connection: FATAL. (A client that waited for the
    /// connection is told with the severity its own wait calls for: ERROR for a statement,
    /// FATAL for a login.)
    pub fn severity(&self) -> Severity {
        match self {
            LoginError::Server(_)
            | LoginError::TlsRefused
            | LoginError::UnsupportedAuth(_)
            | LoginError::Scram(_)
            | LoginError::Frame(_)
            | LoginError::Decode(_)
            | LoginError::Protocol(_) => Severity::Fatal,
        }
    }
}

/// What the caller must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStep {
    /// Flush output and wait for more bytes.
    NeedMore,
    /// The server accepted SSLRequest: run the TLS handshake, then `on_tls_established`.
    StartTls,
    /// Logged in; the connection is idle. Bytes after the consumed count are not login's.
    Ready,
}

enum State {
    AwaitingSslResponse,
    AwaitingTls,
    Authenticating,
    Sasl(Box<ScramClient>),
    AwaitingReady,
    Done,
}

/// One login in progress.
pub struct Login {
    state: State,
    params: LoginParams,
    /// `tls-server-end-point` data of the server's certificate, once TLS is up.
    channel_binding: Option<Vec<u8>>,
    /// ParameterStatus values in arrival order.
    pub server_params: Vec<(String, String)>,
    /// BackendKeyData: process id and secret key.
    pub cancel_key: Option<(u32, Vec<u8>)>,
}

impl Login {
    /// Starts a login, writing the first packet (SSLRequest or StartupMessage) to `out`.
    pub fn start(params: LoginParams, out: &mut Vec<u8>) -> Login {
        let mut login = Login {
            state: State::Authenticating,
            params,
            channel_binding: None,
            server_params: Vec::new(),
            cancel_key: None,
        };
        if login.params.tls == TlsNegotiation::Disable {
            login.write_startup(out);
        } else {
            ssl_request(out);
            login.state = State::AwaitingSslResponse;
        }
        login
    }

    /// TLS is up; `channel_binding` is the `tls-server-end-point` hash of the server's
    /// certificate when it could be computed.
    pub fn on_tls_established(&mut self, channel_binding: Option<Vec<u8>>, out: &mut Vec<u8>) {
        self.channel_binding = channel_binding;
        self.write_startup(out);
    }

    fn write_startup(&mut self, out: &mut Vec<u8>) {
        let mut params: Vec<(&[u8], &[u8])> = vec![
            (b"user", self.params.user.as_bytes()),
            (b"database", self.params.database.as_bytes()),
        ];
        for (k, v) in &self.params.startup_params {
            if k != "user" && k != "database" {
                params.push((k.as_bytes(), v.as_bytes()));
            }
        }
        startup_message(out, ProtocolVersion::V3_0, &params);
        self.state = State::Authenticating;
    }

    /// Feeds server bytes. Returns the bytes consumed and the next step.
    pub fn on_data(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        rng: &mut dyn Rng,
        keys: &mut SaltedKeyCache,
    ) -> Result<(usize, LoginStep), LoginError> {
        self.on_data_with(data, out, rng, &mut |pw, salt, iterations| {
            keys.get_or_derive(pw, salt, iterations)
        })
    }

    /// [`on_data`](Self::on_data), `derive(prepared_password, salt, iterations)` supplying
    /// the SCRAM keys (the fuzz target's makes fuzzer-chosen iteration counts cheap).
    pub(crate) fn on_data_with(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        rng: &mut dyn Rng,
        derive: &mut DeriveKeys<'_>,
    ) -> Result<(usize, LoginStep), LoginError> {
        if let State::AwaitingSslResponse = self.state {
            let (n, step) = self.on_ssl_response(data, out)?;
            // An ErrorResponse instead of 'S' or 'N' is read as a login message at once (the
            // caller offers these bytes again only when more arrive, and none may).
            if n > 0 || !matches!(self.state, State::Authenticating) {
                return Ok((n, step));
            }
        }
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let Some(header) = peek_header(rest, MAX_LOGIN_MESSAGE).map_err(LoginError::Frame)?
            else {
                return Ok((pos, LoginStep::NeedMore));
            };
            let Some(body) = rest.get(Header::SIZE..header.frame_len()) else {
                return Ok((pos, LoginStep::NeedMore));
            };
            pos += header.frame_len();
            let msg = BackendMessage::decode(header.tag, body).map_err(LoginError::Decode)?;
            if self.on_message(msg, out, rng, derive)? {
                return Ok((pos, LoginStep::Ready));
            }
        }
    }

    fn on_ssl_response(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, LoginStep), LoginError> {
        match data.first() {
            None => Ok((0, LoginStep::NeedMore)),
            // Anything after 'S' arrived before the handshake: it cannot be trusted
            // (CVE-2021-23222).
            Some(b'S') if data.len() > 1 => {
                Err(LoginError::Protocol("data after the SSL response"))
            }
            Some(b'S') => {
                self.state = State::AwaitingTls;
                Ok((1, LoginStep::StartTls))
            }
            Some(b'N') if self.params.tls == TlsNegotiation::Require => Err(LoginError::TlsRefused),
            Some(b'N') => {
                self.write_startup(out);
                Ok((1, LoginStep::NeedMore))
            }
            // Very old servers answer an ErrorResponse; treat it like any login error.
            Some(b'E') => {
                self.state = State::Authenticating;
                Ok((0, LoginStep::NeedMore))
            }
            Some(_) => Err(LoginError::Protocol("invalid response to SSLRequest")),
        }
    }

    /// Handles one message; `Ok(true)` when the login is complete.
    fn on_message(
        &mut self,
        msg: BackendMessage<'_>,
        out: &mut Vec<u8>,
        rng: &mut dyn Rng,
        derive: &mut DeriveKeys<'_>,
    ) -> Result<bool, LoginError> {
        match msg {
            BackendMessage::Authentication(auth) => {
                self.on_authentication(auth, out, rng, derive)?
            }
            BackendMessage::ErrorResponse(fields) => {
                return Err(LoginError::Server(ServerError {
                    code: fields.sqlstate().unwrap_or(SqlState::CONNECTION_FAILURE),
                    message: lossy(fields.message()),
                    detail: fields.detail().map(|d| lossy(Some(d))),
                }));
            }
            BackendMessage::ParameterStatus(p) => {
                let name = String::from_utf8_lossy(p.name).into_owned();
                let value = String::from_utf8_lossy(p.value).into_owned();
                match self.server_params.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = value,
                    None => self.server_params.push((name, value)),
                }
            }
            BackendMessage::BackendKeyData(k) => self.cancel_key = Some((k.pid, k.key.to_vec())),
            BackendMessage::NoticeResponse(_) | BackendMessage::NegotiateProtocolVersion(_) => {}
            BackendMessage::ReadyForQuery(_) if matches!(self.state, State::AwaitingReady) => {
                self.state = State::Done;
                return Ok(true);
            }
            _ => return Err(LoginError::Protocol("unexpected message during login")),
        }
        Ok(false)
    }

    fn on_authentication(
        &mut self,
        auth: Authentication<'_>,
        out: &mut Vec<u8>,
        rng: &mut dyn Rng,
        derive: &mut DeriveKeys<'_>,
    ) -> Result<(), LoginError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        self.state = match (auth, state) {
            (Authentication::Ok, State::Authenticating) => State::AwaitingReady,
            (Authentication::Ok, State::Sasl(scram)) if scram.is_complete() => State::AwaitingReady,
            (Authentication::CleartextPassword, State::Authenticating) => {
                frontend::password(out, self.params.password.as_bytes());
                State::Authenticating
            }
            (Authentication::Md5Password { salt }, State::Authenticating) => {
                let hash = md5_password(
                    self.params.user.as_bytes(),
                    self.params.password.as_bytes(),
                    salt,
                );
                frontend::password(out, &hash);
                State::Authenticating
            }
            (Authentication::Sasl(mechanisms), State::Authenticating) => {
                let (mechanism, cb) =
                    select_mechanism(mechanisms.iter(), self.channel_binding.clone(), false)
                        .map_err(LoginError::Scram)?;
                let scram = ScramClient::new(self.params.password.as_bytes(), cb, rng);
                frontend::sasl_initial_response(
                    out,
                    mechanism.as_bytes(),
                    Some(&scram.client_first()),
                );
                State::Sasl(Box::new(scram))
            }
            (Authentication::SaslContinue { data }, State::Sasl(mut scram)) => {
                let reply = scram
                    .on_server_first_with(data, derive)
                    .map_err(LoginError::Scram)?;
                frontend::sasl_response(out, &reply);
                State::Sasl(scram)
            }
            (Authentication::SaslFinal { data }, State::Sasl(mut scram)) => {
                scram.on_server_final(data).map_err(LoginError::Scram)?;
                State::Sasl(scram)
            }
            (Authentication::KerberosV5, _) => {
                return Err(LoginError::UnsupportedAuth("Kerberos V5"));
            }
            (Authentication::Gss | Authentication::GssContinue { .. }, _) => {
                return Err(LoginError::UnsupportedAuth("GSSAPI"));
            }
            (Authentication::Sspi, _) => return Err(LoginError::UnsupportedAuth("SSPI")),
            _ => return Err(LoginError::Protocol("authentication message out of order")),
        };
        Ok(())
    }
}

fn lossy(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while writing the `backend_login` fuzz target: the error answering an
    /// SSLRequest waited for more bytes instead of failing the login.
    #[test]
    fn an_error_answering_the_ssl_request_fails_the_login_at_once() {
        let mut out = Vec::new();
        let params = LoginParams {
            user: "u".into(),
            password: "pw".into(),
            database: "d".into(),
            startup_params: Vec::new(),
            tls: TlsNegotiation::Prefer,
        };
        let mut login = Login::start(params, &mut out);
        let mut error = Vec::new();
        crate::protocol::error_response(
            &mut error,
            Severity::Fatal,
            SqlState::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        );
        let mut rng = crate::auth::FixedRng::new(vec![1u8; 32]);
        let result = login.on_data(&error, &mut out, &mut rng, &mut SaltedKeyCache::new(1));
        let Err(LoginError::Server(e)) = result else {
            panic!("{result:?}");
        };
        assert_eq!(e.code, SqlState::TOO_MANY_CONNECTIONS);
    }

    #[test]
    fn login_errors_carry_the_servers_code_or_08006_and_are_fatal() {
        let refused = LoginError::Server(ServerError {
            code: SqlState::INVALID_PASSWORD,
            message: "password authentication failed for user \"app\"".into(),
            detail: None,
        });
        assert_eq!(refused.sqlstate(), SqlState::INVALID_PASSWORD);
        for e in [
            refused,
            LoginError::TlsRefused,
            LoginError::UnsupportedAuth("GSSAPI"),
            LoginError::Protocol("data after the SSL response"),
        ] {
            assert_eq!(e.severity(), Severity::Fatal, "{e}");
            if !matches!(e, LoginError::Server(_)) {
                assert_eq!(e.sqlstate(), SqlState::CONNECTION_FAILURE, "{e}");
            }
        }
    }
}
