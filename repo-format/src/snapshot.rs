//! Snapshots: one backup's root tree and what describes it.
//!
//! Sealed object type 3. Payload, little-endian: `time ns i64 ‖ tree id[32] ‖ has parent u8 ‖
//! parent id[32] (present when has parent = 1) ‖ hostname (u16 + UTF-8) ‖ username (u16 + UTF-8)
//! ‖ program (u16 + UTF-8) ‖ path count u32 ‖ paths (u32 + raw bytes) ‖ tag count u32 ‖ tags
//! (key u16 + UTF-8, value u16 + UTF-8) ‖ summary count u16 ‖ count × u64`, then extension
//! bytes. Summary fields are positional (see `Summary`); a reader fills fields it does not find
//! with 0 and ignores extra ones.

use crate::codec::{Dec, Enc};
use crate::error::Result;
use crate::id::{Id, SnapshotId, TreeId};

/// Figures of one backup run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    pub other_entries: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes of all files in the snapshot (apparent size).
    pub bytes_total: u64,
    /// Plaintext bytes of blobs this backup added.
    pub bytes_added: u64,
    /// Stored (compressed, encrypted) bytes this backup added.
    pub bytes_added_stored: u64,
    pub data_blobs_added: u64,
    pub tree_blobs_added: u64,
    /// Source entries that could not be read.
    pub errors: u64,
    pub duration_ns: u64,
    /// Directories stored in parts (format version 3); 0 in older snapshots.
    pub dirs_split: u64,
}

impl Summary {
    fn fields(&self) -> [u64; 14] {
        [
            self.files_new,
            self.files_changed,
            self.files_unchanged,
            self.dirs,
            self.other_entries,
            self.bytes_read,
            self.bytes_total,
            self.bytes_added,
            self.bytes_added_stored,
            self.data_blobs_added,
            self.tree_blobs_added,
            self.errors,
            self.duration_ns,
            self.dirs_split,
        ]
    }

    fn from_fields(f: &[u64]) -> Self {
        let g = |i: usize| f.get(i).copied().unwrap_or(0);
        Summary {
            files_new: g(0),
            files_changed: g(1),
            files_unchanged: g(2),
            dirs: g(3),
            other_entries: g(4),
            bytes_read: g(5),
            bytes_total: g(6),
            bytes_added: g(7),
            bytes_added_stored: g(8),
            data_blobs_added: g(9),
            tree_blobs_added: g(10),
            errors: g(11),
            duration_ns: g(12),
            dirs_split: g(13),
        }
    }
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub time_ns: i64,
    pub tree: TreeId,
    pub parent: Option<SnapshotId>,
    pub hostname: String,
    pub username: String,
    pub program: String,
    /// The source paths as given (raw bytes).
    pub paths: Vec<Vec<u8>>,
    /// `key=value` labels: namespace, pod, pvc, volume-mode, backup, schedule, …
    pub tags: Vec<(String, String)>,
    pub summary: Summary,
}

impl Snapshot {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut e = Enc::with_capacity(256);
        e.i64(self.time_ns).id(&self.tree.0);
        match &self.parent {
            Some(p) => e.u8(1).id(&p.0),
            None => e.u8(0),
        };
        e.bytes16(self.hostname.as_bytes())?;
        e.bytes16(self.username.as_bytes())?;
        e.bytes16(self.program.as_bytes())?;
        e.u32(self.paths.len() as u32);
        for p in &self.paths {
            e.bytes32(p)?;
        }
        e.u32(self.tags.len() as u32);
        for (k, v) in &self.tags {
            e.bytes16(k.as_bytes())?;
            e.bytes16(v.as_bytes())?;
        }
        let f = self.summary.fields();
        e.u16(f.len() as u16);
        for v in f {
            e.u64(v);
        }
        Ok(e.buf)
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut d = Dec::new(b, "snapshot");
        let time_ns = d.i64()?;
        let tree = TreeId(d.id()?);
        let parent = match d.u8()? {
            0 => None,
            1 => Some(SnapshotId(d.id()?)),
            v => return Err(crate::error::Error::corrupt("snapshot", format!("parent flag {v}"))),
        };
        let hostname = d.string16()?;
        let username = d.string16()?;
        let program = d.string16()?;
        let np = d.count(4)?;
        let paths = (0..np).map(|_| d.bytes32().map(<[u8]>::to_vec)).collect::<Result<_>>()?;
        let nt = d.count(4)?;
        let tags = (0..nt).map(|_| Ok((d.string16()?, d.string16()?))).collect::<Result<_>>()?;
        let nf = d.u16()? as usize;
        let fields = (0..nf).map(|_| d.u64()).collect::<Result<Vec<_>>>()?;
        Ok(Snapshot {
            time_ns,
            tree,
            parent,
            hostname,
            username,
            program,
            paths,
            tags,
            summary: Summary::from_fields(&fields),
        })
    }

    /// The value of tag `key`, if any.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            time_ns: 0,
            tree: TreeId(Id::ZERO),
            parent: None,
            hostname: String::new(),
            username: String::new(),
            program: String::new(),
            paths: Vec::new(),
            tags: Vec::new(),
            summary: Summary::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(t in any::<i64>(), tree in any::<[u8; 32]>(), parent in proptest::option::of(any::<[u8; 32]>()),
                      host in ".{0,20}", paths in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4),
                      tags in proptest::collection::vec(("[a-z-]{1,10}", ".{0,10}"), 0..5), n in any::<u64>()) {
            let s = Snapshot {
                time_ns: t, tree: TreeId(Id(tree)), parent: parent.map(|p| SnapshotId(Id(p))),
                hostname: host, username: "u".into(), program: "ferry 0.1.0".into(), paths, tags,
                summary: Summary { files_new: n, duration_ns: 5, ..Summary::default() },
            };
            prop_assert_eq!(Snapshot::decode(&s.encode().unwrap()).unwrap(), s);
        }
    }

    #[test]
    fn fewer_summary_fields_default_to_zero() {
        let summary = Summary { files_new: 7, duration_ns: 9, dirs_split: 2, ..Default::default() };
        let s = Snapshot { summary, ..Default::default() };
        assert_eq!(Snapshot::decode(&s.encode().unwrap()).unwrap(), s, "all 14 fields round-trip");
        let mut b = s.encode().unwrap();
        // rewrite as an older writer with 1 summary field
        let at = b.len() - 14 * 8 - 2;
        b.truncate(at);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        let d = Snapshot::decode(&b).unwrap();
        assert_eq!(d.summary.files_new, 7);
        assert_eq!((d.summary.duration_ns, d.summary.dirs_split), (0, 0));
    }
}
