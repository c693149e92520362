//! Cancellation: a cancelled backup indexes what it uploaded and the next one reuses it; a
//! cancelled restore stops, leaving no file that looks restored but is not.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use ferry_engine::restore::{Filter, RestoreOptions};
use ferry_engine::{Cancelled, Job, backup, restore};

/// Cancel `job` once it has done `bytes` bytes.
fn cancel_after(job: &Job, bytes: u64) -> tokio::task::JoinHandle<()> {
    let (p, token) = (job.progress.clone(), job.cancel.clone());
    tokio::spawn(async move {
        while p.bytes_done.load(Relaxed) < bytes {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        token.cancel();
    })
}

fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Cancelled>().is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backup_indexes_its_uploads_and_the_next_backup_reuses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = new_repo(&repo_dir).await;
    // A first, small snapshot that must survive the cancelled backup intact.
    let small = random_tree(&tmp.path().join("small"), 4, 100_000);
    let first = backup::run(repo.clone(), config(&small, "h"), &Job::new()).await.unwrap();

    let big = random_tree(&tmp.path().join("big"), 48, 1 << 20);
    let total = 48u64 << 20;
    let job = Job::new();
    let canceller = cancel_after(&job, total / 3);
    let err = backup::run(repo.clone(), config(&big, "h"), &job).await.unwrap_err();
    canceller.await.unwrap();
    assert!(is_cancelled(&err), "expected cancelled, got {err:#}");

    // Every uploaded pack is in the index; no snapshot was written.
    let after = reopen(&repo_dir).await;
    let (blobs_after, bytes_after) = data_in_index(&after).await;
    assert_eq!(packs_on_disk(&repo_dir), after.index().packs().len(), "a pack was uploaded but not indexed");
    assert_eq!(after.snapshots().await.unwrap().len(), 1, "a cancelled backup wrote a snapshot");
    assert!(bytes_after > 400_000, "nothing of the big tree was uploaded before the cancel ({bytes_after} bytes)");
    assert!(bytes_after < 400_000 + total, "the backup ran to the end: it was not cancelled");

    // The earlier snapshot still restores exactly, verified.
    let target = tmp.path().join("restored-small");
    let plan =
        restore::plan(&after, first.snapshot.tree, &Filter::default(), &RestoreOptions::default()).await.unwrap();
    let opts = RestoreOptions { verify: true, ..Default::default() };
    let out = restore::execute(after.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    for i in 0..4 {
        let name = format!("f{i:04}");
        assert_eq!(std::fs::read(target.join(&name)).unwrap(), std::fs::read(small.join(&name)).unwrap());
    }

    // The next backup uploads only what the cancelled one did not.
    let next = backup::run(after.clone(), config(&big, "h"), &Job::new()).await.unwrap();
    let final_repo = reopen(&repo_dir).await;
    let (blobs_final, bytes_final) = data_in_index(&final_repo).await;
    assert_eq!(next.snapshot.summary.data_blobs_added as usize, blobs_final - blobs_after);
    assert_eq!(bytes_final, 400_000 + total, "every byte of both trees is stored exactly once");
    assert_eq!(packs_on_disk(&repo_dir), final_repo.index().packs().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_restore_stops_and_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = new_repo(&repo_dir).await;
    let src = random_tree(&tmp.path().join("src"), 48, 1 << 20);
    let snap = backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();

    let repo = reopen(&repo_dir).await;
    repo.load_index().await.unwrap();
    let target = tmp.path().join("target");
    let plan = restore::plan(&repo, snap.snapshot.tree, &Filter::default(), &RestoreOptions::default()).await.unwrap();
    let job = Job::new();
    let canceller = cancel_after(&job, 1);
    let err = restore::execute(repo, plan, &target, &job, &RestoreOptions::default()).await.unwrap_err();
    canceller.await.unwrap();
    assert!(is_cancelled(&err), "expected cancelled, got {err:#}");
    let (mut complete, mut empty) = (0, 0);
    for e in std::fs::read_dir(&target).unwrap() {
        let e = e.unwrap();
        let got = std::fs::read(e.path()).unwrap();
        if got.is_empty() {
            empty += 1;
        } else {
            assert_eq!(got, std::fs::read(src.join(e.file_name())).unwrap(), "{:?} is partial", e.file_name());
            complete += 1;
        }
    }
    assert!(empty > 0, "the restore ran to the end ({complete} files complete): it was not cancelled");
}
