//! What snapshots reference: a walk over trees, the parts of directories stored in parts,
//! subtrees, indirect segment lists and data blobs, each tree-kind blob visited once however many snapshots share it.
//!
//! The caller says where each blob is (`locate`): the current index, or for garbage
//! collection's re-checks also packs marked for deletion. A tree-kind blob that cannot be
//! located is not descended into (the caller has recorded it). Memory: one set entry per
//! tree-kind blob visited, and the stack of directories still to read.

use std::collections::HashSet;

use anyhow::{Context, Result};
use repo_format::{BlobId, BlobKind, BlobLocation, Content, Directory, FileKind, Repository, Segment, TreeId};

use crate::Job;

/// Visit everything reachable from `roots`. `locate` is called once per reference (data
/// blobs) or once per distinct tree-kind blob, and returns where to read a tree-kind blob
/// from (`None`: absent, not descended into).
pub async fn walk(
    repo: &Repository,
    roots: impl IntoIterator<Item = TreeId>,
    seen: &mut HashSet<(BlobId, bool)>,
    job: &Job,
    mut locate: impl FnMut(BlobKind, &BlobId) -> Option<BlobLocation>,
) -> Result<()> {
    // (blob, is a segment list rather than a directory)
    let mut stack: Vec<(BlobId, bool)> = Vec::new();
    for r in roots {
        if seen.insert((BlobId(r.0), false)) {
            stack.push((BlobId(r.0), false));
        }
    }
    while let Some((id, is_list)) = stack.pop() {
        job.cancel.check()?;
        let Some(loc) = locate(BlobKind::Tree, &id) else { continue };
        let plain = read(repo, &id, &loc).await?;
        // Progress: tree-kind blobs read, and their bytes.
        job.progress.files_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        job.progress.bytes_done.fetch_add(plain.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if is_list {
            let segs =
                repo_format::decode_segment_list(&plain).with_context(|| format!("decoding segment list {}", id.0))?;
            segments(&segs, seen, &mut stack, &mut locate);
            continue;
        }
        let tree = match Directory::decode(&plain).with_context(|| format!("decoding tree {}", id.0))? {
            Directory::Tree(t) => t,
            // A directory in parts: its parts are reachable. (A forged part that is an index
            // again is followed too: for garbage collection, keeping more is the safe side;
            // readers refuse it.)
            Directory::Parts(parts) => {
                for p in parts {
                    let b = BlobId(p.id.0);
                    if seen.insert((b, false)) {
                        stack.push((b, false));
                    }
                }
                continue;
            }
        };
        for node in &tree.nodes {
            match &node.content {
                Content::Tree(t) => {
                    let b = BlobId(t.0);
                    if seen.insert((b, false)) {
                        stack.push((b, false));
                    }
                }
                Content::Segments(segs) => segments(segs, seen, &mut stack, &mut locate),
                Content::None => {}
            }
        }
    }
    Ok(())
}

/// A file's segments: data blobs located, indirect lists queued.
fn segments(
    segs: &[Segment],
    seen: &mut HashSet<(BlobId, bool)>,
    stack: &mut Vec<(BlobId, bool)>,
    locate: &mut impl FnMut(BlobKind, &BlobId) -> Option<BlobLocation>,
) {
    for s in segs {
        match s {
            Segment::Blob { id, .. } => {
                locate(BlobKind::Data, id);
            }
            Segment::Indirect { id, .. } => {
                let b = BlobId(id.0);
                if seen.insert((b, true)) {
                    stack.push((b, true));
                }
            }
            Segment::Zero { .. } => {}
        }
    }
}

/// Read a tree-kind blob: through the repository (and its cache of tree packs) when the
/// current index has it there, else straight from the pack `loc` names.
async fn read(repo: &Repository, id: &BlobId, loc: &BlobLocation) -> Result<Vec<u8>> {
    if repo.index().lookup(BlobKind::Tree, id).is_some_and(|l| l.pack == loc.pack && l.offset == loc.offset) {
        return repo.read_blob(BlobKind::Tree, id).await.with_context(|| format!("reading tree {}", id.0));
    }
    let stored = repo
        .storage()
        .read_range(FileKind::Pack, &loc.pack.0, u64::from(loc.offset), u64::from(loc.stored_len))
        .await
        .with_context(|| format!("reading tree {} from pack {}", id.0, loc.pack.0))?;
    repo_format::open_blob(repo.master_key(), &loc.salt, BlobKind::Tree, id, &stored)
        .with_context(|| format!("opening tree {} in pack {}", id.0, loc.pack.0))
}
