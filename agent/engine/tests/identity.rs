//! Volume identity: the parent is found by what a volume is, not where it was mounted, and
//! only changed files are read again — from another node (another host name, mount path,
//! device and files cache), and with many volumes sharing one repository and one cache.

mod common;

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ferry_engine::identity::Identity;
use ferry_engine::{Job, backup};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over `img`, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &Path) -> Loop {
        Loop(sh(Command::new("losetup").args(["-f", "--show"]).arg(img)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// `dev` mounted at `dir`, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(dev: &str, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        sh(Command::new("mount").arg(dev).arg(dir));
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        repo_format::testing::unmount(&self.0);
    }
}

fn can_mount() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("losetup").arg("--version").output().is_ok()
        && Command::new("mkfs.ext4").arg("-V").output().is_ok()
}

fn cfg(path: &Path, host: &str, id: &Identity, cache: Option<&Path>) -> backup::BackupConfig {
    let mut c = config(path, host);
    c.identity = Some(id.clone());
    c.requester = Some("test".into());
    c.cache_dir = cache.map(Path::to_path_buf);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_volume_from_another_node_finds_its_parent_and_reads_only_changed_files() {
    if !can_mount() {
        return skip::skip("needs root, losetup and mkfs.ext4");
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let img = tmp.path().join("volume.img");
    std::fs::File::create(&img).unwrap().set_len(96 << 20).unwrap();
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    let id = Identity::pvc("shop", "data").unwrap();

    // Node A: the volume at node A's kubelet path, through one loop device.
    let loop_a = Loop::attach(&img);
    let mount_a = tmp.path().join("node-a/pods/uid-1/volumes/kubernetes.io~csi/pv-1/mount");
    let first = {
        let _m = Mount::new(&loop_a.0, &mount_a);
        random_tree(&mount_a.join("files"), 20, 256 << 10);
        // Older than the backup's one-second window, so the files cache may keep them.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        backup::run(repo.clone(), cfg(&mount_a, "node-a", &id, Some(&tmp.path().join("cache-a"))), &Job::new())
            .await
            .unwrap()
    };
    assert_eq!(first.snapshot.summary.files_new, 20);

    // Node B: another loop device (another st_dev), another path, another pod, an empty cache.
    let loop_b = Loop::attach(&img);
    let mount_b = tmp.path().join("node-b/pods/uid-2/volumes/kubernetes.io~csi/pv-1/mount");
    let _m = Mount::new(&loop_b.0, &mount_b);
    assert_ne!(
        std::fs::metadata(mount_a.parent().unwrap()).ok().map(|m| std::os::unix::fs::MetadataExt::dev(&m)),
        Some(std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&mount_b).unwrap())),
    );
    // Once with no files cache at all, once with node B's own (empty) one: each time one file
    // changed since the parent.
    let mut parent = first.snapshot_id;
    for (n, cache) in [None, Some(tmp.path().join("cache-b"))].into_iter().enumerate() {
        std::fs::write(mount_b.join(format!("files/f000{n}")), vec![7u8; 300_000 + n]).unwrap();
        // Out of the same-second window of this backup, so the next one may trust it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out = backup::run(repo.clone(), cfg(&mount_b, "node-b", &id, cache.as_deref()), &Job::new()).await.unwrap();
        let s = &out.snapshot.summary;
        assert_eq!(out.snapshot.parent, Some(parent), "the parent is found by identity");
        assert_eq!((s.files_changed + s.files_new, s.files_unchanged), (1, 19), "cache {cache:?}: {s:?}");
        assert_eq!(s.bytes_read, 300_000 + n as u64, "only the changed file is read (cache {cache:?})");
        assert_eq!(Identity::of(&out.snapshot), Some("pvc/shop/data"));
        assert!(out.snapshot.tags.contains(&("requester".into(), "test".into())));
        // The report a status would carry.
        let report = serde_json::to_value(out.report()).unwrap();
        assert_eq!(
            (report["identity"].as_str(), report["files_unchanged"].as_u64()),
            (Some("pvc/shop/data"), Some(19))
        );
        parent = out.snapshot_id;
    }
    // Without an identity, a node that never backed it up has no parent and reads everything.
    let plain = backup::run(repo.clone(), config(&mount_b, "node-c"), &Job::new()).await.unwrap();
    assert_eq!(plain.snapshot.parent, None);
    assert_eq!(plain.snapshot.summary.files_new, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_volumes_in_turn_each_reread_only_their_changed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let cache = tmp.path().join("cache");
    let vols: Vec<PathBuf> = (0..8).map(|v| random_tree(&tmp.path().join(format!("v{v}")), 6, 64 << 10)).collect();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ids: Vec<Identity> = (0..8).map(|v| Identity::pvc("ns", &format!("pvc-{v}")).unwrap()).collect();
    for (v, id) in vols.iter().zip(&ids) {
        backup::run(repo.clone(), cfg(v, "node", id, Some(&cache)), &Job::new()).await.unwrap();
    }
    for round in 0..2 {
        for (n, v) in vols.iter().enumerate() {
            std::fs::write(v.join(format!("f{:04}", round)), vec![round as u8 + 1; 10_000 + n]).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for (n, (v, id)) in vols.iter().zip(&ids).enumerate() {
            let out = backup::run(repo.clone(), cfg(v, "node", id, Some(&cache)), &Job::new()).await.unwrap();
            let s = &out.snapshot.summary;
            assert_eq!((s.files_changed, s.files_unchanged), (1, 5), "round {round}, volume {n}: {s:?}");
            assert_eq!(s.bytes_read, 10_000 + n as u64, "round {round}, volume {n}");
        }
    }
}
