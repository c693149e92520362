//! The copy engine in-process, on a snapshot forged with what real backups produce rarely: an
//! indirect segment list, a zero run, a blob used twice and one subtree under two names. In
//! both modes (shared id key, re-keyed) the copy restores byte for byte; a second run skips;
//! a copy cancelled between snapshots keeps the ones it finished.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use ferry_engine::copy::{self, Copied, CopyOptions};
use ferry_engine::restore::{self, Filter, RestoreOptions};
use ferry_engine::{Cancelled, Job};
use repo_format::{
    BlobKind, InitOptions, KdfParams, ObjectStorage, RepoConfig, Repository, Segment, Snapshot, SnapshotId, Storage,
    Tree, TreeId, encode_segment_list,
};

/// A snapshot at `time_ns`: `a/f` and `b/f` (one subtree), and `big` = A ‖ [B ‖ 100 zeros ‖ C] ‖ A
/// with the bracket an indirect list. Returns its id and the expected bytes of `big` and `f`.
async fn forge(repo: &Repository, time_ns: i64) -> (SnapshotId, Vec<u8>, Vec<u8>) {
    let chunk = |s: &str| random_bytes(s, 70_000 + s.len());
    let (a, b, c, d) = (chunk("a"), chunk("bb"), chunk("ccc"), chunk("dddd"));
    let ids = save(repo, [&a, &b, &c, &d].iter().map(|x| (BlobKind::Data, x.to_vec())).collect()).await;
    let blob = |i: usize, data: &[u8]| Segment::Blob { id: ids[i], len: data.len() as u32 };
    let inner = vec![blob(1, &b), Segment::Zero { len: 100 }, blob(2, &c)];
    let list_len = inner.iter().map(Segment::len).sum();
    let sub = Tree { nodes: vec![file("f", vec![blob(3, &d)])] };
    let saved =
        save(repo, vec![(BlobKind::Tree, encode_segment_list(&inner)), (BlobKind::Tree, sub.encode().unwrap())]);
    let saved = saved.await;
    let (list, sub) = (TreeId(saved[0].0), TreeId(saved[1].0));
    let big = file("big", vec![blob(0, &a), Segment::Indirect { id: list, len: list_len }, blob(0, &a)]);
    let root = Tree { nodes: vec![dir("a", sub), dir("b", sub), big] };
    let root = TreeId(save(repo, vec![(BlobKind::Tree, root.encode().unwrap())]).await[0].0);
    let snap =
        Snapshot { time_ns, tree: root, hostname: "forge".into(), paths: vec![b"/f".to_vec()], ..Default::default() };
    let id = repo.save_snapshot(&snap).await.unwrap();
    let expected = [a.clone(), b, vec![0; 100], c, a].concat();
    (id, expected, d)
}

