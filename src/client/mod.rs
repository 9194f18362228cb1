//! The client session: a sans-IO state machine for one client connection.
//!
//! ```text
//!  AwaitingStartup ──SSLRequest──▶ AwaitingTls ──▶ AwaitingStartup
//!        │ StartupMessage
//!        ▼
//!  Authenticating ──▶ AwaitingParameters (first login of a pool: learn them from a backend)
//!        │                 │
//!        ▼                 ▼
//!      Idle ◀──Release── Active (holds a backend; the relay forwards both ways)
//!        │                 ▲
//!        └──Acquire──▶ Acquiring
//! ```
//!
//! The reactor feeds it bytes and events and carries out the [`Action`]s it emits. Bytes for
//! the client go to `Out::to_client`, bytes for the held backend to `Out::to_backend`. A
//! message that needs a backend is left unconsumed while the session waits for one, so the
//! reactor stops reading that client: a waiting client costs no buffer growth.

mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod params;
mod prepared;
pub mod relay;
mod startup;
mod state;
pub mod statements;
pub mod users;

use std::sync::Arc;

pub use error::{AcquireError, SessionError};

use crate::auth::Rng;
use crate::observe::metrics::ReactorStats;
use crate::protocol::TransactionStatus;
use crate::protocol::backend as be_msg;
use crate::protocol::framing::{Header, peek_header};
use crate::protocol::frontend::tag as fe;
use crate::protocol::startup::ProtocolVersion;
use params::Params;
use prepared::Handled;
use relay::{BackendStop, MAX_STREAMED_MESSAGE, Relay};
use startup::AuthState;
use statements::{BackendStatements, ClientStatements, Registry};
use users::{DbId, PoolId, UserTable};

/// A message the session needs whole (see `Session::whole_message`).
enum Whole<'d> {
    Complete(&'d [u8]),
    Partial,
    /// Over the limit; the session was failed.
    TooLong,
}

/// Server parameters as reported with ParameterStatus, in report order.
pub type ParamList = Vec<(String, String)>;

/// How clients must authenticate (`auth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Plaintext,
    Md5,
    Scram,
}

/// Client-side TLS policy (`tls.sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    /// `disable`: SSLRequest is answered 'N'.
    Disabled,
    /// `allow`/`prefer`: TLS if the client asks.
    Optional,
    /// `require`: plaintext startup is refused.
    Required,
}

/// Settings the sessions of a server share.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub auth_method: AuthMethod,
    pub tls: ClientTls,
    /// `tls-server-end-point` channel-binding data of our certificate (SCRAM-SHA-256-PLUS).
    pub channel_binding: Option<Vec<u8>>,
    pub max_message_len: usize,
}

/// What a session needs from its surroundings for one call.
pub struct Env<'a> {
    pub config: &'a SessionConfig,
    pub users: &'a UserTable,
    pub rng: &'a mut dyn Rng,
    /// Parameters learnt from a backend of the pool, if any backend has logged in yet.
    pub server_params: &'a dyn Fn(PoolId) -> Option<Arc<ParamList>>,
    /// What a database's sessions share (statement registry, parameter settings).
    pub database: &'a dyn Fn(DbId) -> Option<Arc<DatabaseContext>>,
}

/// Per-database settings and state the sessions of that database share.
#[derive(Debug)]
pub struct DatabaseContext {
    pub registry: Registry,
    /// `track_extra_parameters`: read back after every transaction that ran a statement.
    pub track_extra: Vec<String>,
    /// `default_startup_parameters`: override the client's values for these names.
    pub overrides: Vec<(String, String)>,
    /// Settings sets clients of this database started with, shared between clients that
    /// have the same (see `params::SharedParams`).
    pub shared_params: params::SharedParams,
}

/// What pglink knows about a backend that goes with it from client to client.
#[derive(Debug)]
pub struct BackendContext {
    pub statements: BackendStatements,
    /// Parameter values known to be in effect on the backend.
    pub params: Params,
}

