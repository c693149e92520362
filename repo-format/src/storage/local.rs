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
//! Who does what:
//! * small objects (`create`, create-only): object_store's `LocalFileSystem` built
//!   `with_fsync(true)` — it writes `<name>#<n>`, `fsync`s it, hard-links it to `<name>` (the
//!   link fails if `<name>` exists: create-only, atomically, against any other writer),
//!   `fsync`s the directory and unlinks the staging name; directories it creates are `fsync`ed
//!   up to the first one that existed;
//! * packs (`upload_file`): `publish_file` here (a kernel copy from the writer's temporary file,
//!   then rename: packs are content-named, so replacing one with the same bytes is harmless);
//! * removals and the repository's own folder: `remove` and `create_dir` here.
//!
//! A crash between the steps may leave a temporary name behind (`.upload-*` or `<name>#<n>`):
//! listings ignore every name that is not exactly an object's (`layout::id_of`), reads never
//! see them, and a failed write removes its own.

use std::fs::File;
use std::io;
use std::path::Path;

/// Prefix of a pack's temporary name while it is copied into place.
pub(crate) const UPLOAD_PREFIX: &str = ".upload-";

/// `fsync` a directory: its entries (names created, renamed or removed in it) become durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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

/// Copy `src` (positioned at its start) to `dest` so that `dest` appears only complete and
/// durable: a temporary file in `dest`'s directory, `fsync`, rename over `dest`, `fsync` of the
/// directory. The kernel copies (copy_file_range): no user memory. On failure the temporary
/// file is removed and `dest` is untouched.
pub(crate) fn publish_file(mut src: File, dest: &Path) -> io::Result<()> {
    let dir = dest.parent().expect("object paths have a parent");
    create_dir(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(UPLOAD_PREFIX).tempfile_in(dir)?;
    io::copy(&mut src, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Remove `path` and make the removal durable (`fsync` of its directory).
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    sync_dir(path.parent().expect("object paths have a parent"))
}
