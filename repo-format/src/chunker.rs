//! Splitting content into chunks.
//!
//! Files: FastCDC 2020 (normalization level 1) with the repository's size parameters and a gear
//! table XOR-ed with a secret seed derived from the master key, so chunk boundaries cannot be
//! predicted from known content without the key. Disks: fixed-size chunks aligned to the device
//! offset (the agent cuts those; `is_zero` finds the ones that store nothing).

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};

use crate::config::ChunkerParams;

/// A content-defined chunker with fixed parameters and seed.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    params: ChunkerParams,
    seed: u64,
}

impl Chunker {
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        Chunker { params, seed }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Chunk a reader; yields owned chunks of at most `max` bytes. Memory: one `max` buffer.
    pub fn stream<R: Read>(&self, reader: R) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
        let p = self.params;
        StreamCDC::with_level_and_seed(
            reader,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            Normalization::Level1,
            self.seed,
        )
        .map(|r| {
            r.map(|c| c.data).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            })
        })
    }

    /// Chunk lengths of an in-memory buffer.
    pub fn lengths(&self, data: &[u8]) -> Vec<usize> {
        let p = self.params;
        FastCDC::with_level_and_seed(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            Normalization::Level1,
            self.seed,
        )
        .map(|c| c.length)
        .collect()
    }
}

/// True when every byte is zero. Folds 4 KiB blocks (the loop vectorizes) and stops at the
/// first block holding data.
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096).all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeded_data(len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new_keyed(&[0x5a; 32]).update(b"ferry chunker golden").finalize_xof().fill(&mut out);
        out
    }

    fn small() -> ChunkerParams {
        ChunkerParams { min: 2048, avg: 8192, max: 32768 }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn chunks_concatenate_to_the_input(len in 0usize..300_000, seed in any::<u64>()) {
            let data = seeded_data(len);
            let c = Chunker::new(small(), seed);
            let chunks: Vec<Vec<u8>> = c.stream(&data[..]).collect::<Result<_, _>>().unwrap();
            prop_assert!(chunks.iter().all(|c| c.len() <= 32768));
            prop_assert_eq!(chunks.concat(), data.clone());
            let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            prop_assert_eq!(lens, c.lengths(&data));
        }
    }

    /// Boundaries over seeded data are part of the format: dedup across versions depends on them.
    #[test]
    fn golden_boundaries() {
        let data = seeded_data(200_000);
        let lens = Chunker::new(small(), 0x0123_4567_89ab_cdef).lengths(&data);
        assert_eq!(lens, GOLDEN_SEEDED);
        let lens = Chunker::new(small(), 0).lengths(&data);
        assert_eq!(lens, GOLDEN_UNSEEDED);
    }
    const GOLDEN_SEEDED: &[usize] = &[
        8632, 8461, 12290, 11985, 4445, 13405, 9160, 9848, 11737, 8383, 10567, 17927, 9186, 8181, 15974, 12474, 13560,
        9380, 4405,
    ];
    const GOLDEN_UNSEEDED: &[usize] = &[
        4799, 10030, 5141, 6882, 9896, 6752, 9031, 10530, 8885, 19026, 32189, 11207, 10641, 4739, 7200, 11155, 12749,
        15713, 3435,
    ];

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4099]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[1] = 1;
        assert!(!is_zero(&b));
    }
}
