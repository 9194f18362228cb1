//! Startup and authentication of a client connection.
//!
//! Every login failure for a known database looks the same whatever its cause (unknown user
//! or wrong password): FATAL 28P01 after a complete exchange. Unknown users authenticate
//! against a mock SCRAM verifier so not even timing or the salt reveals which users exist.

use std::sync::Arc;

use super::users::{Lookup, UserEntry};
use super::{Action, AuthMethod, ClientTls, Env, Out, Session, SessionError, State};
use crate::auth::{
    AuthFailureKind, ScramServer, ScramVerifier, cleartext_verify, md5_verify, mechanisms,
};
use crate::protocol::backend as be_msg;
use crate::protocol::framing::{Header, MAX_STARTUP_PACKET_LEN, peek_header, peek_startup_len};
use crate::protocol::frontend::{PasswordMessage, SaslInitialResponse, tag as fe};
use crate::protocol::startup::{ProtocolVersion, StartupMessage, StartupPacket};

/// What an unknown user's password is checked against (no password a client sends is
/// accepted for an unknown user whatever this is: the check's result is ignored).
const UNMATCHABLE: &[u8] = b"\0pglink: no such user\0";

/// Largest password/SASL message accepted.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;
/// First byte of a TLS handshake record: a direct-TLS ClientHello (PostgreSQL 17+).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Authentication in progress.
pub(super) enum AuthState {
    Cleartext(Option<Arc<UserEntry>>),
    Md5 {
        user: Option<Arc<UserEntry>>,
        salt: [u8; 4],
    },
    /// Waiting for the user's SCRAM verifier to be derived (nothing sent yet; the client has
    /// nothing to send either).
    AwaitingVerifier(Arc<UserEntry>),
    /// Waiting for SASLInitialResponse; the verifier is the user's or a mock.
    ScramInitial(Box<ScramVerifier>, bool),
    /// Waiting for the client-final message. `bool`: the user exists.
    ScramFinal(Box<ScramServer>, bool),
    /// A message is being checked (only for the length of the call that checks it: the
    /// previous step is moved out, and the next one, or another state, put in).
    Checking,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthState::Cleartext(_) => "Cleartext",
            AuthState::Md5 { .. } => "Md5",
            AuthState::AwaitingVerifier(_) => "AwaitingVerifier",
            AuthState::ScramInitial(..) => "ScramInitial",
            AuthState::ScramFinal(..) => "ScramFinal",
            AuthState::Checking => "Checking",
        })
    }
}

impl Session {
    /// The client's W3C trace context, from its startup packet.
    fn set_trace_parent(&mut self, text: &str) {
        self.trace_parent = crate::observe::trace::TraceParent::parse(text);
        if self.trace_parent.is_none() {
            log::debug!("startup parameter {text:?} is not a valid traceparent: ignored");
        }
    }

    /// Before authentication: SSLRequest, GSSENCRequest, CancelRequest or StartupMessage.
    pub(super) fn on_startup_bytes(
        &mut self,
        data: &[u8],
        env: &mut Env<'_>,
        out: &mut Out<'_>,
    ) -> usize {
        if data.first() == Some(&TLS_HANDSHAKE_RECORD) && !self.tls {
            if !self.offers_tls(env) {
                self.fail(SessionError::TlsDisabled, out);
                return data.len();
            }
            self.await_tls(out);
            out.actions.push(Action::StartTls { direct: true });
            return 0;
        }
        let len = match peek_startup_len(data, MAX_STARTUP_PACKET_LEN) {
            Ok(Some(len)) => len,
            Ok(None) => return 0,
            Err(e) => {
                self.fail(SessionError::StartupPacketLength(e), out);
                return data.len();
            }
        };
        let Some(packet) = data.get(..len) else {
            return 0;
        };
        match StartupPacket::decode(packet) {
            Err(e) => self.fail(SessionError::InvalidStartupPacket(e), out),
            Ok(StartupPacket::SslRequest) => {
                if data.len() > len {
                    // Bytes sent before the handshake must not be trusted (CVE-2021-23214).
                    self.fail(SessionError::UnencryptedDataAfterSslRequest, out);
                } else if self.tls || !self.offers_tls(env) {
                    out.to_client.push(b'N');
                } else {
                    out.to_client.push(b'S');
                    self.await_tls(out);
                    out.actions.push(Action::StartTls { direct: false });
                }
            }
            // GSSAPI encryption is not offered; the client continues with SSL or plaintext.
            Ok(StartupPacket::GssEncRequest) => out.to_client.push(b'N'),
            Ok(StartupPacket::Cancel(c)) => {
                out.actions
                    .push(Action::Cancel(super::CancelKey::from_request(c.pid, c.key)));
                self.set_state(State::closed(), out);
                out.actions.push(Action::Close);
            }
            Ok(StartupPacket::Startup(m)) => self.on_startup_message(m, env, out),
        }
        len
    }

