//! Restoring a disk snapshot to a block device or an image file.
//!
//! Only chunks holding data are written. Zero ranges stay holes in a (new) image file; on a
//! device they are zeroed with `fallocate(ZERO_RANGE)` (BLKZEROOUT's file-level form, which
//! thin devices turn into discards) unless `--assume-zeroed` says the device is fresh. A device
//! smaller than the snapshot is refused before anything is written.
//!
//! Where it goes is decided without trusting anything inside a directory: a block device is
//! written only when it is `--target` itself (named by the user; a symlink the user names, such
//! as `/dev/disk/by-id/…`, is followed), and it is opened with `O_EXCL`, which the kernel refuses
//! for a device that is mounted or held (a mounted partition, LVM, device-mapper) — `--force`
//! drops that. A directory target gets a new image file created inside it with
//! `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` from the directory's descriptor (`SafeRoot`), so a
//! symlink planted there — by an earlier restore or by the volume's workload — is replaced,
//! never followed to a device or file elsewhere.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use nix::fcntl::{FallocateFlags, fallocate};
use repo_format::{Content, Repository, Segment, Snapshot};

use super::Disk;
use crate::job::Job;
use crate::report::{EntryError, EntryErrorKind};
use crate::restore::content::{self, Targets};
use crate::safefs::SafeRoot;

/// The segment list of a disk may take what its size justifies: one 48-byte segment per 4 KiB
/// (a fixed chunk is far larger), and at least 64 MiB.
pub(crate) fn disk_plan_bytes(size: u64) -> u64 {
    (size / 4096 * 48).max(64 << 20)
}

/// Options of a disk restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskRestoreOptions {
    /// The device reads as zeros already: do not zero the ranges that hold no data.
    pub assume_zeroed: bool,
    /// Write to a device even if it is mounted or held (no `O_EXCL`).
    pub force: bool,
    pub verify: bool,
    /// Keep setuid/setgid bits of an image file.
    pub keep_setuid: bool,
}

/// What was done (serializable: what the agent copies into a status).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct DiskOutcome {
    pub target: PathBuf,
    pub size: u64,
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub errors: Vec<EntryError>,
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

/// Open the device `path` (the user's `--target`) for writing: exclusively unless `force`.
fn open_device(path: &Path, force: bool) -> Result<File> {
    let flags = if force { libc::O_CLOEXEC } else { libc::O_EXCL | libc::O_CLOEXEC };
    let f = std::fs::OpenOptions::new().read(true).write(true).custom_flags(flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!(
                "{} is in use (mounted, or held by a mounted partition, LVM or device-mapper): unmount or release \
                 it first, or pass --force to overwrite it anyway",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("opening {}", path.display()))
        }
    })?;
    if !f.metadata()?.file_type().is_block_device() {
        bail!("{} is not a block device", path.display());
    }
    Ok(f)
}

/// Where the disk goes: (file, is a device, path for messages).
fn open_target(target: &Path, node: &repo_format::Node, size: u64, force: bool) -> Result<(File, bool, PathBuf)> {
    let new_file_in = |dir: &Path, name: &Path| -> Result<(File, bool, PathBuf)> {
        let root = SafeRoot::open(dir, false).with_context(|| format!("opening {}", dir.display()))?;
        let (f, _) = root.create_file(name, size).with_context(|| format!("creating {}", dir.join(name).display()))?;
        Ok((f, false, dir.join(name)))
    };
    let in_dir = |dir: &Path| {
        if !node.has_safe_name() {
            bail!("the snapshot's disk name is unsafe; give a file or device path as --target");
        }
        new_file_in(dir, crate::fsmeta::path_of(&node.name))
    };
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_block_device() => Ok((open_device(target, force)?, true, target.to_path_buf())),
        Ok(m) if m.is_dir() => in_dir(target),
        Ok(m) if m.file_type().is_symlink() => {
            // The user named this link: follow it, but only to a device or a directory.
            let real = std::fs::metadata(target).with_context(|| format!("following {}", target.display()))?;
            if real.file_type().is_block_device() {
                Ok((open_device(target, force)?, true, target.to_path_buf()))
            } else if real.is_dir() {
                in_dir(target)
            } else {
                bail!(
                    "{} is a symlink to something that is neither a block device nor a directory: name the image file itself",
                    target.display()
                )
            }
        }
        Ok(m) if !m.is_file() => {
            bail!("{} is neither a block device, a directory nor a regular file", target.display())
        }
        Ok(_) | Err(_) => {
            // A new image file (what is there is replaced, never written through).
            let (Some(name), parent) = (target.file_name(), target.parent().filter(|p| !p.as_os_str().is_empty()))
            else {
                bail!("{} names no file", target.display())
            };
            new_file_in(parent.unwrap_or(Path::new(".")), Path::new(name))
        }
    }
}

