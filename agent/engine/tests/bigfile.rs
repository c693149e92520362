//! Big files (64 MiB and more) move past the page cache both ways: a backup reads them
//! directly and a restore writes them directly (`O_DIRECT`). What is stored and restored is
//! byte for byte the file, at unaligned sizes and with holes whose data ends mid-page, and
//! neither leaves the file's pages in the cache.

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use ferry_engine::restore::{Filter, RestoreOptions};
use ferry_engine::{Job, backup, restore};

/// Bytes of `path` in the page cache (`None`, and a counted skip, without util-linux's fincore).
fn cached(path: &Path) -> Option<u64> {
    match std::process::Command::new("fincore").args(["--bytes", "--noheadings", "--output", "RES"]).arg(path).output()
    {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()),
        _ => {
            repo_format::testing::skip("fincore (util-linux) is not here to tell what is cached");
            None
        }
    }
}

/// Write `path` to the disk and drop its pages from the cache.
fn evict(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_files_are_backed_up_and_restored_past_the_page_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // A whole file of an unaligned size, and a sparse one whose data ends mid-page.
    let whole = random_bytes("whole", (70 << 20) + 1234);
    std::fs::File::create(src.join("whole")).unwrap().write_all(&whole).unwrap();
    let sparse_len = 100u64 << 20;
    let (a, b) = (random_bytes("a", 5_000_001), random_bytes("b", 3 << 20));
    {
        let f = std::fs::File::create(src.join("sparse")).unwrap();
        f.set_len(sparse_len).unwrap();
        f.write_all_at(&a, 8 << 20).unwrap();
        f.write_all_at(&b, 80 << 20).unwrap();
    }
    let mut sparse = vec![0u8; sparse_len as usize];
    sparse[8 << 20..(8 << 20) + a.len()].copy_from_slice(&a);
    sparse[80 << 20..(80 << 20) + b.len()].copy_from_slice(&b);
    for name in ["whole", "sparse"] {
        evict(&src.join(name));
    }

    let repo = new_repo(&tmp.path().join("repo")).await;
    let out = backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    for name in ["whole", "sparse"] {
        if let Some(n) = cached(&src.join(name)) {
            assert!(n < 1 << 20, "the backup left {n} bytes of {name} in the page cache");
        }
    }

    let target = tmp.path().join("out");
    let opts = RestoreOptions::default();
    // The backup worked on a view of its own: load the index a restore needs.
    let repo = restore::load_index(&repo).await.unwrap();
    let plan = restore::plan(&repo, out.snapshot.tree, &Filter::default(), &opts).await.unwrap();
    let report = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for name in ["whole", "sparse"] {
        if let Some(n) = cached(&target.join(name)) {
            assert!(n < 4 << 20, "the restore left {n} bytes of {name} in the page cache");
        }
    }
    assert!(std::fs::read(target.join("whole")).unwrap() == whole, "whole differs");
    assert!(std::fs::read(target.join("sparse")).unwrap() == sparse, "sparse differs");
}
