//! `restore --verify`: re-read every restored file and check it against the snapshot — each
//! data segment must hash (keyed) to its blob id, each zero segment must read as zeros, and the
//! file must have exactly the snapshot's length.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use repo_format::{MasterKey, Segment};

use super::RestorePlan;
use crate::safefs::SafeRoot;

/// Returns the number of files checked and one line per mismatch.
pub(super) async fn verify(master: MasterKey, root: Arc<SafeRoot>, plan: Arc<RestorePlan>) -> (u64, Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let errors = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        let Some(f) = plan.files.get(i) else { break };
                        if let Err(e) = check(&master, &root, f) {
                            errors.lock().expect("lock").push(format!("{}: verify failed: {e}", f.rel.display()));
                        }
                    }
                });
            }
        });
        (plan.files.len() as u64, errors.into_inner().expect("lock"))
    })
    .await
    .expect("verify task")
}

fn check(master: &MasterKey, root: &SafeRoot, f: &super::FilePlan) -> Result<(), String> {
    let file = root.open_file(&f.rel, false).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != f.node.size {
        return Err(format!("length {len}, snapshot says {}", f.node.size));
    }
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut off = 0u64;
    for s in &f.segments {
        match s {
            Segment::Blob { id, len } => {
                buf.resize(*len as usize, 0);
                r.read_exact(&mut buf).map_err(|e| format!("at {off}: {e}"))?;
                if master.blob_id(&buf) != *id {
                    return Err(format!("content differs at offset {off}"));
                }
            }
            _ => {
                // Zero runs can be huge (sparse disks): check them a MiB at a time.
                let mut left = s.len();
                while left > 0 {
                    let n = left.min(1 << 20) as usize;
                    buf.resize(n, 0);
                    r.read_exact(&mut buf).map_err(|e| format!("at {off}: {e}"))?;
                    if !repo_format::is_zero(&buf) {
                        return Err(format!("non-zero bytes in a hole near offset {off}"));
                    }
                    left -= n as u64;
                }
            }
        }
        off += s.len();
    }
    Ok(())
}
