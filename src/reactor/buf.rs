//! Per-connection input buffers, taken from a per-reactor pool.
//!
//! A connection holds a buffer only while bytes are in flight (a partial message, or input
//! the engine cannot use yet) and gives it back when it drains, so an idle client costs no
//! buffer memory and a busy reactor allocates nothing in the steady state. (Output buffers
//! belong to the engine, which writes into them: see `engine::output`.)
//!
//! Buffers are fully initialised once and read into directly (no zeroing per read);
//! `start..end` is the unconsumed data.

/// Size of pooled buffers; also the most read per `read` call.
pub const BUF_SIZE: usize = 16 * 1024;

/// Unconsumed input of one connection.
#[derive(Debug)]
pub struct InBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    /// The bytes read and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        self.data.get(self.start..self.end).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Room to read into, moving unconsumed bytes to the front first if that makes room.
    /// Empty when the buffer is full of unconsumed data (see `grow`).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.data.get_mut(self.end..).unwrap_or_default()
    }

    /// `n` bytes were read into `spare()`.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// `n` bytes were used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room for at least `total` unconsumed bytes (a message bigger than the buffer
    /// that must be seen whole). The caller bounds `total`.
    pub fn grow(&mut self, total: usize) {
        if total > self.data.len() {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.data.resize(total, 0);
        }
    }

    pub fn capacity(&self) -> usize {
        self.data.len()
    }
}

#[derive(Debug)]
pub struct InPool {
    inputs: Vec<Vec<u8>>,
    max_free: usize,
}

impl InPool {
    pub fn new(max_free: usize) -> InPool {
        InPool {
            inputs: Vec::new(),
            max_free,
        }
    }

    pub fn input(&mut self) -> InBuf {
        let data = self.inputs.pop().unwrap_or_else(|| vec![0; BUF_SIZE]);
        InBuf {
            data,
            start: 0,
            end: 0,
        }
    }

    /// Takes back `slot`'s input buffer if it holds nothing.
    pub fn recycle_input(&mut self, slot: &mut Option<InBuf>) {
        if slot.as_ref().is_some_and(InBuf::is_empty)
            && let Some(mut buf) = slot.take()
            && self.inputs.len() < self.max_free
        {
            buf.data.truncate(BUF_SIZE);
            buf.data.shrink_to(BUF_SIZE);
            if buf.data.len() == BUF_SIZE {
                self.inputs.push(buf.data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_compacts_and_grows() {
        let mut pool = InPool::new(4);
        let mut buf = pool.input();
        let spare = buf.spare();
        assert_eq!(spare.len(), BUF_SIZE);
        spare[..10].copy_from_slice(b"0123456789");
        buf.commit(10);
        buf.consume(4);
        assert_eq!(buf.filled(), b"456789");
        buf.commit(BUF_SIZE - 10); // fill up
        assert_eq!(buf.spare().len(), 4, "compaction makes room");
        assert_eq!(&buf.filled()[..6], b"456789");
        buf.grow(BUF_SIZE * 2);
        assert_eq!(buf.capacity(), BUF_SIZE * 2);
        assert_eq!(&buf.filled()[..6], b"456789");
        buf.consume(buf.len());
        assert!(buf.is_empty());
        let mut slot = Some(buf);
        pool.recycle_input(&mut slot);
        assert!(slot.is_none());
        assert_eq!(
            pool.input().capacity(),
            BUF_SIZE,
            "grown buffers come back at normal size"
        );
    }
}
