//! The commands: each takes the parsed command line and returns an exit code.

mod agent;
mod backup;
mod bench;
mod cat;
mod check;
mod copy;
mod forget;
mod init;
mod key;
mod ls;
mod prune;
mod repair;
mod restore;
mod snapshots;
mod version;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> Result<i32> {
    match &cli.cmd {
        Command::Init(a) => init::run(&cli, a).await,
        Command::Backup(a) => backup::run(&cli, a).await,
        Command::Snapshots(a) => snapshots::run(&cli, a).await,
        Command::Forget(a) => forget::run(&cli, a).await,
        Command::Ls(a) => ls::run(&cli, a).await,
        Command::Restore(a) => restore::run(&cli, a).await,
        Command::Cat(a) => cat::run(&cli, a).await,
        Command::Key(a) => key::run(&cli, a).await,
        Command::Check(a) => check::run(&cli, a).await,
        Command::Prune(a) => prune::run(&cli, a).await,
        Command::Repair(a) => repair::run(&cli, a).await,
        Command::Copy(a) => copy::run(&cli, a).await,
        Command::Version => version::run(&cli),
        Command::Bench(a) => bench::run(&cli, a).await,
        Command::Agent(a) => agent::run(a).await,
        Command::Hold => agent::hold().await,
    }
}

/// The engine job of a command: its progress counters, the limits from the environment, and
/// a cancellation token that Ctrl-C (SIGINT) or SIGTERM trips. A second signal exits at once.
pub(crate) fn job(progress: &crate::progress::Progress) -> ferry_engine::Job {
    let job = ferry_engine::Job::new()
        .with_progress(progress.counters.clone())
        .with_limits(crate::env::limits())
        .with_totals(progress.shown());
    let token = job.cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::warn!("interrupted: finishing what was uploaded (interrupt again to stop at once)");
                token.cancel();
            } else {
                std::process::exit(crate::exit::CANCELLED);
            }
        }
    });
    job
}

/// Compile glob patterns, naming the bad one.
pub(crate) fn patterns(list: &[String], what: &str) -> Result<Vec<glob::Pattern>> {
    list.iter().map(|p| glob::Pattern::new(p).map_err(|e| anyhow::anyhow!("{what} pattern {p:?}: {e}"))).collect()
}

/// A ns timestamp as RFC 3339 (UTC, seconds).
pub(crate) fn time_str(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_formatting() {
        assert_eq!(super::time_str(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time_str(1_704_067_200_000_000_000), "2024-01-01T00:00:00Z");
    }
}
