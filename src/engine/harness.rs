//! A deterministic world for the engine, in the manner of quinn's `Pair`: one or two real
//! engines, scripted clients and a scripted PostgreSQL, all on a virtual clock, no sockets.
//!
//! The world plays the driver: it carries out the engines' I/O commands (output goes to the
//! fake peers, hand-offs travel to the other engine, cancels reach the fake server with that
//! key), offers input only when new bytes arrived or the engine asked for a `Resume` (as
//! the edge-triggered reactor does, so a missing wake-up shows as a stall), and moves time
//! only when told. Messages between engines go through an in-memory mailbox, delivered
//! automatically or one by one (`auto_mail`), so tests and the `engine` fuzz target choose
//! the interleavings.
//!
//! [`World::check`] asserts the invariants after any step: no server connection is lent to
//! two clients, a client and its server connection agree, pool counts never exceed
//! `pool_max_conns`, and a client only ever receives rows answering its own queries.
// Some helpers serve only the scenarios, not the fuzz target.
#![cfg_attr(not(test), allow(dead_code))]
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::id::{ClientId, ServerId};
use super::io::{Conn, Failure, Io, Mailbox, Message, Transfer};
use super::server::State;
use super::{Accept, Context, Engine};
use crate::auth::{FixedRng, md5_password};
use crate::backend::{SslMode, Target};
use crate::client::statements::Registry;
use crate::client::users::{DbEntry, ScramSecret, UserEntry, UserTable};
use crate::client::{AuthMethod, ClientTls, DatabaseContext, SessionConfig};
use crate::pool::{Credentials, Database, Pool, PoolSettings};
use crate::protocol::backend::{
    self as be, Authentication, BackendMessage, FieldDescription, TransactionStatus,
};
use crate::protocol::framing::{Frames, peek_header, peek_startup_len};
use crate::protocol::frontend::{self, FrontendMessage, Target as Which};
use crate::protocol::startup::{ProtocolVersion, StartupPacket, cancel_request, startup_message};
use crate::protocol::{ErrorBuilder, Severity, SqlState};

pub const DATABASE: &str = "db";
/// Users, each with its own pool of the one database.
pub const USERS: [&str; 2] = ["alice", "bob"];
const PASSWORD: &str = "secret";

/// The world's settings.
#[derive(Debug, Clone)]
pub struct Setup {
    pub engines: usize,
    pub max_conns: usize,
    pub min_idle: usize,
    pub acquire_timeout: Duration,
    pub max_lifetime: Option<Duration>,
    pub lifetime_jitter: Option<Duration>,
    pub max_idle_time: Option<Duration>,
    pub health_check_period: Option<Duration>,
    pub connect_timeout: Duration,
    pub login_timeout: Duration,
    /// `peer_id`, and the ids in `peers` (at made-up addresses).
    pub peer_id: Option<u16>,
    pub peers: Vec<u16>,
    /// `Context::handover`.
    pub handover: Duration,
    /// `Context::max_logins` (`max_logins_in_progress`).
    pub max_logins: usize,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            engines: 1,
            max_conns: 2,
            min_idle: 0,
            acquire_timeout: Duration::from_secs(1),
            max_lifetime: None,
            lifetime_jitter: None,
            max_idle_time: None,
            health_check_period: None,
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(10),
            peer_id: None,
            peers: Vec::new(),
            handover: Duration::ZERO,
            max_logins: 256,
        }
    }
}

/// How the fake PostgreSQL treats new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connects {
    /// TCP connects complete and logins succeed at once.
    Accept,
    /// TCP connects stay pending until [`World::complete_connects`] (or their timeout).
    Hang,
    /// TCP connects fail (connection refused).
    Refuse,
    /// Logins are refused with FATAL 28P01.
    RefuseLogin,
}

/// A scripted client.
#[derive(Debug)]
pub struct FakeClient {
    pub engine: usize,
    pub id: ClientId,
    pub user: &'static str,
    /// Everything pglink sent that the test has not taken yet.
    received: Vec<u8>,
    /// How much of `received` the client itself has looked at (`on_received`).
    scanned: usize,
    /// Bytes sent that the engine has not used yet.
    pending: Vec<u8>,
    /// New bytes or a `Resume`: the driver would read now.
    readable: bool,
    pub closed: bool,
    /// The cancel key pglink issued.
    pub key: Option<(u32, Vec<u8>)>,
    /// Row values this client asked for (quoted literals in what it sent).
    asked: Vec<Vec<u8>>,
    /// Every message received, by tag (for invariant checks).
    rows: Vec<Vec<u8>>,
    startup_done: bool,
}

/// A scripted PostgreSQL connection.
#[derive(Debug)]
pub struct FakeServer {
    pub engine: usize,
    pub id: ServerId,
    pub pid: u32,
    secret: [u8; 4],
    connecting: bool,
    logged_in: bool,
    pub closed: bool,
    /// Bytes pglink sent, not yet processed.
    inbox: Vec<u8>,
    /// Bytes for pglink that the engine has not used yet.
    outbox: Vec<u8>,
    readable: bool,
    txn: TransactionStatus,
    /// After an error in extended protocol: skip to Sync.
    skipping: bool,
    /// A query being "run" (`pg_sleep`): nothing more is processed until it ends.
    held: Option<Held>,
    /// Answers nothing at all.
    pub silent: bool,
    /// Closed by the server while being handed over.
    killed_in_transit: bool,
    /// The server decided to close the connection (Terminate, or bytes it cannot read).
    hang_up: bool,
    statements: HashMap<Vec<u8>, Vec<u8>>,
    portals: HashMap<Vec<u8>, Vec<u8>>,
    /// Simple queries received, in order.
    pub queries: Vec<String>,
    pub cancels: usize,
}

