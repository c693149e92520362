//! Stage 1 of the backup: walk the sources, decide per file (files cache), read and chunk.
//!
//! Entries are visited in byte order of their names. A directory's record is sent to the tree
//! builder after all its subdirectories' records (post-order). Files smaller than the chunker's
//! minimum are read whole (no chunker buffer); larger ones stream through FastCDC; sparse files
//! are read by data range (SEEK_DATA/SEEK_HOLE) and their holes become zero segments.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender, bounded};
use repo_format::{BlobKind, BlobWriter, ChunkReader, Chunker, Content, Node, NodeType, Saved, TreeId};

use super::build::{self, DirRecord, Pending, PendingSeg};
use super::cwd;
use super::open::{self, At, Stamp, changed_while_read, open_for_read};
use super::parent::{ParentTrees, same_file};
use super::small::{Batcher, FileBatch};
use super::{BackupConfig, DIR_QUEUE, DIR_RECORD, Tally};
use crate::direct::{DirectReader, read_directly};
use crate::filescache::{self, FileKey, Lookup};
use crate::fsmeta;
use crate::job::{CancelToken, Cancelled, Job, Permit};
use crate::progress::Counters;
use crate::report::{EntryError, EntryErrorKind};

/// One chunk for the blob workers, with the channel its id goes back on.
pub(crate) struct ChunkJob {
    pub data: ChunkData,
    pub reply: Sender<repo_format::Result<Saved>>,
    /// The chunk's bytes held from the job's memory budget, given back once it is saved.
    pub permit: Option<Permit>,
}

/// A chunk's bytes: a pooled buffer of its own (given back to the workers' `BufPool` once saved)
/// or a part of a big file's shared block (the block goes back to its reader's pool when its
/// last chunk is dropped).
pub(crate) enum ChunkData {
    Owned(Vec<u8>),
    Shared(repo_format::SharedChunk),
}

impl std::ops::Deref for ChunkData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkData::Owned(v) => v,
            ChunkData::Shared(c) => c,
        }
    }
}

/// Work for the blob workers: one chunk, or a batch of small files to read and store whole.
pub(crate) enum Work {
    Chunk(ChunkJob),
    Files(FileBatch),
}

/// Chunk buffers the blob workers hand back for the reader to fill again. A fresh buffer per
/// chunk is a fresh mapping (chunks are above glibc's mmap threshold, which `main` keeps low so
/// freed memory goes back to the system): page faults, zeroing and an munmap for every chunk,
/// about a fifth of a backup's CPU time when measured. A recycled buffer is warm memory.
/// A buffer grows to exactly what it holds, and one grown beyond `keep` bytes (a chunk far above
/// the average) is given back shrunk to `keep`, not freed: only its part above `keep` is fresh
/// memory the next time. So idle buffers hold about `n × keep` bytes, not `n ×` the largest
/// chunk seen. (Grown by doubling and freed above `keep`, as before, the buffers of the peer
/// corpus's backup took 47 % of its page faults.)
#[derive(Clone)]
pub(crate) struct BufPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    keep: usize,
}

impl BufPool {
    /// A pool keeping at most `n` idle buffers of at most `keep` bytes.
    pub(crate) fn new(n: usize, keep: usize) -> Self {
        let (tx, rx) = bounded(n.max(1));
        BufPool { tx, rx, keep }
    }

    /// An empty buffer (recycled when one is idle).
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut v = self.rx.try_recv().unwrap_or_default();
        v.clear();
        v
    }

    /// A buffer holding a copy of `data`.
    pub(crate) fn filled(&self, data: &[u8]) -> Vec<u8> {
        let mut v = self.take();
        // Exactly: grown by doubling, a buffer would pass `keep` for chunks below it.
        v.reserve_exact(data.len());
        v.extend_from_slice(data);
        v
    }

    /// Hand a buffer back (shrunk to `keep` bytes if it is bigger; dropped when the pool is full).
    pub(crate) fn give(&self, mut v: Vec<u8>) {
        if v.capacity() > self.keep {
            v.clear();
            v.shrink_to(self.keep);
        }
        let _ = self.tx.try_send(v);
    }
}

/// Idle buffers a job's pool keeps. Under a shared memory budget, idle buffers are outside it:
/// keep only what the workers cycle through (a job that waits for budget must not sit on a
/// queue's worth of idle buffers while another job fills the budget).
pub(crate) fn idle_buffers(l: &crate::job::Limits) -> usize {
    if l.memory.is_some() { l.threads + 2 } else { l.chunk_queue + l.threads + 1 }
}

