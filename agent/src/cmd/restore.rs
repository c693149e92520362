//! `ferry restore`: a snapshot into a target directory.

use anyhow::{Context, Result};

use crate::cli::{Cli, RestoreArgs};
use crate::output::{bytes, print_json};
use crate::progress::{Mode, Progress};
use crate::{exit, repo};
use ferry_engine::restore::{self, Filter, RestoreOptions};
use ferry_engine::select;

pub async fn run(cli: &Cli, a: &RestoreArgs) -> Result<i32> {
    let (r, counts) = repo::open_counted(cli).await?;
    let r = restore::load_index(&r).await?;
    let (id, snap) = select::find(&r, &a.snapshot, &a.filter.filter()).await?;
    let filter = Filter::parse(&a.includes, &a.excludes)?;
    let started = std::time::Instant::now();
    if snap.tag(ferry_engine::disk::MODE_TAG) == Some(ferry_engine::disk::MODE_BLOCK) {
        return restore_disk(cli, a, r, counts, id, snap, started).await;
    }
    let opts = RestoreOptions {
        verify: a.verify,
        allow_devices: a.allow_devices,
        keep_setuid: a.keep_setuid,
        max_plan_bytes: a.max_plan_memory.saturating_mul(1 << 20),
    };
    let plan = restore::plan(&r, snap.tree, &filter, &opts)
        .await
        .with_context(|| format!("planning the restore of snapshot {}", id.0.short()))?;
    let progress = Progress::start(Mode::choose(cli.json, cli.quiet), "restore");
    let job = super::job(&progress);
    let out = restore::execute(r.clone(), plan, &a.target, &job, &opts).await;
    drop(progress);
    let out = out?;
    let secs = started.elapsed().as_secs_f64();
    for e in &out.errors {
        crate::output::entry(cli.json, "error", e);
    }
    if cli.json {
        print_json(&serde_json::json!({
            "message_type": "summary", "snapshot_id": id.to_string(), "target": a.target.display().to_string(),
            "files": out.files, "dirs": out.dirs, "other_entries": out.specials, "bytes_written": out.bytes_written,
            "incomplete_files": out.incomplete, "verified_files": out.verified, "errors": out.errors.len(),
            "duration_s": secs, "requests": repo::counts_json(&counts),
        }));
    } else if !cli.quiet {
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} other, {} written in {secs:.2} s",
            id.0.short(),
            a.target.display(),
            out.files,
            out.dirs,
            out.specials,
            bytes(out.bytes_written)
        );
        if let Some(n) = out.verified {
            println!("verified {n} files{}", if out.errors.is_empty() { ": all match the snapshot" } else { "" });
        }
    }
    // Entries refused or not fully restored: the restore is partial.
    Ok(if out.errors.is_empty() { exit::OK } else { exit::PARTIAL })
}

async fn restore_disk(
    cli: &Cli,
    a: &RestoreArgs,
    r: std::sync::Arc<repo_format::Repository>,
    counts: std::sync::Arc<repo_format::RequestCounts>,
    id: repo_format::SnapshotId,
    snap: repo_format::Snapshot,
    started: std::time::Instant,
) -> Result<i32> {
    use ferry_engine::disk::restore::{DiskRestoreOptions, run};
    if !a.includes.is_empty() || !a.excludes.is_empty() {
        anyhow::bail!("--include/--exclude do not apply to a disk snapshot");
    }
    let opts = DiskRestoreOptions {
        assume_zeroed: a.assume_zeroed,
        force: a.force,
        verify: a.verify,
        keep_setuid: a.keep_setuid,
    };
    let progress = Progress::start(Mode::choose(cli.json, cli.quiet), "restore");
    let job = super::job(&progress);
    let out = run(r, &snap, &a.target, opts, &job).await;
    drop(progress);
    let out = out.with_context(|| format!("restoring disk snapshot {} to {}", id.0.short(), a.target.display()))?;
    let secs = started.elapsed().as_secs_f64();
    for e in &out.errors {
        crate::output::entry(cli.json, "error", e);
    }
    if cli.json {
        print_json(&serde_json::json!({
            "message_type": "summary", "snapshot_id": id.to_string(), "target": out.target.display().to_string(),
            "disk_size": out.size, "bytes_written": out.bytes_written, "bytes_zeroed": out.bytes_zeroed,
            "verified": out.verified, "errors": out.errors.len(), "duration_s": secs, "requests": repo::counts_json(&counts),
        }));
    } else if !cli.quiet {
        println!(
            "restored disk snapshot {} to {}: {} disk, {} written, {} zeroed in {secs:.2} s{}",
            id.0.short(),
            out.target.display(),
            bytes(out.size),
            bytes(out.bytes_written),
            bytes(out.bytes_zeroed),
            if out.verified { "; verified" } else { "" }
        );
    }
    Ok(if out.errors.is_empty() { exit::OK } else { exit::PARTIAL })
}
