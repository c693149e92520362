//! The tree walk of a copy: one snapshot's trees, subtrees, files' segments and indirect segment
//! lists, read from the source and written to the destination's `BlobWriter`.
//!
//! Trees are visited depth first and finished children first (post-order, an explicit stack, no
//! recursion), so a re-keyed tree is encoded once its subtrees have their new ids. Only the
//! trees on the current path are held (each decoded once; in shared-key mode also its stored
//! bytes when the destination lacks it), at most `MAX_DEPTH` of them and `MAX_STACK_BYTES` of
//! tree bytes; a file's indirect lists are taken one at a time; at most `reads` data blobs are in
//! flight. What outlives one tree is the memo of what was done (tree and list ids, and when
//! re-keying, source to destination blob ids): it grows with the source's index, never with the
//! data, and lets the next snapshot skip every subtree it shares with one copied before.
//!
//! A directory stored in parts is held whole while it is on the stack (its parts decoded and
//! joined, within `MAX_STACK_BYTES`), and written back as parts: as they are with a shared id
//! key, else cut again for the destination (`DirSplitter`, keyed with its chunker seed).
//!
//! This walk never writes a snapshot and never finishes the writer: `copy::execute` does both,
//! in that order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use repo_format::{
    BlobId, BlobKind, BlobWriter, Content, DirPart, DirSplitter, Directory, Repository, Segment, Tree, TreeId,
    decode_segment_list, encode_segment_list,
};

use crate::Job;

/// Deepest directory nesting copied (as restore and check).
const MAX_DEPTH: usize = 2048;
/// Stored bytes of the trees on the walk's stack at most (a hostile source cannot make it hold
/// 2048 trees of 64 MiB).
const MAX_STACK_BYTES: usize = 256 << 20;

/// One directory being copied: its children are done up to `next`.
struct Frame {
    src: TreeId,
    tree: Tree,
    /// Its stored bytes, kept only when they are to be copied as they are (shared id key and
    /// the destination lacks the tree).
    raw: Option<Vec<u8>>,
    len: usize,
    next: usize,
    /// File bytes below it (for progress).
    bytes: u64,
    /// A directory stored in parts: its parts, each with its stored bytes when they are to be
    /// copied as they are (then `raw` is the index's).
    parts: Option<Vec<(DirPart, Option<Vec<u8>>)>>,
}

