//! The reactor: the driver that turns epoll events into engine calls and the engine's I/O
//! commands into syscalls. It decides nothing about connections; the engine does.
//!
//! One reactor per thread, each with its own `Poll`, listener sockets (SO_REUSEPORT, so the
//! kernel spreads new connections), engine, sockets and input buffers. Nothing on the hot
//! path takes a lock. Reactors talk to each other only through bounded channels plus a
//! `mio::Waker`: the engines' messages, and server connections (socket and all) handed
//! over to where a client waits.
//!
//! Loop discipline (mio's "draining readiness"): edge-triggered, so every readable socket is
//! read until `WouldBlock` — but at most a few times per wake-up; a connection that still
//! has data goes on the `ready` list and is revisited next turn with a zero poll timeout.
//! After every engine call its I/O commands are carried out, in order; output is coalesced
//! and written once per connection at the end of the turn. One clock read per turn.

mod buf;
mod conn;
mod listener;
pub mod stream;
mod token;

use std::io::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Waker};

use crate::auth::OsRng;
use crate::backend::{Target, cancel};
use crate::client::users::ScramSecret;
use crate::engine::console::{ClientRow, ServerRow};
use crate::engine::{
    Accept, ClientId, Conn, Engine, Failure, Io, Mailbox, Message, ServerId, Transfer, Transport,
};
use crate::observe::metrics::ReactorStats;
use buf::InPool;
use conn::{Socket, Sockets};
pub use listener::Listener;
pub use stream::ServerTlsConfig;
use stream::{Peer, Sock, Stream};

use crate::server::Shared;
use token::{Kind, Tok};

/// Accepts per listener per wake-up.
const MAX_ACCEPTS: usize = 64;
/// At most this many queued connections taken in when a listener closes (its backlog).
const BACKLOG_SWEEP: usize = 1024;
/// Messages queued per reactor channel.
const CHANNEL_CAPACITY: usize = 4096;

/// One reactor's connections, for the admin console: each with its peer's address.
#[derive(Debug)]
pub struct Snapshot {
    pub reactor: usize,
    pub clients: Vec<(ClientRow, Option<stream::Peer>)>,
    pub servers: Vec<(ServerRow, Option<stream::Peer>)>,
}

impl Shared {
    /// Every reactor's connections (those that answer within `timeout`).
    pub(crate) fn snapshots(&self, timeout: Duration) -> Vec<Snapshot> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut asked = 0;
        for id in 0..self.reactor_count() {
            if let Some(h) = self.reactor(id)
                && h.send(Envelope::Snapshot(tx.clone())).is_ok()
            {
                asked += 1;
            }
        }
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(asked);
        while got.len() < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => got.push(s),
                Err(_) => break,
            }
        }
        got.sort_by_key(|s| s.reactor);
        got
    }

    /// Tells every reactor's engine to act on PAUSE, RESUME or RECONNECT now.
    pub(crate) fn maintain_all(&self) {
        for id in 0..self.reactor_count() {
            deliver(self, id, Message::Maintain);
        }
    }
}

/// The engines' messages travel between reactors as they are.
impl Mailbox for Shared {
    fn send(&self, to: usize, msg: Message) -> Result<(), Message> {
        match self.reactor(to) {
            Some(h) => h.send(Envelope::Engine(msg)).map_err(|e| match e {
                Envelope::Engine(m) => m,
                // Only engine messages are sent here.
                Envelope::Server { .. } | Envelope::Snapshot(_) => {
                    Message::NoServer { pool: usize::MAX }
                }
            }),
            None => Err(msg),
        }
    }
}

/// What reactors send each other.
pub enum Envelope {
    Engine(Message),
    /// The admin console asks for this reactor's connections.
    Snapshot(std::sync::mpsc::Sender<Snapshot>),
    /// An idle server connection handed over: the engine's record and the socket.
    Server {
        transfer: Transfer,
        socket: Box<Socket>,
    },
}

