//! The driver's side of a connection, either kind: its socket (and TLS session), its input
//! buffer, and the one read, process and flush routine both kinds share.

use std::io;

use mio::Interest;

use super::Reactor;
use super::buf::{InBuf, InPool};
use super::stream::{Peer, ReadStatus, Stream};
use super::token::Tok;
use crate::engine::{Conn, Failure, TlsInfo};
use crate::observe::metrics::Counter;
use crate::protocol::framing::peek_header;
use crate::tls::ALPN_POSTGRESQL;

/// Reads per connection per wake-up before yielding to other connections.
const MAX_READS: usize = 8;

/// One connection's socket and input.
pub struct Socket {
    pub(super) generation: u32,
    pub(super) stream: Stream,
    pub(super) input: Option<InBuf>,
    /// The last read found the socket empty: until the next readiness event there is
    /// nothing to read, so revisiting the connection skips the read.
    pub(super) drained: bool,
    /// A readiness event reported the peer closing. That edge comes once, possibly with
    /// more data queued than one wake-up reads (or while the engine wants no input), so
    /// from then on every read goes on to the end of file: a short read never counts as
    /// drained.
    pub(super) peer_closing: bool,
    /// A TLS handshake runs (its records are read and written here; the engine hears of it
    /// when it completes).
    pub(super) handshake: bool,
    /// A server connection's connect is in progress.
    pub(super) connecting: bool,
    /// On the reactor's list of connections to write at the end of the turn.
    pub(super) dirty: bool,
    pub(super) peer: Peer,
    /// A client TLS handshake's channel-binding data: that of the certificate it is served.
    pub(super) tls_binding: Option<Vec<u8>>,
}

impl Socket {
    pub(super) fn new(stream: Stream, generation: u32, peer: Peer) -> Socket {
        Socket {
            generation,
            stream,
            input: None,
            drained: false,
            peer_closing: false,
            handshake: false,
            connecting: false,
            dirty: false,
            peer,
            tls_binding: None,
        }
    }
}

/// Sockets by engine slab index, one table per kind.
#[derive(Default)]
pub(super) struct Sockets {
    clients: Vec<Option<Socket>>,
    servers: Vec<Option<Socket>>,
}

impl Sockets {
    fn table(&mut self, conn: Conn) -> (&mut Vec<Option<Socket>>, usize, u32) {
        match conn {
            Conn::Client(c) => (&mut self.clients, c.index(), c.generation()),
            Conn::Server(s) => (&mut self.servers, s.index(), s.generation()),
        }
    }

    pub(super) fn get(&mut self, conn: Conn) -> Option<&mut Socket> {
        let (table, index, generation) = self.table(conn);
        table
            .get_mut(index)
            .and_then(Option::as_mut)
            .filter(|s| s.generation == generation)
    }

    pub(super) fn insert(&mut self, conn: Conn, socket: Socket) {
        let (table, index, _) = self.table(conn);
        if table.len() <= index {
            table.resize_with(index + 1, || None);
        }
        if let Some(slot) = table.get_mut(index) {
            debug_assert!(slot.is_none(), "a socket slot is reused before its close");
            *slot = Some(socket);
        }
    }

    pub(super) fn take(&mut self, conn: Conn) -> Option<Socket> {
        let (table, index, generation) = self.table(conn);
        let slot = table.get_mut(index)?;
        if slot.as_ref()?.generation != generation {
            return None;
        }
        slot.take()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.clients
            .iter()
            .chain(&self.servers)
            .all(Option::is_none)
    }
}

/// What one read attempt gave.
enum Filled {
    /// Bytes were added to the input buffer. `drained`: a short read from a plain socket,
    /// so nothing more is waiting (new data brings a new readiness edge).
    Data {
        drained: bool,
    },
    /// Nothing to read until the next readiness event.
    Blocked,
    /// The buffer is full of input the engine cannot use yet (it waits for something).
    Full,
    Eof,
    Failed(io::Error),
}

