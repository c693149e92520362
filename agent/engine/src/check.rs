//! `check`: prove a repository whole, or name each damaged object and the snapshots it breaks.
//!
//! What is checked, in order:
//! 1. every index object opens and decodes (those a prune superseded are then left out); within each listed pack the blobs tile the pack
//!    from offset 0 without overlap; a pack listed twice is listed the same way (same salt);
//! 2. every indexed pack exists, with the size its index entries imply (header and trailer as
//!    version 1 writes them; a pack of another size is re-checked against its own header);
//! 3. with `read_data` (all packs, `n/m` or a percentage of them): each pack's bytes hash to its
//!    name, its header matches the index, and every blob decrypts and hashes to its id;
//! 4. every snapshot decodes; every tree, subtree, indirect segment list and data blob it
//!    reaches is indexed in a pack that is there (and read well, when read), every tree decodes,
//!    and every file's segments add up to its size.
//!
//! Damage is grouped by cause, so a deleted pack is one finding (listing the snapshots it
//! breaks), not one per blob: a missing or bad pack, blobs that no index lists, one damaged
//! tree. Packs that no index lists (left by interrupted backups or written by a backup still
//! running) and indexed blobs that no snapshot uses are reported but are not damage.
//!
//! Memory: the index objects' entries (45 bytes per blob) and the in-memory index (48) live
//! together, plus one bit per blob and one map entry per tree visited; `read_data` holds at
//! most `PACK_READS` whole packs at a time. Trees are visited once however many snapshots
//! share them.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Result, bail};
use futures::StreamExt;
use repo_format::{
    BlobId, BlobKind, Content, Directory, Error as RepoError, FileKind, Id, Index, IndexFile, IndexId, NodeType,
    PackEntry, PackId, PackOpener, Repository, Segment, SnapshotId, TRAILER_LEN, TreeId, decode_segment_list,
    parse_pack,
};
use serde::Serialize;

use crate::Job;

/// Whole packs downloaded at once by `read_data`.
const PACK_READS: usize = 2;
/// Deepest directory nesting walked (as restore).
const MAX_DEPTH: usize = 2048;
/// Example blobs named in a "not in any index" finding.
const EXAMPLES: usize = 5;

/// Which packs `read_data` downloads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ReadData {
    /// Structure only: no pack is downloaded.
    None,
    All,
    /// Subset `n` of `m` (1-based): the packs whose id, read as a number, is `n - 1` modulo `m`.
    /// Running 1/m … m/m over m checks reads every pack once.
    Subset {
        n: u32,
        m: u32,
    },
    /// A random share of the packs, in percent (0 < p ≤ 100).
    Percent {
        percent: f64,
    },
}

impl ReadData {
    /// Parse `n/m` or `p%` (the CLI's `--read-data-subset`).
    pub fn parse_subset(s: &str) -> Result<Self> {
        if let Some(p) = s.strip_suffix('%') {
            let percent: f64 =
                p.trim().parse().map_err(|_| anyhow::anyhow!("{s:?}: expected a percentage like 10%"))?;
            if !(percent > 0.0 && percent <= 100.0) {
                bail!("{s:?}: the percentage must be above 0 and at most 100");
            }
            return Ok(ReadData::Percent { percent });
        }
        let Some((n, m)) = s.split_once('/') else {
            bail!("{s:?}: expected n/m (like 1/10) or a percentage (like 10%)")
        };
        let (n, m): (u32, u32) = match (n.trim().parse(), m.trim().parse()) {
            (Ok(n), Ok(m)) => (n, m),
            _ => bail!("{s:?}: expected n/m with whole numbers, like 1/10"),
        };
        if m == 0 || n == 0 || n > m {
            bail!("{s:?}: n/m needs 1 ≤ n ≤ m");
        }
        Ok(ReadData::Subset { n, m })
    }

