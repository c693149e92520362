//! The scanning thread's own working directory, moved along with the scan.
//!
//! The scanner stats each entry and lists its xattrs. By absolute path, every one of those
//! calls walks the whole path again (a third of an unchanged backup's scan). The scan thread
//! takes a working directory of its own (`unshare(CLONE_FS)`: other threads keep the
//! process's), enters each directory by a descriptor opened without following a symlink, and
//! names entries relative to it: one path component per call. It also means a directory
//! swapped for a symlink while the scan is inside cannot redirect the stats to another tree.
//!
//! Deeper than the directories it holds a descriptor for at once, it enters by descriptor all
//! the same but comes back up through `..`, checked to be the directory it came from.
//!
//! Where the thread cannot have its own (`unshare` refused, e.g. by a seccomp profile), the
//! scan goes by absolute paths as before; nothing else on the thread may then move it.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Give the calling thread a working directory of its own; false when refused. The thread
/// must be one that ends with the work that moves it (never a pool thread).
pub(crate) fn private() -> bool {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).is_ok()
}

/// Open the directory `at` (relative to the thread's working directory or absolute), not
/// following a symlink in its last component unless `follow` (a source path named by the user
/// may be a link to the directory to back up).
pub(crate) fn open_dir(at: &Path, follow: bool) -> io::Result<File> {
    let flags = if follow { libc::O_DIRECTORY } else { libc::O_DIRECTORY | libc::O_NOFOLLOW };
    std::fs::OpenOptions::new().read(true).custom_flags(flags).open(at)
}

/// Open the directory `at` as a path only (`O_PATH`), for `*at` calls from another thread.
pub(crate) fn open_path(at: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW).open(at)
}

/// Make `dir` the thread's working directory.
pub(crate) fn enter(dir: &File) -> io::Result<()> {
    nix::unistd::fchdir(dir.as_fd()).map_err(io::Error::from)
}

/// Device and inode of an open directory.
pub(crate) fn id_of(dir: &File) -> io::Result<(u64, u64)> {
    dir.metadata().map(|m| (m.dev(), m.ino()))
}

/// Go up to the parent of the working directory, which must be the directory `expect` (device
/// and inode) the working directory was entered from: a directory moved elsewhere while it was
/// scanned has another parent, and the scan must not go on in that one.
pub(crate) fn up(expect: (u64, u64)) -> io::Result<()> {
    let parent = open_dir(Path::new(".."), false)?;
    if id_of(&parent)? != expect {
        return Err(io::Error::other(
            "moved while it was scanned: the scan does not go back up into another directory; \
             what was not scanned yet of the directories above it is left out",
        ));
    }
    enter(&parent)
}

/// Whether opening a directory failed for lack of descriptors (the scan then goes on by
/// absolute path there).
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `up` comes back to the directory entered from, and refuses once the working directory
    /// was moved under another parent (a workload racing the scan).
    #[test]
    fn up_returns_only_to_the_directory_entered_from() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::create_dir(&b).unwrap();
        let (a_id, b_id) = (id_of(&File::open(&a).unwrap()).unwrap(), id_of(&File::open(&b).unwrap()).unwrap());
        std::thread::spawn(move || {
            assert!(private(), "this thread's working directory is its own");
            enter(&open_dir(&a, false).unwrap()).unwrap();
            enter(&open_dir(Path::new("sub"), false).unwrap()).unwrap();
            up(a_id).unwrap();
            assert_eq!(id_of(&File::open(".").unwrap()).unwrap(), a_id, "back in a");

            enter(&open_dir(Path::new("sub"), false).unwrap()).unwrap();
            std::fs::rename(a.join("sub"), b.join("sub")).unwrap();
            let e = up(a_id).unwrap_err();
            assert!(e.to_string().contains("moved while it was scanned"), "{e}");
            assert_eq!(id_of(&File::open("..").unwrap()).unwrap(), b_id, "its parent is b now");
            assert_ne!(id_of(&File::open(".").unwrap()).unwrap(), b_id, "and the scan did not go there");
        })
        .join()
        .unwrap();
    }
}
