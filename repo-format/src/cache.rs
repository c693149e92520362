//! A local cache of immutable, content-named objects (index files, snapshots, and the packs
//! that hold tree blobs).
//!
//! Layout: `<root>/<repository id>/<kind>/<id>`. An object's name is the hash of its bytes, so
//! a cached copy is verified by re-hashing before use; a bad copy is dropped and fetched again.
//! The cache is an optimization only: it never decides what exists (the storage listing does).
//!
//! Tree packs are cached whole: walking a snapshot reads one tree blob per directory, and
//! fetching each with its own ranged GET costs one round trip per directory (thousands for a
//! source tree, each 20–50 ms on a real object store). A cached pack is verified by hash when
//! it is downloaded; later reads rely on each blob's own verification (AEAD tag and keyed
//! hash), and a blob that fails it makes the caller drop the cached pack and read storage.
//!
//! The cache holds decrypted nothing, but its names and sizes say what a repository holds, and
//! a root process writes it: directories are 0700, files 0600, written under unpredictable
//! temporary names created with `O_EXCL` (never through a planted symlink) and renamed into
//! place. Reads are capped like storage reads: a cached file larger than its kind may be is
//! dropped unread.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::Result;
use crate::id::Id;
use crate::storage::{FileKind, Storage};

/// Whether bytes read were found to hash to the name they were read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Verified(pub bool);

/// A per-repository cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    /// One pack download at a time: concurrent tree reads of one pack wait for the first.
    fetch: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Cache {
    /// The cache for repository `repo_id` under `root` (created lazily).
    pub fn new(root: &Path, repo_id: &Id) -> Self {
        Cache { dir: root.join(repo_id.to_hex()), fetch: Default::default() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, kind: FileKind, id: &Id) -> PathBuf {
        self.dir.join(kind.to_string()).join(id.to_hex())
    }

    fn get(&self, kind: FileKind, id: &Id, limit: u64) -> Option<Bytes> {
        use std::io::Read;
        let f = std::fs::File::open(self.path(kind, id)).ok()?;
        let md = f.metadata().ok()?;
        if !md.is_file() || md.len() > limit {
            let _ = std::fs::remove_file(self.path(kind, id));
            return None;
        }
        let mut b = Vec::with_capacity(md.len() as usize);
        f.take(limit).read_to_end(&mut b).ok()?;
        if Id::of_stored(&b) == *id {
            Some(Bytes::from(b))
        } else {
            let _ = std::fs::remove_file(self.path(kind, id));
            None
        }
    }

    pub(crate) fn put(&self, kind: FileKind, id: &Id, b: &[u8]) {
        // Best effort: a cache that cannot be written only costs downloads.
        use std::io::Write;
        let p = self.path(kind, id);
        let Some(parent) = p.parent() else { return };
        if private_dir(parent).is_err() {
            return;
        }
        let Ok(mut tmp) = tempfile::Builder::new().prefix(".tmp-").tempfile_in(parent) else { return };
        if tmp.write_all(b).is_ok() {
            let _ = tmp.persist(&p);
        }
    }

    /// The object from the cache, or from storage (then cached), at most `limit` bytes, and
    /// whether its bytes hash to `id`. A cached copy that does not is dropped and storage read
    /// instead; stored bytes that do not are returned unverified and not cached (the caller
    /// reports them). Each object is hashed once: at an index of 10 M blobs, hashing its
    /// 315 MB again in the caller took about 0.06 s of every command.
    pub async fn read_through(
        &self,
        storage: &dyn Storage,
        kind: FileKind,
        id: &Id,
        limit: u64,
    ) -> Result<(Bytes, Verified)> {
        if let Some(b) = self.get(kind, id, limit) {
            return Ok((b, Verified(true)));
        }
        let b = storage.read(kind, id, limit).await?;
        let verified = Id::of_stored(&b) == *id;
        if verified {
            self.put(kind, id, &b);
        }
        Ok((b, Verified(verified)))
    }

    /// `len` bytes at `offset` of pack `id`, from the cached copy of the whole pack (downloaded,
    /// verified and cached on first use). `None` when the pack cannot be cached here (the
    /// caller reads storage instead), including a pack larger than `limit`.
    pub async fn pack_range(
        &self,
        storage: &dyn Storage,
        id: &Id,
        offset: u64,
        len: u64,
        limit: u64,
    ) -> Result<Option<Bytes>> {
        let path = self.path(FileKind::Pack, id);
        if let Some(b) = read_at(&path, offset, len) {
            return Ok(Some(b));
        }
        let _one = self.fetch.lock().await;
        if let Some(b) = read_at(&path, offset, len) {
            return Ok(Some(b)); // another task fetched it meanwhile
        }
        let whole = match storage.read(FileKind::Pack, id, limit).await {
            Ok(b) => b,
            Err(e) if e.is_corrupt() => return Ok(None), // too large to cache: read the range
            Err(e) => return Err(e),
        };
        if Id::of_stored(&whole) != *id {
            return Ok(None); // the caller's own read reports the corruption
        }
        self.put(FileKind::Pack, id, &whole);
        let (start, end) = (offset as usize, (offset + len) as usize);
        Ok(whole.get(start..end).map(|s| whole.slice_ref(s)))
    }

    /// Forget a cached pack (one of its blobs failed verification).
    pub fn drop_pack(&self, id: &Id) {
        let _ = std::fs::remove_file(self.path(FileKind::Pack, id));
    }

    /// Remove cached objects of `kind` that are not in `keep` (deleted from the repository).
    pub fn retain(&self, kind: FileKind, keep: &std::collections::HashSet<Id>) {
        let Ok(rd) = std::fs::read_dir(self.dir.join(kind.to_string())) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            match name.to_str().and_then(|n| Id::from_hex(n).ok()) {
                Some(id) if keep.contains(&id) => {}
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Create `dir` (and missing parents) private to this user, 0700; an existing one that others
/// can read is made private.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let md = std::fs::symlink_metadata(dir)?;
    if !md.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", dir.display())));
    }
    if md.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `len` bytes at `offset` of a local file, if it has them.
fn read_at(path: &Path, offset: u64, len: u64) -> Option<Bytes> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    f.read_exact_at(&mut buf, offset).ok()?;
    Some(Bytes::from(buf))
}
