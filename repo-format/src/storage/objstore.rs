//! The adapter from `Storage` onto any `object_store` backend.
//!
//! Small objects are single create-only puts (`PutMode::Create`). Packs are content-named and
//! uploaded from their temporary file. Up to `MULTIPART_THRESHOLD` (every pack of the default
//! 32 MiB target) that is one PUT of the memory-mapped file: one request per pack, where a
//! multipart upload would cost one per part plus two, and no copy of the pack in the process's
//! own memory (the mapped pages are the page cache the pack was just written to). Larger packs
//! go as a multipart upload in `PART_SIZE` parts with at most two parts in flight.
//!
//! A local directory is read and listed through `LocalFileSystem`, but written by `local`: every
//! write is durable (file and directory entry) before it returns. Its ranges read into a
//! caller's buffer (`read_range_into`) are `local::read_at`'s `pread`s.

use std::fs::File;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use super::layout::{dir_of, id_of, path_of};
use super::local;
use super::{FileKind, Storage};
use crate::error::{Error, Result};
use crate::id::Id;

const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// S3's minimum part size.
const PART_SIZE: usize = 5 << 20;

/// A repository inside an object store, under an optional prefix.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    /// Set for a local directory: packs are then copied file to file by the kernel instead of
    /// passing through memory, and every write is durable before it returns (`local`).
    local_root: Option<std::path::PathBuf>,
}

impl ObjectStorage {
    /// `location` is shown in messages; `prefix` (may be empty) is prepended to every name.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, location: impl Into<String>) -> Self {
        let prefix = prefix.trim_matches('/').to_string();
        ObjectStorage { store, prefix, location: location.into(), local_root: None }
    }

    /// A repository in a local directory (created if missing, durably). Every write to it is
    /// on stable storage, file and directory entry, before it returns (see `local`).
    pub fn local(dir: &std::path::Path) -> Result<Self> {
        let root = std::path::absolute(dir).map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
        local::create_dir(&root).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| Error::Storage { what: dir.display().to_string(), source: Box::new(e) })?;
        let mut s = ObjectStorage::new(Arc::new(fs), "", dir.display().to_string());
        s.local_root = Some(root);
        Ok(s)
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() { ObjPath::from(rel) } else { ObjPath::from(format!("{}/{rel}", self.prefix)) }
    }

    /// Whether the stored (kind, id) is exactly `data`: a create that found its name taken is
    /// then a retry whose first attempt was stored (another writer's bytes differ: random keys
    /// and nonces). Reads back at most `data`'s length: whatever is there may be anyone's.
    async fn holds(&self, kind: FileKind, id: &Id, data: &Bytes) -> bool {
        self.read(kind, id, data.len() as u64).await.ok().as_ref() == Some(data)
    }

    fn err(&self, kind: FileKind, id: &Id, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound { kind, id: *id },
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                Error::AlreadyExists { kind, id: *id }
            }
            other => {
                Error::Storage { what: format!("{kind} {} at {}", id.short(), self.location), source: Box::new(other) }
            }
        }
    }

    /// The error of a failed read of a local directory's object.
    fn local_err(&self, kind: FileKind, id: &Id, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { kind, id: *id },
            std::io::ErrorKind::InvalidData => Error::corrupt("object", format!("{}: {e}", path_of(kind, id)))
                .locate(crate::error::ObjectRef::File(kind, *id)),
            _ => Error::io(format!("reading {kind} {} at {}", id.short(), self.location), e),
        }
    }
}

/// Attempts after the first of what object_store does not retry itself when the connection
/// breaks: a create-only PUT (not idempotent for it: the server may have applied it; `create`
/// recognizes its own object) and a LIST whose answer breaks off mid-body (its retries end with
/// the answer's head). Both are safe to repeat.
const REPEATS: u32 = 3;

/// `op`, repeated up to `REPEATS` times after a pause while it fails with a broken connection.
async fn again<T, F, Fut>(mut op: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let mut repeats = 0;
    loop {
        match op().await {
            Err(e) if repeats < REPEATS && broken_connection(&e) => {
                repeats += 1;
                tracing::info!("connection broken ({e}): attempt {} of {}", repeats + 1, REPEATS + 1);
                tokio::time::sleep(std::time::Duration::from_millis(250 << repeats)).await;
            }
            r => return r,
        }
    }
}

