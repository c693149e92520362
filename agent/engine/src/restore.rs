//! The restore engine: a snapshot's tree into a target directory.
//!
//! Plan, then execute (`RestorePlan` can be inspected before anything is written):
//! 1. walk the snapshot's trees, reject unsafe names and duplicates, apply include/exclude, and
//!    list directories, files (with their segment lists expanded), hardlink groups and special
//!    entries;
//! 2. create directories, then empty files sized to their length (holes) and special files
//!    (symlinks last of all, so no write can pass through one) — but not files whose content is
//!    one blob (most small files), which step 3 creates, writes and completes in one visit;
//! 3. fetch content pack by pack — each needed byte range of a pack is read once, blobs are
//!    decrypted, verified and written with positioned writes to every place that uses them,
//!    several ranges in flight (`content`);
//! 4. set metadata: files, then hardlinks (to files that now exist), special entries, then
//!    directories deepest first (so their mtimes survive), and optionally re-read and verify
//!    every file (`verify`).
//!
//! A snapshot may be hostile (a bucket someone else controls) and the target may be written by
//! others while the restore runs. So: planning has a memory budget (`Budget`: a tree that repeats
//! its subtrees, or indirect segment lists expanded per file, cannot exhaust memory) and a depth
//! limit; a file's segments must add up to its size; device nodes are refused and setuid/setgid
//! dropped unless asked (`RestoreOptions`); every entry is written through `SafeRoot`, which
//! never follows a link and re-checks identity before each step; and a file whose content
//! failed is emptied (never left looking complete with its original size and time) and listed.

pub(crate) mod content;
pub(crate) mod verify;

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use repo_format::{
    BlobId, BlobKind, Content, Node, NodeType, Repository, Segment, Selection, Tree, TreeId, decode_segment_list,
};

use crate::fsmeta::path_of;
use crate::job::Job;
use crate::report::{EntryError, EntryErrorKind};
use crate::safefs::{FileId, SafeRoot};

/// How a restore treats what it writes.
#[derive(Debug, Clone, Copy)]
pub struct RestoreOptions {
    /// Re-read every file afterwards and check it against the snapshot.
    pub verify: bool,
    /// Create character and block device nodes (refused by default: a forged snapshot could
    /// otherwise give the target's users a raw device of the node).
    pub allow_devices: bool,
    /// Keep setuid/setgid bits on files (dropped by default).
    pub keep_setuid: bool,
    /// Memory the plan may take (`Budget`).
    pub max_plan_bytes: u64,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { verify: false, allow_devices: false, keep_setuid: false, max_plan_bytes: DEFAULT_PLAN_BYTES }
    }
}

/// Default plan budget: 1 GiB, about three million files.
pub const DEFAULT_PLAN_BYTES: u64 = 1 << 30;

/// Deepest directory nesting restored (Linux paths stop at 4096 bytes; 2048 levels of one-byte
/// names fill that).
pub(crate) const MAX_DEPTH: usize = 2048;

/// Refusals listed one by one; more are counted.
const MAX_REJECTED_LINES: usize = 1000;

/// The plan would take more memory than allowed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the restore plan needs more than {limit} bytes of memory (--max-plan-memory): the snapshot is very large, \
     or forged so that its directories or segment lists repeat"
)]
pub struct PlanTooLarge {
    pub limit: u64,
}

/// The memory a plan may still take, in estimated bytes.
#[derive(Debug)]
pub struct Budget {
    left: u64,
    limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { left: limit, limit }
    }
    /// Take `bytes` from the budget, or fail with `PlanTooLarge`.
    pub fn take(&mut self, bytes: u64) -> Result<(), PlanTooLarge> {
        self.left = self.left.checked_sub(bytes).ok_or(PlanTooLarge { limit: self.limit })?;
        Ok(())
    }
    /// What a node costs in a plan: its struct, name, path (kept twice for directories: in the
    /// plan and in the set of wanted directories), link target and xattrs. Vectors grow by
    /// doubling, so the memory in use may reach about twice what was taken.
    fn node(&mut self, n: &Node, rel: &Path) -> Result<(), PlanTooLarge> {
        let xattrs: usize = n.xattrs.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
        let path = rel.as_os_str().len() * if n.kind == NodeType::Dir { 2 } else { 1 };
        let bytes = std::mem::size_of::<FileEntry>() + 64 + n.name.len() + path + n.link_target.len() + xattrs;
        self.take(bytes as u64)
    }
    fn segments(&mut self, n: usize) -> Result<(), PlanTooLarge> {
        self.take((n * std::mem::size_of::<Segment>()) as u64)
    }
}

