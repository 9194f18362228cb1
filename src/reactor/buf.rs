//! Per-reactor pool of byte buffers.
//!
//! Connections hold a buffer only while bytes are in flight (a partial message read, or output
//! the socket has not taken yet) and give it back when it drains, so an idle client costs no
//! buffer memory and a busy reactor allocates nothing in the steady state.

/// Capacity of pooled buffers. A read chunk is this size too.
pub const BUF_SIZE: usize = 16 * 1024;

#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    max_free: usize,
}

impl BufPool {
    pub fn new(max_free: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            max_free,
        }
    }

    /// An empty buffer with at least `BUF_SIZE` capacity.
    pub fn get(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Returns a buffer. Buffers that grew for a large message are shrunk back so the pool's
    /// memory stays `max_free * BUF_SIZE`.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if self.free.len() >= self.max_free {
            return;
        }
        buf.clear();
        if buf.capacity() > BUF_SIZE * 4 {
            buf.shrink_to(BUF_SIZE);
        }
        if buf.capacity() >= BUF_SIZE {
            self.free.push(buf);
        }
    }

    /// Gives back `slot`'s buffer if it is empty.
    pub fn release_if_empty(&mut self, slot: &mut Option<Vec<u8>>) {
        if slot.as_ref().is_some_and(Vec::is_empty)
            && let Some(buf) = slot.take()
        {
            self.put(buf);
        }
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let mut pool = BufPool::new(2);
        let mut a = pool.get();
        a.extend_from_slice(&[1; 10]);
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr);
        pool.put(b);
        pool.put(Vec::with_capacity(BUF_SIZE));
        pool.put(Vec::with_capacity(BUF_SIZE));
        assert_eq!(pool.free_count(), 2);
        // Grown buffers come back small.
        let mut big = pool.get();
        big.resize(BUF_SIZE * 10, 0);
        pool.put(big);
        assert!(pool.get().capacity() < BUF_SIZE * 4);
    }

    #[test]
    fn release_if_empty_keeps_pending_bytes() {
        let mut pool = BufPool::new(4);
        let mut slot = Some(vec![1u8]);
        pool.release_if_empty(&mut slot);
        assert!(slot.is_some());
        slot.as_mut().unwrap().clear();
        pool.release_if_empty(&mut slot);
        assert!(slot.is_none());
    }
}
