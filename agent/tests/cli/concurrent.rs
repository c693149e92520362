//! Two backup processes writing into one repository at the same time.

use std::path::Path;
use std::process::Stdio;

use crate::common::{Env, compare_trees, num, random_bytes, summary_of, write};

/// About 20 MB: two files shared by both trees (identical bytes), three unique large files and
/// a couple of hundred small ones.
fn build(root: &Path, tag: &str) -> u64 {
    let mut total = 0;
    let mut put = |rel: String, data: Vec<u8>| {
        total += data.len() as u64;
        write(&root.join(rel), &data);
    };
    put("shared/a.bin".into(), random_bytes("shared-a", 4 << 20));
    put("shared/b.bin".into(), random_bytes("shared-b", 2 << 20));
    for i in 0..3 {
        put(format!("big-{i}.bin"), random_bytes(&format!("{tag}-big-{i}"), 4 << 20));
    }
    for i in 0..200 {
        put(format!("small/{}/f{i:03}", i % 7), random_bytes(&format!("{tag}-small-{i}"), 500 + i * 37));
    }
    total
}

#[test]
fn two_processes_back_up_concurrently() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let (src1, src2) = (env.path("src1"), env.path("src2"));
    let total1 = build(&src1, "one");
    let total2 = build(&src2, "two");
    // Create the shared files cache first: two processes creating it at once is a known bug
    // (see `first_use_of_a_shared_files_cache`). The warm-up snapshot has another host.
    let warmup = env.path("warmup");
    write(&warmup.join("f"), b"warm-up");
    env.backup(&warmup, &["--host", "warmup"]);

    // Both started before either is waited for.
    let spawn = |src: &Path| {
        env.ferry_std()
            .args(["backup", "--json", "--host", "e2e"])
            .arg(src)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(&src1), spawn(&src2));
    let (o1, o2) = (p1.wait_with_output().unwrap(), p2.wait_with_output().unwrap());
    assert_eq!(o1.status.code(), Some(0), "backup 1: {}", String::from_utf8_lossy(&o1.stderr));
    assert_eq!(o2.status.code(), Some(0), "backup 2: {}", String::from_utf8_lossy(&o2.stderr));
    let (s1, s2) = (summary_of(&o1.stdout), summary_of(&o2.stdout));
    assert_eq!(num(&s1, "bytes_total"), total1);
    assert_eq!(num(&s2, "bytes_total"), total2);
    assert_eq!(num(&s1, "errors") + num(&s2, "errors"), 0);
    assert_ne!(s1["snapshot_id"], s2["snapshot_id"]);

    let out = env.ferry().args(["snapshots", "--json", "--host", "e2e"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    for s in [&s1, &s2] {
        assert!(snaps.iter().any(|x| x["id"] == s["snapshot_id"]), "{} missing", s["snapshot_id"]);
    }

    // Each snapshot restores to its own source.
    for (i, (src, s)) in [(&src1, &s1), (&src2, &s2)].into_iter().enumerate() {
        let target = env.path(&format!("restore{i}"));
        let out = env.restore(s["snapshot_id"].as_str().unwrap(), &target, &["--verify"]);
        assert_eq!(out.status.code(), Some(0), "restore {i}: {}", crate::common::stderr(&out));
        let diffs = compare_trees(src, &target);
        assert!(diffs.is_empty(), "restore {i} differs: {diffs:#?}");
    }

    // Both processes' index entries are in the repository: re-reading everything adds no data.
    for src in [&src1, &src2] {
        let s = env.backup(src, &["--force", "--host", "e2e"]);
        assert_eq!(num(&s, "data_blobs_added"), 0, "{s}");
    }
}

/// Two first backups sharing a new cache directory (the usual case: one user, one machine).
/// Ferry bug: one of them sometimes fails with "preparing the files cache …: database is
/// locked" (exit 1): `filescache::connect` runs `PRAGMA journal_mode=WAL` while the other
/// process creates the database, and SQLite does not apply the busy timeout there.
#[test]
fn first_use_of_a_shared_files_cache() {
    if crate::common::under_qemu() {
        return;
    }
    let mut failures = Vec::new();
    for i in 0..50 {
        let env = Env::new();
        let (a, b) = (env.path("a"), env.path("b"));
        write(&a.join("f"), format!("a{i}").as_bytes());
        write(&b.join("f"), format!("b{i}").as_bytes());
        let spawn =
            |src: &Path| env.ferry_std().args(["backup", "-q"]).arg(src).stderr(Stdio::piped()).spawn().unwrap();
        let (p1, p2) = (spawn(&a), spawn(&b));
        for o in [p1.wait_with_output().unwrap(), p2.wait_with_output().unwrap()] {
            if o.status.code() != Some(0) {
                failures.push(format!("round {i}: {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr)));
            }
        }
    }
    assert!(failures.is_empty(), "{} of 100 backups failed:\n{}", failures.len(), failures.join(""));
}

/// The soft limit on open descriptors is raised to the hard one at start: a scan holds one per
/// directory level entered, so several jobs at once over deeply nested volumes would run out at
/// the usual 1024 (and fall back to absolute paths, which a racing workload can redirect).
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let out = std::process::Command::new("prlimit")
        .arg("--nofile=64:4096")
        .arg("--")
        .arg(crate::common::ferry_bin())
        .args(["-vv", "version"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("open files limit 4096"), "{err}");
}
