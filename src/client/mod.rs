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
//!
//!  any state ──FATAL, Terminate, detach──▶ Closed
//! ```
//!
//! The reactor feeds it bytes and events and carries out the [`Action`]s it emits. Bytes for
//! the client go to `Out::to_client`, bytes for the held backend to `Out::to_backend`. A
//! message that needs a backend is left unconsumed while the session waits for one, so the
//! reactor stops reading that client: a waiting client costs no buffer growth.
//!
//! The state is an enum whose variants carry what only means something in them (the
//! failure owed to a waiting message while idle, everything about one lending while
//! active), and every change of state goes through [`Session::set_state`], which records an
//! [`Event`] with the engine's clock (`Out::now`). The errors the session raises itself are
//! [`SessionError`]s; a FATAL one ends the session for good.
//!
//! Client bytes never panic the process: this module denies indexing, `unwrap`, `expect`
//! and `panic!` outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod active;
mod console;
mod context;
mod drain;
mod error;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzzing;
mod idle;
pub mod inspect;
pub mod params;
mod prepared;
pub mod relay;
mod startup;
mod state;
pub mod statements;
pub mod users;

use std::sync::Arc;
use std::time::Instant;

pub use context::{BackendContext, DatabaseContext};
pub use drain::{Drain, DrainKind, DrainStep};
pub use error::{AcquireError, SessionError};

use crate::auth::Rng;
use crate::engine::id::ServerId;
use crate::observe::events::{ClientState, ErrorOrigin, Event, EventSink, Interest, pool_number};
use crate::observe::metrics::ReactorStats;
use crate::protocol::backend as be_msg;
use crate::protocol::framing::Header;
use crate::protocol::startup::ProtocolVersion;
use crate::protocol::{FrontendMessage, TransactionStatus};
use params::Params;
use relay::{Relay, RelayPool, RelaySlot};
use startup::AuthState;
use statements::ClientStatements;
use users::{DbId, PoolId, ScramSecret, UserTable};

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
    /// The startup parameter that carries a W3C `traceparent` (`opentelemetry.
    /// traceparent_startup_parameter`): pglink's, never sent to a server.
    pub traceparent_parameter: String,
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

/// Where a session's output goes for one call, and when the call happens.
pub struct Out<'a> {
    pub to_client: &'a mut Vec<u8>,
    /// The held backend's output buffer (an empty scratch vector when none is held).
    pub to_backend: &'a mut Vec<u8>,
    /// What is known of the held backend (an empty scratch context when none is held).
    pub backend: &'a mut BackendContext,
    pub actions: &'a mut Vec<Action>,
    /// The driving reactor's counters (pins, authentication failures, transactions, errors).
    pub stats: &'a ReactorStats,
    /// The time of this call, from the engine's clock (the session never reads a clock).
    pub now: Instant,
    /// Where state changes are recorded.
    pub events: Option<&'a mut dyn EventSink>,
    /// The kinds of event `events` wants: the others are not handed to it (nor built, when
    /// that costs).
    pub interest: Interest,
    /// The engine's relays not in use (see [`RelaySlot`]).
    pub relays: &'a mut RelayPool,
}

/// SQL text kept for a traced statement is cut at this length.
const MAX_TRACED_TEXT: usize = 16 * 1024;

/// Records `event` when events of its kind are being recorded.
fn record(out: &mut Out<'_>, event: Event<'_>) {
    if let Some(events) = out.events.as_deref_mut()
        && out.interest.wants(event.kind())
    {
        events.record(out.now, &event);
    }
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
        if let (Some(to), Some(from)) = (bytes.get_mut(..len), key.get(..len)) {
            to.copy_from_slice(from);
        }
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
    /// Derive this SCRAM secret off the reactor, then call `on_verifier_ready`.
    DeriveVerifier(Arc<ScramSecret>),
    /// Login finished (stop the login timer).
    LoggedIn,
    /// Run this admin console command, then call `on_console_reply`.
    Console(String),
    /// Get a backend from the session's pool and call `on_backend_attached`.
    Acquire,
    /// This backend, held until now, is clean: return it to the pool.
    Release(ServerId),
    /// This backend, held until now, is unusable: close it.
    DropBackend(ServerId),
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
    /// Roll back / drain first, with this relay state (see [`Drain::reset`]).
    Reset(Box<Relay>),
    /// The protocol state is unknowable (half a message was sent): close it.
    Drop,
}

