//! `ferry copy`: snapshots of another repository (`--from-repo`, opened read-only) into this
//! one (`--repo`), uploading only the blobs it lacks; snapshots it already has are skipped.

use std::collections::HashMap;

use anyhow::{Context, Result};
use repo_format::SnapshotId;

use crate::cli::{Cli, CopyArgs};
use crate::output::{bytes, print_json};
use crate::progress::{Mode, Progress};
use crate::{exit, repo};
use ferry_engine::copy::{self, Copied, CopyOptions};
use ferry_engine::select;

pub async fn run(cli: &Cli, a: &CopyArgs) -> Result<i32> {
    let started = std::time::Instant::now();
    let (src, src_counts) = repo::open_other(cli, &a.from_repo, &a.from, "source repository").await?;
    let (dst, counts) = repo::open_counted(cli).await?;
    let filter = a.filter.filter();
    let all = src.snapshots().await.with_context(|| format!("listing the snapshots of {}", a.from_repo))?;
    let mut selected: Vec<SnapshotId> = Vec::new();
    if a.snapshots.is_empty() {
        for (id, s) in &all {
            if select::matches(s, &filter)? {
                selected.push(*id);
            }
        }
    } else {
        for spec in &a.snapshots {
            let (id, _) = select::pick(&all, spec, &filter, select::now_ns())
                .with_context(|| format!("in the source repository {}", a.from_repo))?;
            selected.push(id);
        }
    }
    let existing = dst.snapshots().await.context("listing the destination's snapshots")?;
    let plan = copy::plan(&all, &selected, &existing);
    let times: HashMap<SnapshotId, i64> = plan.items.iter().map(|i| (i.source_id, i.snapshot.time_ns)).collect();
    let opts = CopyOptions { cache_dir: repo::cache_root(cli) };
    let progress = Progress::start(Mode::choose(cli.json, cli.quiet), "copy");
    let job = super::job(&progress);
    let json = cli.json;
    let time_of = |id: &SnapshotId| super::time_str(times.get(id).copied().unwrap_or(0));
    let mut on_snapshot = |c: &Copied| {
        if json {
            print_json(&copied_json(c, &time_of(&c.source)));
        }
    };
    let out = copy::execute(&src, &dst, plan, &opts, &job, &mut on_snapshot).await;
    drop(progress);
    let out = out?;
    let secs = started.elapsed().as_secs_f64();
    let copied: Vec<&Copied> = out.snapshots.iter().filter(|c| !c.skipped).collect();
    let sum = |f: fn(&Copied) -> u64| copied.iter().map(|c| f(c)).sum::<u64>();
    if json {
        print_json(&serde_json::json!({
            "message_type": "summary",
            "snapshots_copied": copied.len(), "snapshots_skipped": out.snapshots.len() - copied.len(),
            "data_blobs_added": sum(|c| c.data_blobs), "tree_blobs_added": sum(|c| c.tree_blobs),
            "bytes_added": sum(|c| c.bytes_added), "bytes_added_stored": sum(|c| c.bytes_added_stored),
            "shared_id_key": out.shared_id_key, "duration_s": secs,
            "requests": repo::counts_json(&counts), "source_requests": repo::counts_json(&src_counts),
        }));
    } else if !cli.quiet {
        for c in &out.snapshots {
            let (src_id, dst_id, time) = (c.source.0.short(), c.destination.0.short(), time_of(&c.source));
            if c.skipped {
                println!("skipped snapshot {src_id} ({time}): already in the repository as {dst_id}");
            } else {
                println!(
                    "copied snapshot {src_id} ({time}) as {dst_id}: {} data and {} tree blobs, {} added",
                    c.data_blobs,
                    c.tree_blobs,
                    bytes(c.bytes_added)
                );
            }
        }
        println!(
            "{} snapshots copied, {} skipped; added {} ({} stored) in {secs:.2} s",
            copied.len(),
            out.snapshots.len() - copied.len(),
            bytes(sum(|c| c.bytes_added)),
            bytes(sum(|c| c.bytes_added_stored))
        );
        if !out.shared_id_key && !copied.is_empty() {
            println!(
                "The repositories do not share an id key: blobs were re-keyed, so the copies deduplicate against \
                 each other but not against this repository's own backups (create a repository with `ferry init \
                 --copy-chunker-params-from` for that)."
            );
        }
    }
    Ok(exit::OK)
}

/// The `copied` line of a snapshot (docs/JSON.md).
fn copied_json(c: &Copied, time: &str) -> serde_json::Value {
    serde_json::json!({
        "message_type": "copied",
        "source_id": c.source.to_string(), "time": time,
        "destination_id": (!c.skipped).then(|| c.destination.to_string()),
        "existing_id": c.skipped.then(|| c.destination.to_string()),
        "skipped": c.skipped,
        "data_blobs_added": c.data_blobs, "tree_blobs_added": c.tree_blobs,
        "bytes_added": c.bytes_added, "bytes_added_stored": c.bytes_added_stored,
    })
}
