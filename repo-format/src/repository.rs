//! Opening, unlocking and using a repository: config, keys, index, blobs, trees, snapshots.
//!
//! `Repository` is the library's front door. Opening reads `config` first (so a missing
//! repository or a too-new format is reported before any password is tried), then tries the
//! password on the key files (see `open` for the order and the work budget). The index is
//! loaded on demand (`load_index`), from the local cache where possible. Every object read is
//! verified: stored-name hash where the name is a hash, AEAD tag, and for blobs the keyed hash
//! of the plaintext.
//!
//! Nothing a hostile storage sends can make a reader buffer without bound: every whole-object
//! read is capped by its kind's maximum and by the size the listing reported, and objects are
//! downloaded at most `LOAD_BYTES` at a time. What this machine saw before (`memory`) is used to
//! notice a storage that goes back: a removed key file that reappears is refused, a newest
//! snapshot that disappears is warned about.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::StreamExt;

use crate::blob::BlobKind;
use crate::cache::{Cache, Verified};
use crate::config::RepoConfig;
use crate::crypto::MasterKey;
use crate::error::{Error, ObjectRef, Result};
use crate::id::{BlobId, Id, IndexId, KeyId, MarkerId, PackId, SnapshotId, TreeId};
use crate::index::{Index, IndexBuilder, IndexFile, IndexScope, KeysBuilder, Selection};
use crate::journal::{self, Journal};
use crate::keyfile::{self, KdfParams};
use crate::marker::Marker;
use crate::memory::{self, Memory};
use crate::object::{self, ObjectType};
use crate::pack;
use crate::snapshot::Snapshot;
use crate::storage::{FileKind, Storage};
use crate::tree::Tree;
use crate::tree::{DirPart, Directory};
use crate::writer::{BlobWriter, WriterOptions, WriterResult, write_index};

/// Under the repository's cache directory: journals of packs not yet indexed.
const PENDING_DIR: &str = "pending";

/// What `resume_interrupted` recovered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// Packs now indexed, their blobs and stored bytes.
    pub packs: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// Recorded packs that were not on storage (or did not verify): not reused.
    pub missing: u64,
    /// The index object written for them.
    pub index: Option<IndexId>,
}

/// Concurrent downloads when loading index or snapshot objects …
const LOAD_CONCURRENCY: usize = 16;
/// … and the most bytes they may hold at once (by the sizes the listing reported).
const LOAD_BYTES: u64 = 128 << 20;

/// Key files considered at most (the listing may hold thousands of planted ones).
const MAX_KEY_FILES: usize = 256;
/// Argon2 work one `open` may spend on key files, in KiB × passes (each try counts at least
/// `KEY_TRY_FLOOR`): 8 GiB-passes, i.e. 64 key files of the default cost, a few seconds; a key
/// file that would overrun it is not tried. The key that opened the last session here is
/// tried first whatever it costs.
const KDF_BUDGET: u64 = 8 << 20;
const KEY_TRY_FLOOR: u64 = 32 << 10;

/// Snapshots dated later than now plus this are not trusted to be the newest (clock skew
/// between nodes is allowed for).
/// Most entries `read_tree` joins from a directory's parts (a `Node` takes about 200 bytes in
/// memory: about 400 MiB at the limit). A forged index may name one part many times; this
/// bounds what it can make a whole-tree reader hold.
pub const MAX_JOINED_ENTRIES: u64 = 2 << 20;

pub const FUTURE_SKEW_NS: i64 = 10 * 60 * 1_000_000_000;

/// A key file as `key list` shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: KeyId,
    pub created_ns: i64,
    pub label: String,
    pub kdf: KdfParams,
    /// The key file this session was unlocked with.
    pub current: bool,
}

/// An open, unlocked repository.
#[derive(Debug)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    master: MasterKey,
    config: RepoConfig,
    key_id: KeyId,
    cache: Option<Cache>,
    index: RwLock<Arc<Index>>,
    /// Blobs of packs that only superseded index objects list (packs a prune marked): readers
    /// find them here until the sweep; writers never deduplicate against them.
    fallback: RwLock<Arc<Index>>,
    /// This location's memory file (with a cache root).
    memory_path: Option<PathBuf>,
}

/// Semaphore permits for `bytes` of download (KiB units, at least 1, at most the whole budget).
fn permits(bytes: u64) -> u32 {
    (bytes / 1024).clamp(1, LOAD_BYTES / 1024) as u32
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// How `Repository::init_with` makes the master key.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitOptions<'a> {
    /// Take the id key (`idk`, FORMAT.md §4.1) of this master key instead of a random one; the
    /// encryption key is always new. Both repositories then give equal plaintext equal blob ids
    /// and (with equal chunker parameters) cut files alike, so copies between them deduplicate.
    pub id_key_from: Option<&'a MasterKey>,
}

impl Repository {
    /// Create a repository: config and a first key file. Fails if a config exists.
    pub async fn init(
        storage: Arc<dyn Storage>,
        password: &[u8],
        kdf: KdfParams,
        config: RepoConfig,
        key_label: &str,
    ) -> Result<Self> {
        Self::init_with(storage, password, kdf, config, key_label, InitOptions::default()).await
    }