/// Start `n` blob workers: each saves the chunks it receives, answers with the id and hands
/// the buffer back to `pool`; a batch of small files it reads and stores file by file.
pub(crate) fn spawn_workers<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    n: usize,
    rx: &Receiver<Work>,
    writer: &'scope BlobWriter,
    pool: &BufPool,
) {
    for _ in 0..n {
        let (rx, pool) = (rx.clone(), pool.clone());
        // Named, as the scan thread is, for `top -H` and profiles (unnamed, a thread takes the
        // name of the runtime thread that started the backup).
        let blob = std::thread::Builder::new().name("ferry-blob".into());
        blob.spawn_scoped(s, move || {
            for work in rx {
                match work {
                    Work::Chunk(job) => {
                        let r = writer.save(BlobKind::Data, &job.data);
                        let _ = job.reply.send(r);
                        if let ChunkData::Owned(v) = job.data {
                            pool.give(v);
                        }
                        drop(job.permit);
                    }
                    Work::Files(batch) => batch.run(writer, &pool),
                }
            }
        })
        .expect("starting a blob worker thread");
    }
}

/// Everything the pipeline needs.
pub(crate) struct Pipeline<'a> {
    pub sources: Vec<PathBuf>,
    pub cfg: &'a BackupConfig,
    pub writer: &'a BlobWriter,
    pub chunker: Chunker,
    pub counters: &'a Arc<Counters>,
    pub tally: &'a Arc<Tally>,
    pub files_cache: Option<(filescache::Reader, filescache::Writer)>,
    pub workers: usize,
    pub start_ns: i64,
    pub job: &'a Job,
    /// The parent snapshot's trees, for files the cache does not answer.
    pub parent: Option<ParentTrees>,
    /// Key the files cache by the path inside the snapshot (a volume with an identity, which
    /// may be mounted anywhere) instead of the absolute path.
    pub cache_by_rel: bool,
}

type PipelineResult = (TreeId, Vec<EntryError>, Vec<EntryError>, Option<filescache::Writer>);

/// Run the three stages to completion; returns the root tree and the error and warning lines.
pub(crate) fn pipeline(p: Pipeline<'_>) -> Result<PipelineResult> {
    let queue = p.job.limits.chunk_queue.max(1);
    let (chunk_tx, chunk_rx) = bounded::<Work>(queue.max(1));
    let (dir_tx, dir_rx) = bounded::<Vec<DirRecord>>(DIR_QUEUE);
    let (cache_reader, cache_writer) = match p.files_cache {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    let pool = BufPool::new(idle_buffers(&p.job.limits), 2 * p.chunker.params().avg as usize);
    std::thread::scope(|s| {
        spawn_workers(s, p.workers, &chunk_rx, p.writer, &pool);
        drop(chunk_rx);
        let builder = {
            let (w, tally) = (p.writer, p.tally);
            let seed = p.chunker.seed();
            std::thread::Builder::new()
                .name("ferry-tree".into())
                .spawn_scoped(s, move || build::run(dir_rx, w, cache_writer, seed, &tally.dirs_split))
                .map_err(|e| anyhow::anyhow!("starting the tree builder thread: {e}"))?
        };
        let mut sc = Scanner {
            cfg: p.cfg,
            writer: p.writer,
            chunker: p.chunker,
            reader: Some(p.chunker.reader()),
            pool,
            counters: p.counters,
            tally: p.tally,
            cache: cache_reader,
            chunks: chunk_tx,
            dirs: dir_tx,
            outbox: Vec::new(),
            outbox_entries: 0,
            cwd_private: false,
            depth: 0,
            cwd_id: (0, 0),
            away: false,
            errors: Vec::new(),
            warnings: Vec::new(),
            batch: Batcher::default(),
            workers_dir: None,
            workers_dir_lazy: false,
            recent_ns: p.start_ns - 1_000_000_000,
            force: p.cfg.force,
            job: p.job,
            parent: p.parent,
            cache_by_rel: p.cache_by_rel,
        };
        // On a thread of its own: it moves its working directory (`cwd`), and it recurses
        // once per directory level, down to `MAX_DEPTH`.
        let sources = &p.sources;
        let (scanned, sc) = std::thread::Builder::new()
            .name("ferry-scan".into())
            .stack_size(SCAN_STACK)
            .spawn_scoped(s, move || {
                sc.cwd_private = cwd::private();
                if !sc.cwd_private {
                    tracing::debug!(
                        "the scan thread cannot have a working directory of its own (unshare refused): \
                         entries are named through /proc/self/fd"
                    );
                }
                (sc.scan_sources(sources).and_then(|()| sc.flush_dirs()), sc)
            })
            .map_err(|e| anyhow::anyhow!("starting the scan thread: {e}"))?
            .join()
            .expect("scanner thread");
        let Scanner { errors, mut warnings, chunks, dirs, .. } = sc;
        drop(chunks);
        drop(dirs);
        let built = builder.join().expect("tree builder thread");
        scanned?;
        let (root, cache_writer, build_errors, build_warnings) = built?;
        let mut errors = errors;
        errors.extend(build_errors);
        // Small files are read by the workers, so their lines come from the builder: one order
        // for all, by path.
        errors.sort_by(|a, b| a.path.cmp(&b.path));
        warnings.extend(build_warnings);
        warnings.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((root, errors, warnings, cache_writer))
    })
}

struct Scanner<'a> {
    cfg: &'a BackupConfig,
    writer: &'a BlobWriter,
    chunker: Chunker,
    /// The streaming chunker, its buffer reused for every file (taken out while in use).
    reader: Option<ChunkReader>,
    pool: BufPool,
    counters: &'a Arc<Counters>,
    tally: &'a Arc<Tally>,
    cache: Option<filescache::Reader>,
    chunks: Sender<Work>,
    dirs: Sender<Vec<DirRecord>>,
    /// Records not sent yet, and their entries: they go to the builder in runs of about
    /// `DIR_RECORD` entries, not one by one (waking the builder for each small directory cost
    /// a tenth of an unchanged backup's CPU in futex wake-ups and task switches).
    outbox: Vec<DirRecord>,
    outbox_entries: usize,
    /// The scan thread has a working directory of its own (`cwd`) and moves it along.
    cwd_private: bool,
    /// Directories along the current path (the first `MAX_ENTERED` hold a descriptor).
    depth: usize,
    /// Device and inode of the directory last entered (the scan's working directory unless
    /// `away`).
    cwd_id: (u64, u64),
    /// A subdirectory scan moved the working directory: the directory being scanned must
    /// enter itself again.
    away: bool,
    errors: Vec<EntryError>,
    warnings: Vec<EntryError>,
    /// Small files waiting to be sent to the workers as one batch.
    batch: Batcher,
    /// The directory being scanned, for the workers to open its small files from (by name,
    /// one path component: no path walk, no PATH_MAX); `None` by absolute path.
    workers_dir: Option<Arc<File>>,
    /// The directory being scanned is `Here::Deep`: `workers_dir` is opened when a small file
    /// needs it (path only), and held only until the scan enters a subdirectory.
    workers_dir_lazy: bool,
    /// Files modified after this are not trusted to the files cache (same-second edits).
    recent_ns: i64,
    force: bool,
    job: &'a Job,
    parent: Option<ParentTrees>,
    cache_by_rel: bool,
}

