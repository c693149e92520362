//! A local cache of immutable, content-named objects (index files, snapshots).
//!
//! Layout: `<root>/<repository id>/<kind>/<id>`. An object's name is the hash of its bytes, so
//! a cached copy is verified by re-hashing before use; a bad copy is dropped and fetched again.
//! The cache is an optimization only: it never decides what exists (the storage listing does).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::Result;
use crate::id::Id;
use crate::storage::{FileKind, Storage};

/// A per-repository cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache for repository `repo_id` under `root` (created lazily).
    pub fn new(root: &Path, repo_id: &Id) -> Self {
        Cache { dir: root.join(repo_id.to_hex()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, kind: FileKind, id: &Id) -> PathBuf {
        self.dir.join(kind.to_string()).join(id.to_hex())
    }

    fn get(&self, kind: FileKind, id: &Id) -> Option<Bytes> {
        let b = std::fs::read(self.path(kind, id)).ok()?;
        if Id::of_stored(&b) == *id {
            Some(Bytes::from(b))
        } else {
            let _ = std::fs::remove_file(self.path(kind, id));
            None
        }
    }

    fn put(&self, kind: FileKind, id: &Id, b: &[u8]) {
        // Best effort: a cache that cannot be written only costs downloads.
        let p = self.path(kind, id);
        let Some(parent) = p.parent() else { return };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = parent.join(format!(".{}.tmp{}", id.short(), std::process::id()));
        if std::fs::write(&tmp, b).is_ok() {
            let _ = std::fs::rename(&tmp, &p);
        }
    }

    /// The object from the cache, or from storage (then cached). Content is verified by hash.
    pub async fn read_through(&self, storage: &dyn Storage, kind: FileKind, id: &Id) -> Result<Bytes> {
        if let Some(b) = self.get(kind, id) {
            return Ok(b);
        }
        let b = storage.read(kind, id).await?;
        if Id::of_stored(&b) == *id {
            self.put(kind, id, &b);
        }
        Ok(b)
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
