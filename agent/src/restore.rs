//! The restore engine: a snapshot's tree into a target directory.
//!
//! Plan, then execute (`RestorePlan` can be inspected before anything is written):
//! 1. walk the snapshot's trees, reject unsafe names and duplicates, apply include/exclude, and
//!    list directories, files (with their segment lists expanded), hardlink groups and special
//!    entries;
//! 2. create directories, then empty files sized to their length (holes), hardlinks and special
//!    files (symlinks last of all, so no write can pass through one);
//! 3. fetch content pack by pack — each needed byte range of a pack is read once, blobs are
//!    decrypted, verified and written with positioned writes to every place that uses them,
//!    several ranges in flight (`content`);
//! 4. set metadata: files, special entries, then directories deepest first (so their mtimes
//!    survive), and optionally re-read and verify every file (`verify`).

pub(crate) mod content;
pub(crate) mod verify;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, Result};
use repo_format::{BlobId, BlobKind, Content, Node, NodeType, Repository, Segment, TreeId, decode_segment_list};

use crate::fsmeta::path_of;
use crate::progress::Counters;
use crate::safefs::SafeRoot;

/// Which entries to restore.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub includes: Vec<glob::Pattern>,
    pub excludes: Vec<glob::Pattern>,
}

impl Filter {
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

/// One regular file to write.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub rel: PathBuf,
    pub node: Node,
    pub segments: Vec<Segment>,
}

/// What a restore will do.
#[derive(Debug, Default)]
pub struct RestorePlan {
    /// Directories, parents before children (the root "" first).
    pub dirs: Vec<(PathBuf, Node)>,
    pub files: Vec<FilePlan>,
    /// (path, index into `files` of the first path of the same inode).
    pub hardlinks: Vec<(PathBuf, usize, Node)>,
    pub specials: Vec<(PathBuf, Node)>,
    /// Entries refused (unsafe or duplicate names), one line each.
    pub rejected: Vec<String>,
    pub bytes: u64,
}

/// Result of a restore.
#[derive(Debug, Default)]
pub struct Outcome {
    pub files: u64,
    pub dirs: u64,
    pub specials: u64,
    pub bytes_written: u64,
    pub errors: Vec<String>,
    pub verified: Option<u64>,
}

