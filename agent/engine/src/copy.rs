//! Copying snapshots from one repository to another (`ferry copy`), uploading only the blobs the
//! destination lacks.
//!
//! Plan, then execute. `plan` is a pure decision over both repositories' snapshot lists: which
//! selected snapshots the destination already has (skipped) and which to copy, oldest first. A
//! snapshot is already there when a destination snapshot has the same time, host, user, paths
//! and tags (tags in any order; `Origin`): snapshot ids cannot tell, they differ between
//! repositories. `execute` then copies each snapshot's trees and blobs (`walk`) and writes the
//! snapshot with the same fields and summary, its tree id replaced by the copy's and its parent
//! by the destination snapshot of the same origin (none when the parent was not copied).
//!
//! Two modes, chosen by comparing the repositories' id keys (`MasterKey::same_id_key`):
//! - **shared id key** (`init --copy-chunker-params-from`): a plaintext has the same blob id in
//!   both, so trees and blobs keep their ids; only the blobs the destination's index lacks are
//!   read from the source (decrypted and verified) and saved;
//! - **re-key**: every data blob is read once per run and saved under the id the destination
//!   computes, and every segment list and tree is re-encoded bottom-up with the new ids. Chunk
//!   boundaries stay as the source cut them (nothing is re-chunked), so such copies deduplicate
//!   against each other but not against the destination's own backups of the same files.
//!   Re-encoded trees carry the fields this version knows: extension bytes that a newer writer
//!   appended to tree entries are not carried over.
//!
//! Crash safety (FORMAT.md §8): each snapshot gets its own writer, finished (its packs uploaded
//! and listed in an index object) before the snapshot is written. A crash or a cancellation
//! loses at most the snapshot in progress: its uploaded packs are indexed (cancellation) or
//! journaled and reused by the next run on this machine, and the snapshots written before it
//! are complete, so running the copy again skips them and resumes with the next.
//!
//! Memory is bounded by the source's index, never by the data: one tree path at a time, a
//! bounded number of blob reads in flight (`Job::limits`), and the walk's memo of what was copied
//! (see `walk`). This engine never prints, reads no environment, and never writes to the source.

mod walk;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result};
use repo_format::{Repository, Resumed, Snapshot, SnapshotId, WriterOptions};

use crate::Job;

/// What identifies a backup across repositories: its time, host, user, paths and tags (sorted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    time_ns: i64,
    hostname: String,
    username: String,
    paths: Vec<Vec<u8>>,
    tags: Vec<(String, String)>,
}

impl Origin {
    pub fn of(s: &Snapshot) -> Origin {
        let mut tags = s.tags.clone();
        tags.sort();
        Origin {
            time_ns: s.time_ns,
            hostname: s.hostname.clone(),
            username: s.username.clone(),
            paths: s.paths.clone(),
            tags,
        }
    }
}

/// One selected snapshot of a plan.
#[derive(Debug, Clone)]
pub struct PlanItem {
    pub source_id: SnapshotId,
    pub snapshot: Snapshot,
    /// The destination snapshot of the same origin, when there is one: it is skipped.
    pub existing: Option<SnapshotId>,
}

/// What a copy will do.
#[derive(Debug, Clone, Default)]
pub struct CopyPlan {
    /// The selected snapshots, oldest first.
    pub items: Vec<PlanItem>,
    /// The origin of each selected snapshot's parent, when the source has that parent.
    parents: HashMap<SnapshotId, Origin>,
    /// Destination snapshots by origin (the newest id when several share one).
    destination: HashMap<Origin, SnapshotId>,
}

impl CopyPlan {
    /// Snapshots that will be copied (a snapshot selected twice, or two of one origin, count once
    /// here but the second is skipped when it comes).
    pub fn to_copy(&self) -> usize {
        self.items.iter().filter(|i| i.existing.is_none()).count()
    }
}

