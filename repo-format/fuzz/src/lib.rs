//! Shared by the fuzz targets: the fixed keys they use, and a counting allocator that bounds what
//! a decoder may allocate for the bytes it is given.
//!
//! libFuzzer's `-malloc_limit_mb` only catches single huge allocations; a decoder that turns a
//! few KiB of input into a hundred times as much memory stays far below it at fuzzing input
//! sizes, yet scales the same way on a 64 MiB object. So every target measures the peak of live
//! heap bytes during the decode and fails when it exceeds a stated multiple of the input length.
//! This crate must never hide a finding: a bound is raised only with a comment saying why.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use repo_format::{MasterKey, PackEntry};

/// The password of every key file the targets open.
pub const PASSWORD: &[u8] = b"fuzz password";

/// The master key of every sealed object the targets open (the golden test key of FORMAT.md).
pub fn master() -> MasterKey {
    MasterKey::from_bytes([0x11; 32], [0x22; 32])
}

/// The pack salt of every pack the targets build.
pub const SALT: [u8; 32] = [0x33; 32];

/// Fixed allocations any decode may make whatever its input (error messages, small vectors).
pub const SLACK: usize = 16 << 10;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(live, Relaxed);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f` and return its result with the peak of heap bytes it held live at once (above what
/// was live when it started; a result it returns counts, since it was live at the end).
pub fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(base))
}

/// Run `f` (a decode of `input_len` bytes) and panic if it held more than `ratio × input_len +
/// SLACK` heap bytes at once.
pub fn bounded<T>(what: &str, input_len: usize, ratio: usize, f: impl FnOnce() -> T) -> T {
    let (r, peak) = peak_alloc(f);
    let limit = input_len.saturating_mul(ratio).saturating_add(SLACK);
    assert!(
        peak <= limit,
        "{what}: allocated {peak} bytes for {input_len} bytes of input (limit {ratio} x input + {SLACK})"
    );
    r
}

/// The little-endian u32 at `at`, if `b` is long enough.
pub fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// What FORMAT.md 5.5 requires of a parsed pack header: blob 0 at offset 0, each next blob where
/// the previous one ends, and the blobs covering the `blobs_len` bytes before the header exactly.
pub fn check_tiling(entries: &[PackEntry], blobs_len: u64) {
    let mut end = 0u64;
    for e in entries {
        assert_eq!(u64::from(e.offset), end, "blob {} does not start where the previous one ends", e.id);
        end += u64::from(e.stored_len);
    }
    assert_eq!(end, blobs_len, "the blobs do not cover the blob area");
}
