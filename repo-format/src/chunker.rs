//! Splitting content into chunks.
//!
//! Files: FastCDC 2020 (normalization level 1) with the repository's size parameters and a gear
//! table XOR-ed with a secret seed derived from the master key, so chunk boundaries cannot be
//! predicted from known content without the key. Disks: fixed-size chunks aligned to the device
//! offset (the agent cuts those; `is_zero` finds the ones that store nothing).

use std::io::Read;
use std::sync::Arc;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};

use crate::blocks::{BlockPool, SharedChunk};
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

    /// The secret seed (it also keys where big directories are cut into parts).
    pub fn seed(&self) -> u64 {
        self.seed
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

    /// FastCDC over an in-memory buffer with this chunker's parameters and seed.
    fn cdc<'a>(&self, data: &'a [u8]) -> FastCDC<'a> {
        let p = self.params;
        FastCDC::with_level_and_seed(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            Normalization::Level1,
            self.seed,
        )
    }

    /// A streaming chunker that keeps its buffer across files (see `ChunkReader`).
    pub fn reader(&self) -> ChunkReader {
        ChunkReader { chunker: *self, blocks: None }
    }

    /// Chunk lengths of an in-memory buffer.
    pub fn lengths(&self, data: &[u8]) -> Vec<usize> {
        self.cdc(data).map(|c| c.length).collect()
    }
}

/// Chunks a stream with one buffer reused for every stream it is given. The cut points are
/// exactly those of `Chunker::stream` (the same FastCDC cut on the same bytes: each cut sees
/// at least `max` bytes, or all that is left), but without what `StreamCDC` costs per file and
/// per chunk: a new zeroed `max`-byte buffer per stream, a new `Vec` per chunk, and moving the
/// rest of the buffer down after every chunk (about three times the data for 1 MiB chunks of a
/// 4 MiB maximum). Here the buffer (a recycled block) holds `2 × max` bytes and the unconsumed
/// tail (less than `max`) moves down only when less than `max` is left after it: at most the
/// data's own size is moved, once. Chunks are handed out as slices of the buffer (`chunk`), or,
/// for a big stream, as parts of shared blocks that need no copy (`chunk_shared`).
#[derive(Debug)]
pub struct ChunkReader {
    chunker: Chunker,
    /// Idle blocks (`chunk`'s buffer is one of them), kept from stream to stream.
    blocks: Option<Arc<BlockPool>>,
}

impl ChunkReader {
    /// Read `reader` to its end, calling `emit` with each chunk in order. The buffer is one of
    /// `chunk_shared`'s blocks, taken from the reader's pool and given back at the end, so a
    /// reader holds no buffer of its own besides them.
    pub fn chunk<R: Read>(
        &mut self,
        mut reader: R,
        mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let max = self.chunker.params.max as usize;
        self.with_block(2 * max, |chunker, buf| {
            let (mut start, mut end, mut eof) = (0usize, 0usize, false);
            loop {
                if !eof && end - start < max {
                    eof = refill(&mut reader, buf, &mut start, &mut end, max)?;
                }
                if start == end {
                    return Ok(());
                }
                let window = &buf[start..end];
                let (_, cut) = chunker.cdc(window).cut(0, window.len());
                emit(&window[..cut])?;
                start += cut;
            }
        })
    }

    /// Run `f` on a block of `len` bytes from this reader's pool, given back to the pool
    /// whatever `f` returns.
    fn with_block<T>(&mut self, len: usize, f: impl FnOnce(&Chunker, &mut Vec<u8>) -> T) -> T {
        let pool = self.pool();
        let mut buf = pool.take(len);
        let r = f(&self.chunker, &mut buf);
        pool.give(buf);
        r
    }

    /// The pool of this reader's blocks (made on first use).
    fn pool(&mut self) -> Arc<BlockPool> {
        Arc::clone(self.blocks.get_or_insert_with(|| BlockPool::new(IDLE_BLOCKS)))
    }
}