/// A session's state, with what only means something in it.
#[derive(Debug)]
enum State {
    /// Waiting for the startup packet (or an SSLRequest, GSSENCRequest or CancelRequest).
    /// `refusal`: the connection was accepted only to be refused with this error, which goes
    /// out once the startup packet is in (where libpq shows it).
    AwaitingStartup { refusal: Option<SessionError> },
    /// Waiting for the TLS handshake the client asked for.
    AwaitingTls { refusal: Option<SessionError> },
    /// Waiting for the client's password or SASL messages.
    Authenticating(AuthState),
    /// Authenticated, waiting for a server connection of the pool to learn the server's
    /// parameters from (the pool's first login), since `since`.
    AwaitingParameters { since: Instant },
    /// Logged in and holding no server connection: waiting for the client's next message.
    Idle(Idle),
    /// Waiting, since `since`, for a server connection for the client's message (left
    /// unconsumed meanwhile).
    Acquiring { since: Instant },
    /// Holding a server connection; the relay forwards both ways.
    Active(Lending),
    /// Logged in to the admin console; `busy` while a command runs (input waits).
    Console { busy: bool },
    /// Over; later input is ignored. `leftover`: a server connection the session still held
    /// when it ended without failing it (shutdown), and its fate, for [`Session::detach`].
    Closed {
        leftover: Option<(ServerId, BackendFate)>,
    },
}

impl State {
    fn closed() -> State {
        State::Closed { leftover: None }
    }

    /// The state's name, for events.
    fn kind(&self) -> ClientState {
        match self {
            State::AwaitingStartup { .. } => ClientState::AwaitingStartup,
            State::AwaitingTls { .. } => ClientState::AwaitingTls,
            State::Authenticating(_) => ClientState::Authenticating,
            State::AwaitingParameters { .. } => ClientState::AwaitingParameters,
            State::Idle(_) => ClientState::Idle,
            State::Acquiring { .. } => ClientState::Acquiring,
            State::Active(_) => ClientState::Active,
            State::Console { busy: false } => ClientState::Idle,
            State::Console { busy: true } => ClientState::Active,
            State::Closed { .. } => ClientState::Closed,
        }
    }
}

/// Idle: what is owed to the client's next messages.
#[derive(Debug, Default)]
struct Idle {
    /// A failed acquire to report against the message that asked for it.
    failure: Option<AcquireError>,
    /// After a local error in extended protocol: drop messages until Sync.
    skip_to_sync: bool,
    /// Bytes of a client message being dropped.
    discard: usize,
}

/// Active: one lending of a server connection. Everything here starts afresh with the next
/// lending (a pinned session keeps its lending for good).
#[derive(Debug)]
struct Lending {
    /// The server connection held.
    server: ServerId,
    /// Client input stopped short (pipeline full, or waiting for a shape): ask for it
    /// again (`Action::ResumeInput`) once that has passed.
    input_blocked: bool,
    /// A parameter sync is in flight: client input waits (see `state::sync_backend`).
    syncing: bool,
    /// When the current transaction's first message went to the server (a pinned session's
    /// next transaction starts with its next message).
    started: Option<Instant>,
    /// `ResumeInput` was asked for and the client's input not looked at since: the backend
    /// stays even if the server is idle (a sync alone does not end the lending).
    resuming: bool,
    /// The statement whose shape a Bind or Describe waited for (see
    /// `prepared::prepare_for_use`); cleared once that message is handled.
    waited_for: Option<u64>,
    /// A Parse of the cached unnamed statement waits for the answers to its batch so far
    /// (see `prepared::parse_unnamed`); cleared once it is handled.
    waited_for_batch: bool,
    /// The client messages of the current batch, kept in case it must be replayed (see
    /// `prepared::on_stale_plan`).
    replay: Option<Vec<u8>>,
    /// Unreported parameters the client changed: read back before release.
    touched: Vec<String>,
    /// A client statement ran since the last read-back (Query, Execute, FunctionCall went
    /// to the server): `track_extra_parameters` are read back after the transaction.
    ran: bool,
    /// The client ran RESET ALL / DISCARD ALL.
    reset_all: bool,
}

