//! Backing up a disk: read only what may hold data, cut it into aligned fixed-size chunks.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use crossbeam_channel::bounded;
use repo_format::{BlobKind, Content, Node, NodeType, Repository, Segment, SnapshotId, Summary, Tree, TreeId};

use super::ranges::Ranges;
use super::{Disk, MODE_BLOCK, MODE_TAG};
use crate::backup::build::PendingSeg;
use crate::backup::scan::{BufPool, ChunkData, ChunkJob, Work, data_ranges, spawn_workers};
use crate::backup::stream::StreamResolver;
use crate::backup::{Outcome, now_ns, parent_of, snapshot, start_writer};
use crate::disk::parent::ParentCursor;
use crate::identity::Identity;
use crate::job::Job;
use crate::progress::Counters;

/// Which parts of the disk to read.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Everything (holes of an image file are skipped; zero chunks are not stored).
    Full,
    /// Only these ranges hold data (`GetMetadataAllocated`); the rest is zeros.
    Allocated(Ranges),
    /// Only these ranges changed since the parent snapshot (`GetMetadataDelta`).
    Changed(Ranges),
}

/// A disk backup request.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// The node's name in the snapshot (image file name, or the volume name).
    pub name: String,
    pub host: String,
    pub tags: Vec<(String, String)>,
    pub parent: Option<SnapshotId>,
    pub mode: Mode,
    pub cache_dir: Option<PathBuf>,
    /// Refuse a symlink at `path` (an image found inside a workload's volume).
    pub no_follow: bool,
    /// What the disk is a copy of (see `BackupConfig::identity`).
    pub identity: Option<Identity>,
    pub requester: Option<String>,
}

/// Back up a disk (device or image) into a snapshot. Memory does not grow with the disk: chunk
/// ids are resolved as they come and long lists go into indirect blobs as they fill. Cancelled:
/// what was uploaded is indexed, no snapshot is written and the error is `Cancelled`.
pub async fn run(repo: Arc<Repository>, cfg: DiskConfig, job: &Job) -> Result<Outcome> {
    let counters = job.progress.clone();
    let started = Instant::now();
    let start_ns = now_ns();
    let disk = Disk::open_read(&cfg.path, cfg.no_follow)?;
    let md = disk.file.metadata()?;
    let repo = crate::backup::load_index(&repo, &job.limits).await?;
    let chunk = u64::from(repo.config().fixed_chunk_size);
    let paths = vec![crate::backup::recorded_path(&cfg.path)];
    let parent = parent_of(&repo, cfg.parent, cfg.identity.as_ref(), &cfg.host, &paths).await?;
    let parent_map = match (&cfg.mode, &parent) {
        (Mode::Changed(_), Some((_, p))) => Some(ParentCursor::open(repo.clone(), p, disk.size).await?),
        (Mode::Changed(_), None) => {
            bail!("--changed-blocks needs a parent snapshot of this disk (none found): run a full backup first")
        }
        _ => None,
    };
    if let Mode::Changed(r) | Mode::Allocated(r) = &cfg.mode {
        if r.max_end() > disk.size {
            bail!("the block list reaches byte {}, beyond the disk's {} bytes", r.max_end(), disk.size);
        }
    }
    let size = disk.size;
    counters.files_total.store(1, Relaxed);
    counters.bytes_total.store(disk.size, Relaxed);
    let (writer, workers, resumed) = start_writer(&repo, cfg.cache_dir.as_deref(), &job.limits).await?;
    let bytes_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pipeline = {
        let (writer, counters, bytes_read, mode) =
            (writer.clone(), counters.clone(), bytes_read.clone(), cfg.mode.clone());
        let job = job.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<Segment>> {
            let queue = job.limits.chunk_queue.max(1);
            let (tx, rx) = bounded::<Work>(queue);
            let pool = BufPool::new(crate::backup::scan::idle_buffers(&job.limits), chunk as usize);
            std::thread::scope(|s| {
                spawn_workers(s, workers, &rx, &writer, &pool);
                drop(rx);
                let io = Io { tx: &tx, pool: &pool, counters: &counters, bytes_read: &bytes_read, job: &job };
                let out = StreamResolver::new(&writer, 2 * (queue + workers));
                let r = read_chunks(&disk, chunk, &mode, parent_map, io, out);
                drop(tx);
                r
            })
        })
    };
    let segs = match pipeline.await.expect("disk pipeline") {
        Ok(s) => s,
        Err(e) => {
            // Index what was uploaded so the next backup reuses it, then report. When the
            // writer failed, its error (storage) is the cause; the pipeline only saw it stop.
            if let Err(w) = repo.finish_writer(writer).await {
                return Err(anyhow::Error::new(w).context("uploading packs and index"));
            }
            return Err(e);
        }
    };
    let mut node = Node::new(cfg.name.clone().into_bytes(), NodeType::File);
    node.mode = if md.file_type().is_file() { md.mode() & 0o7777 } else { 0o600 };
    node.uid = md.uid();
    node.gid = md.gid();
    node.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    node.atime_ns = node.mtime_ns;
    node.ctime_ns = md.ctime() * 1_000_000_000 + md.ctime_nsec();
    node.size = size;
    node.content = Content::Segments(segs);
    let tree = Tree { nodes: vec![node.clone()] }.encode()?;
    let w = writer.clone();
    let saved = tokio::task::spawn_blocking(move || w.save(BlobKind::Tree, &tree)).await.expect("tree save");
    let finished = repo.finish_writer(writer).await.context("uploading packs and index");
    let (saved, st) = match (saved, finished) {
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e.into()),
        (Ok(s), Ok(w)) => (s, w.stats),
    };
    let root = TreeId(saved.id.0);
    let summary = Summary {
        files_new: 1,
        bytes_read: bytes_read.load(Relaxed),
        bytes_total: node.size,
        bytes_added: st.bytes_added.load(Relaxed),
        bytes_added_stored: st.bytes_stored.load(Relaxed),
        data_blobs_added: st.data_blobs.load(Relaxed),
        tree_blobs_added: st.tree_blobs.load(Relaxed),
        duration_ns: started.elapsed().as_nanos() as u64,
        ..Summary::default()
    };
    let mut tags = cfg.tags.clone();
    for (k, v) in
        [(MODE_TAG, MODE_BLOCK.to_string()), ("device-size", node.size.to_string()), ("chunk-size", chunk.to_string())]
    {
        if !tags.iter().any(|(tk, _)| tk == k) {
            tags.push((k.to_string(), v));
        }
    }
    if md.is_file() && !tags.iter().any(|(k, _)| k == "image") {
        tags.push(("image".into(), cfg.name.clone()));
    }
    if let Some(id) = &cfg.identity {
        id.tag(&mut tags, cfg.requester.as_deref());
    }
    let snapshot = snapshot(start_ns, root, parent.map(|(id, _)| id), &cfg.host, paths, tags, summary);
    crate::prune::guard_long_backup(&repo, root, started, job).await?;
    let snapshot_id = repo.save_snapshot(&snapshot).await.context("saving the snapshot")?;
    Ok(Outcome { snapshot_id, snapshot, errors: Vec::new(), warnings: Vec::new(), resumed })
}

