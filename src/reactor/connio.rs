//! Reading into and writing from a connection's pooled buffers; shared by client and backend
//! connections.

use std::io;

use super::buf::{BufPool, InBuf, OutBuf};
use super::stream::{ReadStatus, Stream};
use crate::observe::metrics::Counter;
use crate::protocol::framing::peek_header;

/// What one read attempt gave.
pub(super) enum Filled {
    /// Bytes were added to the input buffer. `drained`: a short read from a plain socket,
    /// so nothing more is waiting (new data brings a new readiness edge).
    Data {
        drained: bool,
    },
    /// Nothing to read until the next readiness event.
    Blocked,
    /// The buffer is full of input the session cannot use yet (it waits for something).
    Full,
    Eof,
    Failed(io::Error),
}

/// Reads once into `slot` (taking a buffer from the pool if needed). A buffer full of one
/// message that must be seen whole grows to that message's size, which `max_len` bounds.
/// `to_eof`: the peer is closing, so a short read must not count as drained (a FIN that came
/// with the data has no further edge). TLS never counts as drained: records may remain in the
/// socket after the plaintext that was returned. Bytes read are added to `received`.
pub(super) fn read_into(
    stream: &mut Stream,
    slot: &mut Option<InBuf>,
    bufs: &mut BufPool,
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

/// Writes as much pending output as the socket takes, then pushes out buffered TLS records;
/// gives the buffer back to the pool once everything is written. Bytes written are added to
/// `sent`.
pub(super) fn write_out(
    stream: &mut Stream,
    slot: &mut Option<OutBuf>,
    bufs: &mut BufPool,
    sent: &Counter,
) -> io::Result<()> {
    if let Some(out) = slot.as_mut() {
        while !out.is_empty() {
            match stream.write(out.pending())? {
                0 => break,
                n => {
                    out.advance(n);
                    sent.add(n as u64);
                }
            }
        }
    }
    stream.flush()?;
    bufs.recycle_output(slot);
    Ok(())
}
