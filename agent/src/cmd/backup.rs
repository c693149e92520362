//! `ferry backup`: back up paths into a new snapshot.

use anyhow::Result;
use repo_format::Summary;

use crate::backup::{self, BackupConfig};
use crate::cli::{BackupArgs, Cli};
use crate::output::{bytes, print_json};
use crate::progress::{Mode, Progress};
use crate::{exit, repo, select};

pub async fn run(cli: &Cli, a: &BackupArgs) -> Result<i32> {
    let (r, counts) = repo::open_counted(cli).await?;
    let tags = a.tags.iter().map(|t| select::parse_tag(t)).collect::<Result<Vec<_>>>()?;
    let host = match &a.host {
        Some(h) => h.clone(),
        None => {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
        }
    };
    let parent = match &a.parent {
        Some(p) => Some(select::find(&r, p, &Default::default()).await?.0),
        None => None,
    };
    let cfg = BackupConfig {
        paths: a.paths.clone(),
        excludes: super::patterns(&a.excludes, "exclude")?,
        host,
        tags,
        parent,
        force: a.force,
        cache_dir: repo::cache_root(cli),
    };
    let progress = Progress::start(Mode::choose(cli.json, cli.quiet), "backup");
    let out = backup::run(r.clone(), cfg, progress.counters.clone()).await;
    drop(progress);
    let out = out?;
    let s: &Summary = &out.snapshot.summary;
    let id = out.snapshot_id;
    if cli.json {
        for e in &out.errors {
            print_json(&serde_json::json!({ "message_type": "error", "error": e }));
        }
        print_json(&serde_json::json!({
            "message_type": "summary",
            "snapshot_id": id.to_string(),
            "parent": out.snapshot.parent.map(|p| p.to_string()),
            "files_new": s.files_new, "files_changed": s.files_changed, "files_unchanged": s.files_unchanged,
            "dirs": s.dirs, "other_entries": s.other_entries,
            "bytes_read": s.bytes_read, "bytes_total": s.bytes_total,
            "bytes_added": s.bytes_added, "bytes_added_stored": s.bytes_added_stored,
            "data_blobs_added": s.data_blobs_added, "tree_blobs_added": s.tree_blobs_added,
            "errors": out.errors.len(), "warnings": out.warnings,
            "duration_s": s.duration_ns as f64 / 1e9,
            "requests": repo::counts_json(&counts),
        }));
    } else {
        for e in &out.errors {
            eprintln!("ferry: error: {e}");
        }
        for w in &out.warnings {
            eprintln!("ferry: warning: {w}");
        }
        if !cli.quiet {
            println!("Files: {} new, {} changed, {} unchanged", s.files_new, s.files_changed, s.files_unchanged);
            println!("Dirs: {}, other entries: {}", s.dirs, s.other_entries);
            println!(
                "Read {} of {}; added {} to the repository ({} stored)",
                bytes(s.bytes_read),
                bytes(s.bytes_total),
                bytes(s.bytes_added),
                bytes(s.bytes_added_stored)
            );
            let [put, get, list, ..] = counts.snapshot();
            println!("Requests: {put} PUT, {get} GET, {list} LIST");
            println!("snapshot {} saved in {:.2} s", id.0.short(), s.duration_ns as f64 / 1e9);
        }
    }
    Ok(if out.errors.is_empty() { exit::OK } else { exit::PARTIAL })
}