/// A directory's names in one buffer: a million entries take about 12 bytes each plus their
/// names, not a vector and an allocation per name.
#[derive(Default)]
struct Names {
    buf: Vec<u8>,
    /// (start, length) in `buf`.
    at: Vec<(u32, u16)>,
    /// Names that do not fit the compact form (a buffer beyond 4 GiB).
    long: Vec<Vec<u8>>,
}

impl Names {
    fn push(&mut self, name: &[u8]) {
        match (u32::try_from(self.buf.len()), u16::try_from(name.len())) {
            (Ok(start), Ok(len)) if self.long.is_empty() => {
                self.buf.extend_from_slice(name);
                self.at.push((start, len));
            }
            _ => self.long.push(name.to_vec()),
        }
    }
    fn len(&self) -> usize {
        self.at.len() + self.long.len()
    }
    /// Sort by name bytes; afterwards `get(i)` is the i-th name in order.
    fn sort(&mut self) {
        if !self.long.is_empty() {
            // Rare (4 GiB of names): everything as vectors.
            let mut all: Vec<Vec<u8>> = (0..self.at.len()).map(|i| self.get(i).to_vec()).collect();
            all.append(&mut self.long);
            all.sort_unstable();
            self.buf.clear();
            self.at.clear();
            self.long = all;
            return;
        }
        let buf = &self.buf;
        self.at.sort_unstable_by(|a, b| buf[a.0 as usize..][..a.1 as usize].cmp(&buf[b.0 as usize..][..b.1 as usize]));
    }
    fn get(&self, i: usize) -> &[u8] {
        match self.at.get(i) {
            Some(&(start, len)) => &self.buf[start as usize..][..len as usize],
            None => &self.long[i - self.at.len()],
        }
    }
}

fn is_excluded(excludes: &[glob::Pattern], abs: &Path, name: &[u8]) -> bool {
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    excludes.iter().any(|p| p.matches_with(&String::from_utf8_lossy(name), opts) || p.matches_path_with(abs, opts))
}