    fn selects(&self, id: &PackId, seed: &std::collections::hash_map::RandomState) -> bool {
        match *self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset { n, m } => u32::from_be_bytes(id.0.0[..4].try_into().expect("4 bytes")) % m == n - 1,
            ReadData::Percent { percent } => (seed.hash_one(id.0.0) % 1_000_000) as f64 / 10_000.0 < percent,
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// An index object that does not open or decode.
    Index,
    /// A snapshot object that does not open or decode.
    Snapshot,
    /// An index entry that contradicts itself or another (overlapping blobs, two salts).
    IndexEntries,
    /// An indexed pack that is not in storage.
    MissingPack,
    /// An indexed pack of the wrong size, or whose header disagrees with the index.
    PackSize,
    /// A pack whose bytes do not verify (`read_data`).
    PackData,
    /// Blobs that snapshots reference and no index lists.
    MissingBlobs,
    /// A tree or segment list that does not decode, or files whose parts do not add up.
    Tree,
}

/// One finding: the object, what is wrong, and the snapshots that cannot be restored whole
/// because of it (empty for damage no snapshot reaches).
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub kind: DamageKind,
    /// `pack <id>`, `index <id>`, `snapshot <id>`, `tree <id>` or `blobs`.
    pub object: String,
    pub message: String,
    pub snapshots: Vec<String>,
}

/// A pack in storage that no index object lists.
#[derive(Debug, Clone, Serialize)]
pub struct Unreferenced {
    pub pack: String,
    pub size: u64,
}

/// The outcome of a check. The repository is whole when `damage` is empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: u64,
    pub index_objects: u64,
    pub packs: u64,
    pub blobs: u64,
    pub trees: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    /// Indexed blobs that no snapshot references (what a prune would free or repack).
    pub unused_blobs: u64,
    pub unreferenced_packs: Vec<Unreferenced>,
    pub damage: Vec<Damage>,
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub read_data: ReadData,
}

/// The findings so far, with what the tree walk needs to attribute blobs to them.
#[derive(Default)]
struct Findings {
    damage: Vec<Damage>,
    /// Per finding, the snapshots it breaks (indexes into `snapshots`).
    broken: Vec<HashSet<usize>>,
    /// Blobs whose pack is missing, unreadable or that failed to verify, to their finding.
    bad_blobs: HashMap<(BlobKind, BlobId), usize>,
    /// Packs found bad, to their finding.
    bad_packs: HashMap<PackId, usize>,
    /// The "not in any index" finding, once there is one, and its count and examples.
    unindexed: Option<usize>,
    unindexed_seen: HashSet<(BlobKind, BlobId)>,
    unindexed_examples: Vec<String>,
}

impl Findings {
    fn add(&mut self, kind: DamageKind, object: String, message: String) -> usize {
        self.damage.push(Damage { kind, object, message, snapshots: Vec::new() });
        self.broken.push(HashSet::new());
        self.damage.len() - 1
    }
}