impl BackendContext {
    pub fn new(statement_capacity: usize) -> BackendContext {
        BackendContext {
            statements: BackendStatements::new(statement_capacity),
            params: Params::default(),
        }
    }

    /// The parameters a backend has right after login, and again after RESET ALL: those the
    /// server reported, and the startup parameters pglink logged in with
    /// (`default_startup_parameters`) for the others.
    pub fn set_login_params(&mut self, reported: &ParamList, startup: &[(String, String)]) {
        self.params = Params::default();
        for (name, value) in startup.iter().chain(reported.iter()) {
            self.params.set(name, value);
        }
    }
}

/// Where a session's output goes for one call.
pub struct Out<'a> {
    pub to_client: &'a mut Vec<u8>,
    /// The held backend's output buffer (an empty scratch vector when none is held).
    pub to_backend: &'a mut Vec<u8>,
    /// What is known of the held backend (an empty scratch context when none is held).
    pub backend: &'a mut BackendContext,
    pub actions: &'a mut Vec<Action>,
    /// The driving reactor's counters (pins, authentication failures, transactions, errors).
    pub stats: &'a ReactorStats,
}

/// The SQL text of a whole Query message (without its NUL).
fn query_text(message: &[u8]) -> &[u8] {
    let body = message.get(Header::SIZE..).unwrap_or_default();
    body.strip_suffix(&[0]).unwrap_or(body)
}

/// Cancel keys: 4 bytes in protocol 3.0, 32 in 3.2.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CancelKey {
    pub pid: u32,
    bytes: [u8; 32],
    len: u8,
}

impl CancelKey {
    /// Builds a key from random bytes; `len` is clamped to 4..=32.
    pub fn new(pid: u32, bytes: [u8; 32], len: usize) -> CancelKey {
        CancelKey {
            pid,
            bytes,
            len: len.clamp(4, 32) as u8,
        }
    }

    pub fn secret(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// Copies a key received in a CancelRequest (4..=256 bytes; longer than ours never matches).
    pub fn from_request(pid: u32, key: &[u8]) -> CancelKey {
        let mut bytes = [0u8; 32];
        let len = key.len().min(32);
        bytes[..len].copy_from_slice(&key[..len]);
        CancelKey {
            pid,
            bytes,
            len: if key.len() > 32 { 0 } else { len as u8 },
        }
    }
}

impl std::fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelKey")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// What the reactor must do after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Flush `to_client` in plaintext, then run a TLS handshake (`direct`: the bytes already
    /// received are the ClientHello).
    StartTls { direct: bool },
    /// Login finished (stop the login timer).
    LoggedIn,
    /// Get a backend from the session's pool and call `on_backend_attached`.
    Acquire,
    /// The held backend is clean: return it to the pool.
    Release,
    /// The held backend is unusable: close it.
    DropBackend,
    /// This connection was a CancelRequest.
    Cancel(CancelKey),
    /// The session stopped taking client input for a while and takes it again: offer the
    /// buffered input (`on_client_data`) once more.
    ResumeInput,
    /// Flush `to_client`, then close the connection.
    Close,
}

/// What should happen to the held backend when the client goes away.
#[derive(Debug)]
pub enum BackendFate {
    /// Nothing outstanding: back to the pool.
    Release,
    /// Roll back / drain first, with this relay state.
    Reset(Relay),
    /// The protocol state is unknowable (half a message was sent): close it.
    Drop,
}

