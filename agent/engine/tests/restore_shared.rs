//! Restore's content phase on a forged snapshot: one blob used by many files, and twice in one,
//! is written everywhere it goes; a segment that gives a blob the wrong length fails only the
//! file that has it (emptied and listed), never the others sharing the blob. (The content
//! phase keeps one entry per use of a blob, sorted so that a blob's uses are neighbours and it
//! is decrypted once for all of them.) And the plan's shared lists of paths and segments:
//! around a file refused for its size, a second hardlink and an empty file, every file gets its
//! own path and segments. And files whose content is one blob, which the content phase creates,
//! writes and completes in one visit: metadata, holes, hardlinks, a failed blob and a planted
//! symlink handled as for any file.
//! And a big file (64 MiB and more), whose content goes to the disk directly (`O_DIRECT`) past
//! the page cache: the same bytes, its unaligned blob ends included, and not left in the cache.

mod common;

use common::*;
use ferry_engine::Job;
use ferry_engine::restore::{self, Filter, RestoreOptions};
use repo_format::{BlobKind, Node, Segment, Tree, TreeId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_shared_by_many_files_reaches_each_and_a_wrong_length_fails_only_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo")).await;
    let (x, y) = (random_bytes("x", 50_000), random_bytes("y", 3_000));
    let ids = save(&repo, vec![(BlobKind::Data, x.clone()), (BlobKind::Data, y.clone())]).await;
    let bx = Segment::Blob { id: ids[0], len: x.len() as u32 };
    let by = Segment::Blob { id: ids[1], len: y.len() as u32 };
    let wrong = Segment::Blob { id: ids[0], len: x.len() as u32 - 1 };
    let mut nodes: Vec<Node> = (0..40).map(|i| file(&format!("f{i:02}"), vec![bx])).collect();
    nodes.push(file("twice", vec![bx, by, bx]));
    nodes.push(file("wrong", vec![by, wrong]));
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let root = TreeId(save(&repo, vec![(BlobKind::Tree, Tree { nodes }.encode().unwrap())]).await[0].0);

    repo.load_index().await.unwrap();
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    assert_eq!(plan.files.len(), 42);
    let target = dir.path().join("out");
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();

    assert_eq!(out.incomplete, 1, "{:?}", out.errors);
    assert!(!out.errors.is_empty() && out.errors.iter().all(|e| e.path.contains("wrong")), "{:?}", out.errors);
    for i in 0..40 {
        assert!(std::fs::read(target.join(format!("f{i:02}"))).unwrap() == x, "f{i:02} differs");
    }
    assert!(std::fs::read(target.join("twice")).unwrap() == [&x[..], &y, &x].concat(), "twice differs");
    assert_eq!(std::fs::metadata(target.join("wrong")).unwrap().len(), 0, "the failed file is emptied");
    // Every use was written: 40 + 2 copies of x, y in `twice` and in `wrong` (before it failed).
    assert_eq!(out.bytes_written, (42 * x.len() + 2 * y.len()) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_files_and_hardlinks_leave_the_plans_lists_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo")).await;
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(&format!("b{i}"), 1000 + 700 * i)).collect();
    let ids = save(&repo, blobs.iter().map(|b| (BlobKind::Data, b.clone())).collect()).await;
    let seg = |i: usize| Segment::Blob { id: ids[i], len: blobs[i].len() as u32 };
    let linked = |name: &str| {
        let mut n = file(name, vec![seg(1), seg(2)]);
        (n.nlink, n.dev, n.ino) = (2, 7, 42);
        n
    };
    let mut oversized = file("b-oversized", vec![seg(3), seg(0)]);
    oversized.size += 1;
    let nodes = vec![
        file("a", vec![seg(0)]),
        oversized,
        linked("c-link1"),
        linked("d-link2"),
        file("e", vec![seg(3), seg(2)]),
        file("f-empty", vec![]),
        file("g", vec![seg(2), seg(0), seg(1)]),
    ];
    let root = TreeId(save(&repo, vec![(BlobKind::Tree, Tree { nodes }.encode().unwrap())]).await[0].0);

    repo.load_index().await.unwrap();
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    let planned: Vec<(String, usize)> =
        plan.files.iter().map(|f| (f.rel.display().to_string(), f.segments.len())).collect();
    let want = [("a", 1), ("c-link1", 2), ("e", 2), ("f-empty", 0), ("g", 3)];
    assert_eq!(planned, want.map(|(n, s)| (n.to_string(), s)));
    assert_eq!(plan.hardlinks.len(), 1);
    assert_eq!(plan.rejected.len(), 1, "{:?}", plan.rejected);
    let target = dir.path().join("out");
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert_eq!(out.incomplete, 0, "{:?}", out.errors);
    let read = |n: &str| std::fs::read(target.join(n)).unwrap();
    let b = &blobs;
    assert!(read("a") == b[0]);
    assert!(read("c-link1") == [&b[1][..], &b[2]].concat() && read("d-link2") == read("c-link1"));
    assert!(read("e") == [&b[3][..], &b[2]].concat());
    assert!(read("f-empty").is_empty());
    assert!(read("g") == [&b[2][..], &b[0], &b[1]].concat());
    assert!(!target.join("b-oversized").exists());
}

