//! `ferry`: the Ferry command-line tool.
//!
//! `main` parses the command line, runs the command on a tokio runtime and maps errors to the
//! documented exit codes (see `exit`). Commands live in `cmd/`: each gathers its settings from
//! flags, environment and files (this crate's edge), calls the engines of the `ferry_engine`
//! crate, and renders their typed reports as text or JSON lines. The repository format is the
//! `repo_format` crate.

mod cli;
mod cmd;
mod env;
mod exit;
mod output;
mod progress;
mod repo;

use clap::Parser;

fn main() {
    ferry_engine::tune_malloc();
    let cli = cli::Cli::parse();
    use tracing::Level;
    // -vv: Ferry's own debug lines; -vvv: its libraries' too (every HTTP connection).
    let (level, libraries) = match (cli.quiet, cli.verbose) {
        (true, _) => (Level::ERROR, Level::ERROR),
        (false, 0) => (Level::WARN, Level::WARN),
        (false, 1) => (Level::INFO, Level::WARN),
        (false, 2) => (Level::DEBUG, Level::WARN),
        _ => (Level::DEBUG, Level::DEBUG),
    };
    output::init_logging(level, libraries);
    let nofile = ferry_engine::raise_open_files_limit();
    tracing::debug!("open files limit {nofile}");
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
