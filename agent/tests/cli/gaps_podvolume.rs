//! `backup --pod-volume PODS_DIR/POD_UID/VOLUME` end to end, with kubelet's layout built in a
//! temporary directory: a filesystem volume (`volumes/kubernetes.io~csi/<pv>/mount`), a block
//! volume (`volumeDevices/kubernetes.io~csi/<pv>`, a device node of a loop device) and a KubeVirt
//! `disk.img` on a filesystem volume. Each is backed up by the binary, restored and compared,
//! and tagged as `cmd/backup.rs` documents.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag, mknod};

use crate::common::devices::Loop;
use crate::common::{Env, compare_trees, json_lines, num, random_bytes, stderr, summary_of};

const UID: &str = "6f1c1f9e-3b4a-4d2e-9c55-0123456789ab";

/// `ferry backup --json --pod-volume SPEC [extra]`; asserts success, returns the summary.
fn backup_pod(env: &Env, spec: &Path, extra: &[&str]) -> serde_json::Value {
    let out = env.ferry().args(["backup", "--json", "--pod-volume"]).arg(spec).args(extra).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "backup --pod-volume {}: {}", spec.display(), stderr(&out));
    summary_of(&out.stdout)
}

/// The snapshot `id`'s tags (sorted) and paths.
fn snapshot_of(env: &Env, id: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let out = env.ferry().args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = v.as_array().unwrap().iter().find(|s| s["id"] == *id).expect("the snapshot is listed").clone();
    let strings = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = s[k].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        v.sort();
        v
    };
    (strings("tags"), strings("paths"))
}

