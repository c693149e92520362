//! Writing under a restore target without ever leaving it.
//!
//! Every operation is relative to a directory file descriptor reached from the target's root
//! by `openat(O_NOFOLLOW | O_DIRECTORY)` one component at a time, so no symlink inside the
//! target — whether restored or already there — is ever followed, and names are single
//! components checked by the caller (`Node::has_safe_name`). An existing non-directory entry
//! in the way is unlinked before a new file is created (never opened and truncated), so a
//! pre-existing hardlink to a file outside the target cannot be written through.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmodat, fstatat, mkdirat, mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use repo_format::{Node, NodeType};

/// The root of a restore target.
#[derive(Debug)]
pub struct SafeRoot {
    root: Arc<OwnedFd>,
    path: PathBuf,
    /// Recently opened directories (restores touch one directory many times in a row).
    dirs: std::sync::Mutex<HashMap<PathBuf, Arc<OwnedFd>>>,
}

/// Directory descriptors kept open at most (well below the usual limit of 1024 open files).
/// A miss costs one `openat` (its parent is looked up the same way), so a restore opens each
/// directory about once while the cache holds the directories it is working in.
const DIR_CACHE: usize = 256;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn name_of(p: &Path) -> io::Result<&OsStr> {
    p.file_name().ok_or_else(|| io::Error::other(format!("{} has no file name", p.display())))
}

