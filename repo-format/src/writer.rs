//! Saving blobs: dedup, compression, encryption, packing and upload, shared by many threads.
//!
//! `BlobWriter::save` is called from plain (non-async) threads. It hashes, checks the index
//! snapshot taken at start (no lock) and the set of blobs this writer already took (a sharded
//! mutex), compresses outside any lock, then seals the blob into one of several open packs
//! chosen at random, so that pack layout does not follow file order (chunk boundaries do not
//! leak through it). A full pack goes to a bounded queue; an async task uploads at most
//! `max_uploads` packs at once and writes an index object every `INDEX_EVERY` packs, so a crash
//! loses at most that many packs' worth of reuse. When the queue is full, `save` blocks:
//! memory is bounded by the open packs' buffers and the queue, never by the data size.
//!
//! Every uploaded pack is also recorded in a local journal (`journal`, when the repository has
//! a cache) until an index object lists it, so the packs of an interrupted backup are reused by
//! the next one instead of being uploaded again.
//!
//! Write ordering: a blob is durable only after `finish` returns (its pack uploaded and listed in
//! an index object). Snapshots must be written after `finish`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::blob::BlobKind;
use crate::compress;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::{BlobId, Id, IndexId};
use crate::index::{Index, IndexFile, IndexPack};
use crate::journal::Journal;
use crate::object::{self, ObjectType};
use crate::pack::{FinishedPack, PackWriter};
use crate::storage::{FileKind, Storage};

/// Write an index object after this many packs (and at the end)…
const INDEX_EVERY: usize = 8;
/// … or once it would list this many blobs (45 bytes each: about 9 MB, far below the 64 MiB
/// object limit even uncompressed).
const INDEX_MAX_BLOBS: usize = 200_000;
/// A pack is closed at this many blobs even below its target size (tiny files), which bounds
/// its header and the index entries one pack contributes.
const PACK_MAX_BLOBS: usize = 50_000;
const SHARDS: usize = 64;

/// A thread's compression buffer is kept up to this size (twice the default average chunk); one
/// grown beyond for a larger blob is shrunk back to it after use, so only its part above is
/// fresh memory the next time (freed whole, as before, it was a fresh mapping for every chunk
/// above 2 MiB).
const PAYLOAD_KEEP: usize = 2 << 20;

thread_local! {
    /// The compressed payload of the blob this thread is saving (reused).
    static PAYLOAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tuning of a writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Open data packs blobs are spread over (randomized assignment).
    pub open_packs: usize,
    /// Packs uploading at once.
    pub max_uploads: usize,
    /// Where temporary pack files go (must be a real disk, not tmpfs, for bounded memory). A
    /// repository that has a `Storage::spool_dir` (a local directory) spools there instead: its
    /// packs are then linked in place, not copied.
    pub tmp_dir: PathBuf,
    /// Pack bytes uploading at once, shared with other writers (a process running several
    /// backups). A pack is in memory (mapped) while one request sends it, so without this each
    /// writer holds up to `max_uploads` packs whatever the others do.
    pub uploads: Option<Arc<UploadBudget>>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { open_packs: 4, max_uploads: 2, tmp_dir: std::env::temp_dir(), uploads: None }
    }
}

/// Bytes of packs being uploaded, shared by the writers given the same budget. A pack takes
/// its length (whole MiB, at most the total, so one pack larger than the budget still goes
/// alone) before its upload starts and gives it back when the upload ends.
#[derive(Debug)]
pub struct UploadBudget {
    mib: Arc<tokio::sync::Semaphore>,
    total_mib: u32,
}

impl UploadBudget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: u64) -> Arc<Self> {
        let total_mib = (bytes >> 20).clamp(1, u64::from(u32::MAX)) as u32;
        Arc::new(UploadBudget { mib: Arc::new(tokio::sync::Semaphore::new(total_mib as usize)), total_mib })
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        u64::from(self.total_mib - self.mib.available_permits() as u32) << 20
    }

    /// Wait until `len` bytes fit, and take them until the permit drops.
    pub async fn acquire(&self, len: u64) -> tokio::sync::OwnedSemaphorePermit {
        let mib = len.div_ceil(1 << 20).clamp(1, u64::from(self.total_mib)) as u32;
        self.mib.clone().acquire_many_owned(mib).await.expect("the upload budget is never closed")
    }
}