impl Lending {
    fn new(server: ServerId) -> Lending {
        Lending {
            server,
            input_blocked: false,
            syncing: false,
            started: None,
            resuming: false,
            waited_for: None,
            waited_for_batch: false,
            replay: None,
            touched: Vec::new(),
            ran: false,
            reset_all: false,
        }
    }
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    key: CancelKey,
    tls: bool,
    /// The client came through a unix socket: as PostgreSQL does, TLS is not offered there
    /// and not required either (the bytes never leave the host).
    local: bool,
    protocol: ProtocolVersion,
    pool: Option<PoolId>,
    /// The database, once the startup packet named a configured one.
    db: Option<DbId>,
    /// A login to the admin console: whether the user is in `admin_users`.
    console: Option<bool>,
    /// The channel-binding data of the certificate this connection's TLS handshake was
    /// served (`None` until the driver says; then the configuration's is used).
    channel_binding: Option<Option<Vec<u8>>>,
    database: String,
    user: String,
    /// Startup parameters other than user/database (application_name, client_encoding, ...).
    startup_params: ParamList,
    /// The trace context the client gave at startup, if it gave a valid one.
    trace_parent: Option<crate::observe::trace::TraceParent>,
    /// The client's address (`None` over a unix socket).
    peer: Option<core::net::SocketAddr>,
    /// While statements are traced: the unnamed statement's text, and the statement the
    /// last Bind named (`None`: the unnamed one).
    traced_unnamed: Vec<u8>,
    traced_bound: Option<Arc<statements::Statement>>,
    /// The relay of the current lending (none while idle).
    relay: RelaySlot,
    /// The client's named prepared statements.
    statements: ClientStatements,
    /// The database's shared context (known after login).
    db_context: Option<Arc<DatabaseContext>>,
    /// Parameter values the client has (see `params`).
    /// Shared with other clients that have the same settings until this one changes one.
    desired: Arc<Params>,
    /// The parameters the server reports (and their values at login).
    reported: Option<Arc<ParamList>>,
    /// Why the session keeps its backend for good, if it does.
    pinned: Option<inspect::PinReason>,
}

impl Session {
    /// A new session; `key` is the proxy-issued cancel key (pid encodes reactor and slot).
    pub fn new(key: CancelKey, max_message_len: usize) -> Session {
        Session {
            state: State::AwaitingStartup { refusal: None },
            key,
            tls: false,
            local: false,
            protocol: ProtocolVersion::V3_0,
            pool: None,
            db: None,
            console: None,
            channel_binding: None,
            database: String::new(),
            user: String::new(),
            startup_params: Vec::new(),
            trace_parent: None,
            peer: None,
            traced_unnamed: Vec::new(),
            traced_bound: None,
            relay: RelaySlot::new(max_message_len),
            statements: ClientStatements::default(),
            db_context: None,
            desired: Arc::default(),
            reported: None,
            pinned: None,
        }
    }

    /// A session that answers SSL negotiation, reads the startup packet and then refuses
    /// with `error`, as PostgreSQL does for "too many clients".
    pub fn refusing(key: CancelKey, error: SessionError) -> Session {
        Session {
            state: State::AwaitingStartup {
                refusal: Some(error),
            },
            ..Session::new(key, 0)
        }
    }

    /// Where the client connected from (for log lines).
    pub fn set_peer(&mut self, peer: core::net::SocketAddr) {
        self.peer = Some(peer);
    }

