//! Where repository files live: a small async trait keyed by (kind, id).
//!
//! `layout` maps (kind, id) to a path; `objstore` adapts any `object_store` backend (a local
//! directory, S3, Azure Blob, GCS); `local` makes a local directory's writes durable; `ReadOnly`
//! and `Counting` are decorators. The contract every backend must meet (checked by the
//! conformance tests in this module; `durability` checks the local directory's write protocol):
//! * `create` is create-only: a second create of the same name fails with `AlreadyExists` and
//!   leaves the first content (one with the same bytes succeeds: it is a retry whose first
//!   attempt was stored but not answered); a reader sees a whole object or none.
//! * `upload_file` stores a content-named object (a pack): writing it twice is harmless.
//! * `read` and `read_range` of a missing object fail with `NotFound`.
//! * `read_range` returns exactly the bytes asked for, or an error (`Corrupt` for a short or
//!   long answer): no caller ever gets fewer bytes than it asked for.
//! * `read` never buffers more than the caller's `limit`: an object larger than that fails with
//!   `Corrupt` (naming it) before or while it is downloaded, whatever size a listing claimed.
//! * `list` returns every object of a kind with its size, in no particular order.
//! * a write that returned is durable as far as the backend can promise (an object store's
//!   answer; for a local directory, `fsync` of the file and its directory: see `local`), so
//!   objects written in order survive a crash in order (packs before the index naming them).

mod counting;
mod layout;
mod local;
mod objstore;
mod readonly;

use std::fmt;
use std::fs::File;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::id::Id;

pub use counting::{Counting, RequestCounts};
pub(crate) use layout::id_of;
pub use layout::path_of;
pub use objstore::ObjectStorage;
pub use readonly::ReadOnly;

/// The kinds of files in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// The single `config` object (its id is ignored).
    Config,
    Key,
    Snapshot,
    Index,
    Pack,
    /// A garbage-collection marker (`gc/<id>`, format version 2).
    Marker,
}

impl FileKind {
    pub const ALL: [FileKind; 6] =
        [FileKind::Config, FileKind::Key, FileKind::Snapshot, FileKind::Index, FileKind::Pack, FileKind::Marker];
}

/// Largest sealed object (config, index, snapshot) a reader accepts: a 64 MiB payload
/// (`MAX_BLOB_LEN`, the decompression cap) plus its header, compression header and seal.
pub const MAX_OBJECT_LEN: u64 = crate::compress::MAX_BLOB_LEN as u64 + 1024;
/// Largest key file a reader accepts (the fixed part plus a label of at most 65,535 bytes).
pub const MAX_KEY_FILE_LEN: u64 = 80 << 10;

impl FileKind {
    /// The most a whole-object read of this kind may buffer. Packs are read whole only to cache
    /// tree packs; their cap depends on the repository's pack size (`pack_read_limit`).
    pub fn max_len(self) -> u64 {
        match self {
            FileKind::Key => MAX_KEY_FILE_LEN,
            FileKind::Config | FileKind::Snapshot | FileKind::Index | FileKind::Marker => MAX_OBJECT_LEN,
            FileKind::Pack => 2 * (1 << 30) + MAX_OBJECT_LEN,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Config => "config",
            FileKind::Key => "key",
            FileKind::Snapshot => "snapshot",
            FileKind::Index => "index",
            FileKind::Pack => "pack",
            FileKind::Marker => "marker",
        })
    }
}

/// A repository's storage backend.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where this is, for messages (a path or URL without credentials).
    fn location(&self) -> String;
    /// True for a local directory: a read costs a `pread`, not a request, so readers may use
    /// small reads (less memory) instead of few large ones (fewer requests).
    fn is_local(&self) -> bool {
        false
    }
    /// A directory on the file system that holds the packs, where a writer may spool a pack so
    /// that `upload_file` links the finished file under its name instead of copying it (a local
    /// directory); `None` where an upload must send the bytes anyway.
    fn spool_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Create-only write of a whole object.
    async fn create(&self, kind: FileKind, id: &Id, data: Bytes) -> Result<()>;
    /// Upload a content-named object from a file positioned at its start (multipart when large).
    async fn upload_file(&self, kind: FileKind, id: &Id, file: File, len: u64) -> Result<()>;
    /// A whole object of at most `limit` bytes (see `FileKind::max_len`); a larger one is
    /// `Corrupt` and is not buffered.
    async fn read(&self, kind: FileKind, id: &Id, limit: u64) -> Result<Bytes>;
    async fn read_range(&self, kind: FileKind, id: &Id, offset: u64, len: u64) -> Result<Bytes>;
    /// As `read_range`, into `buf` (its bytes replaced by exactly the range). A local directory
    /// reads into `buf`'s own memory, so a reader that reuses one buffer per read in flight
    /// touches no fresh pages (a fresh buffer per range was a tenth of a big file's restore:
    /// zeroing and page faults); elsewhere `buf` becomes the bytes the request returned.
    async fn read_range_into(&self, kind: FileKind, id: &Id, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        *buf = Vec::from(self.read_range(kind, id, offset, len).await?);
        Ok(())
    }
    async fn list(&self, kind: FileKind) -> Result<Vec<(Id, u64)>>;
    async fn remove(&self, kind: FileKind, id: &Id) -> Result<()>;
}

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
mod durability;
