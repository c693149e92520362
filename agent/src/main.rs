//! `ferry`: the Ferry command-line tool (and, later, the node agent).
//!
//! `main` parses the command line, runs the command on a tokio runtime and maps errors to the
//! documented exit codes (see `exit`). Commands live in `cmd/`, engines in `backup/` and
//! `restore/`; the repository format is the `repo_format` crate.

mod backup;
mod cli;
mod cmd;
mod disk;
mod exit;
mod filescache;
mod fsmeta;
mod output;
mod podvolume;
mod progress;
mod repo;
mod restore;
mod safefs;
mod select;

use clap::Parser;

fn main() {
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
