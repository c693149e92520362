//! `prune`: garbage collection without locks, while other processes and nodes back up into
//! the same repository (FORMAT.md §9, "two phases").
//!
//! **Mark.** Walk every snapshot; packs with no referenced blob, packs listed in no index, and
//! (to keep unused space under `max_unused`) the most wasteful partly used packs are chosen.
//! The referenced blobs of the latter are copied into new packs (a normal writer, its own
//! index objects). Then the index is rewritten without the chosen packs: new index objects
//! (format version 2), the last of which lists in `supersedes` every index object read, so the
//! switch is atomic. Only then a marker `gc/<id>` records the mark time, the grace period, the
//! chosen packs, the superseded index objects, and the snapshots and index objects seen.
//! Nothing is deleted. A writer that starts after the switch no longer sees the chosen packs
//! and uploads again anything it needs from them.
//!
//! **Sweep** (a later prune, once `mark time + grace` has passed, or at once with
//! `sweep_now`). Re-check first: a chosen pack is withdrawn (kept and indexed again) if a
//! current index object lists it, or if a snapshot the marker did not see references a blob
//! found only in it. Then the chosen packs are deleted, then the superseded index objects,
//! then the marker. A writer that started before the switch and wrote its snapshot before the
//! sweep is covered by the re-check; one still running at the sweep has run longer than the
//! grace period, and such a backup re-checks its own snapshot before writing it
//! (`verify_long_backup`).
//!
//! A prune killed at any moment leaves a repository that readers and writers see whole: before
//! the switch, the new index objects only duplicate entries; after it, the marker (or, if the
//! kill came before the marker, the next prune's unindexed-pack rule) finishes the job. Prunes
//! do not overlap their marks: while a marker is pending and not due, a prune marks nothing.
//!
//! Memory: the in-memory index (48 bytes per blob), the index objects as read (45 bytes per
//! blob, released before repacking), one bit per blob for reachability, per-pack counters, and
//! one pack being repacked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use repo_format::{
    BlobFilter, BlobId, BlobKind, BlobLocation, FileKind, Id, Index, IndexFile, IndexId, IndexPack, Marker, MarkerId,
    PackId, Repository, Selection, SnapshotId, WriterOptions,
};
use serde::Serialize;

use crate::Job;
use crate::reach;

/// Blobs per index object the prune writes.
const BLOBS_PER_INDEX: usize = 100_000;
/// Deletions in flight.
const DELETES: usize = 8;

/// How much unused space may stay in partly used packs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum MaxUnused {
    /// A share of the bytes in use, in percent.
    Percent(f64),
    Bytes(u64),
    Unlimited,
}

impl MaxUnused {
    /// `5%`, `100M`/`2G`/`4096` (bytes, binary suffixes K M G T) or `unlimited`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if t == "unlimited" {
            return Ok(MaxUnused::Unlimited);
        }
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 =
                p.trim().parse().map_err(|_| anyhow::anyhow!("--max-unused {s:?}: expected a percentage like 5%"))?;
            if !(0.0..=100.0).contains(&v) {
                bail!("--max-unused {s:?}: a percentage from 0 to 100");
            }
            return Ok(MaxUnused::Percent(v));
        }
        Ok(MaxUnused::Bytes(parse_size(t).with_context(|| format!("--max-unused {s:?}"))?))
    }

    fn limit(self, used: u64) -> u64 {
        match self {
            MaxUnused::Percent(p) => (used as f64 * p / 100.0) as u64,
            MaxUnused::Bytes(b) => b,
            MaxUnused::Unlimited => u64::MAX,
        }
    }
}

/// `4096`, `100K`, `5M`, `2G`, `1T` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| anyhow::anyhow!("expected a size like 4096, 100M or 2G"))?;
    n.checked_mul(mult).ok_or_else(|| anyhow::anyhow!("{s}: too large"))
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub dry_run: bool,
    pub max_unused: MaxUnused,
    /// Bytes of packs repacked at most in one run.
    pub max_repack: Option<u64>,
    /// No backup is running: delete what is marked at once instead of after the grace period.
    pub sweep_now: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { dry_run: false, max_unused: MaxUnused::Percent(5.0), max_repack: None, sweep_now: false }
    }
}

