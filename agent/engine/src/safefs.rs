//! Writing under a restore target without ever leaving it.
//!
//! Every operation is relative to a directory file descriptor reached from the target's root
//! by `openat(O_NOFOLLOW | O_DIRECTORY)` one component at a time, so no symlink inside the
//! target — whether restored or already there — is ever followed, and names are single
//! components checked by the caller (`Node::has_safe_name`). An existing non-directory entry
//! in the way is unlinked before a new file is created (never opened and truncated), so a
//! pre-existing hardlink to a file outside the target cannot be written through.
//!
//! The target may be written by others while a restore runs (the workload owning a volume).
//! Everything this module creates is identified by (device, inode) (`FileId`), taken from the
//! descriptor that created it (for a file written whole at once, after its content: see
//! `create_whole_file_for`), and every later access — content, then metadata — opens the entry without
//! following it and checks that identity before acting, and then acts on the descriptor it
//! opened (`fchown`, `fchmod`, `fsetxattr`, `futimens`). An entry swapped for a symlink, a
//! hardlink or another file meanwhile is reported and left alone: a racer can never have a
//! file outside the target changed, nor its own file made root-owned or setuid. Special files
//! are reached through an `O_PATH` descriptor (opening a FIFO or device could block or have
//! effects) and changed through its `/proc/self/fd` link, which names that exact inode (for a
//! symlink, the link itself: the kernel does not follow a symlink reached through such a link,
//! which is what lets a symlink's xattrs be set without a race).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fstat, fstatat, mkdirat, mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use repo_format::{Node, NodeType};

use crate::restore::FileMeta;

/// What an entry was when this restore made it: (device, inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are not u64 on every target
    fn of(st: &FileStat) -> FileId {
        FileId { dev: st.st_dev as u64, ino: st.st_ino as u64 }
    }
}

fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT)
}

fn swapped(rel: &Path) -> io::Error {
    io::Error::other(format!(
        "{} was replaced by something else during the restore (another process writes the target); left alone",
        rel.display()
    ))
}

/// The permission bits to give an entry: setuid and setgid are dropped from everything but
/// directories unless `keep_setuid` (a forged snapshot must not plant setuid-root programs).
pub fn restored_mode(node: &Node, keep_setuid: bool) -> u32 {
    if node.kind == NodeType::Dir { node.mode & 0o7777 } else { file_mode(node.mode, keep_setuid) }
}

/// A non-directory's permission bits as restored: setuid/setgid dropped unless asked.
fn file_mode(mode: u32, keep_setuid: bool) -> u32 {
    let m = mode & 0o7777;
    if keep_setuid { m } else { m & !(libc::S_ISUID | libc::S_ISGID) }
}

/// The root of a restore target.
#[derive(Debug)]
pub struct SafeRoot {
    root: Arc<OwnedFd>,
    /// Recently opened directories (restores touch one directory many times in a row), and
    /// whether this restore made each (`DirRecord::made`, copied when it was opened).
    dirs: std::sync::Mutex<HashMap<PathBuf, (Arc<OwnedFd>, bool)>>,
    /// Directories as this restore made or found them: reopening one checks it is still that.
    dir_ids: std::sync::Mutex<HashMap<PathBuf, DirRecord>>,
    /// Keep setuid/setgid bits on files (`--keep-setuid`).
    keep_setuid: bool,
    /// This process's effective user and group: the owner of what it creates.
    owner: (u32, u32),
}

