//! A loop's buffer pools: write buffers (a session holds one only while it has bytes
//! to send) and read buffers (a connection holds one only while it has bytes to
//! handle), so the steady state allocates nothing and an idle connection holds none.
//!
//! Invariants: a pool keeps at most [`POOL_MAX`] buffers, each of a capacity between
//! the default and four times it (a buffer grown by one huge frame is dropped, not
//! kept); buffers come back cleared.

use std::cell::RefCell;

use bytes::BytesMut;

/// Capacity of a pooled read buffer: a steady-state request fits many times over;
/// a larger frame grows the buffer to fit (up to `max_frame_bytes` + header).
pub const READ_BUF_BYTES: usize = 512;
/// Capacity of a pooled write buffer: a few responses or pushes (a `position` push is
/// about 90 bytes); larger batches grow it.
pub const WRITE_BUF_BYTES: usize = 512;
/// Most buffers kept in each pool (16 MiB at most): a rank batch can make every
/// session of a loop push at once, and each needs a buffer until its write is done;
/// sized so such bursts reuse buffers instead of allocating.
pub const POOL_MAX: usize = 32 * 1024;

/// The two pools of one loop.
#[derive(Default)]
pub struct BufPools {
    /// Write buffers not in use.
    write: RefCell<Vec<BytesMut>>,
    /// Read buffers not in use.
    read: RefCell<Vec<BytesMut>>,
}

impl BufPools {
    /// A write buffer (allocates only when the pool is empty).
    pub fn write_get(&self) -> BytesMut {
        self.write
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(WRITE_BUF_BYTES))
    }

    /// Returns a cleared write buffer.
    pub fn write_put(&self, buf: BytesMut) {
        let mut pool = self.write.borrow_mut();
        if buf.capacity() >= WRITE_BUF_BYTES
            && buf.capacity() <= 4 * WRITE_BUF_BYTES
            && pool.len() < POOL_MAX
        {
            pool.push(buf);
        }
    }

    /// A read buffer for bytes that arrived (allocates only when the pool is empty).
    pub fn read_get(&self) -> BytesMut {
        self.read
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(READ_BUF_BYTES))
    }

    /// Returns a read buffer with nothing left to handle.
    pub fn read_put(&self, mut buf: BytesMut) {
        buf.clear();
        let mut pool = self.read.borrow_mut();
        if buf.capacity() <= 4 * WRITE_BUF_BYTES && pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }
}
