//! Repairs after damage that `check` found.
//!
//! - `repair_index`: rebuild the index from the packs' own headers (FORMAT.md §5.5: the header
//!   repeats what the index says). New index objects (version 2) list every pack in storage
//!   whose header opens, the last one superseding every index object listed before, so a lost
//!   or damaged index object costs nothing, and blobs of lost packs are no longer listed (the
//!   next backup uploads them again instead of referencing them). Packs a prune has marked are
//!   left out (their sweep deletes them).
//! - `repair_snapshots`: write, for each snapshot that references data that is gone, a new
//!   snapshot without the files and directories whose data or tree is gone, tagged
//!   `repaired-from=<id>`; with `forget`, the damaged original is removed, otherwise it stays
//!   until forgotten. A snapshot whose root tree is gone has nothing to keep: no copy is
//!   written, and `forget` removes it. Undamaged snapshots are left alone.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use anyhow::{Context, Result};
use futures::StreamExt;
use repo_format::{
    BlobKind, Content, FileKind, IndexId, IndexPack, PackId, Repository, Segment, Snapshot, SnapshotId, Tree, TreeId,
    WriterOptions, decode_segment_list,
};
use serde::Serialize;

use crate::Job;

/// Pack headers read at once.
const HEADER_READS: usize = 8;

#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexRepair {
    pub packs: u64,
    pub blobs: u64,
    /// Packs whose trailer or header does not open: not indexed (their blobs are lost).
    pub unreadable: Vec<String>,
    /// Packs a prune marked: left out.
    pub marked: u64,
    pub index_superseded: u64,
    pub index_written: u64,
    pub dry_run: bool,
}

/// Rebuild the index from the packs in storage.
pub async fn repair_index(repo: &Repository, dry_run: bool, job: &Job) -> Result<IndexRepair> {
    let mut r = IndexRepair { dry_run, ..Default::default() };
    let storage = repo.storage().clone();
    let old: Vec<IndexId> = storage.list(FileKind::Index).await?.into_iter().map(|(id, _)| IndexId(id)).collect();
    let marked: HashSet<PackId> = repo.markers().await?.into_iter().flat_map(|(_, m)| m.packs).collect();
    let listed = storage.list(FileKind::Pack).await?;
    job.progress.files_total.store(listed.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let mut packs: Vec<IndexPack> = Vec::new();
    let mut results = futures::stream::iter(
        listed
            .into_iter()
            .filter(|(id, _)| !marked.contains(&PackId(*id)))
            .map(|(id, size)| async move { (PackId(id), repo.pack_header(&PackId(id), size).await) }),
    )
    .buffer_unordered(HEADER_READS);
    while let Some((id, res)) = results.next().await {
        job.cancel.check()?;
        job.progress.files_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match res {
            Ok(p) => packs.push(p),
            Err(e) => r.unreadable.push(format!("pack {}: {e:#}", id.0)),
        }
    }
    drop(results);
    r.marked = marked.len() as u64;
    packs.sort_by_key(|p| p.id);
    r.packs = packs.len() as u64;
    r.blobs = packs.iter().map(|p| p.blobs.len() as u64).sum();
    r.index_superseded = old.len() as u64;
    if dry_run {
        return Ok(r);
    }
    let written = crate::prune::switch_index(repo, packs, &old, job).await.context("writing the rebuilt index")?;
    r.index_written = written.len() as u64;
    repo.load_index().await?;
    Ok(r)
}

/// One snapshot's repair.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRepair {
    pub snapshot: String,
    /// The repaired snapshot (null in a dry run).
    pub repaired: Option<String>,
    /// Paths dropped because their data or tree is gone.
    pub dropped: Vec<String>,
    pub forgotten: bool,
}