/// Counters of what a writer added.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub data_blobs: AtomicU64,
    pub tree_blobs: AtomicU64,
    /// Plaintext bytes of new blobs.
    pub bytes_added: AtomicU64,
    /// Stored bytes of new blobs.
    pub bytes_stored: AtomicU64,
    pub packs: AtomicU64,
}

impl WriterStats {
    /// The counters as they are now.
    fn copied(&self) -> WriterStats {
        let c = |a: &AtomicU64| AtomicU64::new(a.load(Relaxed));
        WriterStats {
            data_blobs: c(&self.data_blobs),
            tree_blobs: c(&self.tree_blobs),
            bytes_added: c(&self.bytes_added),
            bytes_stored: c(&self.bytes_stored),
            packs: c(&self.packs),
        }
    }
}

/// What `save` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub id: BlobId,
    /// False when the blob was already stored (dedup).
    pub new: bool,
}

/// A blob this writer took: the first 16 bytes of its id (`index::key_of`) with the lowest bit
/// replaced by its kind (the same bytes saved as a tree and as data are two blobs). 16 bytes in
/// a set instead of 33: a million new blobs held 71 MB of sets. Two blobs of one kind sharing
/// the other 127 bits would make the second look taken; ids are keyed 256-bit hashes, so the
/// chance is about `new^2 / 2^128` (`index::KEY_BYTES` has the same argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Taken(u128);

impl Taken {
    fn of(kind: BlobKind, id: &BlobId) -> Taken {
        Taken((crate::index::key_of(id) & !1) | u128::from(kind == BlobKind::Tree))
    }
}

/// Hashes a `Taken` to its low 64 bits: ids are keyed hashes, already uniform, and nobody
/// without the key can choose them (so no table can be flooded through them).
#[derive(Debug, Default)]
struct TakenHasher(u64);

