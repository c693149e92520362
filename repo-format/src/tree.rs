//! Directory trees: a tree blob lists the entries of one directory, sorted by name.
//!
//! Payload, little-endian: `count u32 ‖ count × (entry length u32 ‖ entry)`, an entry being
//! `name (u16 length + raw bytes) ‖ type u8 ‖ mode u32 ‖ uid u32 ‖ gid u32 ‖ mtime ns i64 ‖
//! atime ns i64 ‖ ctime ns i64 ‖ size u64 ‖ device u64 ‖ inode u64 ‖ links u32 ‖ rdev u64 ‖
//! symlink target (u32 length + bytes) ‖ xattr count u16 ‖ xattrs (name u16-len bytes, value
//! u32-len bytes) ‖ content`, then bytes a later version may add (ignored by this one).
//! Content: `0` none, `1 ‖ subtree id[32]`, or `2 ‖ count u32 ‖ segments`, a segment being
//! `0 ‖ zero run length u64` (a hole: nothing stored), `1 ‖ blob id[32] ‖ length u32` (a data
//! blob), or `2 ‖ tree blob id[32] ‖ length u64` (a tree-kind blob holding a further segment
//! list, `count u32 ‖ segments`, for files and disks with very many chunks).
//!
//! A directory too large for one tree blob is a **directory index** (`Directory::Parts`):
//! `0xFFFFFFFF u32 ‖ part count u32 ‖ parts (tree id[32] ‖ entry count u32)`, each part an
//! ordinary tree holding a run of the directory's entries, the runs in ascending name order
//! (format version 3; docs/FORMAT.md §5.7).
//!
//! Names are raw bytes: non-UTF-8 names round-trip. Decoding never trusts names; the restorer
//! checks `Node::has_safe_name` before touching the file system.

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};
use crate::id::{BlobId, TreeId};

/// The smallest encoded entry: its length prefix and every fixed field, with an empty name,
/// no symlink target, no xattrs and no content (4 + 2 + 1 + 3·4 + 3·8 + 3·8 + 4 + 8 + 4 + 2 + 1).
const MIN_ENTRY: usize = 86;

/// The first word of a directory index, where a tree has its entry count (no tree can hold
/// that many entries: it would need 344 GiB).
pub const DIR_INDEX_MAGIC: u32 = u32::MAX;

/// Size of one part reference in a directory index.
const PART_LEN: usize = 36;

/// Type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NodeType {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDev = 5,
    BlockDev = 6,
    Socket = 7,
}

impl NodeType {
    fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            1 => NodeType::File,
            2 => NodeType::Dir,
            3 => NodeType::Symlink,
            4 => NodeType::Fifo,
            5 => NodeType::CharDev,
            6 => NodeType::BlockDev,
            7 => NodeType::Socket,
            _ => return Err(Error::corrupt("tree", format!("unknown entry type {v}"))),
        })
    }
}

/// One piece of a file's or disk's content, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// `len` bytes of a data blob.
    Blob { id: BlobId, len: u32 },
    /// `len` zero bytes, stored as nothing (a hole or all-zero chunks).
    Zero { len: u64 },
    /// A tree-kind blob holding a further segment list covering `len` bytes.
    Indirect { id: TreeId, len: u64 },
}