/// Check `repo`. Damage is in the report, not an error: an `Err` means the check itself could
/// not run (storage unreachable, cancelled).
pub async fn check(repo: &Repository, opts: &CheckOptions, job: &Job) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    let mut f = Findings::default();
    let storage = repo.storage().clone();

    // Snapshots are listed first: a writer stores its index objects before its snapshot, so
    // every snapshot listed has its blobs in an index object listed after (no false alarm
    // while backups run).
    let listed_snaps = storage.list(FileKind::Snapshot).await?;

    // 1. Index objects.
    let listed_index = storage.list(FileKind::Index).await?;
    rep.index_objects = listed_index.len() as u64;
    let loaded: Vec<(IndexId, repo_format::Result<IndexFile>)> =
        futures::stream::iter(listed_index.iter().map(|(id, _)| async move {
            let id = IndexId(*id);
            (id, repo.read_index_file(&id).await)
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    let mut files = Vec::with_capacity(loaded.len());
    for (id, r) in loaded {
        job.cancel.check()?;
        match r {
            Ok(file) => files.push((id, file)),
            Err(e) if e.is_corrupt() => {
                f.add(DamageKind::Index, format!("index {}", id.0), format!("{e}"));
            }
            // Removed after the listing: a sweep deleting a superseded index object.
            Err(RepoError::NotFound { .. }) => rep.index_objects -= 1,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading index object {}", id.0))),
        }
    }

    // Index objects that a prune superseded are ignored (their packs may already be gone).
    // Their packs that no current object lists were marked by a prune and are not swept yet:
    // a snapshot may still use them (its sweep keeps those), so readers look there too.
    let superseded: HashSet<IndexId> = files.iter().flat_map(|(_, f)| f.supersedes.iter().copied()).collect();
    let mut marked_only = repo_format::marked_only(&files);
    files.retain(|(id, _)| !superseded.contains(id));

    // 2. Packs: listed the same way everywhere, tiled without overlap, present, of the right size.
    let in_storage: HashMap<PackId, u64> =
        storage.list(FileKind::Pack).await?.into_iter().map(|(id, size)| (PackId(id), size)).collect();
    let mut packs: HashMap<PackId, PackInfo> = HashMap::new();
    for (index_id, file) in &files {
        for p in &file.packs {
            match packs.get(&p.id) {
                Some(seen) if seen.salt != p.salt || seen.blobs != p.blobs.len() => {
                    f.add(
                        DamageKind::IndexEntries,
                        format!("pack {}", p.id.0),
                        format!(
                            "index objects {} and {} list it differently (salt or blob count)",
                            seen.index.0, index_id.0
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    if let Err(why) = tiles(&p.blobs) {
                        f.add(
                            DamageKind::IndexEntries,
                            format!("pack {}", p.id.0),
                            format!("index {}: {why}", index_id.0),
                        );
                    }
                    packs.insert(
                        p.id,
                        PackInfo {
                            salt: p.salt,
                            blobs: p.blobs.len(),
                            index: *index_id,
                            expected: expected_len(&p.blobs),
                        },
                    );
                }
            }
        }
    }
    rep.packs = packs.len() as u64;
    marked_only.packs.retain(|p| in_storage.contains_key(&p.id));
    let fallback = Arc::new(Index::build([&marked_only])?);
    drop(marked_only);
    repo.set_fallback(fallback.clone());
    let mut missing: HashSet<PackId> = HashSet::new();
    for (id, info) in &packs {
        job.cancel.check()?;
        match in_storage.get(id) {
            None => {
                let d = f.add(
                    DamageKind::MissingPack,
                    format!("pack {}", id.0),
                    format!("listed by index {} with {} blobs, but not in storage", info.index.0, info.blobs),
                );
                f.bad_packs.insert(*id, d);
                missing.insert(*id);
            }
            Some(&size) if Some(size) != info.expected => {
                if let Err(why) = header_matches(repo, id, size, &files).await {
                    let d = f.add(DamageKind::PackSize, format!("pack {}", id.0), why);
                    f.bad_packs.insert(*id, d);
                }
            }
            Some(_) => {}
        }
    }
    for (_, file) in &files {
        for p in &file.packs {
            if let Some(&d) = f.bad_packs.get(&p.id) {
                for b in &p.blobs {
                    f.bad_blobs.entry((b.kind, b.id)).or_insert(d);
                }
            }
        }
    }
    // The index without the missing packs, so a blob also stored elsewhere is found there.
    let usable: Vec<IndexFile> = files
        .iter()
        .map(|(_, file)| IndexFile {
            packs: file.packs.iter().filter(|p| !missing.contains(&p.id)).cloned().collect(),
            supersedes: Vec::new(),
        })
        .collect();
    let index = Arc::new(Index::build(&usable)?);
    drop(usable);
    repo.set_index(index.clone());
    rep.blobs = index.len() as u64;
    for b in f.bad_blobs.keys().copied().collect::<Vec<_>>() {
        // A copy in a good pack makes the blob fine.
        if let Some(loc) = index.lookup(b.0, &b.1) {
            if !f.bad_packs.contains_key(&loc.pack) {
                f.bad_blobs.remove(&b);
            }
        }
    }

    // 3. Read the packs' data.
    if opts.read_data != ReadData::None {
        read_data(repo, opts.read_data, &files, &packs, &missing, &mut f, &mut rep, job).await?;
    }
    drop(files);

    // 4. Snapshots and everything they reach.
    rep.snapshots = listed_snaps.len() as u64;
    let mut names: Vec<SnapshotId> = Vec::new();
    let mut walk = Walk {
        repo,
        index: &index,
        fallback: &fallback,
        used: vec![0u64; index.len().div_ceil(64)],
        memo: HashMap::new(),
    };
    for (id, _) in &listed_snaps {
        job.cancel.check()?;
        let sid = SnapshotId(*id);
        let snap = match repo.load_snapshot(&sid).await {
            Ok(s) => s,
            Err(e) if e.is_corrupt() => {
                f.add(DamageKind::Snapshot, format!("snapshot {}", sid.0), format!("{e}"));
                continue;
            }
            Err(RepoError::NotFound { .. }) => {
                rep.snapshots -= 1; // forgotten after the listing
                continue;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("reading snapshot {}", sid.0))),
        };
        let n = names.len();
        names.push(sid);
        for d in walk.root(snap.tree, &mut f, job).await? {
            f.broken[d as usize].insert(n);
        }
    }
    rep.trees = walk.memo.len() as u64;
    rep.unused_blobs = index.len() as u64 - walk.used.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();

    if let Some(d) = f.unindexed {
        f.damage[d].message = format!(
            "{} blobs that snapshots reference are in no index object (for example {})",
            f.unindexed_seen.len(),
            f.unindexed_examples.join("; ")
        );
    }
    for (d, broken) in f.damage.iter_mut().zip(&f.broken) {
        let mut s: Vec<usize> = broken.iter().copied().collect();
        s.sort_unstable();
        d.snapshots = s.into_iter().map(|i| names[i].to_string()).collect();
    }
    rep.damage = f.damage;
    let mut unref: Vec<Unreferenced> = in_storage
        .iter()
        .filter(|(id, _)| !packs.contains_key(id))
        .map(|(id, size)| Unreferenced { pack: id.0.to_string(), size: *size })
        .collect();
    unref.sort_by(|a, b| a.pack.cmp(&b.pack));
    rep.unreferenced_packs = unref;
    Ok(rep)
}

/// A pack as the first index object listing it describes it.
struct PackInfo {
    salt: [u8; repo_format::SALT_LEN],
    blobs: usize,
    index: IndexId,
    /// The size version 1 writes for these blobs, when they tile the pack.
    expected: Option<u64>,
}

/// The blobs must cover `0..end` exactly, each after the one before.
fn tiles(blobs: &[PackEntry]) -> std::result::Result<(), String> {
    let mut spans: Vec<(u64, u64)> =
        blobs.iter().map(|b| (u64::from(b.offset), u64::from(b.offset) + u64::from(b.stored_len))).collect();
    spans.sort_unstable();
    let mut at = 0u64;
    for (start, end) in spans {
        if start < at {
            return Err(format!("blobs overlap at offset {start}"));
        }
        if start > at {
            return Err(format!("a gap of {} bytes before offset {start}", start - at));
        }
        at = end;
    }
    Ok(())
}

/// Does a pack's own header (salt, entries) list the same blobs at the same places as its
/// index entries do, in whatever order?
fn same_blobs(header: (&[u8; 32], &[PackEntry]), index: (&[u8; 32], &[PackEntry])) -> bool {
    let key = |l: &[PackEntry]| {
        let mut v: Vec<_> = l.iter().map(|e| (e.offset, e.kind, e.id, e.stored_len)).collect();
        v.sort_unstable();
        v
    };
    header.0 == index.0 && key(header.1) == key(index.1)
}

/// Blob bytes, the header as version 1 writes it (raw: `41 × (blobs + 1)` bytes) and the trailer.
fn expected_len(blobs: &[PackEntry]) -> Option<u64> {
    tiles(blobs).ok()?;
    let data: u64 = blobs.iter().map(|b| u64::from(b.stored_len)).sum();
    Some(data + 41 * (blobs.len() as u64 + 1) + TRAILER_LEN as u64)
}

/// A pack whose size is not the one expected is fine if its own header lists the blobs the
/// index lists (another writer may store headers differently). Two range reads.
async fn header_matches(
    repo: &Repository,
    id: &PackId,
    size: u64,
    files: &[(IndexId, IndexFile)],
) -> std::result::Result<(), String> {
    let listed = files.iter().flat_map(|(_, f)| &f.packs).find(|p| p.id == *id).expect("indexed pack");
    let own = repo
        .pack_header(id, size)
        .await
        .map_err(|e| format!("{size} bytes, not the size its index entries imply; its header: {e}"))?;
    if !same_blobs((&own.salt, &own.blobs), (&listed.salt, &listed.blobs)) {
        return Err(format!("{size} bytes; its header lists other blobs than the index does"));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn read_data(
    repo: &Repository,
    mode: ReadData,
    files: &[(IndexId, IndexFile)],
    packs: &HashMap<PackId, PackInfo>,
    missing: &HashSet<PackId>,
    f: &mut Findings,
    rep: &mut CheckReport,
    job: &Job,
) -> Result<()> {
    let seed = std::collections::hash_map::RandomState::new();
    let mut first: HashMap<PackId, &repo_format::IndexPack> = HashMap::new();
    for p in files.iter().flat_map(|(_, file)| &file.packs) {
        first.entry(p.id).or_insert(p);
    }
    let mut chosen: Vec<&repo_format::IndexPack> = first
        .values()
        .copied()
        .filter(|p| !missing.contains(&p.id) && packs.contains_key(&p.id) && mode.selects(&p.id, &seed))
        .collect();
    chosen.sort_by_key(|p| p.id);
    job.progress.files_total.store(chosen.len() as u64, Relaxed);
    job.progress
        .bytes_total
        .store(chosen.iter().map(|p| p.blobs.iter().map(|b| u64::from(b.stored_len)).sum::<u64>()).sum(), Relaxed);
    let limit = 2 * u64::from(repo.config().pack_size) + repo_format::MAX_OBJECT_LEN;
    let master = repo.master_key().clone();
    let mut results = futures::stream::iter(chosen.into_iter().map(|p| {
        let (storage, master, cancel) = (repo.storage().clone(), master.clone(), job.cancel.clone());
        let p = p.clone();
        async move {
            cancel.check()?;
            let bytes = match storage.read(FileKind::Pack, &p.id.0, limit).await {
                Ok(b) => b,
                Err(e) if e.is_corrupt() || matches!(e, RepoError::NotFound { .. }) => {
                    return Ok::<_, anyhow::Error>((p, 0, Err(format!("{e}")), Vec::new()));
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("reading pack {}", p.id.0))),
            };
            let n = bytes.len() as u64;
            let (p, (whole, bad)) = tokio::task::spawn_blocking(move || {
                let verdict = verify_pack(&master, &p, &bytes);
                (p, verdict)
            })
            .await
            .expect("verification does not panic");
            Ok((p, n, whole, bad))
        }
    }))
    .buffer_unordered(PACK_READS);
    while let Some(r) = results.next().await {
        let (p, n, whole, bad) = r?;
        rep.packs_read += 1;
        rep.bytes_read += n;
        job.progress.bytes_done.fetch_add(n, Relaxed);
        job.progress.files_done.fetch_add(1, Relaxed);
        if whole.is_ok() && bad.is_empty() {
            continue;
        }
        let mut why = Vec::new();
        if let Err(e) = &whole {
            why.push(e.clone());
        }
        if !bad.is_empty() {
            why.push(format!("{} of its {} blobs fail to verify", bad.len(), p.blobs.len()));
        }
        let d = f.add(DamageKind::PackData, format!("pack {}", p.id.0), why.join("; "));
        f.bad_packs.insert(p.id, d);
        let unreadable = whole.is_err() && n == 0;
        for b in &p.blobs {
            if unreadable || bad.contains(&(b.kind, b.id)) {
                f.bad_blobs.entry((b.kind, b.id)).or_insert(d);
            }
        }
    }
    Ok(())
}

/// Verify a downloaded pack: the whole (its name, trailer and header against the index), and
/// every blob the index lists in it. Returns the whole's verdict and the blobs that fail.
type PackVerdict = (std::result::Result<(), String>, Vec<(BlobKind, BlobId)>);

fn verify_pack(master: &repo_format::MasterKey, p: &repo_format::IndexPack, bytes: &[u8]) -> PackVerdict {
    let mut whole = Ok(());
    if Id::of_stored(bytes) != p.id.0 {
        whole = Err("its bytes do not hash to its name".to_string());
    } else {
        match parse_pack(master, bytes) {
            Ok((salt, entries)) => {
                if !same_blobs((&salt, &entries), (&p.salt, &p.blobs)) {
                    whole = Err("its header lists other blobs than the index does".to_string());
                }
            }
            Err(e) => whole = Err(format!("{e}")),
        }
    }
    let mut bad = Vec::new();
    let (opener, mut scratch, mut plain) = (PackOpener::new(master, &p.salt), Vec::new(), Vec::new());
    for b in &p.blobs {
        let (start, end) = (b.offset as usize, b.offset as usize + b.stored_len as usize);
        let ok = end <= bytes.len() && opener.open(b.kind, &b.id, &bytes[start..end], &mut scratch, &mut plain).is_ok();
        if !ok {
            bad.push((b.kind, b.id));
        }
    }
    (whole, bad)
}

/// The tree walk: each tree once, remembering which findings lie beneath it.
struct Walk<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// Blobs in marked, unswept packs (present, not damage).
    fallback: &'a Index,
    /// One bit per index position: referenced by some snapshot.
    used: Vec<u64>,
    /// Trees visited, to the findings beneath them (empty for a whole tree).
    memo: HashMap<TreeId, Box<[u32]>>,
}

struct Frame {
    id: TreeId,
    path: String,
    depth: usize,
    children: Vec<TreeId>,
    own: Vec<u32>,
    expanded: bool,
}

impl Walk<'_> {
    fn mark(&mut self, kind: BlobKind, id: &BlobId) {
        if let Some(i) = self.index.position(kind, id) {
            self.used[i / 64] |= 1 << (i % 64);
        }
    }

    /// The finding for a blob that cannot be read, if it cannot: a bad pack's, or the shared
    /// "in no index" finding.
    fn unreadable(&mut self, kind: BlobKind, id: &BlobId, at: &str, f: &mut Findings) -> Option<u32> {
        self.mark(kind, id);
        if let Some(&d) = f.bad_blobs.get(&(kind, *id)) {
            return Some(d as u32);
        }
        if self.index.contains(kind, id) || self.fallback.contains(kind, id) {
            return None;
        }
        let d = *f.unindexed.get_or_insert_with(|| {
            f.damage.push(Damage {
                kind: DamageKind::MissingBlobs,
                object: "blobs".into(),
                message: String::new(),
                snapshots: Vec::new(),
            });
            f.broken.push(HashSet::new());
            f.damage.len() - 1
        });
        if f.unindexed_seen.insert((kind, *id)) && f.unindexed_examples.len() < EXAMPLES {
            let what = if kind == BlobKind::Tree { "tree" } else { "data blob" };
            f.unindexed_examples.push(format!("{what} {} at {at}", id.0.short()));
        }
        Some(d as u32)
    }

    /// Walk from a snapshot's root; the findings beneath it.
    async fn root(&mut self, root: TreeId, f: &mut Findings, job: &Job) -> Result<Box<[u32]>> {
        let mut stack = vec![Frame {
            id: root,
            path: "/".into(),
            depth: 0,
            children: Vec::new(),
            own: Vec::new(),
            expanded: false,
        }];
        let mut on_stack: HashSet<TreeId> = HashSet::from([root]);
        while let Some(top) = stack.last_mut() {
            if self.memo.contains_key(&top.id) && !top.expanded {
                on_stack.remove(&top.id);
                stack.pop();
                continue;
            }
            if top.expanded {
                let mut all = std::mem::take(&mut top.own);
                for c in &top.children {
                    all.extend(self.memo.get(c).map(|d| d.iter().copied()).into_iter().flatten());
                }
                all.sort_unstable();
                all.dedup();
                let id = top.id;
                self.memo.insert(id, all.into_boxed_slice());
                on_stack.remove(&id);
                stack.pop();
                continue;
            }
            job.cancel.check()?;
            let (id, path, depth) = (top.id, top.path.clone(), top.depth);
            let mut own = Vec::new();
            let mut children = Vec::new();
            let mut frames = Vec::new();
            let bid = BlobId(id.0);
            if let Some(d) = self.unreadable(BlobKind::Tree, &bid, &path, f) {
                own.push(d);
            } else {
                match self.repo.read_dir(&id).await {
                    Err(e) if e.is_corrupt() => {
                        own.push(f.add(DamageKind::Tree, format!("tree {}", id.0), format!("at {path}: {e}")) as u32)
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("reading tree {} at {path}", id.0))),
                    Ok(dir) => {
                        // A directory in parts: each part read and checked in turn, its entries
                        // in strictly ascending order across the parts.
                        let (mut whole, parts) = match dir {
                            Directory::Tree(t) => (Some(t), Vec::new()),
                            Directory::Parts(p) => (None, p),
                        };
                        let (mut next, mut prev): (usize, Option<Vec<u8>>) = (0, None);
                        loop {
                            let tree = match whole.take() {
                                Some(t) => t,
                                None => {
                                    let Some(p) = parts.get(next) else { break };
                                    next += 1;
                                    if let Some(d) = self.unreadable(BlobKind::Tree, &BlobId(p.id.0), &path, f) {
                                        own.push(d);
                                        continue;
                                    }
                                    match self.repo.read_tree_part(p).await {
                                        Err(e) if e.is_corrupt() => {
                                            own.push(f.add(
                                                DamageKind::Tree,
                                                format!("tree {}", p.id.0),
                                                format!("at {path}: {e}"),
                                            ) as u32);
                                            continue;
                                        }
                                        Err(e) => {
                                            return Err(anyhow::Error::new(e)
                                                .context(format!("reading tree {} at {path}", p.id.0)));
                                        }
                                        Ok(t) => {
                                            let first = t.nodes.first().map(|n| n.name.as_slice());
                                            let ordered = t.nodes.windows(2).all(|w| w[0].name < w[1].name)
                                                && prev.as_deref().zip(first).is_none_or(|(a, b)| a < b);
                                            if !ordered {
                                                own.push(f.add(
                                                DamageKind::Tree,
                                                format!("tree {}", p.id.0),
                                                format!("at {path}: a directory part's entries are not in ascending order"),
                                            ) as u32);
                                            }
                                            prev = t.nodes.last().map(|n| n.name.clone()).or(prev);
                                            t
                                        }
                                    }
                                }
                            };
                            for node in &tree.nodes {
                                let name = String::from_utf8_lossy(&node.name);
                                let at = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                                match &node.content {
                                    Content::Tree(t) if node.kind == NodeType::Dir => {
                                        if let Some(d) = self.memo.get(t) {
                                            own.extend(d.iter().copied());
                                        } else if on_stack.contains(t) || depth + 1 > MAX_DEPTH {
                                            own.push(f.add(
                                                DamageKind::Tree,
                                                format!("tree {}", id.0),
                                                format!(
                                                    "at {at}: a directory cycle or nesting deeper than {MAX_DEPTH}"
                                                ),
                                            ) as u32);
                                        } else {
                                            children.push(*t);
                                            frames.push((*t, at));
                                        }
                                    }
                                    Content::Segments(segs) => {
                                        let covered = self.segments(segs, &at, f, &mut own).await?;
                                        if covered.is_some_and(|c| c != node.size) {
                                            own.push(f.add(
                                                DamageKind::Tree,
                                                format!("tree {}", id.0),
                                                format!(
                                                    "at {at}: the parts cover {} bytes, the file is {} bytes",
                                                    covered.unwrap_or(0),
                                                    node.size
                                                ),
                                            ) as u32);
                                        }
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                }
            }
            let top = stack.last_mut().expect("top");
            top.own = own;
            top.children = children;
            top.expanded = true;
            for (t, at) in frames {
                if on_stack.insert(t) {
                    stack.push(Frame {
                        id: t,
                        path: at,
                        depth: depth + 1,
                        children: Vec::new(),
                        own: Vec::new(),
                        expanded: false,
                    });
                }
            }
        }
        Ok(self.memo.get(&root).cloned().unwrap_or_default())
    }

    /// Check a file's segments; the bytes they cover (None when a list could not be read).
    async fn segments(
        &mut self,
        segs: &[Segment],
        at: &str,
        f: &mut Findings,
        own: &mut Vec<u32>,
    ) -> Result<Option<u64>> {
        let mut covered = Some(0u64);
        for s in segs {
            match s {
                Segment::Zero { len } => covered = covered.map(|c| c + len),
                Segment::Blob { id, len } => {
                    if let Some(d) = self.unreadable(BlobKind::Data, id, at, f) {
                        own.push(d);
                    }
                    covered = covered.map(|c| c + u64::from(*len));
                }
                Segment::Indirect { id, len } => {
                    covered = covered.map(|c| c + len);
                    let list = BlobId(id.0);
                    if let Some(d) = self.unreadable(BlobKind::Tree, &list, at, f) {
                        own.push(d);
                        continue;
                    }
                    let inner =
                        match self.repo.read_blob(BlobKind::Tree, &list).await.and_then(|b| decode_segment_list(&b)) {
                            Ok(l) => l,
                            Err(e) if e.is_corrupt() => {
                                own.push(f.add(
                                    DamageKind::Tree,
                                    format!("tree {}", id.0),
                                    format!("segment list of {at}: {e}"),
                                ) as u32);
                                covered = None;
                                continue;
                            }
                            Err(e) => {
                                return Err(anyhow::Error::new(e).context(format!("reading the segment list of {at}")));
                            }
                        };
                    let mut sum = 0u64;
                    for s in &inner {
                        match s {
                            Segment::Zero { len } => sum += len,
                            Segment::Blob { id, len } => {
                                if let Some(d) = self.unreadable(BlobKind::Data, id, at, f) {
                                    own.push(d);
                                }
                                sum += u64::from(*len);
                            }
                            Segment::Indirect { .. } => {
                                own.push(f.add(
                                    DamageKind::Tree,
                                    format!("tree {}", id.0),
                                    format!("segment list of {at}: nested indirect lists are not allowed"),
                                ) as u32);
                            }
                        }
                    }
                    if sum != *len {
                        own.push(f.add(
                            DamageKind::Tree,
                            format!("tree {}", id.0),
                            format!("segment list of {at} covers {sum} bytes where {len} were announced"),
                        ) as u32);
                    }
                }
            }
        }
        Ok(covered)
    }
}