/// Decide what to copy: `selected` source snapshots (ids of `source`, any order, repeats
/// ignored) against the `destination`'s snapshots. `source` is every source snapshot (parents
/// are looked up there).
pub fn plan(
    source: &[(SnapshotId, Snapshot)],
    selected: &[SnapshotId],
    destination: &[(SnapshotId, Snapshot)],
) -> CopyPlan {
    let mut by_origin = HashMap::new();
    let mut dest: Vec<&(SnapshotId, Snapshot)> = destination.iter().collect();
    dest.sort_by_key(|(id, s)| (s.time_ns, *id));
    for (id, s) in dest {
        by_origin.insert(Origin::of(s), *id);
    }
    let source_by_id: HashMap<SnapshotId, &Snapshot> = source.iter().map(|(id, s)| (*id, s)).collect();
    let mut items: Vec<PlanItem> = Vec::new();
    let mut parents = HashMap::new();
    let mut chosen: Vec<SnapshotId> = selected.to_vec();
    chosen.sort_by_key(|id| (source_by_id.get(id).map(|s| s.time_ns), *id));
    chosen.dedup();
    for id in chosen {
        let Some(s) = source_by_id.get(&id) else { continue };
        if let Some(p) = s.parent.and_then(|p| source_by_id.get(&p).map(|ps| (p, Origin::of(ps)))) {
            parents.insert(p.0, p.1);
        }
        let existing = by_origin.get(&Origin::of(s)).copied();
        items.push(PlanItem { source_id: id, snapshot: (*s).clone(), existing });
    }
    CopyPlan { items, parents, destination: by_origin }
}

/// How a copy writes.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// The cache root: the destination's packs are spooled under it (else the system
    /// temporary directory).
    pub cache_dir: Option<PathBuf>,
}

/// What happened to one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub source: SnapshotId,
    /// The new destination snapshot, or the existing one when skipped.
    pub destination: SnapshotId,
    /// The destination had it already (same origin): nothing was written.
    pub skipped: bool,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    /// Plaintext bytes of the blobs uploaded for it …
    pub bytes_added: u64,
    /// … and their stored (compressed, encrypted) bytes.
    pub bytes_added_stored: u64,
}

/// The outcome of a copy.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Every planned snapshot, oldest first.
    pub snapshots: Vec<Copied>,
    /// The repositories share their id key: blobs kept their ids. False: re-keyed.
    pub shared_id_key: bool,
    /// Packs of an interrupted writer of the destination on this machine, indexed and reused.
    pub resumed: Resumed,
}