#[derive(Debug)]
enum State {
    AwaitingStartup,
    AwaitingTls,
    Authenticating(AuthState),
    AwaitingParameters,
    Idle,
    Acquiring,
    Active,
    Closed,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    key: CancelKey,
    tls: bool,
    protocol: ProtocolVersion,
    pool: Option<PoolId>,
    /// The database, once the startup packet named a configured one.
    db: Option<DbId>,
    database: String,
    user: String,
    /// Startup parameters other than user/database (application_name, client_encoding, ...).
    startup_params: ParamList,
    relay: Relay,
    /// After a local error in extended protocol: drop messages until Sync.
    skip_to_sync: bool,
    /// Bytes of a client message being dropped.
    discard: usize,
    /// A failed acquire to report against the message that asked for it.
    failure: Option<AcquireError>,
    /// Set for connections accepted only to be refused (too many clients, shutting down):
    /// the FATAL goes out after SSL negotiation and the startup packet, where libpq shows it.
    refusal: Option<SessionError>,
    /// The client's named prepared statements.
    statements: ClientStatements,
    /// The database's shared context (known after login).
    db_context: Option<Arc<DatabaseContext>>,
    /// Parameter values the client has (see `params`).
    /// Shared with other clients that have the same settings until this one changes one.
    desired: Arc<Params>,
    /// The parameters the server reports (and their values at login).
    reported: Option<Arc<ParamList>>,
    /// Unreported parameters the client changed in this lending: read back before release.
    touched: Vec<String>,
    /// A client statement ran since the last read-back (Query, Execute, FunctionCall went
    /// to the server): `track_extra_parameters` are read back after the transaction.
    ran: bool,
    /// The client ran RESET ALL / DISCARD ALL in this lending.
    reset_all: bool,
    /// Why the session keeps its backend for good, if it does.
    pinned: Option<inspect::PinReason>,
    /// The client messages of the current batch, kept in case it must be replayed (see
    /// `prepared::on_stale_plan`).
    replay: Option<Vec<u8>>,
    /// The statement whose shape a Bind or Describe waited for (see
    /// `prepared::prepare_for_use`); cleared once that message is handled.
    waited_for: Option<u64>,
    /// Client input stopped short (pipeline full, or waiting for a shape): ask for it
    /// again (`Action::ResumeInput`) once that has passed.
    input_blocked: bool,
    /// A parameter sync is in flight: client input waits (see `state::sync_backend`).
    syncing: bool,
    /// `ResumeInput` was asked for and the client's input not looked at since: the backend
    /// stays even if the server is idle (a sync alone does not end the lending).
    resuming: bool,
}

impl Session {
    /// A new session; `key` is the proxy-issued cancel key (pid encodes reactor and slot).
    pub fn new(key: CancelKey, max_message_len: usize) -> Session {
        Session {
            state: State::AwaitingStartup,
            key,
            tls: false,
            protocol: ProtocolVersion::V3_0,
            pool: None,
            db: None,
            database: String::new(),
            user: String::new(),
            startup_params: Vec::new(),
            relay: Relay::new(max_message_len),
            skip_to_sync: false,
            discard: 0,
            failure: None,
            refusal: None,
            statements: ClientStatements::default(),
            db_context: None,
            desired: Arc::default(),
            reported: None,
            touched: Vec::new(),
            ran: false,
            reset_all: false,
            pinned: None,
            replay: None,
            waited_for: None,
            input_blocked: false,
            syncing: false,
            resuming: false,
        }
    }

    /// A session that answers SSL negotiation, reads the startup packet and then refuses
    /// with `error`, as PostgreSQL does for "too many clients".
    pub fn refusing(key: CancelKey, error: SessionError) -> Session {
        let mut session = Session::new(key, 0);
        session.refusal = Some(error);
        session
    }

