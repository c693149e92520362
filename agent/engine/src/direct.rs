//! A big file's or disk's content moved past the page cache (`O_DIRECT`), both ways: a
//! restore writes each blob's page-aligned middle directly, from reused aligned buffers, and
//! only its unaligned ends through the cache, all on writer threads of their own (`Direct`),
//! into space allocated for the file's data up front (`Direct::allocate`); a backup reads a big
//! file in aligned blocks, one block ahead on a thread of its own (`DirectReader`).
//!
//! Why: through the page cache, every byte of a big file gets a page of its own, allocated and
//! copied into (a write holds the file's inode lock meanwhile, so two writers take turns), and
//! the node's cache fills with the volume's pages (dirty ones, which every other writer then
//! waits behind, on a restore), all charged to the agent's memory cgroup. Measured on this
//! project's machine kind (a VM, `dd` of 8 GiB): written in 9–13 s with 7–10 s of system time
//! through the cache, 4.8 s with 0.7 s direct; read in 1.2–11 s with 1.1–11 s of system time
//! (the long ones when the cached pages had gone cold), 1.9 s with 0.3 s direct.
//!
//! Contract: the bytes are those a buffered `write_all_at` writes, or a buffered read reads.
//! Direct writes are page-aligned (offset, length and memory) and cover whole pages of one
//! blob, so no page is written both ways: a page holding two blobs' ends is written only
//! through the cache.
//! Where the file system does not take `O_DIRECT` (the open or an I/O says `EINVAL`), the
//! file is read or written through the cache from then on; any other error is the caller's, as
//! for buffered I/O. Never used below `MIN_DIRECT`: a small file is often read again soon.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Once};

use crossbeam_channel::{Receiver, Sender, bounded};

/// Offset, length and memory alignment of a direct write: a page, which is also a multiple of
/// any block device's logical block size up to 4 KiB.
pub(crate) const ALIGN: usize = 4096;

/// The smallest file read or written directly.
pub(crate) const MIN_DIRECT: u64 = 64 << 20;

/// Bytes staged (copied to aligned memory) and written directly at once: a blob's middle goes
/// in pieces of this size, so a staging buffer is this big whatever the blobs' size.
pub(crate) const STAGE: usize = 1 << 20;

/// `file` opened again with `O_DIRECT`, for reads (without updating its access time where
/// allowed, as a backup opens files) or writes: a new open file description, so the flag does
/// not reach the buffered I/O made through `file` (its duplicates share one). Opened through
/// `/proc/self/fd` (the scan's `open::proc_fds`), whose entry names the very inode `file` is,
/// not a path to resolve; without /proc, nothing is done directly.
fn reopen(file: &File, write: bool) -> io::Result<File> {
    use nix::fcntl::{OFlag, openat};
    use std::os::fd::AsFd;
    let fds = crate::backup::open::proc_fds().ok_or_else(|| io::Error::other("no /proc/self/fd"))?;
    let name = file.as_raw_fd().to_string();
    let mode = if write { OFlag::O_WRONLY } else { OFlag::O_RDONLY };
    let open = |flags| {
        openat(
            fds.as_fd(),
            name.as_str(),
            mode | OFlag::O_DIRECT | OFlag::O_CLOEXEC | flags,
            nix::sys::stat::Mode::empty(),
        )
    };
    let fd = if write { open(OFlag::empty()) } else { open(OFlag::O_NOATIME).or_else(|_| open(OFlag::empty())) };
    Ok(File::from(fd?))
}

/// `n` bytes of `buf` starting at a page-aligned address (`buf` grows to hold them and a page,
/// and no more: a staging buffer stays `STAGE` and a page, however often it is reused).
fn aligned(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n + ALIGN {
        buf.reserve_exact(n + ALIGN - buf.len());
        buf.resize(n + ALIGN, 0);
    }
    let skew = buf.as_ptr().align_offset(ALIGN);
    &mut buf[skew..skew + n]
}

/// Pieces waiting for the writer threads at most: a range thread goes on to its next blob while
/// the disk takes the last. Measured with one writer, on an 8 GiB sparse image holding 3.2 GiB
/// (restored to ext4, alternated): 3.23–3.44 s with 4 pieces of 1 MiB, 4.02–4.16 s with none
/// queued, 3.63–3.69 s with 4 of 512 KiB, 3.69–3.93 s with 8 of 256 KiB; each range thread
/// writing its own blobs (before), 3.80–4.52 s. With two writers, three queued (five buffers in
/// all, as with one writer and four) restored the 8 GiB image in 12.0–27.4 s (median 13.95)
/// against 12.2–16.3 (median 12.75) with four and 16.4–21.2 (18.1) with one writer, alternated,
/// 5 rounds, on a slow day; the peer corpus's restore (the harness, 3 runs each) peaked at
/// 48.9–50.6 MiB with three, 51.7–52.9 with four, half of restic's or a little more. Three.
const QUEUE: usize = 3;

/// Writer threads. Two direct writes into one file are on their way to the disk at once only
/// where the file system allows it: ext4 (on this machine's Linux 6.18) takes the file's lock
/// shared for an aligned direct write into allocated space, which is why a target's data is
/// allocated first (`allocate`); into a hole it holds the lock exclusively until the write is
/// on disk, and two writers take turns. (A block device takes no such lock.) Measured with
/// 4 GiB written in 1 MiB pieces to a fresh ext4 on a loop device doing direct I/O (2 to 5
/// rounds, this project's machine kind): one writer 3.33–3.95 s, two into allocated space
/// 2.22–3.08 s, three 2.48–3.11 s, two into a hole 4.04–5.11 s.
const WRITERS: usize = 2;

