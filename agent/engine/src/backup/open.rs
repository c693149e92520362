//! Opening a file the scan listed, to read it, when a workload may be racing the backup.
//!
//! The scan stats an entry and, some time later, the scan or a blob worker opens it by name or
//! by absolute path. In between, a workload that controls its volume (the agent reads it as
//! root, on the node) can put something else there:
//! - a symlink in place of a directory on the path: the path leads outside the source, to a
//!   host file the snapshot would then carry back to the workload on restore;
//! - a FIFO: its open blocks until a writer comes, forever;
//! - a device node (a container may `mknod`): its open alone acts on the node (a watchdog arms
//!   and reboots the node when closed, a tape rewinds, a serial line raises DTR).
//!
//! So a file is first opened as a path only (`O_PATH`: nothing opened for I/O, no driver
//! called, nothing blocks), that descriptor must be the very file stat'ed (device and inode,
//! hence a regular file), and only then is that inode opened for reading, through
//! `/proc/self/fd`. Anything else is an error line, and nothing of it is read or stored. Where
//! `/proc` is not mounted the file is opened directly, non-blocking (a FIFO cannot hang the
//! backup, a device's open could still act) and checked on the open descriptor.
//!
//! The price is two system calls per file read (an `O_PATH` open and its close), about 5 µs
//! a file on the test machine; files the files cache or the parent snapshot knows are not
//! opened at all.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;

use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::Mode;

use crate::report::{EntryError, EntryErrorKind};

/// What a file looked like when it was stat'ed before its read: device, inode, size and mtime.
/// The file opened for its read must be the same device and inode (`open_for_read`, `check`);
/// one whose size or mtime differs after the read changed while it was read (kept as read, not
/// cached, warned about).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp { dev: md.dev(), ino: md.ino(), size: md.size(), mtime: (md.mtime(), md.mtime_nsec()) }
    }

    /// The size it was stat'ed with (what is read at most).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether `file` is still as stat'ed (size and mtime); an error when it is another file
    /// than the one stat'ed (device and inode).
    pub(crate) fn check(&self, file: &File) -> std::io::Result<bool> {
        let now = Stamp::of(&file.metadata()?);
        if (now.dev, now.ino) != (self.dev, self.ino) {
            return Err(std::io::Error::other(
                "replaced by another file after the scan listed it; left out (the next backup takes it)",
            ));
        }
        Ok(now == *self)
    }
}

/// The warning for a file that changed while it was read.
pub(crate) fn changed_while_read(abs: &Path) -> EntryError {
    EntryError::new(EntryErrorKind::Changed, abs, "changed while it was read")
}

/// Where a file is opened from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum At<'a> {
    /// A path: relative to the thread's working directory, or absolute.
    Path(&'a Path),
    /// A name in a directory held open.
    In(&'a File, &'a OsStr),
}

impl At<'_> {
    fn openat(self, flags: OFlag) -> std::io::Result<File> {
        let (dir, name): (BorrowedFd<'_>, &OsStr) = match self {
            At::Path(p) => (AT_FDCWD, p.as_os_str()),
            At::In(dir, name) => (dir.as_fd(), name),
        };
        let fd = openat(dir, name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }
}

/// Open the file stat'ed as `stamp` to read it, never through a symlink in its last
/// component, without updating its atime where allowed. Another file at `at` is an error; see
/// the module doc.
pub(crate) fn open_for_read(at: At<'_>, stamp: &Stamp) -> std::io::Result<File> {
    match proc_fds() {
        Some(fds) => open_checked(at, stamp, fds),
        None => open_direct(at, stamp),
    }
}