/// A connection reset, aborted or closed in the middle of an answer, somewhere in the causes of
/// `e` (they end in the `std::io::Error` the HTTP client saw).
fn broken_connection(e: &object_store::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// The whole of a finished temporary pack file as `Bytes`, without copying it.
fn map(file: &File, len: u64) -> std::io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the file is this writer's private, unlinked temporary pack file; it is complete
    // and nothing writes to it after `PackWriter::finish`, so the mapping never changes under
    // the readers of the returned bytes.
    #[allow(unsafe_code)]
    let m = unsafe { memmap2::MmapOptions::new().len(len as usize).map(file)? };
    Ok(Bytes::from_owner(m))
}

#[async_trait]
impl Storage for ObjectStorage {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// `data/`, made (durably) if missing; `None` if it cannot be.
    fn spool_dir(&self) -> Option<std::path::PathBuf> {
        let dir = self.local_root.as_ref()?.join(dir_of(FileKind::Pack));
        local::create_dir(&dir).ok().map(|()| dir)
    }

    async fn create(&self, kind: FileKind, id: &Id, data: Bytes) -> Result<()> {
        if let Some(root) = &self.local_root {
            let (dest, bytes) = (root.join(path_of(kind, id)), data.clone());
            let r = tokio::task::spawn_blocking(move || local::create_new(&dest, &bytes)).await.expect("create task");
            return match r {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if self.holds(kind, id, &data).await {
                        Ok(())
                    } else {
                        Err(Error::AlreadyExists { kind, id: *id })
                    }
                }
                Err(e) => Err(Error::io(format!("writing {kind} {}", id.short()), e)),
            };
        }
        let path = self.path(&path_of(kind, id));
        let put = || {
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            self.store.put_opts(&path, PutPayload::from_bytes(data.clone()), opts)
        };
        match again(put).await {
            Ok(_) => Ok(()),
            // A retried PUT whose first attempt was applied but not answered (a 500 or a lost
            // connection after the server stored it) finds its own object: that is success.
            Err(e @ (object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })) => {
                if self.holds(kind, id, &data).await { Ok(()) } else { Err(self.err(kind, id, e)) }
            }
            Err(e) => Err(self.err(kind, id, e)),
        }
    }

    async fn upload_file(&self, kind: FileKind, id: &Id, file: File, len: u64) -> Result<()> {
        if let Some(root) = &self.local_root {
            let dest = root.join(path_of(kind, id));
            return tokio::task::spawn_blocking(move || local::publish_file(file, &dest))
                .await
                .expect("copy task")
                .map_err(|e| Error::io(format!("writing {kind} {}", id.short()), e));
        }
        let path = self.path(&path_of(kind, id));
        let file = Arc::new(file);
        let read_at = |file: Arc<File>, offset: u64, n: usize| async move {
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, offset).map(|_| Bytes::from(buf))
            })
            .await
            .expect("read task")
            .map_err(|e| Error::io("reading a temporary pack file", e))
        };
        if len <= MULTIPART_THRESHOLD {
            let data = map(&file, len).map_err(|e| Error::io("mapping a temporary pack file", e))?;
            return self
                .store
                .put(&path, PutPayload::from_bytes(data))
                .await
                .map(|_| ())
                .map_err(|e| self.err(kind, id, e));
        }
        let upload = self.store.put_multipart(&path).await.map_err(|e| self.err(kind, id, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut offset = 0u64;
        while offset < len {
            let n = (len - offset).min(PART_SIZE as u64) as usize;
            let part = match read_at(file.clone(), offset, n).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = w.wait_for_capacity(2).await {
                return Err(self.err(kind, id, e));
            }
            w.put(part);
            offset += n as u64;
        }
        w.finish().await.map(|_| ()).map_err(|e| self.err(kind, id, e))
    }

    async fn read(&self, kind: FileKind, id: &Id, limit: u64) -> Result<Bytes> {
        let too_large = |n: u64| {
            Error::corrupt("object", format!("it is {n} bytes or more, over the {limit} bytes a {kind} may have"))
                .locate(crate::error::ObjectRef::File(kind, *id))
        };
        if let Some(root) = &self.local_root {
            // In one go on a blocking thread (object_store's stream would hand it over in small
            // chunks, a thread handoff each), and only from a regular file (`local`).
            let path = root.join(path_of(kind, id));
            let read = tokio::task::spawn_blocking(move || local::read_whole(&path, limit)).await.expect("read task");
            return match read {
                Ok(b) if b.len() as u64 > limit => Err(too_large(b.len() as u64)),
                Ok(b) => Ok(Bytes::from(b)),
                Err(e) => Err(self.local_err(kind, id, e)),
            };
        }
        let r = self.store.get(&self.path(&path_of(kind, id))).await.map_err(|e| self.err(kind, id, e))?;
        // Refuse by the declared size first, then count what actually arrives (a server may
        // send more than it declared): never buffer more than `limit`.
        if r.meta.size > limit {
            return Err(too_large(r.meta.size));
        }
        let mut buf = bytes::BytesMut::with_capacity(r.meta.size as usize);
        let mut stream = r.into_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.err(kind, id, e))? {
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(too_large((buf.len() + chunk.len()) as u64));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    async fn read_range(&self, kind: FileKind, id: &Id, offset: u64, len: u64) -> Result<Bytes> {
        if self.local_root.is_some() {
            let mut buf = Vec::new();
            self.read_range_into(kind, id, offset, len, &mut buf).await?;
            return Ok(Bytes::from(buf));
        }
        let b = self
            .store
            .get_range(&self.path(&path_of(kind, id)), offset..offset + len)
            .await
            .map_err(|e| self.err(kind, id, e))?;
        if b.len() as u64 != len {
            return Err(Error::corrupt("pack", format!("range read returned {} of {len} bytes", b.len()))
                .locate(crate::error::ObjectRef::File(kind, *id)));
        }
        Ok(b)
    }

    async fn read_range_into(&self, kind: FileKind, id: &Id, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        let Some(root) = &self.local_root else {
            *buf = Vec::from(self.read_range(kind, id, offset, len).await?);
            return Ok(());
        };
        let (path, mut owned) = (root.join(path_of(kind, id)), std::mem::take(buf));
        let (owned, r) = tokio::task::spawn_blocking(move || {
            let r = local::read_at(&path, offset, len, &mut owned);
            (owned, r)
        })
        .await
        .expect("read task");
        *buf = owned;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(Error::corrupt("pack", format!("the range {offset}+{len} reaches past the end of the file"))
                    .locate(crate::error::ObjectRef::File(kind, *id)))
            }
            Err(e) => Err(self.local_err(kind, id, e)),
        }
    }

    async fn list(&self, kind: FileKind) -> Result<Vec<(Id, u64)>> {
        if kind == FileKind::Config {
            return Err(Error::Invalid("the config is a single object; read it instead of listing".into()));
        }
        let prefix = self.path(dir_of(kind));
        let metas: Vec<_> = again(|| self.store.list(Some(&prefix)).try_collect()).await.map_err(|e| {
            Error::Storage { what: format!("listing {kind} at {}", self.location), source: Box::new(e) }
        })?;
        // Only names this layout would write count: junk, temporary and nested names (which a
        // read by id would never find) are ignored instead of breaking every listing.
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full: &str = m.location.as_ref();
                let id = id_of(full)?;
                (full.strip_prefix(strip.as_str()) == Some(path_of(kind, &id).as_str())).then_some((id, m.size))
            })
            .collect())
    }

    async fn remove(&self, kind: FileKind, id: &Id) -> Result<()> {
        if let Some(root) = &self.local_root {
            let path = root.join(path_of(kind, id));
            return match tokio::task::spawn_blocking(move || local::remove(&path)).await.expect("remove task") {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound { kind, id: *id }),
                r => r.map_err(|e| Error::io(format!("removing {kind} {}", id.short()), e)),
            };
        }
        self.store.delete(&self.path(&path_of(kind, id))).await.map_err(|e| self.err(kind, id, e))
    }
}