#[derive(Debug, Clone)]
enum Held {
    Simple,
    Execute,
}

/// The in-memory mailbox between engines.
#[derive(Default)]
struct Mail(Mutex<VecDeque<(usize, Message)>>);

impl Mailbox for Mail {
    fn send(&self, to: usize, msg: Message) -> Result<(), Message> {
        self.0.lock().unwrap().push_back((to, msg));
        Ok(())
    }
}

/// Harness handles: a client or server by its number in the world.
pub type ClientNo = usize;
pub type ServerNo = usize;

pub struct World {
    pub now: Instant,
    pub engines: Vec<Engine>,
    pub ctx: Arc<Context>,
    mail: Arc<Mail>,
    pub clients: Vec<FakeClient>,
    pub servers: Vec<FakeServer>,
    /// Server connections handed over and not yet adopted, with their fake server.
    transit: VecDeque<(usize, Transfer, ServerNo)>,
    /// Deliver engine messages and hand-offs as soon as they are sent.
    pub auto_mail: bool,
    pub connects: Connects,
    next_pid: u32,
    /// Cancel deliveries asked for and not yet reported back (engine, server id).
    cancels_pending: VecDeque<(usize, ServerId)>,
    /// Cancels sent to peers: (engine, peer id, pid as sent, secret).
    pub forwarded_cancels: Vec<(usize, u16, u32, Vec<u8>)>,
    /// SCRAM verifiers asked for and not yet reported derived (engine, client, secret).
    verifiers_pending: VecDeque<(usize, ClientId, Arc<ScramSecret>)>,
    /// The most server connections a database had open when a reload took effect (a
    /// lowered `pool_max_conns` does not close them at once).
    open_at_reload: usize,
}

fn users() -> Arc<UserTable> {
    static USERS_TABLE: OnceLock<Arc<UserTable>> = OnceLock::new();
    let table = USERS_TABLE.get_or_init(|| {
        let mut rng = FixedRng::new(vec![7u8; 64]);
        let scram = Arc::new(ScramSecret::new(PASSWORD, 4096, &mut rng));
        scram.derive();
        let mut db = DbEntry::default();
        for (pool, name) in USERS.iter().enumerate() {
            let entry = UserEntry::new((*name).into(), PASSWORD.into(), pool, scram.clone());
            db.users.insert((*name).into(), Arc::new(entry));
        }
        Arc::new(UserTable {
            databases: HashMap::from([(DATABASE.to_owned(), db)]),
            scram_iterations: 4096,
            mock_secret: [3; 32],
            console: Default::default(),
        })
    });
    table.clone()
}

impl World {
    /// A world whose virtual clock starts at `origin`.
    pub fn new(setup: Setup, origin: Instant) -> World {
        let now = origin;
        let settings = PoolSettings {
            max_conns: setup.max_conns,
            min_idle: setup.min_idle,
            acquire_timeout: setup.acquire_timeout,
            max_lifetime: setup.max_lifetime,
            lifetime_jitter: setup.lifetime_jitter,
            max_idle_time: setup.max_idle_time,
            health_check_period: setup.health_check_period,
            statement_cache_capacity: 8,
        };
        let target = Target::new(
            "127.0.0.1".into(),
            5432,
            DATABASE.into(),
            setup.connect_timeout,
            SslMode::Disable,
            None,
            None,
            Vec::new(),
        );
        let context = DatabaseContext {
            registry: Registry::new(16, 16),
            track_extra: Vec::new(),
            overrides: Vec::new(),
            shared_params: Default::default(),
            cache_unnamed: false,
        };
        let mut db = Database::new(
            0,
            DATABASE.into(),
            settings,
            Arc::new(target),
            Arc::new(context),
        );
        db.pools = (0..USERS.len()).collect();
        let pools = USERS
            .iter()
            .enumerate()
            .map(|(id, user)| {
                let creds = Credentials {
                    user: (*user).into(),
                    password: PASSWORD.into(),
                };
                Arc::new(Pool::new(id, 0, creds, setup.engines))
            })
            .collect();
        let session = SessionConfig {
            auth_method: AuthMethod::Md5,
            tls: ClientTls::Disabled,
            channel_binding: None,
            traceparent_parameter: "traceparent".into(),
        };
        let mut ctx = Context::new(
            vec![db],
            pools,
            session,
            64,
            setup.login_timeout,
            1 << 20,
            setup.engines,
            now,
        );
        ctx.handover = setup.handover;
        ctx.max_logins = setup.max_logins;
        ctx.peering = Arc::new(super::Peering {
            id: setup.peer_id,
            peers: setup
                .peers
                .iter()
                .map(|&id| {
                    let addr = crate::backend::cancel::CancelAddr::Host("peer".into(), id);
                    let peer = crate::backend::cancel::Peer {
                        id,
                        addr,
                        tls: None,
                    };
                    (id, Arc::new(peer))
                })
                .collect(),
        });
        let ctx = Arc::new(ctx);
        let mail = Arc::new(Mail::default());
        let engines = (0..setup.engines)
            .map(|id| {
                let mailbox: Arc<dyn Mailbox> = mail.clone();
                let users = users();
                // Half-way jitter, and distinct cancel secrets per engine.
                let rng = FixedRng::new(vec![0x80, 0, 0, 0, 0, 0, 0, 0x80, id as u8 + 1]);
                Engine::new(id, ctx.clone(), mailbox, users, Box::new(rng), now)
            })
            .collect();
        World {
            now,
            engines,
            ctx,
            mail,
            clients: Vec::new(),
            servers: Vec::new(),
            transit: VecDeque::new(),
            auto_mail: true,
            connects: Connects::Accept,
            next_pid: 1000,
            cancels_pending: VecDeque::new(),
            forwarded_cancels: Vec::new(),
            verifiers_pending: VecDeque::new(),
            open_at_reload: 0,
        }
    }