/// Files whose content is one blob are created, written and completed in one visit of the
/// content phase (the skeleton leaves them out): they still get their metadata, the holes
/// around the blob, a second hardlink; one whose blob fails is left empty, listed and without
/// the snapshot's time; a symlink planted where one goes is replaced, never followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_blob_files_are_made_whole_in_one_visit() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo")).await;
    let (x, y) = (random_bytes("x", 5_000), random_bytes("y", 3_000));
    let ids = save(&repo, vec![(BlobKind::Data, x.clone()), (BlobKind::Data, y.clone())]).await;
    let bx = Segment::Blob { id: ids[0], len: x.len() as u32 };
    let by = Segment::Blob { id: ids[1], len: y.len() as u32 };
    let wrong = Segment::Blob { id: ids[1], len: y.len() as u32 - 1 };
    let me = std::fs::metadata(dir.path()).unwrap();
    let mtime = 1_500_000_000_123_456_789i64;
    let node = |name: &str, segs: Vec<Segment>| {
        let mut n = file(name, segs);
        (n.uid, n.gid, n.mode, n.mtime_ns, n.atime_ns) = (me.uid(), me.gid(), 0o640, mtime, mtime);
        n
    };
    let linked = |name: &str| {
        let mut n = node(name, vec![bx]);
        (n.nlink, n.dev, n.ino) = (2, 7, 42);
        n
    };
    let nodes = vec![
        node("a-plain", vec![bx]),
        node("b-holes", vec![Segment::Zero { len: 4096 }, by, Segment::Zero { len: 100 }]),
        linked("c-link1"),
        linked("d-link2"),
        node("e-bad", vec![wrong]),
        node("f-planted", vec![by]),
    ];
    let root = TreeId(save(&repo, vec![(BlobKind::Tree, Tree { nodes }.encode().unwrap())]).await[0].0);
    let target = dir.path().join("out");
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"keep").unwrap();
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("f-planted")).unwrap();

    repo.load_index().await.unwrap();
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    assert_eq!(plan.files.iter().filter(|f| f.is_one_blob()).count(), 5);
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();

    assert_eq!(out.incomplete, 1, "{:?}", out.errors);
    assert!(out.errors.iter().all(|e| e.path.contains("e-bad")), "{:?}", out.errors);
    assert_eq!(out.files, 5, "a, b, c, its link d and f; e is incomplete");
    let md = |n: &str| std::fs::symlink_metadata(target.join(n)).unwrap();
    let read = |n: &str| std::fs::read(target.join(n)).unwrap();
    for n in ["a-plain", "b-holes", "c-link1", "f-planted"] {
        let m = md(n);
        assert!(m.is_file(), "{n} is not a regular file");
        assert_eq!(m.permissions().mode() & 0o7777, 0o640, "{n}'s mode");
        assert_eq!((m.mtime(), m.mtime_nsec()), (mtime / 1_000_000_000, mtime % 1_000_000_000), "{n}'s mtime");
    }
    assert!(read("a-plain") == x && read("c-link1") == x);
    assert_eq!(md("d-link2").ino(), md("c-link1").ino(), "d-link2 is a hardlink of c-link1");
    assert!(read("b-holes") == [&[0u8; 4096][..], &y, &[0u8; 100]].concat(), "b-holes differs");
    assert!(read("f-planted") == y, "f-planted differs");
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep", "the planted symlink was followed");
    assert_eq!(md("e-bad").len(), 0, "the failed file is left empty");
    assert_ne!(md("e-bad").mtime(), mtime / 1_000_000_000, "the failed file got the snapshot's time");
}

