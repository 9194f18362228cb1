//! Output waiting for a connection's socket, in buffers taken from a per-engine pool.
//!
//! A connection holds an output buffer only while bytes are in flight and gives it back once
//! the driver has written them all, so an idle client costs no buffer memory and a busy
//! engine allocates nothing in the steady state. Sessions append to the buffer directly (one
//! coalesced write per connection per loop turn); the driver writes from `pending()` and
//! reports what the socket took.

/// Capacity of pooled buffers.
pub const BUF_SIZE: usize = 16 * 1024;

/// Output not yet taken by the socket.
#[derive(Debug, Default)]
pub struct OutBuf {
    pub data: Vec<u8>,
    pos: usize,
}

impl OutBuf {
    /// Bytes still to write.
    pub fn pending(&self) -> &[u8] {
        self.data.get(self.pos..).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// `n` bytes were written.
    pub fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.data.len() {
            self.data.clear();
            self.pos = 0;
        } else if self.pos > BUF_SIZE && self.pos * 2 > self.data.len() {
            // Keep appends cheap when a slow reader leaves a tail behind.
            self.data.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// Free output buffers.
#[derive(Debug)]
pub struct OutPool {
    free: Vec<Vec<u8>>,
    max_free: usize,
}

impl OutPool {
    pub fn new(max_free: usize) -> OutPool {
        OutPool {
            free: Vec::new(),
            max_free,
        }
    }

    pub fn take(&mut self) -> OutBuf {
        let data = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE));
        OutBuf { data, pos: 0 }
    }

    /// The buffer of `slot`, taken from the pool if it has none.
    pub fn get<'a>(&mut self, slot: &'a mut Option<OutBuf>) -> &'a mut Vec<u8> {
        &mut slot.get_or_insert_with(|| self.take()).data
    }

    /// Takes back `slot`'s buffer if everything was written.
    pub fn recycle(&mut self, slot: &mut Option<OutBuf>) {
        if slot.as_ref().is_some_and(OutBuf::is_empty)
            && let Some(mut buf) = slot.take()
            && self.free.len() < self.max_free
        {
            buf.data.clear();
            if buf.data.capacity() > BUF_SIZE * 4 {
                buf.data.shrink_to(BUF_SIZE);
            }
            self.free.push(buf.data);
        }
    }

    #[cfg(test)]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_recycled_only_when_written() {
        let mut pool = OutPool::new(4);
        let mut slot = None;
        pool.get(&mut slot).extend_from_slice(b"hello");
        pool.recycle(&mut slot);
        assert!(slot.is_some());
        let out = slot.as_mut().unwrap();
        out.advance(2);
        assert_eq!(out.pending(), b"llo");
        out.advance(3);
        assert!(out.is_empty());
        pool.recycle(&mut slot);
        assert!(slot.is_none());
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn slow_reader_tail_is_compacted() {
        let mut pool = OutPool::new(1);
        let mut out = pool.take();
        out.data.resize(BUF_SIZE * 3, 1);
        out.advance(BUF_SIZE * 2);
        assert_eq!(out.len(), BUF_SIZE);
        assert_eq!(out.data.len(), BUF_SIZE, "written prefix dropped");
    }
}
