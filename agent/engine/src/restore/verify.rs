//! `restore --verify`: re-read every restored file and check it against the snapshot — each
//! data segment must hash (keyed) to its blob id, each zero segment must read as zeros, and the
//! file must have exactly the snapshot's length.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use repo_format::{MasterKey, Segment};

use std::collections::HashSet;

use super::RestorePlan;
use crate::report::{EntryError, EntryErrorKind};
use crate::safefs::{FileId, SafeRoot};

/// Returns the number of files checked and one line per mismatch. Files that were not created
/// or whose content already failed (`failed`) are not checked again.
pub(super) async fn verify(
    master: MasterKey,
    root: Arc<SafeRoot>,
    plan: Arc<RestorePlan>,
    ids: Arc<Vec<Option<FileId>>>,
    failed: Arc<HashSet<usize>>,
) -> (u64, Vec<EntryError>) {
    tokio::task::spawn_blocking(move || {
        let next = AtomicUsize::new(0);
        let checked = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let errors = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        let Some(f) = plan.files.get(i) else { break };
                        let Some(id) = ids[i].filter(|_| !failed.contains(&i)) else { continue };
                        checked.fetch_add(1, Relaxed);
                        if let Err(e) = check(&master, &root, f, id) {
                            errors.lock().expect("lock").push(EntryError::new(
                                EntryErrorKind::Verify,
                                f.rel,
                                format!("verify failed: {e}"),
                            ));
                        }
                    }
                });
            }
        });
        (checked.into_inner() as u64, errors.into_inner().expect("lock"))
    })
    .await
    .expect("verify task")
}

/// Do bytes `off .. off+len` of `f` read as zeros? Holes (found with SEEK_DATA) are skipped
/// without reading, so a 16 GiB sparse disk verifies by its data.
pub(crate) fn zeros_at(f: &std::fs::File, off: u64, len: u64) -> std::io::Result<bool> {
    use nix::unistd::{Whence, lseek};
    let end = off + len;
    let mut pos = off;
    let mut buf = vec![0u8; (1 << 20).min(len) as usize];
    while pos < end {
        let data = match lseek(f, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => return Ok(true),
            // No SEEK_DATA (a block device, some file systems): read everything.
            Err(_) => pos,
        };
        if data >= end {
            return Ok(true);
        }
        let stop = lseek(f, data as i64, Whence::SeekHole).map(|h| h as u64).unwrap_or(end).clamp(data + 1, end);
        let mut p = data;
        while p < stop {
            let n = (stop - p).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], p)?;
            if !repo_format::is_zero(&buf[..n]) {
                return Ok(false);
            }
            p += n as u64;
        }
        pos = stop;
    }
    Ok(true)
}

fn check(master: &MasterKey, root: &SafeRoot, f: super::FilePlan<'_>, id: FileId) -> Result<(), String> {
    let file = root.open_file(f.rel, false, Some(id)).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != f.meta.size {
        return Err(format!("length {len}, snapshot says {}", f.meta.size));
    }
    let mut buf = Vec::new();
    let mut off = 0u64;
    for s in f.segments {
        match s {
            Segment::Blob { id, len } => {
                buf.resize(*len as usize, 0);
                file.read_exact_at(&mut buf, off).map_err(|e| format!("at {off}: {e}"))?;
                if master.blob_id(&buf) != *id {
                    return Err(format!("content differs at offset {off}"));
                }
            }
            _ => {
                if !zeros_at(&file, off, s.len()).map_err(|e| format!("at {off}: {e}"))? {
                    return Err(format!("non-zero bytes in a hole near offset {off}"));
                }
            }
        }
        off += s.len();
    }
    Ok(())
}
