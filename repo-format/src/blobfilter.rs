//! `BlobFilter`: an approximate set of blob ids, for loading only the index entries a reader
//! needs (`Selection`).
//!
//! A Bloom filter: `insert` sets a few bits, `may_contain` is true for every id inserted (never
//! a false negative) and for a small share of the others (a false positive only keeps one index
//! entry more than needed). Ids are keyed hashes, uniformly distributed, so the probes are taken
//! from the id's own bits (double hashing over two of its 64-bit words) instead of hashing it
//! again. Ids chosen by a hostile repository can only raise the false positive rate, which keeps
//! more entries: at worst the whole index, what a reader loaded before filters existed.
//!
//! Size: 16 to 32 bits per id (the bit count is rounded up to a power of two), 8 probes, a false
//! positive rate of at most about 0.06 %: at 10 M ids, 20 to 40 MB instead of the 480 MB their
//! index entries take.

use crate::id::BlobId;

/// Probes per id.
const PROBES: usize = 8;

/// Bits per id, at least (before rounding up to a power of two).
const BITS_PER_ID: usize = 16;

/// An approximate set of blob ids (see the module doc).
#[derive(Debug, Clone)]
pub struct BlobFilter {
    words: Vec<u64>,
    /// Bit count − 1 (a power of two minus one).
    mask: u64,
}

impl BlobFilter {
    /// A filter sized for `n` ids.
    pub fn with_capacity(n: usize) -> BlobFilter {
        let bits = n.saturating_mul(BITS_PER_ID).clamp(64, 1 << 40).next_power_of_two();
        BlobFilter { words: vec![0; bits / 64], mask: bits as u64 - 1 }
    }

    /// The bit positions of `id`.
    fn probes(&self, id: &BlobId) -> [u64; PROBES] {
        let b = &id.0.0;
        let h1 = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        // Odd, so that the probes of one id are distinct for any power-of-two size.
        let h2 = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")) | 1;
        std::array::from_fn(|i| h1.wrapping_add((i as u64).wrapping_mul(h2)) & self.mask)
    }

    pub fn insert(&mut self, id: &BlobId) {
        for p in self.probes(id) {
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// True for every id inserted, and for a small share of the others.
    pub fn may_contain(&self, id: &BlobId) -> bool {
        self.probes(id).iter().all(|p| self.words[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Bytes of heap the filter holds.
    pub fn memory_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use proptest::prelude::*;

    fn id(n: u64) -> BlobId {
        BlobId(Id(*blake3::hash(&n.to_le_bytes()).as_bytes()))
    }

    proptest! {
        /// No false negatives, whatever the ids (forged ones included) and the sizing.
        #[test]
        fn every_inserted_id_is_found(ids in proptest::collection::vec(any::<[u8; 32]>(), 0..300), cap in 0usize..500) {
            let mut f = BlobFilter::with_capacity(cap);
            for i in &ids {
                f.insert(&BlobId(Id(*i)));
            }
            for i in &ids {
                prop_assert!(f.may_contain(&BlobId(Id(*i))));
            }
        }
    }

    /// Sized for its ids, the filter lets through few others: at most 0.1 % of 1 M ids not
    /// inserted (the module doc's bound, with margin), and far fewer than all of them.
    #[test]
    fn false_positives_are_rare_at_capacity() {
        let n = 100_000;
        let mut f = BlobFilter::with_capacity(n);
        for i in 0..n as u64 {
            f.insert(&id(i));
        }
        let others = 1_000_000u64;
        let fp = (n as u64..n as u64 + others).filter(|i| f.may_contain(&id(*i))).count();
        assert!(fp * 1000 <= others as usize, "{fp} false positives in {others}");
        assert!(f.memory_bytes() >= n * BITS_PER_ID / 8 && f.memory_bytes() <= n * BITS_PER_ID / 4);
    }

    /// An empty filter contains nothing.
    #[test]
    fn empty_filter_contains_nothing() {
        let f = BlobFilter::with_capacity(0);
        assert!((0..1000).all(|i| !f.may_contain(&id(i))));
    }
}
