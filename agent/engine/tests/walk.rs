//! The scan's walk (`backup::cwd`): the scan thread enters each directory and names entries
//! relative to it; deeper than it holds descriptors for at once, it comes back up through
//! `..`. Sibling directories after nested ones, a chain deeper than that limit, a symlink to a directory
//! (stored as a link, never followed) and files small, chunked and empty all restore
//! identical, and a second backup finds every file unchanged. A source named by a symlink to
//! a directory is that directory.

mod common;

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use ferry_engine::restore::{self, Filter, RestoreOptions};
use ferry_engine::{Job, backup};

/// Levels of the deep chain: more than the directories the scan enters at once (256).
const DEPTH: usize = 300;

fn make_tree(src: &Path) {
    let w = |p: &Path, data: &[u8]| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w(&src.join("a/x/deeper/f"), b"in a/x/deeper");
    w(&src.join("a/x/big"), &random_bytes("big", 3 << 20));
    w(&src.join("a/x2/f"), b"in a/x2");
    w(&src.join("a/y"), b"after the subdirectories of a");
    w(&src.join("b"), b"after a");
    std::fs::File::create(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("a", src.join("link")).unwrap();
    let mut d = src.join("chain");
    for level in 0..DEPTH {
        w(&d.join("f"), format!("level {level}").as_bytes());
        if level % 50 == 0 {
            w(&d.join("s/g"), format!("side of level {level}").as_bytes());
        }
        d = d.join("d");
    }
    w(&d.join("bottom"), &random_bytes("bottom", 100_000));
}

/// `b` holds what `a` holds: the same names, kinds, file contents and link targets.
fn same_tree(a: &Path, b: &Path) -> usize {
    let mut names: Vec<_> = std::fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
    let mut theirs: Vec<_> = std::fs::read_dir(b).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    theirs.sort();
    assert_eq!(names, theirs, "entries of {}", b.display());
    let mut files = 0;
    for name in names {
        let (pa, pb) = (a.join(&name), b.join(&name));
        let (ma, mb) = (std::fs::symlink_metadata(&pa).unwrap(), std::fs::symlink_metadata(&pb).unwrap());
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pb.display());
        assert_eq!(ma.mode(), mb.mode(), "{}", pb.display());
        if ma.is_dir() {
            files += same_tree(&pa, &pb);
        } else if ma.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&pa).unwrap(), std::fs::read_link(&pb).unwrap());
        } else {
            assert!(std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(), "content of {}", pb.display());
            files += 1;
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_deep_and_linked_trees_restore_identical() {
    nested_deep_and_linked().await;
}

async fn nested_deep_and_linked() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let src = tmp.path().join("src");
    make_tree(&src);
    // Files modified in the second before a backup are not trusted as unchanged.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut cfg = config(&src, "h");
    cfg.cache_dir = Some(tmp.path().join("cache"));

    let first = backup::run(repo.clone(), cfg.clone(), &Job::new()).await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let files = 6 + DEPTH + 6 + 1;
    // The files cache, keyed by absolute path, answers for every file. (The trees differ: the
    // first backup's readlink set the symlink's atime.)
    let second = backup::run(repo.clone(), cfg, &Job::new()).await.unwrap();
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    let s = &second.snapshot.summary;
    assert_eq!((s.files_new, s.files_changed, s.files_unchanged), (0, 0, files as u64), "{s:?}");

    let dst = tmp.path().join("dst");
    let opts = RestoreOptions::default();
    // The backup worked on a view of its own: load the index a restore needs.
    let repo = restore::load_index(&repo).await.unwrap();
    let plan = restore::plan(&repo, first.snapshot.tree, &Filter::default(), &opts).await.unwrap();
    let out = restore::execute(repo.clone(), plan, &dst, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    // a/x/deeper/f, a/x/big, a/x2/f, a/y, b, empty, a file per level, 6 side files, bottom.
    assert_eq!(same_tree(&src, &dst), files);
}

/// `ferry backup /link` where /link points to a directory backs up the directory, as when the
/// scan went by absolute path (the source's own open follows; entries below never do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_named_by_a_symlink_is_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let real = tmp.path().join("real");
    std::fs::create_dir_all(real.join("sub")).unwrap();
    std::fs::write(real.join("sub/f"), b"through the link").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = backup::run(repo.clone(), config(&link, "h"), &Job::new()).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.snapshot.summary.files_new, 1, "{:?}", out.snapshot.summary);
    let dst = tmp.path().join("dst");
    let opts = RestoreOptions::default();
    // The backup worked on a view of its own: load the index a restore needs.
    let repo = restore::load_index(&repo).await.unwrap();
    let plan = restore::plan(&repo, out.snapshot.tree, &Filter::default(), &opts).await.unwrap();
    restore::execute(repo.clone(), plan, &dst, &Job::new(), &opts).await.unwrap();
    assert_eq!(std::fs::read(dst.join("sub/f")).unwrap(), b"through the link");
}