/// Staging buffers (`STAGE` and a page each), all a restore ever has: the queue's and the ones
/// being written. A range thread waits for a free one before it stages a piece, so the pieces
/// the range threads are filling come out of the queue's share (taken from a pool, they came on
/// top of it: 7 buffers with the queue full, 2 MiB more of a restore's peak RSS).
const STAGED: usize = QUEUE + WRITERS;

/// Which targets are written directly (set up front by size, cleared when the file system
/// refuses `O_DIRECT`), and the threads that write them.
///
/// Every write to a target written directly, its blobs' unaligned ends included, is made by
/// one of `WRITERS` writer threads, taken in the order the range threads hand them over
/// (`write`), the ends held and written `ENDS` at a time while no direct write is in flight;
/// once the file system has refused a direct write (`wants` is false), the range
/// threads write that target through the page cache themselves, as any other, and so do the
/// writers. So the range threads decrypt and decompress the next blob while the disk takes the
/// last ones: a direct write is synchronous, and a range thread that made its own waited for
/// the disk about as long as it computed (the 8 GiB image's restore took 10.2 s at 1.0
/// CPU/wall). No page is written both ways: a direct write is whole pages of one blob, the rest
/// of a blob goes through the cache. Write errors are kept per target and returned by `finish`.
pub(crate) struct Direct {
    on: Arc<Vec<AtomicBool>>,
    /// Per target: its data's space allocated (`allocate`), once.
    allocated: Vec<Once>,
    writer: Mutex<Option<Writer>>,
    /// Staging buffers grown so far (tests: they are bounded).
    #[cfg(test)]
    grown: std::sync::atomic::AtomicUsize,
    /// Held by a test to stop the writer threads before their next write.
    #[cfg(test)]
    pause: Arc<Mutex<()>>,
    /// Writer threads stopped there, each with a write in hand.
    #[cfg(test)]
    paused: Arc<std::sync::atomic::AtomicUsize>,
}

/// The writer threads, and how to reach them: their queue, and the free staging buffers
/// (`STAGED`, given back by a thread after each write; when they are gone, taking one fails
/// once none is left instead of waiting for ever).
struct Writer {
    tx: Sender<Op>,
    free: Receiver<Vec<u8>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    failed: Arc<Mutex<Vec<Failed>>>,
}

/// A target whose direct writes failed: its first error, and how many of the bytes handed over
/// for it were not written (the failed write's and every later one's, which were skipped).
#[derive(Debug)]
pub(crate) struct Failed {
    pub i: usize,
    pub error: io::Error,
    pub lost: u64,
}

/// One write for a writer thread: target `i`'s bytes at `at`.
struct Op {
    i: usize,
    file: Arc<File>,
    direct: Arc<File>,
    at: u64,
    bytes: Bytes,
}

enum Bytes {
    /// `n` bytes staged at the page-aligned start of a staging buffer (`aligned`), written
    /// directly.
    Staged(Vec<u8>, usize),
    /// Bytes written through the page cache (a blob's unaligned ends).
    Cached(Vec<u8>),
}

impl Direct {
    /// `on[i]`: target `i` is big enough to be written directly.
    pub(crate) fn new(on: impl IntoIterator<Item = bool>) -> Self {
        let on: Vec<AtomicBool> = on.into_iter().map(AtomicBool::new).collect();
        Direct {
            allocated: on.iter().map(|_| Once::new()).collect(),
            on: Arc::new(on),
            writer: Mutex::new(None),
            #[cfg(test)]
            grown: Default::default(),
            #[cfg(test)]
            pause: Default::default(),
            #[cfg(test)]
            paused: Default::default(),
        }
    }

    pub(crate) fn wants(&self, i: usize) -> bool {
        self.on.get(i).is_some_and(|b| b.load(Relaxed))
    }

