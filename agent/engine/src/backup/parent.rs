//! Comparing with the parent snapshot: a file the files cache does not know (another node, a
//! new or lost cache, a volume mounted elsewhere with new inode numbers) is unchanged if the
//! parent's tree has a file of the same name with the same size, mtime and ctime. Its content
//! is then taken from the parent, as restic and rustic do (there with `--ignore-inode`).
//!
//! As with the files cache, a file modified within the second before the parent's backup
//! started is not trusted (a same-second edit after it was read would keep its mtime).
//!
//! The scan is depth-first in name order, so only the chain of the parent's trees along the
//! current directory is kept: memory is one tree per level, loaded on the first file of a
//! directory that the cache does not answer. Of a directory stored in parts, one part is held:
//! names are looked up in ascending order, so a cursor moves through the parts.

use std::path::{Component, Path};
use std::sync::Arc;

use repo_format::{Content, DirPart, Directory, Node, NodeType, Repository, Segment, Tree, TreeId};

/// The parent's trees along the directory being scanned.
pub(crate) struct ParentTrees {
    repo: Arc<Repository>,
    rt: tokio::runtime::Handle,
    /// Directory names below the root, each with its tree in the parent (None: not there).
    chain: Vec<(Vec<u8>, Option<ParentDir>)>,
    root: Option<ParentDir>,
    root_id: TreeId,
    root_loaded: bool,
    /// Files modified at or after this (the parent's start, less a second) are not trusted:
    /// an edit in the same second as that backup may have gone unseen by it.
    trusted_before_ns: i64,
}

impl ParentTrees {
    /// The trees of the parent snapshot `parent`.
    pub(crate) fn new(repo: Arc<Repository>, rt: tokio::runtime::Handle, parent: &repo_format::Snapshot) -> Self {
        ParentTrees {
            repo,
            rt,
            chain: Vec::new(),
            root: None,
            root_id: parent.tree,
            root_loaded: false,
            trusted_before_ns: parent.time_ns.saturating_sub(1_000_000_000),
        }
    }

    fn load(&self, id: &TreeId) -> Option<ParentDir> {
        match self.rt.block_on(self.repo.read_dir(id)) {
            Ok(Directory::Tree(t)) => Some(ParentDir::Whole(t)),
            Ok(Directory::Parts(parts)) => Some(ParentDir::Parts { parts, next: 0, part: None }),
            Err(e) => {
                tracing::warn!("parent snapshot: tree {}: {e} (its files are read again)", id.0.short());
                None
            }
        }
    }

    fn subtree(&self, dir: Option<&mut ParentDir>, name: &[u8]) -> Option<ParentDir> {
        let id = match dir?.find(&self.repo, &self.rt, name)? {
            Node { kind: NodeType::Dir, content: Content::Tree(id), .. } => *id,
            _ => return None,
        };
        self.load(&id)
    }

    /// The parent's node for the file `name` in directory `dir` (relative to the snapshot root).
    pub(crate) fn file(&mut self, dir: &Path, name: &[u8]) -> Option<&Node> {
        if !self.root_loaded {
            self.root_loaded = true;
            self.root = self.load(&self.root_id);
        }
        let parts: Vec<&[u8]> = dir
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.as_encoded_bytes()),
                _ => None,
            })
            .collect();
        let keep = self.chain.iter().zip(&parts).take_while(|((a, _), b)| a.as_slice() == **b).count();
        self.chain.truncate(keep);
        while self.chain.len() < parts.len() {
            let name = parts[self.chain.len()];
            let mut up = match self.chain.last_mut() {
                Some((_, t)) => t.take(),
                None => self.root.take(),
            };
            let t = self.subtree(up.as_mut(), name);
            match self.chain.last_mut() {
                Some((_, slot)) => *slot = up,
                None => self.root = up,
            }
            self.chain.push((name.to_vec(), t));
        }
        let before = self.trusted_before_ns;
        let (repo, rt) = (&self.repo, &self.rt);
        let dir = match self.chain.last_mut() {
            Some((_, t)) => t.as_mut(),
            None => self.root.as_mut(),
        };
        dir?.find(repo, rt, name).filter(|n| n.kind == NodeType::File && n.mtime_ns < before && n.ctime_ns < before)
    }
}

/// A directory of the parent snapshot: its whole tree, or a cursor over its parts.
enum ParentDir {
    Whole(Tree),
    Parts { parts: Vec<DirPart>, next: usize, part: Option<Tree> },
}

impl ParentDir {
    /// The entry `name`. Of a directory in parts, names must be asked in ascending order (a
    /// name before the current part's is not found).
    fn find(&mut self, repo: &Repository, rt: &tokio::runtime::Handle, name: &[u8]) -> Option<&Node> {
        match self {
            ParentDir::Whole(t) => find(t, name),
            ParentDir::Parts { parts, next, part } => {
                while part.as_ref().and_then(|t| t.nodes.last()).is_none_or(|last| last.name.as_slice() < name) {
                    let p = parts.get(*next)?;
                    *next += 1;
                    match rt.block_on(repo.read_tree_part(p)) {
                        Ok(t) => *part = Some(t),
                        Err(e) => {
                            tracing::warn!(
                                "parent snapshot: directory part {}: {e} (its files are read again)",
                                p.id.0.short()
                            );
                            *part = None;
                        }
                    }
                }
                find(part.as_ref()?, name)
            }
        }
    }
}

fn find<'a>(t: &'a Tree, name: &[u8]) -> Option<&'a Node> {
    t.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &t.nodes[i])
}

/// The parent node's content, if it describes the file now seen: same size, mtime and ctime,
/// and segments covering exactly that size.
pub(crate) fn same_file(parent: &Node, size: u64, mtime_ns: i64, ctime_ns: i64) -> Option<Vec<Segment>> {
    if parent.size != size || parent.mtime_ns != mtime_ns || parent.ctime_ns != ctime_ns {
        return None;
    }
    match &parent.content {
        Content::Segments(segs) if segs.iter().try_fold(0u64, |a, s| a.checked_add(s.len())) == Some(size) => {
            Some(segs.clone())
        }
        Content::None if size == 0 => Some(Vec::new()),
        _ => None,
    }
}
