//! Resolving a long segment list as it is produced, in bounded memory (a disk's content).
//!
//! The reader pushes pending segments in order; the front is resolved as soon as its blob is
//! saved (and waited for once more than `window` blobs are outstanding). Resolved segments are
//! merged (adjacent zero runs) and, once more than `SEGMENTS_PER_BLOB` have accumulated, moved
//! into indirect blobs batch by batch. Memory is the window plus one batch (about 2.4 MiB),
//! whatever the disk's size. The result is byte for byte what `resolve` and then `indirect`
//! over the whole list give, so snapshots (and their dedup) do not depend on this.

use std::collections::VecDeque;

use repo_format::{BlobKind, BlobWriter, Segment, TreeId, encode_segment_list};

use super::build::{PendingSeg, SEGMENTS_PER_BLOB};

/// Pending segments in, resolved (and batched) segments out.
pub(crate) struct StreamResolver<'a> {
    writer: &'a BlobWriter,
    pending: VecDeque<PendingSeg>,
    /// Blobs in `pending` not yet known to be saved.
    outstanding: usize,
    window: usize,
    /// Resolved segments not yet moved into an indirect blob.
    batch: Vec<Segment>,
    /// Indirect segments written so far.
    top: Vec<Segment>,
}

impl<'a> StreamResolver<'a> {
    /// Wait for the oldest blob once more than `window` are outstanding.
    pub(crate) fn new(writer: &'a BlobWriter, window: usize) -> Self {
        StreamResolver {
            writer,
            pending: VecDeque::new(),
            outstanding: 0,
            window: window.max(1),
            batch: Vec::new(),
            top: Vec::new(),
        }
    }

    /// Append one segment.
    pub(crate) fn push(&mut self, seg: PendingSeg) -> repo_format::Result<()> {
        if matches!(seg, PendingSeg::Blob(..)) {
            self.outstanding += 1;
        }
        match (self.pending.back_mut(), seg) {
            (Some(PendingSeg::Zero(a)), PendingSeg::Zero(b)) => *a += b,
            (_, seg) => self.pending.push_back(seg),
        }
        self.drain(false)
    }

    /// Resolve the front while it is ready (or, with `all` or too many outstanding, wait).
    fn drain(&mut self, all: bool) -> repo_format::Result<()> {
        while let Some(front) = self.pending.front() {
            let must_wait = all || self.outstanding > self.window;
            let seg = match front {
                PendingSeg::Zero(len) => Segment::Zero { len: *len },
                PendingSeg::Known(id, len) => Segment::Blob { id: *id, len: *len },
                PendingSeg::Blob(rx, len) => {
                    let saved = if must_wait {
                        rx.recv().map_err(|_| stopped())?
                    } else {
                        match rx.try_recv() {
                            Ok(r) => r,
                            Err(crossbeam_channel::TryRecvError::Empty) => return Ok(()),
                            Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(stopped()),
                        }
                    };
                    self.outstanding -= 1;
                    Segment::Blob { id: saved?.id, len: *len }
                }
            };
            self.pending.pop_front();
            self.emit(seg)?;
        }
        Ok(())
    }

    fn emit(&mut self, seg: Segment) -> repo_format::Result<()> {
        match (self.batch.last_mut(), seg) {
            (Some(Segment::Zero { len: a }), Segment::Zero { len: b }) => *a += b,
            (_, seg) => {
                if self.batch.len() == SEGMENTS_PER_BLOB {
                    self.flush()?;
                }
                self.batch.push(seg);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> repo_format::Result<()> {
        let len = self.batch.iter().map(Segment::len).sum();
        let saved = self.writer.save(BlobKind::Tree, &encode_segment_list(&self.batch))?;
        self.top.push(Segment::Indirect { id: TreeId(saved.id.0), len });
        self.batch.clear();
        Ok(())
    }

    /// Wait for everything; the content's segment list (flat when it fits one batch).
    pub(crate) fn finish(mut self) -> repo_format::Result<Vec<Segment>> {
        self.drain(true)?;
        if self.top.is_empty() {
            return Ok(self.batch);
        }
        if !self.batch.is_empty() {
            self.flush()?;
        }
        Ok(self.top)
    }
}

fn stopped() -> repo_format::Error {
    repo_format::Error::Invalid("a blob worker stopped".into())
}