    // ---------------------------------------------------------------- clients

    /// Connects a client to engine `engine` as `USERS[user]` and starts its login (which
    /// completes while the world settles, unless something is held).
    pub fn connect(&mut self, engine: usize, user: usize) -> ClientNo {
        self.open(engine, user, true)
    }

    /// A client that sends its startup packet and never answers the password request.
    pub fn connect_mute(&mut self, engine: usize, user: usize) -> ClientNo {
        self.open(engine, user, false)
    }

    fn open(&mut self, engine: usize, user: usize, answers: bool) -> ClientNo {
        self.settle_io();
        let (id, refused) =
            match self.engines[engine].handle_accept(super::Transport::Tcp, self.now) {
                Accept::Client(id) => (id, None),
                // Refused on the spot (shutting down, too many clients): closed already.
                Accept::Reject(bytes) => (ClientId::new(usize::MAX, 0), Some(bytes)),
            };
        let user = USERS[user % USERS.len()];
        let mut startup = Vec::new();
        startup_message(
            &mut startup,
            ProtocolVersion::V3_0,
            &[
                (b"user", user.as_bytes()),
                (b"database", DATABASE.as_bytes()),
            ],
        );
        self.clients.push(FakeClient {
            engine,
            id,
            user,
            received: Vec::new(),
            scanned: 0,
            pending: Vec::new(),
            readable: false,
            closed: false,
            key: None,
            asked: Vec::new(),
            rows: Vec::new(),
            startup_done: !answers,
        });
        let no = self.clients.len() - 1;
        if let Some(bytes) = refused {
            self.clients[no].received = bytes;
            self.clients[no].closed = true;
            return no;
        }
        self.send(no, &startup);
        no
    }

    /// A client that is connected and logged in.
    pub fn login(&mut self, engine: usize, user: usize) -> ClientNo {
        let c = self.connect(engine, user);
        self.settle();
        let got = self.take(c);
        assert!(
            got.iter().any(|(t, _)| *t == be::tag::READY_FOR_QUERY),
            "client {c} did not log in: {got:?}"
        );
        assert!(self.clients[c].key.is_some());
        c
    }

    /// Sends raw bytes from a client.
    pub fn send(&mut self, c: ClientNo, bytes: &[u8]) {
        let client = &mut self.clients[c];
        if client.closed {
            return;
        }
        client.asked.extend(quoted_literals(bytes));
        client.pending.extend_from_slice(bytes);
        client.readable = true;
        self.settle_io();
    }

    /// Sends a simple Query.
    pub fn query(&mut self, c: ClientNo, sql: &str) {
        let mut m = Vec::new();
        frontend::query(&mut m, sql.as_bytes());
        self.send(c, &m);
        self.settle();
    }

    /// The value a client's `SELECT` of its own marker returns.
    pub fn marker(c: ClientNo, n: usize) -> String {
        format!("c{c}:{n}")
    }

    /// The client goes away without a word.
    pub fn disconnect(&mut self, c: ClientNo) {
        let client = &mut self.clients[c];
        if client.closed {
            return;
        }
        client.closed = true;
        let (e, id) = (client.engine, client.id);
        self.engines[e].handle_closed(Conn::Client(id), Failure::Eof, self.now);
        self.settle();
    }

    /// Messages the client received since the last call: `(tag, body)`.
    pub fn take(&mut self, c: ClientNo) -> Vec<(u8, Vec<u8>)> {
        self.clients[c].on_received();
        let client = &mut self.clients[c];
        let mut frames = Frames::new(&client.received, 1 << 24);
        let got: Vec<(u8, Vec<u8>)> = frames
            .by_ref()
            .map(|f| {
                let f = f.unwrap();
                (f.tag, f.body.to_vec())
            })
            .collect();
        let used = frames.consumed();
        client.received.drain(..used);
        client.scanned = client.scanned.saturating_sub(used);
        got
    }

    /// Tags of the messages the client received since the last call.
    pub fn tags(&mut self, c: ClientNo) -> Vec<u8> {
        self.take(c).into_iter().map(|(t, _)| t).collect()
    }

    /// The SQLSTATE and message of the first ErrorResponse in `messages`.
    pub fn error_of(messages: &[(u8, Vec<u8>)]) -> Option<(SqlState, Severity, String)> {
        messages.iter().find_map(|(t, body)| {
            let BackendMessage::ErrorResponse(f) = BackendMessage::decode(*t, body).ok()? else {
                return None;
            };
            Some((
                f.sqlstate()?,
                f.severity_kind()?,
                String::from_utf8_lossy(f.message().unwrap_or_default()).into_owned(),
            ))
        })
    }

