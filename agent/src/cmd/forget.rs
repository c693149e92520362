//! `ferry forget`: remove snapshots by a retention policy (`ferry_engine::forget`) or by id.
//!
//! The plan is printed first (per group, the snapshots kept with their reasons and the ones
//! removed), then carried out unless `--dry-run`. Only snapshot objects are removed, a few at a
//! time: the data they referenced stays until `ferry prune` (or `--prune` here). A snapshot that cannot be removed is reported by id, the others are still removed,
//! and the exit code is 3 (partial). Without a policy and without ids nothing is removed
//! (exit 0), as in restic; a policy that would leave a group with no snapshot is refused.

use std::collections::HashMap;

use anyhow::{Result, bail};
use repo_format::{Snapshot, SnapshotId};

use crate::cli::{Cli, ForgetArgs};
use crate::output::{escape, print_json};
use crate::{exit, repo};
use ferry_engine::forget::{self, Decision, Entry, GroupKey};
use ferry_engine::select;

pub async fn run(cli: &Cli, a: &ForgetArgs) -> Result<i32> {
    let policy = a.policy();
    let filter = a.filter.filter();
    let r = repo::open(cli).await?;
    let all = r.snapshots().await?;
    let now = select::now_ns();

    // Each group's key (none for snapshots named by id) and its snapshots, newest first.
    let plan: Vec<(Option<GroupKey>, Vec<Entry>)> = if !a.snapshots.is_empty() {
        let mut named: Vec<Entry> = Vec::new();
        for spec in &a.snapshots {
            let (id, s) = select::pick(&all, spec, &filter, now)?;
            if !named.iter().any(|e| e.id == id) {
                named.push(Entry { id, time_ns: s.time_ns, decision: Decision::Remove });
            }
        }
        named.sort_by_key(|e| std::cmp::Reverse((e.time_ns, e.id)));
        vec![(None, named)]
    } else {
        let mut considered = Vec::new();
        for (id, s) in &all {
            if select::matches(s, &filter)? {
                considered.push((*id, s.clone()));
            }
        }
        if policy.is_empty() {
            eprintln!(
                "ferry: no policy was specified, no snapshots will be removed: give one or more of --keep-last N, \
                 --keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly N, --keep-within DURATION, \
                 --keep-tag TAG (see `ferry forget --help`), or the ids of the snapshots to remove"
            );
            if cli.json {
                summary(cli, considered.len(), 0, &[], a.dry_run);
            }
            return Ok(exit::OK);
        }
        let groups = forget::apply(&considered, &policy, &a.group_by, now);
        if let Some(g) = groups.iter().find(|g| g.kept().next().is_none()) {
            bail!(
                "refusing to remove every snapshot of the group ({}): none is kept by the policy ({policy}); nothing \
                 was removed: widen the policy, or name the snapshots by id to remove them",
                escape(&g.key.to_string())
            );
        }
        if !cli.json && !cli.quiet {
            println!("applying the policy: {policy}");
        }
        groups.into_iter().map(|g| (Some(g.key), g.entries)).collect()
    };

    let by_id: HashMap<SnapshotId, &Snapshot> = all.iter().map(|(id, s)| (*id, s)).collect();
    for (key, entries) in &plan {
        print_group(cli, key.as_ref(), entries, &by_id);
    }
    let doomed: Vec<SnapshotId> =
        plan.iter().flat_map(|(_, e)| e).filter(|e| e.decision == Decision::Remove).map(|e| e.id).collect();
    let kept = plan.iter().map(|(_, e)| e.len()).sum::<usize>() - doomed.len();
    let failed = if a.dry_run { Vec::new() } else { forget::remove_snapshots(r.storage().as_ref(), &doomed).await };
    if !a.dry_run && doomed.len() > failed.len() {
        // Removed on purpose: the rollback memory must not warn that the newest disappeared.
        r.forget_newest();
    }
    for (id, e) in &failed {
        eprintln!("ferry: error: could not remove snapshot {}: {}", id.0.short(), escape(&e.to_string()));
    }
    let failed: Vec<SnapshotId> = failed.into_iter().map(|(id, _)| id).collect();
    let removed = doomed.len() - failed.len();
    summary(cli, kept, removed, &failed, a.dry_run);
    if !failed.is_empty() {
        return Ok(exit::PARTIAL);
    }
    if a.prune {
        drop(r);
        let p =
            crate::cli::PruneArgs { dry_run: a.dry_run, max_unused: "5%".into(), max_repack: None, sweep_now: false };
        return super::prune::run(cli, &p).await;
    }
    Ok(exit::OK)
}

