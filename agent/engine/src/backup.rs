//! The backup engine: a directory tree (or files) into a snapshot.
//!
//! Three stages overlap, with bounded queues between them so memory does not grow with the
//! input:
//! 1. the scanner (`scan`, one thread) walks the sources in name order, stats every entry,
//!    asks the files cache, and reads and chunks only new or changed files, queueing each chunk;
//!    a new or changed file below the chunker's minimum it does not read: it queues it in a
//!    batch of small files (`small`);
//! 2. blob workers (one per core) hash, dedup, compress, encrypt and pack the chunks
//!    (`BlobWriter::save`), answering each chunk's one-shot channel with its id; a batch of
//!    small files they read and store file by file, so small files are read by every worker;
//! 3. the tree builder (`build`, one thread) receives directories in post-order, waits for their
//!    files' chunk ids, encodes and saves each tree blob, and records files in the files cache.
//!
//! Memory bound: `CHUNK_QUEUE` chunks of at most the chunker's max size (4 MiB by default)
//! waiting, one chunk per worker in progress, the writer's open packs' buffers (1 MiB each) and
//! `DIR_QUEUE` directory records of at most `DIR_RECORD` entries. With the defaults and 2 cores: about 8 × 4 MiB + 2 × 4 MiB +
//! 5 MiB + uploads (two 8 MiB parts each) ≈ 80 MiB at worst; typical is much less since most
//! chunks are far below the maximum. A queued batch of small files holds paths, not data (its
//! worker reads one file at a time, below the chunker's minimum). `FERRY_CHUNK_QUEUE` overrides the queue length.

pub(crate) mod build;
pub(crate) mod cwd;
pub(crate) mod open;
pub(crate) mod parent;
pub(crate) mod scan;
pub(crate) mod small;
pub(crate) mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use repo_format::{BlobWriter, Repository, Resumed, Snapshot, SnapshotId, Summary, TreeId, WriterOptions};

use crate::filescache;
use crate::identity::Identity;
use crate::job::{CancelToken, Job, Limits};
use crate::report::{EntryError, EntryErrorKind};

/// Runs of directory records (about `DIR_RECORD` entries each) waiting for the tree builder.
const DIR_QUEUE: usize = 128;
/// Most entries in one directory record: a big directory is sent in runs of this many.
const DIR_RECORD: usize = 512;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<glob::Pattern>,
    pub host: String,
    pub tags: Vec<(String, String)>,
    pub parent: Option<SnapshotId>,
    pub force: bool,
    /// Where the files cache lives (None: no cache).
    pub cache_dir: Option<PathBuf>,
    /// What the sources are a copy of (a PVC): the parent is then the newest snapshot of the
    /// same identity from any host or path, and the files cache follows the volume.
    pub identity: Option<Identity>,
    /// Who asked for the backup (recorded as the `requester` tag).
    pub requester: Option<String>,
}

/// Result of a backup.
#[derive(Debug)]
pub struct Outcome {
    pub snapshot_id: SnapshotId,
    pub snapshot: Snapshot,
    /// Entries that could not be read or stored.
    pub errors: Vec<EntryError>,
    /// Entries that changed while being read (kept, but worth knowing); the files cache not
    /// updated.
    pub warnings: Vec<EntryError>,
    /// Packs of an interrupted backup that this one indexed and reused.
    pub resumed: Resumed,
}

/// A backup's result as plain, serializable data (what the agent copies into a status).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupReport {
    pub snapshot_id: String,
    pub parent: Option<String>,
    pub identity: Option<String>,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    /// Directories stored in parts (each more than 65536 entries or 16 MiB of metadata).
    #[serde(default)]
    pub dirs_split: u64,
    pub other_entries: u64,
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub bytes_added: u64,
    pub bytes_added_stored: u64,
    pub data_blobs_added: u64,
    pub tree_blobs_added: u64,
    pub duration_ns: u64,
    pub errors: Vec<EntryError>,
    pub warnings: Vec<EntryError>,
    /// Packs of an interrupted backup indexed and reused: packs, blobs, bytes, missing.
    pub resumed_packs: u64,
    pub resumed_bytes: u64,
}

