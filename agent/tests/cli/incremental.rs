//! The files cache: a second backup reads only what changed; `--force` reads everything.

use std::time::Duration;

use crate::common::{Env, compare_trees, num, random_bytes, write};

/// Files whose mtime or ctime is within ~2 s of the backup's start are not cached.
const SETTLE: Duration = Duration::from_millis(2500);

#[test]
fn incremental_reads_only_the_changed_file() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    let mut total = 0u64;
    for i in 0..50 {
        let len = 1000 + i * 733;
        let rel = if i % 5 == 0 { format!("sub-{}/file-{i:02}", i / 10) } else { format!("file-{i:02}") };
        write(&src.join(rel), &random_bytes(&format!("inc-{i}"), len));
        total += len as u64;
    }
    std::thread::sleep(SETTLE);

    let s1 = env.backup(&src, &[]);
    assert_eq!((num(&s1, "files_new"), num(&s1, "files_changed"), num(&s1, "files_unchanged")), (50, 0, 0), "{s1}");
    assert_eq!(num(&s1, "bytes_read"), total, "{s1}");
    assert_eq!(num(&s1, "bytes_total"), total, "{s1}");
    assert!(s1["parent"].is_null(), "{s1}");

    // Change one file's content and size.
    let changed = src.join("file-17");
    let new_content = random_bytes("changed", 4321);
    total = total - std::fs::metadata(&changed).unwrap().len() + new_content.len() as u64;
    std::fs::write(&changed, &new_content).unwrap();
    std::thread::sleep(SETTLE);

    let s2 = env.backup(&src, &[]);
    assert_eq!((num(&s2, "files_new"), num(&s2, "files_changed"), num(&s2, "files_unchanged")), (0, 1, 49), "{s2}");
    assert_eq!(num(&s2, "bytes_read"), new_content.len() as u64, "{s2}");
    assert_eq!(num(&s2, "bytes_total"), total, "{s2}");
    assert_eq!(s2["parent"], s1["snapshot_id"], "the first snapshot is the parent");
    assert!(num(&s2, "data_blobs_added") >= 1, "{s2}");

    // Same size, new content, and a backdated mtime: ctime still tells.
    let same_size = src.join("sub-2/file-20");
    let before = std::fs::metadata(&same_size).unwrap();
    let mtime_before = crate::common::mtime_ns(&same_size);
    let mut content = std::fs::read(&same_size).unwrap();
    content[0] ^= 0xff;
    std::fs::write(&same_size, &content).unwrap();
    crate::common::set_mtime(&same_size, mtime_before);
    assert_eq!(std::fs::metadata(&same_size).unwrap().len(), before.len());
    std::thread::sleep(SETTLE);
    let s3 = env.backup(&src, &[]);
    assert_eq!((num(&s3, "files_new"), num(&s3, "files_changed"), num(&s3, "files_unchanged")), (0, 1, 49), "{s3}");
    assert_eq!(num(&s3, "bytes_read"), content.len() as u64, "{s3}");

    // --force reads every byte again (and adds no data: all deduplicated).
    let s4 = env.backup(&src, &["--force"]);
    assert_eq!(num(&s4, "bytes_read"), total, "{s4}");
    assert_eq!(num(&s4, "files_unchanged"), 0, "{s4}");
    assert_eq!(num(&s4, "files_new") + num(&s4, "files_changed"), 50, "{s4}");
    assert_eq!(num(&s4, "data_blobs_added"), 0, "{s4}");

    // The last snapshot restores to the current source.
    let target = env.path("target");
    let out = env.restore("latest", &target, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::common::stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// Regression: the files cache was one database per repository with one generation counter, so
/// with four or more volumes backing up in turn into one repository, each volume's entries were
/// evicted before its next backup and every file was read again. Now each source set has its own.
#[test]
fn eight_volumes_in_turn_each_reread_only_their_changed_file() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let vols: Vec<_> = (0..8).map(|v| env.path(&format!("vol-{v}"))).collect();
    for (v, dir) in vols.iter().enumerate() {
        for i in 0..10 {
            write(&dir.join(format!("f{i}")), &random_bytes(&format!("vol-{v}-{i}"), 3000 + i));
        }
    }
    std::thread::sleep(SETTLE);
    for dir in &vols {
        let s = env.backup(dir, &[]);
        assert_eq!(num(&s, "files_new"), 10, "{s}");
    }
    for (v, dir) in vols.iter().enumerate() {
        std::fs::write(dir.join("f3"), random_bytes(&format!("changed-{v}"), 777)).unwrap();
    }
    std::thread::sleep(SETTLE);
    for dir in &vols {
        let s = env.backup(dir, &[]);
        assert_eq!((num(&s, "files_changed"), num(&s, "files_unchanged")), (1, 9), "{}: {s}", dir.display());
        assert_eq!(num(&s, "bytes_read"), 777, "{}: {s}", dir.display());
    }
}

