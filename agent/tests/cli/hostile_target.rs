//! A hostile restore target or volume (a workload writing its own volume while Ferry restores
//! or backs it up as root) and a storage that goes back (deleted snapshots, replayed key
//! files): nothing outside the target changes, nothing of the workload's becomes root's, and
//! what can only be detected is detected and said.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use repo_format::NodeType;

use crate::common::forge::{Forge, T0, special};
use crate::common::{Env, stderr};

/// Swap every name of `names` in `target`, over and over until `stop`, for a symlink to
/// `victim` or a hardlink to `own` (the racer's own program). Returns the swaps made.
fn racer(target: PathBuf, names: Vec<String>, victim: PathBuf, own: PathBuf, stop: Arc<AtomicBool>) -> u64 {
    let mut swaps = 0u64;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if !target.exists() {
            std::thread::yield_now();
            continue;
        }
        for name in &names {
            i += 1;
            let tmp = target.join(format!(".racer{}", i % 64));
            let _ = std::fs::remove_file(&tmp);
            let made =
                if i % 2 == 0 { std::os::unix::fs::symlink(&victim, &tmp) } else { std::fs::hard_link(&own, &tmp) };
            if made.is_ok() && std::fs::rename(&tmp, target.join(name)).is_ok() {
                swaps += 1;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    swaps
}

/// Regression: metadata (owner, mode, xattrs, times) was applied by path after the content
/// phase, so a process in the target that swapped an entry for a symlink got a chmod of a
/// root-owned file outside the target, or for a hardlink to its own program got that program
/// made setuid root. Every step now re-opens without following and checks the identity of what
/// the restore created. The racer must lose every time.
#[test]
fn a_racer_in_the_target_never_gets_metadata_applied_to_its_files_or_outside() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let f = Forge::init(&env);
    let mut nodes = Vec::new();
    let mut names = Vec::new();
    for i in 0..300 {
        let name = format!("f{i:03}");
        let mut n = f.file(name.as_bytes(), format!("content {i}").as_bytes());
        n.mode = 0o4755; // setuid root: what a racer would love to get on its own program
        names.push(name);
        nodes.push(n);
    }
    for i in 0..100 {
        let name = format!("p{i:03}");
        nodes.push(special(name.as_bytes(), NodeType::Fifo, 0o666, 0));
        names.push(name);
    }
    let root = f.tree(nodes);
    f.snapshot(root, T0, "race");

    let victim = env.path("outside/victim");
    crate::common::write(&victim, b"secret");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let own = env.path("racer-bin");
    crate::common::write(&own, b"#!/bin/sh\necho racer\n");
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(1000)), Some(nix::unistd::Gid::from_raw(1000))).unwrap();

    let total_swaps = AtomicU64::new(0);
    let mut partial = 0;
    for round in 0..12 {
        let target = env.path(&format!("t{round}"));
        let stop = Arc::new(AtomicBool::new(false));
        let h = {
            let (t, n, v, o, s) = (target.clone(), names.clone(), victim.clone(), own.clone(), stop.clone());
            std::thread::spawn(move || racer(t, n, v, o, s))
        };
        let out = env.restore("latest", &target, &["--keep-setuid"]);
        stop.store(true, Ordering::Relaxed);
        total_swaps.fetch_add(h.join().unwrap(), Ordering::Relaxed);
        let err = stderr(&out);
        assert!(matches!(out.status.code(), Some(0) | Some(3)), "{err}");
        if out.status.code() == Some(3) {
            partial += 1;
            assert!(
                err.contains("was replaced by something else during the restore") || err.contains("in the way"),
                "{err}"
            );
        }
        let v = std::fs::metadata(&victim).unwrap();
        assert_eq!(v.permissions().mode() & 0o7777, 0o600, "round {round}: the file outside the target was chmodded");
        assert_eq!((v.uid(), v.gid()), (0, 0));
        assert_eq!(std::fs::read(&victim).unwrap(), b"secret");
        let o = std::fs::metadata(&own).unwrap();
        assert_eq!(o.permissions().mode() & 0o7777, 0o755, "round {round}: the racer's program was made setuid");
        assert_eq!((o.uid(), o.gid()), (1000, 1000), "round {round}: the racer's program was given to root");
    }
    let swaps = total_swaps.load(Ordering::Relaxed);
    eprintln!("racer: {swaps} swaps over 12 restores, {partial} restores reported swapped entries");
    assert!(swaps > 0, "the racer never got to swap anything: the test proves nothing");
}

