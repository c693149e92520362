//! `ferry repair index` and `ferry repair snapshots` (see `ferry_engine::repair`).

use anyhow::Result;

use crate::cli::{Cli, RepairCommand};
use crate::output::{escape, print_json};
use crate::progress::{Mode, Progress};
use crate::{exit, repo};
use ferry_engine::{repair, select};

pub async fn run(cli: &Cli, c: &RepairCommand) -> Result<i32> {
    let (r, counts) = repo::open_counted(cli).await?;
    let progress = Progress::start(Mode::Silent, "repair");
    let job = super::job(&progress);
    match c {
        RepairCommand::Index { dry_run } => {
            let rep = repair::repair_index(&r, *dry_run, &job).await?;
            if cli.json {
                let mut v = serde_json::to_value(&rep)?;
                v["message_type"] = "index_repair".into();
                v["requests"] = repo::counts_json(&counts);
                print_json(&v);
            } else if !cli.quiet {
                for u in &rep.unreadable {
                    eprintln!("unreadable, not indexed: {}", escape(u));
                }
                println!(
                    "{}indexed {} packs ({} blobs) from their headers{}; {} old index objects {}superseded",
                    if *dry_run { "would have " } else { "" },
                    rep.packs,
                    rep.blobs,
                    if rep.marked > 0 {
                        format!(", left out {} packs marked by a prune", rep.marked)
                    } else {
                        String::new()
                    },
                    rep.index_superseded,
                    if *dry_run { "would be " } else { "" },
                );
                if !*dry_run {
                    println!("next: `ferry check`; if snapshots still reference lost data, `ferry repair snapshots`");
                }
            }
            Ok(if rep.unreadable.is_empty() { exit::OK } else { exit::PARTIAL })
        }
        RepairCommand::Snapshots { forget, dry_run, snapshots } => {
            let mut ids = Vec::new();
            for s in snapshots {
                ids.push(select::find(&r, s, &Default::default()).await?.0);
            }
            let reps = repair::repair_snapshots(&r, &ids, *forget, *dry_run, &job).await?;
            if cli.json {
                for s in &reps {
                    let mut v = serde_json::to_value(s)?;
                    v["message_type"] = "snapshot_repair".into();
                    print_json(&v);
                }
                print_json(&serde_json::json!({
                    "message_type": "summary", "dry_run": dry_run, "repaired": reps.len(),
                    "requests": repo::counts_json(&counts),
                }));
            } else if !cli.quiet {
                for s in &reps {
                    match &s.repaired {
                        Some(new) => println!(
                            "snapshot {} → {} (tag repaired-from){}: dropped {}",
                            &s.snapshot[..8],
                            &new[..8],
                            if s.forgotten { ", original removed" } else { "" },
                            escape(&s.dropped.join(", "))
                        ),
                        None => println!("snapshot {}: would drop {}", &s.snapshot[..8], escape(&s.dropped.join(", "))),
                    }
                }
                if reps.is_empty() {
                    println!("no snapshot references data that is gone");
                }
            }
            Ok(exit::OK)
        }
    }
}