/// A directory as the planner reads it: a tree, or the parts it is stored in.
enum Listed {
    Tree(Arc<Tree>),
    Parts(Vec<repo_format::DirPart>),
}

/// Decoded small trees by id, so a subtree that appears many times is read and decoded once.
#[derive(Default)]
struct TreeMemo(HashMap<TreeId, Arc<Tree>>);

impl TreeMemo {
    const MAX_TREES: usize = 4096;
    const MAX_NODES: usize = 32;
    async fn get(&mut self, repo: &Repository, id: TreeId) -> repo_format::Result<Listed> {
        if let Some(t) = self.0.get(&id) {
            return Ok(Listed::Tree(t.clone()));
        }
        let t = match repo.read_dir(&id).await? {
            repo_format::Directory::Tree(t) => Arc::new(t),
            repo_format::Directory::Parts(p) => return Ok(Listed::Parts(p)),
        };
        if t.nodes.len() <= Self::MAX_NODES {
            if self.0.len() >= Self::MAX_TREES {
                self.0.clear();
            }
            self.0.insert(id, t.clone());
        }
        Ok(Listed::Tree(t))
    }
}

/// Which entries to restore.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub includes: Vec<glob::Pattern>,
    pub excludes: Vec<glob::Pattern>,
}

impl Filter {
    /// From glob patterns as a user writes them; a bad one is an error naming it.
    pub fn parse(includes: &[String], excludes: &[String]) -> anyhow::Result<Filter> {
        let parse = |list: &[String], what: &str| -> anyhow::Result<Vec<glob::Pattern>> {
            list.iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| anyhow::anyhow!("{what} pattern {p:?}: {e}")))
                .collect()
        };
        Ok(Filter { includes: parse(includes, "include")?, excludes: parse(excludes, "exclude")? })
    }

    fn opts() -> glob::MatchOptions {
        glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        }
    }
    fn excluded(&self, rel: &Path) -> bool {
        self.excludes.iter().any(|p| {
            p.matches_path_with(rel, Self::opts())
                || rel.file_name().is_some_and(|n| p.matches_with(&n.to_string_lossy(), Self::opts()))
        })
    }
    fn included(&self, rel: &Path) -> bool {
        self.includes.is_empty() || self.includes.iter().any(|p| p.matches_path_with(rel, Self::opts()))
    }
}

/// The regular files of a plan. A plan may hold millions, so it keeps only what the restore
/// uses (`FileMeta`, not the node), and every path and segment list in one shared buffer each
/// rather than one allocation per file: 80 bytes a file here, plus its path and 48 bytes per
/// segment, where a path and a segment list of their own cost about 50 bytes more.
#[derive(Debug, Default)]
pub struct Files {
    entries: Vec<FileEntry>,
    paths: Vec<u8>,
    segments: Vec<Segment>,
}

#[derive(Debug)]
struct FileEntry {
    meta: FileMeta,
    path: u64,
    segments: u64,
    path_len: u32,
    segments_len: u32,
}

const _: () = assert!(std::mem::size_of::<FileEntry>() <= 80);

/// One regular file of a plan, as `Files` gives it.
#[derive(Debug, Clone, Copy)]
pub struct FilePlan<'a> {
    pub rel: &'a Path,
    pub meta: &'a FileMeta,
    pub segments: &'a [Segment],
}

impl FilePlan<'_> {
    /// Whether the content is one blob (most small files): the restore then creates, writes and
    /// completes the file in one visit during the content phase.
    pub fn is_one_blob(&self) -> bool {
        self.segments.iter().filter(|s| matches!(s, Segment::Blob { .. })).count() == 1
    }
}