    /// As `init`, with options (a shared id key).
    pub async fn init_with(
        storage: Arc<dyn Storage>,
        password: &[u8],
        kdf: KdfParams,
        config: RepoConfig,
        key_label: &str,
        opts: InitOptions<'_>,
    ) -> Result<Self> {
        config.validate()?;
        match storage.read(FileKind::Config, &Id::ZERO, FileKind::Config.max_len()).await {
            Ok(_) => {
                return Err(Error::RepositoryExists { location: storage.location() });
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let master = match opts.id_key_from {
            Some(other) => MasterKey::sharing_id_key_of(other),
            None => MasterKey::generate(),
        };
        let kf = keyfile::create(&master, password, kdf, now_ns(), key_label)?;
        let key_id = KeyId(Id::of_stored(&kf));
        // Key first, config last: a repository exists only once it can be unlocked.
        storage.create(FileKind::Key, &key_id.0, Bytes::from(kf)).await?;
        let cfg = object::seal(&master.object_cipher(), ObjectType::Config, &config.encode(), 0);
        match storage.create(FileKind::Config, &Id::ZERO, Bytes::from(cfg)).await {
            Ok(()) => {}
            Err(Error::AlreadyExists { .. }) => {
                // Lost a race with another init: our key wraps a master key nobody uses.
                let _ = storage.remove(FileKind::Key, &key_id.0).await;
                return Err(Error::RepositoryExists { location: storage.location() });
            }
            Err(e) => return Err(e),
        }
        Ok(Repository {
            storage,
            master,
            config,
            key_id,
            cache: None,
            index: RwLock::default(),
            fallback: RwLock::default(),
            memory_path: None,
        })
    }

    /// Open and unlock. `cache_root` enables the local cache of index and snapshot objects and
    /// the memory of this location (`memory`).
    ///
    /// Key files are tried in this order: the one that opened the last session on this machine,
    /// then the others from the cheapest Argon2 cost up, within `KDF_BUDGET` and at most
    /// `MAX_KEY_FILES`, so planted key files with maximal costs cost bounded time and memory. A
    /// key file that was seen here, then removed from storage, and is back (a replayed, revoked
    /// password) is never used.
    pub async fn open(storage: Arc<dyn Storage>, password: &[u8], cache_root: Option<PathBuf>) -> Result<Self> {
        // Absolute, so a thread with a working directory of its own (the backup's scan) finds
        // the same cache.
        let cache_root = cache_root.map(|r| std::path::absolute(&r).unwrap_or(r));
        let cfg_bytes = match storage.read(FileKind::Config, &Id::ZERO, FileKind::Config.max_len()).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => {
                return Err(Error::NoRepository { location: storage.location() });
            }
            Err(e) => return Err(e),
        };
        object::check_header(&cfg_bytes, ObjectType::Config, "config")
            .map_err(|e| e.locate(ObjectRef::File(FileKind::Config, Id::ZERO)))?;
        let keys = storage.list(FileKind::Key).await?;
        if keys.is_empty() {
            return Err(Error::corrupt("repository", "it has a config but no key file")
                .locate(ObjectRef::File(FileKind::Key, Id::ZERO)));
        }
        let memory_path = cache_root.as_deref().map(|r| memory::path(r, &storage.location()));
        let mut mem = memory_path.as_deref().map(Memory::load).unwrap_or_default();
        let replayed = mem.observe_keys(&keys.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        for k in &replayed {
            tracing::warn!(
                "key file {} was removed from this repository and is back: the storage may have been rolled \
                 back or the key file replayed; it is not used",
                k.short()
            );
        }
        let (candidates, newer) = Self::key_candidates(&*storage, &keys, &replayed, mem.key_used).await?;
        // Try the candidates: one that opens but whose master key does not decrypt the config
        // (left by a lost `init` race, or planted) must not hide the right one.
        let mut config_error = None;
        let mut unlocked = None;
        let (mut spent, mut skipped) = (0u64, 0usize);
        for (i, (kid, kf, cost)) in candidates.iter().enumerate() {
            let cost = (*cost).max(KEY_TRY_FLOOR);
            if i > 0 && spent + cost > KDF_BUDGET {
                skipped += 1;
                continue;
            }
            spent += cost;
            let (kf, pw) = (kf.clone(), password.to_vec());
            let opened = tokio::task::spawn_blocking(move || keyfile::open(&kf, &pw)).await.expect("kdf task");
            let master = match opened {
                Ok(Some(c)) => c.master,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("key file {}: {e}", kid.short());
                    continue;
                }
            };
            let config = object::open(&master.object_cipher(), ObjectType::Config, &cfg_bytes, "config")
                .and_then(|plain| RepoConfig::decode(&plain))
                .map_err(|e| e.locate(ObjectRef::File(FileKind::Config, Id::ZERO)));
            match config {
                Ok(config) => {
                    unlocked = Some((KeyId(*kid), master, config));
                    break;
                }
                Err(e) => config_error = Some(e),
            }
        }
        let (key_id, master, config) = match (unlocked, config_error) {
            (Some(u), _) => u,
            (None, Some(e)) => return Err(e),
            // A key file of a newer format may be the one this password opens: say so.
            (None, None) if newer.is_some() => return Err(newer.expect("checked")),
            (None, None) if skipped > 0 || keys.len() > candidates.len() + replayed.len() => {
                return Err(Error::KeyBudget {
                    tried: candidates.len() - skipped,
                    listed: keys.len(),
                    replayed: replayed.len(),
                });
            }
            (None, None) if !replayed.is_empty() => return Err(Error::ReplayedKey { count: replayed.len() }),
            (None, None) => return Err(Error::WrongPassword),
        };
        if let Some(p) = &memory_path {
            if let Some(old) = mem.repo.filter(|r| *r != config.repo_id) {
                // What was remembered is another repository's (its snapshots would look rolled
                // back): start again from what is here now.
                tracing::warn!(
                    "{} holds another repository ({}) than the one seen here before ({}): initialized \
                     again? What was remembered about the old one is dropped",
                    storage.location(),
                    config.repo_id.short(),
                    old.short()
                );
                mem = Memory { keys_seen: std::mem::take(&mut mem.keys_seen), ..Memory::default() };
            }
            mem.repo = Some(config.repo_id);
            mem.key_used = Some(key_id.0);
            mem.save(p);
        }
        let cache = cache_root.map(|r| Cache::new(&r, &config.repo_id));
        Ok(Repository {
            storage,
            master,
            config,
            key_id,
            cache,
            index: RwLock::default(),
            fallback: RwLock::default(),
            memory_path,
        })
    }

    /// The key files worth trying, in order: (id, bytes, Argon2 cost in KiB × passes).
    async fn key_candidates(
        storage: &dyn Storage,
        keys: &[(Id, u64)],
        replayed: &[Id],
        used: Option<Id>,
    ) -> Result<(Vec<(Id, Bytes, u64)>, Option<Error>)> {
        let mut ids: Vec<Id> = keys
            .iter()
            .filter(|(id, size)| *size <= FileKind::Key.max_len() && !replayed.contains(id))
            .map(|(id, _)| *id)
            .collect();
        // The last-used key first, then the rest in a fixed order.
        ids.sort_by_key(|id| (Some(*id) != used, *id));
        ids.truncate(MAX_KEY_FILES);
        let read: Vec<Result<(Id, Bytes)>> =
            futures::stream::iter(ids.into_iter().map(|id| async move {
                storage.read(FileKind::Key, &id, FileKind::Key.max_len()).await.map(|b| (id, b))
            }))
            .buffered(LOAD_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::new();
        let mut newer = None;
        for r in read {
            let (id, b) = match r {
                Ok(x) => x,
                Err(Error::NotFound { .. }) => continue, // removed since the listing
                Err(e) => return Err(e),
            };
            if Id::of_stored(&b) != id {
                tracing::warn!("key file {}: its bytes do not hash to its name; not used", id.short());
                continue;
            }
            match keyfile::info(&b) {
                Ok(info) => out.push((id, b, info.kdf.work())),
                Err(e @ Error::UnsupportedVersion { .. }) => newer = Some(e),
                Err(e) => tracing::warn!("key file {}: {e}; not used", id.short()),
            }
        }
        // Stable sort: the last-used key (first) stays first among equals only if cheapest;
        // keep it first regardless.
        let first = out.first().map(|(id, ..)| *id).filter(|id| Some(*id) == used);
        out.sort_by_key(|(id, _, cost)| (Some(*id) != first, *cost, *id));
        Ok((out, newer))
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// The id of the key file used to unlock.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// A whole object, at most `limit` bytes (the listed size, capped by the kind's maximum).
    async fn read_object(&self, kind: FileKind, id: &Id, limit: u64) -> Result<Bytes> {
        let limit = limit.min(kind.max_len());
        let (b, Verified(verified)) = match &self.cache {
            Some(c) => c.read_through(&*self.storage, kind, id, limit).await?,
            None => {
                let b = self.storage.read(kind, id, limit).await?;
                let verified = Id::of_stored(&b) == *id;
                (b, Verified(verified))
            }
        };
        if !verified {
            return Err(Error::corrupt("object", "stored bytes do not hash to the object's name")
                .locate(ObjectRef::File(kind, *id)));
        }
        Ok(b)
    }

    /// Load one index object.
    pub async fn read_index_file(&self, id: &IndexId) -> Result<IndexFile> {
        self.read_index_file_sized(id, FileKind::Index.max_len()).await
    }

    async fn read_index_file_sized(&self, id: &IndexId, limit: u64) -> Result<IndexFile> {
        let b = self.read_object(FileKind::Index, &id.0, limit).await?;
        let plain = object::open(&self.master.object_cipher(), ObjectType::Index, &b, "index")
            .map_err(|e| e.locate(ObjectRef::File(FileKind::Index, id.0)))?;
        IndexFile::decode(&plain).map_err(|e| e.locate(ObjectRef::File(FileKind::Index, id.0)))
    }

    /// Every index object in storage, superseded ones included (one LIST; downloads only what
    /// the cache lacks). One that is gone by the time it is read was removed after the listing,
    /// which only garbage collection does, to a superseded object: it is left out.
    pub async fn index_files(&self) -> Result<Vec<(IndexId, IndexFile)>> {
        let mut out = Vec::new();
        self.for_each_index_file(|id, f| {
            out.push((id, f));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Every index object in storage, as `index_files` finds them, handed to `take` one at a
    /// time as they arrive (in no particular order) instead of gathered.
    async fn for_each_index_file(&self, mut take: impl FnMut(IndexId, IndexFile) -> Result<()> + Send) -> Result<()> {
        self.for_each_index_payload(|id, payload| take(id, IndexFile::decode(payload)?)).await
    }

    /// Every index object in storage, as `for_each_index_file` finds them, handed to `take` as
    /// its plaintext payload. An error `take` returns is located at the object.
    async fn for_each_index_payload(&self, take: impl FnMut(IndexId, &[u8]) -> Result<()> + Send) -> Result<()> {
        let listed = self.list_index().await?;
        self.for_each_listed_index_payload(&listed, take).await
    }

    /// The index objects in storage with their sizes (one LIST); cached ones no longer listed
    /// are forgotten.
    async fn list_index(&self) -> Result<Vec<(Id, u64)>> {
        let listed = self.storage.list(FileKind::Index).await?;
        if let Some(c) = &self.cache {
            c.retain(FileKind::Index, &listed.iter().map(|(id, _)| *id).collect::<HashSet<_>>());
        }
        Ok(listed)
    }

    /// `for_each_index_payload` over the objects of an earlier listing (one gone since is
    /// left out).
    async fn for_each_listed_index_payload(
        &self,
        listed: &[(Id, u64)],
        mut take: impl FnMut(IndexId, &[u8]) -> Result<()> + Send,
    ) -> Result<()> {
        let budget = tokio::sync::Semaphore::new(permits(LOAD_BYTES) as usize);
        // Owned pairs: a closure over `&(Id, u64)` makes the future not `Send` for a spawned
        // task (the higher-ranked lifetime error of rust-lang/rust#64552).
        let loaded = futures::stream::iter(listed.iter().copied().map(|(id, size)| {
            let budget = &budget;
            async move {
                let _held = budget.acquire_many(permits(size)).await.expect("never closed");
                match self.read_object(FileKind::Index, &id, size).await {
                    Ok(b) => Ok(Some((IndexId(id), b))),
                    Err(Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }))
        .buffer_unordered(LOAD_CONCURRENCY);
        let mut loaded = std::pin::pin!(loaded);
        let (cipher, mut bufs) = (self.master.object_cipher(), Default::default());
        while let Some(next) = loaded.next().await {
            if let Some((id, stored)) = next? {
                let locate = |e: Error| e.locate(ObjectRef::File(FileKind::Index, id.0));
                let plain =
                    object::open_reusing(&cipher, ObjectType::Index, &stored, "index", &mut bufs).map_err(locate)?;
                take(id, plain).map_err(locate)?;
            }
        }
        Ok(())
    }

    /// List and load every index object and build the index from those that no other index
    /// object supersedes (FORMAT.md §9). Each object is folded in as it arrives (`IndexBuilder`):
    /// memory stays near the index's own 48 B per blob.
    pub async fn load_index(&self) -> Result<Arc<Index>> {
        self.load_index_selecting(Selection::All).await
    }

    /// `load_index`, keeping only the blobs `select` names, in the index and in its fallback.
    /// A reader that needs trees first and then some data blobs (a restore) loads `Trees`, then
    /// `TreesAnd` the data it needs: two readings of the index objects, a fraction of the
    /// memory. Writers must not use such an index (they would store again what it leaves out).
    pub async fn load_index_selecting(&self, select: Selection) -> Result<Arc<Index>> {
        let listed = self.list_index().await?;
        let (idx, fallback) = self.read_into(&listed, IndexBuilder::selecting(select)).await?.finish()?;
        Ok(self.install_index(idx, fallback))
    }

    /// `builder` with the objects of `listed` added.
    async fn read_into(&self, listed: &[(Id, u64)], mut builder: IndexBuilder) -> Result<IndexBuilder> {
        self.for_each_listed_index_payload(listed, |id, payload| builder.add_payload(id, payload)).await?;
        Ok(builder)
    }

    /// The index a writer needs, in the least memory, when there is a cache and the index
    /// objects take at least `keys_from` bytes in storage (`KEYS_FROM_BYTES`, say): the tree
    /// blobs with their locations (a backup reads its parent's trees), and every data blob by
    /// the first `KEY_BYTES` bytes of its id only (`IndexScope::Dedup`): 16 bytes a data blob
    /// instead of 48. The objects of one listing are read twice, the second time from the
    /// cache: first for the trees and which objects are current, then for the data blobs of
    /// those (see `KeysBuilder`). Otherwise one reading, whole (`load_index`): without a cache
    /// a second reading would download the index again, and a small index is read again for
    /// less than it saves (a backup with nothing to do took 0.28 s instead of 0.26 on a
    /// repository of 1 GB). Use it on a `view` in a process that shares this `Repository` with
    /// jobs needing locations of data blobs (restores, check, prune).
    pub async fn load_index_for_writing(&self, keys_from: u64) -> Result<Arc<Index>> {
        let listed = self.list_index().await?;
        let stored: u64 = listed.iter().map(|(_, size)| size).sum();
        if self.cache.is_none() || stored < keys_from {
            let (idx, fallback) = self.read_into(&listed, IndexBuilder::default()).await?.finish()?;
            return Ok(self.install_index(idx, fallback));
        }
        let trees = self.read_into(&listed, IndexBuilder::selecting(Selection::Trees)).await?;
        let mut keys = KeysBuilder::new(trees.current());
        let (idx, fallback) = trees.finish()?;
        self.for_each_listed_index_payload(&listed, |id, payload| keys.add_payload(id, payload)).await?;
        Ok(self.install_index(keys.finish(idx), fallback))
    }

    /// Use `idx` and `fallback` from now on, and forget cached packs no longer indexed.
    fn install_index(&self, idx: Index, fallback: Index) -> Arc<Index> {
        let idx = Arc::new(idx);
        *self.fallback.write().expect("lock") = Arc::new(fallback);
        if let Some(c) = &self.cache {
            c.retain(FileKind::Pack, &idx.packs().iter().map(|p| p.id.0).collect::<HashSet<_>>());
        }
        *self.index.write().expect("lock") = idx.clone();
        idx
    }

    /// Write an index object superseding others (format version 2: version 1 software refuses
    /// it, as it must, since it would not honour `supersedes`).
    pub async fn save_index_v2(&self, file: &IndexFile) -> Result<IndexId> {
        let bytes = object::seal_version(&self.master.object_cipher(), ObjectType::Index, &file.encode(), 3, 2);
        let id = Id::of_stored(&bytes);
        self.storage.create(FileKind::Index, &id, Bytes::from(bytes)).await?;
        Ok(IndexId(id))
    }

    /// Store a garbage-collection marker (create-only, content-named).
    pub async fn save_marker(&self, m: &Marker) -> Result<MarkerId> {
        let bytes = object::seal_version(&self.master.object_cipher(), ObjectType::Marker, &m.encode(), 3, 2);
        let id = Id::of_stored(&bytes);
        match self.storage.create(FileKind::Marker, &id, Bytes::from(bytes)).await {
            Ok(()) | Err(Error::AlreadyExists { .. }) => Ok(MarkerId(id)),
            Err(e) => Err(e),
        }
    }

    /// Every marker in storage (read directly, never cached: markers come and go).
    pub async fn markers(&self) -> Result<Vec<(MarkerId, Marker)>> {
        let mut out = Vec::new();
        for (id, size) in self.storage.list(FileKind::Marker).await? {
            let b = match self.storage.read(FileKind::Marker, &id, size.min(FileKind::Marker.max_len())).await {
                Ok(b) => b,
                Err(Error::NotFound { .. }) => continue, // swept after the listing
                Err(e) => return Err(e),
            };
            if Id::of_stored(&b) != id {
                return Err(Error::corrupt("marker", "stored bytes do not hash to the object's name")
                    .locate(ObjectRef::File(FileKind::Marker, id)));
            }
            let plain = object::open(&self.master.object_cipher(), ObjectType::Marker, &b, "marker")
                .map_err(|e| e.locate(ObjectRef::File(FileKind::Marker, id)))?;
            out.push((
                MarkerId(id),
                Marker::decode(&plain).map_err(|e| e.locate(ObjectRef::File(FileKind::Marker, id)))?,
            ));
        }
        out.sort_by_key(|(id, m)| (m.mark_time_ns, *id));
        Ok(out)
    }

    /// The same open repository (storage, keys, cache) with an index of its own, starting from
    /// the current one. A job that loads a selection (`load_index_selecting`) does so on its own
    /// view: jobs sharing one opened repository (the agent's) never see each other's selections,
    /// and a writer sharing it never deduplicates against one.
    pub fn view(&self) -> Repository {
        Repository {
            storage: self.storage.clone(),
            master: self.master.clone(),
            config: self.config.clone(),
            key_id: self.key_id,
            cache: self.cache.clone(),
            index: RwLock::new(self.index()),
            fallback: RwLock::new(self.fallback()),
            memory_path: self.memory_path.clone(),
        }
    }

    /// Use `idx` as the index from now on (check and repair build theirs from the index objects
    /// that open, leaving out packs that are gone).
    pub fn set_index(&self, idx: Arc<Index>) {
        *self.index.write().expect("lock") = idx;
    }

    /// Use `fb` as the readers' fallback (see `fallback`).
    pub fn set_fallback(&self, fb: Arc<Index>) {
        *self.fallback.write().expect("lock") = fb;
    }

    /// Blobs that only superseded index objects list (see `marked_only`), as last loaded.
    pub fn fallback(&self) -> Arc<Index> {
        self.fallback.read().expect("lock").clone()
    }

    /// Where a blob is for a reader: the index, else the packs a prune marked but has not
    /// deleted yet (a snapshot written by a backup that started before the prune may use them).
    pub fn lookup(&self, kind: BlobKind, id: &BlobId) -> Option<crate::index::BlobLocation> {
        self.index().lookup(kind, id).or_else(|| self.fallback().lookup(kind, id))
    }

    /// The index as last loaded or extended.
    pub fn index(&self) -> Arc<Index> {
        self.index.read().expect("lock").clone()
    }

    /// Start adding blobs (inside a tokio runtime). Uses the index as loaded now, which must be
    /// a full one or one for writing (`load_index`, `load_index_for_writing`; not a
    /// `Selection`). With a cache, the writer journals its
    /// uploaded packs (see `resume_interrupted`).
    pub fn writer(&self, mut opts: WriterOptions) -> BlobWriter {
        debug_assert!(
            matches!(self.index().scope(), IndexScope::Full | IndexScope::Dedup),
            "a writer deduplicates against a full index or one for writing, not a selection"
        );
        if let Some(dir) = self.storage.spool_dir() {
            opts.tmp_dir = dir;
        }
        let journal = self.cache.as_ref().and_then(|c| match Journal::create(&c.dir().join(PENDING_DIR)) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::warn!("cannot create the pending-pack journal in {}: {e}", c.dir().display());
                None
            }
        });
        BlobWriter::new(
            self.storage.clone(),
            self.master.clone(),
            self.index(),
            self.config.compression_level,
            self.config.pack_size,
            opts,
            journal,
        )
    }

    /// Index the packs of interrupted writers on this machine (their journals in the cache) so
    /// a new backup reuses them instead of uploading them again. Each recorded pack is checked
    /// on storage first (its last blob is read and verified); a pack that is not there is
    /// skipped. Call after `load_index`, before `writer`. Without a cache this does nothing.
    pub async fn resume_interrupted(&self) -> Result<Resumed> {
        let mut r = Resumed::default();
        let Some(cache) = &self.cache else { return Ok(r) };
        let orphans = journal::orphans(&cache.dir().join(PENDING_DIR), &self.master.object_cipher());
        if orphans.is_empty() {
            return Ok(r);
        }
        let index = self.index();
        // A pack a prune has marked is never taken back: its sweep may delete it at any time.
        let marked: HashSet<PackId> = self.markers().await?.into_iter().flat_map(|(_, m)| m.packs).collect();
        let mut packs = Vec::new();
        let mut seen = HashSet::new();
        for p in orphans.iter().flat_map(|o| &o.packs) {
            if marked.contains(&p.id) {
                r.missing += 1;
                continue;
            }
            if !seen.insert(p.id) || p.blobs.iter().all(|b| index.contains(b.kind, &b.id)) {
                continue; // listed by an index object already (or twice in the journals)
            }
            // Uploads are atomic: one verified blob proves the pack is stored (the smallest is cheapest).
            let Some(last) = p.blobs.iter().min_by_key(|b| b.stored_len) else { continue };
            let stored = match self
                .storage
                .read_range(FileKind::Pack, &p.id.0, u64::from(last.offset), u64::from(last.stored_len))
                .await
            {
                Ok(b) => b,
                Err(Error::NotFound { .. }) => {
                    r.missing += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = pack::open_blob(&self.master, &p.salt, last.kind, &last.id, &stored) {
                tracing::warn!("interrupted backup's pack {}: {e}; not reused", p.id.0.short());
                r.missing += 1;
                continue;
            }
            r.packs += 1;
            r.blobs += p.blobs.len() as u64;
            r.bytes += p.blobs.iter().map(|b| u64::from(b.stored_len)).sum::<u64>();
            packs.push(p.clone());
        }
        if !packs.is_empty() {
            let file = IndexFile { packs, supersedes: Vec::new() };
            r.index = Some(write_index(&*self.storage, &self.master.object_cipher(), file.packs.clone()).await?);
            self.add_to_index(&file)?;
        }
        orphans.into_iter().for_each(journal::Orphan::remove);
        Ok(r)
    }

    /// Write an index object listing `file`'s packs (for repair tools and tests that forge
    /// repositories; backups write their index objects through the writer).
    pub async fn save_index(&self, file: &IndexFile) -> Result<IndexId> {
        write_index(&*self.storage, &self.master.object_cipher(), file.packs.clone()).await
    }

    /// Finish a writer and add what it wrote to the in-memory index.
    pub async fn finish_writer(&self, w: BlobWriter) -> Result<WriterResult> {
        let r = w.finish().await?;
        self.add_to_index(&r.index_file)?;
        Ok(r)
    }

    /// Add `file`'s blobs to the in-memory index: in place when nothing else holds it (a copy
    /// would hold two big indexes at once), else into a copy (readers keep the one they have).
    fn add_to_index(&self, file: &IndexFile) -> Result<()> {
        let mut slot = self.index.write().expect("lock");
        match Arc::try_unwrap(std::mem::take(&mut *slot)) {
            Ok(mut idx) => {
                let added = idx.add(file);
                *slot = Arc::new(idx);
                added
            }
            Err(shared) => match shared.extended(file) {
                Ok(idx) => {
                    *slot = Arc::new(idx);
                    Ok(())
                }
                Err(e) => {
                    *slot = shared;
                    Err(e)
                }
            },
        }
    }

    /// A pack's own list of blobs, from its trailer and header: two range reads of a pack of
    /// `size` bytes (its listed size). For rebuilding an index and for checks.
    pub async fn pack_header(&self, id: &PackId, size: u64) -> Result<crate::index::IndexPack> {
        let at = ObjectRef::File(FileKind::Pack, id.0);
        let trailer = pack::TRAILER_LEN as u64;
        if size < trailer {
            return Err(Error::corrupt("pack", format!("{size} bytes: shorter than a trailer")).locate(at));
        }
        let t = self.storage.read_range(FileKind::Pack, &id.0, size - trailer, trailer).await?;
        let (salt, hlen) = pack::parse_trailer(&t).map_err(|e| e.locate(at.clone()))?;
        let hstart = (size - trailer)
            .checked_sub(u64::from(hlen))
            .filter(|_| u64::from(hlen) <= crate::storage::MAX_OBJECT_LEN)
            .ok_or_else(|| Error::corrupt("pack", format!("its header claims {hlen} bytes")).locate(at.clone()))?;
        let h = self.storage.read_range(FileKind::Pack, &id.0, hstart, u64::from(hlen)).await?;
        let blobs = pack::parse_header(&self.master, &salt, &h, hstart).map_err(|e| e.locate(at))?;
        Ok(crate::index::IndexPack { id: *id, salt, blobs })
    }

    /// Read and verify one blob. Tree blobs come from the cached copy of their whole pack
    /// when there is a cache (one download per tree pack instead of one GET per directory).
    pub async fn read_blob(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        let loc = self.lookup(kind, id).ok_or(Error::BlobNotInIndex(id.0))?;
        let (offset, len) = (u64::from(loc.offset), u64::from(loc.stored_len));
        if let (BlobKind::Tree, Some(cache)) = (kind, &self.cache) {
            let limit = 2 * u64::from(self.config.pack_size) + crate::storage::MAX_OBJECT_LEN;
            if let Some(stored) = cache.pack_range(&*self.storage, &loc.pack.0, offset, len, limit).await? {
                match pack::open_blob(&self.master, &loc.salt, kind, id, &stored) {
                    Ok(plain) => return Ok(plain),
                    Err(_) => cache.drop_pack(&loc.pack.0), // read storage below, report from there
                }
            }
        }
        let stored = self.storage.read_range(FileKind::Pack, &loc.pack.0, offset, len).await?;
        pack::open_blob(&self.master, &loc.salt, kind, id, &stored)
            .map_err(|e| e.locate(ObjectRef::Blob { id: id.0, pack: loc.pack.0 }))
    }

    /// A directory's tree, whole: a directory stored in parts is joined, up to
    /// `MAX_JOINED_ENTRIES` entries (walks over whole snapshots read the parts one by one
    /// instead: `read_dir`, `read_tree_part`).
    pub async fn read_tree(&self, id: &TreeId) -> Result<Tree> {
        let parts = match self.read_dir(id).await? {
            Directory::Tree(t) => return Ok(t),
            Directory::Parts(p) => p,
        };
        let total: u64 = parts.iter().map(|p| u64::from(p.entries)).sum();
        if total > MAX_JOINED_ENTRIES {
            return Err(Error::Invalid(format!(
                "directory {} holds {total} entries in {} parts, more than {MAX_JOINED_ENTRIES} can be listed at once",
                id.0.short(),
                parts.len()
            )));
        }
        let mut nodes = Vec::new();
        for p in &parts {
            nodes.extend(self.read_tree_part(p).await?.nodes);
        }
        Ok(Tree { nodes })
    }

    /// A directory's blob as stored: a tree, or the index of its parts.
    pub async fn read_dir(&self, id: &TreeId) -> Result<Directory> {
        let b = self.read_blob(BlobKind::Tree, &BlobId(id.0)).await?;
        let pack = self.lookup(BlobKind::Tree, &BlobId(id.0)).map(|l| l.pack.0).unwrap_or(Id::ZERO);
        Directory::decode(&b).map_err(|e| e.locate(ObjectRef::Blob { id: id.0, pack }))
    }

    /// One part of a directory stored in parts: a tree (never another index) with as many
    /// entries as the index says.
    pub async fn read_tree_part(&self, part: &DirPart) -> Result<Tree> {
        let id = &part.id;
        let b = self.read_blob(BlobKind::Tree, &BlobId(id.0)).await?;
        let pack = self.lookup(BlobKind::Tree, &BlobId(id.0)).map(|l| l.pack.0).unwrap_or(Id::ZERO);
        let t = Tree::decode(&b).map_err(|e| e.locate(ObjectRef::Blob { id: id.0, pack }))?;
        if t.nodes.len() != part.entries as usize {
            let msg = format!("a directory part of {} entries where its index says {}", t.nodes.len(), part.entries);
            return Err(Error::corrupt("tree", msg).locate(ObjectRef::Blob { id: id.0, pack }));
        }
        Ok(t)
    }

    /// Write a snapshot (after the writer holding its blobs has finished). A snapshot whose
    /// tree has directories in parts is written as format version 3, so that older software
    /// refuses it by name (and never prunes what it cannot follow) instead of calling its trees
    /// corrupt.
    pub async fn save_snapshot(&self, s: &Snapshot) -> Result<SnapshotId> {
        let version = if s.summary.dirs_split > 0 { 3 } else { object::BASE_VERSION };
        let b = object::seal_version(&self.master.object_cipher(), ObjectType::Snapshot, &s.encode()?, 3, version);
        let id = Id::of_stored(&b);
        self.storage.create(FileKind::Snapshot, &id, Bytes::from(b)).await?;
        Ok(SnapshotId(id))
    }

    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.load_snapshot_sized(id, FileKind::Snapshot.max_len()).await
    }

    async fn load_snapshot_sized(&self, id: &SnapshotId, limit: u64) -> Result<Snapshot> {
        let b = self.read_object(FileKind::Snapshot, &id.0, limit).await?;
        let plain = object::open(&self.master.object_cipher(), ObjectType::Snapshot, &b, "snapshot")
            .map_err(|e| e.locate(ObjectRef::File(FileKind::Snapshot, id.0)))?;
        Snapshot::decode(&plain).map_err(|e| e.locate(ObjectRef::File(FileKind::Snapshot, id.0)))
    }

    /// Every snapshot, oldest first. A snapshot object that does not open (damaged, or junk
    /// under a valid name) is left out with a warning naming it, so one bad object does not hide
    /// the others. With a memory file, a newest snapshot that
    /// disappeared with nothing newer in its place is warned about (see `memory`).
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let listed = self.storage.list(FileKind::Snapshot).await?;
        if let Some(c) = &self.cache {
            c.retain(FileKind::Snapshot, &listed.iter().map(|(id, _)| *id).collect::<HashSet<_>>());
        }
        let budget = tokio::sync::Semaphore::new(permits(LOAD_BYTES) as usize);
        let loaded: Vec<(SnapshotId, Result<Snapshot>)> =
            futures::stream::iter(listed.iter().copied().map(|(id, size)| {
                let budget = &budget;
                async move {
                    let _held = budget.acquire_many(permits(size)).await.expect("never closed");
                    (SnapshotId(id), self.load_snapshot_sized(&SnapshotId(id), size).await)
                }
            }))
            .buffer_unordered(LOAD_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(loaded.len());
        for (id, r) in loaded {
            match r {
                Ok(s) => out.push((id, s)),
                Err(e) if e.is_corrupt() => tracing::warn!("snapshot {} is left out: {e}", id.0.short()),
                // Removed after the listing (a concurrent forget).
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(id, s)| (s.time_ns, *id));
        self.remember_newest(&out);
        Ok(out)
    }

    /// Compare the newest snapshot (not from the future) with the one remembered, warn if the
    /// remembered one is gone and nothing replaced it, and remember the newest.
    fn remember_newest(&self, all: &[(SnapshotId, Snapshot)]) {
        let Some(path) = &self.memory_path else { return };
        let mut mem = Memory::load(path);
        let limit = now_ns().saturating_add(FUTURE_SKEW_NS);
        let newest = all.iter().rev().find(|(_, s)| s.time_ns <= limit).map(|(id, s)| (id.0, s.time_ns));
        if let Some((old_id, old_ns)) = mem.newest {
            let present = all.iter().any(|(id, _)| id.0 == old_id);
            if !present && newest.is_none_or(|(_, ns)| ns < old_ns) {
                tracing::warn!(
                    "snapshot {} (the newest seen here before) is no longer in the repository and nothing \
                     newer is: if nobody removed it, the storage may have been rolled back",
                    old_id.short()
                );
            }
            if present || newest.is_some_and(|(_, ns)| ns >= old_ns) {
                mem.newest = newest;
            }
        } else {
            mem.newest = newest;
        }
        mem.save(path);
    }

    /// Forget the remembered newest snapshot (after snapshots were removed on purpose).
    pub fn forget_newest(&self) {
        if let Some(path) = &self.memory_path {
            let mut mem = Memory::load(path);
            mem.newest = None;
            mem.save(path);
        }
    }

    /// Add a key file for `password`.
    pub async fn add_key(&self, password: &[u8], kdf: KdfParams, label: &str) -> Result<KeyId> {
        let (master, label) = (self.master.clone(), label.to_string());
        let pw = password.to_vec();
        let kf = tokio::task::spawn_blocking(move || keyfile::create(&master, &pw, kdf, now_ns(), &label))
            .await
            .expect("kdf task")?;
        let id = KeyId(Id::of_stored(&kf));
        self.storage.create(FileKind::Key, &id.0, Bytes::from(kf)).await?;
        Ok(id)
    }

    /// Every key file (its label and date need the master key: each is opened with it).
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for (id, size) in self.storage.list(FileKind::Key).await? {
            if size > FileKind::Key.max_len() {
                return Err(Error::corrupt("key file", format!("{size} bytes, more than a key file may have"))
                    .locate(ObjectRef::File(FileKind::Key, id)));
            }
            let b = self.storage.read(FileKind::Key, &id, FileKind::Key.max_len()).await?;
            let info = keyfile::info(&b).map_err(|e| e.locate(ObjectRef::File(FileKind::Key, id)))?;
            // A key file of another master key (a lost init race, a stray copy) cannot unlock
            // this repository: list it as such rather than failing the listing.
            let (created_ns, label) = keyfile::meta(&b, &self.master)
                .unwrap_or_else(|_| (0, "(foreign key: does not open this repository)".to_string()));
            out.push(KeyInfo { id: KeyId(id), created_ns, label, kdf: info.kdf, current: KeyId(id) == self.key_id });
        }
        out.sort_by_key(|k| k.id);
        Ok(out)
    }

    /// Remove a key file. Refuses the key this session was opened with (use `change_password`)
    /// and the last key.
    pub async fn remove_key(&self, id: &KeyId) -> Result<()> {
        if *id == self.key_id {
            return Err(Error::Invalid(format!(
                "key {} is the one this session was unlocked with: remove it from a session opened with another key",
                id.0.short()
            )));
        }
        let keys = self.storage.list(FileKind::Key).await?;
        if !keys.iter().any(|(k, _)| *k == id.0) {
            return Err(Error::NotFound { kind: FileKind::Key, id: id.0 });
        }
        self.storage.remove(FileKind::Key, &id.0).await
    }

    /// Replace this session's key file by one for `new_password` (data untouched).
    pub async fn change_password(&mut self, new_password: &[u8], kdf: KdfParams, label: &str) -> Result<KeyId> {
        let new_id = self.add_key(new_password, kdf, label).await?;
        let old = self.key_id;
        self.key_id = new_id;
        self.storage.remove(FileKind::Key, &old.0).await?;
        Ok(new_id)
    }
}

/// The index objects that no other one supersedes.
pub fn current(files: &[(IndexId, IndexFile)]) -> impl Iterator<Item = &IndexFile> {
    let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    files.iter().filter(move |(id, _)| !superseded.contains(id)).map(|(_, f)| f)
}

/// The packs that superseded index objects list and current ones do not (what a prune marked
/// and has not swept), as one index payload.
pub fn marked_only(files: &[(IndexId, IndexFile)]) -> IndexFile {
    let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let listed: HashSet<crate::id::PackId> = current(files).flat_map(|f| f.packs.iter().map(|p| p.id)).collect();
    let mut seen = HashSet::new();
    let packs = files
        .iter()
        .filter(|(id, _)| superseded.contains(id))
        .flat_map(|(_, f)| &f.packs)
        .filter(|p| !listed.contains(&p.id) && seen.insert(p.id))
        .cloned()
        .collect();
    IndexFile { packs, supersedes: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectStorage;

    fn local(dir: &std::path::Path) -> Arc<dyn Storage> {
        Arc::new(ObjectStorage::local(dir).unwrap())
    }

    /// Ids of the fixture below: `tag` 1 packs, 2 blobs, 3 index objects.
    fn fixture_id(tag: u8, n: u64) -> Id {
        Id(crate::hash::hash(&[&[tag][..], &n.to_le_bytes()].concat()))
    }

    /// Index objects as garbage collection leaves them: 0 and 1 are superseded by 2 (a prune's
    /// rewrite); 3 is current; pack 11 is only in the superseded 1 (marked, not swept); pack 10
    /// is in 0 and, rewritten, in 2; blob 5 is in two packs. Blob `b` is a tree if `b % 7 == 0`.
    fn superseding_fixture() -> Vec<(IndexId, IndexFile)> {
        use crate::index::IndexPack;
        use crate::pack::PackEntry;
        let id = fixture_id;
        let pack = |p: u64, blobs: std::ops::Range<u64>| IndexPack {
            id: crate::id::PackId(id(1, p)),
            salt: [p as u8; crate::crypto::SALT_LEN],
            blobs: blobs
                .map(|b| PackEntry {
                    kind: if b % 7 == 0 { BlobKind::Tree } else { BlobKind::Data },
                    id: crate::id::BlobId(id(2, b)),
                    offset: (b * 10) as u32,
                    stored_len: 10,
                    raw_len: 9,
                })
                .collect(),
        };
        vec![
            (IndexId(id(3, 0)), IndexFile { packs: vec![pack(10, 0..6)], supersedes: vec![] }),
            (IndexId(id(3, 1)), IndexFile { packs: vec![pack(11, 20..30)], supersedes: vec![] }),
            (
                IndexId(id(3, 2)),
                IndexFile { packs: vec![pack(10, 0..6)], supersedes: vec![IndexId(id(3, 0)), IndexId(id(3, 1))] },
            ),
            (IndexId(id(3, 3)), IndexFile { packs: vec![pack(12, 5..15), pack(13, 40..41)], supersedes: vec![] }),
        ]
    }

    /// The index built one object at a time is the one built from all objects at once: the
    /// current objects' blobs, and the packs only superseded objects list as the fallback.
    #[test]
    fn the_index_built_object_by_object_is_the_one_built_at_once() {
        use crate::index::IndexBuilder;
        let id = fixture_id;
        let files = superseding_fixture();
        let want = Index::build(current(&files)).unwrap();
        let want_fallback = Index::build([&marked_only(&files)]).unwrap();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let mut b = IndexBuilder::default();
            for i in order {
                b.add(files[i].0, files[i].1.clone()).unwrap();
            }
            let (got, got_fallback) = b.finish().unwrap();
            let ids = |i: &Index| {
                let mut v: Vec<_> = i.packs().iter().map(|p| p.id).collect();
                v.sort();
                v
            };
            // Blob 5 is stored twice: which copy an index keeps depends on the order objects
            // arrive in (as before); every other blob has one place.
            let keys = |i: &Index| i.iter().map(|(b, l)| (b, l.kind)).collect::<Vec<_>>();
            let single = |i: &Index| i.iter().filter(|(b, _)| b.0 != id(2, 5)).collect::<Vec<_>>();
            assert_eq!(keys(&got), keys(&want), "order {order:?}");
            assert_eq!(single(&got), single(&want), "order {order:?}");
            assert_eq!(ids(&got), ids(&want));
            assert!(got_fallback.iter().eq(want_fallback.iter()), "fallback, order {order:?}");
            assert_eq!(ids(&got_fallback), ids(&want_fallback));
            assert_eq!(got_fallback.len(), 10, "pack 11's blobs");
        }
    }

    /// A selection keeps, in the index and in its fallback, the tree blobs and the data blobs
    /// its filter names, at the places the full index gives them, and every pack; the scope
    /// says which it is.
    #[test]
    fn a_selected_index_keeps_trees_and_the_named_data_blobs() {
        use crate::blobfilter::BlobFilter;
        use crate::id::BlobId;
        use crate::index::IndexBuilder;
        let files = superseding_fixture();
        let build = |select: Selection| {
            let mut b = IndexBuilder::selecting(select);
            for (id, f) in &files {
                b.add(*id, f.clone()).unwrap();
            }
            b.finish().unwrap()
        };
        let (full, full_fb) = build(Selection::All);
        let blob = |n: u64| BlobId(fixture_id(2, n));
        let named = [1u64, 8, 21, 40];
        // Sized far beyond its four ids, so that no other blob of the fixture is a false positive.
        let mut filter = BlobFilter::with_capacity(1000);
        named.iter().for_each(|n| filter.insert(&blob(*n)));
        let trees = |i: &Index| i.iter().filter(|(_, l)| l.kind == BlobKind::Tree).collect::<Vec<_>>();
        for (select, scope) in
            [(Selection::Trees, IndexScope::Trees), (Selection::TreesAnd(Arc::new(filter)), IndexScope::Selected)]
        {
            let keep_data = matches!(select, Selection::TreesAnd(_));
            let (idx, fb) = build(select);
            assert_eq!((idx.scope(), fb.scope()), (scope, scope));
            assert_eq!(trees(&idx), trees(&full));
            assert_eq!(trees(&fb), trees(&full_fb));
            assert_eq!(idx.packs(), full.packs());
            assert_eq!(fb.packs(), full_fb.packs());
            for n in 0..50 {
                for (got, all) in [(&idx, &full), (&fb, &full_fb)] {
                    let want = all.lookup(BlobKind::Data, &blob(n)).filter(|_| keep_data && named.contains(&n));
                    assert_eq!(got.lookup(BlobKind::Data, &blob(n)), want, "blob {n}, {scope:?}");
                }
            }
        }
        assert_eq!((full.scope(), full_fb.scope()), (IndexScope::Full, IndexScope::Full));
    }

    /// An index for writing (trees, then the keys of the data blobs of the objects the first
    /// reading found current) answers `contains` exactly as the full index for every blob and
    /// kind, keeps the trees' locations and no data blob's, whatever order the objects come in.
    /// An object written between the two readings is not taken, and one that does not parse
    /// leaves nothing behind (it is refused).
    #[test]
    fn an_index_for_writing_knows_what_the_full_index_holds() {
        use crate::id::BlobId;
        use crate::index::{IndexBuilder, KeysBuilder};
        use crate::pack::PackEntry;
        let files = superseding_fixture();
        let mut all = IndexBuilder::default();
        for (id, f) in &files {
            all.add(*id, f.clone()).unwrap();
        }
        let (full, _) = all.finish().unwrap();
        let blob = |n: u64| BlobId(fixture_id(2, n));
        let data_blobs = full.iter().filter(|(_, l)| l.kind == BlobKind::Data).count();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let mut trees = IndexBuilder::selecting(Selection::Trees);
            for i in order {
                trees.add_payload(files[i].0, &files[i].1.encode()).unwrap();
            }
            // An object of data blobs `n` and 59 (in pack 13).
            let one = |n: u64| {
                let mut p = files[3].1.packs[1].clone();
                p.blobs[0].id = blob(n);
                p.blobs[0].kind = BlobKind::Data;
                p.blobs.push(PackEntry { id: blob(59), ..p.blobs[0] });
                IndexFile { packs: vec![p], supersedes: vec![] }
            };
            // Object 3.8 is current but damaged: its second blob is over the size limit.
            let mut current = trees.current();
            current.insert(IndexId(fixture_id(3, 8)));
            let mut keys = KeysBuilder::new(current);
            let (trees, _) = trees.finish().unwrap();
            // Written after the first reading: not taken (its blob 45 stays unknown).
            keys.add_payload(IndexId(fixture_id(3, 9)), &one(45).encode()).unwrap();
            let mut bad = one(46);
            bad.packs[0].blobs[1].raw_len = u32::MAX; // refused after blob 46 was parsed
            assert!(keys.add_payload(IndexId(fixture_id(3, 8)), &bad.encode()).is_err());
            for i in order {
                keys.add_payload(files[i].0, &files[i].1.encode()).unwrap();
            }
            let idx = keys.finish(trees);
            assert_eq!(idx.scope(), IndexScope::Dedup);
            assert_eq!(idx.keys_len(), data_blobs, "order {order:?}");
            let sorted = |i: &Index| {
                let mut v: Vec<_> = i.packs().iter().map(|p| p.id).collect();
                v.sort();
                v
            };
            assert_eq!(sorted(&idx), sorted(&full));
            for n in 0..60 {
                for kind in [BlobKind::Data, BlobKind::Tree] {
                    let b = blob(n);
                    assert_eq!(idx.contains(kind, &b), full.contains(kind, &b), "blob {n} {kind:?}, order {order:?}");
                    let want = full.lookup(kind, &b).filter(|_| kind == BlobKind::Tree);
                    assert_eq!(idx.lookup(kind, &b), want, "blob {n} {kind:?}");
                }
            }
            assert!(!idx.contains(BlobKind::Data, &blob(45)), "an object the first reading did not see");
            assert!(!idx.contains(BlobKind::Data, &blob(46)), "an object that did not parse");
            assert!(!idx.contains(BlobKind::Data, &blob(25)), "pack 11 is only in a superseded object");
            assert!(idx.memory_bytes() < full.memory_bytes());
        }
    }

    #[tokio::test]
    async fn init_with_a_shared_id_key_keeps_ids_and_renews_encryption() {
        let tmp = tempfile::tempdir().unwrap();
        let kdf = KdfParams::insecure_for_tests();
        let a = Repository::init(local(&tmp.path().join("a")), b"pa", kdf, RepoConfig::new(1), "a").await.unwrap();
        let opts = InitOptions { id_key_from: Some(a.master_key()) };
        let b = Repository::init_with(local(&tmp.path().join("b")), b"pb", kdf, RepoConfig::new(2), "b", opts);
        b.await.unwrap();
        let b = Repository::open(local(&tmp.path().join("b")), b"pb", None).await.unwrap();
        assert!(b.master_key().same_id_key(a.master_key()));
        assert_eq!(b.master_key().chunker_seed(), a.master_key().chunker_seed());
        assert_ne!(b.master_key(), a.master_key(), "the encryption key is the new repository's own");
        let c = Repository::init(local(&tmp.path().join("c")), b"pc", kdf, RepoConfig::new(3), "c").await.unwrap();
        assert!(!c.master_key().same_id_key(a.master_key()));
    }
}