    pub fn pool(&self) -> Option<PoolId> {
        self.pool
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn cancel_key(&self) -> &CancelKey {
        &self.key
    }

    /// Holds a backend (the reactor must keep it attached).
    pub fn holds_backend(&self) -> bool {
        matches!(self.state, State::Active)
    }

    /// Waiting for a backend.
    pub fn is_acquiring(&self) -> bool {
        matches!(self.state, State::Acquiring | State::AwaitingParameters)
    }

    /// Startup and authentication are done.
    pub fn is_logged_in(&self) -> bool {
        matches!(self.state, State::Idle | State::Acquiring | State::Active)
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The relay of the current lending (for the reactor's flow control).
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Feeds client bytes; returns how many were consumed. Unconsumed bytes must be offered
    /// again (with more appended) on the next call.
    pub fn on_client_data(&mut self, data: &[u8], env: &mut Env<'_>, out: &mut Out<'_>) -> usize {
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let before = pos;
            pos += match self.state {
                State::AwaitingStartup => self.on_startup_bytes(rest, env, out),
                State::Authenticating(_) => self.on_auth_bytes(rest, env, out),
                State::Idle => self.on_idle_bytes(rest, out),
                State::Active => self.on_active_bytes(rest, out),
                State::AwaitingTls
                | State::AwaitingParameters
                | State::Acquiring
                | State::Closed => 0,
            };
            if pos == before || pos >= data.len() {
                return pos;
            }
        }
    }

    /// The TLS handshake finished. Direct TLS must have negotiated ALPN `postgresql`.
    pub fn on_tls_established(&mut self, direct: bool, alpn_postgresql: bool, out: &mut Out<'_>) {
        self.tls = true;
        if direct && !alpn_postgresql {
            return self.fail(SessionError::DirectTlsWithoutAlpn, out);
        }
        if let State::AwaitingTls = self.state {
            self.state = State::AwaitingStartup;
        }
    }

    /// A backend is now held (`Acquire` succeeded). `params` are the backend's server
    /// parameters, used when this login is waiting to learn them.
    pub fn on_backend_attached(&mut self, params: &Arc<ParamList>, out: &mut Out<'_>) {
        match self.state {
            State::AwaitingParameters => {
                self.finish_login(params, out);
                out.actions.push(Action::Release);
            }
            State::Acquiring => {
                self.relay.reset();
                self.state = State::Active;
                self.sync_backend(out);
            }
            // Nothing asked for it (the client left meanwhile): give it back.
            _ => out.actions.push(Action::Release),
        }
    }

    /// No backend could be had. The waiting message gets an ERROR (the session stays usable);
    /// a login waiting for server parameters gets a FATAL.
    pub fn on_acquire_failed(&mut self, error: AcquireError, out: &mut Out<'_>) {
        match self.state {
            State::AwaitingParameters => self.fail(SessionError::NoServerForLogin(error), out),
            State::Acquiring => {
                self.failure = Some(error);
                self.state = State::Idle;
            }
            _ => {}
        }
    }

    /// Backend bytes while a backend is held; returns how many were consumed. Bytes after a
    /// `Release` are not this client's.
    pub fn on_backend_data(&mut self, data: &[u8], out: &mut Out<'_>) -> usize {
        if !matches!(self.state, State::Active) {
            return 0;
        }
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            let result = self.relay.on_backend_data(rest, out.to_client);
            self.apply_outcomes(out);
            if !matches!(self.state, State::Active) {
                // A failed parameter sync ended the session (and released the backend, whose
                // later bytes are not this client's).
                return pos + result.as_ref().map_or(0, |(n, _)| *n);
            }
            if self.input_blocked
                && !self.syncing
                && !self.relay.pipeline_full()
                && !self.waiting_for_shape()
            {
                self.input_blocked = false;
                self.resuming = true;
                out.actions.push(Action::ResumeInput);
            }
            match result {
                Ok((n, BackendStop::NeedMore)) => return pos + n,
                Ok((
                    n,
                    BackendStop::ParameterStatus {
                        start,
                        end,
                        forwarded,
                    },
                )) => {
                    let body = rest.get(start..end).unwrap_or_default();
                    self.on_parameter_status(body, forwarded, out);
                    pos += n;
                }
                Ok((n, BackendStop::Idle)) if self.resuming => return pos + n,
                Ok((n, BackendStop::Idle)) => {
                    pos += n;
                    match self.after_transaction(out) {
                        state::AfterTransaction::Continue => continue,
                        state::AfterTransaction::Hold => {
                            self.transaction_done(out);
                            return pos;
                        }
                        state::AfterTransaction::Release => {
                            self.transaction_done(out);
                            self.state = State::Idle;
                            out.actions.push(Action::Release);
                            return pos;
                        }
                    }
                }
                Ok((n, BackendStop::StalePlan { start, end })) => {
                    let error = rest.get(start..end).unwrap_or_default().to_vec();
                    pos += n;
                    self.on_stale_plan(&error, out);
                }
                Ok((n, BackendStop::Fatal)) => {
                    // The server's FATAL went to the client; the session is over.
                    self.state = State::Closed;
                    out.actions.push(Action::DropBackend);
                    out.actions.push(Action::Close);
                    return pos + n;
                }
                Err(relay::RelayError::CopyBoth) if !self.relay.backend_mid_message() => {
                    self.fail(SessionError::Relay(relay::RelayError::CopyBoth), out);
                    return data.len();
                }
                Err(e) => {
                    log::warn!("client {}@{}: {e}; closing", self.user, self.database);
                    self.on_backend_lost(out);
                    return data.len();
                }
            }
        }
    }

    /// The held backend failed (closed, reset, or protocol desync): the client's transaction
    /// is gone, so the client gets FATAL 08006 and is closed.
    pub fn on_backend_lost(&mut self, out: &mut Out<'_>) {
        if self.relay.backend_mid_message() {
            // A message is half sent; another message cannot be framed after it.
            out.actions.push(Action::DropBackend);
            self.state = State::Closed;
            out.actions.push(Action::Close);
            return;
        }
        // `fail` drops the held backend too.
        self.fail(SessionError::ServerLost, out);
    }

    /// The login deadline passed before authentication finished.
    pub fn on_login_timeout(&mut self, out: &mut Out<'_>) {
        if !self.is_logged_in() && !self.is_closed() {
            self.fail(SessionError::LoginTimeout, out);
        }
    }

    /// The client is gone (or being closed): decides what happens to a held backend.
    pub fn detach(&mut self) -> Option<BackendFate> {
        let was_active = matches!(self.state, State::Active);
        self.state = State::Closed;
        if !was_active {
            return None;
        }
        Some(
            if self.relay.client_mid_message() || self.pinned.is_some() {
                // A pinned backend holds state (locks, LISTEN, temp tables) no one else may see.
                BackendFate::Drop
            } else if !self.relay.is_idle() && self.settings_in_doubt() {
                // Its parameters may have changed in ways only this session would have
                // read back: nobody may get it with settings pglink does not know.
                BackendFate::Drop
            } else if self.relay.is_idle() {
                BackendFate::Release
            } else {
                BackendFate::Reset(std::mem::replace(&mut self.relay, Relay::new(0)))
            },
        )
    }

    /// Idle: answer what needs no backend, ask for one for the rest.
    fn on_idle_bytes(&mut self, data: &[u8], out: &mut Out<'_>) -> usize {
        if self.discard > 0 {
            let n = self.discard.min(data.len());
            self.discard -= n;
            return n;
        }
        let header = match peek_header(data, MAX_STREAMED_MESSAGE) {
            Ok(Some(h)) => h,
            Ok(None) => return 0,
            Err(e) => {
                self.fail(SessionError::Framing(e), out);
                return data.len();
            }
        };
        if let Some(error) = self.failure.take() {
            return self.fail_waiting_message(header, data, error, out);
        }
        let acquire = |session: &mut Session, out: &mut Out<'_>| {
            session.state = State::Acquiring;
            out.actions.push(Action::Acquire);
            0
        };
        match header.tag {
            fe::SYNC => {
                self.skip_to_sync = false;
                be_msg::ready_for_query(out.to_client, TransactionStatus::Idle);
                self.consume(header, data)
            }
            // Outside COPY the server ignores these, and Flush has nothing to flush.
            fe::FLUSH | fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => self.consume(header, data),
            fe::TERMINATE => {
                self.state = State::Closed;
                out.actions.push(Action::Close);
                data.len()
            }
            _ if self.skip_to_sync => self.consume(header, data),
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE => {
                let whole = match self.whole_message(header, data, out) {
                    Whole::Complete(whole) => whole,
                    Whole::Partial => return 0,
                    Whole::TooLong => return data.len(),
                };
                let body = whole.get(Header::SIZE..).unwrap_or_default();
                match self.on_statement_message_idle(header.tag, body, out) {
                    Handled::Done => header.frame_len(),
                    Handled::NeedBackend | Handled::Wait => acquire(self, out),
                    Handled::Invalid(e) => {
                        self.fail(e, out);
                        data.len()
                    }
                }
            }
            fe::QUERY => {
                let whole = match self.whole_message(header, data, out) {
                    Whole::Complete(whole) => whole,
                    Whole::Partial => return 0,
                    Whole::TooLong => return data.len(),
                };
                match self.on_query(query_text(whole), false, out) {
                    state::QueryHandling::Answered => header.frame_len(),
                    state::QueryHandling::Forward => acquire(self, out),
                }
            }
            fe::EXECUTE | fe::FUNCTION_CALL => acquire(self, out),
            tag => {
                self.fail(SessionError::UnexpectedMessage { tag }, out);
                data.len()
            }
        }
    }