    /// `file` (target `i`) opened again for direct writes: a new open file description, so the
    /// flag does not reach the buffered writes made through `file` (its duplicates share one).
    /// `None` if the target is not written directly, or the file system refuses (then it no
    /// longer is).
    pub(crate) fn reopen(&self, i: usize, file: &File) -> Option<File> {
        if !self.wants(i) {
            return None;
        }
        match reopen(file, true) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!("direct writes refused ({e}); writing through the page cache");
                self.on[i].store(false, Relaxed);
                None
            }
        }
    }

    /// Allocate the space of target `i`'s data (the byte ranges `segments` give blobs, not its
    /// holes) in `file`, once, before its first direct write: the file system then lays each
    /// range out in one piece, and direct writes into it may be made at once (`WRITERS`).
    /// Written into holes instead, every write held the file's lock until it was on disk, and
    /// each blob's unaligned ends (written through the cache) were allocated at write-back,
    /// where ext4 could: the peer corpus's VM image came back in 17–24 extents (6–7 now, `cp`
    /// makes 7), a 70 MiB file in 3 (1 now). A caller that comes while another allocates waits
    /// for it.
    ///
    /// Regular files only: on a block device, some Linux versions (5.x among them) drop the
    /// range's cached pages, dirty ones included, for any fallocate mode they know, this one
    /// too, before refusing it. Best effort: where the file system cannot (`EOPNOTSUPP`: some
    /// network file systems) or the space is not there, the writes go into the holes as before,
    /// and a lack of space is their error.
    pub(crate) fn allocate(&self, i: usize, file: &File, segments: &[repo_format::Segment]) {
        use nix::fcntl::{FallocateFlags, fallocate};
        let Some(once) = self.allocated.get(i) else { return };
        once.call_once(|| {
            if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
                return;
            }
            for (at, len) in data_ranges(segments) {
                if let Err(e) = fallocate(file, FallocateFlags::FALLOC_FL_KEEP_SIZE, at as i64, len as i64) {
                    tracing::debug!("allocating a target's data up front refused ({e}); written into its holes");
                    return;
                }
            }
        });
    }

    /// Hand `data`, to be written at `at` of target `i`, to the writer threads: its page-aligned
    /// middle staged `STAGE` bytes at a time (to go through `direct`), its ends copied (to go
    /// through `file`). Waits only while `QUEUE` pieces wait already (or every staging buffer is
    /// out). An error here means the writer threads are gone; write errors come from `finish`.
    pub(crate) fn write(&self, i: usize, file: &Arc<File>, direct: &Arc<File>, data: &[u8], at: u64) -> io::Result<()> {
        let (tx, free) = self.sender();
        let stopped = || io::Error::other("the direct writer threads stopped");
        let send = |at: u64, bytes: Bytes| {
            tx.send(Op { i, file: file.clone(), direct: direct.clone(), at, bytes }).map_err(|_| stopped())
        };
        let (lo, hi) = aligned_middle(at, data.len());
        if lo >= hi {
            return send(at, Bytes::Cached(data.to_vec()));
        }
        let (head, mid) = ((lo - at) as usize, (hi - lo) as usize);
        if head > 0 {
            send(at, Bytes::Cached(data[..head].to_vec()))?;
        }
        let mut done = 0;
        while done < mid {
            let n = (mid - done).min(STAGE);
            let mut stage = free.recv().map_err(|_| stopped())?;
            #[cfg(test)]
            if stage.capacity() == 0 {
                self.grown.fetch_add(1, Relaxed);
            }
            aligned(&mut stage, n).copy_from_slice(&data[head + done..head + done + n]);
            send(lo + done as u64, Bytes::Staged(stage, n))?;
            done += n;
        }
        if head + mid < data.len() {
            send(hi, Bytes::Cached(data[head + mid..].to_vec()))?;
        }
        Ok(())
    }

    /// Wait for every write handed over; the targets whose writes failed, each with its first
    /// error (its later writes were not made) and the bytes handed over but not written.
    pub(crate) fn finish(&self) -> Vec<Failed> {
        match self.writer.lock().expect("lock").take() {
            Some(Writer { tx, threads, failed, .. }) => {
                drop(tx);
                for t in threads {
                    t.join().expect("a direct writer thread panicked");
                }
                std::mem::take(&mut *failed.lock().expect("lock"))
            }
            None => Vec::new(),
        }
    }

    /// The writer threads' queue and free staging buffers, the threads started on first use.
    fn sender(&self) -> (Sender<Op>, Receiver<Vec<u8>>) {
        let mut writer = self.writer.lock().expect("lock");
        let w = writer.get_or_insert_with(|| {
            let (tx, rx) = bounded(QUEUE);
            // Empty until first staged into (`aligned`).
            let (give, free) = bounded(STAGED);
            for _ in 0..STAGED {
                give.send(Vec::new()).expect("room for every buffer");
            }
            let failed = Arc::new(Mutex::new(Vec::new()));
            let gate = Arc::new(Gate::default());
            let threads = (0..WRITERS)
                .map(|_| {
                    let (rx, on, give, failed) = (rx.clone(), self.on.clone(), give.clone(), failed.clone());
                    let gate = gate.clone();
                    #[cfg(test)]
                    let (pause, paused) = (self.pause.clone(), self.paused.clone());
                    std::thread::Builder::new()
                        .name("ferry-direct".into())
                        .spawn(move || {
                            write_ops(rx, &on, &give, &failed, &gate, || {
                                #[cfg(test)]
                                {
                                    paused.fetch_add(1, Relaxed);
                                    drop(pause.lock());
                                    paused.fetch_sub(1, Relaxed);
                                }
                            })
                        })
                        .expect("spawning a direct writer thread")
                })
                .collect();
            Writer { tx, free, threads, failed }
        });
        (w.tx.clone(), w.free.clone())
    }
}

/// The byte ranges `segments` give data (blobs), neighbours joined: `(offset, length)`.
fn data_ranges(segments: &[repo_format::Segment]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    for s in segments {
        let len = s.len();
        if matches!(s, repo_format::Segment::Blob { .. }) && len > 0 {
            match out.last_mut() {
                Some((start, n)) if *start + *n == at => *n += len,
                _ => out.push((at, len)),
            }
        }
        at += len;
    }
    out
}

/// Unaligned ends a writer thread holds before it writes them through the cache, at most. Such
/// a write takes the file's lock exclusively, so it waited for every direct write in flight
/// (they hold the lock shared until they are on disk), and the next ones waited for it. Made
/// two per blob, those waits were most of the writers' (`perf` of the 8 GiB image's restore:
/// 8,148 of them against 11,745 waits for the disk). Held, they are written together under
/// `Gate`'s exclusive side: the disk's queue is drained once per `ENDS` ends instead of twice
/// per blob. At most `ENDS` ends of under two pages each per writer thread (a blob without a
/// whole page is one end).
const ENDS: usize = 32;

