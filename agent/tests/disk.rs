//! End-to-end tests of disk backup and restore with real loop devices, ext4 and fsck.
//! They need root and loop devices; under qemu user emulation (FERRY_UNDER_QEMU=1) they are
//! skipped because qemu-user cannot pass the loop ioctls through.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;

use assert_cmd::Command;

#[path = "common/skip.rs"]
mod skip;
use skip::skip;
#[path = "disk/gaps.rs"]
mod gaps;

fn can_run() -> bool {
    if std::env::var_os("FERRY_UNDER_QEMU").is_some() {
        skip("loop devices are not available under qemu-user");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        skip("needs root for loop devices");
        return false;
    }
    true
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let e = Env { dir: tempfile::tempdir().unwrap() };
        e.ferry(&["init", "--kdf-memory", "64", "--kdf-iterations", "1"]).assert().success();
        e
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn ferry(&self, args: &[&str]) -> Command {
        // FERRY_TEST_BIN: another architecture's build under qemu-user (crossbuild/e2e.sh).
        let mut c = match std::env::var_os("FERRY_TEST_BIN") {
            Some(bin) => Command::new(bin),
            None => Command::cargo_bin("ferry").unwrap(),
        };
        c.env("FERRY_PASSWORD", "pw")
            .env("FERRY_CACHE_DIR", self.p("cache"))
            .env("FERRY_REPOSITORY", self.p("repo"))
            .args(args);
        c
    }
    /// Run with --json and return the summary line.
    fn summary(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ferry(&a).output().unwrap();
        assert!(out.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .expect("a summary line")
    }
}

/// A loop device over `file`, detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path) -> Loop {
        let out = Proc::new("losetup").args(["-f", "--show"]).arg(file).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Proc::new("losetup").args(["-d", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Proc::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn pseudo_random(seed: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new_keyed(&[seed; 32]).finalize_xof().fill(&mut v);
    v
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    Proc::new("cmp").arg("-s").arg(a).arg(b).status().unwrap().success()
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The ext4 round trip's device size: 1 GiB natively; 256 MiB when the binary under test is
/// another architecture's under qemu-user (crossbuild/e2e.sh sets FERRY_TEST_BIN), where the
/// backup reads and the restore writes the whole device at emulated speed. Same code paths.
fn ext4_device_size() -> u64 {
    if std::env::var_os("FERRY_TEST_BIN").is_some() { 256 << 20 } else { 1 << 30 }
}

#[test]
fn ext4_on_a_loop_device_round_trips_to_another_device() {
    if !can_run() {
        return;
    }
    let e = Env::new();
    let (img, img2, mnt) = (e.p("a.img"), e.p("b.img"), e.p("mnt"));
    let size = ext4_device_size();
    sparse(&img, size);
    sparse(&img2, size);
    let src = Loop::new(&img);
    run("mkfs.ext4", &["-q", "-F", &src.0]);
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &[&src.0, mnt.to_str().unwrap()]);
    std::fs::write(mnt.join("random.bin"), pseudo_random(1, 30 << 20)).unwrap();
    std::fs::create_dir_all(mnt.join("dir/sub")).unwrap();
    for i in 0..200 {
        std::fs::write(mnt.join(format!("dir/sub/f{i}")), format!("file {i}\n").repeat(i + 1)).unwrap();
    }
    run("umount", &[mnt.to_str().unwrap()]);
    let s = e.summary(&["backup", &src.0]);
    // Without an allocated-blocks list a device is read whole; only its data is stored.
    assert_eq!(s["bytes_read"].as_u64().unwrap(), size);
    let added = s["bytes_added"].as_u64().unwrap();
    // The 30 MiB of random data (incompressible) and ext4's metadata, far less than the device.
    assert!(added < (30 << 20) + size / 8, "a mostly empty {size}-byte device is stored by its data, added {added}");
    let dst = Loop::new(&img2);
    std::fs::write(&img2, pseudo_random(9, 4 << 20)).unwrap(); // garbage the restore must clear
    sparse(&img2, size);
    let r = e.summary(&["restore", "latest", "--target", &dst.0, "--verify"]);
    assert_eq!(r["verified"], true);
    run("fsck.ext4", &["-n", "-f", &dst.0]);
    assert!(same_bytes(Path::new(&src.0), Path::new(&dst.0)), "devices differ");
    run("mount", &["-o", "ro", &dst.0, mnt.to_str().unwrap()]);
    let ok = std::fs::read(mnt.join("random.bin")).unwrap() == pseudo_random(1, 30 << 20)
        && std::fs::read(mnt.join("dir/sub/f199")).unwrap() == "file 199\n".repeat(200).into_bytes();
    run("umount", &[mnt.to_str().unwrap()]);
    assert!(ok, "files on the restored file system differ");
}

#[test]
fn raw_image_with_partition_table_round_trips_bit_for_bit() {
    if !can_run() {
        return;
    }
    let e = Env::new();
    let img = e.p("disk.img");
    sparse(&img, 64 << 20);
    let mut sf = Proc::new("sfdisk").arg("-q").arg(&img).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(sf.stdin.as_mut().unwrap(), b"label: gpt\n,16M\n,\n").unwrap();
    assert!(sf.wait().unwrap().success());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&pseudo_random(3, 1 << 20), 20 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4096).unwrap();
    }
    let s = e.summary(&["backup", img.to_str().unwrap()]);
    assert_eq!(s["bytes_total"], 64u64 << 20);
    let out = e.p("restored.img");
    e.summary(&["restore", "latest", "--target", out.to_str().unwrap(), "--verify"]);
    assert!(same_bytes(&img, &out));
    let snaps: serde_json::Value =
        serde_json::from_slice(&e.ferry(&["--json", "snapshots"]).output().unwrap().stdout).unwrap();
    let tags = snaps[0]["tags"].as_array().unwrap();
    for t in ["volume-mode=block", "device-size=67108864", "image=disk.img"] {
        assert!(tags.iter().any(|v| v == t), "tag {t} missing from {tags:?}");
    }
}

#[test]
fn changed_block_list_reads_only_the_listed_chunks() {
    if !can_run() {
        return;
    }
    let e = Env::new();
    let img = e.p("vol.img");
    sparse(&img, 256 << 20);
    let dev = Loop::new(&img);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&dev.0).unwrap();
        f.write_all_at(&pseudo_random(4, 40 << 20), 8 << 20).unwrap();
        f.sync_all().unwrap();
    }
    e.summary(&["backup", &dev.0]);
    // Change 3 scattered 4 KiB blocks (in 3 different 256 KiB chunks) and list them.
    let chunk = 256u64 << 10;
    let offsets = [10u64 << 20, (30 << 20) + 4096, 100 << 20];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&dev.0).unwrap();
        for (i, o) in offsets.iter().enumerate() {
            f.write_all_at(&pseudo_random(10 + i as u8, 4096), *o).unwrap();
        }
        f.sync_all().unwrap();
    }
    let list: Vec<String> = offsets.iter().map(|o| format!("{{\"byte_offset\":{o},\"size_bytes\":4096}}")).collect();
    let delta = e.p("delta.json");
    std::fs::write(
        &delta,
        format!("{{\"block_metadata_type\":\"FIXED_LENGTH\",\"block_metadata\":[{}]}}", list.join(",")),
    )
    .unwrap();
    let s = e.summary(&["backup", &dev.0, "--changed-blocks", delta.to_str().unwrap()]);
    assert_eq!(s["bytes_read"].as_u64().unwrap(), 3 * chunk, "only the 3 touched chunks are read");
    let out = e.p("restored.img");
    e.summary(&["restore", "latest", "--target", out.to_str().unwrap(), "--verify"]);
    assert!(same_bytes(Path::new(&dev.0), &out), "incremental snapshot restores the current device");
}

