//! `ferry`: the Ferry command-line tool (and, later, the node agent).
//!
//! `main` parses the command line, runs the command on a tokio runtime and maps errors to the
//! documented exit codes (see `exit`). Commands live in `cmd/`, engines in `backup/` and
//! `restore/`; the repository format is the `repo_format` crate.

mod attempts;
mod backup;
mod cli;
mod cmd;
mod credentials;
mod disk;
mod dpa;
mod exit;
mod filescache;
mod fsmeta;
mod location;
mod output;
mod podvolume;
mod progress;
mod repo;
mod restore;
mod safefs;
mod select;

use clap::Parser;

/// Keep glibc from hoarding freed buffers: large blocks (chunks, pack ranges) are always mapped
/// and unmapped instead of the threshold drifting up to 32 MiB, and the number of malloc arenas
/// is capped, so resident memory follows what is in use (measured: see the README).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() {
    tune_malloc();
    let cli = cli::Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    output::init_logging(level);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let json = cli.json;
    let code = match rt.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            output::error_line(json, &e);
            exit::code_for(&e)
        }
    };
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    std::process::exit(code);
}
