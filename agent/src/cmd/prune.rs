//! `ferry prune`: garbage collection without locks (see `ferry_engine::prune`). One run sweeps
//! the marks that are due, then marks what is unused now; what it marks is deleted by a later
//! run, once the repository's grace period has passed (at once with `--sweep-now`).

use anyhow::Result;

use crate::cli::{Cli, PruneArgs};
use crate::output::{bytes, print_json};
use crate::progress::{Mode, Progress};
use crate::{exit, repo};
use ferry_engine::prune::{self, MaxUnused, PruneOptions};

pub async fn run(cli: &Cli, a: &PruneArgs) -> Result<i32> {
    let opts = PruneOptions {
        dry_run: a.dry_run,
        max_unused: MaxUnused::parse(&a.max_unused)?,
        max_repack: a
            .max_repack
            .as_deref()
            .map(|s| prune::parse_size(s).map_err(|e| anyhow::anyhow!("--max-repack {s:?}: {e}")))
            .transpose()?,
        sweep_now: a.sweep_now,
    };
    let (r, counts) = repo::open_counted(cli).await?;
    let started = std::time::Instant::now();
    let progress = Progress::start(Mode::choose(cli.json, cli.quiet), "prune");
    let job = super::job(&progress);
    let rep = prune::prune(&r, &opts, &job).await;
    drop(progress);
    let rep = rep?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        for s in &rep.swept {
            let mut v = serde_json::to_value(s)?;
            v["message_type"] = "swept".into();
            v["dry_run"] = rep.dry_run.into();
            print_json(&v);
        }
        for (m, due) in &rep.pending {
            print_json(&serde_json::json!({
                "message_type": "pending", "marker": m, "due": super::time_str(*due), "due_ns": due,
            }));
        }
        if let Some(m) = &rep.marked {
            let mut v = serde_json::to_value(m)?;
            v["message_type"] = "marked".into();
            v["dry_run"] = rep.dry_run.into();
            v["due"] = m.due_ns.map(super::time_str).into();
            print_json(&v);
        }
        print_json(&serde_json::json!({
            "message_type": "summary", "dry_run": rep.dry_run,
            "packs_deleted": rep.swept.iter().map(|s| s.packs_deleted).sum::<u64>(),
            "bytes_deleted": rep.swept.iter().map(|s| s.bytes_deleted).sum::<u64>(),
            "packs_marked": rep.marked.as_ref().map_or(0, |m| m.packs_unused + m.packs_unindexed + m.packs_repacked),
            "duration_s": secs, "requests": repo::counts_json(&counts),
        }));
        return Ok(exit::OK);
    }
    if cli.quiet {
        return Ok(exit::OK);
    }
    let would = if rep.dry_run { "would " } else { "" };
    for s in &rep.swept {
        println!(
            "sweep of mark {}: {would}delete {} packs ({}) and {} superseded index objects{}",
            &s.marker[..8],
            s.packs_deleted,
            bytes(s.bytes_deleted),
            s.index_deleted,
            if s.packs_withdrawn > 0 {
                format!("; {} packs kept, newer snapshots need them", s.packs_withdrawn)
            } else {
                String::new()
            }
        );
        if s.blobs_missing > 0 {
            eprintln!(
                "warning: newer snapshots reference {} blobs that are nowhere: run `ferry check`",
                s.blobs_missing
            );
        }
    }
    for (m, due) in &rep.pending {
        println!(
            "mark {} is in its grace period until {}: nothing more to do before then (or --sweep-now if no backup is running)",
            &m[..8],
            super::time_str(*due)
        );
    }
    if let Some(m) = &rep.marked {
        println!(
            "{} snapshots, {} packs, {} blobs: {} used, {} unused in partly used packs",
            m.snapshots,
            m.packs,
            m.blobs,
            bytes(m.bytes_used),
            bytes(m.bytes_unused)
        );
        let total = m.packs_unused + m.packs_unindexed + m.packs_repacked;
        if total == 0 && m.marker.is_none() {
            println!("nothing to prune");
        } else {
            println!(
                "{would}mark {total} packs ({}) for deletion: {} unused, {} in no index ({}), {} repacked ({} blobs, {} copied); {} unused left",
                bytes(m.bytes_to_delete),
                m.packs_unused,
                m.packs_unindexed,
                bytes(m.bytes_unindexed),
                m.packs_repacked,
                m.blobs_repacked,
                bytes(m.bytes_repacked),
                bytes(m.bytes_unused_after)
            );
            if let (Some(due), false) = (m.due_ns, opts.sweep_now) {
                println!(
                    "they are deleted by a prune run after {} (the repository's grace period)",
                    super::time_str(due)
                );
            }
        }
    }
    println!("done in {secs:.2} s");
    Ok(exit::OK)
}