impl Scanner<'_> {
    fn error(&mut self, what: &Path, e: impl std::fmt::Display) {
        self.counters.errors.fetch_add(1, Relaxed);
        let error = EntryError::new(EntryErrorKind::Read, what, e);
        tracing::warn!("{error}");
        self.errors.push(error);
    }

    /// A single directory source is the snapshot's root; otherwise the root lists each source
    /// by its base name.
    fn scan_sources(&mut self, sources: &[PathBuf]) -> Result<()> {
        if let [only] = sources {
            if std::fs::metadata(only).map(|m| m.is_dir()).unwrap_or(false) {
                self.scan_dir(only, only, PathBuf::new(), true)?;
                return Ok(());
            }
        }
        let mut nodes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for src in sources {
            let name = src.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_else(|| b"root".to_vec());
            if !seen.insert(name.clone()) {
                anyhow::bail!(
                    "two sources are both named {:?}: back them up separately",
                    String::from_utf8_lossy(&name)
                );
            }
            // A source is opened by its path, not from the directory a previous one left.
            (self.workers_dir, self.workers_dir_lazy) = (None, false);
            if let Some(n) = self.entry(src, src, &name, Path::new(""))? {
                nodes.push(n);
            }
        }
        nodes.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        self.send_dir(DirRecord { rel: PathBuf::new(), nodes, root: true, last: true })
    }

    /// Queue the directory record for the builder.
    fn send_dir(&mut self, d: DirRecord) -> Result<()> {
        self.outbox_entries += d.nodes.len() + 1;
        self.outbox.push(d);
        if self.outbox_entries >= DIR_RECORD { self.flush_dirs() } else { Ok(()) }
    }

    /// Send the queued directory records, after the batch of small files their entries may
    /// wait for.
    fn flush_dirs(&mut self) -> Result<()> {
        self.send_batch()?;
        self.outbox_entries = 0;
        let run = std::mem::take(&mut self.outbox);
        if run.is_empty() {
            return Ok(());
        }
        self.dirs.send(run).map_err(|_| anyhow::anyhow!("the tree builder stopped"))
    }

    /// Scan the directory `abs`, opened as `at` (by name when the thread's working directory
    /// is its parent, else absolute).
    fn scan_dir(&mut self, abs: &Path, at: &Path, rel: PathBuf, root: bool) -> Result<()> {
        let mut names = Names::default();
        // The directory the thread is in: this one's parent when it was reached by name.
        let parent = self.cwd_id;
        let mut held = PathBuf::new();
        let here = match self.enter(at, root) {
            Ok(here) => {
                if let Here::Named(dir) = &here {
                    held = cwd::in_held(dir);
                }
                let listed = match &here {
                    Here::Held(_) | Here::Deep => std::fs::read_dir("."),
                    Here::Named(_) => std::fs::read_dir(&held),
                    Here::Absolute => std::fs::read_dir(abs),
                };
                match listed {
                    Ok(rd) => {
                        for e in rd {
                            match e {
                                Ok(e) => names.push(e.file_name().as_bytes()),
                                Err(err) => self.error(abs, err),
                            }
                        }
                    }
                    Err(e) => self.error(abs, e),
                }
                here
            }
            Err(e) => {
                self.error(abs, e);
                Here::Absolute
            }
        };
        self.depth += 1;
        names.sort();
        let mut nodes = Vec::with_capacity(names.len().min(DIR_RECORD));
        let mut workers_dir = match &here {
            Here::Held(dir) | Here::Named(dir) => Some(dir.clone()),
            Here::Deep | Here::Absolute => None,
        };
        for i in 0..names.len() {
            let name = names.get(i);
            let child = abs.join(fsmeta::path_of(name));
            let named;
            let local = match &here {
                Here::Held(_) | Here::Deep => fsmeta::path_of(name),
                Here::Named(_) => {
                    named = held.join(fsmeta::path_of(name));
                    named.as_path()
                }
                Here::Absolute => child.as_path(),
            };
            // A subdirectory's scan leaves `cwd_id` as this directory's again, but not
            // `workers_dir`.
            self.workers_dir = workers_dir.clone();
            self.workers_dir_lazy = matches!(here, Here::Deep);
            if let Some(n) = self.entry(&child, local, name, &rel)? {
                if matches!(here, Here::Deep) {
                    // Opened for a small file, kept for the next; not held down a subdirectory.
                    workers_dir = if n.0.kind == NodeType::Dir { None } else { self.workers_dir.take() };
                }
                nodes.push(n);
            }
            if self.away {
                match &here {
                    Here::Held(dir) => {
                        cwd::enter(dir)
                            .map_err(|e| anyhow::anyhow!("re-entering {} after a subdirectory: {e}", abs.display()))?;
                        self.away = false;
                    }
                    // A subdirectory could not come back up (it was moved while scanned): the
                    // rest of this one is not reachable safely; the nearest held ancestor
                    // enters itself again.
                    Here::Deep => {
                        self.error(abs, "the scan lost its way back into it (moved while it was scanned); the rest of it is left out");
                        break;
                    }
                    Here::Named(_) | Here::Absolute => {}
                }
            }
            if nodes.len() == DIR_RECORD {
                let run = std::mem::replace(&mut nodes, Vec::with_capacity(DIR_RECORD));
                self.send_dir(DirRecord { rel: rel.clone(), nodes: run, root, last: false })?;
            }
        }
        self.depth -= 1;
        self.cwd_id = parent;
        match here {
            // The working directory is this one now (or a subdirectory's): the parent enters
            // itself again.
            Here::Held(_) => self.away = true,
            // Back up through `..`, which must be the directory this one was entered from.
            Here::Deep if !self.away => {
                if let Err(e) = cwd::up(parent) {
                    self.error(abs, e);
                    self.away = true;
                }
            }
            Here::Deep | Here::Named(_) | Here::Absolute => {}
        }
        self.send_dir(DirRecord { rel, nodes, root, last: true })
    }

    /// Make the directory `at` the thread's working directory (`Here::Held` or, deeper than
    /// `MAX_ENTERED` levels, `Here::Deep`); without a private working directory, hold it open
    /// to name its entries through (`Here::Named`); or `Here::Absolute` when the scan goes by
    /// absolute paths there: out of descriptors, no `/proc`, or (with a private working
    /// directory) deeper than `MAX_ENTERED` below a directory scanned by absolute path.
    /// `root`: the source itself, which may be a symlink to it.
    fn enter(&mut self, at: &Path, root: bool) -> std::io::Result<Here> {
        if !self.cwd_private {
            if open::proc_fds().is_none() {
                return Ok(Here::Absolute);
            }
            return match cwd::open_dir(at, root) {
                Ok(dir) => Ok(Here::Named(Arc::new(dir))),
                Err(e) if cwd::out_of_descriptors(&e) => Ok(Here::Absolute),
                Err(e) => Err(e),
            };
        }
        let deep = self.depth >= MAX_ENTERED;
        if deep && at.is_absolute() {
            return Ok(Here::Absolute);
        }
        let dir = match cwd::open_dir(at, root) {
            Ok(dir) => dir,
            Err(e) if cwd::out_of_descriptors(&e) => return Ok(Here::Absolute),
            Err(e) => return Err(e),
        };
        let id = cwd::id_of(&dir)?;
        cwd::enter(&dir)?;
        self.cwd_id = id;
        Ok(if deep { Here::Deep } else { Here::Held(Arc::new(dir)) })
    }

    /// One entry: its node and how its content will be known. `None` when skipped.
    /// `local` is how the scan thread reaches it: by name inside an entered directory, else
    /// `abs`.
    fn entry(&mut self, abs: &Path, local: &Path, name: &[u8], parent_rel: &Path) -> Result<Option<(Node, Pending)>> {
        self.job.cancel.check()?;
        if is_excluded(&self.cfg.excludes, abs, name) {
            return Ok(None);
        }
        let md = match std::fs::symlink_metadata(local) {
            Ok(m) => m,
            Err(e) => {
                self.error(abs, e);
                return Ok(None);
            }
        };
        let mut node = match fsmeta::node_from(name, local, &md) {
            Ok(n) => n,
            Err(e) => {
                self.error(abs, e);
                return Ok(None);
            }
        };
        let pending = match node.kind {
            // What restore would refuse (and a workload's endless nesting must not exhaust
            // the scan thread's stack).
            NodeType::Dir if self.depth > MAX_DEPTH => {
                self.error(abs, format!("nested deeper than {MAX_DEPTH} directories; left out"));
                return Ok(None);
            }
            NodeType::Dir => {
                self.tally.dirs.fetch_add(1, Relaxed);
                let rel = parent_rel.join(fsmeta::path_of(name));
                self.scan_dir(abs, local, rel.clone(), false)?;
                Pending::SubDir(rel)
            }
            NodeType::File => match self.file(abs, local, parent_rel, &md, &mut node) {
                Ok(p) => p,
                Err(_) if self.job.cancel.is_cancelled() => return Err(Cancelled.into()),
                Err(e) => {
                    self.error(abs, e);
                    return Ok(None);
                }
            },
            _ => {
                self.tally.other.fetch_add(1, Relaxed);
                Pending::Ready(Content::None)
            }
        };
        Ok(Some((node, pending)))
    }

    fn file(
        &mut self,
        abs: &Path,
        local: &Path,
        dir: &Path,
        md: &std::fs::Metadata,
        node: &mut Node,
    ) -> std::io::Result<Pending> {
        let key =
            FileKey { dev: md.dev(), ino: md.ino(), size: md.size(), mtime_ns: node.mtime_ns, ctime_ns: node.ctime_ns };
        let rel;
        let path = if self.cache_by_rel {
            rel = dir.join(fsmeta::path_of(&node.name));
            rel.as_os_str().as_bytes()
        } else {
            abs.as_os_str().as_bytes()
        };
        self.tally.bytes_total.fetch_add(md.size(), Relaxed);
        let lookup = match self.cache.as_mut() {
            Some(c) => c.lookup(path, &key).unwrap_or(Lookup::Miss),
            None => Lookup::Miss,
        };
        let lookup = match lookup {
            Lookup::Hit { segs, touch } if !self.force && segs_known(self.writer, &segs) => {
                self.unchanged(md.size());
                return Ok(Pending::Cached { path: touch.then(|| path.to_vec()), segs });
            }
            other => other,
        };
        // Not in this machine's cache: the parent snapshot may know it.
        if !self.force {
            let from_parent = self
                .parent
                .as_mut()
                .and_then(|p| p.file(dir, &node.name))
                .and_then(|n| same_file(n, md.size(), node.mtime_ns, node.ctime_ns))
                .filter(|segs| segs_known(self.writer, segs));
            if let Some(segs) = from_parent {
                self.unchanged(md.size());
                let cache = self.cacheable(node).then(|| (path.to_vec(), key));
                return Ok(Pending::Parent { segs, cache });
            }
        }
        match lookup {
            Lookup::Miss => self.tally.files_new.fetch_add(1, Relaxed),
            _ => self.tally.files_changed.fetch_add(1, Relaxed),
        };
        if md.size() > 0 && md.size() < u64::from(self.chunker.params().min) && md.blocks() * 512 >= md.size() {
            let cache = self.cacheable(node).then(|| (path.to_vec(), key));
            let dir = self.dir_for_workers();
            let (rx, full) = self.batch.push(abs.to_path_buf(), dir, md);
            if full {
                self.send_batch()?;
            }
            return Ok(Pending::Small { rx, cache });
        }
        let stamp = Stamp::of(md);
        let file = open_for_read(At::Path(local), &stamp)?;
        let segs = self.read_file(&file, md)?;
        // A file that changed while it was read is kept as read, but not cached.
        let stable = stamp.check(&file).unwrap_or(false);
        if !stable {
            self.warnings.push(changed_while_read(abs));
        }
        let read_len: u64 = segs.iter().map(PendingSeg::len).sum();
        node.size = read_len;
        self.counters.files_done.fetch_add(1, Relaxed);
        let cache = (stable && self.cacheable(node)).then(|| (path.to_vec(), key));
        Ok(Pending::Chunks { segs, cache })
    }

    /// The directory being scanned, for the workers (see `workers_dir`).
    fn dir_for_workers(&mut self) -> Option<Arc<File>> {
        if self.workers_dir.is_none() && self.workers_dir_lazy {
            self.workers_dir_lazy = false;
            self.workers_dir = cwd::open_path(Path::new(".")).ok().map(Arc::new);
        }
        self.workers_dir.clone()
    }

    /// Send the small files collected so far to the workers, their bytes held from the budget.
    fn send_batch(&mut self) -> std::io::Result<()> {
        let Some((files, bytes)) = self.batch.take() else { return Ok(()) };
        let permit = self.job.limits.memory.as_ref().map(|b| b.acquire(bytes));
        let batch = FileBatch { files, permit, counters: self.counters.clone(), tally: self.tally.clone() };
        self.chunks.send(Work::Files(batch)).map_err(|_| std::io::Error::other("the blob workers stopped"))
    }

    fn unchanged(&self, size: u64) {
        self.tally.files_unchanged.fetch_add(1, Relaxed);
        self.counters.files_done.fetch_add(1, Relaxed);
        self.counters.bytes_done.fetch_add(size, Relaxed);
    }

    /// Not modified within the last second before the backup started (same-second edits
    /// could go unseen by a later stat).
    fn cacheable(&self, node: &Node) -> bool {
        node.mtime_ns < self.recent_ns && node.ctime_ns < self.recent_ns
    }

    fn queue_chunk(&mut self, data: ChunkData, out: &mut Vec<PendingSeg>) -> std::io::Result<()> {
        let len = data.len() as u32;
        if self.job.cancel.is_cancelled() {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, Cancelled));
        }
        self.counters.bytes_done.fetch_add(u64::from(len), Relaxed);
        self.tally.bytes_read.fetch_add(u64::from(len), Relaxed);
        let (tx, rx) = bounded(1);
        let permit = self.job.limits.memory.as_ref().map(|b| b.acquire(u64::from(len)));
        self.chunks
            .send(Work::Chunk(ChunkJob { data, reply: tx, permit }))
            .map_err(|_| std::io::Error::other("the blob workers stopped"))?;
        out.push(PendingSeg::Blob(rx, len));
        Ok(())
    }

    /// Read and chunk `file`, opened for it as `md` says it was.
    fn read_file(&mut self, file: &File, md: &std::fs::Metadata) -> std::io::Result<Vec<PendingSeg>> {
        let mut out = Vec::new();
        let size = md.size();
        if size == 0 {
            return Ok(out);
        }
        let allocated = md.blocks() * 512;
        let sparse = allocated < size;
        // Decided once per file: past the page cache when it is big and not mostly cached.
        let direct = read_directly(file, size, allocated);
        if sparse {
            let min_hole = u64::from(self.chunker.params().min);
            // The direct readers' buffers, passed from range to range.
            let mut bufs = Vec::new();
            for (start, len, data) in merge_small_holes(data_ranges(file, size)?, min_hole) {
                if !data {
                    out.push(PendingSeg::Zero(len));
                    continue;
                }
                let direct = if direct { DirectReader::open(file, start, len, &mut bufs) } else { None };
                match direct {
                    Some(mut r) => {
                        self.chunk_stream(&mut r, len, &mut out)?;
                        bufs = r.into_buffers();
                    }
                    None => {
                        let mut f = file;
                        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
                        self.chunk_stream(f.take(len), len, &mut out)?;
                    }
                }
            }
        } else if size < u64::from(self.chunker.params().min) {
            let mut data = self.pool.take();
            file.take(size).read_to_end(&mut data)?;
            if !data.is_empty() {
                self.queue_chunk(ChunkData::Owned(data), &mut out)?;
            }
        } else {
            // A big file not in the page cache is read past it (to its end, as `file` would be).
            let direct = if direct { DirectReader::open(file, 0, u64::MAX, &mut Vec::new()) } else { None };
            match direct {
                Some(r) => self.chunk_stream(r, size, &mut out)?,
                None => self.chunk_stream(file, size, &mut out)?,
            }
        }
        Ok(out)
    }

    /// Chunk a stream of about `len` bytes, by several threads when it is big enough
    /// (`PARALLEL_CHUNKING_MIN`) and the limits allow it (then by a reader of its own, whose
    /// blocks of several chunks per thread are dropped afterwards).
    ///
    /// A stream of at least a block (`2 × max`) goes to the workers as parts of shared blocks
    /// (`ChunkReader::chunk_shared`), not copied, unless the job has a memory budget: a chunk
    /// holds its whole block (8 MiB), and the three or four blocks a backup then holds at once
    /// (15–20 MiB more peak RSS than copying, measured on the peer corpus) are outside the
    /// budget, which counts chunk bytes. A shorter stream, or one under a budget, is copied
    /// chunk by chunk out of the reader's block into pooled buffers (a chunk of a few bytes
    /// must not hold a whole block either).
    fn chunk_stream<R: Read>(&mut self, r: R, len: u64, out: &mut Vec<PendingSeg>) -> std::io::Result<()> {
        let parallel = len >= PARALLEL_CHUNKING_MIN && parallel_chunking(&self.job.limits);
        let shared = len >= 2 * u64::from(self.chunker.params().max) && self.job.limits.memory.is_none();
        let threads = if parallel { self.job.limits.threads } else { 1 };
        let mut reader = if parallel {
            tracing::debug!("a big file chunked by {threads} threads");
            self.chunker.reader()
        } else {
            self.reader.take().unwrap_or_else(|| self.chunker.reader())
        };
        let r = match (shared, parallel) {
            (true, _) => reader.chunk_shared(r, threads, |c| self.queue_chunk(ChunkData::Shared(c), out)),
            (false, true) => reader.chunk_parallel(r, threads, |c| {
                let data = self.pool.filled(c);
                self.queue_chunk(ChunkData::Owned(data), out)
            }),
            (false, false) => reader.chunk(r, |c| {
                let data = self.pool.filled(c);
                self.queue_chunk(ChunkData::Owned(data), out)
            }),
        };
        if !parallel {
            self.reader = Some(reader);
        }
        r
    }
}