/// The names at the root of snapshot `id` (`ls --json`).
fn root_names(env: &Env, id: &serde_json::Value) -> Vec<String> {
    let out = env.ferry().args(["ls", "--json", id.as_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json_lines(&out.stdout).iter().filter_map(|l| l["path"].as_str().map(str::to_string)).collect()
}

fn same_file_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

fn tags(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn pod_volume_filesystem_block_and_kubevirt_image() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let pods = env.path("pods");
    let pod = pods.join(UID);

    // A filesystem volume: the CSI mount directory is the snapshot's root.
    let mount = pod.join("volumes/kubernetes.io~csi/pvc-fs/mount");
    std::fs::create_dir_all(&mount).unwrap();
    crate::fidelity::build(&mount);
    let s = backup_pod(&env, &pod.join("pvc-fs"), &["--tag", "namespace=shop"]);
    assert_eq!(num(&s, "errors"), 0, "{s}");
    let (t, paths) = snapshot_of(&env, &s["snapshot_id"]);
    assert_eq!(t, tags(&["namespace=shop", &format!("pod-uid={UID}"), "volume=pvc-fs", "volume-mode=filesystem"]));
    assert_eq!(paths, vec![mount.to_str().unwrap().to_string()]);
    let target = env.path("fs-target");
    let out =
        env.restore(s["snapshot_id"].as_str().unwrap(), &target, &["--verify", "--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let diffs = compare_trees(&mount, &target);
    assert!(diffs.is_empty(), "restored volume differs:\n{}", diffs.join("\n"));

    // A block volume: kubelet's device node for the PV, here one for a loop device.
    let backing = env.path("pvc-blk.backing");
    std::fs::File::create(&backing).unwrap().set_len(32 << 20).unwrap();
    let lo = Loop::new(&backing);
    {
        let f = std::fs::OpenOptions::new().write(true).open(&lo.0).unwrap();
        f.write_all_at(&random_bytes("blk-1", 3 << 20), 1 << 20).unwrap();
        f.write_all_at(&random_bytes("blk-2", 4096), (32 << 20) - 4096).unwrap();
        f.sync_all().unwrap();
    }
    let node = pod.join("volumeDevices/kubernetes.io~csi/pvc-blk");
    std::fs::create_dir_all(node.parent().unwrap()).unwrap();
    let rdev = std::fs::metadata(&lo.0).unwrap().rdev();
    mknod(&node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), rdev).unwrap();
    let s = backup_pod(&env, &pod.join("pvc-blk"), &[]);
    assert_eq!(num(&s, "bytes_total"), 32 << 20, "{s}");
    assert_eq!(num(&s, "bytes_read"), 32 << 20, "a device is read whole: {s}");
    let (t, paths) = snapshot_of(&env, &s["snapshot_id"]);
    assert_eq!(
        t,
        tags(&[
            &format!("pod-uid={UID}"),
            "volume=pvc-blk",
            "volume-mode=block",
            "device-size=33554432",
            "chunk-size=262144"
        ])
    );
    assert_eq!(paths, vec![node.to_str().unwrap().to_string()]);
    assert_eq!(root_names(&env, &s["snapshot_id"]), vec!["/pvc-blk".to_string()]);
    let out_img = env.path("pvc-blk.restored");
    let out = env.restore(s["snapshot_id"].as_str().unwrap(), &out_img, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(same_file_bytes(Path::new(&lo.0), &out_img), "restored block volume differs");
    // An incremental backup of the same pod volume with a changed-block list: the first
    // snapshot is its parent, only the listed chunk is read.
    {
        let f = std::fs::OpenOptions::new().write(true).open(&lo.0).unwrap();
        f.write_all_at(&random_bytes("blk-3", 4096), 20 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let delta = env.path("delta.txt");
    std::fs::write(&delta, format!("{} 4096\n", 20 << 20)).unwrap();
    let s2 = backup_pod(&env, &pod.join("pvc-blk"), &["--changed-blocks", delta.to_str().unwrap()]);
    assert_eq!(s2["parent"], s["snapshot_id"], "{s2}");
    assert_eq!(num(&s2, "bytes_read"), 256 << 10, "{s2}");
    let out_img2 = env.path("pvc-blk.restored2");
    let out = env.restore(s2["snapshot_id"].as_str().unwrap(), &out_img2, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(same_file_bytes(Path::new(&lo.0), &out_img2), "incremental block volume differs");

    // A KubeVirt disk image alone on a filesystem volume (beside lost+found): a disk.
    let vm = pod.join("volumes/kubernetes.io~csi/pvc-vm/mount");
    std::fs::create_dir_all(vm.join("lost+found")).unwrap();
    let img = vm.join("disk.img");
    {
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(40 << 20).unwrap();
        f.write_all_at(&random_bytes("vm-1", 2 << 20), 5 << 20).unwrap();
        f.write_all_at(b"partition table", 0).unwrap();
    }
    let s = backup_pod(&env, &pod.join("pvc-vm"), &[]);
    assert_eq!(num(&s, "bytes_total"), 40 << 20, "{s}");
    assert!(num(&s, "bytes_read") <= (2 << 20) + (512 << 10), "holes of the image are not read: {s}");
    let (t, paths) = snapshot_of(&env, &s["snapshot_id"]);
    assert_eq!(
        t,
        tags(&[
            &format!("pod-uid={UID}"),
            "volume=pvc-vm",
            "volume-mode=block",
            "device-size=41943040",
            "chunk-size=262144",
            "image=disk.img"
        ])
    );
    assert_eq!(paths, vec![img.to_str().unwrap().to_string()]);
    assert_eq!(root_names(&env, &s["snapshot_id"]), vec!["/disk.img".to_string()]);
    let out_img = env.path("disk.img.restored");
    let out = env.restore(s["snapshot_id"].as_str().unwrap(), &out_img, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(same_file_bytes(&img, &out_img), "restored disk image differs");

    // Snapshots of the pod are found by its tags.
    let out = env.ferry().args(["snapshots", "--json", "--tag", &format!("pod-uid={UID}")]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4, "{v}");
    let out = env.ferry().args(["snapshots", "--json", "--tag", "volume=pvc-vm"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
}