/// What one sweep did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub marker: String,
    pub packs_deleted: u64,
    pub bytes_deleted: u64,
    pub index_deleted: u64,
    /// Packs kept after all: an index object or a newer snapshot needs them.
    pub packs_withdrawn: u64,
    /// Blobs that newer snapshots reference and that are nowhere (damage that predates this
    /// sweep; `check` names them).
    pub blobs_missing: u64,
}

/// What a mark chose (or, dry, would choose).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MarkReport {
    pub snapshots: u64,
    pub packs: u64,
    pub blobs: u64,
    pub blobs_used: u64,
    pub bytes_used: u64,
    pub bytes_unused: u64,
    /// Packs with no referenced blob.
    pub packs_unused: u64,
    /// Packs in storage that no index lists (interrupted backups, or ones being written).
    pub packs_unindexed: u64,
    pub bytes_unindexed: u64,
    pub packs_repacked: u64,
    pub blobs_repacked: u64,
    pub bytes_repacked: u64,
    /// Bytes the sweep will delete: unused, unindexed and repacked packs.
    pub bytes_to_delete: u64,
    /// Unused bytes left in partly used packs.
    pub bytes_unused_after: u64,
    /// Packs only superseded index objects listed that snapshots use: indexed again.
    pub packs_rescued: u64,
    pub index_superseded: u64,
    pub index_written: u64,
    pub marker: Option<String>,
    /// When the sweep may delete (ns since the epoch).
    pub due_ns: Option<i64>,
}

/// The outcome of a prune.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub swept: Vec<SweepReport>,
    pub marked: Option<MarkReport>,
    /// A marker still in its grace period: (marker, due ns). Nothing was marked then.
    pub pending: Vec<(String, i64)>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Prune: sweep the markers that are due, then mark unless a marker is still pending.
pub async fn prune(repo: &Repository, opts: &PruneOptions, job: &Job) -> Result<PruneReport> {
    let mut rep = PruneReport { dry_run: opts.dry_run, ..Default::default() };
    let now = now_ns();
    for (id, m) in repo.markers().await.context("reading the garbage-collection markers")? {
        if opts.sweep_now || m.due_ns() <= now {
            rep.swept.push(sweep(repo, id, &m, opts.dry_run, job).await?);
        } else {
            rep.pending.push((id.0.to_string(), m.due_ns()));
        }
    }
    if !rep.pending.is_empty() {
        return Ok(rep);
    }
    let marked = mark(repo, opts, job).await?;
    if let (Some((id, m)), false) = (&marked.1, opts.dry_run) {
        if opts.sweep_now {
            rep.swept.push(sweep(repo, *id, m, false, job).await?);
        }
    }
    rep.marked = Some(marked.0);
    Ok(rep)
}

/// Per-pack tallies.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    used_blobs: u64,
    unused_blobs: u64,
    used_bytes: u64,
    unused_bytes: u64,
}

