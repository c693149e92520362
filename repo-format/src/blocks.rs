//! Chunks handed out as parts of shared read blocks, not copied out of the chunker's buffer.
//!
//! A big stream is read into blocks of a few `max` chunks; each chunk cut from a block is a
//! `SharedChunk` holding the block (reference-counted) and its range in it. Only the bytes after
//! the block's last final cut (less than `max`, a partial chunk) are copied, into the next
//! block. A block is filled once, before any chunk of it is handed out, and is never written
//! while shared. When its last chunk is dropped (by whichever thread), the block goes back to its
//! pool and is filled again: a fresh block would be fresh memory, whose page faults and zeroing
//! cost more than the copy saved. This module never reads nor cuts: `ChunkReader::chunk_shared`
//! does.

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Idle blocks of one reader, at most `keep` of them.
#[derive(Debug)]
pub(crate) struct BlockPool {
    idle: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    /// Blocks allocated (not recycled) so far.
    fresh: AtomicUsize,
}

impl BlockPool {
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        Arc::new(BlockPool { idle: Mutex::new(Vec::new()), keep, fresh: AtomicUsize::new(0) })
    }

    /// A block of exactly `len` bytes: an idle one of that length (its old bytes kept, not
    /// zeroed: it is filled before it is read), else a new zeroed one.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let idle = self.idle.lock().expect("block pool").pop();
        match idle {
            Some(b) if b.len() == len => b,
            _ => {
                self.fresh.fetch_add(1, Relaxed);
                vec![0; len]
            }
        }
    }

    /// How many blocks `take` allocated rather than recycled.
    #[cfg(test)]
    pub(crate) fn fresh(&self) -> usize {
        self.fresh.load(Relaxed)
    }

    /// Keep `block` for `take`, unless `keep` blocks are already idle.
    pub(crate) fn give(&self, block: Vec<u8>) {
        let mut idle = self.idle.lock().expect("block pool");
        if idle.len() < self.keep {
            idle.push(block);
        }
    }

    /// Give back a shared block if this was its last holder.
    pub(crate) fn release(&self, block: Arc<Vec<u8>>) {
        if let Some(b) = Arc::into_inner(block) {
            self.give(b);
        }
    }
}

/// One chunk: a range of a shared block. Derefs to the chunk's bytes; dropping the last chunk
/// of a block (and the reader having moved on) returns the block to its reader's pool.
#[derive(Debug)]
pub struct SharedChunk {
    block: Option<Arc<Vec<u8>>>,
    range: Range<usize>,
    pool: Arc<BlockPool>,
}

impl SharedChunk {
    pub(crate) fn new(block: &Arc<Vec<u8>>, range: Range<usize>, pool: &Arc<BlockPool>) -> Self {
        debug_assert!(range.end <= block.len());
        SharedChunk { block: Some(Arc::clone(block)), range, pool: Arc::clone(pool) }
    }
}

impl Deref for SharedChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let block = self.block.as_ref().expect("a chunk holds its block until dropped");
        &block[self.range.clone()]
    }
}

impl Drop for SharedChunk {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.release(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block returns to the pool only when its last holder lets go, and comes back with the
    /// bytes it had (not zeroed again).
    #[test]
    fn a_block_is_recycled_after_its_last_chunk() {
        let pool = BlockPool::new(2);
        let mut b = pool.take(16);
        b[..4].copy_from_slice(b"abcd");
        let block = Arc::new(b);
        let (one, two) = (SharedChunk::new(&block, 0..2, &pool), SharedChunk::new(&block, 2..4, &pool));
        pool.release(block);
        assert_eq!((&*one, &*two), (&b"ab"[..], &b"cd"[..]));
        drop(one);
        assert!(pool.idle.lock().unwrap().is_empty(), "a chunk still holds the block");
        drop(two);
        let again = pool.take(16);
        assert_eq!(&again[..4], b"abcd", "the block itself came back");
        assert_eq!(pool.take(16), vec![0; 16], "with none idle, a new block is zeroed");
        assert_eq!(pool.fresh(), 2);
    }

    /// At most `keep` idle blocks are kept, and a block of another length is not handed out.
    #[test]
    fn the_pool_keeps_at_most_keep_blocks_of_the_asked_length() {
        let pool = BlockPool::new(1);
        pool.give(vec![1; 8]);
        pool.give(vec![2; 8]);
        assert_eq!(pool.idle.lock().unwrap().len(), 1);
        assert_eq!(pool.take(4), vec![0; 4]);
        assert!(pool.idle.lock().unwrap().is_empty());
    }
}
