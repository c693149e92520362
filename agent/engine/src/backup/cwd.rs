//! The scanning thread's own working directory, moved along with the scan.
//!
//! The scanner stats each entry and lists its xattrs. By absolute path, every one of those
//! calls walks the whole path again (a third of an unchanged backup's scan). The scan thread
//! takes a working directory of its own (`unshare(CLONE_FS)`: other threads keep the
//! process's), enters each directory by a descriptor opened without following a symlink, and
//! names entries relative to it: one path component per call. It also means a directory
//! swapped for a symlink while the scan is inside cannot redirect the stats to another tree.
//!
//! Where the thread cannot have its own (`unshare` refused, e.g. by a seccomp profile), the
//! scan goes by absolute paths as before; nothing else on the thread may then move it.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
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

/// Make `dir` the thread's working directory.
pub(crate) fn enter(dir: &File) -> io::Result<()> {
    nix::unistd::fchdir(dir.as_fd()).map_err(io::Error::from)
}

/// Whether opening a directory failed for lack of descriptors (the scan then goes on by
/// absolute path there).
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