async fn mark(repo: &Repository, opts: &PruneOptions, job: &Job) -> Result<(MarkReport, Option<(MarkerId, Marker)>)> {
    let mut r = MarkReport::default();
    let storage = repo.storage().clone();
    // Snapshots before index objects: a writer stores its index objects before its snapshot,
    // so every snapshot listed has its blobs in an index object listed after.
    let snaps = storage.list(FileKind::Snapshot).await?;
    let files = repo.index_files().await.context("reading the index")?;
    let listed_index: Vec<IndexId> = files.iter().map(|(id, _)| *id).collect();
    let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let current: Vec<&(IndexId, IndexFile)> = files.iter().filter(|(id, _)| !superseded.contains(id)).collect();
    let index = Arc::new(Index::build(current.iter().map(|(_, f)| f))?);
    repo.set_index(index.clone());
    r.blobs = index.len() as u64;
    // Packs only superseded index objects list: a mark whose marker was never written (a
    // prune killed in between). A snapshot written since may use them: those are kept.
    let marked_only = repo_format::marked_only(&files);
    let fallback = Arc::new(Index::build([&marked_only])?);
    repo.set_fallback(fallback.clone());

    // Everything the snapshots reference.
    r.snapshots = snaps.len() as u64;
    let mut roots = Vec::with_capacity(snaps.len());
    for (id, _) in &snaps {
        match repo.load_snapshot(&SnapshotId(*id)).await {
            Ok(s) => roots.push(s.tree),
            Err(repo_format::Error::NotFound { .. }) => {} // forgotten after the listing
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "snapshot {id} cannot be read: prune deletes nothing while a snapshot is unreadable; run `ferry check`"
                )));
            }
        }
    }
    let mut used = vec![0u64; index.len().div_ceil(64)];
    let mut rescued: HashSet<PackId> = HashSet::new();
    let mut missing = 0u64;
    let mut seen = HashSet::new();
    reach::walk(repo, roots, &mut seen, job, |kind, id| match index.position(kind, id) {
        Some(i) => {
            used[i / 64] |= 1 << (i % 64);
            index.lookup(kind, id)
        }
        None => match fallback.lookup(kind, id) {
            Some(loc) => {
                rescued.insert(loc.pack);
                Some(loc)
            }
            None => {
                missing += 1;
                None
            }
        },
    })
    .await?;
    drop(seen);
    if missing > 0 {
        bail!(
            "{missing} blobs that snapshots reference are in no index: the repository is damaged and prune deletes \
             nothing; run `ferry check`"
        );
    }
    let is_used = |kind: BlobKind, id: &BlobId, pack: &PackId| {
        index.position(kind, id).is_some_and(|i| used[i / 64] & (1 << (i % 64)) != 0)
            && index.lookup(kind, id).is_some_and(|l| l.pack == *pack)
    };

    // Tally each pack (its first listing; the same pack listed twice is one pack).
    let mut tallies: Vec<(PackId, Tally)> = Vec::new();
    let mut listed_packs: HashSet<PackId> = HashSet::new();
    for (_, f) in &current {
        for p in &f.packs {
            if !listed_packs.insert(p.id) {
                continue;
            }
            let mut t = Tally::default();
            for b in &p.blobs {
                if is_used(b.kind, &b.id, &p.id) {
                    t.used_blobs += 1;
                    t.used_bytes += u64::from(b.stored_len);
                } else {
                    t.unused_blobs += 1;
                    t.unused_bytes += u64::from(b.stored_len);
                }
            }
            tallies.push((p.id, t));
        }
    }
    r.packs = tallies.len() as u64;
    r.blobs_used = used.iter().map(|w| u64::from(w.count_ones())).sum();
    r.bytes_used = tallies.iter().map(|(_, t)| t.used_bytes).sum();
    r.bytes_unused = tallies.iter().map(|(_, t)| t.unused_bytes).sum();
    let in_storage: HashMap<PackId, u64> =
        storage.list(FileKind::Pack).await?.into_iter().map(|(id, n)| (PackId(id), n)).collect();
    if let Some(p) = rescued.iter().find(|p| !in_storage.contains_key(p)) {
        bail!(
            "pack {} that snapshots use is gone: the repository is damaged and prune deletes nothing; run `ferry check`",
            p.0
        );
    }
    let rescued: Vec<IndexPack> = marked_only.packs.into_iter().filter(|p| rescued.contains(&p.id)).collect();
    listed_packs.extend(rescued.iter().map(|p| p.id));
    r.packs_rescued = rescued.len() as u64;

    let mut chosen: HashSet<PackId> = HashSet::new();
    for (id, t) in &tallies {
        if t.used_blobs == 0 {
            chosen.insert(*id);
            r.packs_unused += 1;
            r.bytes_to_delete += in_storage.get(id).copied().unwrap_or(0);
        }
    }
    for (id, n) in &in_storage {
        if !listed_packs.contains(id) {
            chosen.insert(*id);
            r.packs_unindexed += 1;
            r.bytes_unindexed += n;
            r.bytes_to_delete += n;
        }
    }
    // Repack the most wasteful partly used packs until the unused bytes left are within limits.
    let mut partly: Vec<&(PackId, Tally)> =
        tallies.iter().filter(|(_, t)| t.used_blobs > 0 && t.unused_blobs > 0).collect();
    partly.sort_by(|a, b| {
        let share = |t: &Tally| t.unused_bytes as f64 / (t.used_bytes + t.unused_bytes).max(1) as f64;
        share(&b.1).total_cmp(&share(&a.1)).then(a.0.cmp(&b.0))
    });
    let mut unused_left: u64 = partly.iter().map(|(_, t)| t.unused_bytes).sum();
    let limit = opts.max_unused.limit(r.bytes_used);
    let mut repack: Vec<PackId> = Vec::new();
    for (id, t) in partly {
        if unused_left <= limit {
            break;
        }
        if opts.max_repack.is_some_and(|m| r.bytes_repacked + t.used_bytes > m) {
            continue;
        }
        repack.push(*id);
        unused_left -= t.unused_bytes;
        r.packs_repacked += 1;
        r.blobs_repacked += t.used_blobs;
        r.bytes_repacked += t.used_bytes;
        r.bytes_to_delete += in_storage.get(id).copied().unwrap_or(0);
    }
    r.bytes_unused_after = unused_left;
    let leftovers = listed_index.iter().any(|id| superseded.contains(id)) || !rescued.is_empty();
    if opts.dry_run || (chosen.is_empty() && repack.is_empty() && !leftovers) {
        return Ok((r, None));
    }

    // Repack: a writer that does not know the chosen packs, so it stores their blobs anew.
    let drop_set: HashSet<PackId> = chosen.iter().chain(&repack).copied().collect();
    let kept: Vec<IndexPack> = {
        let mut seen_pack = HashSet::new();
        current
            .iter()
            .flat_map(|(_, f)| &f.packs)
            .filter(|p| !drop_set.contains(&p.id) && seen_pack.insert(p.id))
            .cloned()
            .chain(rescued)
            .collect()
    };
    let to_repack: Vec<IndexPack> = {
        let want: HashSet<PackId> = repack.iter().copied().collect();
        let mut seen_pack = HashSet::new();
        current
            .iter()
            .flat_map(|(_, f)| &f.packs)
            .filter(|p| want.contains(&p.id) && seen_pack.insert(p.id))
            .map(|p| IndexPack {
                id: p.id,
                salt: p.salt,
                blobs: p.blobs.iter().filter(|b| is_used(b.kind, &b.id, &p.id)).copied().collect(),
            })
            .collect()
    };
    drop(current);
    drop(files);
    let mut written: Vec<IndexId> = Vec::new();
    if !to_repack.is_empty() {
        repo.set_index(Arc::new(Index::build([&IndexFile { packs: kept.clone(), supersedes: Vec::new() }])?));
        let writer = repo.writer(WriterOptions::default());
        for p in &to_repack {
            job.cancel.check()?;
            copy_pack(repo, &writer, p).await?;
        }
        let res = repo.finish_writer(writer).await.context("finishing the repacked packs")?;
        written.extend(res.index_ids);
    }

    // The switch: the kept packs in new index objects, the last superseding everything read.
    written.extend(switch_index(repo, kept, &listed_index, job).await.context("writing the new index")?);
    r.index_written = written.len() as u64;
    r.index_superseded = listed_index.len() as u64;

    let mut m = Marker {
        mark_time_ns: now_ns(),
        grace_ns: repo.config().gc_grace_ns,
        packs: drop_set.into_iter().collect(),
        superseded: listed_index.clone(),
        snapshots: snaps.iter().map(|(id, _)| SnapshotId(*id)).collect(),
        indexes: listed_index.into_iter().chain(written).collect(),
    };
    m.packs.sort();
    let id = repo.save_marker(&m).await.context("writing the garbage-collection marker")?;
    r.marker = Some(id.0.to_string());
    r.due_ns = Some(m.due_ns());
    repo.load_index().await?;
    Ok((r, Some((id, m))))
}