/// Held shared by a writer thread for each direct write, exclusively while it writes the ends
/// it holds through the cache (`ENDS`): no direct write is in flight then, so the file's lock
/// is free for them, and none starts before they are written.
type Gate = std::sync::RwLock<()>;

/// A writer thread: make each write it takes in turn (see `Direct`), a blob's unaligned ends
/// held and written `ENDS` at a time (the rest when the queue closes). A direct write the file
/// system refuses (`EINVAL`) is made through the page cache, and so is every later one of its
/// target. A target's first error is kept in `failed` (shared by the writers) and its later
/// writes skipped (and counted as lost). Staging buffers go back to `free` once written;
/// `before` runs before each write taken (a test's pause).
fn write_ops(
    rx: Receiver<Op>,
    on: &[AtomicBool],
    free: &Sender<Vec<u8>>,
    failed: &Mutex<Vec<Failed>>,
    gate: &Gate,
    before: impl Fn(),
) {
    // A target already failed: this write is skipped and its bytes lost.
    let skip = |i: usize, len: u64| {
        failed.lock().expect("lock").iter_mut().find(|f| f.i == i).map(|f| f.lost += len).is_some()
    };
    let record = |i: usize, len: u64, r: io::Result<()>| {
        if let Err(error) = r {
            // Another writer may have failed on this target meanwhile: its error stays the one.
            let mut failed = failed.lock().expect("lock");
            match failed.iter_mut().find(|f| f.i == i) {
                Some(f) => f.lost += len,
                None => failed.push(Failed { i, error, lost: len }),
            }
        }
    };
    // The ends held (`Bytes::Cached` only).
    let write_ends = |ends: &mut Vec<Op>| {
        if ends.is_empty() {
            return;
        }
        let _exclusive = gate.write().unwrap_or_else(|e| e.into_inner());
        for Op { i, file, at, bytes, .. } in ends.drain(..) {
            let Bytes::Cached(b) = bytes else { unreachable!("only unaligned ends are held") };
            let len = b.len() as u64;
            if !skip(i, len) {
                record(i, len, file.write_all_at(&b, at));
            }
        }
    };
    let mut ends: Vec<Op> = Vec::with_capacity(ENDS);
    for op in rx {
        before();
        let Op { i, file, direct, at, bytes: Bytes::Staged(stage, n) } = op else {
            ends.push(op);
            if ends.len() == ENDS {
                write_ends(&mut ends);
            }
            continue;
        };
        if !skip(i, n as u64) {
            let skew = stage.as_ptr().align_offset(ALIGN);
            let staged = &stage[skew..skew + n];
            let r = match on[i].load(Relaxed) {
                true => {
                    let _shared = gate.read().unwrap_or_else(|e| e.into_inner());
                    match write_all_direct(&direct, staged, at) {
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            tracing::debug!("a direct write was refused ({e}); writing through the page cache");
                            on[i].store(false, Relaxed);
                            file.write_all_at(staged, at)
                        }
                        r => r,
                    }
                }
                false => file.write_all_at(staged, at),
            };
            record(i, n as u64, r);
        }
        // Room for it: no more than `STAGED` exist.
        let _ = free.try_send(stage);
    }
    write_ends(&mut ends);
}

/// The page-aligned part `[lo, hi)` of the bytes `[at, at + len)` (empty: `lo >= hi`).
fn aligned_middle(at: u64, len: usize) -> (u64, u64) {
    let a = ALIGN as u64;
    (at.next_multiple_of(a), (at + len as u64) / a * a)
}