impl Files {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<FilePlan<'_>> {
        let e = self.entries.get(i)?;
        let path = &self.paths[e.path as usize..][..e.path_len as usize];
        Some(FilePlan {
            rel: Path::new(std::ffi::OsStr::from_bytes(path)),
            meta: &e.meta,
            segments: &self.segments[e.segments as usize..][..e.segments_len as usize],
        })
    }
    /// File `i`, which must exist.
    pub fn at(&self, i: usize) -> FilePlan<'_> {
        self.get(i).expect("file index within the plan")
    }
    pub fn iter(&self) -> impl Iterator<Item = FilePlan<'_>> {
        (0..self.len()).map(|i| self.at(i))
    }
    /// Every segment of every file, in one list.
    pub(crate) fn all_segments(&self) -> &[Segment] {
        &self.segments
    }
    fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
        self.paths.shrink_to_fit();
        self.segments.shrink_to_fit();
    }
    /// Add a file whose segments are the last `segments` of the shared list (put there by
    /// `expand_into`). Past 2^32 files, or a path or list too long to count, is refused.
    fn push(&mut self, rel: &Path, meta: FileMeta, segments: usize) -> Result<()> {
        let bytes = rel.as_os_str().as_bytes();
        let (Ok(path_len), Ok(segments_len), true) =
            (u32::try_from(bytes.len()), u32::try_from(segments), self.entries.len() < u32::MAX as usize)
        else {
            anyhow::bail!(
                "{}: more than 2^32 files, or a path or segment list too long to count, in one restore; \
                 restore part of the snapshot (--include)",
                rel.display()
            );
        };
        let entry = FileEntry {
            meta,
            path: self.paths.len() as u64,
            segments: (self.segments.len() - segments) as u64,
            path_len,
            segments_len,
        };
        self.paths.extend_from_slice(bytes);
        self.entries.push(entry);
        Ok(())
    }
}

/// What a restore sets on a regular file: its length, then owner, permissions, xattrs and times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    pub mtime_ns: i64,
    pub atime_ns: i64,
    /// Permission bits as stored (setuid/setgid are filtered when applied).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub xattrs: Box<[(Vec<u8>, Vec<u8>)]>,
}

impl FileMeta {
    pub fn of(n: &Node) -> FileMeta {
        FileMeta {
            size: n.size,
            mtime_ns: n.mtime_ns,
            atime_ns: n.atime_ns,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            xattrs: n.xattrs.clone().into_boxed_slice(),
        }
    }
}

/// What a restore will do.
#[derive(Debug, Default)]
pub struct RestorePlan {
    /// Directories, parents before children (the root "" first).
    pub dirs: Vec<(PathBuf, Node)>,
    pub files: Files,
    /// (path, index into `files` of the first path of the same inode).
    pub hardlinks: Vec<(PathBuf, usize, Node)>,
    pub specials: Vec<(PathBuf, Node)>,
    /// Entries refused (unsafe or duplicate names), one line each.
    pub rejected: Vec<EntryError>,
    pub bytes: u64,
}

/// Result of a restore (serializable: what the agent copies into a status).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub files: u64,
    pub dirs: u64,
    pub specials: u64,
    pub bytes_written: u64,
    pub errors: Vec<EntryError>,
    /// Files whose content could not be restored: emptied, listed in `errors`.
    pub incomplete: u64,
    pub verified: Option<u64>,
}

/// The repository a restore works on: a view of `repo` with an index of its own (jobs sharing
/// `repo`, the agent's, never see it), loaded with what the restore reads first. With a local
/// cache of index objects, only the tree blobs' entries: `execute` (and a disk's restore) then
/// load those of the data blobs the plan uses (`content::select_index`), so a restore of a few
/// files from a repository of millions of blobs never holds every entry. Without a cache, every
/// entry in one reading: a second one would download the whole index again.
pub async fn load_index(repo: &Repository) -> Result<Arc<Repository>> {
    let view = Arc::new(repo.view());
    let select = if view.cache().is_some() { Selection::Trees } else { Selection::All };
    view.load_index_selecting(select).await.context("loading the repository index")?;
    Ok(view)
}