/// Carry out `plan` from `src` to `dst`, calling `on_snapshot` as each snapshot is done (copied
/// or skipped). Cancelled (`job.cancel`): what was uploaded for the snapshot in progress is
/// indexed, it is not written, and the error is `Cancelled`; the snapshots before it are whole.
pub async fn execute(
    src: &Repository,
    dst: &Repository,
    mut plan: CopyPlan,
    opts: &CopyOptions,
    job: &Job,
    on_snapshot: &mut (dyn FnMut(&Copied) + Send),
) -> Result<CopyReport> {
    // The destination's index is its own (a view): it may be loaded by key only, which a
    // caller reading `dst` afterwards must not be handed.
    let dst = &dst.view();
    let shared = src.master_key().same_id_key(dst.master_key());
    let mut report = CopyReport { shared_id_key: shared, ..Default::default() };
    let todo: Vec<&PlanItem> = plan.items.iter().filter(|i| i.existing.is_none()).collect();
    job.progress.files_total.store(todo.len() as u64, Relaxed);
    job.progress.bytes_total.store(todo.iter().map(|i| i.snapshot.summary.bytes_total).sum(), Relaxed);
    if !todo.is_empty() {
        src.load_index().await.context("loading the source repository's index")?;
        // The destination is written only: its data blobs by key suffice (`index_keys`).
        dst.load_index_for_writing(job.limits.keys_from())
            .await
            .context("loading the destination repository's index")?;
        report.resumed = dst.resume_interrupted().await.context("indexing the packs of an interrupted writer")?;
    }
    let tmp_dir = crate::backup::pack_tmp_dir(dst, opts.cache_dir.as_deref())?;
    let reads = (job.limits.threads * 2).clamp(2, 16);
    let mut walk = walk::Walk::new(src, shared, reads, dst.master_key().chunker_seed());
    let items = std::mem::take(&mut plan.items);
    for item in items {
        let origin = Origin::of(&item.snapshot);
        // Planned as new, but a snapshot of the same origin may have been copied just before.
        if let Some(existing) = item.existing.or_else(|| plan.destination.get(&origin).copied()) {
            let done = Copied { source: item.source_id, destination: existing, skipped: true, ..Default::default() };
            on_snapshot(&done);
            report.snapshots.push(done);
            continue;
        }
        job.cancel.check()?;
        let writer = dst.writer(WriterOptions {
            open_packs: job.limits.threads.max(2),
            max_uploads: 2,
            tmp_dir: tmp_dir.clone(),
            uploads: job.limits.uploads.clone(),
        });
        let walked = walk.tree(&writer, item.snapshot.tree, job).await;
        // Finish the writer even after a failure: what was uploaded is indexed and reused.
        let finished = dst.finish_writer(writer).await.context("uploading packs and index");
        let (root, st) = match (walked, finished) {
            (_, Err(e)) => return Err(e),
            (Err(e), Ok(_)) => return Err(e.context(format!("copying snapshot {}", item.source_id.0.short()))),
            (Ok(root), Ok(w)) => (root, w.stats),
        };
        let parent = item.snapshot.parent.and_then(|p| plan.parents.get(&p)).and_then(|o| plan.destination.get(o));
        let snapshot = Snapshot { tree: root, parent: parent.copied(), ..item.snapshot };
        let id = dst.save_snapshot(&snapshot).await.context("saving the copied snapshot")?;
        plan.destination.insert(origin, id);
        job.progress.files_done.fetch_add(1, Relaxed);
        let done = Copied {
            source: item.source_id,
            destination: id,
            skipped: false,
            data_blobs: st.data_blobs.load(Relaxed),
            tree_blobs: st.tree_blobs.load(Relaxed),
            bytes_added: st.bytes_added.load(Relaxed),
            bytes_added_stored: st.bytes_stored.load(Relaxed),
        };
        on_snapshot(&done);
        report.snapshots.push(done);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use repo_format::{Id, TreeId};

    fn snap(time_ns: i64, host: &str, tags: &[(&str, &str)], parent: Option<u8>) -> Snapshot {
        Snapshot {
            time_ns,
            tree: TreeId(Id([time_ns as u8; 32])),
            parent: parent.map(|p| SnapshotId(Id([p; 32]))),
            hostname: host.into(),
            username: "u".into(),
            paths: vec![b"/data".to_vec()],
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    fn id(n: u8) -> SnapshotId {
        SnapshotId(Id([n; 32]))
    }

    #[test]
    fn a_snapshot_of_the_same_origin_is_skipped_whatever_its_id_and_tag_order() {
        let source = vec![
            (id(1), snap(10, "h", &[("a", "1"), ("b", "2")], None)),
            (id(2), snap(20, "h", &[], Some(1))),
            (id(3), snap(30, "other", &[], None)),
        ];
        // The destination holds the first under another id, its tags in another order, and a
        // snapshot that differs from the third only by its host.
        let dest = vec![(id(9), snap(10, "h", &[("b", "2"), ("a", "1")], None)), (id(8), snap(30, "h", &[], None))];
        let p = plan(&source, &[id(3), id(1), id(2), id(1)], &dest);
        let got: Vec<_> = p.items.iter().map(|i| (i.source_id, i.existing)).collect();
        assert_eq!(got, vec![(id(1), Some(id(9))), (id(2), None), (id(3), None)], "oldest first, repeats dropped");
        assert_eq!(p.to_copy(), 2);
        // The second's parent is found by origin: it maps to the destination's copy.
        let parent_origin = p.parents.get(&id(1)).expect("the parent's origin");
        assert_eq!(p.destination.get(parent_origin), Some(&id(9)));
    }

    #[test]
    fn ids_the_source_does_not_have_are_not_planned() {
        let source = vec![(id(1), snap(10, "h", &[], None))];
        assert!(plan(&source, &[id(7)], &[]).items.is_empty());
    }
}
