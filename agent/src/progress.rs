//! The CLI's progress sinks: a bar on a terminal (files, bytes, rate, ETA) or JSON status lines
//! with `--json`. The engine's counters feed them through `ferry_engine::progress::watch`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::progress::{Counters, ProgressSink, ProgressSnapshot, Watch, watch};

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
    watch: Option<Watch>,
}

impl Progress {
    pub fn start(mode: Mode, what: &'static str) -> Progress {
        let counters = Arc::new(Counters::default());
        let watch = match mode {
            Mode::Silent => None,
            Mode::Bar => Some(watch(counters.clone(), Arc::new(Bar::new(what)), Duration::from_millis(200))),
            Mode::Json => Some(watch(counters.clone(), Arc::new(JsonLines { what }), Duration::from_secs(1))),
        };
        Progress { counters, watch }
    }

    /// Whether anything shows the counters (a bar or status lines): the engine then also
    /// counts totals.
    pub fn shown(&self) -> bool {
        self.watch.is_some()
    }
}

/// A terminal bar.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(what: &'static str) -> Bar {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        b.set_prefix(what);
        Bar(b)
    }
}

impl ProgressSink for Bar {
    fn update(&self, p: &ProgressSnapshot) {
        self.0.set_length(p.bytes_total.max(p.bytes_done));
        self.0.set_position(p.bytes_done);
        let errors = if p.errors > 0 { format!(", {} errors", p.errors) } else { String::new() };
        self.0.set_message(format!("{}/{} files{errors}", p.files_done, p.files_total));
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// `status` lines on stdout (documented in docs/JSON.md).
struct JsonLines {
    what: &'static str,
}

impl ProgressSink for JsonLines {
    fn update(&self, p: &ProgressSnapshot) {
        let (bd, bt) = (p.bytes_done, p.bytes_total);
        crate::output::print_json(&serde_json::json!({
            "message_type": "status",
            "action": self.what,
            "seconds_elapsed": p.elapsed.as_secs(),
            "files_done": p.files_done, "total_files": p.files_total,
            "bytes_done": bd, "total_bytes": bt,
            "percent_done": if bt > 0 { (bd as f64 / bt as f64).min(1.0) } else { 0.0 },
            "error_count": p.errors,
        }));
    }
}