/// A chain nested deeper than restore accepts (2048 levels; a workload can nest without end)
/// is backed up down to that depth: the directory below is an error line and left out, the
/// scan thread's recursion stays within its stack, and the snapshot restores without refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_deeper_than_restore_accepts_is_cut_with_an_error() {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    use std::os::fd::{AsFd, OwnedFd};
    const LEVELS: usize = 2048;
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"beside the chain").unwrap();
    // Two levels more than restore accepts, one mkdirat at a time (past PATH_MAX).
    let mut dir: OwnedFd = std::fs::File::open(&src).unwrap().into();
    for _ in 0..LEVELS + 2 {
        mkdirat(dir.as_fd(), "d", Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(dir.as_fd(), "d", OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
    }

    let out = backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    let e = &out.errors[0];
    assert!(e.to_string().contains("nested deeper than 2048 directories"), "{e}");
    assert_eq!(e.path.matches("/d").count(), LEVELS + 1, "the first level too deep is named: {e}");

    let dst = tmp.path().join("dst");
    let opts = RestoreOptions::default();
    // The backup worked on a view of its own: load the index a restore needs.
    let repo = restore::load_index(&repo).await.unwrap();
    let plan = restore::plan(&repo, out.snapshot.tree, &Filter::default(), &opts).await.unwrap();
    let restored = restore::execute(repo.clone(), plan, &dst, &Job::new(), &opts).await.unwrap();
    assert!(restored.errors.is_empty(), "{:?}", restored.errors);
    assert_eq!(std::fs::read(dst.join("f")).unwrap(), b"beside the chain");
    let mut dir: OwnedFd = std::fs::File::open(&dst).unwrap().into();
    let mut levels = 0;
    while let Ok(d) = openat(dir.as_fd(), "d", OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()) {
        (dir, levels) = (d, levels + 1);
    }
    assert_eq!(levels, LEVELS, "every level down to the limit is restored");
}

/// Small files whose path is longer than PATH_MAX, in directories the scan holds (the first 256
/// levels) and deeper ones it does not, are backed up: the blob workers open them by name
/// from their directory, not by absolute path. They restore with their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_past_path_max_are_backed_up() {
    past_path_max().await;
}

/// Where the scan thread cannot have a working directory of its own (`unshare` refused by a
/// seccomp filter, as in a container's default profile), it names entries through the
/// descriptors it holds (`/proc/self/fd/N/name`), not by absolute path: the deep and linked
/// tree restores identical, and files past PATH_MAX (which no absolute path reaches) are
/// backed up.
#[test]
fn without_a_working_directory_of_its_own_the_scan_names_entries_by_descriptor() {
    let name = "without_a_working_directory_of_its_own_the_scan_names_entries_by_descriptor";
    std::thread::Builder::new()
        .name(name.into())
        .spawn(|| {
            if !refuse_unshare_on_this_thread() {
                skip::skip("a seccomp filter cannot be installed here (qemu user mode refuses it)");
                return;
            }
            // The runtime's threads, and the scan thread they start, inherit the filter.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                nested_deep_and_linked().await;
                past_path_max().await;
            });
        })
        .unwrap()
        .join()
        .unwrap();
}

async fn past_path_max() {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, OwnedFd};
    const LEVELS: usize = 280;
    let name = "n".repeat(200);
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut dir: OwnedFd = std::fs::File::open(&src).unwrap().into();
    for level in 0..LEVELS {
        let f = openat(dir.as_fd(), "f", OFlag::O_CREAT | OFlag::O_WRONLY, Mode::from_bits_truncate(0o644)).unwrap();
        std::fs::File::from(f).write_all(format!("level {level}").as_bytes()).unwrap();
        mkdirat(dir.as_fd(), name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        dir = openat(dir.as_fd(), name.as_str(), OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
    }

    let out = backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();
    assert!(out.errors.is_empty(), "{} errors, the first: {:?}", out.errors.len(), out.errors.first());

    let dst = tmp.path().join("dst");
    let opts = RestoreOptions::default();
    // The backup worked on a view of its own: load the index a restore needs.
    let repo = restore::load_index(&repo).await.unwrap();
    let plan = restore::plan(&repo, out.snapshot.tree, &Filter::default(), &opts).await.unwrap();
    let restored = restore::execute(repo.clone(), plan, &dst, &Job::new(), &opts).await.unwrap();
    assert!(restored.errors.is_empty(), "{:?}", restored.errors.first());
    let mut dir: OwnedFd = std::fs::File::open(&dst).unwrap().into();
    for level in 0..LEVELS {
        let mut got = String::new();
        let f = openat(dir.as_fd(), "f", OFlag::O_RDONLY, Mode::empty()).unwrap();
        std::fs::File::from(f).read_to_string(&mut got).unwrap();
        assert_eq!(got, format!("level {level}"));
        dir = openat(dir.as_fd(), name.as_str(), OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
    }
}

/// A small file given as a source after a directory source is read from its own path, not
/// from a directory the previous source's scan left behind (which holds a file of that name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_after_a_directory_source_is_its_own_file() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let (dir, other) = (tmp.path().join("dir"), tmp.path().join("other"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(dir.join("f"), b"inside the directory source").unwrap();
    std::fs::write(other.join("f"), b"the file source").unwrap();
    let mut cfg = config(&dir, "h");
    cfg.paths.push(other.join("f"));

    let out = backup::run(repo.clone(), cfg, &Job::new()).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let dst = tmp.path().join("dst");
    let opts = RestoreOptions::default();
    // The backup worked on a view of its own: load the index a restore needs.
    let repo = restore::load_index(&repo).await.unwrap();
    let plan = restore::plan(&repo, out.snapshot.tree, &Filter::default(), &opts).await.unwrap();
    restore::execute(repo.clone(), plan, &dst, &Job::new(), &opts).await.unwrap();
    assert_eq!(std::fs::read(dst.join("f")).unwrap(), b"the file source");
    assert_eq!(std::fs::read(dst.join("dir/f")).unwrap(), b"inside the directory source");
}