/// Reads once into `slot` (taking a buffer from the pool if needed). A buffer full of one
/// message that must be seen whole grows to that message's size, which `max_len` bounds.
/// `to_eof`: the peer is closing, so a short read must not count as drained (a FIN that came
/// with the data has no further edge). TLS never counts as drained: records may remain in the
/// socket after the plaintext that was returned.
fn read_into(
    stream: &mut Stream,
    slot: &mut Option<InBuf>,
    bufs: &mut InPool,
    max_len: usize,
    to_eof: bool,
    received: &Counter,
) -> Filled {
    let input = slot.get_or_insert_with(|| bufs.input());
    if input.spare().is_empty() {
        match peek_header(input.filled(), max_len) {
            Ok(Some(h)) if h.frame_len() > input.capacity() => input.grow(h.frame_len()),
            _ => return Filled::Full,
        }
    }
    let spare = input.spare();
    let room = spare.len();
    match stream.read(spare) {
        Ok(ReadStatus::Data(n)) => {
            input.commit(n);
            received.add(n as u64);
            Filled::Data {
                drained: n < room && !to_eof && !stream.is_tls(),
            }
        }
        Ok(ReadStatus::WouldBlock) => Filled::Blocked,
        Ok(ReadStatus::Eof) => Filled::Eof,
        Err(e) => Filled::Failed(e),
    }
}

impl Reactor {
    fn sent(&self, conn: Conn) -> &Counter {
        match conn {
            Conn::Client(_) => &self.stats.client_bytes_sent,
            Conn::Server(_) => &self.stats.server_bytes_sent,
        }
    }

    /// Reads (bounded) from a connection and hands what arrived to the engine.
    ///
    /// A short read from a plain socket means it was drained (new data brings a new edge),
    /// which saves the `WouldBlock` probe per message; `closing` (the event also reported the
    /// peer closing) keeps this and every later read of the connection going to the end of
    /// file, so that a FIN that came with the data is not missed (its edge does not come
    /// again). TLS always reads to `WouldBlock`: records may remain after the plaintext
    /// returned.
    pub(super) fn read(&mut self, conn: Conn, closing: bool) {
        let to_eof = match self.sockets.get(conn) {
            Some(s) => {
                s.drained = false;
                s.peer_closing |= closing;
                s.peer_closing
            }
            None => return,
        };
        let max_len = self.engine.context().max_message_len;
        for _ in 0..MAX_READS {
            let handshaking = self.sockets.get(conn).is_some_and(|s| s.handshake);
            // A handshake is read regardless; otherwise the engine decides (backpressure, a
            // session that waits), and asks for a `Resume` once reading is useful again.
            if !handshaking && !self.engine.wants_input(conn) {
                return;
            }
            let received = match conn {
                Conn::Client(_) => &self.stats.client_bytes_received,
                Conn::Server(_) => &self.stats.server_bytes_received,
            };
            let Some(s) = self.sockets.get(conn) else {
                return;
            };
            let filled = read_into(
                &mut s.stream,
                &mut s.input,
                &mut self.inputs,
                max_len,
                to_eof,
                received,
            );
            match filled {
                Filled::Data { drained } => {
                    s.drained = drained;
                    self.after_read(conn);
                    if drained {
                        self.recycle_input(conn);
                        return;
                    }
                }
                Filled::Blocked => {
                    s.drained = true;
                    self.after_read(conn);
                    self.recycle_input(conn);
                    return;
                }
                // The engine is waiting for something else (a server connection, say).
                Filled::Full => return,
                Filled::Eof => return self.lost(conn, Failure::Eof),
                Filled::Failed(e) => return self.lost(conn, Failure::Read(e)),
            }
            if self.sockets.get(conn).is_none() {
                return;
            }
        }
        self.ready.push(Tok::conn(conn));
    }

    fn recycle_input(&mut self, conn: Conn) {
        if let Some(s) = self.sockets.get(conn) {
            self.inputs.recycle_input(&mut s.input);
        }
    }

    /// After bytes arrived (or a TLS record was processed): finish a TLS handshake, then
    /// hand plaintext to the engine.
    fn after_read(&mut self, conn: Conn) {
        let Some(s) = self.sockets.get(conn) else {
            return;
        };
        if s.handshake {
            s.dirty = true; // handshake records to send
            self.dirty.push(conn);
            if s.stream.is_handshaking() {
                return;
            }
            s.handshake = false;
            let info = match conn {
                Conn::Client(_) => TlsInfo {
                    alpn_postgresql: s.stream.alpn() == Some(ALPN_POSTGRESQL),
                    channel_binding: s.tls_binding.take(),
                },
                Conn::Server(_) => TlsInfo {
                    alpn_postgresql: false,
                    channel_binding: s.stream.peer_end_point(),
                },
            };
            self.engine.handle_tls_established(conn, info, self.now);
            self.carry_out_io();
        }
        self.process(conn);
    }

