//! Idle buffers kept for reuse: a restore's decompression and range buffers are taken and given
//! back from range to range, so it touches the same memory throughout instead of
//! faulting in fresh pages. Bounded two ways: at most `max` idle buffers, each of at most
//! `keep` bytes of capacity (a larger one is freed when given back).

use std::sync::Mutex;

pub(crate) struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    max: usize,
}

impl Pool {
    pub(crate) fn new(keep: usize, max: usize) -> Self {
        Pool { idle: Default::default(), keep, max }
    }

    /// An idle buffer (its length as it was left), or a new empty one.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.idle.lock().expect("lock").pop().unwrap_or_default()
    }

    /// Keep `buf` for the next use if it is small enough and room is left; free it otherwise.
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if buf.capacity() <= self.keep {
            let mut idle = self.idle.lock().expect("lock");
            if idle.len() < self.max {
                idle.push(buf);
            }
        }
    }

    /// Idle buffers now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().expect("lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_within_their_bounds() {
        let pool = Pool::new(1 << 20, 4);
        let mut b = pool.take();
        assert!(b.is_empty());
        b.resize(1000, 7);
        let at = b.as_ptr();
        pool.give(b);
        let b = pool.take();
        assert_eq!((b.as_ptr(), b.len()), (at, 1000), "the same buffer, its length as left");
        pool.give(b);
        pool.give(Vec::with_capacity(2 << 20));
        assert_eq!(pool.idle(), 1, "a buffer over the size kept is freed");
        for _ in 0..8 {
            pool.give(Vec::with_capacity(10));
        }
        assert_eq!(pool.idle(), 4, "at most `max` idle");
    }
}
