//! A decorator that refuses every write: a read-only open can never change a repository.

use std::fs::File;

use async_trait::async_trait;
use bytes::Bytes;

use super::{FileKind, Storage};
use crate::error::{Error, Result};
use crate::id::Id;

/// Wraps a backend; `create`, `upload_file` and `remove` fail with `Invalid`.
#[derive(Debug)]
pub struct ReadOnly<S>(pub S);

fn refuse(op: &str, kind: FileKind, id: &Id) -> Error {
    Error::Invalid(format!("{op} {kind} {} refused: the repository is open read-only", id.short()))
}

#[async_trait]
impl<S: Storage> Storage for ReadOnly<S> {
    fn location(&self) -> String {
        self.0.location()
    }
    fn is_local(&self) -> bool {
        self.0.is_local()
    }
    async fn create(&self, kind: FileKind, id: &Id, _: Bytes) -> Result<()> {
        Err(refuse("write of", kind, id))
    }
    async fn upload_file(&self, kind: FileKind, id: &Id, _: File, _: u64) -> Result<()> {
        Err(refuse("upload of", kind, id))
    }
    async fn read(&self, kind: FileKind, id: &Id, limit: u64) -> Result<Bytes> {
        self.0.read(kind, id, limit).await
    }
    async fn read_range(&self, kind: FileKind, id: &Id, offset: u64, len: u64) -> Result<Bytes> {
        self.0.read_range(kind, id, offset, len).await
    }
    async fn read_range_into(&self, kind: FileKind, id: &Id, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        self.0.read_range_into(kind, id, offset, len, buf).await
    }
    async fn list(&self, kind: FileKind) -> Result<Vec<(Id, u64)>> {
        self.0.list(kind).await
    }
    async fn remove(&self, kind: FileKind, id: &Id) -> Result<()> {
        Err(refuse("removal of", kind, id))
    }
}
