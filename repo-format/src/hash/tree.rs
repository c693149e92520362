//! BLAKE3 (hash and keyed hash, 32-byte output) written out, for the CPUs whose vector units the
//! blake3 crate leaves unused: whole chunks and their parents go four at a time through a `Kernel`,
//! the rest (a last partial chunk, the top parents, the root) through the portable compression.
//!
//! The bytes are BLAKE3's: the tests compare every length class with the blake3 crate, which
//! stays the implementation everywhere else. Only what Ferry needs is here: one 32-byte output,
//! the hash and keyed-hash modes (key derivation always uses the crate: its inputs are tiny).

/// Bytes in a BLAKE3 chunk.
pub const CHUNK_LEN: usize = 1024;
const BLOCK_LEN: usize = 64;
/// Bytes held back (the input's end may be in them) and hashed at once: 16 chunks, a subtree
/// the kernel hashes whole (16 chunks four at a time, then 8, 4 and 2 parents four at a time).
const GROUP_LEN: usize = 16 * CHUNK_LEN;

const IV: [u32; 8] =
    [0x6A09_E667, 0xBB67_AE85, 0x3C6E_F372, 0xA54F_F53A, 0x510E_527F, 0x9B05_688C, 0x1F83_D9AB, 0x5BE0_CD19];
const MSG_PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];

const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const PARENT: u32 = 4;
const ROOT: u32 = 8;
const KEYED_HASH: u32 = 16;

/// Four whole chunks at once: `inputs[i]` is a chunk with counter `counter + i`; `out[32 i..]`
/// gets its chaining value (little-endian). See csrc/blake3_hash4.c.
pub type Hash4 =
    unsafe fn(inputs: &[&[u8; CHUNK_LEN]; 4], key: &[u32; 8], counter: u64, flags: u32, out: &mut [u8; 128]);

/// Four parent nodes at once: `blocks[i]` is a left and a right chaining value (little-endian),
/// `out[32 i..]` gets the parent's; `flags` includes PARENT.
pub type Parent4 = unsafe fn(blocks: &[&[u8; 64]; 4], key: &[u32; 8], flags: u32, out: &mut [u8; 128]);

/// A vector kernel: chunks and parents four at a time.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub hash4: Hash4,
    pub parent4: Parent4,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kernel")
    }
}

