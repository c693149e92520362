//! Stage 3 of the backup: directories in post-order become tree blobs.
//!
//! For each directory record the builder waits for its files' chunk ids (in order), turns runs
//! of zeros into zero segments, moves very long segment lists into indirect blobs, encodes the
//! tree and saves it — a big directory as parts and an index of them (`DirSplitter`), its
//! entries arriving in several records. Subdirectory tree ids come from the records that
//! preceded (post-order).
//! Files whose content could not be stored are dropped from the tree and reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Result, anyhow};
use crossbeam_channel::Receiver;
use repo_format::{
    BlobKind, BlobWriter, Content, DirSplitter, Node, Saved, Segment, Tree, TreeId, encode_segment_list,
};

use super::small::SmallRead;
use crate::filescache::{self, FileKey};
use crate::report::{EntryError, EntryErrorKind};

/// Segments per indirect blob (37 bytes each: about 2.4 MiB).
pub(crate) const SEGMENTS_PER_BLOB: usize = 65536;

/// A chunk being stored, a chunk already known (a parent's), or a hole.
pub(crate) enum PendingSeg {
    Blob(Receiver<repo_format::Result<Saved>>, u32),
    Known(repo_format::BlobId, u32),
    Zero(u64),
}

impl PendingSeg {
    pub fn len(&self) -> u64 {
        match self {
            PendingSeg::Blob(_, n) | PendingSeg::Known(_, n) => u64::from(*n),
            PendingSeg::Zero(n) => *n,
        }
    }
}

/// How an entry's content will be known.
pub(crate) enum Pending {
    Ready(Content),
    SubDir(PathBuf),
    /// Unchanged according to the files cache; `path` is its row to mark seen, if it is to be.
    Cached {
        path: Option<Vec<u8>>,
        segs: Vec<Segment>,
    },
    /// Unchanged according to the parent snapshot; recorded in the files cache.
    Parent {
        segs: Vec<Segment>,
        cache: Option<(Vec<u8>, FileKey)>,
    },
    /// A small file a blob worker reads and stores (`super::small`); `cache` says where to
    /// record it in the files cache if it did not change while read.
    Small {
        rx: Receiver<SmallRead>,
        cache: Option<(Vec<u8>, FileKey)>,
    },
    /// Being stored; `cache` says where to record it in the files cache.
    Chunks {
        segs: Vec<PendingSeg>,
        cache: Option<(Vec<u8>, FileKey)>,
    },
}

/// A run of one directory's entries, sorted by name, continuing the runs sent before it; the
/// directory is complete with the record marked `last`. A big directory comes in several
/// records, so neither the queue nor the builder ever holds all of its entries.
pub(crate) struct DirRecord {
    pub rel: PathBuf,
    pub nodes: Vec<(Node, Pending)>,
    pub root: bool,
    pub last: bool,
}

/// The root tree, the files cache, error lines and warning lines.
type BuildResult = (TreeId, Option<filescache::Writer>, Vec<EntryError>, Vec<EntryError>);