/// A directory as `mkdir` left it.
#[derive(Debug, Clone, Copy)]
struct DirRecord {
    id: FileId,
    /// Made by this restore (not found there): 0700 and this process's until its metadata is
    /// set at the end, so nobody else can reach what is inside it meanwhile.
    made: bool,
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

/// A file just created, and its identity.
fn with_id(f: File) -> io::Result<(File, FileId)> {
    let id = FileId::of(&fstat(&f)?);
    Ok((f, id))
}

/// Times as nanoseconds since the epoch into a `TimeSpec`.
fn ts(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

impl SafeRoot {
    /// Create (if needed) and open the target directory. The target itself may be reached
    /// through symlinks (the user named it); nothing below it is.
    pub fn open(target: &Path, keep_setuid: bool) -> io::Result<SafeRoot> {
        std::fs::create_dir_all(target)?;
        let root = nix::fcntl::open(target, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        let owner = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        Ok(SafeRoot { root: Arc::new(root), dirs: Default::default(), dir_ids: Default::default(), keep_setuid, owner })
    }

    /// A descriptor of directory `rel` (relative, normal components only), from the cache when
    /// it was opened recently; otherwise opened with one `openat(O_NOFOLLOW)` per level from
    /// the nearest ancestor open (a loop, not a recursion: a snapshot's nesting, up to 2048
    /// levels, must not exhaust a runtime thread's stack).
    pub fn dir(&self, rel: &Path) -> io::Result<Arc<OwnedFd>> {
        Ok(self.dir_made(rel)?.0)
    }

    /// `dir`, and whether this restore made that directory (`DirRecord::made`; the target
    /// itself: no).
    fn dir_made(&self, rel: &Path) -> io::Result<(Arc<OwnedFd>, bool)> {
        let mut missing = Vec::new();
        let mut at = (self.root.clone(), false);
        for a in rel.ancestors() {
            if a.as_os_str().is_empty() {
                break;
            }
            if let Some(d) = self.dirs.lock().expect("lock").get(a) {
                at = d.clone();
                break;
            }
            missing.push(a);
        }
        for a in missing.into_iter().rev() {
            at = self.open_child(&at.0, a)?;
        }
        Ok(at)
    }

    /// Open directory `rel` from its parent's descriptor, check it is still what this restore
    /// made or found there, and cache it.
    fn open_child(&self, parent: &OwnedFd, rel: &Path) -> io::Result<(Arc<OwnedFd>, bool)> {
        let Some(Component::Normal(name)) = rel.components().next_back() else {
            return Err(io::Error::other(format!("unsafe path component in {}", rel.display())));
        };
        let fd = Arc::new(openat(parent, name, dir_flags(), Mode::empty()).map_err(|e| {
            io::Error::other(format!("{}: {e} (a symlink or non-directory is in the way)", rel.display()))
        })?);
        let record = self.dir_ids.lock().expect("lock").get(rel).copied();
        if let Some(want) = record {
            if FileId::of(&fstat(&*fd)?) != want.id {
                return Err(swapped(rel));
            }
        }
        // A directory not recorded yet counts as found, not made (the safe side: its files
        // are 0600 until their metadata is set).
        let made = record.is_some_and(|d| d.made);
        let mut cache = self.dirs.lock().expect("lock");
        if cache.len() >= DIR_CACHE {
            cache.clear();
        }
        cache.insert(rel.to_path_buf(), (fd.clone(), made));
        Ok((fd, made))
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
        let made = match mkdirat(&parent, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => {
                let st = fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                if kind_of(&st) != SFlag::S_IFDIR {
                    unlinkat(&*parent, name, UnlinkatFlags::NoRemoveDir)?;
                    mkdirat(&*parent, name, Mode::from_bits_truncate(0o700))?;
                    self.forget();
                    true
                } else {
                    false
                }
            }
            Err(e) => return Err(e.into()),
        };
        let fd = openat(&*parent, name, dir_flags(), Mode::empty())?;
        let id = FileId::of(&fstat(&fd)?);
        self.dir_ids.lock().expect("lock").insert(rel.to_path_buf(), DirRecord { id, made });
        Ok(())
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

    /// Create an empty regular file of `size` bytes (a hole: content is written later), open
    /// for reading and writing, and its identity. `O_EXCL` never opens an existing entry (nor
    /// follows a symlink): only when something is there already is it removed and the creation
    /// retried. Its mode is 0600 until its metadata is set.
    pub fn create_file(&self, rel: &Path, size: u64) -> io::Result<(File, FileId)> {
        with_id(self.create(rel, size, None)?)
    }

    /// `create_file` for a file that will get `meta`: when its owner is this process's user
    /// and group and its directory was made by this restore, it is created with its final
    /// permission bits (setuid/setgid and sticky aside), so that setting its metadata has
    /// nothing left to change but times (`apply_fd` skips what is already so). Such a directory
    /// is 0700 and this process's until the end (`mkdir`), so nobody else can reach the file
    /// meanwhile, whatever group it got there (a setgid directory's) or ACL it inherited. Any
    /// other file is 0600 until its metadata is set.
    pub fn create_file_for(&self, rel: &Path, size: u64, meta: &FileMeta) -> io::Result<(File, FileId)> {
        with_id(self.create(rel, size, Some(meta))?)
    }

    /// `create_file_for` a file about to be written whole and finished at once
    /// (`set_file_metadata_of`, which gives its identity). It is not stat'ed before its
    /// content: on Linux 6.13 and later (multigrain timestamps) a stat between the creation and
    /// the write makes the write stamp the file's times again, one more inode update per file
    /// (a million small files: about 4 % of a restore's CPU).
    pub fn create_whole_file_for(&self, rel: &Path, size: u64, meta: &FileMeta) -> io::Result<File> {
        self.create(rel, size, Some(meta))
    }

    fn create(&self, rel: &Path, size: u64, meta: Option<&FileMeta>) -> io::Result<File> {
        let (parent, made_here) = self.dir_made(rel.parent().unwrap_or(Path::new("")))?;
        let name = name_of(rel)?;
        let mode = match meta {
            Some(m) if (m.uid, m.gid) == self.owner && made_here => file_mode(m.mode, self.keep_setuid) & 0o777,
            _ => 0o600,
        };
        let create = || {
            openat(
                &parent,
                name,
                OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            )
        };
        let fd = match create() {
            Err(Errno::EEXIST) => {
                Self::clear(&parent, name)?;
                create()?
            }
            r => r?,
        };
        let f = File::from(fd);
        if size > 0 {
            f.set_len(size)?;
        }
        Ok(f)
    }

    /// Open an existing regular file (never a symlink, never created; `O_NONBLOCK` so a FIFO
    /// put in its place cannot block). With `expect`, it must still be the file this restore
    /// created.
    pub fn open_file(&self, rel: &Path, write: bool, expect: Option<FileId>) -> io::Result<File> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let flags = if write { OFlag::O_WRONLY } else { OFlag::O_RDONLY };
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let fd = openat(&parent, name_of(rel)?, flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENXIO if expect.is_some() => swapped(rel),
            e => e.into(),
        })?;
        let f = File::from(fd);
        let md = f.metadata()?;
        if expect.is_some_and(|want| FileId { dev: md.dev(), ino: md.ino() } != want) {
            return Err(swapped(rel));
        }
        if !md.is_file() {
            return Err(io::Error::other(format!("{}: not a regular file", rel.display())));
        }
        Ok(f)
    }

    /// Create a symlink, FIFO or device node; returns its identity.
    pub fn create_special(&self, rel: &Path, node: &Node) -> io::Result<FileId> {
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = name_of(rel)?;
        let perm = Mode::from_bits_truncate(restored_mode(node, false) & 0o777);
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
        Ok(FileId::of(&fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?))
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
    /// comes after it; times come last because the others change ctime only), applied to the
    /// entry only if it is still `expect` (what this restore created; directories are checked
    /// against what `mkdir` recorded).
    /// `set_metadata` of a regular file from a restore plan's compact metadata.
    pub fn set_file_metadata(&self, rel: &Path, meta: &FileMeta, expect: Option<FileId>) -> io::Result<()> {
        self.set_file_metadata_of(&self.open_file(rel, false, expect)?, meta).and_then(|(_, set)| set)
    }

    /// `set_file_metadata` through a descriptor the caller holds (of a file this restore
    /// created and still has open: nothing to check). Returns the file's identity (from the
    /// `fstat` it starts with; an error there is the outer one) and whether its metadata was
    /// set: a file whose metadata failed is still there with its content.
    pub fn set_file_metadata_of(&self, f: &File, meta: &FileMeta) -> io::Result<(FileId, io::Result<()>)> {
        let st = fstat(f)?;
        let mode = file_mode(meta.mode, self.keep_setuid);
        let a = Attrs {
            uid: meta.uid,
            gid: meta.gid,
            mode,
            atime_ns: meta.atime_ns,
            mtime_ns: meta.mtime_ns,
            xattrs: &meta.xattrs,
        };
        Ok((FileId::of(&st), apply_stated(f, &st, &a)))
    }

    pub fn set_metadata(&self, rel: &Path, node: &Node, expect: Option<FileId>) -> io::Result<()> {
        let name_rel = if rel.as_os_str().is_empty() { None } else { Some(rel) };
        let mode = restored_mode(node, self.keep_setuid);
        match (node.kind, name_rel) {
            (NodeType::File, Some(r)) => {
                let f = self.open_file(r, false, expect)?;
                apply_fd(&f, &Attrs::of_node(node, mode))
            }
            (NodeType::Dir, _) => {
                let f = File::from(self.dir(rel)?.try_clone()?);
                apply_fd(&f, &Attrs::of_node(node, mode))
            }
            (_, Some(r)) => {
                let parent = self.dir(r.parent().unwrap_or(Path::new("")))?;
                let name = name_of(r)?;
                let fd = openat(&parent, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
                let st = fstat(&fd)?;
                // A special file cannot be created and opened in one step, so the identity
                // recorded at creation may already be a racer's: also require the entry to be
                // of the snapshot's kind and to have no other link. Whatever a racer put there
                // instead is then at worst its own FIFO or link, never a program of its own nor
                // a file elsewhere (a hardlink has a second link).
                let want_kind = match node.kind {
                    NodeType::Symlink => SFlag::S_IFLNK,
                    NodeType::Fifo => SFlag::S_IFIFO,
                    NodeType::CharDev => SFlag::S_IFCHR,
                    NodeType::BlockDev => SFlag::S_IFBLK,
                    NodeType::Socket => SFlag::S_IFSOCK,
                    NodeType::File | NodeType::Dir => return Err(io::Error::other("not a special file")),
                };
                if expect.is_some_and(|want| FileId::of(&st) != want) || kind_of(&st) != want_kind || st.st_nlink != 1 {
                    return Err(swapped(r));
                }
                // chown of the O_PATH descriptor itself (a symlink is not followed).
                fchownat(
                    &fd,
                    "",
                    Some(Uid::from_raw(node.uid)),
                    Some(Gid::from_raw(node.gid)),
                    AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                // The descriptor's /proc link names exactly the inode checked above (for a
                // symlink: the link itself, which the kernel does not follow further).
                let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                if kind_of(&st) != SFlag::S_IFLNK {
                    std::fs::set_permissions(&link, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
                }
                // Remove xattrs the snapshot does not have (an ACL inherited from the directory's
                // default ACL), then set the snapshot's.
                if let Ok(existing) = xattr::list_deref(&link) {
                    for k in existing {
                        if stale_xattr(k.as_bytes(), &node.xattrs) {
                            let _ = xattr::remove_deref(&link, &k);
                        }
                    }
                }
                for (k, v) in &node.xattrs {
                    if let Err(e) = xattr::set_deref(&link, OsStr::from_bytes(k), v) {
                        tracing::debug!("{}: xattr {}: {e}", r.display(), String::from_utf8_lossy(k));
                    }
                }
                if kind_of(&st) == SFlag::S_IFLNK {
                    // By name, not followed: at worst a racer's own entry gets a time.
                    utimensat(&parent, name, &ts(node.atime_ns), &ts(node.mtime_ns), UtimensatFlags::NoFollowSymlink)?;
                } else {
                    utimensat(
                        nix::fcntl::AT_FDCWD,
                        &link,
                        &ts(node.atime_ns),
                        &ts(node.mtime_ns),
                        UtimensatFlags::FollowSymlink,
                    )?;
                }
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

/// What `apply_fd` sets: owner, permissions (already filtered), xattrs and times.
struct Attrs<'a> {
    uid: u32,
    gid: u32,
    mode: u32,
    atime_ns: i64,
    mtime_ns: i64,
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<'a> Attrs<'a> {
    fn of_node(node: &'a Node, mode: u32) -> Attrs<'a> {
        Attrs {
            uid: node.uid,
            gid: node.gid,
            mode,
            atime_ns: node.atime_ns,
            mtime_ns: node.mtime_ns,
            xattrs: &node.xattrs,
        }
    }
}

/// Give the open entry `f` the owner, mode, xattrs and times `a`. Owner and mode are changed
/// only where they differ (each change is an inode update in the file system's journal; a file
/// created with its final owner and mode needs neither); a change of owner clears setuid and
/// setgid, so the mode is set again after one.
fn apply_fd(f: &File, a: &Attrs<'_>) -> io::Result<()> {
    apply_stated(f, &fstat(f)?, a)
}

/// `apply_fd` with the entry's `fstat` already taken.
fn apply_stated(f: &File, st: &FileStat, a: &Attrs<'_>) -> io::Result<()> {
    use xattr::FileExt;
    let chown = (st.st_uid, st.st_gid) != (a.uid, a.gid);
    if chown {
        nix::unistd::fchown(f.as_fd(), Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)))?;
    }
    if chown || st.st_mode & 0o7777 != a.mode {
        nix::sys::stat::fchmod(f.as_fd(), Mode::from_bits_truncate(a.mode))?;
    }
    // Remove xattrs the snapshot does not have (restoring over an existing directory, an ACL
    // inherited from a directory's default ACL).
    if let Ok(existing) = f.list_xattr() {
        for k in existing {
            if stale_xattr(k.as_bytes(), a.xattrs) {
                let _ = f.remove_xattr(&k);
            }
        }
    }
    for (k, v) in a.xattrs {
        f.set_xattr(OsStr::from_bytes(k), v)?;
    }
    nix::sys::stat::futimens(f.as_fd(), &ts(a.atime_ns), &ts(a.mtime_ns))?;
    Ok(())
}

/// Security labels a Linux security module gives an entry when it is created (SELinux's type
/// and MCS categories from the policy and the restoring process's context, Smack's, AppArmor's).
/// An entry keeps the label it got when the snapshot has none: removing it would leave the file
/// unlabeled, which an enforcing SELinux host (OpenShift's nodes) denies to every pod. A label the
/// snapshot has is set as any other xattr.
const LSM_LABELS: &[&[u8]] = &[
    b"security.selinux",
    b"security.SMACK64",
    b"security.SMACK64EXEC",
    b"security.SMACK64MMAP",
    b"security.SMACK64TRANSMUTE",
    b"security.apparmor",
];

/// The entry's xattr `name` is not in the snapshot's `xattrs` and is to be removed (an LSM's
/// label is kept: `LSM_LABELS`).
fn stale_xattr(name: &[u8], xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    !xattrs.iter().any(|(n, _)| n[..] == *name) && !LSM_LABELS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_a_symlink_inside_the_target() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("link")).unwrap();
        let root = SafeRoot::open(target.path(), false).unwrap();
        assert!(root.create_file(Path::new("link/evil"), 10).is_err());
        assert!(root.mkdir(Path::new("link/sub")).is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing written outside");
        // A symlink where a file goes is replaced, not followed.
        std::os::unix::fs::symlink(outside.path().join("victim"), target.path().join("f")).unwrap();
        root.create_file(Path::new("f"), 3).unwrap();
        assert!(!outside.path().join("victim").exists());
        assert!(std::fs::symlink_metadata(target.path().join("f")).unwrap().is_file());
    }

    /// Deterministic form of the race the e2e racer plays: an entry swapped between creation
    /// and metadata is left alone, whatever was put there.
    #[test]
    fn metadata_goes_only_to_what_this_restore_created() {
        use std::os::unix::fs::PermissionsExt;
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let own = outside.path().join("racer-program");
        std::fs::write(&own, b"x").unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = SafeRoot::open(target.path(), true).unwrap();
        let mut file = Node::new(b"f".to_vec(), NodeType::File);
        file.mode = 0o4755;
        let (_, id) = root.create_file(Path::new("f"), 0).unwrap();
        let mut fifo = Node::new(b"p".to_vec(), NodeType::Fifo);
        fifo.mode = 0o666;
        let fid = root.create_special(Path::new("p"), &fifo).unwrap();
        // Swap both for a hardlink to the racer's program (same file system: the temp dir).
        for name in ["f", "p"] {
            let tmp = target.path().join(".swap");
            std::fs::hard_link(&own, &tmp).unwrap();
            std::fs::rename(&tmp, target.path().join(name)).unwrap();
        }
        assert!(root.set_metadata(Path::new("f"), &file, Some(id)).unwrap_err().to_string().contains("replaced"));
        assert!(root.set_metadata(Path::new("p"), &fifo, Some(fid)).unwrap_err().to_string().contains("replaced"));
        assert!(root.open_file(Path::new("f"), true, Some(id)).is_err(), "content goes nowhere else either");
        assert_eq!(std::fs::metadata(&own).unwrap().permissions().mode() & 0o7777, 0o755);
        // A symlink swapped in is not followed by the special-file path either.
        let fid2 = root.create_special(Path::new("q"), &fifo).unwrap();
        std::fs::remove_file(target.path().join("q")).unwrap();
        std::os::unix::fs::symlink(&own, target.path().join("q")).unwrap();
        assert!(root.set_metadata(Path::new("q"), &fifo, Some(fid2)).is_err());
        assert_eq!(std::fs::metadata(&own).unwrap().permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn an_xattr_missing_from_the_snapshot_is_stale_unless_it_is_a_security_label() {
        let snapshot = vec![(b"user.kept".to_vec(), b"v".to_vec()), (b"security.selinux".to_vec(), b"l".to_vec())];
        assert!(!stale_xattr(b"user.kept", &snapshot));
        assert!(stale_xattr(b"user.other", &snapshot));
        assert!(stale_xattr(b"system.posix_acl_access", &snapshot), "an inherited ACL goes");
        assert!(stale_xattr(b"security.capability", &[]), "a stale file capability goes");
        for label in LSM_LABELS {
            assert!(!stale_xattr(label, &[]), "{}", String::from_utf8_lossy(label));
        }
        assert!(stale_xattr(b"security.selinuxx", &[]), "only the exact names");
    }

    /// On a real file: the label stays, another xattr the snapshot lacks goes. Setting a
    /// `security.` xattr by hand needs root (CI runs as root) and a file system that stores it.
    #[test]
    fn a_restored_file_keeps_its_security_label_when_the_snapshot_has_none() {
        let target = tempfile::tempdir().unwrap();
        let root = SafeRoot::open(target.path(), false).unwrap();
        let (_, id) = root.create_file(Path::new("f"), 0).unwrap();
        let path = target.path().join("f");
        let label = b"system_u:object_r:container_file_t:s0:c1,c2";
        if let Err(e) = xattr::set(&path, "security.selinux", label) {
            repo_format::testing::skip(&format!("cannot set security.selinux here ({e}): needs root"));
            return;
        }
        xattr::set(&path, "user.stale", b"x").unwrap();
        let mut node = Node::new(b"f".to_vec(), NodeType::File);
        node.mode = 0o644;
        node.xattrs = vec![(b"user.kept".to_vec(), b"v".to_vec())];
        root.set_metadata(Path::new("f"), &node, Some(id)).unwrap();
        assert_eq!(xattr::get(&path, "security.selinux").unwrap().as_deref(), Some(&label[..]));
        assert_eq!(xattr::get(&path, "user.stale").unwrap(), None);
        assert_eq!(xattr::get(&path, "user.kept").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn rejects_dot_dot() {
        let target = tempfile::tempdir().unwrap();
        let root = SafeRoot::open(target.path(), false).unwrap();
        assert!(root.dir(Path::new("../x")).is_err());
    }
}
