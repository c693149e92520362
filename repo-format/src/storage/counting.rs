//! A decorator that counts requests by kind and bytes moved, and the counters an HTTP client
//! below it may add its attempts to (every attempt is billed; retries are attempts that a
//! storage call's single count does not show).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use async_trait::async_trait;
use bytes::Bytes;

use super::{FileKind, Storage};
use crate::error::Result;
use crate::id::Id;

/// Request and byte counters (shared; cheap to clone).
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// HTTP requests actually sent, retries included (0 for a local directory) …
    pub attempts: AtomicU64,
    /// … and those that failed (an error, 5xx or 429) and were retried or reported.
    pub failed_attempts: AtomicU64,
}

impl RequestCounts {
    /// (put, get, list, delete, bytes up, bytes down) at this moment.
    pub fn snapshot(&self) -> [u64; 6] {
        [&self.put, &self.get, &self.list, &self.delete, &self.bytes_up, &self.bytes_down].map(|a| a.load(Relaxed))
    }
}

/// Wraps a backend and counts what goes through it.
#[derive(Debug)]
pub struct Counting<S> {
    inner: S,
    counts: Arc<RequestCounts>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting { inner, counts: Arc::default() }
    }
    /// Count into `counts` (shared with an HTTP client that adds its attempts).
    pub fn with_counts(inner: S, counts: Arc<RequestCounts>) -> Self {
        Counting { inner, counts }
    }
    pub fn counts(&self) -> Arc<RequestCounts> {
        self.counts.clone()
    }
}

#[async_trait]
impl<S: Storage> Storage for Counting<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
    fn spool_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.spool_dir()
    }
    async fn create(&self, kind: FileKind, id: &Id, data: Bytes) -> Result<()> {
        self.counts.put.fetch_add(1, Relaxed);
        self.counts.bytes_up.fetch_add(data.len() as u64, Relaxed);
        self.inner.create(kind, id, data).await
    }
    async fn upload_file(&self, kind: FileKind, id: &Id, file: File, len: u64) -> Result<()> {
        self.counts.put.fetch_add(1, Relaxed);
        self.counts.bytes_up.fetch_add(len, Relaxed);
        self.inner.upload_file(kind, id, file, len).await
    }
    async fn read(&self, kind: FileKind, id: &Id, limit: u64) -> Result<Bytes> {
        self.counts.get.fetch_add(1, Relaxed);
        let b = self.inner.read(kind, id, limit).await?;
        self.counts.bytes_down.fetch_add(b.len() as u64, Relaxed);
        Ok(b)
    }
    async fn read_range(&self, kind: FileKind, id: &Id, offset: u64, len: u64) -> Result<Bytes> {
        self.counts.get.fetch_add(1, Relaxed);
        let b = self.inner.read_range(kind, id, offset, len).await?;
        self.counts.bytes_down.fetch_add(b.len() as u64, Relaxed);
        Ok(b)
    }
    async fn read_range_into(&self, kind: FileKind, id: &Id, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        self.counts.get.fetch_add(1, Relaxed);
        self.inner.read_range_into(kind, id, offset, len, buf).await?;
        self.counts.bytes_down.fetch_add(buf.len() as u64, Relaxed);
        Ok(())
    }
    async fn list(&self, kind: FileKind) -> Result<Vec<(Id, u64)>> {
        self.counts.list.fetch_add(1, Relaxed);
        self.inner.list(kind).await
    }
    async fn remove(&self, kind: FileKind, id: &Id) -> Result<()> {
        self.counts.delete.fetch_add(1, Relaxed);
        self.inner.remove(kind, id).await
    }
}