/// Files at least this big may be chunked by several threads (`chunk_stream`).
const PARALLEL_CHUNKING_MIN: u64 = 64 << 20;

/// Directories entered holding a descriptor at once at most (each holds it while its subtree
/// is scanned); deeper ones are entered without holding one and come back up through `..`.
const MAX_ENTERED: usize = 256;

/// Directory nesting scanned at most: a directory deeper is an error line and left out (restore
/// refuses deeper trees).
const MAX_DEPTH: usize = crate::restore::MAX_DEPTH;
/// The scan thread's stack: one `scan_dir` and `entry` frame per level, down to `MAX_DEPTH`
/// (measured in a debug build: 2049 levels overflow 8 MiB and fit in 16). Only what is touched
/// is memory.
const SCAN_STACK: usize = 64 << 20;

/// How the scan thread reaches the directory being scanned.
enum Here {
    /// It is the working directory, entered by this descriptor, which enters it again after a
    /// subdirectory moved the working directory.
    Held(Arc<File>),
    /// It is the working directory, entered deeper than `MAX_ENTERED` levels without holding
    /// a descriptor: each subdirectory comes back up to it through `..`, checked to be this
    /// directory (device and inode), so a directory moved while scanned cannot lead the scan
    /// into another tree.
    Deep,
    /// Held open by this descriptor, its entries named through it (`cwd::in_held`): the
    /// thread's working directory is the process's (`unshare` refused).
    Named(Arc<File>),
    /// By absolute path (out of descriptors, or no `/proc` where the working directory is the
    /// process's).
    Absolute,
}
/// Blob workers from which a big file is chunked in parallel. One thread chunks about
/// 2.2 GB/s and a worker stores 200–500 MB/s, so below about four workers the chunker keeps
/// up on its own; measured on 2 cores (benches/bigfile.sh, 8 GiB in one file), chunking in
/// parallel there took 5–12 % more CPU for the same wall time.
const PARALLEL_CHUNKING_WORKERS: usize = 4;

