//! Durable writes to a local-directory repository.
//!
//! Contract (as restic's local backend): an object is visible under its final name only after
//! its bytes and the directory entry naming it are on stable storage, so a power loss leaves
//! each object whole under its name or absent — never empty or truncated, and never missing
//! while a later object that refers to it (an index naming a pack, a snapshot naming an index)
//! survives, because each write is durable before the next one starts.
//!
//! The protocol of every write: the bytes go to a temporary name in the object's own directory
//! (the same file system, so the rename below is atomic), the file is `fsync`ed, it is renamed
//! or linked to its final name, then the directory is `fsync`ed. A directory made on demand
//! (`data/ab/`) has its parent `fsync`ed before anything is written into it. A removal
//! `fsync`s the directory too, so a removed object does not come back.
//!
//! A local directory's objects are read here too (`read_whole`, `read_at`): only regular files,
//! opened without waiting (object_store's `LocalFileSystem` opens a FIFO planted under a pack's
//! name and waits forever for a writer), and ranges into a caller's buffer (object_store's
//! zeroes a fresh buffer for each).
//!
//! Every write to a local directory goes through here (object_store's `LocalFileSystem` below
//! `ObjectStorage` only reads and lists):
//! * small objects (`create_new`, create-only): published by a hard link from the temporary
//!   name, which fails if the object exists — create-only against any other writer, atomically
//!   (as object_store did before); the temporary name is unlinked after the directory's `fsync`;
//! * packs (`publish_file`): a pack the writer spooled without a name on the repository's own
//!   file system (`Storage::spool_dir`) is `fsync`ed and linked under its name, no copy (a
//!   crash before leaves nothing: the file has no name); otherwise a kernel copy from the
//!   writer's temporary file to a temporary name, then a rename (packs are content-named, so
//!   replacing one with the same bytes is harmless);
//! * removals (`remove`) and folders (`create_dir`, also for the repository's own folder).
//!
//! A crash between the steps may leave a temporary name (`.upload-*`) behind: listings ignore
//! every name that is not exactly an object's (`layout::id_of`), reads never see it, and a
//! write that fails removes its own.
//!
//! As restic does, an `fsync` that the file system does not support (`EINVAL`, `ENOTSUP`: some
//! network and FUSE file systems, for directories) is not an error: there the promise is what
//! the file system gives. Every other failure to sync fails the write.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::errno::Errno;

/// Prefix of an object's temporary name while it is written.
pub(crate) const UPLOAD_PREFIX: &str = ".upload-";

/// Open the file at `path` for reading if it is a regular file; it and its length. O_NONBLOCK: opening a FIFO for
/// reading would wait for a writer (a FIFO or a device planted in a repository someone else
/// controls must not hang a reader); a regular file ignores the flag.
fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    Ok((f, md.len()))
}

/// The whole file at `path`, or its first `limit + 1` bytes if it is longer (the caller refuses
/// it: never more is buffered). Only a regular file is read (`open_regular`).
pub(crate) fn read_whole(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let (f, len) = open_regular(path)?;
    let size = len.min(limit.saturating_add(1));
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(usize::MAX));
    f.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Read `len` bytes at `offset` of the file at `path` into `buf` (its bytes replaced; only
/// memory beyond its current length is zeroed first, so a reused buffer is read into as it is).
/// A file shorter than the range is `UnexpectedEof`; only a regular file is read
/// (`open_regular`).
pub(crate) fn read_at(path: &Path, offset: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too long"))?;
    let (f, _) = open_regular(path)?;
    // Exactly: a buffer kept for reuse up to some size should not double past it.
    buf.reserve_exact(len.saturating_sub(buf.len()));
    buf.resize(len, 0);
    f.read_exact_at(buf, offset)
}

/// `fsync` `f`; unsupported by the file system (`EINVAL`, `ENOTSUP`) counts as done.
fn sync(f: &File) -> io::Result<()> {
    match f.sync_all() {
        Err(e) if matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::EINVAL | Errno::ENOTSUP)) => Ok(()),
        r => r,
    }
}

/// `fsync` a directory: its entries (names created, renamed or removed in it) become durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    sync(&File::open(dir)?)
}

/// Create `dir` and any missing ancestors; each directory made here is made durable by an
/// `fsync` of its parent, and the new directory itself is `fsync`ed (an empty directory's
/// inode). Existing directories are left as they are.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another writer made it meanwhile; it syncs its parent itself, but not necessarily
        // before we return, so sync it here too.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    sync_dir(dir)?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// Store `data` as `dest` if no file has that name (`AlreadyExists` otherwise, `dest`