impl Chunker {
    /// The lengths of the chunks the serial chunker cuts from `data`'s first byte, found by up
    /// to `threads` threads. With `eof` false, `data` is a window of a longer stream: a last
    /// chunk that more data could still lengthen (it ends at the window's end and is shorter
    /// than `max`) is left out, and the caller starts the next window where the returned
    /// chunks end. Identical to `lengths` (and to `stream`) by construction:
    ///
    /// A cut depends only on where its chunk starts and on the bytes after it. The window is
    /// split into segments; thread `t` chunks its segment as if a chunk started at the
    /// segment's first byte (continuing past the segment's end until a chunk crosses it). The
    /// true chunks of the previous segment end somewhere in this one; from there the serial
    /// cut is taken, chunk by chunk, until it lands on a cut of thread `t`'s chain; from that
    /// point both chains are the same chain, and thread `t`'s cuts are taken as they are.
    /// Content-defined cuts re-synchronise within a chunk or two, so the serial work is a few
    /// chunks per segment. Segments are at least 8 average chunks long (shorter windows, or one
    /// thread, are chunked serially).
    pub fn lengths_parallel(&self, data: &[u8], eof: bool, threads: usize) -> Vec<usize> {
        let p = self.params;
        let (avg, max) = (p.avg as usize, p.max as usize);
        let len = data.len();
        let segments = threads.min(len / (8 * avg).max(1)).max(1);
        let cdc = self.cdc(data);
        // Ends of the chunks of a chain starting at `from`, until a chunk ends at or past `until`.
        let chain = |cdc: &FastCDC<'_>, from: usize, until: usize| {
            let (mut ends, mut at) = (Vec::new(), from);
            while at < until && at < len {
                at = cdc.cut(at, len - at).1;
                ends.push(at);
            }
            ends
        };
        let bounds: Vec<usize> = (0..=segments).map(|t| len * t / segments).collect();
        let chains: Vec<Vec<usize>> = if segments == 1 {
            vec![chain(&cdc, 0, len)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (1..segments)
                    .map(|t| {
                        let (from, until, chain) = (bounds[t], bounds[t + 1], &chain);
                        s.spawn(move || chain(&self.cdc(data), from, until))
                    })
                    .collect();
                let mut chains = vec![chain(&cdc, 0, bounds[1])];
                chains.extend(handles.into_iter().map(|h| h.join().expect("chunker thread")));
                chains
            })
        };
        let mut ends = chains[0].clone();
        for (t, c) in chains.iter().enumerate().skip(1) {
            let last = c.last().copied().unwrap_or(bounds[t]);
            let mut at = ends.last().copied().unwrap_or(0);
            while at < last {
                if at == bounds[t] {
                    ends.extend_from_slice(c);
                    break;
                }
                if let Ok(i) = c.binary_search(&at) {
                    ends.extend_from_slice(&c[i + 1..]);
                    break;
                }
                at = cdc.cut(at, len - at).1;
                ends.push(at);
            }
        }
        // The chains stop once a chunk crosses their segment; the last segment's reaches `len`,
        // unless the serial steps went past it: finish serially either way.
        let mut at = ends.last().copied().unwrap_or(0);
        while at < len {
            at = cdc.cut(at, len - at).1;
            ends.push(at);
        }
        let mut lengths: Vec<usize> = Vec::with_capacity(ends.len());
        let mut start = 0;
        for end in ends {
            lengths.push(end - start);
            start = end;
        }
        if !eof && lengths.last().is_some_and(|&l| l < max) {
            lengths.pop();
        }
        lengths
    }
}

impl ChunkReader {
    /// As `chunk`, with the cuts of each window of the stream found by up to `threads` threads
    /// (`Chunker::lengths_parallel`): the same chunks, for a big file that one thread would
    /// chunk slower than the blob workers store. The buffer (a block from the reader's pool)
    /// holds a window of `max(min(threads, 4) × 8 × avg, 2 × max)` bytes plus `max` (20 MiB
    /// with 2 threads and the default 1 MiB average, 36 MiB with 4 or more). `chunk_shared`
    /// with `threads` copies nothing but holds more such blocks.
    pub fn chunk_parallel<R: Read>(
        &mut self,
        mut reader: R,
        threads: usize,
        mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let len = self.block_len(threads);
        self.with_block(len, |chunker, buf| {
            let (mut start, mut end, mut eof) = (0usize, 0usize, false);
            loop {
                if !eof {
                    eof = refill(&mut reader, buf, &mut start, &mut end, usize::MAX)?;
                }
                if start == end {
                    return Ok(());
                }
                for len in chunker.lengths_parallel(&buf[start..end], eof, threads) {
                    emit(&buf[start..start + len])?;
                    start += len;
                }
            }
        })
    }

    /// The length of `chunk_shared`'s (and `chunk_parallel`'s) blocks for `threads` threads.
    fn block_len(&self, threads: usize) -> usize {
        let p = self.chunker.params;
        let max = p.max as usize;
        if threads > 1 { (threads.min(4) * 8 * p.avg as usize).max(2 * max) + max } else { 2 * max }
    }
}