/// A snapshot of one file `big` of 70 MiB and more, written directly on restore: blobs of
/// unaligned lengths, each used many times, and holes, so no blob starts on a page. Its root
/// and the file's bytes.
async fn big_file_snapshot(repo: &repo_format::Repository) -> (TreeId, Vec<u8>) {
    let (big, small) = (random_bytes("big", 1_000_003), random_bytes("small", 777));
    let ids = save(repo, vec![(BlobKind::Data, big.clone()), (BlobKind::Data, small.clone())]).await;
    let (bb, bs) = (Segment::Blob { id: ids[0], len: big.len() as u32 }, Segment::Blob { id: ids[1], len: 777 });
    let mut segs = Vec::new();
    let mut want = Vec::new();
    for i in 0..70 {
        segs.extend([bb, bs]);
        want.extend_from_slice(&big);
        want.extend_from_slice(&small);
        if i % 10 == 3 {
            segs.push(Segment::Zero { len: 5000 });
            want.resize(want.len() + 5000, 0);
        }
    }
    assert!(want.len() >= 64 << 20, "big enough to be written directly");
    let root = TreeId(
        save(repo, vec![(BlobKind::Tree, Tree { nodes: vec![file("big", segs)] }.encode().unwrap())]).await[0].0,
    );
    (root, want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_is_written_past_the_page_cache_with_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo")).await;
    let (root, want) = big_file_snapshot(&repo).await;
    repo.load_index().await.unwrap();
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    let target = dir.path().join("out");
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let path = target.join("big");
    // Written directly, the file is not in the page cache, but for its blobs' partial pages (at
    // most two per use: 140 uses, 1.1 MiB). Asked before it is read back.
    let resident =
        std::process::Command::new("fincore").args(["--bytes", "--noheadings", "--output", "RES"]).arg(&path).output();
    match resident {
        Ok(o) if o.status.success() => {
            let res: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
            assert!(res < 8 << 20, "{res} bytes of a {} byte file restored directly are in the page cache", want.len());
        }
        _ => repo_format::testing::skip("fincore (util-linux) is not here to tell what is cached"),
    }
    assert!(std::fs::read(&path).unwrap() == want, "the restored file differs");
}

/// The big file's writes fail (its file system, a 16 MiB tmpfs, fills up; they are made by the
/// direct writer thread): the restore lists the file as incomplete with the error, and leaves it
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_whose_writes_fail_is_listed_incomplete_and_left_empty() {
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("repo")).await;
    let (root, _) = big_file_snapshot(&repo).await;
    let target = dir.path().join("out");
    std::fs::create_dir(&target).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return repo_format::testing::skip("mounting a tmpfs needs root");
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            repo_format::testing::unmount(self.0);
        }
    }
    let _unmount = Unmount(&target);

    repo.load_index().await.unwrap();
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert_eq!(out.incomplete, 1, "{:?}", out.errors);
    assert!(
        out.errors.iter().any(|e| e.path.contains("big") && e.to_string().contains("No space left")),
        "{:?}",
        out.errors
    );
    assert_eq!(std::fs::metadata(target.join("big")).unwrap().len(), 0, "the failed file is left empty");
    // Bytes handed to the direct writer but never written are not reported as written.
    assert!(out.bytes_written <= 16 << 20, "{} bytes reported written into 16 MiB", out.bytes_written);
}
