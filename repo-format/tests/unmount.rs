//! The tests' `unmount` leaves nothing mounted, even when something still uses the mount (a
//! plain `umount` then fails with EBUSY, and the mount and its loop device stayed behind).

use std::process::Command;

fn mounted(dir: &std::path::Path) -> bool {
    Command::new("mountpoint").arg("-q").arg(dir).status().is_ok_and(|s| s.success())
}

#[test]
fn a_busy_mount_is_unmounted_and_a_plain_directory_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&dir).status();
    if !ok.is_ok_and(|s| s.success()) {
        return repo_format::testing::skip("mounting a tmpfs needs root");
    }
    // A process whose working directory is in the mount: `umount` alone fails (busy).
    let mut user = Command::new("sleep").arg("60").current_dir(&dir).spawn().unwrap();
    assert!(!Command::new("umount").arg(&dir).status().unwrap().success(), "the mount is busy");
    repo_format::testing::unmount(&dir);
    assert!(!mounted(&dir), "still mounted");
    user.kill().unwrap();
    user.wait().unwrap();
    // Not a mount point (any more): nothing to do, at once.
    let started = std::time::Instant::now();
    repo_format::testing::unmount(&dir);
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
}