    /// Data rows (first column) in `messages`.
    pub fn rows_of(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
        messages
            .iter()
            .filter_map(|(t, body)| match BackendMessage::decode(*t, body).ok()? {
                BackendMessage::DataRow(r) => r
                    .columns()
                    .next()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// Sends a CancelRequest with client `c`'s key, from a new connection to `engine`.
    pub fn cancel(&mut self, c: ClientNo, engine: usize) {
        let (pid, secret) = self.clients[c].key.clone().expect("client has a key");
        self.cancel_with(pid, &secret, engine);
    }

    /// A CancelRequest carrying `pid` and `secret` as given, on `engine`.
    pub fn cancel_with(&mut self, pid: u32, secret: &[u8], engine: usize) {
        self.settle_io();
        let id = match self.engines[engine].handle_accept(super::Transport::Tcp, self.now) {
            Accept::Client(id) => id,
            Accept::Reject(_) => return,
        };
        let mut m = Vec::new();
        cancel_request(&mut m, pid, secret);
        self.clients.push(FakeClient {
            engine,
            id,
            user: "",
            received: Vec::new(),
            scanned: 0,
            pending: m,
            readable: true,
            closed: false,
            key: None,
            asked: Vec::new(),
            rows: Vec::new(),
            startup_done: true,
        });
        self.settle();
    }

    /// The fake server connection client `c` holds right now.
    pub fn server_of(&self, c: ClientNo) -> Option<ServerNo> {
        let client = &self.clients[c];
        let held = self.engines[client.engine]
            .client(client.id)?
            .session
            .server()?;
        self.servers
            .iter()
            .position(|s| !s.closed && s.engine == client.engine && s.id == held)
    }

    // ---------------------------------------------------------------- servers

    /// Ends the query server `s` is holding (answers it).
    pub fn release(&mut self, s: ServerNo) {
        if let Some(held) = self.servers[s].held.take() {
            self.servers[s].finish(held);
        }
        self.settle();
    }

    /// The server closes the connection.
    pub fn kill(&mut self, s: ServerNo) {
        self.hang_up(s);
        self.settle_io();
    }

    /// The server's side of the connection closes; its engine is told.
    fn hang_up(&mut self, s: ServerNo) {
        let server = &mut self.servers[s];
        if server.closed {
            return;
        }
        if server.engine == usize::MAX {
            // On its way to another engine: that one sees the close when it adopts it.
            server.killed_in_transit = true;
            return;
        }
        server.closed = true;
        let (e, id) = (server.engine, server.id);
        self.engines[e].handle_closed(Conn::Server(id), Failure::Eof, self.now);
    }

    /// Bytes from server `s` (garbage, or an asynchronous message).
    pub fn server_sends(&mut self, s: ServerNo, bytes: &[u8]) {
        let server = &mut self.servers[s];
        if server.closed || server.connecting {
            return;
        }
        server.outbox.extend_from_slice(bytes);
        server.readable = true;
        self.settle_io();
    }

    /// Open (not closed) fake server connections, on any engine or in transit.
    pub fn open_servers(&self) -> usize {
        self.servers.iter().filter(|s| !s.closed).count()
    }

    /// Completes (or fails, with `Connects::Refuse`) every pending TCP connect.
    pub fn complete_connects(&mut self, refuse: bool) {
        for s in 0..self.servers.len() {
            let server = &mut self.servers[s];
            if !server.connecting || server.closed {
                continue;
            }
            server.connecting = false;
            let (e, id) = (server.engine, server.id);
            if refuse {
                server.closed = true;
                let err = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                self.engines[e].handle_connect_failed(id, err, self.now);
            } else {
                self.engines[e].handle_connected(id, self.now);
            }
            self.settle_io();
        }
    }

    // ---------------------------------------------------------------- reload

    /// The configuration in effect with `edit` applied to copies of its databases (same
    /// ids, pools and targets unless `edit` changes them), as a reload builds it.
    pub fn reloaded(&self, edit: impl FnOnce(&mut Vec<Database>)) -> Context {
        let mut databases: Vec<Database> = self
            .ctx
            .databases
            .iter()
            .map(|d| {
                let mut next = d.reloaded(d.settings.clone(), d.target.clone(), d.context.clone());
                next.pools = d.pools.clone();
                next
            })
            .collect();
        edit(&mut databases);
        self.ctx.reloaded(
            databases,
            self.ctx.pools.clone(),
            self.ctx.session.clone(),
            self.ctx.max_clients,
            self.ctx.login_timeout,
        )
    }

    /// A target like the test database's, at another port (a moved server).
    pub fn moved_target() -> Arc<Target> {
        Arc::new(Target::for_tests_at("127.0.0.1", 5433))
    }

    /// Puts `next` in effect on every engine, as the reactors do on their next turn.
    pub fn reload(&mut self, next: Context) {
        let open = self.ctx.databases.iter().map(Database::open_count).max();
        self.open_at_reload = self.open_at_reload.max(open.unwrap_or(0));
        let next = Arc::new(next);
        self.ctx = next.clone();
        for e in 0..self.engines.len() {
            self.engines[e].handle_reload(next.clone(), self.now);
            self.settle_io();
        }
        self.settle();
    }

    // ---------------------------------------------------------------- time and mail

    /// Moves the clock and fires what is due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        for e in 0..self.engines.len() {
            self.engines[e].handle_timeout(self.now);
            self.settle_io();
        }
        self.settle();
    }

    /// Moves the clock in steps (so periodic maintenance runs on the way).
    pub fn advance_by_steps(&mut self, total: Duration, step: Duration) {
        let mut left = total;
        while !left.is_zero() {
            let d = step.min(left);
            self.advance(d);
            left -= d;
        }
    }

    /// Delivers one queued engine message, hand-off or cancel report; says whether there was
    /// one.
    pub fn deliver_one(&mut self) -> bool {
        if let Some((to, transfer, s)) = self.transit.pop_front() {
            self.drain(to);
            let id = self.engines[to].handle_adopt(transfer, self.now);
            let server = &mut self.servers[s];
            server.engine = to;
            server.id = id;
            server.readable = true;
            self.settle_io();
            return true;
        }
        if let Some((e, id)) = self.cancels_pending.pop_front() {
            self.ctx.cancel_delivered();
            self.engines[e].handle_message(Message::CancelDone { server: id }, self.now);
            self.settle_io();
            return true;
        }
        if let Some((e, client, secret)) = self.verifiers_pending.pop_front() {
            secret.derive();
            self.engines[e].handle_message(Message::VerifierReady { client }, self.now);
            self.settle_io();
            return true;
        }
        let next = self.mail.0.lock().unwrap().pop_front();
        match next {
            Some((to, msg)) => {
                if to < self.engines.len() {
                    self.engines[to].handle_message(msg, self.now);
                    self.settle_io();
                }
                true
            }
            None => false,
        }
    }

    /// Delivers everything queued between engines.
    pub fn deliver_all(&mut self) {
        for _ in 0..10_000 {
            if !self.deliver_one() {
                return;
            }
        }
        panic!("engines keep messaging each other");
    }

    /// Runs the network until nothing moves: I/O commands, fake peers, and (with
    /// `auto_mail`) engine messages.
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            self.settle_io();
            if !(self.auto_mail && self.deliver_one()) {
                return;
            }
        }
        panic!("the world does not settle");
    }

    /// Runs I/O and the fake peers until nothing moves (no mail).
    pub fn settle_io(&mut self) {
        for _ in 0..100_000 {
            let mut progress = false;
            for e in 0..self.engines.len() {
                progress |= self.drain(e);
            }
            progress |= self.run_servers();
            progress |= self.run_clients();
            if !progress {
                return;
            }
        }
        panic!("the network does not settle");
    }

    /// Carries out engine `e`'s I/O commands; says whether there were any.
    fn drain(&mut self, e: usize) -> bool {
        let mut any = false;
        while let Some(io) = self.engines[e].poll_io() {
            any = true;
            self.carry_out(e, io);
        }
        any
    }

    fn carry_out(&mut self, e: usize, io: Io) {
        match io {
            Io::Flush(conn) => {
                let out = self.engines[e].output(conn).to_vec();
                let n = out.len();
                if n == 0 {
                    // As the reactor does: a flush that finds nothing says nothing.
                    return;
                }
                match conn {
                    Conn::Client(id) => {
                        if let Some(c) = self.client_by_id(e, id) {
                            self.clients[c].received.extend_from_slice(&out);
                        }
                    }
                    Conn::Server(id) => {
                        if let Some(s) = self.server_by_id(e, id) {
                            self.servers[s].inbox.extend_from_slice(&out);
                        }
                    }
                }
                self.engines[e].handle_sent(conn, n, self.now);
            }
            Io::Resume(conn) => match conn {
                Conn::Client(id) => {
                    if let Some(c) = self.client_by_id(e, id) {
                        self.clients[c].readable = true;
                    }
                }
                Conn::Server(id) => {
                    if let Some(s) = self.server_by_id(e, id) {
                        self.servers[s].readable = true;
                    }
                }
            },
            Io::Connect { server, .. } => {
                let pid = self.next_pid;
                self.next_pid += 1;
                self.servers.push(FakeServer {
                    engine: e,
                    id: server,
                    pid,
                    secret: pid.to_le_bytes(),
                    connecting: true,
                    logged_in: false,
                    closed: false,
                    inbox: Vec::new(),
                    outbox: Vec::new(),
                    readable: false,
                    txn: TransactionStatus::Idle,
                    skipping: false,
                    held: None,
                    silent: false,
                    killed_in_transit: false,
                    hang_up: false,
                    statements: HashMap::new(),
                    portals: HashMap::new(),
                    queries: Vec::new(),
                    cancels: 0,
                });
                let s = self.servers.len() - 1;
                match self.connects {
                    Connects::Accept | Connects::RefuseLogin => {
                        self.servers[s].connecting = false;
                        self.engines[e].handle_connected(server, self.now);
                    }
                    Connects::Refuse => {
                        self.servers[s].connecting = false;
                        self.servers[s].closed = true;
                        let err = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                        self.engines[e].handle_connect_failed(server, err, self.now);
                    }
                    Connects::Hang => {}
                }
            }
            Io::ClientTls { client, .. } => {
                self.engines[e].handle_closed(
                    Conn::Client(client),
                    Failure::TlsNotConfigured,
                    self.now,
                );
            }
            Io::ServerTls { server, .. } => {
                self.engines[e].handle_closed(
                    Conn::Server(server),
                    Failure::TlsNotConfigured,
                    self.now,
                );
            }
            Io::Close { conn, last } => {
                let last = last.map(|o| o.pending().to_vec()).unwrap_or_default();
                match conn {
                    Conn::Client(id) => {
                        if let Some(c) = self.client_by_id(e, id) {
                            self.clients[c].received.extend_from_slice(&last);
                            self.clients[c].closed = true;
                        }
                    }
                    Conn::Server(id) => {
                        if let Some(s) = self.server_by_id(e, id) {
                            self.servers[s].inbox.extend_from_slice(&last);
                            self.servers[s].closed = true;
                        }
                    }
                }
            }
            Io::HandOff {
                server,
                to,
                transfer,
            } => {
                let s = self
                    .server_by_id(e, server)
                    .expect("a handed-over connection has a fake server");
                // In transit: not on either engine until adopted.
                self.servers[s].engine = usize::MAX;
                self.transit.push_back((to, transfer, s));
            }
            Io::Cancel { server, pid, .. } => {
                if let Some(s) = self.servers.iter().position(|s| s.pid == pid && !s.closed) {
                    self.servers[s].on_cancel();
                }
                self.cancels_pending.push_back((e, server));
            }
            Io::ForwardCancel { peer, pid, secret } => {
                self.forwarded_cancels.push((e, peer.id, pid, secret));
                self.ctx.cancel_delivered();
            }
            Io::DeriveVerifier { client, secret } => {
                self.verifiers_pending.push_back((e, client, secret));
            }
            // No console thread here: every command answers with a bare CommandComplete.
            Io::Console { client, .. } => {
                let mut answer = Vec::new();
                crate::protocol::backend::command_complete(&mut answer, b"SHOW");
                self.engines[e].handle_message(Message::ConsoleReply { client, answer }, self.now);
            }
            Io::StopAccepting => {}
        }
    }

    fn client_by_id(&self, e: usize, id: ClientId) -> Option<ClientNo> {
        self.clients
            .iter()
            .position(|c| c.engine == e && c.id == id && !c.closed)
    }

    fn server_by_id(&self, e: usize, id: ServerId) -> Option<ServerNo> {
        self.servers
            .iter()
            .position(|s| s.engine == e && s.id == id && !s.closed)
    }

    /// Fake servers answer what they got and offer their answers; says whether anything
    /// moved.
    fn run_servers(&mut self) -> bool {
        let mut progress = false;
        for s in 0..self.servers.len() {
            let login_refused = self.connects == Connects::RefuseLogin;
            let server = &mut self.servers[s];
            if server.closed || server.connecting || server.engine == usize::MAX {
                continue;
            }
            if server.killed_in_transit {
                // Closed while being handed over: where it arrived sees the close.
                server.killed_in_transit = false;
                self.hang_up(s);
                progress = true;
                continue;
            }
            if server.answer(login_refused) {
                progress = true;
            }
            if server.hang_up {
                self.hang_up(s);
                progress = true;
                continue;
            }
            if server.readable && !server.outbox.is_empty() {
                server.readable = false;
                let (e, id) = (server.engine, server.id);
                let conn = Conn::Server(id);
                if self.engines[e].wants_input(conn) {
                    let out = std::mem::take(&mut self.servers[s].outbox);
                    let n = self.engines[e].handle_read(conn, &out, self.now);
                    self.servers[s].outbox = out[n..].to_vec();
                    progress |= n > 0;
                }
            }
        }
        progress
    }

    /// Clients answer authentication, note their keys and rows, and offer their bytes.
    fn run_clients(&mut self) -> bool {
        let mut progress = false;
        for c in 0..self.clients.len() {
            progress |= self.clients[c].on_received();
            let client = &mut self.clients[c];
            if client.closed || !client.readable || client.pending.is_empty() {
                continue;
            }
            client.readable = false;
            let (e, id) = (client.engine, client.id);
            let conn = Conn::Client(id);
            if self.engines[e].wants_input(conn) {
                let pending = std::mem::take(&mut self.clients[c].pending);
                let n = self.engines[e].handle_read(conn, &pending, self.now);
                self.clients[c].pending = pending[n..].to_vec();
                progress |= n > 0;
            }
        }
        progress
    }

    // ---------------------------------------------------------------- invariants

    /// Asserts the invariants (panics with a description when one fails).
    pub fn check(&self) {
        for engine in &self.engines {
            if let Err(e) = engine.check_invariants() {
                panic!("engine {}: {e}", engine.id());
            }
        }
        let servers: usize = self
            .engines
            .iter()
            .map(|e| e.connection_counts().1)
            .sum::<usize>()
            + self.transit.len();
        for db in &self.ctx.databases {
            let open = db.open_count();
            // A reload that lowered pool_max_conns leaves the connections open then; new ones
            // wait until the count is below the new limit.
            let limit = db.settings.max_conns.max(self.open_at_reload);
            assert!(
                open <= limit,
                "{open} server connections open, pool_max_conns is {} ({} open at the last \
                 reload)",
                db.settings.max_conns,
                self.open_at_reload
            );
            assert!(
                servers <= open,
                "{servers} server connections exist but only {open} are counted"
            );
        }
        let logging_in: usize = self.engines.iter().map(|e| e.logging_in_count()).sum();
        assert_eq!(
            logging_in,
            self.ctx.logins_in_progress(),
            "clients logging in and the count against max_logins_in_progress differ"
        );
        for (c, client) in self.clients.iter().enumerate() {
            for row in &client.rows {
                assert!(
                    client.asked.iter().any(|a| a == row),
                    "client {c} received row {:?} it never asked for",
                    String::from_utf8_lossy(row)
                );
            }
        }
    }

    /// The close reasons counted so far on all engines, by label.
    pub fn closes(&self, reason: crate::observe::metrics::CloseReason) -> u64 {
        self.ctx
            .stats
            .iter()
            .filter_map(|s| s.pool(0).zip(s.pool(1)))
            .map(|(a, b)| a.closes[reason.index()].get() + b.closes[reason.index()].get())
            .sum()
    }

    /// Whether fake server `s` is idle in its engine's pool.
    pub fn is_idle(&self, s: ServerNo) -> bool {
        let server = &self.servers[s];
        !server.closed
            && self
                .engines
                .get(server.engine)
                .and_then(|e| e.server(server.id))
                .is_some_and(|sv| matches!(sv.state, State::Idle))
    }
}