impl Segment {
    pub fn len(&self) -> u64 {
        match self {
            Segment::Blob { len, .. } => u64::from(*len),
            Segment::Zero { len } | Segment::Indirect { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Content {
    #[default]
    None,
    /// A directory's subtree.
    Tree(TreeId),
    /// A file's bytes.
    Segments(Vec<Segment>),
}

/// One directory entry with all its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: NodeType,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub atime_ns: i64,
    pub ctime_ns: i64,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u32,
    pub rdev: u64,
    pub link_target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Content,
}

impl Node {
    /// An entry of `kind` named `name` with zeroed metadata.
    pub fn new(name: impl Into<Vec<u8>>, kind: NodeType) -> Self {
        Node {
            name: name.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            atime_ns: 0,
            ctime_ns: 0,
            size: 0,
            dev: 0,
            ino: 0,
            nlink: 0,
            rdev: 0,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            content: Content::None,
        }
    }

    /// Bytes this entry takes in a tree payload, its length prefix included.
    pub fn encoded_len(&self) -> usize {
        let xattrs: usize = self.xattrs.iter().map(|(k, v)| 6 + k.len() + v.len()).sum();
        let content = match &self.content {
            Content::None => 0,
            Content::Tree(_) => 32,
            Content::Segments(s) => {
                4 + s
                    .iter()
                    .map(|s| match s {
                        Segment::Zero { .. } => 9,
                        Segment::Blob { .. } => 37,
                        Segment::Indirect { .. } => 41,
                    })
                    .sum::<usize>()
            }
        };
        MIN_ENTRY + self.name.len() + self.link_target.len() + xattrs + content
    }

    /// A name that is one path component: not empty, not `.` or `..`, no `/` and no NUL.
    pub fn has_safe_name(&self) -> bool {
        let n = &self.name[..];
        !n.is_empty() && n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
    }
}

/// A directory: entries sorted by name bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

fn encode_segments(e: &mut Enc, segs: &[Segment]) {
    e.u32(segs.len() as u32);
    for s in segs {
        match s {
            Segment::Zero { len } => e.u8(0).u64(*len),
            Segment::Blob { id, len } => e.u8(1).id(&id.0).u32(*len),
            Segment::Indirect { id, len } => e.u8(2).id(&id.0).u64(*len),
        };
    }
}

fn decode_segments(d: &mut Dec<'_>) -> Result<Vec<Segment>> {
    let n = d.count(9)?;
    let mut v = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        v.push(match d.u8()? {
            0 => Segment::Zero { len: d.u64()? },
            1 => Segment::Blob { id: BlobId(d.id()?), len: d.u32()? },
            2 => Segment::Indirect { id: TreeId(d.id()?), len: d.u64()? },
            t => return Err(Error::corrupt("tree", format!("unknown segment type {t}"))),
        });
    }
    Ok(v)
}

/// Encode a segment list as the payload of an indirect (tree-kind) blob.
pub fn encode_segment_list(segs: &[Segment]) -> Vec<u8> {
    let mut e = Enc::with_capacity(4 + segs.len() * 37);
    encode_segments(&mut e, segs);
    e.buf
}

/// Decode the payload of an indirect blob.
pub fn decode_segment_list(b: &[u8]) -> Result<Vec<Segment>> {
    let mut d = Dec::new(b, "segment list");
    let v = decode_segments(&mut d)?;
    d.finish()?;
    Ok(v)
}

/// One part of a directory stored in parts: a tree blob and how many entries it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirPart {
    pub id: TreeId,
    pub entries: u32,
}

/// What a directory's tree-kind blob holds: its entries, or the parts that hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directory {
    Tree(Tree),
    Parts(Vec<DirPart>),
}

impl Directory {
    /// Decode a directory's blob: a tree, or a directory index.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() >= 4 && b[..4] == DIR_INDEX_MAGIC.to_le_bytes() {
            let mut d = Dec::new(&b[4..], "directory index");
            let n = d.count(PART_LEN)?;
            if n == 0 {
                return Err(Error::corrupt("directory index", "no parts"));
            }
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                parts.push(DirPart { id: TreeId(d.id()?), entries: d.u32()? });
            }
            d.finish()?;
            return Ok(Directory::Parts(parts));
        }
        Tree::decode(b).map(Directory::Tree)
    }
}

/// Encode a directory index over `parts` (at least one).
pub fn encode_dir_index(parts: &[DirPart]) -> Vec<u8> {
    let mut e = Enc::with_capacity(8 + parts.len() * PART_LEN);
    e.u32(DIR_INDEX_MAGIC).u32(parts.len() as u32);
    for p in parts {
        e.id(&p.id.0).u32(p.entries);
    }
    e.buf
}