/// How to reach a reactor from another thread.
#[derive(Clone)]
pub struct ReactorHandle {
    tx: SyncSender<Envelope>,
    waker: Arc<Waker>,
    /// The reactor is in (or about to enter) a blocking poll: a message needs a wake-up.
    /// While it is busy it reads its inbox every turn anyway, so the `eventfd` write and the
    /// extra poll wake-up are skipped.
    sleeping: Arc<AtomicBool>,
}

impl ReactorHandle {
    /// Wakes the reactor (it reads its inbox and the stop flag on every turn).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// Sends without blocking; a full channel gives the envelope back.
    fn send(&self, envelope: Envelope) -> Result<(), Envelope> {
        match self.tx.try_send(envelope) {
            Ok(()) => {
                // Pairs with the fence in `Reactor::run`: either the reactor sees this message
                // when it drains its inbox after announcing it sleeps, or we see it sleeping.
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.sleeping.load(Ordering::SeqCst) {
                    let _ = self.waker.wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => Err(e),
        }
    }
}

pub struct Reactor {
    id: usize,
    poll: Poll,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    inbox: Receiver<Envelope>,
    /// Shared with this reactor's handles (see `ReactorHandle::sleeping`).
    sleeping: Arc<AtomicBool>,
    engine: Engine,
    sockets: Sockets,
    inputs: InPool,
    /// Connections (and listeners) to revisit: more input may be waiting.
    ready: Vec<Tok>,
    /// Connections with output to write at the end of the turn (each once: see
    /// `Socket::dirty`).
    dirty: Vec<Conn>,
    /// Server connections handed over that could not be sent: adopted again once the
    /// engine's current commands are carried out.
    returned: Vec<(Transfer, Box<Socket>)>,
    /// The engine asked to stop accepting: close the listeners once its commands are done.
    stop_accepting: bool,
    /// The `Shared::epoch` of the configuration and login table the engine has.
    epoch: u64,
    now: Instant,
    /// This reactor's counters (also in `Context::stats`); only this thread writes them.
    stats: Arc<ReactorStats>,
    /// Counts this reactor in `Shared::reactors_running` from its creation until its loop
    /// ends (or its thread unwinds), so a server that has started reports every reactor.
    _running: Running,
}

impl Reactor {
    /// Where the engine's events go (spans, the flight recorder), set before it runs. One
    /// sink per engine: the server's are `observe::observers::Observers`.
    pub fn set_event_sink(&mut self, sink: Box<dyn crate::observe::events::EventSink + Send>) {
        self.engine.set_event_sink(sink);
    }

    /// Creates a reactor with its listeners; returns it with the handle others use to reach it.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        listeners: Vec<Listener>,
    ) -> io::Result<(Reactor, ReactorHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), Tok::WAKER.to_token())?);
        let (tx, inbox) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Tok::listener(i).to_token(), Interest::READABLE)?;
        }
        let now = Instant::now();
        let stats = shared
            .stats()
            .get(id)
            .cloned()
            .unwrap_or_else(|| Arc::new(ReactorStats::new(0, 0)));
        let mailbox: Arc<dyn Mailbox> = shared.clone();
        let epoch = shared.epoch();
        let (ctx, users) = shared.current();
        let engine = Engine::new(id, ctx, mailbox, users, Box::new(OsRng), now);
        let running = Running::enter(shared.clone());
        let sleeping = Arc::new(AtomicBool::new(false));
        let handle = ReactorHandle {
            tx,
            waker,
            sleeping: sleeping.clone(),
        };
        let reactor = Reactor {
            id,
            poll,
            shared,
            listeners,
            inbox,
            sleeping,
            engine,
            sockets: Sockets::default(),
            inputs: InPool::new(64),
            ready: Vec::new(),
            dirty: Vec::new(),
            returned: Vec::new(),
            stop_accepting: false,
            epoch,
            now,
            stats,
            _running: running,
        };
        Ok((reactor, handle))
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        if let Some(tid) = current_thread_id() {
            self.stats.set_thread_id(tid);
        }
        let mut events = Events::with_capacity(1024);
        let mut ready = Vec::new();
        let mut shutting_down = false;
        loop {
            // Messages from other reactors are read every turn; only a reactor about to block
            // asks to be woken for them (announce, then look once more).
            self.sleeping.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            self.on_messages();
            let timeout = if self.ready.is_empty() && self.dirty.is_empty() {
                self.engine
                    .poll_timeout()
                    .map(|at| at.saturating_duration_since(self.now))
            } else {
                Some(Duration::ZERO)
            };
            if timeout == Some(Duration::ZERO) {
                self.sleeping.store(false, Ordering::Relaxed);
            }
            self.engine.flush_events();
            let polled = self.poll.poll(&mut events, timeout);
            self.sleeping.store(false, Ordering::Relaxed);
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::error!("reactor {}: poll failed: {e}", self.id);
                return;
            }
            self.now = Instant::now();
            self.stats.wakeups.inc();
            self.refresh_config();
            for event in &events {
                self.on_event(Tok::from_token(event.token()), event);
            }
            std::mem::swap(&mut ready, &mut self.ready);
            for tok in ready.drain(..) {
                self.on_ready(tok);
            }
            self.engine.handle_timeout(self.now);
            self.carry_out_io();
            if !shutting_down && self.shared.is_stopping() {
                shutting_down = true;
                self.engine.handle_shutdown(self.now);
                self.carry_out_io();
            }
            // Events before the output they led to: a client that has its answer finds
            // them in a snapshot.
            self.engine.flush_events();
            self.flush_dirty();
            if self.engine.is_finished() {
                log::debug!("reactor {} stopped", self.id);
                debug_assert!(self.sockets.is_empty(), "sockets outlive their connections");
                return;
            }
        }
    }

    /// Hands the engine a reloaded configuration or a new login table, if there is one.
    fn refresh_config(&mut self) {
        let epoch = self.shared.epoch();
        if epoch != self.epoch {
            self.epoch = epoch;
            let (ctx, users) = self.shared.current();
            self.engine.set_users(users);
            if !Arc::ptr_eq(&ctx, self.engine.context()) {
                self.engine.handle_reload(ctx, self.now);
                self.carry_out_io();
            }
        }
    }

    fn on_event(&mut self, tok: Tok, event: &mio::event::Event) {
        let Some(conn) = tok.as_conn() else {
            match tok.kind {
                Kind::Listener => self.accept(tok.index as usize),
                _ => self.on_messages(),
            }
            return;
        };
        let Some(s) = self.sockets.get(conn) else {
            return; // stale: the connection closed, its slot may hold another
        };
        if s.connecting {
            if event.is_writable() || event.is_error() {
                self.connect_done(conn);
            }
        } else if event.is_writable() {
            self.mark_dirty(conn);
        }
        let closing = event.is_read_closed() || event.is_error();
        if (event.is_readable() || closing) && self.sockets.get(conn).is_some() {
            self.read(conn, closing);
        }
    }

    fn on_ready(&mut self, tok: Tok) {
        match tok.as_conn() {
            Some(conn) => self.revisit(conn),
            None if tok.kind == Kind::Listener => self.accept(tok.index as usize),
            None => {}
        }
    }

    fn on_messages(&mut self) {
        while let Ok(envelope) = self.inbox.try_recv() {
            match envelope {
                Envelope::Engine(msg) => {
                    self.engine.handle_message(msg, self.now);
                    self.carry_out_io();
                }
                Envelope::Server { transfer, socket } => self.adopt(transfer, *socket),
                Envelope::Snapshot(reply) => {
                    let _ = reply.send(self.snapshot());
                }
            }
        }
    }

    /// The engine's connections with their peers' addresses.
    fn snapshot(&mut self) -> Snapshot {
        let (clients, servers) = self.engine.snapshot();
        let mut peer = |conn| self.sockets.get(conn).map(|s| s.peer.clone());
        Snapshot {
            reactor: self.id,
            clients: clients
                .into_iter()
                .map(|c| {
                    let addr = peer(Conn::Client(c.id));
                    (c, addr)
                })
                .collect(),
            servers: servers
                .into_iter()
                .map(|sv| {
                    let addr = peer(Conn::Server(sv.id));
                    (sv, addr)
                })
                .collect(),
        }
    }

    /// Takes in a server connection handed over (or returned because it could not be sent).
    fn adopt(&mut self, transfer: Transfer, mut socket: Socket) {
        let id = self.engine.handle_adopt(transfer, self.now);
        socket.generation = id.generation();
        // On no list of this reactor's yet.
        socket.dirty = false;
        self.register(Conn::Server(id), socket);
        self.carry_out_io();
    }

    fn accept(&mut self, li: usize) {
        for _ in 0..MAX_ACCEPTS {
            let Some(listener) = self.listeners.get(li) else {
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => self.on_accepted(sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Typically EMFILE; the next connection attempt brings a new edge.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
        self.ready.push(Tok::listener(li));
    }

    /// Closes the listeners, taking in first the connections the kernel has already queued
    /// on them (closing would reset those; with SO_REUSEPORT shared with other instances, the
    /// kernel sends new connections to those from now on).
    fn close_listeners(&mut self) {
        let mut listeners = std::mem::take(&mut self.listeners);
        for l in &listeners {
            for _ in 0..BACKLOG_SWEEP {
                match l.accept() {
                    Ok((sock, peer)) => self.on_accepted(sock, peer),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        for l in &mut listeners {
            let _ = self.poll.registry().deregister(l);
        }
    }

    fn on_accepted(&mut self, mut sock: Sock, peer: Peer) {
        let transport = match sock {
            Sock::Tcp(_) => Transport::Tcp,
            Sock::Unix(_) => Transport::Unix,
        };
        match self.engine.handle_accept(transport, self.now) {
            Accept::Reject(bytes) => {
                let _ = sock.write(&bytes);
                sock.shutdown();
            }
            Accept::Client(id) => {
                sock.set_nodelay();
                if let Peer::Tcp(addr) = &peer {
                    self.engine.set_client_peer(id, *addr);
                }
                log::debug!("client {peer} connected as {id:?}");
                let socket = Socket::new(Stream::plain(sock), id.generation(), peer);
                self.register(Conn::Client(id), socket);
            }
        }
        self.carry_out_io();
    }

    /// Carries out the engine's I/O commands, in order, until it has none.
    #[inline]
    fn carry_out_io(&mut self) {
        if self.engine.has_io() || !self.returned.is_empty() {
            self.carry_out_commands();
        }
    }

    fn carry_out_commands(&mut self) {
        while let Some(io) = self.engine.poll_io() {
            match io {
                Io::Flush(conn) => self.mark_dirty(conn),
                Io::Resume(conn) => self.ready.push(Tok::conn(conn)),
                Io::Connect {
                    server,
                    target,
                    addr_index,
                } => self.connect(server, &target, addr_index),
                Io::ClientTls { client, direct } => self.start_client_tls(client, direct),
                Io::ServerTls { server, target } => self.start_server_tls(server, &target),
                Io::Close { conn, last } => {
                    self.close(conn, last.as_ref().map_or(&[][..], |o| o.pending()));
                }
                Io::HandOff {
                    server,
                    to,
                    transfer,
                } => self.hand_off(server, to, transfer),
                Io::Cancel {
                    server,
                    target,
                    tls,
                    pid,
                    secret,
                } => self.cancel(server, &target, tls, pid, secret),
                Io::ForwardCancel { peer, pid, secret } => {
                    self.forward_cancel(&peer, pid, secret);
                }
                Io::DeriveVerifier { client, secret } => self.derive_verifier(client, secret),
                Io::Console { client, command } => self.console(client, command),
                // After the commands queued behind it: ids are handed out (accepting) only
                // while the engine has none pending.
                Io::StopAccepting => self.stop_accepting = true,
            }
        }
        // The engine hands out ids only while it has no commands pending, so that a slot is
        // never reused before its close has been carried out.
        while let Some((transfer, socket)) = self.returned.pop() {
            self.adopt(transfer, *socket);
        }
        if std::mem::take(&mut self.stop_accepting) {
            self.close_listeners();
        }
    }

    fn hand_off(&mut self, server: ServerId, to: usize, transfer: Transfer) {
        let Some(mut socket) = self.sockets.take(Conn::Server(server)) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut socket.stream.sock);
        let envelope = Envelope::Server {
            transfer,
            socket: Box::new(socket),
        };
        let sent = match self.shared.reactor(to) {
            Some(h) => h.send(envelope),
            None => Err(envelope),
        };
        if let Err(Envelope::Server { transfer, socket }) = sent {
            self.returned.push((transfer.unrequested(), socket));
        }
    }

    /// Opens the connection of a server connection: to the target's unix socket, or to the
    /// `addr_index`th address its host resolved to.
    fn connect(&mut self, server: ServerId, target: &Target, addr_index: usize) {
        let connected = match target.unix_path() {
            Some(path) => {
                UnixStream::connect(path).map(|sock| (Sock::Unix(sock), Peer::Unix(path.clone())))
            }
            None => target
                .addrs()
                .get(addr_index)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("could not resolve host \"{}\"", target.host),
                    )
                })
                .and_then(|&addr| Ok((Sock::Tcp(TcpStream::connect(addr)?), Peer::Tcp(addr)))),
        };
        match connected {
            Ok((sock, peer)) => {
                let mut socket = Socket::new(Stream::plain(sock), server.generation(), peer);
                socket.connecting = true;
                self.register(Conn::Server(server), socket);
            }
            Err(e) => self.engine.handle_connect_failed(server, e, self.now),
        }
    }

    /// Answers the client's SSLRequest in plaintext, then starts TLS as the server.
    fn start_client_tls(&mut self, client: ClientId, direct: bool) {
        let conn = Conn::Client(client);
        let Some(identity) = self.shared.tls() else {
            return self
                .engine
                .handle_closed(conn, Failure::TlsNotConfigured, self.now);
        };
        let config = identity.config;
        let Some(s) = self.sockets.get(conn) else {
            return;
        };
        // The 'S' answer goes out in plaintext before the handshake starts.
        let pending = self.engine.output(conn);
        let (written, result) = s.stream.write_some(pending);
        self.stats.client_bytes_sent.add(written as u64);
        let result = result.and_then(|()| match written == pending.len() {
            true => Ok(()),
            false => Err(io::ErrorKind::WriteZero.into()),
        });
        if let Err(e) = result {
            return self.engine.handle_closed(conn, Failure::Write(e), self.now);
        }
        // Direct TLS: the bytes already read are the ClientHello.
        let prefix = direct.then(|| {
            let prefix = s.input.as_ref().map(|i| i.filled().to_vec());
            if let Some(input) = s.input.as_mut() {
                input.consume(input.len());
            }
            prefix.unwrap_or_default()
        });
        s.tls_binding = identity.channel_binding;
        let started = s.stream.accept_tls(config, prefix.as_deref());
        match started {
            Ok(()) => {
                s.handshake = true;
                self.engine.handle_sent(conn, written, self.now);
                s.dirty = true;
                self.dirty.push(conn);
                self.ready.push(Tok::conn(conn));
            }
            Err(e) => self.engine.handle_closed(conn, Failure::Tls(e), self.now),
        }
    }

    /// Starts TLS as a client of the server `target`.
    fn start_server_tls(&mut self, server: ServerId, target: &Target) {
        let conn = Conn::Server(server);
        let (Some(config), Some(name)) = (target.tls.clone(), target.server_name.clone()) else {
            return self
                .engine
                .handle_closed(conn, Failure::TlsNotConfigured, self.now);
        };
        let Some(s) = self.sockets.get(conn) else {
            return;
        };
        match s.stream.connect_tls(config, name) {
            Ok(()) => {
                s.handshake = true;
                s.dirty = true;
                self.dirty.push(conn);
                self.ready.push(Tok::conn(conn));
            }
            Err(e) => self.engine.handle_closed(conn, Failure::Tls(e), self.now),
        }
    }

    /// Delivers a cancel for `server` (whose real key is `pid`/`secret`) on a helper thread,
    /// which then tells this reactor's engine it is done.
    fn cancel(&mut self, server: ServerId, target: &Target, tls: bool, pid: u32, secret: Vec<u8>) {
        let done = Message::CancelDone { server };
        let tls = tls
            .then(|| target.tls.clone().zip(target.server_name.clone()))
            .flatten()
            .map(|(config, name)| cancel::CancelTls {
                config,
                name,
                required: false,
            });
        let (shared, me, report) = (self.shared.clone(), self.id, done.clone());
        let spawned = match self.sockets.get(Conn::Server(server)) {
            Some(s) => cancel::spawn(s.peer.to_cancel_addr(), tls, pid, secret, move || {
                shared.cancel_delivered();
                deliver(&shared, me, report);
            }),
            None => Err(io::ErrorKind::NotFound.into()),
        };
        match spawned {
            Ok(thread) => self.shared.add_helper(thread),
            Err(e) => {
                log::warn!("cancel request dropped: {e}");
                self.shared.cancel_delivered();
                self.engine.handle_message(done, self.now);
            }
        }
    }

    /// Forwards a CancelRequest to the pglink instance that issued its key, on a helper
    /// thread.
    fn forward_cancel(&mut self, peer: &cancel::Peer, pid: u32, secret: Vec<u8>) {
        let shared = self.shared.clone();
        let spawned = cancel::spawn(
            peer.addr.clone(),
            peer.tls.clone(),
            pid,
            secret,
            move || {
                shared.cancel_delivered();
            },
        );
        match spawned {
            Ok(thread) => self.shared.add_helper(thread),
            Err(e) => {
                log::warn!("cancel request for peer {} dropped: {e}", peer.id);
                self.shared.cancel_delivered();
            }
        }
    }

    /// Has `client`'s SCRAM verifier derived on the verifier thread, which then tells this
    /// reactor's engine it is ready.
    fn derive_verifier(&mut self, client: ClientId, secret: Arc<ScramSecret>) {
        let ready = Message::VerifierReady { client };
        let (shared, me, report) = (self.shared.clone(), self.id, ready.clone());
        let done = Box::new(move || deliver(&shared, me, report));
        if let Err(secret) = self.shared.verifiers.for_login(secret, done) {
            // The thread has stopped (shutting down): better a stall here than a hung login.
            secret.derive();
            self.engine.handle_message(ready, self.now);
        }
    }

    /// Runs an admin console command on the console thread, which answers this reactor's
    /// engine.
    fn console(&mut self, client: ClientId, command: String) {
        if let Err(answer) = self.shared.run_console(self.id, client, command) {
            self.engine
                .handle_message(Message::ConsoleReply { client, answer }, self.now);
        }
    }

    /// Writes all coalesced output of this turn.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for conn in dirty.drain(..) {
            self.flush(conn);
        }
        // Flushing can queue more (e.g. a server connection resumed after its client drained).
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }
}

/// Sends a helper thread's report to reactor `to`, waiting a little while its inbox is full
/// (a lost report would leave a connection waiting for its deadline).
pub(crate) fn deliver(shared: &Shared, to: usize, mut msg: Message) {
    for _ in 0..1000 {
        match Mailbox::send(shared, to, msg) {
            Ok(()) => return,
            Err(back) if shared.reactor(to).is_some() && !shared.is_stopping() => {
                msg = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    log::warn!("reactor {to} did not take a helper thread's report for a second; dropped");
}

/// Counts a reactor as running while it exists (see `Reactor::_running`).
struct Running(Arc<Shared>);

impl Running {
    fn enter(shared: Arc<Shared>) -> Running {
        shared.reactor_started();
        Running(shared)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.reactor_stopped();
    }
}

/// The calling thread's kernel thread id (Linux: `/proc/thread-self` links to
/// `<pid>/task/<tid>`), so its CPU time can be read from `/proc` without a clock read per
/// loop turn.
fn current_thread_id() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}
