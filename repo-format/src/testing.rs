//! For this workspace's tests, not for users of the format (hidden from the docs).

/// Record that the running test is skipped, and why: a line on stderr and one in the file named
/// by `FERRY_TEST_SKIPS`, which tests/run.sh counts in its closing line (`N passed, N failed,
/// N skipped`), so a skip is never a silent pass. The test returns after calling it.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("skipped: {test}: {reason}");
    if let Some(path) = std::env::var_os("FERRY_TEST_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// Unmount `dir` if it is a mount point: retried for a moment while something still has a file
/// open in it (a process or thread of the test that has not ended yet), then detached lazily
/// (`umount -l`: gone from the tree at once, cleaned up at the last close), so that no test
/// leaves a mount, or the loop device under it, behind (five had piled up on one machine, each
/// busy when its test ended).
pub fn unmount(dir: &std::path::Path) {
    use std::process::Command;
    // Without `mountpoint` to ask, a directory counts as mounted.
    let mounted = || Command::new("mountpoint").arg("-q").arg(dir).status().map_or(true, |s| s.success());
    for _ in 0..20 {
        if !mounted() || Command::new("umount").arg(dir).status().is_ok_and(|s| s.success()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("{} is still busy: unmounted lazily", dir.display());
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}