/// Walk the snapshot's trees into a plan, within `opts.max_plan_bytes`.
pub async fn plan(repo: &Repository, root: TreeId, filter: &Filter, opts: &RestoreOptions) -> Result<RestorePlan> {
    let mut p = RestorePlan::default();
    let mut budget = Budget::new(opts.max_plan_bytes);
    let mut memo = TreeMemo::default();
    let mut rejected_more = 0usize;
    let mut reject = |p: &mut RestorePlan, line: EntryError| {
        if p.rejected.len() < MAX_REJECTED_LINES {
            p.rejected.push(line);
        } else {
            rejected_more += 1;
        }
    };
    let mut root_node = Node::new(Vec::new(), NodeType::Dir);
    root_node.mode = 0o755;
    p.dirs.push((PathBuf::new(), root_node));
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    // (tree, path, depth, parent selected by an include)
    let mut stack = vec![(root, PathBuf::new(), 0usize, false)];
    let mut wanted_dirs: HashSet<PathBuf> = HashSet::new();
    wanted_dirs.insert(PathBuf::new());
    let mut dir_index: Vec<(PathBuf, Node)> = Vec::new();
    while let Some((tree_id, rel, depth, inherited)) = stack.pop() {
        if depth > MAX_DEPTH {
            reject(
                &mut p,
                EntryError::new(
                    EntryErrorKind::Refused,
                    &rel,
                    format!("nested deeper than {MAX_DEPTH} directories; refused"),
                ),
            );
            continue;
        }
        let (mut whole, parts) =
            match memo.get(repo, tree_id).await.with_context(|| format!("reading the tree of {rel:?}"))? {
                Listed::Tree(t) => (Some(t), Vec::new()),
                Listed::Parts(p) => (None, p),
            };
        // A directory in parts is read one part at a time; its entries must come in strictly
        // ascending order, which also refuses duplicates without remembering every name.
        let (mut next, mut prev): (usize, Option<Vec<u8>>) = (0, None);
        loop {
            let tree = match whole.take() {
                Some(t) => t,
                None => {
                    let Some(part) = parts.get(next) else { break };
                    next += 1;
                    // Reading costs work whatever the entries turn out to be: a forged index
                    // naming one big part many times runs out of budget, not of time.
                    budget.take(u64::from(part.entries) * 16)?;
                    let t = repo
                        .read_tree_part(part)
                        .await
                        .with_context(|| format!("reading a part of the tree of {rel:?}"))?;
                    Arc::new(t)
                }
            };
            let mut seen = HashSet::new();
            for node in tree.nodes.iter() {
                let shown = rel.join(path_of(&node.name));
                if !node.has_safe_name() {
                    reject(
                        &mut p,
                        EntryError::new(
                            EntryErrorKind::Refused,
                            &rel,
                            format!("unsafe name {:?} refused", String::from_utf8_lossy(&node.name)),
                        ),
                    );
                    continue;
                }
                if let Some(before) = prev.as_ref().filter(|_| !parts.is_empty()) {
                    if before.as_slice() >= node.name.as_slice() {
                        reject(
                            &mut p,
                            EntryError::new(EntryErrorKind::Refused, &shown, "duplicate or out-of-order entry refused"),
                        );
                        continue;
                    }
                }
                if !parts.is_empty() {
                    prev = Some(node.name.clone());
                }
                if !seen.insert(&node.name) {
                    reject(&mut p, EntryError::new(EntryErrorKind::Refused, &shown, "duplicate entry refused"));
                    continue;
                }
                if filter.excluded(&shown) {
                    continue;
                }
                let selected = inherited || filter.included(&shown);
                match (&node.kind, &node.content) {
                    (NodeType::Dir, Content::Tree(sub)) => {
                        budget.node(node, &shown)?;
                        stack.push((*sub, shown.clone(), depth + 1, selected));
                        if selected {
                            mark_parents(&mut wanted_dirs, &shown);
                        }
                        dir_index.push((shown, node.clone()));
                    }
                    (NodeType::Dir, _) => {
                        reject(
                            &mut p,
                            EntryError::new(EntryErrorKind::Refused, &shown, "directory without a tree refused"),
                        );
                    }
                    _ if !selected => {}
                    (NodeType::File, Content::Segments(segs)) => {
                        budget.node(node, &shown)?;
                        // A further link to an inode already planned is only a link: its
                        // segments are not expanded (an indirect list would cost a read).
                        if node.nlink > 1 {
                            if let Some(&first) = inodes.get(&(node.dev, node.ino)) {
                                mark_parents(&mut wanted_dirs, shown.parent().unwrap_or(Path::new("")));
                                p.hardlinks.push((shown, first, node.clone()));
                                continue;
                            }
                        }
                        let all = &mut p.files.segments;
                        let before = all.len();
                        expand_into(repo, segs, &mut budget, all)
                            .await
                            .with_context(|| format!("{}", shown.display()))?;
                        let covered = all[before..].iter().try_fold(0u64, |a, s| a.checked_add(s.len()));
                        let segments = all.len() - before;
                        if covered != Some(node.size) {
                            all.truncate(before);
                            reject(
                                &mut p,
                                EntryError::new(
                                    EntryErrorKind::Refused,
                                    &shown,
                                    format!(
                                        "its content covers {} bytes but its size is {}: the snapshot is damaged; refused",
                                        covered.map_or("more than 2^64".to_string(), |c| c.to_string()),
                                        node.size
                                    ),
                                ),
                            );
                            continue;
                        }
                        mark_parents(&mut wanted_dirs, shown.parent().unwrap_or(Path::new("")));
                        if node.nlink > 1 {
                            inodes.insert((node.dev, node.ino), p.files.len());
                        }
                        p.bytes += node.size;
                        p.files.push(&shown, FileMeta::of(node), segments)?;
                    }
                    (NodeType::File, _) if node.size != 0 => {
                        reject(
                            &mut p,
                            EntryError::new(
                                EntryErrorKind::Refused,
                                &shown,
                                format!("a file of {} bytes without content refused", node.size),
                            ),
                        );
                    }
                    (NodeType::File, _) => {
                        budget.node(node, &shown)?;
                        mark_parents(&mut wanted_dirs, shown.parent().unwrap_or(Path::new("")));
                        p.files.push(&shown, FileMeta::of(node), 0)?;
                    }
                    (NodeType::CharDev | NodeType::BlockDev, _) if !opts.allow_devices => {
                        reject(
                            &mut p,
                            EntryError::new(
                                EntryErrorKind::Refused,
                                &shown,
                                "device node refused (restore with --allow-devices to create it)",
                            ),
                        );
                    }
                    _ => {
                        budget.node(node, &shown)?;
                        mark_parents(&mut wanted_dirs, shown.parent().unwrap_or(Path::new("")));
                        p.specials.push((shown, node.clone()));
                    }
                }
            }
        }
    }
    if rejected_more > 0 {
        p.rejected
            .push(EntryError::general(EntryErrorKind::Refused, format!("… and {rejected_more} more entries refused")));
    }
    dir_index.retain(|(rel, _)| wanted_dirs.contains(rel));
    dir_index.sort_by(|a, b| a.0.cmp(&b.0));
    p.dirs.extend(dir_index);
    // The plan is kept for the whole restore: its lists, grown by doubling, give back what
    // they do not use (a quarter of their memory on average).
    p.files.shrink_to_fit();
    p.dirs.shrink_to_fit();
    Ok(p)
}