/// Write `packs` as new index objects (format version 2) of at most `BLOBS_PER_INDEX` blobs
/// each, the **last** of which supersedes `old`: before it is stored the others only duplicate
/// entries, so the switch from `old` to the new index is atomic (FORMAT.md §9). At least one
/// object is written (it may list no pack). Their ids, in order.
pub(crate) async fn switch_index(
    repo: &Repository,
    packs: Vec<IndexPack>,
    old: &[IndexId],
    job: &Job,
) -> Result<Vec<IndexId>> {
    let mut batches: Vec<Vec<IndexPack>> = vec![Vec::new()];
    let mut blobs = 0;
    for p in packs {
        if blobs >= BLOBS_PER_INDEX {
            batches.push(Vec::new());
            blobs = 0;
        }
        blobs += p.blobs.len();
        batches.last_mut().expect("one batch").push(p);
    }
    let last = batches.len() - 1;
    let mut ids = Vec::with_capacity(batches.len());
    for (i, packs) in batches.into_iter().enumerate() {
        job.cancel.check()?;
        let supersedes = if i == last { old.to_vec() } else { Vec::new() };
        ids.push(repo.save_index_v2(&IndexFile { packs, supersedes }).await?);
    }
    Ok(ids)
}

/// Copy the listed (referenced) blobs of one pack into `writer`: one read of the whole pack.
async fn copy_pack(repo: &Repository, writer: &repo_format::BlobWriter, p: &IndexPack) -> Result<()> {
    let limit = 2 * u64::from(repo.config().pack_size) + repo_format::MAX_OBJECT_LEN;
    let bytes = repo
        .storage()
        .read(FileKind::Pack, &p.id.0, limit)
        .await
        .with_context(|| format!("reading pack {} to repack it", p.id.0))?;
    let (master, writer, p) = (repo.master_key().clone(), writer.clone(), p.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let (opener, mut scratch, mut plain) = (repo_format::PackOpener::new(&master, &p.salt), Vec::new(), Vec::new());
        for b in &p.blobs {
            let (start, end) = (b.offset as usize, b.offset as usize + b.stored_len as usize);
            let stored =
                bytes.get(start..end).with_context(|| format!("pack {} is shorter than its index says", p.id.0))?;
            let blob = opener.open(b.kind, &b.id, stored, &mut scratch, &mut plain).with_context(|| {
                format!("blob {} in pack {} does not verify: prune stops; run `ferry check`", b.id.0, p.id.0)
            })?;
            writer.save_with_id(b.kind, b.id, blob)?;
        }
        Ok(())
    })
    .await
    .expect("repacking does not panic")
}