/// untouched): a temporary file in `dest`'s directory, `fsync`, hard link to `dest`, `fsync` of
/// the directory, unlink of the temporary name. On failure the temporary file is removed.
/// (A rename cannot refuse to replace portably; `renameat2(RENAME_NOREPLACE)` is not supported
/// by NFS, where links are.)
pub(crate) fn create_new(dest: &Path, data: &[u8]) -> io::Result<()> {
    let dir = dest.parent().expect("object paths have a parent");
    create_dir(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(UPLOAD_PREFIX).tempfile_in(dir)?;
    io::Write::write_all(tmp.as_file_mut(), data)?;
    sync(tmp.as_file())?;
    std::fs::hard_link(tmp.path(), dest)?;
    sync_dir(dir)?;
    // The object is stored: a temporary name that could not be unlinked is only a leftover.
    let _ = tmp.close();
    Ok(())
}

/// Store the file `src` (positioned at its start) as `dest` so that `dest` appears only
/// complete and durable. A file on `dest`'s file system without a name (a pack spooled in the
/// repository's `spool_dir`, `O_TMPFILE`) is `fsync`ed and linked under `dest`: the bytes are
/// not copied. Any other (another file system, a name taken, no `/proc`): a temporary file in
/// `dest`'s directory that the kernel fills (copy_file_range, no user memory), `fsync`, rename
/// over `dest`. Then the directory is `fsync`ed. On failure nothing is left under `dest`'s
/// directory and `dest` is untouched.
pub(crate) fn publish_file(mut src: File, dest: &Path) -> io::Result<()> {
    let dir = dest.parent().expect("object paths have a parent");
    create_dir(dir)?;
    if link_unnamed(&src, dir, dest)? {
        return sync_dir(dir);
    }
    let mut tmp = tempfile::Builder::new().prefix(UPLOAD_PREFIX).tempfile_in(dir)?;
    io::copy(&mut src, tmp.as_file_mut())?;
    sync(tmp.as_file())?;
    tmp.persist(dest).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Give `src` the name `dest` if it has no name yet and lies on `dir`'s file system: its bytes
/// made durable first, then a link through `/proc/self/fd` (`AT_EMPTY_PATH` would need
/// `CAP_DAC_READ_SEARCH`). False where that does not apply or the link is refused (the caller
/// copies instead); an error only from the `fsync`.
fn link_unnamed(src: &File, dir: &Path, dest: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(dir_meta)) = (src.metadata(), std::fs::metadata(dir)) else { return Ok(false) };
    if meta.nlink() != 0 || meta.dev() != dir_meta.dev() {
        return Ok(false);
    }
    sync(src)?;
    let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(src));
    let (cwd, follow) = (nix::fcntl::AT_FDCWD, nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW);
    Ok(nix::unistd::linkat(cwd, fd.as_str(), cwd, dest, follow).is_ok())
}

/// Remove `path` and make the removal durable (`fsync` of its directory).
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    sync_dir(path.parent().expect("object paths have a parent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_read_from_regular_files_only_and_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (file, fifo) = (dir.path().join("pack"), dir.path().join("fifo"));
        std::fs::write(&file, b"0123456789").unwrap();
        let mut buf = vec![9u8; 32];
        read_at(&file, 2, 3, &mut buf).unwrap();
        assert_eq!(buf, b"234");
        assert_eq!(read_at(&file, 8, 3, &mut buf).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Without O_NONBLOCK this open blocks forever (no writer ever comes).
        assert_eq!(read_at(&fifo, 0, 3, &mut buf).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(read_at(dir.path(), 0, 3, &mut buf).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(read_whole(&file, 10).unwrap(), b"0123456789");
        assert_eq!(read_whole(&file, 4).unwrap(), b"01234", "one byte over the limit, no more");
        assert_eq!(read_whole(&fifo, 10).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    /// A file system that cannot sync answers `EINVAL` (as `fsync` of a pipe does): that is
    /// not an error.
    #[test]
    fn an_unsupported_sync_is_not_an_error() {
        let (read, _write) = nix::unistd::pipe().unwrap();
        let f = std::fs::File::from(read);
        assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(nix::libc::EINVAL));
        super::sync(&f).unwrap();
    }
}