/// The walk's memory across the snapshots of one copy.
pub(crate) struct Walk<'a> {
    src: &'a Repository,
    /// Both repositories give a plaintext the same id: blobs are copied as they are.
    shared: bool,
    reads: usize,
    /// Source tree → destination tree and the file bytes below it, for trees already copied.
    trees: HashMap<TreeId, (TreeId, u64)>,
    /// Source indirect list → destination list, for lists already copied.
    lists: HashMap<TreeId, TreeId>,
    /// Re-keying: source data blob → destination data blob, for blobs already copied.
    blobs: HashMap<BlobId, BlobId>,
    /// The destination's chunker seed: where re-keyed big directories are cut into parts.
    seed: u64,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(src: &'a Repository, shared: bool, reads: usize, seed: u64) -> Self {
        let (trees, lists, blobs) = (HashMap::new(), HashMap::new(), HashMap::new());
        Walk { src, shared, reads: reads.max(1), trees, lists, blobs, seed }
    }

    /// Copy the tree `root` and everything below it; the destination id of the root (equal to
    /// `root` with a shared id key). Every blob is saved through `writer`; the caller finishes it.
    pub(crate) async fn tree(&mut self, writer: &BlobWriter, root: TreeId, job: &Job) -> Result<TreeId> {
        if let Some((id, bytes)) = self.trees.get(&root) {
            job.progress.bytes_done.fetch_add(*bytes, Relaxed);
            return Ok(*id);
        }
        let mut stack = vec![self.open(writer, root).await?];
        let mut held = stack[0].len;
        loop {
            job.cancel.check()?;
            let top = stack.last_mut().expect("not empty");
            let mut child = None;
            while let Some(node) = top.tree.nodes.get(top.next) {
                if let Content::Tree(sub) = node.content {
                    match self.trees.get(&sub) {
                        Some((_, bytes)) => {
                            job.progress.bytes_done.fetch_add(*bytes, Relaxed);
                            top.bytes = top.bytes.saturating_add(*bytes);
                        }
                        None => {
                            child = Some(sub);
                            break;
                        }
                    }
                }
                top.next += 1;
            }
            if let Some(sub) = child {
                if stack.len() >= MAX_DEPTH {
                    bail!("tree {sub}: directories nested deeper than {MAX_DEPTH} levels (a damaged or forged tree)");
                }
                let frame = self.open(writer, sub).await?;
                held += frame.len;
                if held > MAX_STACK_BYTES {
                    bail!("tree {sub}: the directories above it hold more than {MAX_STACK_BYTES} bytes of trees");
                }
                stack.push(frame);
                continue;
            }
            let frame = stack.pop().expect("not empty");
            held -= frame.len;
            let src = frame.src;
            let (id, bytes) = self.finish(writer, frame, job).await.with_context(|| format!("copying tree {src}"))?;
            self.trees.insert(src, (id, bytes));
            match stack.last_mut() {
                Some(parent) => {
                    parent.bytes = parent.bytes.saturating_add(bytes);
                    parent.next += 1;
                }
                None => return Ok(id),
            }
        }
    }

    /// Read and decode a source tree (a directory in parts: all its parts, joined).
    async fn open(&self, writer: &BlobWriter, id: TreeId) -> Result<Frame> {
        let raw =
            self.src.read_blob(BlobKind::Tree, &BlobId(id.0)).await.with_context(|| format!("reading tree {id}"))?;
        let keep = self.shared && !writer.is_known(BlobKind::Tree, &BlobId(id.0));
        let (tree, len, parts) = match Directory::decode(&raw).with_context(|| format!("decoding tree {id}"))? {
            Directory::Tree(tree) => (tree, raw.len(), None),
            Directory::Parts(list) => {
                let (mut nodes, mut len, mut parts) = (Vec::new(), raw.len(), Vec::with_capacity(list.len()));
                for p in list {
                    let b = BlobId(p.id.0);
                    let part = self
                        .src
                        .read_blob(BlobKind::Tree, &b)
                        .await
                        .with_context(|| format!("reading tree {}", p.id))?;
                    let t = Tree::decode(&part).with_context(|| format!("decoding directory part {}", p.id))?;
                    if t.nodes.len() != p.entries as usize {
                        bail!("directory part {}: {} entries where its index says {}", p.id, t.nodes.len(), p.entries);
                    }
                    len += part.len();
                    if len > MAX_STACK_BYTES {
                        bail!("tree {id}: a directory of more than {MAX_STACK_BYTES} bytes in parts");
                    }
                    nodes.extend(t.nodes);
                    let keep_part = self.shared && !writer.is_known(BlobKind::Tree, &b);
                    parts.push((p, keep_part.then_some(part)));
                }
                (Tree { nodes }, len, Some(parts))
            }
        };
        Ok(Frame { src: id, tree, len, raw: keep.then_some(raw), next: 0, bytes: 0, parts })
    }

    /// Copy a tree whose subtrees are done: its files' blobs, their indirect lists, then the
    /// tree itself (as it is, or re-encoded with the new ids).
    async fn finish(&mut self, writer: &BlobWriter, mut f: Frame, job: &Job) -> Result<(TreeId, u64)> {
        let mut direct = Vec::new();
        let mut seen = HashSet::new();
        let mut own = 0u64;
        for node in &f.tree.nodes {
            if let Content::Segments(segs) = &node.content {
                for s in segs {
                    if let Segment::Blob { id, .. } = s {
                        if seen.insert(*id) {
                            direct.push(*id);
                        }
                    }
                }
                own = own.saturating_add(node.size);
            }
        }
        drop(seen);
        self.blobs_of(writer, direct, job).await?;
        for node in &mut f.tree.nodes {
            match &mut node.content {
                Content::Segments(segs) => {
                    for s in segs.iter_mut() {
                        self.segment(writer, s, job).await?;
                    }
                }
                Content::Tree(sub) if !self.shared => {
                    *sub = self.trees.get(sub).map(|(id, _)| *id).expect("subtrees are finished first");
                }
                _ => {}
            }
        }
        // Its files are done (its subtrees counted themselves as they finished).
        job.progress.bytes_done.fetch_add(own, Relaxed);
        f.bytes = f.bytes.saturating_add(own);
        let id = if self.shared {
            for (p, raw) in f.parts.take().into_iter().flatten() {
                if let Some(raw) = raw {
                    save(writer, BlobKind::Tree, Some(BlobId(p.id.0)), raw).await?;
                }
            }
            if let Some(raw) = f.raw.take() {
                save(writer, BlobKind::Tree, Some(BlobId(f.src.0)), raw).await?;
            }
            f.src
        } else if f.parts.is_some() {
            let tree = std::mem::take(&mut f.tree);
            let w = writer.clone();
            let seed = self.seed;
            let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                let mut save_part = |t: &Tree| Ok(TreeId(w.save(BlobKind::Tree, &t.encode()?)?.id.0));
                let mut splitter = DirSplitter::new(seed);
                for node in tree.nodes {
                    splitter.push(node, &mut save_part)?;
                }
                Ok(splitter.finish_encoded(&mut save_part)?.0)
            })
            .await
            .expect("directory parts task")?;
            TreeId(save(writer, BlobKind::Tree, None, bytes).await?.0)
        } else {
            TreeId(save(writer, BlobKind::Tree, None, f.tree.encode()?).await?.0)
        };
        Ok((id, f.bytes))
    }

    /// One segment: a data blob gets its destination id (copied already by `blobs_of`), an
    /// indirect list is copied (once per list) with its blobs.
    async fn segment(&mut self, writer: &BlobWriter, s: &mut Segment, job: &Job) -> Result<()> {
        match s {
            Segment::Blob { id, .. } if !self.shared => {
                *id = *self.blobs.get(&*id).expect("copied by blobs_of");
            }
            Segment::Indirect { id, .. } => {
                let list = *id;
                let copied = match self.lists.get(&list) {
                    Some(done) => *done,
                    None => {
                        let done =
                            self.list(writer, list, job).await.with_context(|| format!("segment list {list}"))?;
                        self.lists.insert(list, done);
                        done
                    }
                };
                *id = copied;
            }
            _ => {}
        }
        Ok(())
    }

    /// Copy an indirect segment list and the data blobs it names.
    async fn list(&mut self, writer: &BlobWriter, id: TreeId, job: &Job) -> Result<TreeId> {
        let raw = self.src.read_blob(BlobKind::Tree, &BlobId(id.0)).await?;
        let mut segs = decode_segment_list(&raw)?;
        if segs.iter().any(|s| matches!(s, Segment::Indirect { .. })) {
            bail!("nested indirect segment lists are not allowed");
        }
        let mut seen = HashSet::new();
        let ids = segs
            .iter()
            .filter_map(|s| match s {
                Segment::Blob { id, .. } if seen.insert(*id) => Some(*id),
                _ => None,
            })
            .collect();
        self.blobs_of(writer, ids, job).await?;
        if self.shared {
            if !writer.is_known(BlobKind::Tree, &BlobId(id.0)) {
                save(writer, BlobKind::Tree, Some(BlobId(id.0)), raw).await?;
            }
            return Ok(id);
        }
        for s in segs.iter_mut() {
            if let Segment::Blob { id, .. } = s {
                *id = *self.blobs.get(&*id).expect("copied just above");
            }
        }
        Ok(TreeId(save(writer, BlobKind::Tree, None, encode_segment_list(&segs)).await?.0))
    }

    /// Copy the data blobs of `ids` that need it, `reads` at a time: with a shared id key those
    /// the destination lacks (same id), else those not re-keyed yet (their new ids remembered).
    async fn blobs_of(&mut self, writer: &BlobWriter, ids: Vec<BlobId>, job: &Job) -> Result<()> {
        let (src, shared) = (self.src, self.shared);
        let todo: Vec<BlobId> = ids
            .into_iter()
            .filter(|id| if shared { !writer.is_known(BlobKind::Data, id) } else { !self.blobs.contains_key(id) })
            .collect();
        let done: Vec<(BlobId, BlobId)> = futures::stream::iter(todo.into_iter().map(|id| async move {
            job.cancel.check()?;
            let data = src.read_blob(BlobKind::Data, &id).await.with_context(|| format!("reading data blob {id}"))?;
            let saved = save(writer, BlobKind::Data, shared.then_some(id), data).await?;
            Ok::<_, anyhow::Error>((id, saved))
        }))
        .buffer_unordered(self.reads)
        .try_collect()
        .await?;
        if !shared {
            self.blobs.extend(done);
        }
        Ok(())
    }
}

/// Save a blob on a blocking thread (`save` may wait for the upload queue): with `id`, under
/// that id (a shared id key: it is the plaintext's id in the destination too), else under the
/// id the destination computes.
async fn save(writer: &BlobWriter, kind: BlobKind, id: Option<BlobId>, data: Vec<u8>) -> Result<BlobId> {
    let w = writer.clone();
    let saved = tokio::task::spawn_blocking(move || match id {
        Some(id) => w.save_with_id(kind, id, &data),
        None => w.save(kind, &data),
    })
    .await
    .expect("blob save task")?;
    Ok(saved.id)
}