/// Where the blobs of the marked packs are, from the (superseded) index objects that listed
/// them, and for packs no index object lists, from their own headers (read when needed).
struct MarkedBlobs {
    at: HashMap<(BlobKind, BlobId), BlobLocation>,
    entries: HashMap<PackId, IndexPack>,
}

async fn sweep(repo: &Repository, id: MarkerId, m: &Marker, dry_run: bool, job: &Job) -> Result<SweepReport> {
    let mut r = SweepReport { marker: id.0.to_string(), ..Default::default() };
    let storage = repo.storage().clone();
    let marked: HashSet<PackId> = m.packs.iter().copied().collect();
    // Snapshots before index objects (as in the mark).
    let snapshots_now = storage.list(FileKind::Snapshot).await?;
    let files = repo.index_files().await.context("reading the index")?;
    let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let mut withdrawn: HashSet<PackId> = HashSet::new();
    let mut marked_blobs = MarkedBlobs { at: HashMap::new(), entries: HashMap::new() };
    for (fid, f) in &files {
        for p in f.packs.iter().filter(|p| marked.contains(&p.id)) {
            if !superseded.contains(fid) {
                withdrawn.insert(p.id); // a current index object lists it
            }
            marked_blobs.entries.entry(p.id).or_insert_with(|| p.clone());
        }
    }
    for p in marked_blobs.entries.values() {
        for b in &p.blobs {
            marked_blobs.at.insert(
                (b.kind, b.id),
                BlobLocation {
                    kind: b.kind,
                    pack: p.id,
                    salt: p.salt,
                    offset: b.offset,
                    stored_len: b.stored_len,
                    raw_len: b.raw_len,
                },
            );
        }
    }
    let index = Arc::new(Index::build(repo_format::current_index_files(&files))?);
    repo.set_index(index.clone());

    // Snapshots the mark did not see: whatever they need from marked packs stays.
    let accounted: HashSet<SnapshotId> = m.snapshots.iter().copied().collect();
    let mut roots = Vec::new();
    for (sid, _) in snapshots_now {
        let sid = SnapshotId(sid);
        if accounted.contains(&sid) {
            continue;
        }
        match repo.load_snapshot(&sid).await {
            Ok(s) => roots.push(s.tree),
            Err(repo_format::Error::NotFound { .. }) => {} // forgotten after the listing
            Err(e) if e.is_corrupt() => {
                bail!("snapshot {sid} cannot be read ({e}): the sweep deletes nothing; run `ferry check`")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let sizes: HashMap<PackId, u64> =
        storage.list(FileKind::Pack).await?.into_iter().map(|(i, n)| (PackId(i), n)).collect();
    for round in 0..2 {
        let mut unresolved = 0u64;
        let mut seen = HashSet::new();
        let mut need: HashSet<PackId> = HashSet::new();
        reach::walk(repo, roots.iter().copied(), &mut seen, job, |kind, b| {
            if let Some(loc) = index.lookup(kind, b) {
                if !marked.contains(&loc.pack) || withdrawn.contains(&loc.pack) {
                    return Some(loc);
                }
            }
            match marked_blobs.at.get(&(kind, *b)) {
                Some(loc) => {
                    need.insert(loc.pack);
                    Some(*loc)
                }
                None => {
                    unresolved += 1;
                    None
                }
            }
        })
        .await?;
        withdrawn.extend(need);
        r.blobs_missing = unresolved;
        let headerless: Vec<PackId> =
            m.packs.iter().filter(|p| !marked_blobs.entries.contains_key(p)).copied().collect();
        if unresolved == 0 || round == 1 || headerless.is_empty() {
            break;
        }
        // Some blob is in no index: look into the marked packs that no index object lists.
        for p in headerless {
            // Gone, or not parsing: nothing in it can be kept anyway.
            let Some(&size) = sizes.get(&p) else { continue };
            if let Ok(entries) = repo.pack_header(&p, size).await {
                for b in &entries.blobs {
                    marked_blobs.at.insert(
                        (b.kind, b.id),
                        BlobLocation {
                            kind: b.kind,
                            pack: p,
                            salt: entries.salt,
                            offset: b.offset,
                            stored_len: b.stored_len,
                            raw_len: b.raw_len,
                        },
                    );
                }
                marked_blobs.entries.insert(p, entries);
            }
        }
    }
    r.packs_withdrawn = withdrawn.len() as u64;
    let delete: Vec<PackId> =
        m.packs.iter().filter(|p| !withdrawn.contains(p) && sizes.contains_key(p)).copied().collect();
    let listed_index: HashSet<IndexId> = files.iter().map(|(i, _)| *i).collect();
    let index_delete: Vec<IndexId> =
        m.superseded.iter().filter(|i| superseded.contains(i) && listed_index.contains(i)).copied().collect();
    r.packs_deleted = delete.len() as u64;
    r.bytes_deleted = delete.iter().map(|p| sizes[p]).sum();
    r.index_deleted = index_delete.len() as u64;
    if dry_run {
        return Ok(r);
    }

    // Withdrawn packs that no current index object lists are indexed again, and the marker
    // is replaced by one without them, before anything is deleted.
    let mut current_marker = id;
    if !withdrawn.is_empty() {
        let listed_now: HashSet<PackId> =
            repo_format::current_index_files(&files).flat_map(|f| f.packs.iter().map(|p| p.id)).collect();
        let again: Vec<IndexPack> = withdrawn
            .iter()
            .filter(|p| !listed_now.contains(p))
            .filter_map(|p| marked_blobs.entries.get(p).cloned())
            .collect();
        if !again.is_empty() {
            repo.save_index_v2(&IndexFile { packs: again, supersedes: Vec::new() }).await?;
        }
        let mut rest = m.clone();
        rest.packs.retain(|p| !withdrawn.contains(p));
        current_marker = repo.save_marker(&rest).await?;
        remove(repo, FileKind::Marker, &id.0).await?;
    }
    drop(files);
    let deleted = futures::stream::iter(delete.iter().map(|p| remove(repo, FileKind::Pack, &p.0)))
        .buffer_unordered(DELETES)
        .collect::<Vec<_>>()
        .await;
    deleted.into_iter().collect::<Result<Vec<_>>>()?;
    job.cancel.check()?;
    let deleted = futures::stream::iter(index_delete.iter().map(|i| remove(repo, FileKind::Index, &i.0)))
        .buffer_unordered(DELETES)
        .collect::<Vec<_>>()
        .await;
    deleted.into_iter().collect::<Result<Vec<_>>>()?;
    remove(repo, FileKind::Marker, &current_marker.0).await?;
    Ok(r)
}

/// Remove an object; one that is already gone is fine (a sweep may be finishing another's).
async fn remove(repo: &Repository, kind: FileKind, id: &Id) -> Result<()> {
    match repo.storage().remove(kind, id).await {
        Ok(()) | Err(repo_format::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("deleting {kind} {id}"))),
    }
}

/// A backup that ran longer than the grace period may have deduplicated against packs that a
/// prune marked and swept meanwhile. Before writing its snapshot it checks that every blob the
/// snapshot references is in the current index, in a pack that exists and that no marker lists.
/// Returns the number of blobs that are not (0: safe to write).
///
/// Memory: the index's trees, then its entries for the snapshot's own data blobs, never the
/// whole index (at 10 M blobs the whole one took 472 MiB, at the end of a backup that ran for a
/// day). Three walks of the snapshot's trees, which the backup has just written (cached): the
/// first checks the trees and counts the data blobs, the second gathers them into a filter
/// (`BlobFilter`), and after the index is read again for those, the third checks them.
pub async fn verify_long_backup(repo: &Repository, root: repo_format::TreeId, job: &Job) -> Result<u64> {
    let packs: HashSet<PackId> =
        repo.storage().list(FileKind::Pack).await?.into_iter().map(|(i, _)| PackId(i)).collect();
    let marked: HashSet<PackId> = repo.markers().await?.into_iter().flat_map(|(_, m)| m.packs).collect();
    let live = |loc: Option<BlobLocation>| loc.filter(|l| packs.contains(&l.pack) && !marked.contains(&l.pack));
    // Its own counters: the backup's progress is not the re-check's.
    let quiet = Job { cancel: job.cancel.clone(), ..Job::new() };
    let mut bad = 0u64;
    let trees = repo.load_index_selecting(Selection::Trees).await?;
    let mut data = 0usize;
    reach::walk(repo, [root], &mut HashSet::new(), &quiet, |kind, id| match kind {
        BlobKind::Data => {
            data += 1;
            None
        }
        BlobKind::Tree => {
            let loc = live(trees.lookup(kind, id));
            bad += u64::from(loc.is_none());
            loc
        }
    })
    .await?;
    let mut filter = BlobFilter::with_capacity(data);
    reach::walk(repo, [root], &mut HashSet::new(), &quiet, |kind, id| match kind {
        BlobKind::Data => {
            filter.insert(id);
            None
        }
        BlobKind::Tree => live(trees.lookup(kind, id)),
    })
    .await?;
    drop(trees);
    let index = repo.load_index_selecting(Selection::TreesAnd(Arc::new(filter))).await?;
    reach::walk(repo, [root], &mut HashSet::new(), &quiet, |kind, id| match kind {
        BlobKind::Data => {
            bad += u64::from(live(index.lookup(kind, id)).is_none());
            None
        }
        BlobKind::Tree => live(index.lookup(kind, id)),
    })
    .await?;
    Ok(bad)
}

/// Before a backup writes its snapshot: if it ran longer than the repository's grace period
/// (since it loaded the index), `verify_long_backup`, and refuse to write a snapshot that
/// would reference blobs a prune removed meanwhile.
pub async fn guard_long_backup(
    repo: &Repository,
    root: repo_format::TreeId,
    started: std::time::Instant,
    job: &Job,
) -> Result<()> {
    let grace = repo.config().gc_grace_ns;
    if started.elapsed().as_nanos() <= u128::from(grace) {
        return Ok(());
    }
    let bad = verify_long_backup(repo, root, job)
        .await
        .context("re-checking a backup that ran longer than the grace period")?;
    if bad > 0 {
        bail!(
            "this backup ran longer than the repository's garbage-collection grace period ({:?}) and a prune \
             removed {bad} blobs it reuses meanwhile: no snapshot was written; run the backup again (it uploads \
             them anew)",
            std::time::Duration::from_nanos(grace)
        );
    }
    Ok(())
}