fn mark_parents(set: &mut HashSet<PathBuf>, dir: &Path) {
    let mut d = Some(dir);
    while let Some(x) = d {
        if !set.insert(x.to_path_buf()) {
            break;
        }
        d = x.parent();
    }
}

/// Replace indirect segments by the lists they point to, taking their memory from `budget`.
pub(crate) async fn expand(repo: &Repository, segs: &[Segment], budget: &mut Budget) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    expand_into(repo, segs, budget, &mut out).await?;
    Ok(out)
}

/// `expand`, appending to `out` (on an error, part of the list may have been appended).
async fn expand_into(repo: &Repository, segs: &[Segment], budget: &mut Budget, out: &mut Vec<Segment>) -> Result<()> {
    budget.segments(segs.len())?;
    if !segs.iter().any(|s| matches!(s, Segment::Indirect { .. })) {
        out.extend_from_slice(segs);
        return Ok(());
    }
    for s in segs {
        match s {
            Segment::Indirect { id, len } => {
                let b = repo.read_blob(BlobKind::Tree, &BlobId(id.0)).await?;
                let inner = decode_segment_list(&b)?;
                budget.segments(inner.len())?;
                if inner.iter().any(|s| matches!(s, Segment::Indirect { .. })) {
                    anyhow::bail!("nested indirect segment lists are not allowed");
                }
                let covered = inner.iter().try_fold(0u64, |a, s| a.checked_add(s.len()));
                if covered != Some(*len) {
                    anyhow::bail!("an indirect segment list covers {covered:?} bytes where {len} were announced");
                }
                out.extend(inner);
            }
            other => out.push(*other),
        }
    }
    Ok(())
}