fn g(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize, x: u32, y: u32) {
    s[a] = s[a].wrapping_add(s[b]).wrapping_add(x);
    s[d] = (s[d] ^ s[a]).rotate_right(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_right(12);
    s[a] = s[a].wrapping_add(s[b]).wrapping_add(y);
    s[d] = (s[d] ^ s[a]).rotate_right(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_right(7);
}

/// The compression function, portable: the first 8 output words are the chaining value.
fn compress(cv: &[u32; 8], block: &[u32; 16], counter: u64, block_len: u32, flags: u32) -> [u32; 16] {
    let mut s = [
        cv[0],
        cv[1],
        cv[2],
        cv[3],
        cv[4],
        cv[5],
        cv[6],
        cv[7],
        IV[0],
        IV[1],
        IV[2],
        IV[3],
        counter as u32,
        (counter >> 32) as u32,
        block_len,
        flags,
    ];
    let mut m = *block;
    for round in 0..7 {
        g(&mut s, 0, 4, 8, 12, m[0], m[1]);
        g(&mut s, 1, 5, 9, 13, m[2], m[3]);
        g(&mut s, 2, 6, 10, 14, m[4], m[5]);
        g(&mut s, 3, 7, 11, 15, m[6], m[7]);
        g(&mut s, 0, 5, 10, 15, m[8], m[9]);
        g(&mut s, 1, 6, 11, 12, m[10], m[11]);
        g(&mut s, 2, 7, 8, 13, m[12], m[13]);
        g(&mut s, 3, 4, 9, 14, m[14], m[15]);
        if round < 6 {
            m = std::array::from_fn(|i| m[MSG_PERMUTATION[i]]);
        }
    }
    for i in 0..8 {
        s[i] ^= s[i + 8];
        s[i + 8] ^= cv[i];
    }
    s
}

fn words(bytes: &[u8]) -> [u32; 16] {
    let mut block = [0u8; BLOCK_LEN];
    block[..bytes.len()].copy_from_slice(bytes);
    std::array::from_fn(|i| u32::from_le_bytes(block[4 * i..4 * i + 4].try_into().expect("4 bytes")))
}

fn first8(s: [u32; 16]) -> [u32; 8] {
    std::array::from_fn(|i| s[i])
}

/// A node whose compression is still open: the root is compressed with ROOT added, any other
/// node gives its chaining value.
struct Output {
    cv: [u32; 8],
    block: [u32; 16],
    counter: u64,
    block_len: u32,
    flags: u32,
}

impl Output {
    fn chaining_value(&self) -> [u32; 8] {
        first8(compress(&self.cv, &self.block, self.counter, self.block_len, self.flags))
    }

    fn root(&self) -> [u8; 32] {
        let s = compress(&self.cv, &self.block, 0, self.block_len, self.flags | ROOT);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(&s[..8]) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

fn parent(left: &[u32; 8], right: &[u32; 8], key: &[u32; 8], flags: u32) -> Output {
    let mut block = [0u32; 16];
    block[..8].copy_from_slice(left);
    block[8..].copy_from_slice(right);
    Output { cv: *key, block, counter: 0, block_len: BLOCK_LEN as u32, flags: flags | PARENT }
}

/// One chunk (up to 1024 bytes, possibly empty), all blocks but the last compressed.
fn chunk_output(chunk: &[u8], counter: u64, key: &[u32; 8], flags: u32) -> Output {
    debug_assert!(chunk.len() <= CHUNK_LEN);
    let blocks = chunk.len().div_ceil(BLOCK_LEN).max(1);
    let mut cv = *key;
    let mut start = CHUNK_START;
    for b in 0..blocks - 1 {
        let block = words(&chunk[b * BLOCK_LEN..(b + 1) * BLOCK_LEN]);
        cv = first8(compress(&cv, &block, counter, BLOCK_LEN as u32, flags | start));
        start = 0;
    }
    let last = &chunk[(blocks - 1) * BLOCK_LEN..];
    Output { cv, block: words(last), counter, block_len: last.len() as u32, flags: flags | start | CHUNK_END }
}

/// A whole chunk's chaining value, portable (the kernel's tests compare against it).
#[cfg(test)]
pub(crate) fn chunk_cv(chunk: &[u8], counter: u64, key: &[u32; 8], flags: u32) -> [u32; 8] {
    chunk_output(chunk, counter, key, flags).chaining_value()
}

fn cv_words(cv: &[u8]) -> [u32; 8] {
    std::array::from_fn(|i| u32::from_le_bytes(cv[4 * i..4 * i + 4].try_into().expect("4 bytes")))
}

fn key_words(key: &[u8; 32]) -> [u32; 8] {
    std::array::from_fn(|i| u32::from_le_bytes(key[4 * i..4 * i + 4].try_into().expect("4 bytes")))
}

/// Incremental BLAKE3 with a 32-byte output. Input is held back until it is known not to be the
/// last chunk (the root is compressed differently), so up to 16 KiB waits in `buf`.
pub struct Hasher {
    key: [u32; 8],
    flags: u32,
    kernel: Option<Kernel>,
    /// Chaining values of complete subtrees, left to right (at most 54 for 2^64 bytes).
    stack: Vec<[u32; 8]>,
    /// Chunks already folded into `stack`.
    chunks: u64,
    buf: Vec<u8>,
}

impl Hasher {
    /// Unkeyed BLAKE3; `kernel`, if any, takes whole chunks and parents four at a time.
    pub fn new(kernel: Option<Kernel>) -> Hasher {
        Hasher::with(IV, 0, kernel)
    }

    /// Keyed BLAKE3.
    pub fn new_keyed(key: &[u8; 32], kernel: Option<Kernel>) -> Hasher {
        Hasher::with(key_words(key), KEYED_HASH, kernel)
    }

    fn with(key: [u32; 8], flags: u32, kernel: Option<Kernel>) -> Hasher {
        Hasher { key, flags, kernel, stack: Vec::with_capacity(8), chunks: 0, buf: Vec::with_capacity(GROUP_LEN) }
    }

    /// Fold the chaining value of a complete subtree of 2^`log` non-final chunks into the
    /// stack, merging complete subtrees (`chunks` is a multiple of 2^`log`).
    fn push(&mut self, mut cv: [u32; 8], log: u32) {
        debug_assert_eq!(self.chunks % (1 << log), 0);
        self.chunks += 1 << log;
        let mut total = self.chunks >> log;
        while total & 1 == 0 {
            let left = self.stack.pop().expect("a complete left subtree");
            cv = parent(&left, &cv, &self.key, self.flags).chaining_value();
            total >>= 1;
        }
        self.stack.push(cv);
    }

    /// Hash `group.len() / 1024` whole chunks, none of them the last of the input.
    #[allow(unsafe_code)]
    fn chunks_of(&mut self, group: &[u8]) {
        debug_assert_eq!(group.len() % CHUNK_LEN, 0);
        let mut rest = group;
        if let Some(k) = self.kernel {
            // Safety (every call below): the kernel was chosen for this CPU (kernel.rs); it reads
            // exactly the four inputs given and writes the 128 bytes given.
            let (key, pflags) = (self.key, self.flags | PARENT);
            /// Blocks `first..first + 4` of 64 bytes (two chaining values each) of `cvs`.
            fn pairs(cvs: &[u8], first: usize) -> [&[u8; 64]; 4] {
                std::array::from_fn(|i| cvs[(first + i) * 64..(first + i + 1) * 64].try_into().expect("two cvs"))
            }
            while rest.len() >= GROUP_LEN && self.chunks % 16 == 0 {
                // 16 chunks -> 16, 8, 4 and 2 chaining values four at a time; the last parent here.
                let mut leaves = [[0u8; 128]; 4];
                for (q, out) in leaves.iter_mut().enumerate() {
                    let c: [&[u8; CHUNK_LEN]; 4] = std::array::from_fn(|i| {
                        let at = (4 * q + i) * CHUNK_LEN;
                        rest[at..at + CHUNK_LEN].try_into().expect("a chunk")
                    });
                    unsafe { (k.hash4)(&c, &key, self.chunks + 4 * q as u64, self.flags, out) };
                }
                let mut eight = [[0u8; 128]; 2];
                for (h, out) in eight.iter_mut().enumerate() {
                    unsafe { (k.parent4)(&pairs(leaves.as_flattened(), 4 * h), &key, pflags, out) };
                }
                let mut four = [0u8; 128];
                unsafe { (k.parent4)(&pairs(eight.as_flattened(), 0), &key, pflags, &mut four) };
                // Two parents: lanes 2 and 3 repeat lanes 0 and 1.
                let mut two = [0u8; 256];
                two[..128].copy_from_slice(&four);
                two[128..].copy_from_slice(&four);
                let mut top = [0u8; 128];
                unsafe { (k.parent4)(&pairs(&two, 0), &key, pflags, &mut top) };
                let cv = parent(&cv_words(&top[..32]), &cv_words(&top[32..64]), &key, self.flags).chaining_value();
                self.push(cv, 4);
                rest = &rest[GROUP_LEN..];
            }
            while rest.len() >= 4 * CHUNK_LEN {
                let c: [&[u8; CHUNK_LEN]; 4] =
                    std::array::from_fn(|i| rest[i * CHUNK_LEN..(i + 1) * CHUNK_LEN].try_into().expect("a chunk"));
                let mut out = [0u8; 128];
                unsafe { (k.hash4)(&c, &key, self.chunks, self.flags, &mut out) };
                for cv in out.chunks_exact(32) {
                    self.push(cv_words(cv), 0);
                }
                rest = &rest[4 * CHUNK_LEN..];
            }
        }
        for chunk in rest.chunks_exact(CHUNK_LEN) {
            let cv = chunk_output(chunk, self.chunks, &self.key, self.flags).chaining_value();
            self.push(cv, 0);
        }
    }

    pub fn update(&mut self, mut input: &[u8]) -> &mut Self {
        if !self.buf.is_empty() {
            let take = (GROUP_LEN - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if input.is_empty() {
                return self; // the buffer may hold the last chunk
            }
            let buf = std::mem::take(&mut self.buf);
            self.chunks_of(&buf);
            self.buf = buf;
            self.buf.clear();
        }
        // Whole groups straight from the input, keeping at least one byte back.
        let direct = (input.len().saturating_sub(1) / GROUP_LEN) * GROUP_LEN;
        self.chunks_of(&input[..direct]);
        self.buf.extend_from_slice(&input[direct..]);
        self
    }

    pub fn finalize(&self) -> [u8; 32] {
        // buf: the input's last 0..=16384 bytes; every chunk in it but the last is whole.
        let mut me = Hasher {
            key: self.key,
            flags: self.flags,
            kernel: self.kernel,
            stack: self.stack.clone(),
            chunks: self.chunks,
            buf: Vec::new(),
        };
        let last_start = if self.buf.is_empty() { 0 } else { (self.buf.len() - 1) / CHUNK_LEN * CHUNK_LEN };
        me.chunks_of(&self.buf[..last_start]);
        let mut out = chunk_output(&self.buf[last_start..], me.chunks, &me.key, me.flags);
        while let Some(left) = me.stack.pop() {
            out = parent(&left, &out.chaining_value(), &me.key, me.flags);
        }
        out.root()
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("chunks", &self.chunks).field("kernel", &self.kernel.is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths() -> Vec<usize> {
        let mut v = vec![0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 3072, 4095, 4096, 4097, 5000, 8192, 8193];
        v.extend([16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 31 * 1024 + 7, 100_000, 1 << 20, (1 << 20) + 1]);
        v
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn portable_matches_the_crate_for_every_length_class() {
        let key = [0x42u8; 32];
        for n in lengths() {
            let d = data(n);
            assert_eq!(Hasher::new(None).update(&d).finalize(), *blake3::hash(&d).as_bytes(), "hash, {n} bytes");
            assert_eq!(
                Hasher::new_keyed(&key, None).update(&d).finalize(),
                *blake3::keyed_hash(&key, &d).as_bytes(),
                "keyed, {n} bytes"
            );
        }
    }

    proptest::proptest! {
        /// Any input, fed in any pieces, with and without the 4-way kernel, keyed or not: the
        /// crate's bytes.
        #[test]
        fn any_input_in_any_pieces_gives_the_crate_s_bytes(
            len in 0usize..40_000,
            seed in proptest::prelude::any::<u8>(),
            cuts in proptest::collection::vec(0usize..40_000, 0..6),
            keyed in proptest::prelude::any::<bool>(),
        ) {
            let d: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed)).collect();
            let key = [seed; 32];
            let want = if keyed { *blake3::keyed_hash(&key, &d).as_bytes() } else { *blake3::hash(&d).as_bytes() };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(len)).collect();
            cuts.sort_unstable();
            for kernel in [None, crate::hash::kernel::for_tests()] {
                let mut h = if keyed { Hasher::new_keyed(&key, kernel) } else { Hasher::new(kernel) };
                let mut at = 0;
                for &c in cuts.iter().chain([len].iter()) {
                    h.update(&d[at..c]);
                    at = c;
                }
                proptest::prop_assert_eq!(h.finalize(), want, "kernel {}", kernel.is_some());
            }
        }
    }

    #[test]
    fn updates_in_pieces_give_the_same_hash() {
        let d = data(70_000);
        let want = *blake3::hash(&d).as_bytes();
        for piece in [1, 7, 64, 1000, 1024, 4095, 4096, 4097, 9000] {
            let mut h = Hasher::new(None);
            for p in d.chunks(piece) {
                h.update(p);
            }
            assert_eq!(h.finalize(), want, "pieces of {piece}");
        }
    }
}