/// Restore `id` of `repo` into `target` and check the files.
async fn restores(repo: &Arc<Repository>, id: &SnapshotId, target: &Path, big: &[u8], f: &[u8]) {
    repo.load_index().await.unwrap();
    let snap = repo.load_snapshot(id).await.unwrap();
    let opts = RestoreOptions::default();
    let plan = restore::plan(repo, snap.tree, &Filter::default(), &opts).await.unwrap();
    let out = restore::execute(repo.clone(), plan, target, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert!(std::fs::read(target.join("big")).unwrap() == big, "big differs");
    assert_eq!(std::fs::read(target.join("a/f")).unwrap(), f);
    assert_eq!(std::fs::read(target.join("b/f")).unwrap(), f);
}

/// Plan and execute a copy of every source snapshot.
async fn copy_all(
    src: &Repository,
    dst: &Repository,
    job: &Job,
    on: &mut (dyn FnMut(&Copied) + Send),
) -> copy::CopyReport {
    let all = src.snapshots().await.unwrap();
    let ids: Vec<SnapshotId> = all.iter().map(|(id, _)| *id).collect();
    let plan = copy::plan(&all, &ids, &dst.snapshots().await.unwrap());
    match copy::execute(src, dst, plan, &CopyOptions::default(), job, on).await {
        Ok(r) => r,
        Err(e) => panic!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekeyed_copy_restores_byte_for_byte_and_a_second_run_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let src = new_repo(&tmp.path().join("src")).await;
    let (id, big, f) = forge(&src, 1).await;
    let dst = new_repo(&tmp.path().join("dst")).await;
    let report = copy_all(&src, &dst, &Job::new(), &mut |_| {}).await;
    assert!(!report.shared_id_key);
    let [c] = report.snapshots.as_slice() else { panic!("{report:?}") };
    assert!(!c.skipped && c.source == id);
    // a, b, c, d once each; the root, the subtree (once for two names) and the list.
    assert_eq!((c.data_blobs, c.tree_blobs), (4, 3), "{c:?}");
    let dst = reopen(&tmp.path().join("dst")).await;
    assert_ne!(dst.load_snapshot(&c.destination).await.unwrap().tree, src.load_snapshot(&id).await.unwrap().tree);
    restores(&dst, &c.destination, &tmp.path().join("t"), &big, &f).await;

    let again = copy_all(&src, &dst, &Job::new(), &mut |_| {}).await;
    assert!(again.snapshots.iter().all(|s| s.skipped && s.destination == c.destination), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_id_key_ids_are_kept_and_only_missing_blobs_are_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let src = new_repo(&tmp.path().join("src")).await;
    let (first, big, f) = forge(&src, 1).await;
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&tmp.path().join("dst")).unwrap());
    let opts = InitOptions { id_key_from: Some(src.master_key()) };
    let dst = Repository::init_with(storage, PASSWORD, KdfParams::insecure_for_tests(), RepoConfig::new(2), "d", opts);
    let dst = Arc::new(dst.await.unwrap());
    let report = copy_all(&src, &dst, &Job::new(), &mut |_| {}).await;
    assert!(report.shared_id_key);
    let c = &report.snapshots[0];
    assert_eq!((c.data_blobs, c.tree_blobs), (4, 3), "{c:?}");
    assert_eq!(dst.load_snapshot(&c.destination).await.unwrap().tree, src.load_snapshot(&first).await.unwrap().tree);
    restores(&dst, &c.destination, &tmp.path().join("t"), &big, &f).await;
    // The same content in a later snapshot: nothing to upload but nothing skipped either.
    forge(&src, 2).await;
    let report = copy_all(&src, &dst, &Job::new(), &mut |_| {}).await;
    let [old, new] = report.snapshots.as_slice() else { panic!("{report:?}") };
    assert!(old.skipped && !new.skipped, "{report:?}");
    assert_eq!((new.data_blobs, new.tree_blobs, new.bytes_added), (0, 0, 0), "{new:?}");
}

/// A destination known by key only (`Limits::index_keys`, with a cache): the same blobs are
/// uploaded, nothing twice, and the caller's destination is not left with that index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_known_by_key_gets_each_blob_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = new_repo(&tmp.path().join("src")).await;
    forge(&src, 1).await;
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&tmp.path().join("dst")).unwrap());
    let opts = InitOptions { id_key_from: Some(src.master_key()) };
    let init = Repository::init_with(
        storage.clone(),
        PASSWORD,
        KdfParams::insecure_for_tests(),
        RepoConfig::new(2),
        "d",
        opts,
    );
    init.await.unwrap();
    let dst = Arc::new(Repository::open(storage, PASSWORD, Some(tmp.path().join("cache"))).await.unwrap());
    let job = || Job::new().with_limits(ferry_engine::job::Limits { index_keys: Some(true), ..Default::default() });
    let report = copy_all(&src, &dst, &job(), &mut |_| {}).await;
    assert_eq!((report.snapshots[0].data_blobs, report.snapshots[0].tree_blobs), (4, 3), "{report:?}");
    assert_ne!(dst.index().scope(), repo_format::IndexScope::Dedup, "the caller's destination keeps its own index");
    let (second, big, f) = forge(&src, 2).await;
    let report = copy_all(&src, &dst, &job(), &mut |_| {}).await;
    let new = report.snapshots.iter().find(|c| c.source == second).expect("copied");
    assert_eq!((new.data_blobs, new.tree_blobs, new.bytes_added), (0, 0, 0), "{new:?}");
    restores(&dst, &new.destination, &tmp.path().join("t"), &big, &f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_cancelled_between_snapshots_keeps_those_it_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let src = new_repo(&tmp.path().join("src")).await;
    forge(&src, 1).await;
    forge(&src, 2).await;
    let dst = new_repo(&tmp.path().join("dst")).await;
    let job = Job::new();
    let token = job.cancel.clone();
    let all = src.snapshots().await.unwrap();
    let ids: Vec<SnapshotId> = all.iter().map(|(id, _)| *id).collect();
    let plan = copy::plan(&all, &ids, &[]);
    let mut done = Vec::new();
    let mut on = |c: &Copied| {
        done.push(c.clone());
        token.cancel();
    };
    let err = copy::execute(&src, &dst, plan, &CopyOptions::default(), &job, &mut on).await.unwrap_err();
    assert!(err.chain().any(|c| c.downcast_ref::<Cancelled>().is_some()), "{err:#}");
    assert_eq!(done.len(), 1);
    let dst = reopen(&tmp.path().join("dst")).await;
    let snaps = dst.snapshots().await.unwrap();
    assert_eq!(snaps.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![done[0].destination]);
    // The next run copies the other one only.
    let report = copy_all(&src, &dst, &Job::new(), &mut |_| {}).await;
    assert_eq!(report.snapshots.iter().filter(|c| !c.skipped).count(), 1, "{report:?}");
}