/// Carry out a plan into `target`.
pub async fn execute(
    repo: Arc<Repository>,
    plan: RestorePlan,
    target: &Path,
    job: &Job,
    opts: &RestoreOptions,
) -> Result<Outcome> {
    let counters = job.progress.clone();
    counters.files_total.store(plan.files.len() as u64, Relaxed);
    counters.bytes_total.store(plan.bytes, Relaxed);
    // Before anything is written: a restore that cannot find its content leaves no skeleton.
    content::select_index(&repo, plan.files.all_segments())
        .await
        .context("loading the index entries of the snapshot's content")?;
    let root = Arc::new(
        SafeRoot::open(target, opts.keep_setuid).with_context(|| format!("opening the target {}", target.display()))?,
    );
    let plan = Arc::new(plan);
    let mut out = Outcome { errors: plan.rejected.clone(), ..Default::default() };

    // Phase 2: the skeleton.
    let started = std::time::Instant::now();
    let (root2, plan2) = (root.clone(), plan.clone());
    let made = tokio::task::spawn_blocking(move || skeleton(&root2, &plan2)).await.expect("skeleton task");
    out.errors.extend(made.errors);
    let skeleton_done = started.elapsed();

    // Phase 3: content (and the whole of each one-blob file).
    let skip: HashSet<usize> =
        (0..plan.files.len()).filter(|&i| made.files[i].is_none() && !plan.files.at(i).is_one_blob()).collect();
    let targets = Arc::new(PlanTargets { root: root.clone(), plan: plan.clone(), ids: Mutex::new(made.files) });
    let written = content::write_all(repo.clone(), targets.clone(), &skip, job).await;
    out.bytes_written = written.bytes;
    out.errors.extend(written.errors);
    let content_done = started.elapsed();

    // Phase 4: files whose content failed are emptied and keep no metadata; then hardlinks and
    // metadata.
    let failed = Arc::new(written.failed);
    let ids = std::mem::take(&mut *targets.ids.lock().expect("lock"));
    let (root2, plan2, failed2) = (root.clone(), plan.clone(), failed.clone());
    let (ids, errs) = tokio::task::spawn_blocking(move || metadata(&root2, &plan2, ids, &made.specials, &failed2))
        .await
        .expect("metadata task");
    let ids = Arc::new(ids);
    out.errors.extend(errs);
    let metadata_done = started.elapsed();
    tracing::info!(
        "restore phases: skeleton {:.2} s, content {:.2} s, metadata {:.2} s",
        skeleton_done.as_secs_f64(),
        (content_done - skeleton_done).as_secs_f64(),
        (metadata_done - content_done).as_secs_f64()
    );
    // Incomplete: there, but emptied; missing: not there, or incomplete.
    out.incomplete = failed.iter().filter(|&&i| ids[i].is_some()).count() as u64;
    let missing = (0..plan.files.len()).filter(|&i| ids[i].is_none() || failed.contains(&i)).count();
    out.files = (plan.files.len() - missing + plan.hardlinks.len()) as u64;
    out.dirs = plan.dirs.len().saturating_sub(1) as u64;
    out.specials = plan.specials.len() as u64;
    counters.files_done.store(out.files, Relaxed);
    counters.errors.store(out.errors.len() as u64, Relaxed);
    // Cancelled: files whose content was not written were emptied above; nothing is verified.
    job.cancel.check()?;
    if opts.verify {
        let (n, errs) =
            verify::verify(repo.master_key().clone(), root.clone(), plan.clone(), ids.clone(), failed).await;
        out.verified = Some(n);
        out.errors.extend(errs);
    }
    Ok(out)
}

