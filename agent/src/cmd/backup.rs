//! `ferry backup`: back up paths into a new snapshot.

use anyhow::Result;
use repo_format::Summary;

use crate::cli::{BackupArgs, Cli};
use crate::output::{bytes, print_json};
use crate::progress::{Mode, Progress};
use crate::{exit, repo};
use ferry_engine::backup::{self, BackupConfig};
use ferry_engine::disk::backup::{DiskConfig, Mode as DiskMode};
use ferry_engine::disk::ranges::Ranges;
use ferry_engine::podvolume::{self, PodVolume};
use ferry_engine::select;

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
    // What is being backed up: a pod volume, a disk, or files.
    let mut tags = tags;
    let mut paths = a.paths.clone();
    let mut disk = a.disk || a.changed_blocks.is_some() || a.allocated_blocks.is_some();
    let mut no_follow = false;
    if let Some(pv) = &a.pod_volume {
        let (path, kind) = match podvolume::resolve(pv)? {
            PodVolume::Filesystem(p) => (p, "filesystem"),
            PodVolume::Image(p) => {
                no_follow = true;
                (p, "block")
            }
            PodVolume::Block(p) => (p, "block"),
        };
        disk |= kind == "block";
        if let Some(uid) = pv.parent().and_then(|p| p.file_name()) {
            tags.push(("pod-uid".into(), uid.to_string_lossy().into_owned()));
        }
        if let Some(v) = pv.file_name() {
            tags.push(("volume".into(), v.to_string_lossy().into_owned()));
        }
        if kind == "filesystem" {
            tags.push(("volume-mode".into(), "filesystem".into()));
        }
        paths = vec![path];
    }
    if let [one] = paths.as_slice() {
        disk |= ferry_engine::disk::looks_like_disk(one);
    }
    let progress = Progress::start(Mode::choose(cli.json, cli.quiet), "backup");
    let job = super::job(&progress);
    let out = if disk {
        let [path] = paths.as_slice() else { anyhow::bail!("a disk backup takes exactly one device or image") };
        let mode = match (&a.changed_blocks, &a.allocated_blocks) {
            (Some(f), _) => DiskMode::Changed(Ranges::read(f)?),
            (_, Some(f)) => DiskMode::Allocated(Ranges::read(f)?),
            _ => DiskMode::Full,
        };
        let name = a
            .pod_volume
            .as_ref()
            .filter(|_| !path.ends_with("disk.img"))
            .unwrap_or(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        let cfg = DiskConfig {
            path: path.clone(),
            name,
            host,
            tags,
            parent,
            mode,
            cache_dir: repo::cache_root(cli),
            no_follow,
            identity: a.identity()?,
            requester: a.requester.clone(),
        };
        ferry_engine::disk::backup::run(r.clone(), cfg, &job).await
    } else {
        let cfg = BackupConfig {
            paths,
            excludes: super::patterns(&a.excludes, "exclude")?,
            host,
            tags,
            parent,
            force: a.force,
            cache_dir: repo::cache_root(cli),
            identity: a.identity()?,
            requester: a.requester.clone(),
        };
        backup::run(r.clone(), cfg, &job).await
    };
    drop(progress);
    let out = out?;
    let s: &Summary = &out.snapshot.summary;
    let id = out.snapshot_id;
    for e in &out.errors {
        crate::output::entry(cli.json, "error", e);
    }
    for w in &out.warnings {
        crate::output::entry(cli.json, "warning", w);
    }
    if cli.json {
        print_json(&serde_json::json!({
            "message_type": "summary",
            "snapshot_id": id.to_string(),
            "parent": out.snapshot.parent.map(|p| p.to_string()),
            "files_new": s.files_new, "files_changed": s.files_changed, "files_unchanged": s.files_unchanged,
            "dirs": s.dirs, "dirs_split": s.dirs_split, "other_entries": s.other_entries,
            "bytes_read": s.bytes_read, "bytes_total": s.bytes_total,
            "bytes_added": s.bytes_added, "bytes_added_stored": s.bytes_added_stored,
            "data_blobs_added": s.data_blobs_added, "tree_blobs_added": s.tree_blobs_added,
            "errors": out.errors.len(), "warnings": out.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            "duration_s": s.duration_ns as f64 / 1e9,
            "requests": repo::counts_json(&counts),
            "resumed": { "packs": out.resumed.packs, "blobs": out.resumed.blobs, "bytes": out.resumed.bytes,
                         "missing": out.resumed.missing },
        }));
    } else {
        if !cli.quiet {
            if out.resumed.packs > 0 {
                println!(
                    "Resumed: {} packs ({}) uploaded by an interrupted backup were indexed and reused",
                    out.resumed.packs,
                    bytes(out.resumed.bytes)
                );
            }
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
