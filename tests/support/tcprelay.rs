//! A TCP relay between pglink and PostgreSQL that injects network faults: it can stall a
//! connection (stop forwarding, socket kept open), delay it, close it (FIN) or reset it
//! (RST), in either direction, on one connection or on all of them (those open and those to
//! come); and it can cut the next server message of a given type short (forward half of it,
//! then reset or stall). It counts the connections it accepts (pglink's attempts).
//!
//! ```ignore
//! let relay = TcpRelay::start(pg.port());
//! let proxy = ProxyConfig::new(pg).backend("port", json!(relay.port())).start();
//! relay.stall(Dir::Both);        // every connection, and every new one, goes silent
//! relay.heal();                  // and forwards again
//! let link = relay.link_for_server_port(port).unwrap(); // one connection
//! link.cut_server_message(b'D', Then::Reset); // half a DataRow, then a reset
//! relay.cut();                   // every connection so far is closed; new ones still work
//! ```
//!
//! One thread per direction per connection, each polling its socket every few milliseconds,
//! so a fault set from the test applies at once. Cutting a message follows PostgreSQL's
//! framing of the server's side, which assumes the relayed connection does not use TLS (the
//! test proxies use `sslmode=disable` to their backend).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How often a pump looks at its faults while nothing arrives.
const POLL: Duration = Duration::from_millis(5);
/// Bytes a stalled direction reads and holds (so that the relay still notices the sender
/// closing) before it stops reading too.
const HOLD_CAP: usize = 1 << 20;

/// A direction of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// pglink → PostgreSQL.
    ToServer,
    /// PostgreSQL → pglink.
    ToClient,
    Both,
}

impl Dir {
    fn covers(self, index: usize) -> bool {
        matches!(
            (self, index),
            (Dir::Both, _) | (Dir::ToServer, UP) | (Dir::ToClient, DOWN)
        )
    }
}

const UP: usize = 0;
const DOWN: usize = 1;

/// What follows the part of a server message that is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// The connection is reset (RST both ways).
    Reset,
    /// Nothing more is forwarded either way (the sockets stay open).
    Stall,
}

/// The faults of one connection (or the template for new ones).
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    stall: [bool; 2],
    delay: [Duration; 2],
    /// Forward half of the next server message of this type, then this.
    cut: Option<(u8, Then)>,
}

impl Faults {
    fn stall(&mut self, dir: Dir) {
        for (i, s) in self.stall.iter_mut().enumerate() {
            *s |= dir.covers(i);
        }
    }

    fn delay(&mut self, dir: Dir, by: Duration) {
        for (i, d) in self.delay.iter_mut().enumerate() {
            if dir.covers(i) {
                *d = by;
            }
        }
    }
}

/// The two sockets of a relayed connection (one descriptor each: closing the last holder
/// closes them, which is what makes a reset a RST).
struct Pair {
    client: TcpStream,
    server: TcpStream,
}

impl Pair {
    /// (from, to) for a direction.
    fn ends(&self, dir: usize) -> (&TcpStream, &TcpStream) {
        if dir == UP {
            (&self.client, &self.server)
        } else {
            (&self.server, &self.client)
        }
    }
}

struct LinkInner {
    faults: Mutex<Faults>,
    pair: Mutex<Option<Arc<Pair>>>,
    closed: AtomicBool,
    server_port: u16,
}

