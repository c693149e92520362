//! The Ferry repository format: everything needed to read and write a repository.
//!
//! The byte-level specification is `docs/FORMAT.md`; each module's doc names the part it owns.
//! This crate never prints, never parses command lines, and holds no policy about sources or
//! targets (that is the agent's). Its public surface is the `pub use` list below (`fuzzing` is
//! hidden: thin wrappers over crate-private decoders for the targets in `fuzz/`, nothing else;
//! `testing` is hidden too: the skip counter the workspace's tests share).

mod blob;
mod blobfilter;
mod blocks;
mod cache;
mod chunker;
mod codec;
mod compress;
mod config;
mod crypto;
mod dirparts;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
mod id;
mod index;
mod journal;
mod keyfile;
mod marker;
mod memory;
mod object;
mod pack;
mod repository;
mod snapshot;
mod storage;
#[doc(hidden)]
pub mod testing;
mod tree;
mod writer;

pub use blob::BlobKind;
pub use blobfilter::BlobFilter;
pub use blocks::SharedChunk;
pub use cache::{Cache, Verified};
pub use chunker::{ChunkReader, Chunker, is_zero};
pub use compress::{MAX_BLOB_LEN, compress_into, decompress, decompress_into};
pub use config::{ChunkerParams, DEFAULT_GC_GRACE_NS, RepoConfig};
pub use crypto::{Aead, MasterKey, SALT_LEN, SEAL_OVERHEAD, path as aes_gcm_path};
pub use dirparts::{DirSplitter, PART_MAX, PART_MAX_BYTES, PART_MIN, SPLIT_BYTES, SPLIT_ENTRIES, ends_part};
pub use error::{Error, ObjectRef, Result};
pub use id::{BlobId, ID_LEN, Id, IndexId, KeyId, MarkerId, PackId, SnapshotId, TreeId};
pub use index::{
    BlobLocation, INDEX_ENTRY_BYTES, Index, IndexBuilder, IndexFile, IndexPack, IndexScope, KEY_BYTES, KEYS_FROM_BYTES,
    KeysBuilder, PackRef, Selection,
};
pub use keyfile::KdfParams;
pub use marker::Marker;
pub use object::FORMAT_VERSION;
pub use pack::{PackEntry, PackOpener, TRAILER_LEN, open_blob, parse_header, parse_pack, parse_trailer};
pub use repository::{
    FUTURE_SKEW_NS, InitOptions, KeyInfo, MAX_JOINED_ENTRIES, Repository, Resumed, current as current_index_files,
    marked_only,
};
pub use snapshot::{Snapshot, Summary};
pub use storage::{
    Counting, FileKind, MAX_KEY_FILE_LEN, MAX_OBJECT_LEN, ObjectStorage, ReadOnly, RequestCounts, Storage, path_of,
};
pub use tree::{
    Content, DIR_INDEX_MAGIC, DirPart, Directory, Node, NodeType, Segment, Tree, decode_segment_list, encode_dir_index,
    encode_segment_list,
};
pub use writer::{BlobWriter, Saved, UploadBudget, WriterOptions, WriterResult, WriterStats};
