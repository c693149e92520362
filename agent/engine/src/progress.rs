//! Progress of a job: counters the engine bumps (atomics, so a hot loop pays one add), and
//! sinks that show them. The engine never prints; a front end chooses a sink (the CLI's bar or
//! JSON status lines, the agent's resource status) and `watch` feeds it a `ProgressSnapshot`
//! at a fixed interval until the job ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters an engine updates.
#[derive(Debug, Default)]
pub struct Counters {
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    /// Totals, when known (a concurrent scan fills them in).
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub errors: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgressSnapshot {
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_total: u64,
    pub bytes_total: u64,
    pub errors: u64,
    /// Since the watch started.
    pub elapsed: Duration,
}

impl Counters {
    pub fn snapshot(&self, elapsed: Duration) -> ProgressSnapshot {
        ProgressSnapshot {
            files_done: self.files_done.load(Relaxed),
            bytes_done: self.bytes_done.load(Relaxed),
            files_total: self.files_total.load(Relaxed),
            bytes_total: self.bytes_total.load(Relaxed),
            errors: self.errors.load(Relaxed),
            elapsed,
        }
    }
}

/// Where progress goes. `update` is called from the watcher's thread at its interval, and once
/// more with the final figures before `finish`.
pub trait ProgressSink: Send + Sync {
    fn update(&self, p: &ProgressSnapshot);
    fn finish(&self) {}
}

/// A sink that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn update(&self, _: &ProgressSnapshot) {}
}

/// Feeds a sink from counters until dropped (then a last update and `finish`).
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Start feeding `sink` from `counters` every `interval`.
pub fn watch(counters: Arc<Counters>, sink: Arc<dyn ProgressSink>, interval: Duration) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ferry-progress".into())
        .spawn(move || {
            let start = Instant::now();
            let mut last = Instant::now();
            loop {
                let stopping = s.load(Relaxed);
                if stopping || last.elapsed() >= interval {
                    last = Instant::now();
                    sink.update(&counters.snapshot(start.elapsed()));
                }
                if stopping {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50).min(interval));
            }
            sink.finish();
        })
        .ok();
    Watch { stop, thread }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