impl Outcome {
    pub fn report(&self) -> BackupReport {
        let s = &self.snapshot.summary;
        BackupReport {
            snapshot_id: self.snapshot_id.to_string(),
            parent: self.snapshot.parent.map(|p| p.to_string()),
            identity: Identity::of(&self.snapshot).map(str::to_string),
            files_new: s.files_new,
            files_changed: s.files_changed,
            files_unchanged: s.files_unchanged,
            dirs: s.dirs,
            dirs_split: s.dirs_split,
            other_entries: s.other_entries,
            bytes_read: s.bytes_read,
            bytes_total: s.bytes_total,
            bytes_added: s.bytes_added,
            bytes_added_stored: s.bytes_added_stored,
            data_blobs_added: s.data_blobs_added,
            tree_blobs_added: s.tree_blobs_added,
            duration_ns: s.duration_ns,
            errors: self.errors.clone(),
            warnings: self.warnings.clone(),
            resumed_packs: self.resumed.packs,
            resumed_bytes: self.resumed.bytes,
        }
    }
}

/// Counters the stages share.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub files_new: std::sync::atomic::AtomicU64,
    pub files_changed: std::sync::atomic::AtomicU64,
    pub files_unchanged: std::sync::atomic::AtomicU64,
    pub dirs: std::sync::atomic::AtomicU64,
    pub other: std::sync::atomic::AtomicU64,
    pub bytes_total: std::sync::atomic::AtomicU64,
    pub bytes_read: std::sync::atomic::AtomicU64,
    /// Directories stored in parts.
    pub dirs_split: std::sync::atomic::AtomicU64,
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The default parent, not dated in the future (a forged far-future snapshot must not become
/// every later backup's parent): the newest snapshot of the same identity when there is one,
/// else of the same host and paths.
pub(crate) async fn latest_of(
    repo: &Repository,
    identity: Option<&Identity>,
    host: &str,
    paths: &[Vec<u8>],
) -> Result<Option<(SnapshotId, Snapshot)>> {
    let limit = now_ns().saturating_add(repo_format::FUTURE_SKEW_NS);
    Ok(repo.snapshots().await?.into_iter().rev().find(|(_, s)| {
        s.time_ns <= limit
            && match identity {
                Some(id) => Identity::of(s) == Some(id.as_str()),
                None => s.hostname == host && s.paths == paths,
            }
    }))
}

/// The parent: the one asked for, or `latest_of`.
pub(crate) async fn parent_of(
    repo: &Repository,
    asked: Option<SnapshotId>,
    identity: Option<&Identity>,
    host: &str,
    paths: &[Vec<u8>],
) -> Result<Option<(SnapshotId, Snapshot)>> {
    match asked {
        Some(id) => Ok(Some((id, repo.load_snapshot(&id).await.context("loading the parent snapshot")?))),
        None => latest_of(repo, identity, host, paths).await,
    }
}

/// A blob writer with one open pack per core, spooling packs under the repository's cache
/// directory (a real disk, unlike a tmpfs /tmp) or the system temporary directory. Returns the
/// writer and the number of cores.
pub(crate) async fn start_writer(
    repo: &Repository,
    cache_dir: Option<&std::path::Path>,
    limits: &Limits,
) -> Result<(BlobWriter, usize, Resumed)> {
    let tmp_dir = pack_tmp_dir(repo, cache_dir)?;
    // Packs an interrupted backup on this machine uploaded but never indexed: index them now,
    // so this backup reuses them.
    let resumed = repo.resume_interrupted().await.context("indexing the packs of an interrupted backup")?;
    if resumed.packs > 0 {
        tracing::info!(
            "resuming: {} packs ({} bytes) uploaded by an interrupted backup are reused",
            resumed.packs,
            resumed.bytes
        );
    }
    let workers = limits.threads.max(1);
    let writer = repo.writer(WriterOptions {
        open_packs: workers.max(2),
        max_uploads: 2,
        tmp_dir,
        uploads: limits.uploads.clone(),
    });
    Ok((writer, workers, resumed))
}

/// The repository a backup works on: a view of `repo` with an index of its own (jobs sharing
/// `repo`, the agent's, never see it), loaded for writing (`Repository::load_index_for_writing`:
/// with a cache and an index of some size, or as `limits.index_keys` says, tree blobs with their
/// locations and data blobs by key only, 16 bytes each instead of 48; a repository of 10 M blobs
/// held 166 MiB of index instead of 472).
pub async fn load_index(repo: &Repository, limits: &Limits) -> Result<Arc<Repository>> {
    let view = Arc::new(repo.view());
    let started = Instant::now();
    let idx = view.load_index_for_writing(limits.keys_from()).await.context("loading the repository index")?;
    tracing::info!(
        "index: {} blobs, {} of them data blobs by key only, {:.1} MiB, loaded in {:.2} s",
        idx.len(),
        idx.keys_len(),
        idx.memory_bytes() as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64()
    );
    Ok(view)
}

/// Where a writer spools its packs: `<cache>/<repository id>/tmp` (created, private), or the
/// system temporary directory without a cache. (A local repository's writer spools in the
/// repository instead: `Repository::writer`.)
pub(crate) fn pack_tmp_dir(repo: &Repository, cache_dir: Option<&std::path::Path>) -> Result<PathBuf> {
    let Some(c) = cache_dir else { return Ok(std::env::temp_dir()) };
    let t = c.join(repo.config().repo_id.to_hex()).join("tmp");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&t)
        .with_context(|| format!("creating {}", t.display()))?;
    Ok(t)
}