/// One relayed connection (pglink's server connection), to inject faults into.
#[derive(Clone)]
pub struct Link(Arc<LinkInner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    /// The relay's local port towards PostgreSQL: the server's `inet_client_port()` (and
    /// `pg_stat_activity.client_port`) for this connection.
    pub fn server_port(&self) -> u16 {
        self.0.server_port
    }

    /// Stops forwarding in `dir` (what arrives is held, up to a limit, and never forwarded
    /// unless [`heal`](Self::heal)ed first).
    pub fn stall(&self, dir: Dir) {
        lock(&self.0.faults).stall(dir);
    }

    /// Forwards what arrives in `dir` only `by` later.
    pub fn delay(&self, dir: Dir, by: Duration) {
        lock(&self.0.faults).delay(dir, by);
    }

    /// Forwards half of the next message of type `tag` PostgreSQL sends (at least one byte,
    /// never all of it), then resets or stalls the connection.
    pub fn cut_server_message(&self, tag: u8, then: Then) {
        lock(&self.0.faults).cut = Some((tag, then));
    }

    /// No faults: forwards again, held bytes first.
    pub fn heal(&self) {
        *lock(&self.0.faults) = Faults::default();
    }

    /// Closes both sides (FIN).
    pub fn close(&self) {
        if let Some(pair) = self.take() {
            let _ = pair.client.shutdown(Shutdown::Both);
            let _ = pair.server.shutdown(Shutdown::Both);
        }
    }

    /// Resets both sides (RST, once the pumps have let go, within a few milliseconds).
    pub fn reset(&self) {
        if let Some(pair) = self.take() {
            for s in [&pair.client, &pair.server] {
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
    }

    /// Closed by the relay, or by either peer.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    fn take(&self) -> Option<Arc<Pair>> {
        self.0.closed.store(true, Ordering::Release);
        lock(&self.0.pair).take()
    }

    fn faults(&self) -> Faults {
        *lock(&self.0.faults)
    }
}

struct Shared {
    links: Mutex<Vec<Link>>,
    /// Faults every new connection starts with.
    template: Mutex<Faults>,
    accepted: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    /// Sets a fault on every open connection and on those to come.
    fn apply(&self, f: impl Fn(&mut Faults)) {
        f(&mut lock(&self.template));
        for link in lock(&self.links).iter() {
            f(&mut lock(&link.0.faults));
        }
    }
}

pub struct TcpRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TcpRelay {
    /// Listens on an ephemeral loopback port and forwards to 127.0.0.1:`target_port`. When
    /// nothing listens there, a connection is accepted and reset at once (and counted).
    pub fn start(target_port: u16) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let addr = listener.local_addr().expect("relay addr");
        let shared = Arc::new(Shared {
            links: Mutex::default(),
            template: Mutex::default(),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = conn else { continue };
                sh.accepted.fetch_add(1, Ordering::AcqRel);
                let target = SocketAddr::from(([127, 0, 0, 1], target_port));
                match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(server) => start_link(&sh, client, server),
                    Err(_) => {
                        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                    }
                }
            }
        });
        TcpRelay { addr, shared }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far (pglink's connection attempts).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Open connections, oldest first.
    pub fn links(&self) -> Vec<Link> {
        let mut links = lock(&self.shared.links);
        links.retain(|l| !l.is_closed());
        links.clone()
    }

    /// The open connection PostgreSQL sees coming from `port` (`inet_client_port()`).
    pub fn link_for_server_port(&self, port: u16) -> Option<Link> {
        self.links().into_iter().find(|l| l.server_port() == port)
    }

    /// Every connection, open and to come, stops forwarding in `dir`.
    pub fn stall(&self, dir: Dir) {
        self.shared.apply(|f| f.stall(dir));
    }

    /// Every connection, open and to come, forwards in `dir` only `by` later.
    pub fn delay(&self, dir: Dir, by: Duration) {
        self.shared.apply(|f| f.delay(dir, by));
    }

    /// Every connection, open and to come, gets half of its next server message of type
    /// `tag`, then `then`.
    pub fn cut_server_message(&self, tag: u8, then: Then) {
        self.shared.apply(|f| f.cut = Some((tag, then)));
    }

    /// No more faults, on open connections or new ones.
    pub fn heal(&self) {
        self.shared.apply(|f| *f = Faults::default());
    }

    /// Closes every connection made through the relay so far (FIN); new ones still work.
    pub fn cut(&self) {
        for link in self.links() {
            link.close();
        }
    }

    /// Resets every connection made through the relay so far (RST); new ones still work.
    pub fn reset(&self) {
        for link in self.links() {
            link.reset();
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn start_link(shared: &Shared, client: TcpStream, server: TcpStream) {
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(POLL));
        let _ = s.set_write_timeout(Some(POLL));
    }
    let server_port = server.local_addr().map_or(0, |a| a.port());
    let pair = Arc::new(Pair { client, server });
    let link = Link(Arc::new(LinkInner {
        faults: Mutex::new(*lock(&shared.template)),
        pair: Mutex::new(Some(pair.clone())),
        closed: AtomicBool::new(false),
        server_port,
    }));
    lock(&shared.links).push(link.clone());
    for dir in [UP, DOWN] {
        let (link, pair) = (link.clone(), pair.clone());
        thread::spawn(move || Pump::new(dir).run(&link, &pair));
    }
}

/// One direction of a connection.
struct Pump {
    dir: usize,
    /// Read, not forwarded yet: chunks with the time they arrived.
    held: VecDeque<(Instant, Vec<u8>)>,
    held_len: usize,
    /// Where the forwarded server bytes are in PostgreSQL's framing.
    frames: Frames,
    /// Bytes of the message being cut still to forward.
    cut_left: Option<usize>,
}

/// The connection is to be reset (a write failed, or a cut says so).
struct Broken;

impl Pump {
    fn new(dir: usize) -> Pump {
        Pump {
            dir,
            held: VecDeque::new(),
            held_len: 0,
            frames: Frames::default(),
            cut_left: None,
        }
    }

    fn run(mut self, link: &Link, pair: &Pair) {
        let (mut from, _) = pair.ends(self.dir);
        let mut eof = false;
        let mut buf = vec![0u8; 64 * 1024];
        while !link.is_closed() {
            let faults = link.faults();
            let stalled = faults.stall[self.dir];
            if faults.cut.is_none() {
                self.cut_left = None; // healed while cutting
            }
            if !stalled {
                let forwarded = match faults.cut.filter(|_| self.dir == DOWN) {
                    Some((tag, then)) => self.forward_cut(link, pair, tag, then),
                    None => self.forward_due(pair, faults.delay[self.dir]),
                };
                if forwarded.is_err() {
                    return link.reset();
                }
            }
            if eof && (self.held.is_empty() || stalled) {
                // A sender that closed: so does the relay (PostgreSQL and pglink never
                // half-close), dropping what a stall held back.
                return link.close();
            }
            if eof || self.held_len >= HOLD_CAP {
                thread::sleep(POLL);
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => eof = true,
                Ok(n) => {
                    self.held.push_back((Instant::now(), buf[..n].to_vec()));
                    self.held_len += n;
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => return link.reset(),
            }
        }
    }

    /// Writes the held chunks whose delay is over (as much as the receiver takes now).
    fn forward_due(&mut self, pair: &Pair, delay: Duration) -> Result<(), Broken> {
        let now = Instant::now();
        while let Some((at, chunk)) = self.held.front() {
            let len = chunk.len();
            if *at + delay > now || self.write_some(pair, len)? < len {
                break;
            }
        }
        Ok(())
    }

    /// With a cut pending: forwards whole messages up to the next one of type `tag`, then
    /// half of that one, then resets or stalls.
    fn forward_cut(&mut self, link: &Link, pair: &Pair, tag: u8, then: Then) -> Result<(), Broken> {
        let frame_len = loop {
            if self.cut_left.is_some() {
                break 0; // cutting this one already
            }
            // Finish the message under way first.
            let before = self.frames.before_boundary().min(self.held_len);
            if before > 0 {
                if self.write_some(pair, before)? == 0 {
                    return Ok(()); // the receiver is not reading; later
                }
                continue;
            }
            if !self.frames.at_boundary() {
                return Ok(()); // more of it has to arrive first
            }
            // One contiguous buffer to find the next header in (delays no longer matter).
            if self.held.len() > 1 {
                let at = self.held.front().map_or_else(Instant::now, |c| c.0);
                let all: Vec<u8> = self.held.drain(..).flat_map(|(_, c)| c).collect();
                self.held.push_back((at, all));
            }
            let Some((next, len)) = self.held.front().and_then(|(_, c)| header(c)) else {
                return Ok(()); // the next header is not all here yet
            };
            if next == tag {
                break len;
            }
            // Another message: its header goes, then its body as above.
            if self.write_some(pair, 5)? == 0 {
                return Ok(());
            }
        };
        let mut left = *self.cut_left.get_or_insert((frame_len / 2).max(1));
        while left > 0 {
            let wrote = self.write_some(pair, left)?;
            if wrote == 0 {
                // Not all here yet, or the receiver is not reading: later.
                self.cut_left = Some(left);
                return Ok(());
            }
            left -= wrote;
        }
        self.cut_left = None;
        lock(&link.0.faults).cut = None;
        match then {
            Then::Reset => Err(Broken),
            Then::Stall => {
                link.stall(Dir::Both);
                Ok(())
            }
        }
    }

    /// Writes up to `n` bytes of the front chunk, as many as the socket takes within the
    /// poll interval; how many.
    fn write_some(&mut self, pair: &Pair, n: usize) -> Result<usize, Broken> {
        let (_, mut to) = pair.ends(self.dir);
        let Some((_, chunk)) = self.held.front_mut() else {
            return Ok(0);
        };
        let n = n.min(chunk.len());
        let written = match to.write(&chunk[..n]) {
            Ok(0) => return Err(Broken),
            Ok(w) => w,
            Err(e) if is_timeout(&e) => 0,
            Err(_) => return Err(Broken),
        };
        if self.dir == DOWN {
            self.frames.feed(&chunk[..written]);
        }
        chunk.drain(..written);
        self.held_len -= written;
        if chunk.is_empty() {
            self.held.pop_front();
        }
        Ok(written)
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// The type and length (tag included) of the message at the start of `data`, once its
/// header is there.
fn header(data: &[u8]) -> Option<(u8, usize)> {
    let len = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?);
    Some((*data.first()?, 1 + len as usize))
}

/// Position in PostgreSQL's message framing of the forwarded server bytes (a tag byte and a
/// length, then the body).
#[derive(Default)]
struct Frames {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message not forwarded yet.
    body_left: usize,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.header_len == 0
    }

    /// Bytes to forward before the next message starts (or before the current header is
    /// complete and says how long the message is).
    fn before_boundary(&self) -> usize {
        match self.header_len {
            0 => 0,
            5 => self.body_left,
            n => 5 - n,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let took = if self.header_len < 5 {
                let take = (5 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                if self.header_len == 5 {
                    let len = u32::from_be_bytes(self.header[1..5].try_into().expect("4 bytes"));
                    self.body_left = (len as usize).saturating_sub(4);
                }
                take
            } else {
                let take = self.body_left.min(bytes.len());
                self.body_left -= take;
                take
            };
            bytes = &bytes[took..];
            if self.header_len == 5 && self.body_left == 0 {
                self.header_len = 0;
            }
        }
    }
}