/// Whether a big file is chunked by several threads: as `limits` says, or from
/// `PARALLEL_CHUNKING_WORKERS` workers; never with one.
fn parallel_chunking(limits: &crate::job::Limits) -> bool {
    limits.threads > 1 && limits.parallel_chunking.unwrap_or(limits.threads >= PARALLEL_CHUNKING_WORKERS)
}

fn segs_known(w: &BlobWriter, segs: &[repo_format::Segment]) -> bool {
    segs.iter().all(|s| match s {
        repo_format::Segment::Blob { id, .. } => w.is_known(BlobKind::Data, id),
        repo_format::Segment::Indirect { id, .. } => w.is_known(BlobKind::Tree, &repo_format::BlobId(id.0)),
        repo_format::Segment::Zero { .. } => true,
    })
}

/// (start, length, holds data) ranges covering `0..size`, from SEEK_DATA / SEEK_HOLE.
pub(crate) fn data_ranges(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64, bool)>> {
    use nix::unistd::{Whence, lseek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => size, // no data after pos
            Err(e) => return Err(e.into()),
        };
        if data > pos {
            out.push((pos, data.min(size) - pos, false));
        }
        if data >= size {
            break;
        }
        let hole = match lseek(file, data as i64, Whence::SeekHole) {
            Ok(h) => (h as u64).min(size),
            Err(e) => return Err(e.into()),
        };
        out.push((data, hole - data, true));
        pos = hole;
    }
    Ok(out)
}