/// `write_all_at` for a direct write. A short write of whole pages is continued; one that
/// leaves an unaligned rest is reported as `EINVAL`, so the caller writes it all again through
/// the page cache.
fn write_all_direct(f: &File, mut buf: &[u8], mut at: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.write_at(buf, at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n % ALIGN != 0 => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            Ok(n) => {
                buf = &buf[n..];
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bytes of `file` in the page cache, from cachestat(2) (Linux 6.5 and later); `None` where the
/// kernel cannot say (an older kernel, or qemu-user, answers `ENOSYS`).
#[allow(unsafe_code)]
pub(crate) fn cached_bytes(file: &File) -> Option<u64> {
    /// The syscall's number on every architecture Ferry builds for (the generic table's, which
    /// x86_64, s390x and powerpc use too); the libc crate does not name it for glibc targets.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // Length 0: to the end of the file.
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // Safety: a valid descriptor and two structs of the kernel's layout, alive for the call.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return None;
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    Some(stat.nr_cache.saturating_mul(page))
}

/// Whether a backup reads a file of `size` bytes, `allocated` of them on disk, past the page
/// cache: when it is at least `MIN_DIRECT` and less than half of its data is cached already.
/// A file mostly cached (just copied or written there, or read by its application) is read
/// through the cache: direct reads would fetch from the disk what memory holds (and write back
/// its dirty pages first). Measured on the peer corpus freshly copied (the harness's setting):
/// the backup read its 2 GiB VM image's 610 MB of data from the disk (a loop device); read
/// through the cache, 1–4 MiB, and the backup took 3.39 s (3.23–3.77) instead of 4.01
/// (3.70–4.23), alternated, 3 rounds. A cached 8 GiB image holding 3 GiB: 13.1 s instead of
/// 14.3, for 18 % more CPU (the copies from the cache). Where the kernel cannot say, big files
/// are read directly, as before.
pub(crate) fn read_directly(file: &File, size: u64, allocated: u64) -> bool {
    size >= MIN_DIRECT && cached_bytes(file).is_none_or(|c| c.saturating_mul(2) < allocated.min(size))
}

/// Bytes read directly at once. Measured on the 8 GiB image (benches/bigfile.sh, backup,
/// alternated): 1 MiB blocks took 20.9–22.2 s against 19.0–19.7 s with 4 MiB (8 MiB less peak
/// RSS); reading 4 blocks of 4 MiB ahead instead of 1 changed nothing (17.9 against 18.2 s).
const READ_BLOCK: usize = 4 << 20;

/// A file's bytes from `start`, for `len` bytes or to its end, read directly in aligned blocks
/// of `READ_BLOCK` by a thread of its own one block ahead (`O_DIRECT` has no read-ahead: the
/// caller would wait for every block). Two blocks of memory. An error ends the stream; dropped
/// early, the thread stops after the block it is reading.
pub(crate) struct DirectReader {
    blocks: Option<Receiver<io::Result<Block>>>,
    empty: Option<Sender<Vec<u8>>>,
    cur: Option<Block>,
    /// The receiving end of `empty` too, so buffers sent back after the thread ended stay there
    /// for `into_buffers`.
    returned: Receiver<Vec<u8>>,
    /// Its thread, which ends handing back the buffers it holds.
    thread: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
}

/// A block read: the bytes wanted are `buf[at..end]`.
struct Block {
    buf: Vec<u8>,
    at: usize,
    end: usize,
}

impl DirectReader {
    /// `None` where `file` cannot be opened for direct reads (the caller reads it as before).
    /// Its two buffers come from `spare` (an earlier reader's, `into_buffers`) while it has
    /// some: a sparse file is read range by range (the peer corpus's VM image has 577 ranges),
    /// and fresh buffers, zeroed, for each were 9 % of the page faults of its backup.
    pub(crate) fn open(file: &File, start: u64, len: u64, spare: &mut Vec<Vec<u8>>) -> Option<DirectReader> {
        let direct = match reopen(file, false) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("direct reads refused ({e}); reading through the page cache");
                return None;
            }
        };
        let plain = file.try_clone().ok()?;
        let (block_tx, blocks) = bounded(1);
        // Room for both buffers: sending one back never waits.
        let (empty, empty_rx) = bounded(2);
        let returned = empty_rx.clone();
        for _ in 0..2 {
            empty.send(spare.pop().unwrap_or_default()).expect("room for two");
        }
        let thread = std::thread::Builder::new()
            .name("direct-read".into())
            .spawn(move || read_ahead(direct, plain, start, start.saturating_add(len), empty_rx, block_tx))
            .ok()?;
        Some(DirectReader { blocks: Some(blocks), empty: Some(empty), cur: None, returned, thread: Some(thread) })
    }

    /// Its buffers, for the next reader: those it holds and those its thread hands back. Read
    /// to its end, the thread has ended; before, it reads at most the blocks it has buffers for.
    pub(crate) fn into_buffers(mut self) -> Vec<Vec<u8>> {
        let mut bufs: Vec<Vec<u8>> = self.cur.take().map(|b| b.buf).into_iter().collect();
        // Without buffers sent back, the thread ends once it has used those it has; each block
        // it sends until then is taken here, which also keeps it from waiting on a full queue.
        self.empty.take();
        for b in self.blocks.take().into_iter().flat_map(|rx| rx.into_iter()) {
            bufs.extend(b.ok().map(|b| b.buf));
        }
        if let Some(t) = self.thread.take() {
            bufs.extend(t.join().unwrap_or_default());
        }
        bufs.extend(self.returned.try_iter());
        bufs
    }
}

impl io::Read for DirectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(b) = &mut self.cur {
                if b.at < b.end {
                    let n = out.len().min(b.end - b.at);
                    out[..n].copy_from_slice(&b.buf[b.at..b.at + n]);
                    b.at += n;
                    return Ok(n);
                }
                let done = self.cur.take().expect("a block").buf;
                // Taken by the thread, or kept in the channel for `into_buffers` if it ended.
                let _ = self.empty.as_ref().map(|e| e.send(done));
            }
            match self.blocks.as_ref().map(Receiver::recv) {
                Some(Ok(Ok(b))) => self.cur = Some(b),
                Some(Ok(Err(e))) => return Err(e),
                // The stream ended.
                Some(Err(_)) | None => return Ok(0),
            }
        }
    }
}

