//! Directories in parts (format version 3, docs/FORMAT.md §5.7): when a writer stores a
//! directory as an index of parts, and where it cuts them.
//!
//! A directory stays one tree while it has at most `SPLIT_ENTRIES` entries and its tree at most
//! `SPLIT_BYTES` bytes: every directory a version 2 writer could store gets the same tree, and
//! the same id, as before. A larger one is cut into parts from its first entry, a part ending
//! after an entry whose name hashes (FNV-1a keyed with the repository's chunker seed, then
//! mixed) to a value with its low 14 bits zero, once the part has `PART_MIN` entries; at the
//! latest at `PART_MAX` entries or `PART_MAX_BYTES` bytes. Cuts depend on the names, not on
//! positions, so adding or removing a file changes one or two parts and the others keep their
//! ids (a backup of a big directory with one new file stores one part and a new index, not the
//! whole directory again).
//!
//! Memory: the entries of the part being filled (at most `PART_MAX` entries or about
//! `PART_MAX_BYTES`), and before a directory is known to be big, up to `SPLIT_ENTRIES` entries
//! or `SPLIT_BYTES`.

use crate::error::Result;
use crate::id::TreeId;
use crate::tree::{DirPart, Directory, Node, Tree, encode_dir_index};

/// A directory with more entries than this is stored in parts.
pub const SPLIT_ENTRIES: usize = 65536;
/// A directory whose tree would be larger than this is stored in parts.
pub const SPLIT_BYTES: usize = 16 << 20;
/// Fewest entries in a part before a name may end it (the last part may have fewer).
pub const PART_MIN: usize = 4096;
/// Most entries in a part.
pub const PART_MAX: usize = 65536;
/// A part ends at the first entry that brings it to this many bytes.
pub const PART_MAX_BYTES: usize = 8 << 20;
/// A name ends a part when its hash has these bits zero: parts of about 16384 entries.
const PART_MASK: u64 = (1 << 14) - 1;

/// Whether `name` may end a part (keyed with `seed`).
pub fn ends_part(seed: u64, name: &[u8]) -> bool {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV's low bits alone are poorly mixed.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h & PART_MASK == 0
}

/// Builds one directory from its entries in ascending name order: one tree, or parts stored
/// through the caller's `save` as they fill and an index of them at the end.
#[derive(Debug)]
pub struct DirSplitter {
    seed: u64,
    /// Entries not yet in a stored part.
    nodes: Vec<Node>,
    /// Their encoded size.
    bytes: usize,
    /// Entries of `nodes` already looked at for a cut, and their encoded size.
    scanned: usize,
    scanned_bytes: usize,
    split: bool,
    parts: Vec<DirPart>,
}

impl DirSplitter {
    pub fn new(seed: u64) -> Self {
        DirSplitter { seed, nodes: Vec::new(), bytes: 0, scanned: 0, scanned_bytes: 0, split: false, parts: Vec::new() }
    }

    /// Add the next entry (its name after every earlier one's). Parts that are complete are
    /// stored with `save`, which returns the stored tree's id.
    pub fn push(&mut self, node: Node, save: &mut impl FnMut(&Tree) -> Result<TreeId>) -> Result<()> {
        self.bytes += node.encoded_len();
        self.nodes.push(node);
        if !self.split && (self.nodes.len() > SPLIT_ENTRIES || self.bytes > SPLIT_BYTES) {
            self.split = true;
        }
        if self.split {
            while let Some(n) = self.next_cut() {
                self.store_part(n, save)?;
            }
        }
        Ok(())
    }

    /// The directory: one tree (not stored: the caller stores it as any tree), or the parts
    /// holding it, all stored (the caller stores `encode_dir_index` of them).
    pub fn finish(mut self, save: &mut impl FnMut(&Tree) -> Result<TreeId>) -> Result<Directory> {
        if !self.split {
            return Ok(Directory::Tree(Tree { nodes: self.nodes }));
        }
        while let Some(n) = self.next_cut() {
            self.store_part(n, save)?;
        }
        if !self.nodes.is_empty() {
            self.store_part(self.nodes.len(), save)?;
        }
        Ok(Directory::Parts(self.parts))
    }

    /// `finish`, encoded: the bytes of the directory's own blob (its tree, or the index of its
    /// stored parts), and whether it is in parts.
    pub fn finish_encoded(self, save: &mut impl FnMut(&Tree) -> Result<TreeId>) -> Result<(Vec<u8>, bool)> {
        Ok(match self.finish(save)? {
            Directory::Tree(t) => (t.encode()?, false),
            Directory::Parts(parts) => (encode_dir_index(&parts), true),
        })
    }