/// `/proc/self/fd`, to open a path-only descriptor's file for reading (`None` without /proc).
pub(crate) fn proc_fds() -> Option<&'static File> {
    static FDS: OnceLock<Option<File>> = OnceLock::new();
    FDS.get_or_init(|| {
        let fds =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open("/proc/self/fd");
        if let Err(e) = &fds {
            tracing::warn!(
                "/proc/self/fd: {e}; files are opened directly (a device put in a file's place could be opened), \
                 and a scan thread without a working directory of its own goes by absolute path"
            );
        }
        fds.ok()
    })
    .as_ref()
}

/// Path-only open, check, then open that inode for reading.
fn open_checked(at: At<'_>, stamp: &Stamp, fds: &File) -> std::io::Result<File> {
    let path = at.openat(OFlag::O_PATH)?;
    stamp.check(&path)?;
    let name = path.as_raw_fd().to_string();
    let reopen = |flags| openat(fds.as_fd(), name.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC | flags, Mode::empty());
    // O_NOATIME needs the file's owner or CAP_FOWNER.
    let file = reopen(OFlag::O_NOATIME).or_else(|_| reopen(OFlag::empty()))?;
    Ok(File::from(file))
}

/// Without /proc: a direct, non-blocking open, checked on the descriptor.
fn open_direct(at: At<'_>, stamp: &Stamp) -> std::io::Result<File> {
    let open = |flags| at.openat(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | flags);
    let file = open(OFlag::O_NOATIME).or_else(|_| open(OFlag::empty()))?;
    stamp.check(&file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    use super::*;

    /// Run `open` on its own thread: an open that blocks fails the test instead of hanging it.
    fn within_seconds<T: Send + 'static>(open: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(open()));
        rx.recv_timeout(Duration::from_secs(20)).expect("the open blocked")
    }

    fn stamp_of(p: &Path) -> Stamp {
        Stamp::of(&std::fs::symlink_metadata(p).unwrap())
    }

    /// The file stat'ed is opened for reading, through /proc and directly.
    #[test]
    fn the_file_stated_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"the file's bytes").unwrap();
        let stamp = stamp_of(&f);
        for file in [open_for_read(At::Path(&f), &stamp), open_direct(At::Path(&f), &stamp)] {
            let mut got = Vec::new();
            file.unwrap().read_to_end(&mut got).unwrap();
            assert_eq!(got, b"the file's bytes");
        }
    }

    /// A FIFO renamed over a listed file (a device node would be the same) is refused without
    /// being opened: no open event on it, and the open does not wait for a writer.
    #[test]
    fn a_fifo_put_in_a_files_place_is_not_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let (f, fifo) = (tmp.path().join("f"), tmp.path().join("fifo"));
        std::fs::write(&f, b"listed").unwrap();
        let stamp = stamp_of(&f);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let watch = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        watch.add_watch(&fifo, AddWatchFlags::IN_OPEN).unwrap();
        std::fs::rename(&fifo, &f).unwrap();

        let at = f.clone();
        let e = within_seconds(move || open_for_read(At::Path(&at), &stamp)).unwrap_err();
        assert!(e.to_string().contains("replaced by another file"), "{e}");
        let events = watch.read_events();
        assert!(events.is_err(), "the FIFO was opened: {events:?}");

        // Without /proc it is opened (non-blocking, so it cannot hang) and refused.
        let at = f.clone();
        let e = within_seconds(move || open_direct(At::Path(&at), &stamp)).unwrap_err();
        assert!(e.to_string().contains("replaced by another file"), "{e}");
    }

    /// A symlink in a listed file's place is not followed: it is another file.
    #[test]
    fn a_symlink_put_in_a_files_place_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (f, target) = (tmp.path().join("f"), tmp.path().join("target"));
        std::fs::write(&f, b"listed").unwrap();
        std::fs::write(&target, b"elsewhere").unwrap();
        let stamp = stamp_of(&f);
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&target, &f).unwrap();
        for r in [open_for_read(At::Path(&f), &stamp), open_direct(At::Path(&f), &stamp)] {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("replaced") || e.raw_os_error() == Some(libc::ELOOP), "{e}");
        }
    }
}