impl FakeClient {
    /// Reacts to what arrived: answers the password request, keeps the key, notes rows.
    fn on_received(&mut self) -> bool {
        let mut frames = Frames::new(&self.received[self.scanned..], 1 << 24);
        let mut reply = Vec::new();
        for f in frames.by_ref() {
            let Ok(f) = f else { break };
            match f.backend() {
                Ok(BackendMessage::Authentication(Authentication::Md5Password { salt }))
                    if !self.startup_done =>
                {
                    let hash = md5_password(self.user.as_bytes(), PASSWORD.as_bytes(), salt);
                    frontend::password(&mut reply, &hash);
                    self.startup_done = true;
                }
                Ok(BackendMessage::BackendKeyData(k)) => self.key = Some((k.pid, k.key.to_vec())),
                Ok(BackendMessage::DataRow(r)) => {
                    if let Some(Some(v)) = r.columns().next() {
                        self.rows.push(v.to_vec());
                    }
                }
                _ => {}
            }
        }
        self.scanned += frames.consumed();
        if reply.is_empty() || self.closed {
            return false;
        }
        self.pending.extend_from_slice(&reply);
        self.readable = true;
        true
    }
}

impl FakeServer {
    /// Processes what pglink sent; says whether anything was answered.
    fn answer(&mut self, login_refused: bool) -> bool {
        if self.silent || self.held.is_some() || self.hang_up {
            return false;
        }
        let mut progress = false;
        loop {
            if self.held.is_some() || self.closed || self.hang_up {
                return progress;
            }
            if !self.logged_in {
                let Ok(Some(len)) = peek_startup_len(&self.inbox, 1 << 16) else {
                    return progress;
                };
                let packet: Vec<u8> = self.inbox.drain(..len).collect();
                if !matches!(
                    StartupPacket::decode(&packet),
                    Ok(StartupPacket::Startup(_))
                ) {
                    self.closed = true;
                    return true;
                }
                if login_refused {
                    ErrorBuilder::new(
                        Severity::Fatal,
                        SqlState::INVALID_PASSWORD,
                        "password authentication failed for user",
                    )
                    .encode_error(&mut self.outbox);
                } else {
                    self.outbox
                        .extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
                    be::parameter_status(&mut self.outbox, b"server_version", b"15.0");
                    be::parameter_status(&mut self.outbox, b"client_encoding", b"UTF8");
                    be::backend_key_data(&mut self.outbox, self.pid, &self.secret);
                    be::ready_for_query(&mut self.outbox, TransactionStatus::Idle);
                    self.logged_in = true;
                }
                self.readable = true;
                progress = true;
                continue;
            }
            let Ok(Some(h)) = peek_header(&self.inbox, 1 << 24) else {
                return progress;
            };
            if self.inbox.len() < h.frame_len() {
                return progress;
            }
            let frame: Vec<u8> = self.inbox.drain(..h.frame_len()).collect();
            progress = true;
            self.readable = true;
            let Ok(msg) = FrontendMessage::decode(h.tag, &frame[5..]) else {
                self.hang_up = true;
                return true;
            };
            self.on_message(msg);
        }
    }

