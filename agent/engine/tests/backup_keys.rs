//! A backup holds the index it deduplicates against in the least memory: with a cache and an
//! index of some size (forced here: `Limits::index_keys`), tree blobs with their locations and
//! data blobs by key only (16 bytes each instead of 48). It still stores nothing that is stored
//! already, and what it stores restores byte for byte; the repository it was given (shared with
//! other jobs in the agent) never gets that index. Without a cache, or with a small index, the
//! index is read once, whole.

mod common;

use common::*;
use ferry_engine::backup;
use ferry_engine::job::{Job, Limits};
use ferry_engine::restore::{self, Filter, RestoreOptions};
use repo_format::{IndexScope, ObjectStorage, Repository, Storage};
use std::sync::Arc;

async fn open(dir: &std::path::Path, cache: Option<std::path::PathBuf>) -> Arc<Repository> {
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).unwrap());
    Arc::new(Repository::open(storage, PASSWORD, cache).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_deduplicates_against_keys_and_stores_only_what_is_new() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    new_repo(&repo_dir).await;
    let src = random_tree(&tmp.path().join("src"), 30, 40_000);
    let shared = open(&repo_dir, Some(tmp.path().join("cache"))).await;
    let keys = Limits { index_keys: Some(true), ..Limits::default() };
    let job = || Job::new().with_limits(keys.clone());
    let first = backup::run(shared.clone(), config(&src, "a"), &job()).await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let (blobs, _) = data_in_index(&*reopen(&repo_dir).await).await;
    assert!(blobs >= 30, "{blobs} data blobs");

    // A small index is read whole unless asked otherwise (its keys would save little).
    let small = backup::load_index(&shared, &Limits::default()).await.unwrap();
    assert_eq!((small.index().scope(), small.index().keys_len()), (IndexScope::Full, 0));
    let view = backup::load_index(&shared, &keys).await.unwrap();
    let idx = view.index();
    assert_eq!(idx.scope(), IndexScope::Dedup);
    assert_eq!(idx.keys_len(), blobs, "every data blob by key");
    assert_eq!(idx.iter().count(), idx.len() - blobs, "entries for the trees only");
    assert_ne!(shared.index().scope(), IndexScope::Dedup, "the shared repository never gets it");

    // The same files again, as another host (no parent: every file is read and chunked): every
    // chunk is found by key, so nothing but the snapshot is written.
    let packs = packs_on_disk(&repo_dir);
    let second = backup::run(shared.clone(), config(&src, "b"), &job()).await.unwrap();
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(packs_on_disk(&repo_dir), packs, "nothing stored twice");
    assert_eq!(data_in_index(&*reopen(&repo_dir).await).await.0, blobs);
    assert_ne!(shared.index().scope(), IndexScope::Dedup);

    // One new file: its blob, and nothing else, is stored.
    std::fs::write(src.join("new"), random_bytes("new", 40_000)).unwrap();
    let third = backup::run(shared.clone(), config(&src, "b"), &job()).await.unwrap();
    assert!(third.errors.is_empty(), "{:?}", third.errors);
    assert_eq!(data_in_index(&*reopen(&repo_dir).await).await.0, blobs + 1);

    // What it stored restores byte for byte.
    let repo = restore::load_index(&shared).await.unwrap();
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, third.snapshot.tree, &Filter::default(), &opts).await.unwrap();
    let target = tmp.path().join("out");
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let mut n = 0;
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        assert_eq!(std::fs::read(target.join(e.file_name())).unwrap(), std::fs::read(e.path()).unwrap());
        n += 1;
    }
    assert_eq!((n, std::fs::read_dir(&target).unwrap().count()), (31, 31));

    // Without a cache, a second reading would download the index again: one reading, whole.
    let uncached = backup::load_index(&*open(&repo_dir, None).await, &keys).await.unwrap();
    assert_eq!((uncached.index().scope(), uncached.index().keys_len()), (IndexScope::Full, 0));
}