/// The files of a plan as content targets, opened safely under the target root (each must
/// still be the file the skeleton created); one-blob files are created here instead.
struct PlanTargets {
    root: Arc<SafeRoot>,
    plan: Arc<RestorePlan>,
    /// Each file's identity once created (by the skeleton, or by `create`).
    ids: Mutex<Vec<Option<FileId>>>,
}

impl content::Targets for PlanTargets {
    fn count(&self) -> usize {
        self.plan.files.len()
    }
    fn segments(&self, i: usize) -> &[Segment] {
        self.plan.files.at(i).segments
    }
    fn open(&self, i: usize) -> std::io::Result<std::fs::File> {
        let id = self.ids.lock().expect("lock")[i];
        self.root.open_file(self.plan.files.at(i).rel, true, id)
    }
    fn name(&self, i: usize) -> String {
        self.plan.files.at(i).rel.display().to_string()
    }
    fn single(&self, i: usize) -> bool {
        self.plan.files.at(i).is_one_blob()
    }
    fn create(&self, i: usize) -> std::io::Result<std::fs::File> {
        let f = self.plan.files.at(i);
        // A blob that is the whole file gives it its length; holes around it need `set_len`.
        let size = if f.segments.len() == 1 { 0 } else { f.meta.size };
        self.root.create_whole_file_for(f.rel, size, f.meta)
    }
    /// The file's identity is recorded here, after its content (`create_whole_file_for`); a
    /// file whose content failed has none and is made again, empty, by `metadata`.
    fn finish(&self, i: usize, file: &std::fs::File) -> std::io::Result<()> {
        let (id, set) = self.root.set_file_metadata_of(file, self.plan.files.at(i).meta)?;
        self.ids.lock().expect("lock")[i] = Some(id);
        set
    }
}

/// What the skeleton made: the identity of each file (`None`: not created, or a one-blob file,
/// which the content phase creates) and special entry.
struct Made {
    files: Vec<Option<FileId>>,
    specials: Vec<Option<FileId>>,
    errors: Vec<EntryError>,
}

/// Threads for the per-file steps of the skeleton and the metadata: creating a small file or
/// setting its metadata is a few system calls, mostly kernel time, which several threads
/// spread over the cores (files of one plan are independent of each other).
const FILE_THREADS: usize = 4;