/// Where the reader's chunks and counts go.
struct Io<'a> {
    tx: &'a crossbeam_channel::Sender<Work>,
    pool: &'a BufPool,
    counters: &'a Counters,
    bytes_read: &'a std::sync::atomic::AtomicU64,
    job: &'a Job,
}

/// The reader: decides per chunk, reads, skips zeros, queues the rest.
fn read_chunks(
    disk: &Disk,
    chunk: u64,
    mode: &Mode,
    mut parent: Option<ParentCursor>,
    io: Io<'_>,
    mut out: StreamResolver<'_>,
) -> Result<Vec<Segment>> {
    let Io { tx, pool, counters, bytes_read, job } = io;
    // Holes of an image file hold nothing: read only data extents.
    let holes = if !disk.is_device && matches!(mode, Mode::Full) {
        let data: Vec<(u64, u64)> =
            data_ranges(&disk.file, disk.size)?.into_iter().filter(|r| r.2).map(|(o, l, _)| (o, l)).collect();
        Some(Ranges::new(data))
    } else {
        None
    };
    let n = disk.size.div_ceil(chunk);
    let mut buf = vec![0u8; chunk as usize];
    let (mut c1, mut c2) = (0usize, 0usize);
    for i in 0..n {
        job.cancel.check()?;
        let off = i * chunk;
        let len = chunk.min(disk.size - off);
        let read = match (mode, &holes) {
            (Mode::Changed(r), _) => {
                // The parent is walked for every chunk, changed or not, to stay in step.
                let before = match parent.as_mut() {
                    Some(p) => p.next_chunk(len)?,
                    None => None,
                };
                if !r.overlaps(off, len, &mut c1) {
                    match before {
                        Some((id, l)) => out.push(PendingSeg::Known(id, l))?,
                        None => out.push(PendingSeg::Zero(len))?,
                    }
                    counters.bytes_done.fetch_add(len, Relaxed);
                    continue;
                }
                true
            }
            (Mode::Allocated(r), _) => r.overlaps(off, len, &mut c1),
            (Mode::Full, Some(data)) => data.overlaps(off, len, &mut c2),
            (Mode::Full, None) => true,
        };
        counters.bytes_done.fetch_add(len, Relaxed);
        if !read {
            out.push(PendingSeg::Zero(len))?;
            continue;
        }
        let b = &mut buf[..len as usize];
        disk.file.read_exact_at(b, off).with_context(|| format!("reading the disk at offset {off}"))?;
        bytes_read.fetch_add(len, Relaxed);
        if repo_format::is_zero(b) {
            out.push(PendingSeg::Zero(len))?;
            continue;
        }
        let (rtx, rrx) = bounded(1);
        let permit = job.limits.memory.as_ref().map(|m| m.acquire(len));
        tx.send(Work::Chunk(ChunkJob { data: ChunkData::Owned(pool.filled(b)), reply: rtx, permit }))
            .map_err(|_| anyhow::anyhow!("the blob workers stopped"))?;
        out.push(PendingSeg::Blob(rrx, len as u32))?;
    }
    Ok(out.finish()?)
}
