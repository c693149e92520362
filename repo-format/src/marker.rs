//! Garbage-collection markers (`gc/<id>`, sealed type 6, format version 2): what a prune has
//! marked for deletion and what it had seen when it did (FORMAT.md §9).
//!
//! Payload, little-endian, consumed exactly:
//! `mark time i64 ns ‖ grace u64 ns ‖ packs ‖ superseded index objects ‖ snapshots seen ‖
//! index objects seen`, each list a `count` (minimum item 32 bytes) of 32-byte ids.
//! A marker is never modified: withdrawing packs writes a new marker with the same mark time
//! and removes the old one.

use crate::codec::{Dec, Enc};
use crate::error::Result;
use crate::id::{Id, IndexId, PackId, SnapshotId};

/// One prune's mark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Marker {
    /// When the mark was made (the marking prune's clock).
    pub mark_time_ns: i64,
    /// The grace period in force: the packs may be deleted from `mark_time_ns + grace_ns` on.
    pub grace_ns: u64,
    /// Packs to delete: no blob in them is referenced, or they are listed in no index.
    pub packs: Vec<PackId>,
    /// Index objects superseded by the marking prune's index objects, to delete with the packs.
    pub superseded: Vec<IndexId>,
    /// Snapshots the mark accounted for: any other snapshot is re-checked before deleting.
    pub snapshots: Vec<SnapshotId>,
    /// Index objects the mark accounted for (those it read and those it wrote).
    pub indexes: Vec<IndexId>,
}

fn ids<T: Copy + Into<Id>>(e: &mut Enc, list: &[T]) {
    e.u32(list.len() as u32);
    for x in list {
        e.id(&(*x).into());
    }
}

fn read_ids<T: From<Id>>(d: &mut Dec) -> Result<Vec<T>> {
    let n = d.count(32)?;
    (0..n).map(|_| d.id().map(T::from)).collect()
}

impl Marker {
    pub fn encode(&self) -> Vec<u8> {
        let n = self.packs.len() + self.superseded.len() + self.snapshots.len() + self.indexes.len();
        let mut e = Enc::with_capacity(32 + 32 * n);
        e.i64(self.mark_time_ns).u64(self.grace_ns);
        ids(&mut e, &self.packs);
        ids(&mut e, &self.superseded);
        ids(&mut e, &self.snapshots);
        ids(&mut e, &self.indexes);
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut d = Dec::new(b, "marker");
        let m = Marker {
            mark_time_ns: d.i64()?,
            grace_ns: d.u64()?,
            packs: read_ids(&mut d)?,
            superseded: read_ids(&mut d)?,
            snapshots: read_ids(&mut d)?,
            indexes: read_ids(&mut d)?,
        };
        d.finish()?;
        Ok(m)
    }

    /// The earliest time (ns) at which the marked packs may be deleted.
    pub fn due_ns(&self) -> i64 {
        self.mark_time_ns.saturating_add(i64::try_from(self.grace_ns).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_and_truncation(t in any::<i64>(), g in any::<u64>(), n in 0usize..5, cut in any::<usize>()) {
            let id = |i: usize| Id([i as u8; 32]);
            let m = Marker {
                mark_time_ns: t,
                grace_ns: g,
                packs: (0..n).map(|i| PackId(id(i))).collect(),
                superseded: (0..n + 1).map(|i| IndexId(id(i + 9))).collect(),
                snapshots: (0..2).map(|i| SnapshotId(id(i + 50))).collect(),
                indexes: (0..n).map(|i| IndexId(id(i + 90))).collect(),
            };
            let b = m.encode();
            prop_assert_eq!(Marker::decode(&b).unwrap(), m);
            let cut = cut % b.len();
            prop_assert!(Marker::decode(&b[..cut]).is_err());
            let mut long = b.clone();
            long.push(0);
            prop_assert!(Marker::decode(&long).is_err());
        }
    }
}