pub async fn run(
    repo: Arc<Repository>,
    snap: &Snapshot,
    target: &Path,
    opts: DiskRestoreOptions,
    job: &Job,
) -> Result<DiskOutcome> {
    let counters = &job.progress;
    let tree = repo.read_tree(&snap.tree).await?;
    let [node] = tree.nodes.as_slice() else {
        bail!("this snapshot is not a disk snapshot (its root has {} entries)", tree.nodes.len())
    };
    let Content::Segments(segs) = &node.content else { bail!("the disk in this snapshot has no content") };
    let mut budget = crate::restore::Budget::new(disk_plan_bytes(node.size));
    let segments = crate::restore::expand(&repo, segs, &mut budget).await?;
    let size: u64 = segments.iter().map(Segment::len).sum();
    if size != node.size {
        bail!(
            "the snapshot's disk content covers {size} bytes but the disk is {} bytes: the snapshot is damaged",
            node.size
        );
    }
    content::select_index(&repo, &segments).await.context("loading the index entries of the disk's content")?;
    let (file, is_device, path) = open_target(target, node, size, opts.force)?;
    if is_device {
        let dev_size = Disk::from_file(file.try_clone()?, &path)?.size;
        if dev_size < size {
            bail!(
                "{} holds {dev_size} bytes but the snapshot's disk is {size} bytes: use a device at least that large",
                path.display()
            );
        }
    }
    counters.files_total.store(1, std::sync::atomic::Ordering::Relaxed);
    counters.bytes_total.store(size, std::sync::atomic::Ordering::Relaxed);
    let name = path.display().to_string();
    let target_set = Arc::new(DiskTarget { file: file.try_clone()?, segments, name: name.clone() });
    let written = content::write_all(repo.clone(), target_set.clone(), &HashSet::new(), job).await;
    let (written, mut errors) = (written.bytes, written.errors);
    if job.cancel.is_cancelled() {
        // Nothing incomplete may look restored: an image is emptied; a device is left as is.
        if !is_device {
            let _ = file.set_len(0);
        }
        return Err(crate::job::Cancelled.into());
    }
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
    if !is_device && !errors.is_empty() {
        // Nothing incomplete may look restored.
        match file.set_len(0) {
            Ok(()) => errors.push(EntryError::new(
                EntryErrorKind::Incomplete,
                &name,
                "content incomplete: the image was emptied",
            )),
            Err(e) => errors.push(EntryError::new(
                EntryErrorKind::Incomplete,
                &name,
                format!("content incomplete, and emptying it failed: {e}"),
            )),
        }
    }
    if !is_device && errors.is_empty() {
        // On the descriptor created above, never by path.
        let mode = crate::safefs::restored_mode(node, opts.keep_setuid);
        let _ = nix::sys::stat::fchmod(&file, nix::sys::stat::Mode::from_bits_truncate(mode));
        let _ = nix::sys::stat::futimens(
            &file,
            &nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_nanos(node.atime_ns.max(0) as u64)),
            &nix::sys::time::TimeSpec::from_duration(std::time::Duration::from_nanos(node.mtime_ns.max(0) as u64)),
        );
    }
    let verified = if opts.verify {
        match verify(repo.master_key(), &file, &target_set.segments) {
            Ok(()) => true,
            Err(e) => {
                errors.push(EntryError::new(EntryErrorKind::Verify, &name, format!("verify failed: {e}")));
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