/// A file of 80 MiB chunked by several threads (`FERRY_PARALLEL_CHUNKING=1`: by default only
/// with 4 or more workers) and the same file chunked on one thread (`=0`, read again with
/// `--force`) give the same chunks: nothing new is stored, not a blob nor a tree.
#[test]
fn parallel_chunking_cuts_a_big_file_where_one_thread_does() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    // Random data with runs of zeros and of text between, so that cuts come from every branch
    // of the chunker (candidates, the maximum size, long runs without candidates).
    let mut data = Vec::with_capacity(80 << 20);
    for i in 0..40 {
        data.extend_from_slice(&random_bytes(&format!("big-{i}"), 1 << 20));
        match i % 3 {
            0 => data.resize(data.len() + (1 << 20), 0),
            1 => data.extend_from_slice(&b"ferry chunks a big file in parallel\n".repeat(29_128)),
            _ => data.extend_from_slice(&random_bytes(&format!("more-{i}"), 1 << 20)),
        }
    }
    write(&src.join("big.img"), &data);
    let out =
        env.ferry().env("FERRY_PARALLEL_CHUNKING", "1").args(["-vv", "backup", "--json"]).arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let said = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).contains("a big file chunked by");
    assert!(said(&out), "not chunked in parallel: {}", String::from_utf8_lossy(&out.stderr));
    let parallel = crate::common::summary_of(&out.stdout);
    assert!(num(&parallel, "data_blobs_added") > 40, "{parallel}");
    let out = env
        .ferry()
        .env("FERRY_PARALLEL_CHUNKING", "0")
        .args(["-vv", "backup", "--json", "--force"])
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!said(&out), "chunked in parallel with FERRY_PARALLEL_CHUNKING=0");
    let serial = crate::common::summary_of(&out.stdout);
    assert_eq!(num(&serial, "bytes_read"), data.len() as u64, "{serial}");
    assert_eq!((num(&serial, "data_blobs_added"), num(&serial, "tree_blobs_added")), (0, 0), "{serial}");
}

/// A backup that knows stored data blobs by key only (`FERRY_INDEX_KEYS=1`; by default only
/// from an index of 16 MiB) stores exactly what one that knows their whole entries stores:
/// nothing for files read again, one blob for a new file; and the snapshot restores.
#[test]
fn a_backup_knowing_blobs_by_key_stores_what_one_knowing_them_whole_does() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..10 {
        write(&src.join(format!("f{i}")), &random_bytes(&format!("keys-{i}"), 30_000));
    }
    let backup = |keys: &str, force: bool| {
        let mut cmd = env.ferry();
        cmd.env("FERRY_INDEX_KEYS", keys).args(["-v", "backup", "--json"]);
        if force {
            cmd.arg("--force");
        }
        let out = cmd.arg(&src).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        (crate::common::summary_of(&out.stdout), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (whole, log) = backup("0", false);
    assert!(log.contains(", 0 of them data blobs by key only"), "{log}");
    assert_eq!(num(&whole, "data_blobs_added"), 10, "{whole}");
    let (again, log) = backup("1", true);
    assert!(!log.contains(", 0 of them data blobs by key only"), "the keys were not used: {log}");
    assert_eq!(num(&again, "bytes_read"), 300_000, "{again}");
    assert_eq!((num(&again, "data_blobs_added"), num(&again, "tree_blobs_added")), (0, 0), "{again}");
    write(&src.join("new"), &random_bytes("keys-new", 30_000));
    let (one, _) = backup("1", false);
    assert_eq!(num(&one, "data_blobs_added"), 1, "{one}");
    let target = env.path("out");
    let out = env.ferry().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        assert_eq!(std::fs::read(target.join(e.file_name())).unwrap(), std::fs::read(e.path()).unwrap());
    }
}
