//! Progress of a long command: shared counters, shown as a bar on a terminal (files, bytes,
//! rate, ETA) or as JSON status lines with `--json`. The engines only bump counters; they never
//! print.

use std::io::IsTerminal;
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

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Json,
    Silent,
}

impl Mode {
    pub fn choose(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if !quiet && std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Silent
        }
    }
}

/// A running display; stops when dropped.
#[derive(Debug)]
pub struct Progress {
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(mode: Mode, what: &'static str) -> Progress {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (mode != Mode::Silent).then(|| {
            let (c, s) = (counters.clone(), stop.clone());
            std::thread::spawn(move || run(mode, what, &c, &s))
        });
        Progress { counters, stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mode: Mode, what: &'static str, c: &Counters, stop: &AtomicBool) {
    let start = Instant::now();
    let bar = (mode == Mode::Bar).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        b.set_prefix(what);
        b
    });
    let tick = if mode == Mode::Bar { Duration::from_millis(200) } else { Duration::from_secs(1) };
    let mut last = Instant::now();
    loop {
        let stopping = stop.load(Relaxed);
        if stopping || last.elapsed() >= tick {
            last = Instant::now();
            let (fd, bd, ft, bt, er) = (
                c.files_done.load(Relaxed),
                c.bytes_done.load(Relaxed),
                c.files_total.load(Relaxed),
                c.bytes_total.load(Relaxed),
                c.errors.load(Relaxed),
            );
            match &bar {
                Some(b) => {
                    b.set_length(bt.max(bd));
                    b.set_position(bd);
                    b.set_message(format!(
                        "{fd}/{ft} files{}",
                        if er > 0 { format!(", {er} errors") } else { String::new() }
                    ));
                }
                None => crate::output::print_json(&serde_json::json!({
                    "message_type": "status",
                    "action": what,
                    "seconds_elapsed": start.elapsed().as_secs(),
                    "files_done": fd, "total_files": ft,
                    "bytes_done": bd, "total_bytes": bt,
                    "percent_done": if bt > 0 { (bd as f64 / bt as f64).min(1.0) } else { 0.0 },
                    "error_count": er,
                })),
            }
        }
        if stopping {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
