//! Restoring a disk snapshot to a block device or an image file.
//!
//! Only chunks holding data are written. Zero ranges stay holes in a (new) image file; on a
//! device they are zeroed with `fallocate(ZERO_RANGE)` (BLKZEROOUT's file-level form, which
//! thin devices turn into discards) unless `--assume-zeroed` says the device is fresh. A device
//! smaller than the snapshot or mounted somewhere is refused before anything is written.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FallocateFlags, fallocate};
use repo_format::{Content, Repository, Segment, Snapshot};

use super::Disk;
use crate::progress::Counters;
use crate::restore::content::{self, Targets};

/// Options of a disk restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskRestoreOptions {
    /// The device reads as zeros already: do not zero the ranges that hold no data.
    pub assume_zeroed: bool,
    /// Write to a device even if it is mounted.
    pub force: bool,
    pub verify: bool,
}

/// What was done.
#[derive(Debug, Default)]
pub struct DiskOutcome {
    pub target: PathBuf,
    pub size: u64,
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub errors: Vec<String>,
    pub verified: bool,
}

struct DiskTarget {
    file: File,
    segments: Vec<Segment>,
    name: String,
}

impl Targets for DiskTarget {
    fn count(&self) -> usize {
        1
    }
    fn segments(&self, _: usize) -> &[Segment] {
        &self.segments
    }
    fn open(&self, _: usize) -> std::io::Result<File> {
        self.file.try_clone()
    }
    fn name(&self, _: usize) -> String {
        self.name.clone()
    }
}

/// Is the block device `rdev` mounted (per /proc/self/mountinfo)?
fn mounted(rdev: u64) -> Result<bool> {
    let want = format!("{}:{}", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info.lines().any(|l| l.split_whitespace().nth(2) == Some(want.as_str())))
}

pub async fn run(
    repo: Arc<Repository>,
    snap: &Snapshot,
    target: &Path,
    opts: DiskRestoreOptions,
    counters: Arc<Counters>,
) -> Result<DiskOutcome> {
    let tree = repo.read_tree(&snap.tree).await?;
    let [node] = tree.nodes.as_slice() else {
        bail!("this snapshot is not a disk snapshot (its root has {} entries)", tree.nodes.len())
    };
    let Content::Segments(segs) = &node.content else { bail!("the disk in this snapshot has no content") };
    let segments = crate::restore::expand(&repo, segs).await?;
    let size: u64 = segments.iter().map(Segment::len).sum();
    if size != node.size {
        bail!(
            "the snapshot's disk content covers {size} bytes but the disk is {} bytes: the snapshot is damaged",
            node.size
        );
    }
    let mut path = target.to_path_buf();
    if path.is_dir() {
        if !node.has_safe_name() {
            bail!("the snapshot's disk name is unsafe; give a file or device path as --target");
        }
        path = path.join(crate::fsmeta::path_of(&node.name));
    }
    let is_device = std::fs::metadata(&path).map(|m| m.file_type().is_block_device()).unwrap_or(false);
    let file = if is_device {
        let md = std::fs::metadata(&path)?;
        if !opts.force && mounted(md.rdev())? {
            bail!("{} is mounted: unmount it first, or pass --force to overwrite it anyway", path.display());
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let dev = Disk::from_file(f, &path)?;
        if dev.size < size {
            bail!(
                "{} holds {} bytes but the snapshot's disk is {size} bytes: use a device at least that large",
                path.display(),
                dev.size
            );
        }
        dev.file
    } else {
        // A new file: unlink what is there (never write through an existing link), size it,
        // and let every zero range stay a hole.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => bail!("{} is a directory", path.display()),
            Ok(_) => std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?,
            Err(_) => {}
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.set_len(size).with_context(|| format!("sizing {}", path.display()))?;
        f
    };
    counters.files_total.store(1, std::sync::atomic::Ordering::Relaxed);
    counters.bytes_total.store(size, std::sync::atomic::Ordering::Relaxed);
    let name = path.display().to_string();
    let target_set = Arc::new(DiskTarget { file: file.try_clone()?, segments, name: name.clone() });
    let (written, mut errors) = content::write_all(repo.clone(), target_set.clone(), &HashSet::new(), counters).await;
    let mut zeroed = 0;
    if is_device && !opts.assume_zeroed {
        let mut off = 0u64;
        for s in &target_set.segments {
            if let Segment::Zero { len } = s {
                zero_range(&file, off, *len).with_context(|| format!("zeroing {name} at {off}"))?;
                zeroed += len;
            }
            off += s.len();
        }
    }
    file.sync_all().with_context(|| format!("flushing {}", path.display()))?;
    if !is_device {
        let _ = nix::sys::stat::futimens(
            &file,
            &nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_nanos(node.atime_ns.max(0) as u64)),
            &nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_nanos(node.mtime_ns.max(0) as u64)),
        );
        let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(node.mode));
    }
    let verified = if opts.verify {
        match verify(repo.master_key(), &file, &target_set.segments) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("{name}: verify failed: {e}"));
                false
            }
        }
    } else {
        false
    };
    Ok(DiskOutcome { target: path, size, bytes_written: written, bytes_zeroed: zeroed, errors, verified })
}

/// Zero `len` bytes at `off` on a device: ZERO_RANGE, or plain writes where unsupported.
fn zero_range(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    if fallocate(f, flags, off as i64, len as i64).is_ok() {
        return Ok(());
    }
    let zeros = vec![0u8; (1 << 20).min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Re-read the disk and check every chunk against the snapshot (holes are not read).
fn verify(master: &repo_format::MasterKey, f: &File, segs: &[Segment]) -> Result<()> {
    let mut buf = Vec::new();
    let mut off = 0u64;
    for s in segs {
        match s {
            Segment::Blob { id, len } => {
                buf.resize(*len as usize, 0);
                f.read_exact_at(&mut buf, off)?;
                if master.blob_id(&buf) != *id {
                    bail!("content differs at offset {off}");
                }
            }
            _ => {
                if !crate::restore::verify::zeros_at(f, off, s.len())? {
                    bail!("non-zero bytes where the snapshot has zeros, near offset {off}");
                }
            }
        }
        off += s.len();
    }
    Ok(())
}