impl ChunkReader {
    /// As `chunk`, the same chunks, but each handed out as a part of a shared block instead of
    /// a slice to copy; with `threads` above 1, each block's cuts are found by that many threads
    /// (`Chunker::lengths_parallel`). For a big stream: copying every chunk out of the reader's
    /// buffer and moving its tail down cost about 7 % of a big file's backup CPU.
    ///
    /// A block holds `2 × max` bytes (with several threads, the parallel window plus `max`).
    /// Only its end is copied into the next block: the bytes after its last final cut, or,
    /// serially, what is left once less than `2 × avg` remains (not hashed: it would rarely
    /// hold a final cut, and hashing costs about five times what copying does per byte).
    /// Simulated over 1 GiB of the big-file bench's data (half random, half text), that copies
    /// 20 % of the bytes and hashes 2 % twice; cutting down to `min` instead, 11 % and 8 %.
    ///
    /// Memory: the block being cut, every block a live chunk still holds, and up to
    /// `IDLE_BLOCKS` idle ones kept by this reader. For a stream much shorter than a block (a
    /// chunk would hold a whole block for a few bytes), use `chunk`.
    pub fn chunk_shared<R: Read>(
        &mut self,
        mut reader: R,
        threads: usize,
        mut emit: impl FnMut(SharedChunk) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let p = self.chunker.params;
        let max = p.max as usize;
        let len = self.block_len(threads);
        let pool = self.pool();
        // The previous block and where its unconsumed partial chunk starts and ends.
        let mut tail: Option<(Arc<Vec<u8>>, usize, usize)> = None;
        loop {
            let mut block = pool.take(len);
            let mut end = 0;
            if let Some((prev, from, to)) = tail.take() {
                end = to - from;
                block[..end].copy_from_slice(&prev[from..to]);
                pool.release(prev);
            }
            let (end, eof) = fill(&mut reader, &mut block, end)?;
            let block = Arc::new(block);
            // Cuts that more data could not move: with `eof`, all of them.
            let mut start = 0;
            if threads > 1 {
                for n in self.chunker.lengths_parallel(&block[..end], eof, threads) {
                    emit(SharedChunk::new(&block, start..start + n, &pool))?;
                    start += n;
                }
            } else {
                let cdc = self.chunker.cdc(&block[..end]);
                let scan_from = (2 * p.avg as usize).clamp(p.min as usize, max);
                while start < end {
                    let left = end - start;
                    // Less than `max` left, a cut may not be final: past `scan_from` bytes it
                    // usually is, below that the scan is usually wasted (gear hashing costs
                    // about five times what copying costs per byte).
                    if !eof && left < scan_from {
                        break;
                    }
                    let cut = cdc.cut(start, left).1;
                    if !eof && cut == end && left < max {
                        break;
                    }
                    emit(SharedChunk::new(&block, start..cut, &pool))?;
                    start = cut;
                }
            }
            if eof {
                pool.release(block);
                return Ok(());
            }
            tail = Some((block, start, end));
        }
    }
}

/// Idle blocks a reader keeps (`chunk` takes one too): the blob workers hand blocks back while the
/// reader cuts the next one, so a few idle ones mean no fresh memory per block.
const IDLE_BLOCKS: usize = 2;