    /// Offers buffered input to the engine; consumes what it used.
    pub(super) fn process(&mut self, conn: Conn) {
        let Some(s) = self.sockets.get(conn) else {
            return;
        };
        if s.handshake {
            return;
        }
        let Some(input) = s.input.as_mut().filter(|i| !i.is_empty()) else {
            return;
        };
        let used = self.engine.handle_read(conn, input.filled(), self.now);
        input.consume(used);
        self.carry_out_io();
    }

    /// A connection revisited: its buffered input first, then (unless its socket was
    /// drained) whatever more has arrived.
    pub(super) fn revisit(&mut self, conn: Conn) {
        self.process(conn);
        if self.sockets.get(conn).is_some_and(|s| !s.drained) {
            self.read(conn, false);
        }
    }

    /// Writes the engine's pending output for `conn`, then pushes out buffered TLS records,
    /// and tells the engine what the socket took.
    pub(super) fn flush(&mut self, conn: Conn) {
        let Some(s) = self.sockets.get(conn) else {
            return;
        };
        s.dirty = false;
        if s.connecting {
            return;
        }
        let pending = self.engine.output(conn);
        if pending.is_empty() {
            // Nothing of the engine's to write (a writable event, say; the engine was told of
            // everything written before): only TLS records rustls may still hold.
            if let Err(e) = s.stream.flush() {
                self.engine.handle_closed(conn, Failure::Write(e), self.now);
                self.carry_out_io();
            }
            return;
        }
        let (written, result) = s.stream.write_some(pending);
        let result = result.and_then(|()| s.stream.flush().map(|_| ()));
        self.sent(conn).add(written as u64);
        match result {
            Ok(()) => self.engine.handle_sent(conn, written, self.now),
            Err(e) => self.engine.handle_closed(conn, Failure::Write(e), self.now),
        }
        self.carry_out_io();
    }

    /// Puts `conn` on the list of connections to write at the end of the turn (once).
    pub(super) fn mark_dirty(&mut self, conn: Conn) {
        if let Some(s) = self.sockets.get(conn)
            && !s.dirty
        {
            s.dirty = true;
            self.dirty.push(conn);
        }
    }

    /// The connection failed or the peer closed it.
    pub(super) fn lost(&mut self, conn: Conn, failure: Failure) {
        self.engine.handle_closed(conn, failure, self.now);
        self.carry_out_io();
    }

    /// Registers a socket under `conn`'s token and keeps it; on failure the engine hears of
    /// it.
    pub(super) fn register(&mut self, conn: Conn, mut socket: Socket) {
        let registered = self.poll.registry().register(
            &mut socket.stream.sock,
            Tok::conn(conn).to_token(),
            Interest::READABLE | Interest::WRITABLE,
        );
        match registered {
            Ok(()) => self.sockets.insert(conn, socket),
            Err(e) => {
                log::warn!("cannot register a socket for {}: {e}", socket.peer);
                self.engine
                    .handle_closed(conn, Failure::Register(e), self.now);
            }
        }
    }

    /// Writes `last` (best effort), then closes the socket.
    pub(super) fn close(&mut self, conn: Conn, last: &[u8]) {
        let Some(mut s) = self.sockets.take(conn) else {
            return;
        };
        self.sent(conn).add(s.stream.write_some(last).0 as u64);
        s.stream.close_notify();
        let _ = self.poll.registry().deregister(&mut s.stream.sock);
        if let Some(mut input) = s.input.take() {
            input.consume(input.len());
            self.inputs.recycle_input(&mut Some(input));
        }
        log::trace!("{conn:?} ({}) closed", s.peer);
    }

    /// A server connection's connect completed or failed (its socket became writable).
    pub(super) fn connect_done(&mut self, conn: Conn) {
        let Conn::Server(server) = conn else {
            return;
        };
        let Some(s) = self.sockets.get(conn) else {
            return;
        };
        let failed = match s.stream.sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match s.stream.sock.check_connected() {
                Ok(()) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Some(e),
            },
        };
        s.connecting = false;
        match failed {
            Some(e) => self.engine.handle_connect_failed(server, e, self.now),
            None => {
                s.stream.sock.set_nodelay();
                self.engine.handle_connected(server, self.now);
            }
        }
        self.carry_out_io();
    }
}
