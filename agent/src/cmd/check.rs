//! `ferry check`: the repository's structure, and with `--read-data` its every byte. Damage is
//! listed object by object with the snapshots it breaks, and the exit code is 13.

use anyhow::Result;

use crate::cli::{CheckArgs, Cli};
use crate::output::{bytes, print_json};
use crate::progress::{Mode, Progress};
use crate::{exit, repo};
use ferry_engine::check::{self, CheckOptions, ReadData};

pub async fn run(cli: &Cli, a: &CheckArgs) -> Result<i32> {
    let read_data = match (&a.read_data_subset, a.read_data) {
        (Some(s), _) => ReadData::parse_subset(s)?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    // A fresh cache unless asked: a cached copy would hide damage done in storage since.
    let scratch = if a.with_cache || cli.no_cache { None } else { Some(tempfile::tempdir()?) };
    let cache = match &scratch {
        Some(d) => Some(d.path().to_path_buf()),
        None => repo::cache_root(cli),
    };
    let (r, counts) = repo::open_with_cache(cli, cache).await?;
    let started = std::time::Instant::now();
    let progress = Progress::start(
        if read_data == ReadData::None { Mode::Silent } else { Mode::choose(cli.json, cli.quiet) },
        "check",
    );
    let job = super::job(&progress);
    let report = check::check(&r, &CheckOptions { read_data }, &job).await;
    drop(progress);
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        for d in &report.damage {
            print_json(&serde_json::json!({
                "message_type": "damage", "kind": d.kind, "object": d.object, "message": d.message,
                "snapshots": d.snapshots,
            }));
        }
        for p in &report.unreferenced_packs {
            print_json(&serde_json::json!({ "message_type": "unreferenced_pack", "pack": p.pack, "size": p.size }));
        }
        print_json(&serde_json::json!({
            "message_type": "summary", "ok": report.damage.is_empty(), "damage": report.damage.len(),
            "snapshots": report.snapshots, "index_objects": report.index_objects, "packs": report.packs,
            "blobs": report.blobs, "trees": report.trees, "unused_blobs": report.unused_blobs,
            "unreferenced_packs": report.unreferenced_packs.len(), "read_data": read_data,
            "packs_read": report.packs_read, "bytes_read": report.bytes_read, "duration_s": secs,
            "requests": repo::counts_json(&counts),
        }));
    } else {
        for d in &report.damage {
            eprintln!("damaged: {}: {}", d.object, crate::output::escape(&d.message));
            if !d.snapshots.is_empty() {
                let short: Vec<String> = d.snapshots.iter().map(|s| s[..8.min(s.len())].to_string()).collect();
                eprintln!("  breaks {} snapshots: {}", short.len(), short.join(" "));
            }
        }
        if !cli.quiet {
            if !report.unreferenced_packs.is_empty() {
                let total: u64 = report.unreferenced_packs.iter().map(|p| p.size).sum();
                println!(
                    "{} packs ({}) are in no index: left by interrupted backups, or being written now; \
                     not damage",
                    report.unreferenced_packs.len(),
                    bytes(total)
                );
            }
            println!(
                "checked {} snapshots, {} trees, {} index objects, {} packs, {} blobs ({} unused){} in {secs:.2} s",
                report.snapshots,
                report.trees,
                report.index_objects,
                report.packs,
                report.blobs,
                report.unused_blobs,
                if report.packs_read > 0 {
                    format!("; read {} packs, {}", report.packs_read, bytes(report.bytes_read))
                } else {
                    String::new()
                }
            );
        }
        if report.damage.is_empty() {
            if !cli.quiet {
                println!("no errors were found");
            }
        } else {
            eprintln!(
                "the repository is damaged (findings: {}): `ferry repair index` drops what is lost from the index \
                 (a new backup then uploads it again), `ferry repair snapshots` writes snapshots without it",
                report.damage.len()
            );
        }
    }
    Ok(if report.damage.is_empty() { exit::OK } else { exit::CORRUPT })
}
