//! Progress counters of a backup: totals are counted (by a second, stat-only walk) only when
//! the job asks for them; what was done is counted either way.

mod common;

use common::*;
use ferry_engine::{Job, backup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_are_counted_only_when_the_job_wants_them() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    // Two levels, so the walk has directories to descend into.
    let src = random_tree(&tmp.path().join("src"), 20, 50_000);
    random_tree(&src.join("sub"), 10, 50_000);
    let (files, bytes) = (30u64, 30 * 50_000u64);

    let quiet = Job::new().with_totals(false);
    backup::run(repo.clone(), config(&src, "h"), &quiet).await.unwrap();
    let p = quiet.progress.snapshot(Default::default());
    assert_eq!((p.files_done, p.bytes_done), (files, bytes), "what was done is counted without totals");
    assert_eq!((p.files_total, p.bytes_total), (0, 0), "no totals walk was asked for");

    // The walk of 31 entries ends long before the backup has written its snapshot.
    let shown = Job::new();
    assert!(shown.totals, "totals are on by default");
    backup::run(repo, config(&src, "h"), &shown).await.unwrap();
    let p = shown.progress.snapshot(Default::default());
    assert_eq!((p.files_total, p.bytes_total), (files, bytes));
}