/// `f(i, &mut out[i])` for every slot of `out` on up to `FILE_THREADS` threads, each taking a
/// contiguous slice (neighbours share a directory); what `f` returns is collected in order.
/// Only what a call returns is kept (errors, a few): results per file for a million files
/// would be a hundred megabytes, twice over while the threads' lists are joined.
fn par_fill<T: Send, E: Send>(out: &mut [T], f: impl Fn(usize, &mut T) -> Option<E> + Sync) -> Vec<E> {
    let n = out.len();
    let threads = FILE_THREADS.min(n.div_ceil(256)).max(1);
    let per = n.div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = out
            .chunks_mut(per)
            .enumerate()
            .map(|(c, chunk)| {
                s.spawn(move || {
                    chunk.iter_mut().enumerate().filter_map(|(j, slot)| f(c * per + j, slot)).collect::<Vec<E>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|h| h.join().expect("a restore thread panicked")).collect()
    })
}

/// Make the plan's directories (not the root), one depth at a time: a directory's parent was
/// made at the depth before, and directories of one depth are made on up to `FILE_THREADS`
/// threads (each `mkdir` is an inode allocation and a directory insert, kernel time; those of
/// different parents do not wait for each other). Errors come in depth order.
fn mkdirs(root: &SafeRoot, plan: &RestorePlan) -> Vec<EntryError> {
    // Stable: within a depth, plan order (neighbours share a parent, and a thread's slice).
    let mut order: Vec<(usize, usize)> =
        plan.dirs.iter().enumerate().skip(1).map(|(i, (rel, _))| (rel.components().count(), i)).collect();
    order.sort_by_key(|&(depth, _)| depth);
    let mut errors = Vec::new();
    for level in order.chunk_by_mut(|a, b| a.0 == b.0) {
        errors.extend(par_fill(level, |_, &mut (_, i)| {
            let rel = &plan.dirs[i].0;
            root.mkdir(rel).err().map(|e| EntryError::new(EntryErrorKind::Write, rel, e))
        }));
    }
    errors
}

/// Directories, files of more than one blob or none, FIFOs and devices.
fn skeleton(root: &SafeRoot, plan: &RestorePlan) -> Made {
    let mut errors = mkdirs(root, plan);
    // The file is closed at once (only its identity is kept): a plan may hold millions.
    let mut files = vec![None; plan.files.len()];
    errors.extend(par_fill(&mut files, |i, id| {
        let f = plan.files.at(i);
        if f.is_one_blob() {
            return None;
        }
        match root.create_file_for(f.rel, f.meta.size, f.meta) {
            Ok((_, made)) => {
                *id = Some(made);
                None
            }
            Err(e) => Some(EntryError::new(EntryErrorKind::Write, f.rel, e)),
        }
    }));
    let mut specials = Vec::with_capacity(plan.specials.len());
    for (rel, node) in &plan.specials {
        if node.kind == NodeType::Symlink {
            specials.push(None); // after all content
            continue;
        }
        match root.create_special(rel, node) {
            Ok(id) => specials.push(Some(id)),
            Err(e) => {
                errors.push(EntryError::new(EntryErrorKind::Write, rel, e));
                specials.push(None);
            }
        }
    }
    Made { files, specials, errors }
}

/// Symlinks, then metadata: files, hardlinks, special entries, directories deepest first.
/// Files whose content failed are emptied instead (a one-blob file never created is created
/// empty), so nothing incomplete looks restored; one-blob files that were written got their
/// metadata then. Returns every file's identity as it ends.
fn metadata(
    root: &SafeRoot,
    plan: &RestorePlan,
    mut files: Vec<Option<FileId>>,
    specials: &[Option<FileId>],
    failed: &HashSet<usize>,
) -> (Vec<Option<FileId>>, Vec<EntryError>) {
    let mut errors = Vec::new();
    let note = |errors: &mut Vec<EntryError>, rel: &Path, r: std::io::Result<()>| {
        if let Err(e) = r {
            errors.push(EntryError::new(EntryErrorKind::Metadata, rel, e));
        }
    };
    let mut specials = specials.to_vec();
    for (i, (rel, node)) in plan.specials.iter().enumerate() {
        if node.kind == NodeType::Symlink {
            match root.create_special(rel, node) {
                Ok(id) => specials[i] = Some(id),
                Err(e) => note(&mut errors, rel, Err(e)),
            }
        }
    }
    let per_file = par_fill(&mut files, |i, id| {
        let f = plan.files.at(i);
        let one_blob = f.is_one_blob();
        if id.is_none() && !one_blob {
            return None; // not created: reported by the skeleton
        }
        if failed.contains(&i) {
            let emptied = match *id {
                Some(made) => root.open_file(f.rel, true, Some(made)).and_then(|file| file.set_len(0)),
                // A one-blob file whose content never came: created empty, as the others are left.
                None => match root.create_file(f.rel, 0) {
                    Ok((_, made)) => {
                        *id = Some(made);
                        Ok(())
                    }
                    Err(e) => return Some(EntryError::new(EntryErrorKind::Write, f.rel, e)),
                },
            };
            return Some(EntryError::new(
                EntryErrorKind::Incomplete,
                f.rel,
                match emptied {
                    Ok(()) => "content incomplete: the file was emptied (see the errors above)".to_string(),
                    Err(e) => format!("content incomplete, and emptying it failed: {e}"),
                },
            ));
        }
        if one_blob {
            return None; // completed with its content
        }
        root.set_file_metadata(f.rel, f.meta, *id).err().map(|e| EntryError::new(EntryErrorKind::Metadata, f.rel, e))
    });
    errors.extend(per_file);
    for (rel, first, _) in &plan.hardlinks {
        if files[*first].is_none() {
            continue;
        }
        if let Err(e) = root.hardlink(plan.files.at(*first).rel, rel) {
            errors.push(EntryError::new(EntryErrorKind::Write, rel, e));
        }
    }
    for (i, (rel, node)) in plan.specials.iter().enumerate() {
        if let Some(id) = specials[i] {
            note(&mut errors, rel, root.set_metadata(rel, node, Some(id)));
        }
    }
    for (rel, node) in plan.dirs.iter().skip(1).rev() {
        note(&mut errors, rel, root.set_metadata(rel, node, None));
    }
    (files, errors)
}