    fn on_message(&mut self, msg: FrontendMessage<'_>) {
        if self.skipping && !matches!(msg, FrontendMessage::Sync) {
            return;
        }
        match msg {
            FrontendMessage::Query(q) => {
                let sql = String::from_utf8_lossy(q.query).into_owned();
                self.queries.push(sql.clone());
                if sql.starts_with("SELECT pg_sleep") {
                    self.held = Some(Held::Simple);
                    return;
                }
                self.run_simple(&sql);
            }
            FrontendMessage::Parse(p) => {
                self.statements.insert(p.name.to_vec(), p.query.to_vec());
                be::parse_complete(&mut self.outbox);
            }
            FrontendMessage::Bind(b) => match self.statements.get(b.statement).cloned() {
                Some(query) => {
                    self.portals.insert(b.portal.to_vec(), query);
                    be::bind_complete(&mut self.outbox);
                }
                None => self.fail(SqlState::INVALID_SQL_STATEMENT_NAME, "no such statement"),
            },
            FrontendMessage::Describe(d) => {
                let query = match d.target {
                    Which::Statement => {
                        be::parameter_description(&mut self.outbox, &[]);
                        self.statements.get(d.name).cloned()
                    }
                    Which::Portal => self.portals.get(d.name).cloned(),
                };
                match query {
                    Some(q) if q.starts_with(b"SELECT") => row_description(&mut self.outbox),
                    Some(_) => be::no_data(&mut self.outbox),
                    None => self.fail(SqlState::INVALID_SQL_STATEMENT_NAME, "no such statement"),
                }
            }
            FrontendMessage::Execute(x) => match self.portals.get(x.portal).cloned() {
                Some(q) if q.starts_with(b"SELECT pg_sleep") => self.held = Some(Held::Execute),
                Some(q) => self.execute(&q),
                None => self.fail(SqlState::INVALID_CURSOR_NAME, "no such portal"),
            },
            FrontendMessage::Close(c) => {
                match c.target {
                    Which::Statement => self.statements.remove(c.name),
                    Which::Portal => self.portals.remove(c.name),
                };
                be::close_complete(&mut self.outbox);
            }
            FrontendMessage::Sync => {
                self.skipping = false;
                self.portals.remove(&b""[..]);
                be::ready_for_query(&mut self.outbox, self.txn);
            }
            FrontendMessage::Terminate => self.hang_up = true,
            FrontendMessage::Flush
            | FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail(_)
            | FrontendMessage::FunctionCall(_)
            | FrontendMessage::PasswordFamily(_) => {}
        }
    }