/// Times as nanoseconds since the epoch into a `TimeSpec`.
fn ts(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

impl SafeRoot {
    /// Create (if needed) and open the target directory. The target itself may be reached
    /// through symlinks (the user named it); nothing below it is.
    pub fn open(target: &Path) -> io::Result<SafeRoot> {
        std::fs::create_dir_all(target)?;
        let root = nix::fcntl::open(target, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(SafeRoot { root: Arc::new(root), path: target.to_path_buf(), dirs: Default::default() })
    }

    /// A descriptor of directory `rel` (relative, normal components only), from the cache when
    /// it was opened recently; otherwise opened with one `openat(O_NOFOLLOW)` from its parent's
    /// descriptor, found the same way.
    pub fn dir(&self, rel: &Path) -> io::Result<Arc<OwnedFd>> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(fd) = self.dirs.lock().expect("lock").get(rel) {
            return Ok(fd.clone());
        }
        let (Some(parent), Some(Component::Normal(name))) = (rel.parent(), rel.components().next_back()) else {
            return Err(io::Error::other(format!("unsafe path component in {}", rel.display())));
        };
        let parent = self.dir(parent)?;
        let fd = Arc::new(openat(&*parent, name, dir_flags(), Mode::empty()).map_err(|e| {
            io::Error::other(format!("{}: {e} (a symlink or non-directory is in the way)", rel.display()))
        })?);
        let mut cache = self.dirs.lock().expect("lock");
        if cache.len() >= DIR_CACHE {
            cache.clear();
        }
        cache.insert(rel.to_path_buf(), fd.clone());
        Ok(fd)
    }

    /// Forget cached directory descriptors (after a directory was replaced).
    fn forget(&self) {
        self.dirs.lock().expect("lock").clear();
    }

    /// Make directory `rel` (its parent exists). An existing directory is kept; anything else
    /// there is removed first.
    pub fn mkdir(&self, rel: &Path) -> io::Result<()> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = name_of(rel)?;
        match mkdirat(&parent, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                let st = fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR {
                    Ok(())
                } else {
                    unlinkat(&*parent, name, UnlinkatFlags::NoRemoveDir)?;
                    mkdirat(&*parent, name, Mode::from_bits_truncate(0o700))?;
                    self.forget();
                    Ok(())
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Remove a non-directory entry at `name` in `parent` if there is one.
    fn clear(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
        match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) | Err(Errno::EPERM) if is_dir_at(parent, name) => {
                Err(io::Error::other(format!("{name:?}: a directory is in the way of a file")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Create an empty regular file of `size` bytes (a hole: content is written later).
    /// `O_EXCL` never opens an existing entry (nor follows a symlink): only when something is
    /// there already is it removed and the creation retried.
    pub fn create_file(&self, rel: &Path, size: u64) -> io::Result<()> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = name_of(rel)?;
        let create = || {
            openat(
                &parent,
                name,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        };
        let fd = match create() {
            Err(Errno::EEXIST) => {
                Self::clear(&parent, name)?;
                create()?
            }
            r => r?,
        };
        if size > 0 { File::from(fd).set_len(size) } else { Ok(()) }
    }

    /// Open an existing regular file for writing (never a symlink, never created).
    pub fn open_file(&self, rel: &Path, write: bool) -> io::Result<File> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let flags = if write { OFlag::O_WRONLY } else { OFlag::O_RDONLY };
        let fd = openat(&parent, name_of(rel)?, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
        let f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(io::Error::other(format!("{}: not a regular file", rel.display())));
        }
        Ok(f)
    }

    /// Create a symlink, FIFO or device node.
    pub fn create_special(&self, rel: &Path, node: &Node) -> io::Result<()> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = name_of(rel)?;
        let perm = Mode::from_bits_truncate(node.mode & 0o7777);
        let make = || match node.kind {
            NodeType::Symlink => symlinkat(OsStr::from_bytes(&node.link_target), &parent, name),
            NodeType::Fifo => mknodat(&parent, name, SFlag::S_IFIFO, perm, 0),
            NodeType::CharDev => mknodat(&parent, name, SFlag::S_IFCHR, perm, node.rdev as libc::dev_t),
            NodeType::BlockDev => mknodat(&parent, name, SFlag::S_IFBLK, perm, node.rdev as libc::dev_t),
            NodeType::Socket => mknodat(&parent, name, SFlag::S_IFSOCK, perm, 0),
            NodeType::File | NodeType::Dir => Err(Errno::EINVAL),
        };
        if matches!(node.kind, NodeType::File | NodeType::Dir) {
            return Err(io::Error::other("not a special file"));
        }
        match make() {
            Err(Errno::EEXIST) => {
                Self::clear(&parent, name)?;
                make()?
            }
            r => r?,
        }
        Ok(())
    }

    /// Make `rel` a hard link to the already restored `existing`.
    pub fn hardlink(&self, existing: &Path, rel: &Path) -> io::Result<()> {
        let from_dir = self.dir(existing.parent().unwrap_or(Path::new("")))?;
        let to_dir = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = name_of(rel)?;
        let link = || linkat(&from_dir, name_of(existing)?, &to_dir, name, AtFlags::empty()).map_err(io::Error::from);
        match link() {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                Self::clear(&to_dir, name)?;
                link()
            }
            r => r,
        }
    }

    /// Owner, permissions, xattrs and times, in that order (chown clears setuid bits, so mode
    /// comes after it; times come last because the others change ctime only).
    pub fn set_metadata(&self, rel: &Path, node: &Node) -> io::Result<()> {
        let name_rel = if rel.as_os_str().is_empty() { None } else { Some(rel) };
        match (node.kind, name_rel) {
            (NodeType::File, Some(r)) => {
                let f = self.open_file(r, false)?;
                apply_fd(&f, node)
            }
            (NodeType::Dir, _) => {
                let f = File::from(self.dir(rel)?.try_clone()?);
                apply_fd(&f, node)
            }
            (_, Some(r)) => {
                let parent = self.dir(r.parent().unwrap_or(Path::new("")))?;
                let name = name_of(r)?;
                fchownat(
                    &parent,
                    name,
                    Some(Uid::from_raw(node.uid)),
                    Some(Gid::from_raw(node.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                if node.kind != NodeType::Symlink {
                    fchmodat(
                        &parent,
                        name,
                        Mode::from_bits_truncate(node.mode & 0o7777),
                        FchmodatFlags::FollowSymlink,
                    )?;
                }
                for (k, v) in &node.xattrs {
                    // Only possible by path; the parent is ours and the name is not followed.
                    let p = self.path.join(r);
                    if let Err(e) = xattr::set(&p, OsStr::from_bytes(k), v) {
                        tracing::debug!("{}: xattr {}: {e}", r.display(), String::from_utf8_lossy(k));
                    }
                }
                utimensat(&parent, name, &ts(node.atime_ns), &ts(node.mtime_ns), UtimensatFlags::NoFollowSymlink)?;
                Ok(())
            }
            (_, None) => Ok(()),
        }
    }
}

fn is_dir_at(parent: &OwnedFd, name: &OsStr) -> bool {
    fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR)
        .unwrap_or(false)
}

fn apply_fd(f: &File, node: &Node) -> io::Result<()> {
    use xattr::FileExt;
    nix::unistd::fchown(f.as_fd(), Some(Uid::from_raw(node.uid)), Some(Gid::from_raw(node.gid)))?;
    nix::sys::stat::fchmod(f.as_fd(), Mode::from_bits_truncate(node.mode & 0o7777))?;
    // Remove xattrs the snapshot does not have (restoring over an existing directory).
    if let Ok(existing) = f.list_xattr() {
        for k in existing {
            if !node.xattrs.iter().any(|(n, _)| n[..] == *k.as_bytes()) {
                let _ = f.remove_xattr(&k);
            }
        }
    }
    for (k, v) in &node.xattrs {
        f.set_xattr(OsStr::from_bytes(k), v)?;
    }
    nix::sys::stat::futimens(f.as_fd(), &ts(node.atime_ns), &ts(node.mtime_ns))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_a_symlink_inside_the_target() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("link")).unwrap();
        let root = SafeRoot::open(target.path()).unwrap();
        assert!(root.create_file(Path::new("link/evil"), 10).is_err());
        assert!(root.mkdir(Path::new("link/sub")).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing written outside");
        // A symlink where a file goes is replaced, not followed.
        std::os::unix::fs::symlink(outside.path().join("victim"), target.path().join("f")).unwrap();
        root.create_file(Path::new("f"), 3).unwrap();
        assert!(!outside.path().join("victim").exists());
        assert!(std::fs::symlink_metadata(target.path().join("f")).unwrap().is_file());
    }

    #[test]
    fn rejects_dot_dot() {
        let target = tempfile::tempdir().unwrap();
        let root = SafeRoot::open(target.path()).unwrap();
        assert!(root.dir(Path::new("../x")).is_err());
    }
}
