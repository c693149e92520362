//! Disks: block devices and raw disk images (KubeVirt `disk.img`) as fixed-size aligned chunks.
//!
//! A disk snapshot's root tree holds one file node whose content is the disk: chunk i covers
//! bytes `i·C .. (i+1)·C` (C = the repository's fixed chunk size), all-zero chunks and holes are
//! zero segments that store and read nothing. With a changed-block list (CSI SnapshotMetadata
//! `GetMetadataDelta`) only chunks touching a listed range are read, every other chunk is taken
//! from the parent snapshot; with an allocated-block list (`GetMetadataAllocated`) chunks outside
//! it are zeros without being read. Snapshots are tagged `volume-mode=block`, `device-size`,
//! `chunk-size` and, for images, `image`.

pub mod backup;
mod parent;
pub mod ranges;
pub mod restore;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// Tag values that mark a disk snapshot.
pub const MODE_TAG: &str = "volume-mode";
pub const MODE_BLOCK: &str = "block";

/// An opened disk source or target.
#[derive(Debug)]
pub struct Disk {
    pub file: File,
    pub size: u64,
    pub is_device: bool,
}

impl Disk {
    /// Open for reading (no atime update where permitted). With `no_follow`, a symlink at
    /// `path` is refused (an image inside a volume its workload writes, such as a KubeVirt
    /// `disk.img`, must not lead the backup to any other file of the node).
    pub fn open_read(path: &Path, no_follow: bool) -> Result<Disk> {
        let nofollow = if no_follow { libc::O_NOFOLLOW } else { 0 };
        let open = |flags: i32| std::fs::OpenOptions::new().read(true).custom_flags(flags | nofollow).open(path);
        let file = open(libc::O_NOATIME).or_else(|_| open(0)).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!("{} is a symlink: refused (name the disk itself)", path.display()),
            _ => anyhow::Error::new(e).context(format!("opening the disk {}", path.display())),
        })?;
        Disk::from_file(file, path)
    }

    fn from_file(mut file: File, path: &Path) -> Result<Disk> {
        let md = file.metadata().with_context(|| format!("{}", path.display()))?;
        let is_device = md.file_type().is_block_device();
        if !is_device && !md.is_file() {
            anyhow::bail!("{} is neither a block device nor a regular file", path.display());
        }
        let size = file.seek(SeekFrom::End(0)).with_context(|| format!("finding the size of {}", path.display()))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Disk { file, size, is_device })
    }
}

/// Is `path` something `backup` should treat as a disk without being told: a block device, or a
/// regular file named like a raw disk image (`*.img`, `*.raw`)?
pub fn looks_like_disk(path: &Path) -> bool {
    let Ok(md) = std::fs::metadata(path) else { return false };
    if md.file_type().is_block_device() {
        return true;
    }
    md.is_file() && path.extension().is_some_and(|e| e == "img" || e == "raw")
}