/// Build the trees of the records from `rx` (runs of records, in order). `seed` keys where big directories are cut into
/// parts (`DirSplitter`); `split` counts the directories stored in parts.
pub(crate) fn run(
    rx: Receiver<Vec<DirRecord>>,
    writer: &BlobWriter,
    mut cache: Option<filescache::Writer>,
    seed: u64,
    split: &AtomicU64,
) -> Result<BuildResult> {
    let mut done: HashMap<PathBuf, TreeId> = HashMap::new();
    // Directories whose first records arrived, not their last.
    let mut open: HashMap<PathBuf, DirSplitter> = HashMap::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut root = None;
    let mut save_part = |t: &Tree| writer.save(BlobKind::Tree, &t.encode()?).map(|s| TreeId(s.id.0));
    for dir in rx.into_iter().flatten() {
        let mut splitter = open.remove(&dir.rel).unwrap_or_else(|| DirSplitter::new(seed));
        for (mut node, pending) in dir.nodes {
            node.content = match pending {
                Pending::Ready(c) => c,
                Pending::SubDir(rel) => {
                    let id = done.remove(&rel).ok_or_else(|| anyhow!("internal: subtree {} missing", rel.display()))?;
                    Content::Tree(id)
                }
                Pending::Cached { path, segs } => {
                    if let (Some(c), Some(path)) = (cache.as_mut(), path) {
                        c.touch(&path)?;
                    }
                    Content::Segments(segs)
                }
                Pending::Parent { segs, cache: key } => {
                    if let (Some(c), Some((path, key))) = (cache.as_mut(), key) {
                        c.put(&path, &key, &segs)?;
                    }
                    Content::Segments(segs)
                }
                Pending::Small { rx, cache: key } => match rx.recv() {
                    Ok(SmallRead::Read { saved, len, changed }) => {
                        node.size = u64::from(len);
                        let segs: Vec<Segment> = saved.map(|s| Segment::Blob { id: s.id, len }).into_iter().collect();
                        match changed {
                            Some(w) => warnings.push(w),
                            None => {
                                if let (Some(c), Some((path, key))) = (cache.as_mut(), key) {
                                    c.put(&path, &key, &segs)?;
                                }
                            }
                        }
                        Content::Segments(segs)
                    }
                    Ok(SmallRead::Unreadable(e)) => {
                        errors.push(e);
                        continue;
                    }
                    Ok(SmallRead::NotStored(e)) => {
                        errors.push(not_stored(&dir.rel, &node, e));
                        continue;
                    }
                    Err(_) => {
                        errors.push(not_stored(&dir.rel, &node, WORKER_STOPPED));
                        continue;
                    }
                },
                Pending::Chunks { segs, cache: key } => match resolve(segs) {
                    Ok(segs) => {
                        let segs = indirect(writer, segs)?;
                        if let (Some(c), Some((path, key))) = (cache.as_mut(), key) {
                            c.put(&path, &key, &segs)?;
                        }
                        Content::Segments(segs)
                    }
                    Err(e) => {
                        errors.push(not_stored(&dir.rel, &node, e));
                        continue;
                    }
                },
            };
            splitter.push(node, &mut save_part)?;
        }
        if !dir.last {
            open.insert(dir.rel, splitter);
            continue;
        }
        let (bytes, in_parts) = splitter.finish_encoded(&mut save_part)?;
        if in_parts {
            split.fetch_add(1, Relaxed);
        }
        let saved = writer.save(BlobKind::Tree, &bytes)?;
        let id = TreeId(saved.id.0);
        if dir.root {
            root = Some(id);
        } else {
            done.insert(dir.rel, id);
        }
    }
    if let Some(rel) = open.keys().next() {
        anyhow::bail!("internal: directory {} was not finished", rel.display());
    }
    let root = root.ok_or_else(|| anyhow!("the scan ended before the root directory"))?;
    Ok((root, cache, errors, warnings))
}

/// Why a blob has no answer: its worker is gone (it panicked, or the pipeline is stopping).
const WORKER_STOPPED: &str = "a blob worker stopped";

/// The error line of a file of directory `dir` whose content could not be stored.
fn not_stored(dir: &std::path::Path, node: &Node, why: impl std::fmt::Display) -> EntryError {
    EntryError::new(
        EntryErrorKind::NotStored,
        dir.join(crate::fsmeta::path_of(&node.name)),
        format!("not stored: {why}"),
    )
}

/// Wait for every chunk id; merge adjacent zero runs.
pub(crate) fn resolve(segs: Vec<PendingSeg>) -> repo_format::Result<Vec<Segment>> {
    let mut out: Vec<Segment> = Vec::with_capacity(segs.len());
    for s in segs {
        let seg = match s {
            PendingSeg::Zero(len) => Segment::Zero { len },
            PendingSeg::Known(id, len) => Segment::Blob { id, len },
            PendingSeg::Blob(rx, len) => {
                let saved = rx.recv().map_err(|_| repo_format::Error::Invalid(WORKER_STOPPED.into()))??;
                Segment::Blob { id: saved.id, len }
            }
        };
        match (out.last_mut(), seg) {
            (Some(Segment::Zero { len: a }), Segment::Zero { len: b }) => *a += b,
            (_, seg) => out.push(seg),
        }
    }
    Ok(out)
}

/// Move segment lists longer than `SEGMENTS_PER_BLOB` into indirect (tree-kind) blobs.
pub(crate) fn indirect(writer: &BlobWriter, segs: Vec<Segment>) -> repo_format::Result<Vec<Segment>> {
    if segs.len() <= SEGMENTS_PER_BLOB {
        return Ok(segs);
    }
    segs.chunks(SEGMENTS_PER_BLOB)
        .map(|part| {
            let len = part.iter().map(Segment::len).sum();
            let saved = writer.save(BlobKind::Tree, &encode_segment_list(part))?;
            Ok(Segment::Indirect { id: TreeId(saved.id.0), len })
        })
        .collect()
}