/// Refill `buf`, whose unconsumed bytes are `start..end`: first move them to the front when
/// less than `room` bytes of `buf` follow `start` (`usize::MAX`: always), then read until
/// `buf` is full or the stream ends. Returns whether it ended.
fn refill<R: Read>(
    reader: &mut R,
    buf: &mut [u8],
    start: &mut usize,
    end: &mut usize,
    room: usize,
) -> std::io::Result<bool> {
    if buf.len() - *start < room {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
    let eof;
    (*end, eof) = fill(reader, buf, *end)?;
    Ok(eof)
}

/// Read into `buf[end..]` until it is full or the stream ends: the new end, and whether the
/// stream ended.
fn fill<R: Read>(reader: &mut R, buf: &mut [u8], mut end: usize) -> std::io::Result<(usize, bool)> {
    while end < buf.len() {
        match reader.read(&mut buf[end..]) {
            Ok(0) => return Ok((end, true)),
            Ok(n) => end += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((end, false))
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

        /// The reusing reader cuts exactly where `stream` does, whatever sizes the reads return,
        /// and one reader serves several streams.
        #[test]
        fn reader_cuts_like_stream(len in 0usize..400_000, seed in any::<u64>(), step in 1usize..70_000) {
            let data = seeded_data(len);
            let c = Chunker::new(small(), seed);
            let expect: Vec<Vec<u8>> = c.stream(&data[..]).collect::<Result<_, _>>().unwrap();
            let mut r = c.reader();
            for _ in 0..2 {
                let mut got = Vec::new();
                r.chunk(ShortReads(&data[..], step), |ch| { got.push(ch.to_vec()); Ok(()) }).unwrap();
                prop_assert_eq!(&got, &expect);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Parallel cuts are the serial cuts, for any number of threads, window and read size.
        #[test]
        fn parallel_cuts_are_the_serial_cuts(
            len in 0usize..600_000,
            seed in any::<u64>(),
            threads in 1usize..5,
            step in 1usize..90_000,
        ) {
            let data = seeded_data(len);
            let c = Chunker::new(small(), seed);
            let serial = c.lengths(&data);
            prop_assert_eq!(&c.lengths_parallel(&data, true, threads), &serial);
            let mut got = Vec::new();
            let mut r = c.reader();
            r.chunk_parallel(ShortReads(&data[..], step), threads, |ch| { got.push(ch.len()); Ok(()) }).unwrap();
            prop_assert_eq!(&got, &serial);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Shared chunks are the chunks `stream` cuts, for any number of threads and read size,
        /// with one reader serving several streams; all of them are held until the end, so a
        /// block filled again while a chunk still held it would show here.
        #[test]
        fn shared_chunks_are_the_streamed_chunks(
            len in 0usize..400_000,
            seed in any::<u64>(),
            threads in 1usize..4,
            step in 1usize..90_000,
        ) {
            let c = Chunker::new(small(), seed);
            let mut r = c.reader();
            let mut held = Vec::new();
            let mut expect = Vec::new();
            for stream in 0..3 {
                let data = seeded_data(len + stream * 7919);
                expect.extend(c.stream(&data[..]).collect::<Result<Vec<_>, _>>().unwrap());
                r.chunk_shared(ShortReads(&data[..], step), threads, |ch| { held.push(ch); Ok(()) }).unwrap();
            }
            let got: Vec<&[u8]> = held.iter().map(|c| &**c).collect();
            prop_assert_eq!(got, expect.iter().map(|c| &c[..]).collect::<Vec<_>>());
        }
    }

    /// A chunk that runs without cut candidates (zeros) across a block's end, begun at every
    /// distance from that end, is cut where `stream` cuts it: not at the block's end.
    #[test]
    fn shared_chunks_without_candidates_cross_block_ends() {
        let c = Chunker::new(small(), 3);
        let mut r = c.reader();
        for lead in (0..70_000).step_by(1_000) {
            let mut data = seeded_data(lead);
            data.resize(lead + 100_000, 0);
            data.extend_from_slice(&seeded_data(50_000));
            let expect: Vec<Vec<u8>> = c.stream(&data[..]).collect::<Result<_, _>>().unwrap();
            let mut got = Vec::new();
            r.chunk_shared(&data[..], 1, |ch| {
                got.push(ch.to_vec());
                Ok(())
            })
            .unwrap();
            assert!(got == expect, "{lead} bytes before the zeros");
        }
    }

    /// Dropped as soon as it is cut, each chunk's block returns to the reader's pool: a long
    /// stream cycles through two blocks (the one cut and the next, taking its partial chunk).
    #[test]
    fn shared_blocks_are_recycled_when_their_chunks_are_dropped() {
        let c = Chunker::new(small(), 7);
        let data = seeded_data(2_000_000);
        let mut r = c.reader();
        let mut got = Vec::new();
        r.chunk_shared(&data[..], 1, |ch| {
            got.extend_from_slice(&ch);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, data);
        // 2 MB in 64 KiB blocks is 30-odd blocks filled.
        assert_eq!(r.blocks.as_ref().unwrap().fresh(), 2);
    }

    /// Segments that start inside long runs of identical bytes (no cut candidates, chunks of
    /// `max`) and right after them still re-synchronise to the serial cuts.
    #[test]
    fn parallel_cuts_through_runs_without_candidates() {
        let mut data = seeded_data(300_000);
        data[40_000..140_000].fill(7);
        data[200_000..232_768].fill(0);
        for seed in [0, 1, 0x0123_4567_89ab_cdef] {
            let c = Chunker::new(small(), seed);
            for threads in 1..6 {
                assert_eq!(c.lengths_parallel(&data, true, threads), c.lengths(&data), "{threads} threads");
            }
        }
    }

    /// A reader returning at most `.1` bytes per call.
    struct ShortReads<'a>(&'a [u8], usize);
    impl Read for ShortReads<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
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
