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

/// `tmp`/src holding `whole`, a file of 70 MiB and an unaligned rest: its path and its bytes.
fn source_with_whole(tmp: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let src = tmp.join("src");
    std::fs::create_dir(&src).unwrap();
    let whole = random_bytes("whole", (70 << 20) + 1234);
    std::fs::File::create(src.join("whole")).unwrap().write_all(&whole).unwrap();
    (src, whole)
}

/// Restore snapshot tree `tree` of `repo` whole into `target`, without errors.
async fn restore_all(repo: &std::sync::Arc<repo_format::Repository>, tree: repo_format::TreeId, target: &Path) {
    let opts = RestoreOptions::default();
    // The backup worked on a view of its own: load the index a restore needs.
    let repo = restore::load_index(repo).await.unwrap();
    let plan = restore::plan(&repo, tree, &Filter::default(), &opts).await.unwrap();
    let report = restore::execute(repo.clone(), plan, target, &Job::new(), &opts).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_files_are_backed_up_and_restored_past_the_page_cache() {
    let tmp = tempfile::tempdir().unwrap();
    // A whole file of an unaligned size, and a sparse one whose data ends mid-page.
    let (src, whole) = source_with_whole(tmp.path());
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
    restore_all(&repo, out.snapshot.tree, &target).await;
    for name in ["whole", "sparse"] {
        if let Some(n) = cached(&target.join(name)) {
            assert!(n < 4 << 20, "the restore left {n} bytes of {name} in the page cache");
        }
    }
    assert!(std::fs::read(target.join("whole")).unwrap() == whole, "whole differs");
    assert!(std::fs::read(target.join("sparse")).unwrap() == sparse, "sparse differs");
}

/// Extents of `path` after it is written back, from e2fsprogs' filefrag (`None`, and a counted
/// skip, without it or where the file system cannot say).
fn extents(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("filefrag").arg("-s").arg(path).output();
    let n = out.ok().filter(|o| o.status.success()).and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.rsplit(": ").next()?.split_whitespace().next()?.parse().ok()
    });
    if n.is_none() {
        repo_format::testing::skip("filefrag (e2fsprogs) cannot map the file's extents here");
    }
    n
}

/// A big file comes back laid out as its source: in about as few extents (its data's space is
/// allocated before it is written directly; its blobs' unaligned ends, written through the page
/// cache, are allocated at write-back), and with its holes still holes (only the data's space is
/// allocated, not the file's size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_comes_back_in_few_extents_and_its_holes_stay_holes() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (src, whole) = source_with_whole(tmp.path());
    let sparse_len = 1u64 << 30;
    let data = random_bytes("data", 66 << 20);
    {
        let f = std::fs::File::create(src.join("sparse")).unwrap();
        f.set_len(sparse_len).unwrap();
        f.write_all_at(&data, 500 << 20).unwrap();
    }
    let Some(before) = extents(&src.join("whole")) else { return };

    let repo = new_repo(&tmp.path().join("repo")).await;
    let out = backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let target = tmp.path().join("out");
    restore_all(&repo, out.snapshot.tree, &target).await;
    assert!(std::fs::read(target.join("whole")).unwrap() == whole, "whole differs");

    let after = extents(&target.join("whole")).unwrap();
    assert!(after <= before + 4, "restored in {after} extents, the source has {before}");
    let allocated = std::fs::metadata(target.join("sparse")).unwrap().blocks() * 512;
    assert!(
        allocated >= data.len() as u64 && allocated <= data.len() as u64 + (2 << 20),
        "{allocated} bytes allocated for {} of data",
        data.len()
    );
    let f = std::fs::File::open(target.join("sparse")).unwrap();
    let got = |at| {
        let mut buf = vec![0u8; 1 << 20];
        f.read_exact_at(&mut buf, at).unwrap();
        buf
    };
    assert!(got(0).iter().all(|&b| b == 0) && got(sparse_len - (1 << 20)).iter().all(|&b| b == 0), "holes read zeros");
    assert!(got(500 << 20) == data[..1 << 20], "the data is where it was");
}