#[test]
fn sixteen_gib_sparse_image_is_read_and_restored_by_its_data() {
    if !can_run() {
        return;
    }
    let e = Env::new();
    let img = e.p("big.img");
    sparse(&img, 16 << 30);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        for i in 0..10u64 {
            f.write_all_at(&pseudo_random(i as u8, 10 << 20), i * (1600 << 20)).unwrap();
        }
    }
    let s = e.summary(&["backup", img.to_str().unwrap()]);
    let read = s["bytes_read"].as_u64().unwrap();
    assert!((100 << 20..=(100 << 20) + (10 << 20)).contains(&read), "read {read} bytes for 100 MiB of data");
    let out = e.p("out.img");
    e.summary(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 16 << 30);
    let alloc = allocated(&out);
    assert!(alloc <= (110 << 20), "restored image allocates {alloc} bytes: holes must stay holes");
    // Compare the data regions (a byte-wise cmp of 16 GiB of holes would dominate the test).
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&out).unwrap();
    for i in 0..10u64 {
        let mut buf = vec![0u8; 10 << 20];
        f.read_exact_at(&mut buf, i * (1600 << 20)).unwrap();
        assert!(buf == pseudo_random(i as u8, 10 << 20), "region {i} differs");
    }
}

#[test]
fn small_or_mounted_targets_are_refused_before_writing() {
    if !can_run() {
        return;
    }
    let e = Env::new();
    let img = e.p("src.img");
    sparse(&img, 32 << 20);
    std::fs::write(e.p("marker"), b"x").unwrap();
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&img).unwrap().write_all_at(b"data", 1 << 20).unwrap();
    }
    e.summary(&["backup", img.to_str().unwrap()]);
    let small = e.p("small.img");
    std::fs::write(&small, pseudo_random(7, 16 << 20)).unwrap();
    let dev = Loop::new(&small);
    let out = e.ferry(&["restore", "latest", "--target", &dev.0]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds") && err.contains(&dev.0), "{err}");
    assert_eq!(std::fs::read(&small).unwrap(), pseudo_random(7, 16 << 20), "nothing written");
    // A mounted device is refused unless forced.
    let big = e.p("big.img");
    sparse(&big, 64 << 20);
    let dev2 = Loop::new(&big);
    run("mkfs.ext4", &["-q", "-F", &dev2.0]);
    let mnt = e.p("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &[&dev2.0, mnt.to_str().unwrap()]);
    let out = e.ferry(&["restore", "latest", "--target", &dev2.0]).output().unwrap();
    run("umount", &[mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is in use (mounted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression: a disk snapshot restored into a directory opened `<target>/<name>` by path, so a
/// symlink there (restored earlier, or planted by the volume's workload) sent the image onto a
/// block device of the node, and ferry exited 0. Now the image is created with O_EXCL and
/// O_NOFOLLOW from the directory's descriptor: the link is replaced, the device untouched.
#[test]
fn a_symlink_in_a_directory_target_is_replaced_never_followed_to_a_device() {
    if !can_run() {
        return;
    }
    let e = Env::new();
    let img = e.p("vm.img");
    std::fs::write(&img, pseudo_random(1, 4 << 20)).unwrap();
    e.summary(&["backup", "--disk", img.to_str().unwrap()]);
    let victim_file = e.p("victim.raw");
    std::fs::write(&victim_file, pseudo_random(2, 8 << 20)).unwrap();
    let victim = Loop::new(&victim_file);
    let target = e.p("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&victim.0, target.join("vm.img")).unwrap();
    let r = e.summary(&["restore", "latest", "--target", target.to_str().unwrap(), "--verify"]);
    assert_eq!(r["target"], target.join("vm.img").to_str().unwrap());
    drop(victim);
    assert_eq!(
        std::fs::read(&victim_file).unwrap(),
        pseudo_random(2, 8 << 20),
        "the device behind the link was written"
    );
    let md = std::fs::symlink_metadata(target.join("vm.img")).unwrap();
    assert!(md.is_file(), "the link is replaced by the image");
    assert!(same_bytes(&img, &target.join("vm.img")));
}

/// Regression: the "is it mounted" check looked at the device itself only, so a whole disk
/// whose partition is mounted was overwritten. The device is now opened with O_EXCL, which the
/// kernel refuses for a device that is mounted or held through a partition.
#[test]
fn a_disk_whose_partition_is_mounted_is_refused() {
    if !can_run() {
        return;
    }
    let e = Env::new();
    let img = e.p("src.img");
    std::fs::write(&img, pseudo_random(3, 4 << 20)).unwrap();
    e.summary(&["backup", "--disk", img.to_str().unwrap()]);
    let disk_file = e.p("disk.raw");
    sparse(&disk_file, 64 << 20);
    let out = Proc::new("losetup").args(["-f", "--show", "-P"]).arg(&disk_file).output().unwrap();
    assert!(out.status.success());
    let dev = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let mut sf = Proc::new("sfdisk").args(["-q", &dev.0]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(sf.stdin.as_mut().unwrap(), b"label: dos\n,,L\n").unwrap();
    assert!(sf.wait().unwrap().success());
    let _ = Proc::new("partx").args(["-u", &dev.0]).status();
    let part = format!("{}p1", dev.0);
    for _ in 0..50 {
        if Path::new(&part).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    run("mkfs.ext4", &["-q", "-F", &part]);
    let mnt = e.p("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &[&part, mnt.to_str().unwrap()]);
    std::fs::write(mnt.join("precious"), b"keep me").unwrap();
    let out = e.ferry(&["restore", "latest", "--target", &dev.0]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let still = std::fs::read(mnt.join("precious"));
    run("umount", &[mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is in use"), "{err}");
    assert_eq!(still.unwrap(), b"keep me");
    run("fsck.ext4", &["-n", &part]);
}