/// Walk the snapshot's trees into a plan.
pub async fn plan(repo: &Repository, root: TreeId, filter: &Filter) -> Result<RestorePlan> {
    let mut p = RestorePlan::default();
    let mut root_node = Node::new(Vec::new(), NodeType::Dir);
    root_node.mode = 0o755;
    p.dirs.push((PathBuf::new(), root_node));
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    // (tree, path, parent selected by an include)
    let mut stack = vec![(root, PathBuf::new(), false)];
    let mut wanted_dirs: HashSet<PathBuf> = HashSet::new();
    wanted_dirs.insert(PathBuf::new());
    let mut dir_index: Vec<(PathBuf, Node)> = Vec::new();
    while let Some((tree_id, rel, inherited)) = stack.pop() {
        let tree = repo.read_tree(&tree_id).await.with_context(|| format!("reading the tree of {:?}", rel))?;
        let mut seen = HashSet::new();
        for node in tree.nodes {
            let shown = rel.join(path_of(&node.name));
            if !node.has_safe_name() {
                p.rejected.push(format!(
                    "{}: unsafe name {:?} refused",
                    rel.display(),
                    String::from_utf8_lossy(&node.name)
                ));
                continue;
            }
            if !seen.insert(node.name.clone()) {
                p.rejected.push(format!("{}: duplicate entry refused", shown.display()));
                continue;
            }
            if filter.excluded(&shown) {
                continue;
            }
            let selected = inherited || filter.included(&shown);
            match (&node.kind, &node.content) {
                (NodeType::Dir, Content::Tree(sub)) => {
                    stack.push((*sub, shown.clone(), selected));
                    if selected {
                        mark_parents(&mut wanted_dirs, &shown);
                    }
                    dir_index.push((shown, node));
                }
                (NodeType::Dir, _) => p.rejected.push(format!("{}: directory without a tree refused", shown.display())),
                _ if !selected => {}
                (NodeType::File, Content::Segments(segs)) => {
                    mark_parents(&mut wanted_dirs, shown.parent().unwrap_or(Path::new("")));
                    let segments = expand(repo, segs).await.with_context(|| format!("{}", shown.display()))?;
                    if node.nlink > 1 {
                        if let Some(&first) = inodes.get(&(node.dev, node.ino)) {
                            p.hardlinks.push((shown, first, node));
                            continue;
                        }
                        inodes.insert((node.dev, node.ino), p.files.len());
                    }
                    p.bytes += node.size;
                    p.files.push(FilePlan { rel: shown, node, segments });
                }
                (NodeType::File, _) => {
                    mark_parents(&mut wanted_dirs, shown.parent().unwrap_or(Path::new("")));
                    p.files.push(FilePlan { rel: shown, node, segments: Vec::new() });
                }
                _ => {
                    mark_parents(&mut wanted_dirs, shown.parent().unwrap_or(Path::new("")));
                    p.specials.push((shown, node));
                }
            }
        }
    }
    dir_index.retain(|(rel, _)| wanted_dirs.contains(rel));
    dir_index.sort_by(|a, b| a.0.cmp(&b.0));
    p.dirs.extend(dir_index);
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

/// Replace indirect segments by the lists they point to.
pub(crate) async fn expand(repo: &Repository, segs: &[Segment]) -> Result<Vec<Segment>> {
    if !segs.iter().any(|s| matches!(s, Segment::Indirect { .. })) {
        return Ok(segs.to_vec());
    }
    let mut out = Vec::new();
    for s in segs {
        match s {
            Segment::Indirect { id, .. } => {
                let b = repo.read_blob(BlobKind::Tree, &BlobId(id.0)).await?;
                let inner = decode_segment_list(&b)?;
                if inner.iter().any(|s| matches!(s, Segment::Indirect { .. })) {
                    anyhow::bail!("nested indirect segment lists are not allowed");
                }
                out.extend(inner);
            }
            other => out.push(*other),
        }
    }
    Ok(out)
}

/// Carry out a plan into `target`.
pub async fn execute(
    repo: Arc<Repository>,
    plan: RestorePlan,
    target: &Path,
    counters: Arc<Counters>,
    verify: bool,
) -> Result<Outcome> {
    counters.files_total.store(plan.files.len() as u64, Relaxed);
    counters.bytes_total.store(plan.bytes, Relaxed);
    let root = Arc::new(SafeRoot::open(target).with_context(|| format!("opening the target {}", target.display()))?);
    let plan = Arc::new(plan);
    let mut out = Outcome { errors: plan.rejected.clone(), ..Default::default() };

    // Phase 2: the skeleton.
    let (root2, plan2) = (root.clone(), plan.clone());
    let skeleton = tokio::task::spawn_blocking(move || skeleton(&root2, &plan2)).await.expect("skeleton task");
    let (failed_files, errs) = skeleton;
    out.errors.extend(errs);

    // Phase 3: content.
    let targets = Arc::new(PlanTargets { root: root.clone(), plan: plan.clone() });
    let written = content::write_all(repo.clone(), targets, &failed_files, counters.clone()).await;
    let (bytes, errs) = written;
    out.bytes_written = bytes;
    out.errors.extend(errs);

    // Phase 4: metadata, then verification.
    let (root2, plan2) = (root.clone(), plan.clone());
    let errs = tokio::task::spawn_blocking(move || metadata(&root2, &plan2)).await.expect("metadata task");
    out.errors.extend(errs);
    out.files = (plan.files.len() - failed_files.len() + plan.hardlinks.len()) as u64;
    out.dirs = plan.dirs.len().saturating_sub(1) as u64;
    out.specials = plan.specials.len() as u64;
    if verify {
        let (n, errs) = verify::verify(repo.master_key().clone(), root.clone(), plan.clone()).await;
        out.verified = Some(n);
        out.errors.extend(errs);
    }
    Ok(out)
}

/// The files of a plan as content targets, opened safely under the target root.
struct PlanTargets {
    root: Arc<SafeRoot>,
    plan: Arc<RestorePlan>,
}

impl content::Targets for PlanTargets {
    fn count(&self) -> usize {
        self.plan.files.len()
    }
    fn segments(&self, i: usize) -> &[Segment] {
        &self.plan.files[i].segments
    }
    fn open(&self, i: usize) -> std::io::Result<std::fs::File> {
        self.root.open_file(&self.plan.files[i].rel, true)
    }
    fn name(&self, i: usize) -> String {
        self.plan.files[i].rel.display().to_string()
    }
}

/// Directories, empty files, hardlinks, FIFOs and devices. Returns files that failed.
fn skeleton(root: &SafeRoot, plan: &RestorePlan) -> (HashSet<usize>, Vec<String>) {
    let mut errors = Vec::new();
    let mut failed = HashSet::new();
    for (rel, _) in plan.dirs.iter().skip(1) {
        if let Err(e) = root.mkdir(rel) {
            errors.push(format!("{}: {e}", rel.display()));
        }
    }
    for (i, f) in plan.files.iter().enumerate() {
        if let Err(e) = root.create_file(&f.rel, f.node.size) {
            errors.push(format!("{}: {e}", f.rel.display()));
            failed.insert(i);
        }
    }
    for (rel, first, _) in &plan.hardlinks {
        if failed.contains(first) {
            continue;
        }
        if let Err(e) = root.hardlink(&plan.files[*first].rel, rel) {
            errors.push(format!("{}: {e}", rel.display()));
        }
    }
    for (rel, node) in &plan.specials {
        if node.kind == NodeType::Symlink {
            continue; // after all content
        }
        if let Err(e) = root.create_special(rel, node) {
            errors.push(format!("{}: {e}", rel.display()));
        }
    }
    (failed, errors)
}

/// Symlinks, then metadata: files, special entries, directories deepest first.
fn metadata(root: &SafeRoot, plan: &RestorePlan) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |rel: &Path, r: std::io::Result<()>| {
        if let Err(e) = r {
            errors.push(format!("{}: {e}", rel.display()));
        }
    };
    for (rel, node) in &plan.specials {
        if node.kind == NodeType::Symlink {
            note(rel, root.create_special(rel, node));
        }
    }
    for f in &plan.files {
        note(&f.rel, root.set_metadata(&f.rel, &f.node));
    }
    for (rel, node) in &plan.specials {
        note(rel, root.set_metadata(rel, node));
    }
    for (rel, node) in plan.dirs.iter().skip(1).rev() {
        note(rel, root.set_metadata(rel, node));
    }
    errors
}