    /// Whether TLS is offered: configured, and not over a unix socket (PostgreSQL offers TLS
    /// only over TCP, and libpq never asks for it over a unix socket).
    fn offers_tls(&self, env: &Env<'_>) -> bool {
        env.config.tls != ClientTls::Disabled && !self.local
    }

    /// A TLS handshake starts (a refusal waits for the startup packet that follows it).
    fn await_tls(&mut self, out: &mut Out<'_>) {
        let refusal = self.take_refusal();
        self.set_state(State::AwaitingTls { refusal }, out);
    }

    /// The error a connection accepted only to be refused is to get.
    fn take_refusal(&mut self) -> Option<SessionError> {
        match &mut self.state {
            State::AwaitingStartup { refusal } | State::AwaitingTls { refusal } => refusal.take(),
            _ => None,
        }
    }

    fn on_startup_message(&mut self, m: StartupMessage<'_>, env: &mut Env<'_>, out: &mut Out<'_>) {
        if let Some(error) = self.take_refusal() {
            return self.fail(error, out);
        }
        if m.version.major != 3 {
            let error = SessionError::UnsupportedProtocol {
                major: m.version.major,
                minor: m.version.minor,
            };
            return self.fail(error, out);
        }
        if env.config.tls == ClientTls::Required && !self.tls && !self.local {
            return self.fail(SessionError::TlsRequired, out);
        }
        let Some(user) = m.user().filter(|u| !u.is_empty()) else {
            return self.fail(SessionError::NoUserName, out);
        };
        self.user = String::from_utf8_lossy(user).into_owned();
        self.database = String::from_utf8_lossy(m.database().unwrap_or(user)).into_owned();
        let mut unknown_options: Vec<&[u8]> = Vec::new();
        for (name, value) in m.params() {
            match name {
                b"user" | b"database" => {}
                b"replication" if !matches!(value, b"false" | b"off" | b"no" | b"0") => {
                    return self.fail(SessionError::ReplicationUnsupported, out);
                }
                // `replication=false`: an ordinary session, nothing to carry along.
                b"replication" => {}
                // The trace context is pglink's (PostgreSQL would refuse the name).
                n if n == env.config.traceparent_parameter.as_bytes() => {
                    self.set_trace_parent(&String::from_utf8_lossy(value));
                }
                // Drivers that cannot send a parameter of their own (JDBC) pass it as
                // `-c traceparent=…` in `options`: taken out there too.
                b"options" => {
                    let text = String::from_utf8_lossy(value);
                    let wanted = env.config.traceparent_parameter.replace('-', "_");
                    let (trace, rest): (Vec<_>, Vec<_>) = super::params::options_settings(&text)
                        .into_iter()
                        .partition(|(n, _)| *n == wanted);
                    let options = match trace.last() {
                        None => text.into_owned(),
                        Some((_, v)) => {
                            self.set_trace_parent(v);
                            super::params::options_string(&rest)
                        }
                    };
                    if !options.is_empty() {
                        self.startup_params.push(("options".to_owned(), options));
                    }
                }
                n if n.starts_with(b"_pq_.") => unknown_options.push(n),
                n => self.startup_params.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )),
            }
        }
        // We speak 3.0 and 3.2; anything else newer is negotiated down.
        let minor = m.version.minor;
        self.protocol = if minor >= 2 {
            ProtocolVersion::V3_2
        } else {
            ProtocolVersion::V3_0
        };
        if (minor != 0 && minor != 2) || !unknown_options.is_empty() {
            be_msg::negotiate_protocol_version(
                out.to_client,
                u32::from(self.protocol.minor),
                &unknown_options,
            );
        }
        if self.protocol == ProtocolVersion::V3_0 {
            // 3.0 clients get 4-byte cancel keys.
            self.key = super::CancelKey::new(self.key.pid, self.key.bytes, 4);
        }
        self.begin_auth(env, out);
    }

    fn begin_auth(&mut self, env: &mut Env<'_>, out: &mut Out<'_>) {
        let entry = match env.users.lookup(&self.database, &self.user) {
            Lookup::NoDatabase => {
                let database = self.database.clone();
                return self.fail(SessionError::UnknownDatabase { database }, out);
            }
            Lookup::NoUser(db) => self.in_database(db, None, env),
            Lookup::User(db, entry) => self.in_database(db, Some(Arc::clone(entry)), env),
            // The console: a configured user's password, checked like any login, so that
            // nobody learns who exists; whether it is an admin counts only afterwards.
            Lookup::Console(found) => {
                self.console = Some(found.is_some_and(|(_, admin)| admin));
                found.map(|(entry, _)| Arc::clone(entry))
            }
        };
        let auth = match env.config.auth_method {
            AuthMethod::Plaintext if !self.tls && !self.local => {
                return self.fail(SessionError::PlaintextNeedsTls, out);
            }
            AuthMethod::Plaintext => {
                be_msg::authentication_cleartext(out.to_client);
                AuthState::Cleartext(entry)
            }
            AuthMethod::Md5 => {
                let mut salt = [0u8; 4];
                env.rng.fill(&mut salt);
                be_msg::authentication_md5(out.to_client, salt);
                AuthState::Md5 { user: entry, salt }
            }
            AuthMethod::Scram => match entry {
                Some(e) if e.scram.get().is_none() => {
                    // Derived off the reactor; `on_verifier_ready` goes on from here.
                    out.actions.push(Action::DeriveVerifier(e.scram.clone()));
                    AuthState::AwaitingVerifier(e)
                }
                entry => self.offer_scram(entry, env, out),
            },
        };
        self.set_state(State::Authenticating(auth), out);
    }

    /// The channel-binding data of this connection's certificate.
    fn binding<'e>(&'e self, env: &'e Env<'_>) -> Option<&'e Vec<u8>> {
        match &self.channel_binding {
            Some(known) => known.as_ref(),
            None => env.config.channel_binding.as_ref(),
        }
    }

    /// The login is for database `db` (and `entry`'s pool, if the user exists).
    fn in_database(
        &mut self,
        db: super::users::DbId,
        entry: Option<Arc<UserEntry>>,
        env: &mut Env<'_>,
    ) -> Option<Arc<UserEntry>> {
        self.db = Some(db);
        self.db_context = (env.database)(db);
        self.pool = entry.as_ref().map(|e| e.pool);
        entry
    }

    /// AuthenticationSASL, and the exchange's first step against the user's verifier (which
    /// must have been derived) or, for an unknown user, a mock.
    fn offer_scram(
        &mut self,
        entry: Option<Arc<UserEntry>>,
        env: &mut Env<'_>,
        out: &mut Out<'_>,
    ) -> AuthState {
        let plus = self.tls && self.binding(env).is_some();
        let list: Vec<&[u8]> = mechanisms(plus).iter().map(|m| m.as_bytes()).collect();
        be_msg::authentication_sasl(out.to_client, &list);
        let exists = entry.is_some();
        let verifier = match entry {
            Some(e) => e.scram.derive().clone(),
            None => env.users.mock_verifier(&self.user),
        };
        AuthState::ScramInitial(Box::new(verifier), exists)
    }

    /// The user's SCRAM verifier, asked for with [`Action::DeriveVerifier`], is ready: the
    /// exchange starts, and input that arrived meanwhile is looked at.
    pub fn on_verifier_ready(&mut self, env: &mut Env<'_>, out: &mut Out<'_>) {
        let State::Authenticating(AuthState::AwaitingVerifier(entry)) = &self.state else {
            return;
        };
        let entry = entry.clone();
        let auth = self.offer_scram(Some(entry), env, out);
        self.set_state(State::Authenticating(auth), out);
        out.actions.push(Action::ResumeInput);
    }

    /// During authentication: the client's password / SASL messages.
    pub(super) fn on_auth_bytes(
        &mut self,
        data: &[u8],
        env: &mut Env<'_>,
        out: &mut Out<'_>,
    ) -> usize {
        let header = match peek_header(data, MAX_AUTH_MESSAGE) {
            Ok(Some(h)) => h,
            Ok(None) => return 0,
            Err(e) => {
                self.fail(SessionError::Framing(e), out);
                return data.len();
            }
        };
        let Some(body) = data.get(Header::SIZE..header.frame_len()) else {
            return 0;
        };
        if header.tag != fe::PASSWORD {
            self.fail(SessionError::ExpectedPassword { tag: header.tag }, out);
            return data.len();
        }
        let State::Authenticating(auth) = &mut self.state else {
            return 0;
        };
        if matches!(auth, AuthState::AwaitingVerifier(_)) {
            // Early: left for `on_verifier_ready`.
            return 0;
        }
        let auth = std::mem::replace(auth, AuthState::Checking);
        match self.on_auth_message(auth, body, env, out) {
            Ok(Some(next)) => {
                self.set_state(State::Authenticating(next), out);
            }
            Ok(None) => self.authenticated(env, out),
            Err(AuthFailureKind::InvalidCredentials) => self.password_failed(out),
            Err(AuthFailureKind::ProtocolViolation) => {
                self.fail(SessionError::MalformedAuthMessage, out)
            }
        }
        header.frame_len()
    }

    /// One password/SASL message. `Ok(None)`: authenticated; `Ok(Some)`: next step.
    fn on_auth_message(
        &mut self,
        auth: AuthState,
        body: &[u8],
        env: &mut Env<'_>,
        out: &mut Out<'_>,
    ) -> Result<Option<AuthState>, AuthFailureKind> {
        let protocol = |_| AuthFailureKind::ProtocolViolation;
        match auth {
            // An unknown user's password is checked too, against one it cannot match, so
            // that the work (and so the time) is the same as for a wrong password.
            AuthState::Cleartext(user) => {
                let password = PasswordMessage::decode(body).map_err(protocol)?.password;
                let expected = user.as_ref().map_or(UNMATCHABLE, |u| u.password.as_bytes());
                let matches = cleartext_verify(expected, password);
                if matches && user.is_some() {
                    Ok(None)
                } else {
                    Err(AuthFailureKind::InvalidCredentials)
                }
            }
            AuthState::Md5 { user, salt } => {
                let response = PasswordMessage::decode(body).map_err(protocol)?.password;
                let (name, password) = user
                    .as_ref()
                    .map_or((self.user.as_bytes(), UNMATCHABLE), |u| {
                        (u.name.as_bytes(), u.password.as_bytes())
                    });
                let matches = md5_verify(name, password, salt, response);
                if matches && user.is_some() {
                    Ok(None)
                } else {
                    Err(AuthFailureKind::InvalidCredentials)
                }
            }
            AuthState::ScramInitial(verifier, exists) => {
                let initial = SaslInitialResponse::decode(body).map_err(protocol)?;
                let data = initial.data.ok_or(AuthFailureKind::ProtocolViolation)?;
                let binding = if self.tls {
                    self.binding(env).cloned()
                } else {
                    None
                };
                let mut server = ScramServer::new(*verifier, binding, env.rng);
                let first = server
                    .on_client_first(initial.mechanism, data)
                    .map_err(|e| e.kind())?;
                be_msg::sasl_continue(out.to_client, &first);
                Ok(Some(AuthState::ScramFinal(Box::new(server), exists)))
            }
            AuthState::ScramFinal(mut server, exists) => {
                let last = server.on_client_final(body).map_err(|e| e.kind())?;
                if !exists {
                    // Unreachable in practice (a mock verifier's proof cannot match), but
                    // never let an unknown user in.
                    return Err(AuthFailureKind::InvalidCredentials);
                }
                be_msg::sasl_final(out.to_client, &last);
                Ok(None)
            }
            // Not a step a message can be checked against (cannot happen: a message is checked
            // against the step it was moved out of, and none is while awaiting the verifier).
            AuthState::Checking | AuthState::AwaitingVerifier(_) => {
                Err(AuthFailureKind::ProtocolViolation)
            }
        }
    }

    fn password_failed(&mut self, out: &mut Out<'_>) {
        if let Some(db) = self.db.and_then(|db| out.stats.database(db)) {
            db.auth_failures.inc();
        }
        let user = self.user.clone();
        self.fail(SessionError::PasswordFailed { user }, out);
    }

    /// Authentication succeeded: AuthenticationOk, then the parameters (learning them from a
    /// backend first when this pool has none yet).
    fn authenticated(&mut self, env: &mut Env<'_>, out: &mut Out<'_>) {
        match self.console {
            Some(true) => {
                be_msg::authentication_ok(out.to_client);
                return self.finish_console_login(out);
            }
            Some(false) => {
                let user = self.user.clone();
                return self.fail(SessionError::NotAdmin { user }, out);
            }
            None => {}
        }
        let Some(pool) = self.pool else {
            return self.password_failed(out);
        };
        be_msg::authentication_ok(out.to_client);
        match (env.server_params)(pool) {
            Some(params) => self.finish_login(&params, out),
            None => {
                self.set_state(State::AwaitingParameters { since: out.now }, out);
                out.actions.push(Action::Acquire);
            }
        }
    }
}