/// Remove snapshot objects, `REMOVE_CONCURRENCY` at a time; one found already gone counts as
/// removed. The ones that could not be removed, by id, with their errors.
/// One group's plan: a `forget_group` JSON line, or two tables.
fn print_group(cli: &Cli, key: Option<&GroupKey>, entries: &[Entry], by_id: &HashMap<SnapshotId, &Snapshot>) {
    let time = |e: &Entry| super::time_str(e.time_ns);
    if cli.json {
        let keep: Vec<_> = entries
            .iter()
            .filter_map(|e| match &e.decision {
                Decision::Keep { reasons } => {
                    Some(serde_json::json!({ "id": e.id.to_string(), "time": time(e), "reasons": reasons }))
                }
                Decision::Remove => None,
            })
            .collect();
        let remove: Vec<_> = entries
            .iter()
            .filter(|e| e.decision == Decision::Remove)
            .map(|e| serde_json::json!({ "id": e.id.to_string(), "time": time(e) }))
            .collect();
        print_json(&serde_json::json!({
            "message_type": "forget_group", "key": key, "keep": keep, "remove": remove,
        }));
        return;
    }
    if cli.quiet {
        return;
    }
    if let Some(k) = key {
        println!("\nsnapshots of {}:", escape(&k.to_string()));
    }
    let row = |e: &Entry| {
        let (host, tags) = match by_id.get(&e.id) {
            Some(s) => {
                (s.hostname.clone(), s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            }
            None => (String::new(), String::new()),
        };
        // Hostnames and tags come from the repository: no control character reaches the terminal.
        format!("{:<10} {:<21} {:<16} {:<30}", e.id.0.short(), time(e), escape(&host), escape(&tags))
    };
    let kept: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.decision {
            Decision::Keep { reasons } => Some((e, reasons)),
            Decision::Remove => None,
        })
        .collect();
    if !kept.is_empty() {
        println!("keep {}:", count(kept.len()));
        println!("{:<10} {:<21} {:<16} {:<30} reasons", "id", "time", "host", "tags");
        for (e, reasons) in kept {
            println!("{} {}", row(e), reasons.join(", "));
        }
    }
    let removed: Vec<_> = entries.iter().filter(|e| e.decision == Decision::Remove).collect();
    if !removed.is_empty() {
        println!("remove {}:", count(removed.len()));
        println!("{:<10} {:<21} {:<16} tags", "id", "time", "host");
        for e in removed {
            println!("{}", row(e).trim_end());
        }
    }
}

/// The `forget_summary` JSON line, or the closing sentence.
fn summary(cli: &Cli, kept: usize, removed: usize, failed: &[SnapshotId], dry_run: bool) {
    if cli.json {
        print_json(&serde_json::json!({
            "message_type": "forget_summary", "kept": kept, "removed": removed,
            "failed": failed.iter().map(|id| id.to_string()).collect::<Vec<_>>(), "dry_run": dry_run,
        }));
        return;
    }
    if cli.quiet {
        return;
    }
    println!();
    if dry_run {
        println!("would remove {}, keep {} (dry run: nothing was removed)", count(removed), kept);
        return;
    }
    println!("removed {}, kept {}", count(removed), kept);
    if !failed.is_empty() {
        println!("{} could not be removed (see the errors above)", count(failed.len()));
    }
    if removed > 0 {
        println!("the data they referenced stays in the repository until `ferry prune` (or forget --prune)");
    }
}

fn count(n: usize) -> String {
    format!("{n} snapshot{}", if n == 1 { "" } else { "s" })
}
