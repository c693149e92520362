//! The one-second rule of the files cache (README: "Files changed in the second before the
//! backup starts are always re-read next time"). The code (`backup/scan.rs`) records a file in
//! the cache only when its mtime and its ctime are both more than 1 s before the backup's start
//! (the snapshot's time); otherwise the next backup reads it again even if its path, device,
//! inode, size, mtime and ctime all match.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::devices::Ext4;
use crate::common::{Env, num, random_bytes, set_mtime, stderr, write};

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn ctime_ns(p: &Path) -> i64 {
    let md = std::fs::symlink_metadata(p).unwrap();
    md.ctime() * 1_000_000_000 + md.ctime_nsec()
}

/// The time (ns) recorded in snapshot `id`: the backup's start.
fn snapshot_time(env: &Env, id: &serde_json::Value) -> i64 {
    let out = env.ferry().args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = v.as_array().unwrap().iter().find(|s| s["id"] == *id).expect("the snapshot is listed");
    s["time_ns"].as_i64().unwrap()
}

/// (files read again, files trusted to the cache, bytes read) of a backup summary.
fn counts(s: &serde_json::Value) -> (u64, u64, u64) {
    (num(s, "files_new") + num(s, "files_changed"), num(s, "files_unchanged"), num(s, "bytes_read"))
}

fn sleep_until(ns: i64) {
    let now = now_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos((ns - now) as u64));
    }
}

#[test]
fn files_changed_within_a_second_of_the_backup_start_are_read_again() {
    if crate::common::under_qemu() {
        return;
    }
    // The backup must start less than 1 s after `fresh` is written; on a loaded machine opening
    // the repository may take longer, so try a few times (each attempt is checked, not assumed).
    for attempt in 1..=5 {
        let env = Env::new();
        let src = env.path("src");
        for i in 0..5 {
            write(&src.join(format!("old-{i}")), &random_bytes(&format!("old-{i}"), 10_000 + i));
        }
        // A file whose mtime is in the future (clock skew): never trusted, whatever its ctime.
        let future = src.join("future");
        write(&future, &random_bytes("future", 7_000));
        set_mtime(&future, now_ns() + 3_600_000_000_000);
        std::thread::sleep(Duration::from_millis(1500));

        let fresh = src.join("fresh");
        write(&fresh, &random_bytes("fresh", 5_000));
        let fresh_ctime = ctime_ns(&fresh);
        let s1 = env.backup(&src, &[]);
        let t1 = snapshot_time(&env, &s1["snapshot_id"]);
        assert!(t1 > fresh_ctime, "the backup started after the write");
        if t1 - fresh_ctime >= 900_000_000 {
            eprintln!(
                "attempt {attempt}: the backup started {} ms after the write; again",
                (t1 - fresh_ctime) / 1_000_000
            );
            continue;
        }
        assert_eq!(counts(&s1), (7, 0, 5 * 10_000 + 10 + 7_000 + 5_000), "{s1}");

        // Nothing changed since, and every stat field matches: the old files are cache hits,
        // `fresh` (changed in the second before the first backup) and `future` are read again.
        sleep_until(fresh_ctime + 1_200_000_000);
        let s2 = env.backup(&src, &[]);
        assert_eq!(counts(&s2), (2, 5, 7_000 + 5_000), "{s2}");
        assert_eq!(num(&s2, "data_blobs_added"), 0, "re-reading stores nothing new: {s2}");
        // The second backup started more than 1 s after `fresh` changed: now it is trusted.
        assert!(snapshot_time(&env, &s2["snapshot_id"]) - fresh_ctime > 1_000_000_000);
        let s3 = env.backup(&src, &[]);
        assert_eq!(counts(&s3), (1, 6, 7_000), "only the future-dated file is read: {s3}");
        return;
    }
    panic!("in 5 attempts no backup started within 0.9 s of writing the file: the machine is too slow");
}

/// The defect the rule prevents: on a file system with one-second timestamps (ext4 with 128-byte
/// inodes), a file rewritten with the same size in the same second as the backup that read it
/// keeps its mtime and ctime; had that backup cached it, the next backup would take the old
/// content from the cache and the new content would never be saved.
#[test]
fn same_second_rewrite_on_coarse_timestamps_is_not_lost() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let fs = Ext4::new(&env.path("coarse.img"), &env.path("coarse"), 64 << 20, &["-I", "128"]);
    let src = fs.mnt.join("src");
    std::fs::create_dir(&src).unwrap();
    let f = src.join("f");
    let (old, new) = (random_bytes("old", 50_000), random_bytes("new", 50_000));
    for attempt in 1..=10 {
        // Start right after a second boundary so that write, backup and rewrite share a second.
        let ns = now_ns();
        sleep_until(ns - ns % 1_000_000_000 + 1_000_000_000 + 20_000_000);
        std::fs::write(&f, &old).unwrap();
        let before = std::fs::metadata(&f).unwrap();
        assert_eq!(before.mtime_nsec(), 0, "the file system must have one-second timestamps");
        let s1 = env.backup(&src, &[]);
        std::fs::write(&f, &new).unwrap();
        let after = std::fs::metadata(&f).unwrap();
        let same = (before.ino(), before.size(), before.mtime(), before.ctime())
            == (after.ino(), after.size(), after.mtime(), after.ctime());
        if !same {
            eprintln!("attempt {attempt}: the rewrite fell in the next second; again");
            continue;
        }
        assert_eq!(num(&s1, "bytes_read"), 50_000, "{s1}");
        let s2 = env.backup(&src, &[]);
        assert_eq!(num(&s2, "files_unchanged"), 0, "the rewritten file must be read again: {s2}");
        assert_eq!(num(&s2, "bytes_read"), 50_000, "{s2}");
        let target = env.path("target");
        let out = env.restore("latest", &target, &["--verify"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(std::fs::read(target.join("f")).unwrap() == new, "the snapshot holds the old content");
        return;
    }
    panic!("in 10 attempts the backup never fit within one second");
}