impl std::hash::Hasher for TakenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Taken` (it hashes one u128); correct for anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type TakenSet = HashSet<Taken, std::hash::BuildHasherDefault<TakenHasher>>;

#[derive(Debug)]
struct Shared {
    master: MasterKey,
    level: i32,
    pack_size: u64,
    tmp_dir: PathBuf,
    index: Arc<Index>,
    taken: Vec<Mutex<TakenSet>>,
    data_packs: Vec<Mutex<Option<PackWriter>>>,
    tree_pack: Mutex<Option<PackWriter>>,
    queue: Mutex<Option<mpsc::Sender<FinishedPack>>>,
    stats: WriterStats,
    /// Set when writing a pack failed: the writer is then unusable (blobs already handed out
    /// as saved may be lost), every later call fails and `finish` reports the failure, so no
    /// snapshot can reference them.
    failed: std::sync::atomic::AtomicBool,
}

/// An open data pack no other thread is adding to, tried from a random one on; if all are busy,
/// the random one, waited for. Sealing a blob and writing it to the pack's file happen under
/// the slot's lock: with as many open packs as workers (the engine's choice) and a slot drawn at
/// random, two workers drew the same one half of the time and one waited while the other
/// encrypted.
fn free_slot(slots: &[Mutex<Option<PackWriter>>]) -> std::sync::MutexGuard<'_, Option<PackWriter>> {
    let start = rand::rng().random_range(0..slots.len());
    for i in 0..slots.len() {
        match slots[(start + i) % slots.len()].try_lock() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::WouldBlock) => continue,
            Err(std::sync::TryLockError::Poisoned(e)) => panic!("lock: {e}"),
        }
    }
    slots[start].lock().expect("lock")
}

/// A session that adds blobs to a repository. Cheap to clone (all clones share one session).
#[derive(Debug, Clone)]
pub struct BlobWriter {
    shared: Arc<Shared>,
    uploader: Arc<Mutex<Option<JoinHandle<UploadResult>>>>,
}

/// What a finished writer wrote.
#[derive(Debug, Default)]
pub struct WriterResult {
    pub index_file: IndexFile,
    pub index_ids: Vec<IndexId>,
    /// The writer's counters at its end (its callers can give the writer itself up to
    /// `finish`, so nothing holds the index it was started with while a new one is made).
    pub stats: WriterStats,
}

impl BlobWriter {
    /// Start a writer; must be called inside a tokio runtime (it spawns the uploader).
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        master: MasterKey,
        index: Arc<Index>,
        level: i32,
        pack_size: u32,
        opts: WriterOptions,
        journal: Option<Journal>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let cipher = master.object_cipher();
        let limits = UploadLimits { max: opts.max_uploads.max(1), shared: opts.uploads };
        let uploader = tokio::spawn(upload_loop(storage, cipher, rx, limits, journal));
        let shared = Shared {
            master,
            level,
            pack_size: u64::from(pack_size),
            tmp_dir: opts.tmp_dir,
            index,
            taken: (0..SHARDS).map(|_| Mutex::default()).collect(),
            data_packs: (0..opts.open_packs.max(1)).map(|_| Mutex::default()).collect(),
            tree_pack: Mutex::default(),
            queue: Mutex::new(Some(tx)),
            stats: WriterStats::default(),
            failed: Default::default(),
        };
        BlobWriter { shared: Arc::new(shared), uploader: Arc::new(Mutex::new(Some(uploader))) }
    }

    /// Counters so far.
    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// The id `data` has in this repository (keyed BLAKE3).
    pub fn id_of(&self, data: &[u8]) -> BlobId {
        self.shared.master.blob_id(data)
    }

    /// True if the blob is stored already or taken by this writer.
    pub fn is_known(&self, kind: BlobKind, id: &BlobId) -> bool {
        self.shared.index.contains(kind, id)
            || self.shared.taken[id.0.0[0] as usize % SHARDS].lock().expect("lock").contains(&Taken::of(kind, id))
    }

    /// Store a blob unless it is known. Blocks while the upload queue is full. Must not be
    /// called from an async task (use `spawn_blocking` or a plain thread).
    pub fn save(&self, kind: BlobKind, data: &[u8]) -> Result<Saved> {
        let id = self.shared.master.blob_id(data);
        self.save_with_id(kind, id, data)
    }

    /// As `save`, with the id already computed by the caller (it must be `id_of(data)`).
    pub fn save_with_id(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<Saved> {
        let s = &self.shared;
        if data.len() > compress::MAX_BLOB_LEN {
            return Err(Error::Invalid(format!("a blob of {} bytes exceeds the limit", data.len())));
        }
        if s.index.contains(kind, &id)
            || !s.taken[id.0.0[0] as usize % SHARDS].lock().expect("lock").insert(Taken::of(kind, &id))
        {
            return Ok(Saved { id, new: false });
        }
        // Each thread keeps its compression buffer: a fresh one per blob would be a fresh
        // mapping (page faults and zeroing) for every chunk. The payload is compressed (or
        // copied, raw) after room for the nonce, and sealed where it lies: laid out as it is
        // stored, it is not copied again on its way to the pack's file. Exactly the room the
        // most it can take needs (nonce, a zstd attempt as long as the data after its header,
        // tag), so appending the tag does not reallocate.
        let mut payload = PAYLOAD.with(|p| std::mem::take(&mut *p.borrow_mut()));
        payload.clear();
        payload.reserve_exact(crate::crypto::SEAL_OVERHEAD + compress::MAX_OVERHEAD + data.len());
        payload.resize(crate::crypto::NONCE_LEN, 0);
        compress::compress_into(data, s.level, &mut payload);
        let r = self.add(kind, id, data.len(), &mut payload);
        if payload.capacity() > PAYLOAD_KEEP {
            payload.clear();
            payload.shrink_to(PAYLOAD_KEEP);
        }
        PAYLOAD.with(|p| *p.borrow_mut() = payload);
        r
    }

    /// Add a blob laid out as `PackWriter::add_prepared` takes it (`payload` is sealed in place).
    fn add(&self, kind: BlobKind, id: BlobId, raw_len: usize, payload: &mut Vec<u8>) -> Result<Saved> {
        let s = &self.shared;
        let full = {
            let mut guard = match kind {
                BlobKind::Tree => s.tree_pack.lock().expect("lock"),
                BlobKind::Data => free_slot(&s.data_packs),
            };
            if s.failed.load(Relaxed) {
                return Err(Error::Invalid("the blob writer failed earlier".into()));
            }
            let added = match guard.as_mut() {
                Some(pw) => pw.add_prepared(kind, id, payload, raw_len as u32),
                None => PackWriter::new(&s.master, &s.tmp_dir).and_then(|mut pw| {
                    let r = pw.add_prepared(kind, id, payload, raw_len as u32);
                    *guard = Some(pw);
                    r
                }),
            };
            let stored = match added {
                Ok(n) => n,
                Err(e) => {
                    s.failed.store(true, Relaxed);
                    return Err(e);
                }
            };
            let pw = guard.as_mut().expect("set above");
            s.stats.bytes_added.fetch_add(raw_len as u64, Relaxed);
            s.stats.bytes_stored.fetch_add(u64::from(stored), Relaxed);
            match kind {
                BlobKind::Tree => s.stats.tree_blobs.fetch_add(1, Relaxed),
                BlobKind::Data => s.stats.data_blobs.fetch_add(1, Relaxed),
            };
            if pw.len() >= s.pack_size || pw.blob_count() >= PACK_MAX_BLOBS { guard.take() } else { None }
        };
        if let Some(pw) = full {
            let sent = pw.finish().and_then(|p| self.send(p));
            if let Err(e) = sent {
                s.failed.store(true, Relaxed);
                return Err(e);
            }
        }
        Ok(Saved { id, new: true })
    }

    fn send(&self, pack: FinishedPack) -> Result<()> {
        self.shared.stats.packs.fetch_add(1, Relaxed);
        let tx = self.shared.queue.lock().expect("lock").clone();
        let tx = tx.ok_or_else(|| Error::Invalid("blob writer already finished".into()))?;
        tx.blocking_send(pack)
            .map_err(|_| Error::Invalid("the pack uploader stopped (see the error it returned)".into()))
    }

    /// Flush every open pack, wait for all uploads and write the last index object.
    /// Call from async code once every `save` has returned.
    pub async fn finish(self) -> Result<WriterResult> {
        let s = self.shared.clone();
        let mut packs = Vec::new();
        for slot in s.data_packs.iter().chain(std::iter::once(&s.tree_pack)) {
            if let Some(pw) = slot.lock().expect("lock").take() {
                packs.push(pw);
            }
        }
        let tx = s.queue.lock().expect("lock").take();
        if let Some(tx) = tx {
            for pw in packs {
                s.stats.packs.fetch_add(1, Relaxed);
                let fp = tokio::task::spawn_blocking(move || pw.finish()).await.expect("finish task")?;
                if tx.send(fp).await.is_err() {
                    break; // the uploader failed: its error is returned below
                }
            }
        }
        let handle = self.uploader.lock().expect("lock").take();
        let Some(handle) = handle else {
            return Ok(WriterResult { stats: s.stats.copied(), ..WriterResult::default() });
        };
        let (index_ids, packs) = handle.await.expect("uploader task")?;
        if s.failed.load(Relaxed) {
            return Err(Error::Invalid("writing a pack failed: the blobs saved by this writer are incomplete".into()));
        }
        Ok(WriterResult { index_file: IndexFile { packs, supersedes: Vec::new() }, index_ids, stats: s.stats.copied() })
    }
}

type UploadResult = Result<(Vec<IndexId>, Vec<IndexPack>)>;

/// How many packs one writer uploads at once, and the byte budget it shares with others.
struct UploadLimits {
    max: usize,
    shared: Option<Arc<UploadBudget>>,
}

async fn upload_loop(
    storage: Arc<dyn Storage>,
    cipher: crate::crypto::Cipher,
    mut rx: mpsc::Receiver<FinishedPack>,
    limits: UploadLimits,
    mut journal: Option<Journal>,
) -> UploadResult {
    // Record an uploaded pack in the journal; a journal that cannot be written is dropped
    // (it only saves re-uploads after a crash).
    let note = |journal: &mut Option<Journal>, p: &IndexPack| {
        if let Some(j) = journal.as_mut() {
            if let Err(e) = j.record(&cipher, p) {
                tracing::warn!("pending-pack journal: {e}; an interrupted backup will upload its packs again");
                *journal = None;
            }
        }
    };
    // A local directory links or copies the file: nothing is held in memory, nothing to share.
    let shared = if storage.is_local() { None } else { limits.shared };
    let mut running = tokio::task::JoinSet::new();
    let mut done: Vec<IndexPack> = Vec::new();
    let mut all: Vec<IndexPack> = Vec::new();
    let mut written = Vec::new();
    let mut failed: Option<Error> = None;
    loop {
        tokio::select! {
            Some(res) = running.join_next(), if !running.is_empty() => {
                match res.expect("upload task") {
                    Ok(p) => { note(&mut journal, &p); done.push(p) }
                    Err(e) => { failed.get_or_insert(e); break; }
                }
                if done.len() >= INDEX_EVERY || done.iter().map(|p| p.blobs.len()).sum::<usize>() >= INDEX_MAX_BLOBS {
                    all.extend(done.iter().cloned());
                    written.push(write_index(&*storage, &cipher, std::mem::take(&mut done)).await?);
                    cleared(&mut journal);
                }
            }
            msg = rx.recv(), if running.len() < limits.max => {
                let Some(pack) = msg else { break };
                let st = storage.clone();
                let shared = shared.clone();
                running.spawn(async move {
                    let entry = IndexPack { id: pack.id, salt: pack.salt, blobs: pack.entries };
                    let _permit = match &shared {
                        Some(b) => Some(b.acquire(pack.len).await),
                        None => None,
                    };
                    st.upload_file(FileKind::Pack, &pack.id.0, pack.file, pack.len).await?;
                    Ok::<_, Error>(entry)
                });
            }
        }
    }
    while let Some(res) = running.join_next().await {
        match res.expect("upload task") {
            Ok(p) => {
                note(&mut journal, &p);
                done.push(p)
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    // Index what did get uploaded even on failure: the next backup reuses it.
    if !done.is_empty() {
        all.extend(done.iter().cloned());
        written.push(write_index(&*storage, &cipher, done).await?);
        cleared(&mut journal);
    }
    if let Some(j) = journal {
        j.close();
    }
    match failed {
        Some(e) => Err(e),
        None => Ok((written, all)),
    }
}

/// An index object now lists every journaled pack.
fn cleared(journal: &mut Option<Journal>) {
    if let Some(Err(e)) = journal.as_mut().map(Journal::clear) {
        tracing::warn!("pending-pack journal: {e}");
        *journal = None;
    }
}

pub(crate) async fn write_index(
    storage: &dyn Storage,
    cipher: &crate::crypto::Cipher,
    packs: Vec<IndexPack>,
) -> Result<IndexId> {
    let file = IndexFile { packs, supersedes: Vec::new() };
    let bytes = object::seal(cipher, ObjectType::Index, &file.encode(), 3);
    let id = Id::of_stored(&bytes);
    storage.create(FileKind::Index, &id, Bytes::from(bytes)).await?;
    Ok(IndexId(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicUsize;

    /// Accepts every upload and records how many were in progress at once. Until two have
    /// been in progress together, an upload waits for a partner for up to `patience`: so two
    /// writers without a shared budget always overlap, however slowly their packs are made
    /// (under qemu a pack takes longer than any fixed pause), and within the budget each
    /// upload waits `patience` and goes alone.
    #[derive(Debug)]
    struct SlowSink {
        now: AtomicUsize,
        most: AtomicUsize,
        patience: std::time::Duration,
    }

    #[async_trait]
    impl Storage for SlowSink {
        fn location(&self) -> String {
            "slow sink".into()
        }
        async fn create(&self, _: FileKind, _: &Id, _: Bytes) -> Result<()> {
            Ok(())
        }
        async fn upload_file(&self, _: FileKind, _: &Id, _: std::fs::File, _: u64) -> Result<()> {
            let n = self.now.fetch_add(1, Relaxed) + 1;
            self.most.fetch_max(n, Relaxed);
            let t = std::time::Instant::now();
            while self.most.load(Relaxed) < 2 && t.elapsed() < self.patience {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            self.now.fetch_sub(1, Relaxed);
            Ok(())
        }
        async fn read(&self, _: FileKind, _: &Id, _: u64) -> Result<Bytes> {
            unreachable!("a writer does not read")
        }
        async fn read_range(&self, _: FileKind, _: &Id, _: u64, _: u64) -> Result<Bytes> {
            unreachable!("a writer does not read")
        }
        async fn list(&self, _: FileKind) -> Result<Vec<(Id, u64)>> {
            Ok(Vec::new())
        }
        async fn remove(&self, _: FileKind, _: &Id) -> Result<()> {
            Ok(())
        }
    }

    /// Two writers, each saving 12 incompressible 256 KiB blobs into 1 MiB packs at once:
    /// the most uploads that were in progress together.
    async fn most_uploads_at_once(budget: Option<Arc<UploadBudget>>) -> usize {
        // Without a budget the partner always comes (each writer uploads two at once): the
        // long patience only bounds a broken writer. Within a budget it never may.
        let patience = std::time::Duration::from_millis(if budget.is_none() { 60_000 } else { 150 });
        let sink = Arc::new(SlowSink { now: AtomicUsize::new(0), most: AtomicUsize::new(0), patience });
        let tmp = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let writers: Vec<BlobWriter> = (0..2)
            .map(|_| {
                let opts = WriterOptions {
                    open_packs: 1,
                    max_uploads: 2,
                    tmp_dir: tmp.path().to_path_buf(),
                    uploads: budget.clone(),
                };
                BlobWriter::new(sink.clone(), master.clone(), Arc::default(), 3, 1 << 20, opts, None)
            })
            .collect();
        let mut saving = Vec::new();
        for (w, seed) in writers.iter().zip(1u8..) {
            let w = w.clone();
            saving.push(tokio::task::spawn_blocking(move || {
                let mut rng = blake3::Hasher::new_keyed(&[seed; 32]).finalize_xof();
                for _ in 0..12 {
                    let mut blob = vec![0u8; 256 << 10];
                    rng.fill(&mut blob);
                    w.save(BlobKind::Data, &blob).unwrap();
                }
            }));
        }
        for s in saving {
            s.await.unwrap();
        }
        for w in writers {
            w.finish().await.unwrap();
        }
        if let Some(b) = &budget {
            assert_eq!(b.used(), 0, "every upload gave its bytes back");
        }
        sink.most.load(Relaxed)
    }

    /// A writer of one open pack at a time, at zstd level 3, uploading where nothing is kept.
    fn one_pack_writer(tmp: &std::path::Path) -> BlobWriter {
        let sink =
            Arc::new(SlowSink { now: AtomicUsize::new(0), most: AtomicUsize::new(0), patience: Default::default() });
        let opts = WriterOptions { open_packs: 1, max_uploads: 2, tmp_dir: tmp.to_path_buf(), uploads: None };
        BlobWriter::new(sink, MasterKey::generate(), Arc::default(), 3, 8 << 20, opts, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_payload_buffer_grown_for_a_big_blob_is_kept_shrunk() {
        let tmp = tempfile::tempdir().unwrap();
        let w = one_pack_writer(tmp.path());
        let w2 = w.clone();
        let kept = tokio::task::spawn_blocking(move || {
            let mut blob = vec![0u8; PAYLOAD_KEEP + 12345];
            blake3::Hasher::new_keyed(&[9; 32]).finalize_xof().fill(&mut blob);
            assert!(w2.save(BlobKind::Data, &blob).unwrap().new);
            PAYLOAD.with(|p| (p.borrow().capacity(), p.borrow().len()))
        })
        .await
        .unwrap();
        // Freed instead, the next blob would start from a fresh (unmapped) buffer.
        assert_eq!(kept, (PAYLOAD_KEEP, 0), "the thread's buffer is kept, empty, at the size kept");
        w.finish().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_is_sealed_in_the_buffer_it_was_compressed_into() {
        let tmp = tempfile::tempdir().unwrap();
        let w = one_pack_writer(tmp.path());
        let w2 = w.clone();
        // A thread of its own, so its buffer starts empty.
        std::thread::spawn(move || {
            let mut random = vec![0u8; 1 << 20];
            blake3::Hasher::new_keyed(&[5; 32]).finalize_xof().fill(&mut random);
            let text = b"a line of text, and another one like it. ".repeat(20_000);
            for (what, blob, stored_raw) in [("incompressible", &random[..], true), ("text", &text[..], false)] {
                let before = PAYLOAD.with(|p| p.borrow().capacity());
                assert!(w2.save(BlobKind::Data, blob).unwrap().new);
                let (cap, len) = PAYLOAD.with(|p| (p.borrow().capacity(), p.borrow().len()));
                // What was reserved is what it holds: the tag was appended without growing it
                // (a reallocation copies the payload, and doubles the buffer).
                let reserved = crate::crypto::SEAL_OVERHEAD + compress::MAX_OVERHEAD + blob.len();
                assert_eq!(cap, before.max(reserved), "{what}: the buffer grew past what was reserved");
                // And it holds the stored blob: nonce, payload (raw: its marker and the data), tag.
                if stored_raw {
                    assert_eq!(len, crate::crypto::SEAL_OVERHEAD + 1 + blob.len(), "{what}");
                } else {
                    assert!(len < blob.len() / 10, "{what}: {len} bytes stored");
                }
            }
        })
        .join()
        .unwrap();
        let r = w.finish().await.unwrap();
        assert_eq!(r.stats.data_blobs.load(Relaxed), 2);
    }

    #[test]
    fn a_busy_open_pack_is_passed_over_for_a_free_one() {
        let tmp = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        // The second slot is told apart by holding a pack.
        let slots: Arc<Vec<Mutex<Option<PackWriter>>>> =
            Arc::new(vec![Mutex::new(None), Mutex::new(Some(PackWriter::new(&master, tmp.path()).unwrap()))]);
        let busy = slots[0].lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = slots.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let _ = tx.send(free_slot(&s).is_some());
            }
        });
        for i in 0..50 {
            // Drawn at random instead, the busy slot is waited for (about half of the draws).
            let got = rx.recv_timeout(std::time::Duration::from_secs(20));
            assert_eq!(got, Ok(true), "draw {i}: the free pack was not taken");
        }
        drop(busy);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_sharing_an_upload_budget_upload_within_it() {
        // Alone, each writer uploads up to two packs at once: together more than one.
        assert!(most_uploads_at_once(None).await >= 2, "the writers never uploaded at the same time");
        // A budget below one pack: one pack at a time across both (never stuck).
        assert_eq!(most_uploads_at_once(Some(UploadBudget::new(1 << 20))).await, 1);
        // Room for two packs (a pack is just over 1 MiB: it takes 2 MiB).
        assert!(most_uploads_at_once(Some(UploadBudget::new(4 << 20))).await <= 2);
    }
}