    /// A simple query's whole answer.
    fn run_simple(&mut self, sql: &str) {
        let upper = sql.trim().to_ascii_uppercase();
        if upper.is_empty() {
            be::empty_query_response(&mut self.outbox);
        } else if upper == "FAIL" {
            self.error(SqlState::SYNTAX_ERROR, "syntax error");
        } else if upper.starts_with("BEGIN") {
            self.txn = TransactionStatus::InBlock;
            be::command_complete(&mut self.outbox, b"BEGIN");
        } else if upper.starts_with("COMMIT") || upper.starts_with("ROLLBACK") {
            self.txn = TransactionStatus::Idle;
            be::command_complete(&mut self.outbox, upper.as_bytes());
        } else if self.txn == TransactionStatus::Failed {
            self.error(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted",
            );
        } else {
            if upper.starts_with("SELECT") {
                row_description(&mut self.outbox);
            }
            self.execute(sql.as_bytes());
        }
        be::ready_for_query(&mut self.outbox, self.txn);
    }

    /// Rows of a `SELECT '<literal>'` (the literal back), or a command tag.
    fn execute(&mut self, query: &[u8]) {
        match quoted_literals(query).into_iter().next() {
            Some(value) if query.starts_with(b"SELECT") => {
                be::data_row(&mut self.outbox, [Some(&value[..])]);
                be::command_complete(&mut self.outbox, b"SELECT 1");
            }
            _ => be::command_complete(&mut self.outbox, b"OK"),
        }
    }