    /// Marks the session as a unix-socket client's (before any byte of it is read).
    pub fn set_local(&mut self) {
        self.local = true;
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

    /// The W3C trace context the client gave at startup (`traceparent_startup_parameter`):
    /// the parent of its transactions' spans once pglink exports traces.
    pub fn trace_parent(&self) -> Option<&crate::observe::trace::TraceParent> {
        self.trace_parent.as_ref()
    }

    /// Holds a backend (the reactor must keep it attached).
    pub fn holds_backend(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// The server connection held, if any.
    pub fn server(&self) -> Option<ServerId> {
        self.lending().map(|l| l.server)
    }

    /// Waiting for a backend.
    pub fn is_acquiring(&self) -> bool {
        matches!(
            self.state,
            State::Acquiring { .. } | State::AwaitingParameters { .. }
        )
    }

    /// When the current wait for a backend began (for the acquire-wait histogram).
    pub fn waiting_since(&self) -> Option<Instant> {
        match self.state {
            State::Acquiring { since } | State::AwaitingParameters { since } => Some(since),
            _ => None,
        }
    }

    /// Startup and authentication are done.
    pub fn is_logged_in(&self) -> bool {
        matches!(
            self.state,
            State::Idle(_) | State::Acquiring { .. } | State::Active(_) | State::Console { .. }
        )
    }

    /// What the session is doing, as the admin console's `SHOW CLIENTS` says it.
    pub fn activity(&self) -> &'static str {
        match self.state {
            State::AwaitingStartup { .. }
            | State::AwaitingTls { .. }
            | State::Authenticating(_)
            | State::AwaitingParameters { .. } => "login",
            State::Idle(_) => "idle",
            State::Acquiring { .. } => "waiting",
            State::Active(_) => "active",
            State::Console { .. } => "console",
            State::Closed { .. } => "closed",
        }
    }

    /// The client's `application_name` now.
    pub fn application_name(&self) -> &str {
        self.desired
            .get("application_name")
            .or_else(|| {
                self.startup_params
                    .iter()
                    .find(|(k, _)| k == "application_name")
                    .map(|(_, v)| v.as_str())
            })
            .unwrap_or_default()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
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
                State::AwaitingStartup { .. } => self.on_startup_bytes(rest, env, out),
                State::Authenticating(_) => self.on_auth_bytes(rest, env, out),
                State::Idle(_) => self.on_idle_bytes(rest, out),
                State::Console { busy: false } => self.on_console_bytes(rest, out),
                State::Active(_) => self.on_active_bytes(rest, out),
                State::AwaitingTls { .. }
                | State::AwaitingParameters { .. }
                | State::Acquiring { .. }
                | State::Console { busy: true }
                | State::Closed { .. } => 0,
            };
            if pos == before || pos >= data.len() {
                return pos;
            }
        }
    }

    /// The TLS handshake finished. Direct TLS must have negotiated ALPN `postgresql`.
    /// The `tls-server-end-point` data of the certificate this connection was served (the
    /// driver knows it; a reload may have changed the configuration's since).
    pub fn set_channel_binding(&mut self, binding: Option<Vec<u8>>) {
        self.channel_binding = Some(binding);
    }

    pub fn on_tls_established(&mut self, direct: bool, alpn_postgresql: bool, out: &mut Out<'_>) {
        self.tls = true;
        if direct && !alpn_postgresql {
            return self.fail(SessionError::DirectTlsWithoutAlpn, out);
        }
        if let State::AwaitingTls { refusal } = &mut self.state {
            let refusal = refusal.take();
            self.set_state(State::AwaitingStartup { refusal }, out);
        }
    }

    /// A backend is now held (`Acquire` succeeded): `server` is its id. `params` are the
    /// backend's server parameters, used when this login is waiting to learn them.
    /// `settings_match`: the backend's settings were just found to match this session's
    /// ([`Session::settings_match`], nothing changed since), so they are not checked again.
    pub fn on_backend_attached(
        &mut self,
        server: ServerId,
        params: &Arc<ParamList>,
        settings_match: bool,
        out: &mut Out<'_>,
    ) {
        match self.state {
            State::AwaitingParameters { .. } => {
                self.finish_login(params, out);
                out.actions.push(Action::Release(server));
            }
            State::Acquiring { .. } => {
                self.relay.attach(out.relays);
                // The message that asked for the backend has not been looked at yet: a
                // parameter sync that completes first must not end the lending.
                let lending = Lending {
                    resuming: true,
                    ..Lending::new(server)
                };
                if let State::Acquiring { since } = self.set_state(State::Active(lending), out) {
                    record(
                        out,
                        Event::Acquired {
                            pid: self.key.pid,
                            server,
                            pool: self.pool.map_or(u32::MAX, pool_number),
                            waited: out.now.saturating_duration_since(since),
                        },
                    );
                }
                if !settings_match {
                    self.sync_backend(out);
                }
            }
            // Nothing asked for it (the client left meanwhile): give it back.
            _ => out.actions.push(Action::Release(server)),
        }
    }

    /// No backend could be had. The waiting message gets an ERROR (the session stays usable);
    /// a login waiting for server parameters gets a FATAL.
    pub fn on_acquire_failed(&mut self, error: AcquireError, out: &mut Out<'_>) {
        match self.state {
            State::AwaitingParameters { .. } => {
                self.fail(SessionError::NoServerForLogin(error), out)
            }
            State::Acquiring { .. } => {
                let idle = Idle {
                    failure: Some(error),
                    ..Idle::default()
                };
                self.set_state(State::Idle(idle), out);
            }
            _ => {}
        }
    }

    /// The held backend failed (closed, reset, or protocol desync): the client's transaction
    /// is gone, so the client gets FATAL 08006 and is closed.
    pub fn on_backend_lost(&mut self, out: &mut Out<'_>) {
        if self.is_closed() {
            return;
        }
        if self.relay.backend_mid_message() {
            // A message is half sent; another message cannot be framed after it.
            if let Some(server) = self.server() {
                out.actions.push(Action::DropBackend(server));
            }
            self.set_state(State::closed(), out);
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

    /// The proxy is shutting down: the session ends with FATAL 57P01 and `Action::Close`. A
    /// server connection it holds meets the fate it would if the client left now, handed
    /// over by [`Session::detach`]. A closed session gets nothing more (only the `Close`).
    pub fn on_shutdown(&mut self, out: &mut Out<'_>) {
        self.end_fatal(SessionError::ShuttingDown, out);
    }

    /// A reload removed this session's user or database.
    pub fn on_removed(&mut self, out: &mut Out<'_>) {
        let error = SessionError::Removed {
            user: self.user.clone(),
            database: self.database.clone(),
        };
        self.end_fatal(error, out);
    }

    /// Ends the session with a FATAL `error` (unless it is closed already); a held server
    /// connection's fate goes with it.
    fn end_fatal(&mut self, error: SessionError, out: &mut Out<'_>) {
        if !self.is_closed() {
            // Mid-way through a server message the client cannot be sent an error.
            self.note_error(&error, out);
            if !self.relay.backend_mid_message() || !self.holds_backend() {
                error.encode(out.to_client, out.stats);
            }
            let leftover = self.backend_fate();
            self.set_state(State::Closed { leftover }, out);
        }
        out.actions.push(Action::Close);
    }

    /// The client is gone (or being closed): decides what happens to a held backend, and
    /// returns it with its id.
    pub fn detach(&mut self, out: &mut Out<'_>) -> Option<(ServerId, BackendFate)> {
        let fate = self.backend_fate();
        match self.set_state(State::closed(), out) {
            State::Closed { leftover } => leftover,
            _ => fate,
        }
    }

    /// What becomes of the held backend if the session ends now (it is `Reset`'s relay).
    pub(super) fn backend_fate(&mut self) -> Option<(ServerId, BackendFate)> {
        let State::Active(lending) = &self.state else {
            return None;
        };
        let server = lending.server;
        let in_doubt = self.settings_in_doubt(lending);
        let fate = if self.relay.client_mid_message() || self.pinned.is_some() {
            // A pinned backend holds state (locks, LISTEN, temp tables) no one else may see.
            BackendFate::Drop
        } else if !self.relay.is_idle() && in_doubt {
            // Its parameters may have changed in ways only this session would have
            // read back: nobody may get it with settings pglink does not know.
            BackendFate::Drop
        } else if self.relay.is_idle() {
            BackendFate::Release
        } else {
            BackendFate::Reset(self.relay.take())
        };
        Some((server, fate))
    }

    /// Every change of state goes through here: it records the change as an event when the
    /// state's kind changes. Returns the previous state.
    fn set_state(&mut self, state: State, out: &mut Out<'_>) -> State {
        let kind = state.kind();
        let old = std::mem::replace(&mut self.state, state);
        if matches!(self.state, State::Idle(_) | State::Closed { .. }) {
            // Held again with the next backend.
            self.relay.park(out.relays);
        }
        if old.kind() != kind {
            record(
                out,
                Event::Client {
                    pid: self.key.pid,
                    state: kind,
                },
            );
        }
        old
    }

    /// Records a client message that went to the server or was answered.
    fn client_message(&self, header: Header, out: &mut Out<'_>) {
        record(
            out,
            Event::ClientMessage {
                pid: self.key.pid,
                tag: header.tag,
                len: u32::try_from(header.frame_len()).unwrap_or(u32::MAX),
            },
        );
    }

    /// Records a client statement sent to the server, with its SQL `text`.
    fn statement_started(&self, text: &[u8], extended: bool, out: &mut Out<'_>) {
        if let Some(server) = self.server() {
            let text = text.get(..MAX_TRACED_TEXT).unwrap_or(text);
            record(
                out,
                Event::StatementStarted {
                    pid: self.key.pid,
                    server,
                    text,
                    extended,
                },
            );
        }
    }

    /// An Execute (or FunctionCall) went to the server: records it with the text of the
    /// statement last bound.
    fn execute_started(&self, out: &mut Out<'_>) {
        let text = match &self.traced_bound {
            Some(statement) => &statement.query[..],
            None => &self.traced_unnamed[..],
        };
        self.statement_started(text, true, out);
    }

    /// Keeps what an Execute will run, for its [`Event::StatementStarted`]: the unnamed
    /// statement's text from its Parse, the statement a Bind names.
    fn trace_statement_text(&mut self, msg: &FrontendMessage<'_>) {
        match msg {
            FrontendMessage::Parse(p) if p.name.is_empty() => {
                let text = p.query.get(..MAX_TRACED_TEXT).unwrap_or(p.query);
                self.traced_unnamed.clear();
                self.traced_unnamed.extend_from_slice(text);
            }
            // The statement a Bind names is kept where the Bind is let through, from the
            // lookup that checks it (`on_statement_message`): none until then.
            FrontendMessage::Bind(_) => self.traced_bound = None,
            _ => {}
        }
    }

    /// Records an error pglink answers the client with.
    fn note_error(&self, error: &SessionError, out: &mut Out<'_>) {
        record(
            out,
            Event::Error {
                pid: Some(self.key.pid),
                server: self.server(),
                origin: error.origin(),
                sqlstate: error.sqlstate(),
            },
        );
    }

    /// Times the client statements whose answers ended, and records them.
    fn statements_ended(&mut self, out: &mut Out<'_>) {
        if !self.relay.has_statements() {
            return;
        }
        let stats = self.pool.and_then(|p| out.stats.pool(p));
        let pool = self.pool.map_or(u32::MAX, pool_number);
        let (pid, server) = (self.key.pid, self.server());
        for done in self.relay.take_statements() {
            if let Some(p) = stats {
                p.query_time
                    .observe(out.now.saturating_duration_since(done.started));
            }
            if let Some(server) = server {
                record(
                    out,
                    Event::StatementEnded {
                        pid,
                        server,
                        pool,
                        started: done.started,
                        end: done.end,
                        tag: done.tag.as_bytes(),
                        sqlstate: done.sqlstate,
                    },
                );
            }
        }
    }

    /// The lending, while a backend is held.
    fn lending(&self) -> Option<&Lending> {
        match &self.state {
            State::Active(lending) => Some(lending),
            _ => None,
        }
    }

    fn lending_mut(&mut self) -> Option<&mut Lending> {
        match &mut self.state {
            State::Active(lending) => Some(lending),
            _ => None,
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
        self.set_state(State::Idle(Idle::default()), out);
        out.actions.push(Action::LoggedIn);
    }

    /// A transaction ended with nothing outstanding (the backend goes back, or stays with a
    /// pinned session).
    fn transaction_done(&mut self, out: &mut Out<'_>) {
        let started = self.lending_mut().and_then(|l| l.started.take());
        if let Some(p) = self.pool.and_then(|p| out.stats.pool(p)) {
            p.transactions.inc();
            if let Some(started) = started {
                p.transaction_time
                    .observe(out.now.saturating_duration_since(started));
            }
        }
        if let (Some(started), Some(server), Some(pool)) = (started, self.server(), self.pool) {
            record(
                out,
                Event::TransactionEnded {
                    pid: self.key.pid,
                    server,
                    pool: pool_number(pool),
                    started,
                },
            );
        }
    }

    /// Counts the ErrorResponses the server just sent, by SQLSTATE class.
    fn count_server_errors(&mut self, out: &mut Out<'_>) {
        let stats = self.pool.and_then(|p| out.stats.pool(p));
        let (pid, server) = (self.key.pid, self.server());
        for code in self.relay.take_server_errors() {
            if let Some(c) = stats.and_then(|p| {
                p.server_errors
                    .get(crate::observe::metrics::sqlstate_class_index(code))
            }) {
                c.inc();
            }
            record(
                out,
                Event::Error {
                    pid: Some(pid),
                    server,
                    origin: ErrorOrigin::Server,
                    sqlstate: code,
                },
            );
        }
    }

    /// Ends the session with a FATAL `error`; a held backend is dropped (what it was doing
    /// for the client cannot be finished).
    fn fail(&mut self, error: SessionError, out: &mut Out<'_>) {
        self.end(&error, Action::DropBackend, out);
    }

    /// Ends the session with `error` (once: a closed session stays closed and says nothing
    /// more); `held` is what becomes of a held backend.
    fn end(&mut self, error: &SessionError, held: fn(ServerId) -> Action, out: &mut Out<'_>) {
        if self.is_closed() {
            return;
        }
        self.note_error(error, out);
        error.encode(out.to_client, out.stats);
        if let Some(server) = self.server() {
            out.actions.push(held(server));
        }
        self.set_state(State::closed(), out);
        out.actions.push(Action::Close);
    }
}

#[cfg(test)]
mod tests;