impl Tree {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut e = Enc::with_capacity(64 + self.nodes.len() * 160);
        e.u32(self.nodes.len() as u32);
        for n in &self.nodes {
            let at = e.begin_len();
            e.bytes16(&n.name)?;
            e.u8(n.kind as u8)
                .u32(n.mode)
                .u32(n.uid)
                .u32(n.gid)
                .i64(n.mtime_ns)
                .i64(n.atime_ns)
                .i64(n.ctime_ns)
                .u64(n.size)
                .u64(n.dev)
                .u64(n.ino)
                .u32(n.nlink)
                .u64(n.rdev);
            e.bytes32(&n.link_target)?;
            let nx = u16::try_from(n.xattrs.len()).map_err(|_| Error::Invalid("more than 65535 xattrs".into()))?;
            e.u16(nx);
            for (k, v) in &n.xattrs {
                e.bytes16(k)?;
                e.bytes32(v)?;
            }
            match &n.content {
                Content::None => {
                    e.u8(0);
                }
                Content::Tree(id) => {
                    e.u8(1).id(&id.0);
                }
                Content::Segments(s) => {
                    e.u8(2);
                    encode_segments(&mut e, s);
                }
            }
            e.end_len(at);
        }
        Ok(e.buf)
    }

    /// Decode a tree payload. A directory index is refused here (see `Directory::decode`):
    /// where a tree is expected (a part of a directory index, a file system's tree in a
    /// caller that reads whole trees) one cannot stand.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() >= 4 && b[..4] == DIR_INDEX_MAGIC.to_le_bytes() {
            return Err(Error::corrupt("tree", "a directory index where a tree was expected"));
        }
        let mut d = Dec::new(b, "tree");
        let n = d.count(MIN_ENTRY)?;
        // A `Node` in memory is several times its smallest encoding: grow as entries arrive
        // rather than trusting the count with memory up front.
        let mut nodes = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let mut r = d.record()?;
            let name = r.bytes16()?.to_vec();
            let mut node = Node::new(name, NodeType::from_u8(r.u8()?)?);
            node.mode = r.u32()?;
            node.uid = r.u32()?;
            node.gid = r.u32()?;
            node.mtime_ns = r.i64()?;
            node.atime_ns = r.i64()?;
            node.ctime_ns = r.i64()?;
            node.size = r.u64()?;
            node.dev = r.u64()?;
            node.ino = r.u64()?;
            node.nlink = r.u32()?;
            node.rdev = r.u64()?;
            node.link_target = r.bytes32()?.to_vec();
            let nx = r.u16()?;
            for _ in 0..nx {
                let k = r.bytes16()?.to_vec();
                let v = r.bytes32()?.to_vec();
                node.xattrs.push((k, v));
            }
            node.content = match r.u8()? {
                0 => Content::None,
                1 => Content::Tree(TreeId(r.id()?)),
                2 => Content::Segments(decode_segments(&mut r)?),
                t => return Err(Error::corrupt("tree", format!("unknown content type {t}"))),
            };
            // Anything left in `r` is a later version's extension: ignored.
            nodes.push(node);
        }
        d.finish()?;
        Ok(Tree { nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use proptest::prelude::*;

    fn arb_segment() -> impl Strategy<Value = Segment> {
        prop_oneof![
            any::<u64>().prop_map(|len| Segment::Zero { len }),
            (any::<[u8; 32]>(), any::<u32>()).prop_map(|(i, len)| Segment::Blob { id: BlobId(Id(i)), len }),
            (any::<[u8; 32]>(), any::<u64>()).prop_map(|(i, len)| Segment::Indirect { id: TreeId(Id(i)), len }),
        ]
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        let kind = prop_oneof![
            Just(NodeType::File),
            Just(NodeType::Dir),
            Just(NodeType::Symlink),
            Just(NodeType::Fifo),
            Just(NodeType::CharDev),
            Just(NodeType::BlockDev),
            Just(NodeType::Socket)
        ];
        let content = prop_oneof![
            Just(Content::None),
            any::<[u8; 32]>().prop_map(|i| Content::Tree(TreeId(Id(i)))),
            proptest::collection::vec(arb_segment(), 0..8).prop_map(Content::Segments),
        ];
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            kind,
            any::<(u32, u32, u32, i64, i64, i64)>(),
            any::<(u64, u64, u64, u32, u64)>(),
            proptest::collection::vec(any::<u8>(), 0..100),
            proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..50)),
                0..3,
            ),
            content,
        )
            .prop_map(
                |(name, kind, (mode, uid, gid, m, a, c), (size, dev, ino, nlink, rdev), link, xattrs, content)| Node {
                    name,
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime_ns: m,
                    atime_ns: a,
                    ctime_ns: c,
                    size,
                    dev,
                    ino,
                    nlink,
                    rdev,
                    link_target: link,
                    xattrs,
                    content,
                },
            )
    }

    proptest! {
        #[test]
        fn tree_round_trip(nodes in proptest::collection::vec(arb_node(), 0..10)) {
            let t = Tree { nodes };
            let b = t.encode().unwrap();
            prop_assert_eq!(Tree::decode(&b).unwrap(), t);
        }

        #[test]
        fn segment_list_round_trip(segs in proptest::collection::vec(arb_segment(), 0..50)) {
            prop_assert_eq!(decode_segment_list(&encode_segment_list(&segs)).unwrap(), segs);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Tree::decode(&b);
            let _ = decode_segment_list(&b);
            let mut index = DIR_INDEX_MAGIC.to_le_bytes().to_vec();
            index.extend_from_slice(&b);
            let _ = Directory::decode(&index);
        }

        #[test]
        fn encoded_len_is_exact(node in arb_node()) {
            let n = node.encoded_len();
            prop_assert_eq!(Tree { nodes: vec![node] }.encode().unwrap().len(), 4 + n);
        }

        #[test]
        fn dir_index_round_trip(parts in proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 1..50)) {
            let parts: Vec<DirPart> = parts.into_iter().map(|(i, entries)| DirPart { id: TreeId(Id(i)), entries }).collect();
            let b = encode_dir_index(&parts);
            prop_assert_eq!(b.len(), 8 + 36 * parts.len());
            prop_assert_eq!(Directory::decode(&b).unwrap(), Directory::Parts(parts));
            prop_assert!(Tree::decode(&b).unwrap_err().is_corrupt());
        }

        #[test]
        fn a_tree_decodes_as_a_directory(nodes in proptest::collection::vec(arb_node(), 0..5)) {
            let t = Tree { nodes };
            prop_assert_eq!(Directory::decode(&t.encode().unwrap()).unwrap(), Directory::Tree(t));
        }
    }

    #[test]
    fn a_hostile_entry_count_reserves_no_memory() {
        // A count that fits the bytes left at 4 bytes per entry but not at the real minimum
        // entry size is refused before anything is reserved.
        let mut b = vec![0u8; 4 + 4 * 1000];
        b[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Tree::decode(&b).unwrap_err().is_corrupt());
        let t = Tree { nodes: vec![Node::new(Vec::new(), NodeType::Fifo)] };
        assert_eq!(t.encode().unwrap().len(), 4 + MIN_ENTRY, "MIN_ENTRY is the real minimum");
    }

    #[test]
    fn a_dir_index_without_parts_or_with_a_hostile_count_is_corrupt() {
        assert!(Directory::decode(&encode_dir_index(&[])).unwrap_err().is_corrupt());
        let mut b = DIR_INDEX_MAGIC.to_le_bytes().to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 36]);
        assert!(Directory::decode(&b).unwrap_err().is_corrupt(), "count beyond the bytes");
        let mut short = encode_dir_index(&[DirPart { id: TreeId(Id([1; 32])), entries: 2 }]);
        short.pop();
        assert!(Directory::decode(&short).unwrap_err().is_corrupt());
        let mut long = encode_dir_index(&[DirPart { id: TreeId(Id([1; 32])), entries: 2 }]);
        long.push(0);
        assert!(Directory::decode(&long).unwrap_err().is_corrupt(), "no extension bytes");
    }

    #[test]
    fn hostile_names_are_flagged() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"x\0y"] {
            assert!(!Node::new(bad.to_vec(), NodeType::File).has_safe_name(), "{bad:?}");
        }
        assert!(Node::new(b"\xff\xfe-\n".to_vec(), NodeType::File).has_safe_name());
    }

    #[test]
    fn extension_bytes_in_an_entry_are_ignored() {
        let t = Tree { nodes: vec![Node::new(b"a".to_vec(), NodeType::File)] };
        let mut b = t.encode().unwrap();
        // grow the entry's record by 3 bytes
        let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) + 3;
        b[4..8].copy_from_slice(&len.to_le_bytes());
        b.extend_from_slice(b"new");
        assert_eq!(Tree::decode(&b).unwrap(), t);
    }
}