/// Read holes shorter than `min` as data, so that fragmented extents do not cut tiny chunks.
fn merge_small_holes(ranges: Vec<(u64, u64, bool)>, min: u64) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::with_capacity(ranges.len());
    for (start, len, data) in ranges {
        let data = data || len < min;
        match out.last_mut() {
            Some(last) if last.2 == data => last.1 += len,
            _ => out.push((start, len, data)),
        }
    }
    out
}

/// Walk the sources with stat only and publish totals for the progress display, until `stop`
/// or `cancel`.
pub(crate) fn count_in_background(
    sources: Vec<PathBuf>,
    excludes: Vec<glob::Pattern>,
    counters: Arc<Counters>,
    stop: CancelToken,
    cancel: CancelToken,
) {
    // Down to the scan's `MAX_DEPTH` only: a workload's endless nesting must not exhaust the
    // stack (it did, at about 2000 levels, before the limit). No thread, no totals.
    let counting = move || {
        let halt = || stop.is_cancelled() || cancel.is_cancelled();
        fn walk(p: &Path, depth: usize, ex: &[glob::Pattern], c: &Counters, halt: &dyn Fn() -> bool) {
            if halt() {
                return;
            }
            let Ok(md) = std::fs::symlink_metadata(p) else { return };
            if md.is_dir() && depth <= MAX_DEPTH {
                let Ok(rd) = std::fs::read_dir(p) else { return };
                for e in rd.flatten() {
                    let name = e.file_name();
                    let child = e.path();
                    if !is_excluded(ex, &child, name.as_bytes()) {
                        walk(&child, depth + 1, ex, c, halt);
                    }
                }
            } else if md.is_file() {
                c.files_total.fetch_add(1, Relaxed);
                c.bytes_total.fetch_add(md.size(), Relaxed);
            }
        }
        for s in &sources {
            walk(s, 0, &excludes, &counters, &halt);
        }
    };
    let _ = std::thread::Builder::new().name("ferry-count".into()).stack_size(SCAN_STACK).spawn(counting);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_grow_exactly_and_come_back_no_bigger_than_kept() {
        let pool = BufPool::new(2, 1 << 20);
        let b = pool.filled(&[1u8; 1000]);
        pool.give(b);
        // The same buffer, grown to exactly one byte more (doubled, it would be 2000).
        let b = pool.filled(&[2u8; 1001]);
        assert_eq!((b.capacity(), b[1000]), (1001, 2));
        pool.give(b);
        let big = pool.filled(&vec![3u8; (1 << 20) + 1]);
        assert_eq!(big.capacity(), (1 << 20) + 1);
        pool.give(big);
        let back = pool.take();
        assert!(back.is_empty());
        assert_eq!(back.capacity(), 1 << 20, "an oversized buffer comes back shrunk to what is kept, not freed");
    }
}