    /// A message the session must see whole, bounded by the message size limit (a longer
    /// one fails the session).
    fn whole_message<'d>(
        &mut self,
        header: Header,
        data: &'d [u8],
        out: &mut Out<'_>,
    ) -> Whole<'d> {
        if header.frame_len() > self.relay_max_len() {
            let error = SessionError::MessageTooLong {
                len: header.frame_len(),
                max: self.relay_max_len(),
            };
            self.fail(error, out);
            return Whole::TooLong;
        }
        match data.get(..header.frame_len()) {
            Some(whole) => Whole::Complete(whole),
            None => Whole::Partial,
        }
    }

    /// Reports a failed acquire against the message that needed the backend: a simple Query
    /// gets ERROR + ReadyForQuery; an extended-protocol message gets ERROR and the rest of its
    /// batch is dropped up to Sync, as the server itself would.
    fn fail_waiting_message(
        &mut self,
        header: Header,
        data: &[u8],
        error: AcquireError,
        out: &mut Out<'_>,
    ) -> usize {
        SessionError::NoServer(error).encode(out.to_client, out.stats);
        if matches!(header.tag, fe::QUERY | fe::FUNCTION_CALL) {
            be_msg::ready_for_query(out.to_client, TransactionStatus::Idle);
        } else {
            self.skip_to_sync = true;
        }
        self.consume(header, data)
    }

    /// Consumes one message (or the part of it that has arrived, dropping the rest later).
    fn consume(&mut self, header: Header, data: &[u8]) -> usize {
        let n = header.frame_len().min(data.len());
        self.discard = header.frame_len() - n;
        n
    }

    /// Active: everything goes to the held backend, statement messages rewritten.
    fn on_active_bytes(&mut self, data: &[u8], out: &mut Out<'_>) -> usize {
        self.resuming = false;
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            if self.relay.client_mid_message() {
                let n = self.relay.continue_client_message(rest, out.to_backend);
                if n == 0 {
                    return pos;
                }
                pos += n;
                continue;
            }
            if !matches!(self.state, State::Active) {
                return pos;
            }
            if self.syncing || self.relay.pipeline_full() || self.waiting_for_shape() {
                self.input_blocked = true;
                return pos;
            }
            let header = match peek_header(rest, MAX_STREAMED_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => return pos,
                Err(e) => {
                    self.fail(SessionError::Framing(e), out);
                    return data.len();
                }
            };
            let batch_start = self.relay.outstanding() == 0
                && !self.relay.unsynced()
                && self.relay.status() == TransactionStatus::Idle;
            let before = pos;
            let failed = match header.tag {
                fe::TERMINATE => {
                    if rest.len() < header.frame_len() {
                        return pos;
                    }
                    // `detach` (called by the reactor on close) decides the backend's fate.
                    out.actions.push(Action::Close);
                    return pos + header.frame_len();
                }
                fe::QUERY | fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE => {
                    let whole = match self.whole_message(header, rest, out) {
                        Whole::Complete(whole) => whole,
                        Whole::Partial => return pos,
                        Whole::TooLong => return data.len(),
                    };
                    let failed = if header.tag == fe::QUERY {
                        match self.on_query(query_text(whole), true, out) {
                            state::QueryHandling::Answered => None,
                            state::QueryHandling::Forward => {
                                self.ran = true;
                                self.relay
                                    .forward_client_message(header, whole, out.to_backend)
                                    .err()
                                    .map(SessionError::Relay)
                            }
                        }
                    } else {
                        let body = whole.get(Header::SIZE..).unwrap_or_default();
                        let after = rest.get(header.frame_len()..).unwrap_or_default();
                        match self.on_statement_message_active(header.tag, body, whole, after, out)
                        {
                            Handled::Invalid(e) => Some(e),
                            // Nothing is on its way after all: decide again at once.
                            Handled::Wait if !self.waiting_for_shape() => continue,
                            Handled::Wait => {
                                self.input_blocked = true;
                                return pos;
                            }
                            Handled::Done | Handled::NeedBackend => {
                                self.waited_for = None;
                                None
                            }
                        }
                    };
                    pos += header.frame_len();
                    failed
                }
                tag => {
                    self.ran |= matches!(tag, fe::EXECUTE | fe::FUNCTION_CALL);
                    match self
                        .relay
                        .forward_client_message(header, rest, out.to_backend)
                    {
                        Ok(n) => {
                            pos += n;
                            None
                        }
                        Err(e) => Some(SessionError::Relay(e)),
                    }
                }
            };
            if let Some(e) = failed {
                self.fail(e, out);
                return data.len();
            }
            let whole = rest
                .get(..header.frame_len())
                .filter(|_| pos - before == header.frame_len());
            self.record_for_replay(batch_start, header.tag, whole);
        }
    }

    fn relay_max_len(&self) -> usize {
        self.relay.max_message_len()
    }

    /// Sends the rest of the login: parameters, cancel key, ReadyForQuery.
    fn finish_login(&mut self, server_params: &Arc<ParamList>, out: &mut Out<'_>) {
        self.init_desired(server_params);
        for (name, _) in server_params.iter() {
            let value = self.desired.get(name).unwrap_or_default();
            be_msg::parameter_status(out.to_client, name.as_bytes(), value.as_bytes());
        }
        be_msg::backend_key_data(out.to_client, self.key.pid, self.key.secret());
        be_msg::ready_for_query(out.to_client, TransactionStatus::Idle);
        self.state = State::Idle;
        out.actions.push(Action::LoggedIn);
    }

    /// A transaction ended with nothing outstanding (the backend goes back, or stays with a
    /// pinned session).
    fn transaction_done(&self, out: &mut Out<'_>) {
        if let Some(p) = self.pool.and_then(|p| out.stats.pool(p)) {
            p.transactions.inc();
        }
    }

    /// Ends the session with a FATAL `error`; a held backend is dropped (what it was doing
    /// for the client cannot be finished).
    fn fail(&mut self, error: SessionError, out: &mut Out<'_>) {
        self.end(&error, Action::DropBackend, out);
    }

    /// Queues `error` and closes the session; `held` is what becomes of a held backend.
    fn end(&mut self, error: &SessionError, held: Action, out: &mut Out<'_>) {
        error.encode(out.to_client, out.stats);
        if matches!(self.state, State::Active) {
            out.actions.push(held);
        }
        self.state = State::Closed;
        out.actions.push(Action::Close);
    }
}

#[cfg(test)]
mod tests;
