//! A disk's parent snapshot, chunk by chunk, for a changed-block backup: the chunks outside
//! the changed ranges are taken from it. Read in order with one indirect list in memory at a
//! time, so memory does not grow with the disk (a list of every chunk of a 1 TiB disk would be
//! four million entries).

use std::sync::Arc;

use anyhow::{Result, bail};
use repo_format::{BlobId, BlobKind, Content, Repository, Segment, Snapshot, decode_segment_list};

/// The parent's content, consumed one chunk at a time.
pub(crate) struct ParentCursor {
    repo: Arc<Repository>,
    rt: tokio::runtime::Handle,
    top: std::vec::IntoIter<Segment>,
    inner: std::vec::IntoIter<Segment>,
    /// Bytes left of the zero run being consumed.
    zeros: u64,
}

impl ParentCursor {
    /// The disk of `parent`, which must be `size` bytes.
    pub(crate) async fn open(repo: Arc<Repository>, parent: &Snapshot, size: u64) -> Result<Self> {
        let tree = repo.read_tree(&parent.tree).await?;
        let [node] = tree.nodes.as_slice() else { bail!("the parent snapshot is not a disk snapshot") };
        if node.size != size {
            bail!(
                "the disk is {size} bytes but was {} in the parent snapshot: back up without --changed-blocks",
                node.size
            );
        }
        let Content::Segments(segs) = &node.content else { bail!("the parent snapshot's disk has no content list") };
        let covered = segs.iter().try_fold(0u64, |a, s| a.checked_add(s.len()));
        if covered != Some(size) {
            bail!("the parent snapshot's disk content covers {covered:?} bytes, not {size}");
        }
        Ok(ParentCursor {
            repo,
            rt: tokio::runtime::Handle::current(),
            top: segs.clone().into_iter(),
            inner: Vec::new().into_iter(),
            zeros: 0,
        })
    }

    /// The next segment, expanding indirect lists as they are reached (on a blocking thread).
    fn next_segment(&mut self) -> Result<Option<Segment>> {
        loop {
            if let Some(s) = self.inner.next() {
                if matches!(s, Segment::Indirect { .. }) {
                    bail!("nested indirect segment lists are not allowed");
                }
                return Ok(Some(s));
            }
            match self.top.next() {
                None => return Ok(None),
                Some(Segment::Indirect { id, len }) => {
                    let b = self.rt.block_on(self.repo.read_blob(BlobKind::Tree, &BlobId(id.0)))?;
                    let list = decode_segment_list(&b)?;
                    let covered = list.iter().try_fold(0u64, |a, s| a.checked_add(s.len()));
                    if covered != Some(len) {
                        bail!("an indirect segment list covers {covered:?} bytes where {len} were announced");
                    }
                    self.inner = list.into_iter();
                }
                Some(s) => return Ok(Some(s)),
            }
        }
    }

    /// The parent's content of the next chunk, `len` bytes long: a blob, or `None` for zeros.
    pub(crate) fn next_chunk(&mut self, len: u64) -> Result<Option<(BlobId, u32)>> {
        if self.zeros == 0 {
            match self.next_segment()? {
                None => bail!("the parent snapshot covers fewer chunks than the disk"),
                Some(Segment::Blob { id, len: l }) => {
                    if u64::from(l) != len {
                        bail!("the parent snapshot was cut with another chunk size: back up without --changed-blocks");
                    }
                    return Ok(Some((id, l)));
                }
                Some(Segment::Zero { len: z }) => self.zeros = z,
                Some(Segment::Indirect { .. }) => unreachable!("expanded by next_segment"),
            }
        }
        if self.zeros < len {
            bail!("the parent snapshot's zero runs are not chunk-aligned");
        }
        self.zeros -= len;
        Ok(None)
    }
}