/// Repair the snapshots in `ids` (all when empty) that reference data that is gone.
pub async fn repair_snapshots(
    repo: &Repository,
    ids: &[SnapshotId],
    forget: bool,
    dry_run: bool,
    job: &Job,
) -> Result<Vec<SnapshotRepair>> {
    repo.load_index().await?;
    let all = repo.snapshots().await?;
    let chosen: Vec<(SnapshotId, Snapshot)> =
        all.into_iter().filter(|(id, _)| ids.is_empty() || ids.contains(id)).collect();
    let writer = repo.writer(WriterOptions::default());
    let mut fixer = Fixer { repo, writer: &writer, memo: HashMap::new(), dropped: Vec::new(), dry_run };
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for (id, snap) in chosen {
        job.cancel.check()?;
        fixer.dropped.clear();
        let (root, changed) = Box::pin(fixer.tree(snap.tree, String::new())).await?;
        if !changed {
            continue;
        }
        let mut dropped = std::mem::take(&mut fixer.dropped);
        if root.is_none() {
            dropped = vec!["/ (the snapshot's root tree is gone: nothing is left to keep)".into()];
        } else if dropped.is_empty() {
            dropped.push("(what an earlier snapshot in this run lost: the same trees)".into());
        }
        match root {
            Some(root) if !dry_run => pending.push((id, snap, root, dropped)),
            None if !dry_run && forget => {
                repo.storage()
                    .remove(FileKind::Snapshot, &id.0)
                    .await
                    .with_context(|| format!("removing snapshot {id}"))?;
                out.push(SnapshotRepair { snapshot: id.0.to_string(), repaired: None, dropped, forgotten: true });
            }
            _ => out.push(SnapshotRepair { snapshot: id.0.to_string(), repaired: None, dropped, forgotten: false }),
        }
    }
    drop(fixer);
    // The new trees are indexed before any snapshot names them (FORMAT.md §8).
    repo.finish_writer(writer).await.context("writing the repaired trees")?;
    for (id, snap, root, dropped) in pending {
        let mut s = snap.clone();
        s.tree = root;
        s.parent = Some(id);
        s.tags.retain(|(k, _)| k != "repaired-from");
        s.tags.push(("repaired-from".into(), id.0.to_string()));
        let new = repo.save_snapshot(&s).await.context("writing a repaired snapshot")?;
        if forget {
            repo.storage()
                .remove(FileKind::Snapshot, &id.0)
                .await
                .with_context(|| format!("removing snapshot {id}"))?;
        }
        out.push(SnapshotRepair {
            snapshot: id.0.to_string(),
            repaired: Some(new.0.to_string()),
            dropped,
            forgotten: forget,
        });
    }
    if forget {
        repo.forget_newest();
    }
    Ok(out)
}

struct Fixer<'a> {
    repo: &'a Repository,
    writer: &'a repo_format::BlobWriter,
    /// Trees already repaired: the new id (None when unreadable) and whether anything changed.
    memo: HashMap<TreeId, (Option<TreeId>, bool)>,
    dropped: Vec<String>,
    dry_run: bool,
}

type Fixed<'b> = Pin<Box<dyn Future<Output = Result<(Option<TreeId>, bool)>> + 'b>>;

impl Fixer<'_> {
    fn known(&self, kind: BlobKind, id: &repo_format::BlobId) -> bool {
        self.repo.index().contains(kind, id)
    }

    /// Are all of a file's parts readable (indexed, lists decodable)?
    async fn file_whole(&self, segs: &[Segment]) -> bool {
        for s in segs {
            match s {
                Segment::Blob { id, .. } if !self.known(BlobKind::Data, id) => return false,
                Segment::Indirect { id, .. } => {
                    let list = repo_format::BlobId(id.0);
                    if !self.known(BlobKind::Tree, &list) {
                        return false;
                    }
                    let Ok(inner) =
                        self.repo.read_blob(BlobKind::Tree, &list).await.and_then(|b| decode_segment_list(&b))
                    else {
                        return false;
                    };
                    if inner.iter().any(|s| match s {
                        Segment::Blob { id, .. } => !self.known(BlobKind::Data, id),
                        Segment::Indirect { .. } => true,
                        Segment::Zero { .. } => false,
                    }) {
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// The repaired tree (None: the tree itself is gone), and whether it differs.
    fn tree(&mut self, id: TreeId, path: String) -> Fixed<'_> {
        Box::pin(async move {
            if let Some(done) = self.memo.get(&id) {
                return Ok(*done);
            }
            let tree = match self.repo.read_tree(&id).await {
                Ok(t) => t,
                Err(e)
                    if e.is_corrupt()
                        || matches!(e, repo_format::Error::BlobNotInIndex(_) | repo_format::Error::NotFound { .. }) =>
                {
                    self.memo.insert(id, (None, true));
                    return Ok((None, true));
                }
                Err(e) => return Err(e.into()),
            };
            let mut nodes = Vec::with_capacity(tree.nodes.len());
            let mut changed = false;
            for mut node in tree.nodes {
                let at = format!("{path}/{}", String::from_utf8_lossy(&node.name));
                match node.content.clone() {
                    Content::Tree(sub) => match self.tree(sub, at.clone()).await? {
                        (Some(new), sub_changed) => {
                            changed |= sub_changed;
                            node.content = Content::Tree(new);
                        }
                        (None, _) => {
                            self.dropped.push(format!("{at}/"));
                            changed = true;
                            continue;
                        }
                    },
                    Content::Segments(segs) if !self.file_whole(&segs).await => {
                        self.dropped.push(at);
                        changed = true;
                        continue;
                    }
                    _ => {}
                }
                nodes.push(node);
            }
            let new = if !changed || self.dry_run {
                id
            } else {
                // Cut again as a backup would (a directory in parts stays in parts).
                let writer = &self.writer;
                let mut save_part = |t: &Tree| Ok(TreeId(writer.save(BlobKind::Tree, &t.encode()?)?.id.0));
                let mut splitter = repo_format::DirSplitter::new(self.repo.master_key().chunker_seed());
                for node in nodes {
                    splitter.push(node, &mut save_part)?;
                }
                let (bytes, _) = splitter.finish_encoded(&mut save_part)?;
                TreeId(self.writer.save(BlobKind::Tree, &bytes)?.id.0)
            };
            self.memo.insert(id, (Some(new), changed));
            Ok((Some(new), changed))
        })
    }
}