    fn error(&mut self, code: SqlState, message: &str) {
        ErrorBuilder::new(Severity::Error, code, message).encode_error(&mut self.outbox);
        if self.txn == TransactionStatus::InBlock {
            self.txn = TransactionStatus::Failed;
        }
    }

    /// An error in extended protocol: skip to Sync.
    fn fail(&mut self, code: SqlState, message: &str) {
        self.error(code, message);
        self.skipping = true;
    }

    /// The held query ends.
    fn finish(&mut self, held: Held) {
        match held {
            Held::Simple => {
                row_description(&mut self.outbox);
                be::command_complete(&mut self.outbox, b"SELECT 1");
                be::ready_for_query(&mut self.outbox, self.txn);
            }
            Held::Execute => be::command_complete(&mut self.outbox, b"SELECT 1"),
        }
        self.readable = true;
    }

    /// A CancelRequest with this connection's key: the held query fails.
    fn on_cancel(&mut self) {
        self.cancels += 1;
        match self.held.take() {
            Some(Held::Simple) => {
                self.error(
                    SqlState::QUERY_CANCELED,
                    "canceling statement due to user request",
                );
                be::ready_for_query(&mut self.outbox, self.txn);
            }
            Some(Held::Execute) => {
                self.fail(
                    SqlState::QUERY_CANCELED,
                    "canceling statement due to user request",
                );
            }
            None => {}
        }
        self.readable = true;
    }
}

fn row_description(out: &mut Vec<u8>) {
    be::row_description(
        out,
        &[FieldDescription {
            name: b"v",
            table_oid: 0,
            column_attr: 0,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }],
    );
}

/// The `'...'` literals in some bytes.
fn quoted_literals(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut rest = bytes;
    while let Some(start) = rest.iter().position(|&b| b == b'\'') {
        let after = &rest[start + 1..];
        let Some(end) = after.iter().position(|&b| b == b'\'') else {
            break;
        };
        found.push(after[..end].to_vec());
        rest = &after[end + 1..];
    }
    found
}

impl Engine {
    /// Clients counted against `max_logins_in_progress`.
    pub fn logging_in_count(&self) -> usize {
        self.clients.iter().filter(|(_, c)| c.logging_in).count()
    }

    /// The engine's own consistency: a client and the server connection it holds agree,
    /// idle stacks and waiter queues hold what they say, counts add up.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (i, c) in &self.clients {
            let id = ClientId::new(i, c.generation);
            if c.flush_queued && c.output.as_ref().is_none_or(|o| o.is_empty()) {
                return Err(format!(
                    "client {id:?} has a flush queued and nothing to write"
                ));
            }
            if c.logging_in && (c.logged_in || !c.counted) {
                return Err(format!(
                    "client {id:?} counts as logging in but is logged in or being refused"
                ));
            }
            if let Some(s) = c.session.server() {
                match self.server(s).map(|sv| &sv.state) {
                    Some(State::Lent(owner)) if *owner == id => {}
                    other => {
                        return Err(format!(
                            "client {id:?} holds {s:?}, which is {:?}",
                            other.map(|_| "not lent to it")
                        ));
                    }
                }
                if !c.session.holds_backend() {
                    return Err(format!(
                        "client {id:?} holds {s:?} but its session is not active"
                    ));
                }
            }
            if c.session.is_acquiring()
                && let Some(pool) = c.session.pool()
                && !self.shards[pool].waiters.iter().any(|&(w, _)| w == id)
            {
                return Err(format!("client {id:?} waits but is not queued"));
            }
        }
        let mut lent = Vec::new();
        for (i, s) in &self.servers {
            let id = ServerId::new(i, s.generation);
            if s.flush_queued && s.output.as_ref().is_none_or(|o| o.is_empty()) {
                return Err(format!("{id:?} has a flush queued and nothing to write"));
            }
            match s.state {
                State::Lent(c) => {
                    if lent.contains(&c) {
                        return Err(format!("{c:?} holds two server connections"));
                    }
                    lent.push(c);
                    if self.client(c).and_then(|cl| cl.session.server()) != Some(id) {
                        return Err(format!("{id:?} is lent to {c:?}, which does not hold it"));
                    }
                }
                State::Idle if !self.shards[s.pool].idle.contains(&id) => {
                    return Err(format!("{id:?} is idle but not in its pool's idle stack"));
                }
                _ => {}
            }
        }
        for (pool, shard) in self.shards.iter().enumerate() {
            for (n, &s) in shard.idle.iter().enumerate() {
                if shard.idle[..n].contains(&s) {
                    return Err(format!("{s:?} is twice in pool {pool}'s idle stack"));
                }
                match self.server(s) {
                    Some(sv) if matches!(sv.state, State::Idle) && sv.pool == pool => {}
                    _ => return Err(format!("pool {pool}'s idle stack holds {s:?}, not idle")),
                }
            }
            let connecting = self
                .servers
                .iter()
                .filter(|(_, s)| s.pool == pool && s.state.is_logging_in())
                .count();
            if connecting != shard.connecting {
                return Err(format!(
                    "pool {pool}: {connecting} connections logging in, {} counted",
                    shard.connecting
                ));
            }
        }
        Ok(())
    }
}