/// A snapshot of this program, user and time.
pub(crate) fn snapshot(
    start_ns: i64,
    tree: TreeId,
    parent: Option<SnapshotId>,
    host: &str,
    paths: Vec<Vec<u8>>,
    tags: Vec<(String, String)>,
    summary: Summary,
) -> Snapshot {
    Snapshot {
        time_ns: start_ns,
        tree,
        parent,
        hostname: host.to_string(),
        username: username(),
        program: format!("ferry {}", env!("CARGO_PKG_VERSION")),
        paths,
        tags,
        summary,
    }
}

/// Run a backup and write its snapshot. Cancelled (`job.cancel`): what was uploaded is still
/// indexed, no snapshot is written and the error is `Cancelled`.
pub async fn run(repo: Arc<Repository>, cfg: BackupConfig, job: &Job) -> Result<Outcome> {
    let counters = job.progress.clone();
    let started = Instant::now();
    let start_ns = now_ns();
    let mut sources = Vec::new();
    for p in &cfg.paths {
        let abs = std::path::absolute(p).with_context(|| format!("source {}", p.display()))?;
        std::fs::symlink_metadata(&abs).with_context(|| format!("source {}", p.display()))?;
        sources.push(abs);
    }
    if sources.is_empty() {
        bail!("nothing to back up: give at least one path");
    }
    let repo = load_index(&repo, &job.limits).await?;
    let repo_cache = cfg.cache_dir.as_ref().map(|c| c.join(repo.config().repo_id.to_hex()));
    let files_cache = match &repo_cache {
        Some(dir) => {
            // The single database of earlier versions is replaced by one per source set.
            for old in ["files.sqlite", "files.sqlite-wal", "files.sqlite-shm"] {
                let _ = std::fs::remove_file(dir.join(old));
            }
            let path = match &cfg.identity {
                Some(id) => filescache::path_for_identity(dir, id.as_str()),
                None => filescache::path_for(dir, &cfg.host, &sources),
            };
            Some(filescache::open(&path, cfg.identity.is_some())?)
        }
        None => None,
    };
    let parent = parent_of(&repo, cfg.parent, cfg.identity.as_ref(), &cfg.host, &cfg.paths_bytes()).await?;
    let parent_trees =
        parent.as_ref().map(|(_, s)| parent::ParentTrees::new(repo.clone(), tokio::runtime::Handle::current(), s));
    let parent = parent.map(|(id, _)| id);
    let (writer, workers, resumed) = start_writer(&repo, cfg.cache_dir.as_deref(), &job.limits).await?;
    let tally = Arc::new(Tally::default());

    // Totals for the progress display, when someone shows them, from a concurrent stat-only
    // walk. It stops with the backup (or its cancellation).
    let walk_stop = CancelToken::new();
    let _stop_walk = StopOnDrop(walk_stop.clone());
    if job.totals {
        scan::count_in_background(
            sources.clone(),
            cfg.excludes.clone(),
            counters.clone(),
            walk_stop,
            job.cancel.clone(),
        );
    }

    let pipeline = {
        let (writer, cfg, counters, tally) = (writer.clone(), cfg.clone(), counters.clone(), tally.clone());
        let job = job.clone();
        let chunker = repo_format::Chunker::new(repo.config().chunker, repo.master_key().chunker_seed());
        tokio::task::spawn_blocking(move || {
            scan::pipeline(scan::Pipeline {
                sources,
                cfg: &cfg,
                writer: &writer,
                chunker,
                counters: &counters,
                tally: &tally,
                files_cache,
                workers,
                start_ns,
                job: &job,
                parent: parent_trees,
                cache_by_rel: cfg.identity.is_some(),
            })
        })
    };
    let result = pipeline.await.expect("backup pipeline thread");
    // Always finish the writer, even after a failure: what was uploaded gets indexed and is
    // reused by the next backup.
    // The writer itself is given up: nothing else then holds the index it started with, which
    // finishing extends in place (a copy held two: 960 MB at 10 M blobs).
    let finished = repo.finish_writer(writer).await.context("uploading packs and index");
    // When the writer failed (storage gone, disk full), that is the cause: the pipeline only
    // saw its consumer stop.
    let ((root, errors, mut warnings, cache_writer), st) = match (result, finished) {
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(r), Ok(w)) => (r, w.stats),
    };

    use std::sync::atomic::Ordering::Relaxed;
    let summary = Summary {
        files_new: tally.files_new.load(Relaxed),
        files_changed: tally.files_changed.load(Relaxed),
        files_unchanged: tally.files_unchanged.load(Relaxed),
        dirs: tally.dirs.load(Relaxed),
        other_entries: tally.other.load(Relaxed),
        bytes_read: tally.bytes_read.load(Relaxed),
        bytes_total: tally.bytes_total.load(Relaxed),
        bytes_added: st.bytes_added.load(Relaxed),
        bytes_added_stored: st.bytes_stored.load(Relaxed),
        data_blobs_added: st.data_blobs.load(Relaxed),
        tree_blobs_added: st.tree_blobs.load(Relaxed),
        errors: errors.len() as u64,
        duration_ns: started.elapsed().as_nanos() as u64,
        dirs_split: tally.dirs_split.load(Relaxed),
    };
    let mut tags = cfg.tags.clone();
    if let Some(id) = &cfg.identity {
        id.tag(&mut tags, cfg.requester.as_deref());
    }
    let snapshot = snapshot(start_ns, root, parent, &cfg.host, cfg.paths_bytes(), tags, summary);
    crate::prune::guard_long_backup(&repo, root, started, job).await?;
    // A cancel that came while the last packs and the index were uploaded (the scan was over,
    // so nothing above saw it) still writes no snapshot: the agent's e2e test canceled a
    // DataUpload then, and it ended Canceled with a snapshot stored.
    job.cancel.check()?;
    let snapshot_id = repo.save_snapshot(&snapshot).await.context("saving the snapshot")?;
    if let Some(w) = cache_writer {
        if let Err(e) = w.commit() {
            warnings.push(EntryError::general(
                EntryErrorKind::Cache,
                format!("files cache not updated (the next backup re-reads files): {e:#}"),
            ));
        }
    }
    Ok(Outcome { snapshot_id, snapshot, errors, warnings, resumed })
}

/// Cancels a token when dropped.
struct StopOnDrop(CancelToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl BackupConfig {
    /// The source paths as recorded in the snapshot (absolute, raw bytes).
    pub fn paths_bytes(&self) -> Vec<Vec<u8>> {
        self.paths.iter().map(|p| recorded_path(p)).collect()
    }
}

/// A source path as snapshots record it: absolute, and normalized by `components` (a trailing
/// slash and `.` parts dropped), so `s/` and `s` find each other as parents.
pub(crate) fn recorded_path(p: &std::path::Path) -> Vec<u8> {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs.components().collect::<std::path::PathBuf>().into_os_string().into_encoded_bytes()
}

pub(crate) fn username() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
}