impl Drop for DirectReader {
    fn drop(&mut self) {
        // Closing both channels stops the thread at its next send or receive.
        self.blocks.take();
        self.empty.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reading thread of `DirectReader`: blocks of `[start, end)` (or to the end of the file)
/// in order, each read into an empty buffer received and sent on filled. Returns the buffers it
/// holds when it ends (the reader may want them again: `into_buffers`), those waiting in
/// `empty` included.
fn read_ahead(
    direct: File,
    plain: File,
    start: u64,
    end: u64,
    empty: Receiver<Vec<u8>>,
    blocks: Sender<io::Result<Block>>,
) -> Vec<Vec<u8>> {
    let mut held = Vec::new();
    read_blocks(direct, plain, start, end, &empty, &blocks, &mut held);
    held.extend(empty.try_iter());
    held
}

/// The loop of `read_ahead`; a buffer it stops with is left in `held`.
fn read_blocks(
    direct: File,
    plain: File,
    start: u64,
    end: u64,
    empty: &Receiver<Vec<u8>>,
    blocks: &Sender<io::Result<Block>>,
    held: &mut Vec<Vec<u8>>,
) {
    let a = ALIGN as u64;
    let mut direct = Some(direct);
    let mut pos = start / a * a;
    while pos < end {
        let Ok(mut buf) = empty.recv() else { return };
        let want = if end - pos >= READ_BLOCK as u64 { READ_BLOCK } else { (end - pos).next_multiple_of(a) as usize };
        aligned(&mut buf, want);
        let skew = buf.as_ptr().align_offset(ALIGN);
        let got = match read_full(&mut direct, &plain, &mut buf[skew..skew + want], pos) {
            Ok(n) => n,
            Err(e) => {
                held.push(buf);
                let _ = blocks.send(Err(e));
                return;
            }
        };
        let at = skew + (start.max(pos) - pos) as usize;
        let stop = skew + got.min((end - pos) as usize);
        if at >= stop {
            held.push(buf);
        } else if let Err(back) = blocks.send(Ok(Block { buf, at, end: stop })) {
            held.extend(back.0.ok().map(|b| b.buf));
            return;
        }
        if got < want {
            return; // the end of the file
        }
        pos += want as u64;
    }
}

/// Read `buf` at `pos` until it is full or the file ends: the bytes read. Directly while the
/// reads stay aligned (a short one at the end of the file does not), through the cache after
/// (and from then on if the file system refuses a direct read).
fn read_full(direct: &mut Option<File>, plain: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let at = pos + got as u64;
        let r = match direct {
            Some(d) if got % ALIGN == 0 => d.read_at(&mut buf[got..], at),
            _ => plain.read_at(&mut buf[got..], at),
        };
        match r {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && direct.is_some() => {
                tracing::debug!("a direct read was refused ({e}); reading through the page cache");
                *direct = None;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aligned_middle_leaves_only_partial_pages_out() {
        assert_eq!(aligned_middle(0, 8192), (0, 8192));
        assert_eq!(aligned_middle(1, 8192), (4096, 8192));
        assert_eq!(aligned_middle(4095, 4098), (4096, 8192));
        let (lo, hi) = aligned_middle(100, 200);
        assert!(lo >= hi, "within one page: nothing direct");
        assert_eq!(aligned_middle(4096, 4095), (4096, 4096));
    }

    #[test]
    fn data_ranges_join_neighbouring_blobs_and_leave_holes_out() {
        use repo_format::{BlobId, Id, Segment};
        let blob = |len| Segment::Blob { id: BlobId(Id([7; 32])), len };
        let segments =
            [blob(10), blob(5), Segment::Zero { len: 100 }, blob(7), Segment::Zero { len: 0 }, blob(3), blob(0)];
        assert_eq!(data_ranges(&segments), vec![(0, 15), (115, 10)]);
        assert_eq!(data_ranges(&[Segment::Zero { len: 9 }]), vec![]);
    }

    /// `allocate` gives the data ranges their space before anything is written, and leaves the
    /// holes alone: a file of 100 MiB whose segments hold 3 MiB and a page of data has exactly
    /// that allocated (where the file system allocates: not a tmpfs without it, say).
    #[test]
    fn allocate_gives_the_data_its_space_and_not_the_holes() {
        use repo_format::{BlobId, Id, Segment};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        file.set_len(100 << 20).unwrap();
        let blob = |len| Segment::Blob { id: BlobId(Id([7; 32])), len };
        let segments = [
            Segment::Zero { len: 10 << 20 },
            blob(1 << 20),
            blob(2 << 20),
            Segment::Zero { len: 50 << 20 },
            blob(4096),
            Segment::Zero { len: (37 << 20) - 4096 },
        ];
        let probe = File::create(dir.path().join("probe")).unwrap();
        if nix::fcntl::fallocate(&probe, nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 4096).is_err() {
            repo_format::testing::skip("the file system of the temporary directory does not allocate ahead");
            return;
        }
        let direct = Direct::new([true]);
        direct.allocate(0, &file, &segments);
        let allocated = file.metadata().unwrap().blocks() * 512;
        // Exactly, on ext4; a file system may round up to a bigger unit of allocation.
        assert!(
            ((3 << 20) + 4096..=4 << 20).contains(&allocated),
            "{allocated} bytes allocated: the data's space, and only it"
        );
        assert_eq!(file.metadata().unwrap().len(), 100 << 20, "the size is the file's");
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0), "allocated space reads as zeros");
    }

    /// A big target written blob by blob at unaligned places, from two threads (as two ranges
    /// in flight do), is byte for byte what buffered writes make, and the direct path was taken
    /// (the file system under the test directory takes `O_DIRECT`: tmpfs does since Linux 6.6,
    /// ext4 and xfs always).
    #[test]
    fn direct_writes_give_the_bytes_of_buffered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let len = 5 << 20;
        let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        // Unaligned blob boundaries, some within a page; blobs of many pages with both ends
        // unaligned, the last one staged in several pieces.
        let mut cuts = vec![0usize, 1, 4095, 4097, 9000, 13_000, 13_001, 20_000, 100_000, (1 << 20) - 5, (2 << 20) + 3];
        cuts.push(len);
        let blobs: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        let file = File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        file.set_len(len as u64).unwrap();
        let direct = Direct::new([true]);
        let Some(d) = direct.reopen(0, &file) else {
            repo_format::testing::skip("the file system of the temporary directory refuses O_DIRECT");
            return;
        };
        let (file, d) = (Arc::new(file), Arc::new(d));
        std::thread::scope(|s| {
            for half in 0..2 {
                let (direct, file, d, data, blobs) = (&direct, &file, &d, &data, &blobs);
                s.spawn(move || {
                    // Reverse order in one thread: neighbours' shared pages are written in both orders.
                    let mine: Vec<_> = blobs.iter().enumerate().filter(|(k, _)| k % 2 == half).collect();
                    for (_, &(a, b)) in mine.into_iter().rev() {
                        direct.write(0, file, d, &data[a..b], a as u64).unwrap();
                    }
                });
            }
        });
        let failed = direct.finish();
        assert!(failed.is_empty(), "{failed:?}");
        assert!(direct.wants(0), "the direct path was refused, so not tested");
        assert!(std::fs::read(&path).unwrap() == data, "the file differs from the data");
        assert!(direct.grown.load(Relaxed) <= STAGED, "staging buffers are bounded");
    }

    /// However far the range threads get ahead of the disk, `STAGED` staging buffers are all
    /// there ever are: with the writer threads stopped, two threads handing over 8 MiB each
    /// stop once the queue is full and each writer holds one (taken from a pool, the pieces they
    /// were filling came on top). Every writer thread holds a write at once: one file's writes
    /// are made `WRITERS` at a time. Let go, everything is written.
    #[test]
    fn staging_buffers_stay_bounded_while_the_disk_lags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let half = 8 * STAGE;
        let data: Vec<u8> = (0..2 * half as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let file = File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        let direct = Direct::new([true]);
        let Some(d) = direct.reopen(0, &file) else {
            repo_format::testing::skip("the file system of the temporary directory refuses O_DIRECT");
            return;
        };
        let (file, d) = (Arc::new(file), Arc::new(d));
        let pause = direct.pause.clone();
        let held = pause.lock().unwrap();
        std::thread::scope(|s| {
            for k in 0..2 {
                let (direct, file, d, data) = (&direct, &file, &d, &data);
                s.spawn(move || direct.write(0, file, d, &data[k * half..][..half], (k * half) as u64).unwrap());
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while direct.grown.load(Relaxed) < STAGED && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // Time for a thread that is not stopped to take more.
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert_eq!(direct.grown.load(Relaxed), STAGED, "buffers made while the writers are stopped");
            assert_eq!(direct.paused.load(Relaxed), WRITERS, "writers each holding a write of the one file");
            drop(held);
        });
        let failed = direct.finish();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(direct.grown.load(Relaxed), STAGED, "buffers made in all");
        assert!(std::fs::read(&path).unwrap() == data, "the file differs from the data");
    }

    /// A blob's unaligned ends are held while fewer than `ENDS` wait (the rest until the queue
    /// closes), and written together only while no direct write is in flight (here the test
    /// holds the gate's shared side, as a direct write does).
    #[test]
    fn unaligned_ends_are_written_together_between_direct_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let file = Arc::new(File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap());
        let (tx, rx) = bounded(ENDS + 1);
        let (give, _free) = bounded(1);
        let (failed, gate, on) = (Mutex::new(Vec::new()), Gate::default(), [AtomicBool::new(true)]);
        let end = |k: usize| Op {
            i: 0,
            file: file.clone(),
            direct: file.clone(),
            at: (k * 8192) as u64,
            bytes: Bytes::Cached(vec![k as u8 + 1; 100]),
        };
        let written = |k: usize| std::fs::read(&path).unwrap().get(k * 8192) == Some(&(k as u8 + 1));
        let settle = || std::thread::sleep(std::time::Duration::from_millis(200));
        std::thread::scope(|s| {
            let (failed, gate, on, give) = (&failed, &gate, &on, &give);
            let writer = s.spawn(move || write_ops(rx, on, give, failed, gate, || {}));
            let in_flight = gate.read().unwrap();
            for k in 0..ENDS - 1 {
                tx.send(end(k)).unwrap();
            }
            settle();
            assert!(!written(0), "an end was written before {ENDS} were held");
            tx.send(end(ENDS - 1)).unwrap();
            settle();
            assert!(!written(0), "ends were written while a direct write was in flight");
            drop(in_flight);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !written(ENDS - 1) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!((0..ENDS).all(written), "the {ENDS} ends held were not all written");
            tx.send(end(ENDS)).unwrap();
            settle();
            assert!(!written(ENDS), "one end was written alone");
            drop(tx);
            writer.join().unwrap();
            assert!(written(ENDS), "the end held was not written when the queue closed");
        });
        assert!(failed.lock().unwrap().is_empty());
    }

    /// A write that fails (here: the target was opened read-only) is the target's error, given
    /// by `finish` once; the target's later writes are not made, and another target's are.
    #[test]
    fn a_failed_direct_write_is_its_targets_error() {
        let dir = tempfile::tempdir().unwrap();
        let (bad, good) = (dir.path().join("bad"), dir.path().join("good"));
        let len = 3 * STAGE + 100;
        let data: Vec<u8> = (0..len as u32).map(|i| (i >> 3) as u8).collect();
        std::fs::File::create(&bad).unwrap().set_len(len as u64).unwrap();
        let good_file = File::options().create(true).truncate(true).read(true).write(true).open(&good).unwrap();
        let ro = File::open(&bad).unwrap();
        let direct = Direct::new([true, true]);
        let Some(d_good) = direct.reopen(1, &good_file) else {
            repo_format::testing::skip("the file system of the temporary directory refuses O_DIRECT");
            return;
        };
        let (ro, d_ro) = (Arc::new(ro), Arc::new(reopen(&File::open(&bad).unwrap(), false).unwrap()));
        let (good_file, d_good) = (Arc::new(good_file), Arc::new(d_good));
        direct.write(0, &ro, &d_ro, &data, 7).unwrap();
        direct.write(1, &good_file, &d_good, &data, 7).unwrap();
        direct.write(0, &ro, &d_ro, &data[..10], 0).unwrap();
        let failed = direct.finish();
        assert_eq!(failed.len(), 1, "one error for the target: {failed:?}");
        assert_eq!((failed[0].i, failed[0].error.raw_os_error()), (0, Some(libc::EBADF)), "{:?}", failed[0].error);
        assert_eq!(failed[0].lost, (len + 10) as u64, "every byte handed over for it is lost");
        let got = std::fs::read(&good).unwrap();
        assert!(got.len() == len + 7 && got[7..] == data[..], "the other target's bytes are all there");
        assert!(std::fs::read(&bad).unwrap().iter().all(|&b| b == 0), "nothing written to the read-only target");
        assert!(direct.finish().is_empty(), "finished once");
    }

    /// A big file whose data is in the page cache is read through it; evicted, it is read
    /// directly; a small one never is. Where the kernel cannot say (qemu-user), big files are
    /// read directly, as before cachestat was asked.
    #[test]
    fn a_cached_file_is_read_through_the_cache_and_an_evicted_one_directly() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cached");
        let len = 4u64 << 20;
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0x5a; len as usize]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        let big = MIN_DIRECT;
        assert!(!read_directly(&f, MIN_DIRECT - 1, len), "a small file is read through the cache");
        let Some(cached) = cached_bytes(&f) else {
            eprintln!("cachestat(2) not answered here: big files are read directly");
            assert!(read_directly(&f, big, len));
            return;
        };
        assert_eq!(cached, len, "just written and synced, all of it is cached");
        assert!(!read_directly(&f, big, len), "a cached big file is read through the cache");
        assert!(!read_directly(&f, big, 2 * len), "half cached is still read through the cache");
        assert!(read_directly(&f, big, 2 * len + 4096), "less than half cached is read directly");
        // Clean pages of a disk file go at DONTNEED; tmpfs pages are the file and stay.
        nix::fcntl::posix_fadvise(
            std::os::fd::AsFd::as_fd(&f),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let fs = nix::sys::statfs::fstatfs(&f).unwrap();
        if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
            eprintln!("tmpfs: its pages cannot be evicted");
            return;
        }
        assert_eq!(cached_bytes(&f), Some(0), "evicted");
        assert!(read_directly(&f, big, len), "an evicted big file is read directly");
    }

    /// Reads of a file at unaligned starts and lengths, to its unaligned end and past it, give
    /// what buffered reads give, through the direct path; a reader dropped early stops.
    #[test]
    fn direct_reads_give_the_bytes_of_buffered_ones() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let len = (2 * READ_BLOCK + 3 * ALIGN + 123) as u64;
        let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        if reopen(&file, false).is_err() {
            repo_format::testing::skip("the file system of the temporary directory refuses O_DIRECT");
            return;
        }
        let cases = [
            (0, u64::MAX),
            (0, len),
            (1, 5000),
            (4095, READ_BLOCK as u64 + 2),
            (len - 100, 1000),
            (len, 10),
            (77, len),
        ];
        // Buffers passed from reader to reader, as a sparse file's ranges do: each reader
        // fills them again over what the one before read.
        let mut bufs = Vec::new();
        for (start, n) in cases {
            let mut r = DirectReader::open(&file, start, n, &mut bufs).expect("a direct reader");
            let mut got = Vec::new();
            // Small reads, so a block is consumed in several.
            let mut buf = vec![0u8; 100_003];
            loop {
                let k = r.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..k]);
            }
            let end = start.saturating_add(n).min(len);
            assert!(got == data[start.min(len) as usize..end as usize], "bytes {start}+{n} differ");
            assert!(bufs.is_empty(), "the reader took the buffers");
            bufs = r.into_buffers();
            assert_eq!(bufs.len(), 2, "both buffers back after reading {start}+{n}");
        }
        assert!(bufs.iter().all(|b| b.len() >= READ_BLOCK), "the buffers of whole blocks came back");
        // Left after a few bytes: the thread is stopped, both buffers come back.
        let mut r = DirectReader::open(&file, 0, u64::MAX, &mut bufs).unwrap();
        let mut one = [0u8; 10];
        r.read_exact(&mut one).unwrap();
        assert_eq!(one[..], data[..10]);
        assert_eq!(r.into_buffers().len(), 2, "both buffers back from a reader left early");
        let mut r = DirectReader::open(&file, 0, u64::MAX, &mut Vec::new()).unwrap();
        r.read_exact(&mut one).unwrap();
        drop(r); // joins the thread: a hang here is the failure
    }
}
