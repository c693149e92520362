//! A restore holds the index entries it needs, not the whole index: with a cache, it loads the
//! tree blobs' entries, plans, then loads the entries of the data blobs its plan uses (a filter
//! of their ids) before it writes anything. The files come back byte for byte; the blobs of
//! other snapshots stay out of memory; the repository it was given keeps its whole index (the
//! restore works on a view of its own). Without a cache, the index is read once, whole.

mod common;

use common::*;
use ferry_engine::Job;
use ferry_engine::restore::{self, Filter, RestoreOptions};
use repo_format::{BlobKind, Index, IndexScope, ObjectStorage, Repository, Segment, Storage, Tree, TreeId};
use std::sync::Arc;

async fn open(dir: &std::path::Path, cache: Option<std::path::PathBuf>) -> Arc<Repository> {
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).unwrap());
    Arc::new(Repository::open(storage, PASSWORD, cache).await.unwrap())
}

fn data_entries(i: &Index) -> usize {
    i.iter().filter(|(_, l)| l.kind == BlobKind::Data).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_loads_the_entries_of_its_own_blobs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = new_repo(&repo_dir).await;
    // Blobs of other snapshots: in the index, never needed by this restore.
    let others: Vec<_> = (0..300).map(|i| (BlobKind::Data, random_bytes(&format!("other{i}"), 500))).collect();
    save(&repo, others).await;
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(&format!("mine{i}"), 20_000 + 1000 * i)).collect();
    let ids = save(&repo, blobs.iter().map(|b| (BlobKind::Data, b.clone())).collect()).await;
    let seg = |i: usize| Segment::Blob { id: ids[i], len: blobs[i].len() as u32 };
    let sub = Tree { nodes: vec![file("c", vec![seg(2)])] };
    let sub = TreeId(save(&repo, vec![(BlobKind::Tree, sub.encode().unwrap())]).await[0].0);
    let root =
        Tree { nodes: vec![file("a", vec![seg(0)]), file("big", vec![seg(1), seg(2), seg(0)]), dir("sub", sub)] };
    let root = TreeId(save(&repo, vec![(BlobKind::Tree, root.encode().unwrap())]).await[0].0);
    let full = repo.load_index().await.unwrap();
    assert_eq!(data_entries(&full), 303);

    let shared = open(&repo_dir, Some(tmp.path().join("cache"))).await;
    shared.load_index().await.unwrap();
    let repo = restore::load_index(&shared).await.unwrap();
    let trees = repo.index();
    assert_eq!(trees.scope(), IndexScope::Trees);
    assert_eq!((data_entries(&trees), trees.len()), (0, 2), "the two trees, no data blob");
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    let target = tmp.path().join("out");
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(std::fs::read(target.join("a")).unwrap(), blobs[0]);
    assert_eq!(std::fs::read(target.join("big")).unwrap(), [&blobs[1][..], &blobs[2], &blobs[0]].concat());
    assert_eq!(std::fs::read(target.join("sub/c")).unwrap(), blobs[2]);
    let selected = repo.index();
    assert_eq!(selected.scope(), IndexScope::Selected);
    for id in &ids {
        assert_eq!(selected.lookup(BlobKind::Data, id), full.lookup(BlobKind::Data, id));
    }
    // Its three blobs, and at most a few others the filter lets through (about 0.01 % each).
    let kept = data_entries(&selected);
    assert!((3..=8).contains(&kept), "{kept} data entries kept of 303");
    assert!(selected.memory_bytes() < full.memory_bytes());
    // The restore worked on a view: the repository it was given (shared with other jobs in the
    // agent, a backup among them) keeps its whole index.
    assert_eq!((shared.index().scope(), data_entries(&shared.index())), (IndexScope::Full, 303));

    // Without a cache, a second reading would download the index again: one reading, whole.
    let uncached = restore::load_index(&*open(&repo_dir, None).await).await.unwrap();
    assert_eq!((uncached.index().scope(), data_entries(&uncached.index())), (IndexScope::Full, 303));
}