    /// Entries in the next part, if a cut is found among the entries held.
    fn next_cut(&mut self) -> Option<usize> {
        while self.scanned < self.nodes.len() {
            let node = &self.nodes[self.scanned];
            self.scanned += 1;
            self.scanned_bytes += node.encoded_len();
            let n = self.scanned;
            if n >= PART_MAX
                || self.scanned_bytes >= PART_MAX_BYTES
                || (n >= PART_MIN && ends_part(self.seed, &node.name))
            {
                return Some(n);
            }
        }
        None
    }

    fn store_part(&mut self, n: usize, save: &mut impl FnMut(&Tree) -> Result<TreeId>) -> Result<()> {
        let rest = self.nodes.split_off(n);
        let part = Tree { nodes: std::mem::replace(&mut self.nodes, rest) };
        let id = save(&part)?;
        self.parts.push(DirPart { id, entries: part.nodes.len() as u32 });
        self.bytes = self.nodes.iter().map(Node::encoded_len).sum();
        self.scanned = 0;
        self.scanned_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::tree::NodeType;

    fn names(n: usize, skip: Option<usize>) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> =
            (0..n).filter(|i| Some(*i) != skip).map(|i| format!("file-{i:08}").into_bytes()).collect();
        v.sort();
        v
    }

    /// Parts as (first name, entries, id of the encoded part).
    fn build(names: &[Vec<u8>]) -> (Directory, Vec<Tree>) {
        let mut stored = Vec::new();
        let mut save = |t: &Tree| {
            stored.push(t.clone());
            Ok(TreeId(Id(crate::hash::hash(&t.encode()?))))
        };
        let mut s = DirSplitter::new(42);
        for n in names {
            let mut node = Node::new(n.clone(), NodeType::File);
            node.size = n.len() as u64;
            s.push(node, &mut save).unwrap();
        }
        let d = s.finish(&mut save).unwrap();
        (d, stored)
    }

    #[test]
    fn a_directory_at_the_limit_stays_one_tree() {
        let (d, stored) = build(&names(SPLIT_ENTRIES, None));
        assert!(matches!(d, Directory::Tree(t) if t.nodes.len() == SPLIT_ENTRIES));
        assert!(stored.is_empty());
    }

    #[test]
    fn a_big_directory_is_cut_into_parts_in_order_and_within_bounds() {
        let all = names(200_000, None);
        let (d, stored) = build(&all);
        let Directory::Parts(parts) = d else { panic!("not split") };
        assert_eq!(parts.len(), stored.len());
        assert!(parts.len() >= 4, "{} parts", parts.len());
        let joined: Vec<Vec<u8>> = stored.iter().flat_map(|t| t.nodes.iter().map(|n| n.name.clone())).collect();
        assert_eq!(joined, all, "the parts hold every entry, in order");
        for (i, (p, t)) in parts.iter().zip(&stored).enumerate() {
            assert_eq!(p.entries as usize, t.nodes.len());
            assert!(t.nodes.len() <= PART_MAX);
            if i + 1 < parts.len() {
                assert!(t.nodes.len() >= PART_MIN, "part {i}: {}", t.nodes.len());
            }
        }
    }

    #[test]
    fn one_more_entry_changes_few_parts() {
        let (Directory::Parts(a), _) = build(&names(200_000, Some(123_456))) else { panic!() };
        let (Directory::Parts(b), _) = build(&names(200_000, None)) else { panic!() };
        let old: std::collections::HashSet<TreeId> = a.iter().map(|p| p.id).collect();
        let new = b.iter().filter(|p| !old.contains(&p.id)).count();
        assert!(new <= 2, "{new} of {} parts changed", b.len());
    }

    #[test]
    fn big_entries_cut_parts_by_bytes() {
        let mut stored = 0usize;
        let mut save = |t: &Tree| {
            let b = t.encode()?;
            assert!(b.len() < PART_MAX_BYTES + (1 << 20), "part of {} bytes", b.len());
            stored += 1;
            Ok(TreeId(Id([stored as u8; 32])))
        };
        let mut s = DirSplitter::new(7);
        for i in 0..40 {
            let mut node = Node::new(format!("f{i:03}").into_bytes(), NodeType::File);
            node.xattrs = vec![(b"user.big".to_vec(), vec![0u8; 1 << 20])];
            s.push(node, &mut save).unwrap();
        }
        let Directory::Parts(parts) = s.finish(&mut save).unwrap() else { panic!("40 MiB stayed one tree") };
        assert!(parts.len() >= 5);
        assert_eq!(parts.iter().map(|p| p.entries).sum::<u32>(), 40);
    }
}
