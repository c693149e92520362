//! Two jobs in one process sharing one memory budget stay within it: the chunk bytes they hold
//! in flight never pass the budget, and the process's peak resident memory grows by about the
//! budget, not by each job's queue. (Its own test binary: the peak is process-wide.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use common::*;
use ferry_engine::job::{Limits, MemoryBudget};
use ferry_engine::{Job, backup};

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Two backups at once into a fresh repository, sharing a budget of `budget` bytes: the peak
/// RSS growth (MiB) and the most chunk bytes seen in flight.
async fn pair(root: &std::path::Path, trees: [&std::path::Path; 2], budget: u64) -> (u64, u64) {
    let repo_dir = root.join(format!("repo-{budget}"));
    let repo = new_repo(&repo_dir).await;
    repo.load_index().await.unwrap();
    // Without the budget each job could hold 64 queued chunks (about 64 MiB at the 1 MiB
    // average chunk) plus one per worker.
    let shared = MemoryBudget::new(budget);
    let limits = Limits { threads: 2, chunk_queue: 64, memory: Some(shared.clone()), ..Limits::default() };
    let (peak_used, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let (shared, peak_used, done) = (shared.clone(), peak_used.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Relaxed) {
                peak_used.fetch_max(shared.used(), Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    // Reset the peak (VmHWM) to the current resident size, then run both jobs at once.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = status_kib("VmRSS:");
    let (ja, jb) = (Job::new().with_limits(limits.clone()), Job::new().with_limits(limits));
    let (ra, rb) = tokio::join!(
        backup::run(repo.clone(), config(trees[0], "a"), &ja),
        backup::run(repo.clone(), config(trees[1], "b"), &jb)
    );
    ra.unwrap();
    rb.unwrap();
    let grown_mib = (status_kib("VmHWM:") - base) / 1024;
    done.store(true, Relaxed);
    sampler.join().unwrap();
    let peak_used = peak_used.load(Relaxed);
    eprintln!("budget {} MiB: peak in flight {} MiB, peak RSS growth {grown_mib} MiB", budget >> 20, peak_used >> 20);
    assert!(peak_used <= budget, "in flight {peak_used} > budget {budget}");
    assert!(peak_used >= budget / 2, "the budget was never contended ({peak_used} bytes): the test proves nothing");
    (grown_mib, peak_used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_sharing_a_budget_stay_within_it() {
    ferry_engine::tune_malloc();
    let tmp = tempfile::tempdir().unwrap();
    let a = random_tree(&tmp.path().join("a"), 16, 4 << 20);
    let b = random_tree(&tmp.path().join("b"), 16, 4 << 20);
    // What two jobs cost besides chunks in flight (open packs, compression contexts, the
    // chunkers' buffers, recycled buffers), then the same with 32 MiB more budget: memory must
    // grow by the budget, not by the jobs' queues (2 × 64 chunks).
    let (small, _) = pair(tmp.path(), [&a, &b], 2 << 20).await;
    let (large, _) = pair(tmp.path(), [&a, &b], 34 << 20).await;
    let extra = large.saturating_sub(small);
    // Besides the 32 MiB, a larger budget lets each job recycle its full set of idle buffers
    // (threads + 2 of up to 2 MiB: 8 MiB per job); peak RSS itself varies by a few MiB between
    // runs. Without the budget the queues alone would hold about 128 MiB more.
    assert!(extra <= 32 + 16 + 8, "32 MiB more budget cost {extra} MiB more memory ({small} → {large} MiB)");
    assert!(small <= 64, "two jobs with a 2 MiB budget grew by {small} MiB");
}