#[test]
fn backup_of_a_pod_volume_never_follows_a_planted_disk_img_symlink() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: `backup --pod-volume` followed a `disk.img` symlink planted by the workload and
    // backed up any file of the node as root.
    let env = Env::new();
    let secret = env.path("node-secret");
    crate::common::write(&secret, b"node's private key");
    let mount = env.path("pods/uid-1/volumes/kubernetes.io~csi/pv-vm/mount");
    std::fs::create_dir_all(&mount).unwrap();
    std::os::unix::fs::symlink(&secret, mount.join("disk.img")).unwrap();
    let out = env.ferry().args(["backup", "--pod-volume"]).arg(env.path("pods/uid-1/pv-vm")).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("disk.img is a symlink"), "{err}");
    let out = env.ferry().args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "nothing was backed up");
}

fn modes_below(root: &Path) -> Vec<(PathBuf, u32)> {
    crate::common::list_tree(root)
        .into_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(root.join(&p)).unwrap().permissions().mode();
            (p, m)
        })
        .collect()
}

#[test]
fn the_cache_is_private() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: the files cache (plaintext paths of every file backed up) and the cache folders
    // were world-readable.
    let env = Env::new();
    let src = env.path("src");
    crate::common::write(&src.join("secret-name.txt"), b"x");
    env.backup(&src, &[]);
    env.backup(&src, &[]);
    let all = modes_below(&env.cache);
    assert!(all.iter().any(|(p, _)| p.extension().is_some_and(|e| e == "sqlite")), "a files cache: {all:?}");
    let open: Vec<_> = all.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
}

#[test]
fn a_removed_key_file_put_back_does_not_unlock() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let keys = |env: &Env| -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(env.repo.join("keys")).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    let before = keys(&env);
    let out = env.ferry().env("FERRY_NEW_PASSWORD", "revoked password").args(["key", "add"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let added: Vec<_> = keys(&env).into_iter().filter(|k| !before.contains(k)).collect();
    let [added] = added.as_slice() else { panic!("one key added: {added:?}") };
    let bytes = std::fs::read(added).unwrap();
    let id = added.file_name().unwrap().to_string_lossy().into_owned();
    let out = env.ferry().args(["key", "remove", &id[..8]]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.ferry().args(["snapshots"]).output().unwrap().status.code(), Some(0));
    // The storage puts the revoked key file back.
    std::fs::write(added, &bytes).unwrap();
    let out = env.ferry_pw("revoked password").args(["snapshots"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(12), "the revoked password must not unlock: {err}");
    assert!(err.contains("removed from the repository and reappeared"), "{err}");
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(err.contains(&format!("key file {} was removed from this repository and is back", &id[..8])), "{err}");
}

#[test]
fn a_deleted_newest_snapshot_is_noticed() {
    if crate::common::under_qemu() {
        return;
    }
    // Before: deleting snapshot objects silently rolled `latest` back.
    let env = Env::new();
    let src = env.path("src");
    crate::common::write(&src.join("f"), b"one");
    env.backup(&src, &[]);
    crate::common::write(&src.join("f"), b"two, newer");
    let s2 = env.backup(&src, &[]);
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    assert!(!stderr(&out).contains("rolled back"));
    let newest = s2["snapshot_id"].as_str().unwrap().to_string();
    std::fs::remove_file(env.repo.join("snapshots").join(&newest)).unwrap();
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(err.contains(&newest[..8]) && err.contains("may have been rolled back"), "{err}");

    // The repository deleted and initialized again at the same place: its snapshots are not the
    // old one's, so nothing looks rolled back (before: the old newest was warned about for ever).
    std::fs::remove_dir_all(&env.repo).unwrap();
    let out = env.ferry().args(["init", "--kdf-memory", "64", "--kdf-iterations", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.ferry().args(["backup", "--json"]).arg(&src).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("another repository") && !err.contains("rolled back"), "{err}");
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(!err.contains("rolled back") && !err.contains("another repository"), "said again: {err}");
}
