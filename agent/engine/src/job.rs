//! What every engine call runs under: a cancellation token, progress counters and limits.
//!
//! Cancellation is cooperative: the engines check the token between files and between chunks.
//! A cancelled backup stops reading, still finishes its writer (so what it uploaded is indexed
//! and the next backup reuses it), writes no snapshot and returns `Cancelled`. A cancelled
//! restore stops between ranges and files.
//!
//! Limits bound a job's threads and the chunk bytes it holds in flight. A `MemoryBudget` can be
//! shared by several jobs in one process (the agent runs many): a chunk waits for budget
//! before it is queued for the workers and returns it when its blob is saved. An
//! `UploadBudget` does the same for the packs being uploaded (each is mapped while it is sent).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::progress::Counters;

/// The error a cancelled job returns (inside `anyhow::Error`; find it with `downcast_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// A token shared by a job and whoever may cancel it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }

    /// Resolves when cancelled.
    pub async fn cancelled(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            n.await;
        }
    }
}

/// Bytes of chunk data in flight, shared by the jobs given the same budget.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl MemoryBudget {
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(MemoryBudget { total: total.max(1), used: Mutex::new(0), freed: Condvar::new() })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `n` bytes, waiting while they do not fit. A request above the total waits until
    /// nothing else is held and then takes the whole budget (so one huge chunk cannot deadlock).
    pub fn acquire(self: &Arc<Self>, n: u64) -> Permit {
        let n = n.min(self.total);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + n > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
        Permit { budget: self.clone(), n }
    }
}

/// Bytes held from a `MemoryBudget`, given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<MemoryBudget>,
    n: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.n;
        drop(used);
        self.budget.freed.notify_all();
    }
}

/// How much of the machine a job may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Worker threads hashing, compressing and encrypting (and restore's parallel ranges).
    pub threads: usize,
    /// Chunks queued between the reader and the workers.
    pub chunk_queue: usize,
    /// Chunk bytes in flight (queued or being saved); shared between jobs when cloned.
    pub memory: Option<Arc<MemoryBudget>>,
    /// Pack bytes uploading at once; shared between jobs when cloned (each job alone uploads
    /// at most two packs at once).
    pub uploads: Option<Arc<repo_format::UploadBudget>>,
    /// Whether a big file's cut points are found by several threads (never with one): `None`
    /// leaves it to the number of threads, from four (the CLI's `FERRY_PARALLEL_CHUNKING=1|0`
    /// forces it). Either way the chunks are the same.
    pub parallel_chunking: Option<bool>,
    /// Whether a backup knows the data blobs already stored by key only, 16 bytes each instead
    /// of 48 (`Repository::load_index_for_writing`): `None` leaves it to the index's size (from
    /// `repo_format::KEYS_FROM_BYTES` of index objects, with a cache); the CLI's
    /// `FERRY_INDEX_KEYS=1|0` forces it. Either way the same blobs are stored.
    pub index_keys: Option<bool>,
}

impl Limits {
    /// The stored index size from which a writer knows data blobs by key (`index_keys`), for
    /// `Repository::load_index_for_writing`.
    pub fn keys_from(&self) -> u64 {
        match self.index_keys {
            None => repo_format::KEYS_FROM_BYTES,
            Some(true) => 0,
            Some(false) => u64::MAX,
        }
    }
}

impl Default for Limits {
    /// One worker per core, a queue of two chunks per worker, no shared byte budget.
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Limits {
            threads,
            chunk_queue: threads * 2,
            memory: None,
            uploads: None,
            parallel_chunking: None,
            index_keys: None,
        }
    }
}

/// One engine call's context.
#[derive(Debug, Clone)]
pub struct Job {
    pub cancel: CancelToken,
    pub progress: Arc<Counters>,
    pub limits: Limits,
    /// Whether the totals in `progress` (files and bytes to do) are wanted. A backup fills
    /// them from a second, stat-only walk of the sources beside the real one: about a third
    /// of the CPU of a backup in which nothing changed (measured on a million files). On by
    /// default; a front end that shows no progress turns it off.
    pub totals: bool,
}

impl Default for Job {
    fn default() -> Self {
        Job { cancel: CancelToken::default(), progress: Arc::default(), limits: Limits::default(), totals: true }
    }
}

impl Job {
    /// A job with default limits, fresh counters and its own token.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_progress(mut self, counters: Arc<Counters>) -> Self {
        self.progress = counters;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Count totals for the progress display (`totals`) or not.
    pub fn with_totals(mut self, totals: bool) -> Self {
        self.totals = totals;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_blocks_until_bytes_are_given_back() {
        let b = MemoryBudget::new(10);
        let p1 = b.acquire(6);
        assert_eq!(b.used(), 6);
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            let _p = b2.acquire(6);
            b2.used()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!t.is_finished(), "the second permit must wait");
        drop(p1);
        assert_eq!(t.join().unwrap(), 6);
        assert_eq!(b.used(), 0);
        // A request above the total takes the whole budget instead of waiting for ever.
        let big = b.acquire(100);
        assert_eq!(b.used(), 10);
        drop(big);
    }

    #[tokio::test]
    async fn cancelling_wakes_a_waiter() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let w = tokio::spawn(async move { t2.cancelled().await });
        tokio::task::yield_now().await;
        t.cancel();
        w.await.unwrap();
        assert!(t.check().is_err());
    }
}
