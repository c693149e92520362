//! The index: where every blob is stored.
//!
//! On storage, each writer writes its own index objects (sealed type 2), never rewritten by
//! anyone else. Payload, little-endian: `pack count u32 ‖ packs ‖ superseded count u32 ‖
//! superseded index ids[32]…`, each pack `pack id[32] ‖ salt[32] ‖ blob count u32 ‖ blobs`,
//! each blob `kind u8 ‖ id[32] ‖ offset u32 ‖ stored length u32 ‖ raw length u32`. The
//! superseded list is empty in version 1 writers; a future compaction lists the objects a new
//! index replaces (see FORMAT.md, garbage collection).
//!
//! In memory, `Index` is one sorted vector of 48-byte entries (no per-entry allocation), a table
//! of packs, and a fan-out table: where the entries of each value of an id's first bits start
//! (about 8 entries per bucket, half a byte per blob). It is immutable once built: a lookup reads
//! the fan-out and binary-searches one bucket, with no lock. Ids are keyed hashes, so buckets
//! are even; a forged index that piles its ids into one bucket only brings back the binary
//! search over everything (never worse than without the table). An index for a writer
//! (`IndexScope::Dedup`) keeps the tree blobs' entries and only the first 16 bytes of each data
//! blob's id (`Keys`, sorted, with a fan-out table of its own): whether a blob is stored, not
//! where.

use std::collections::HashSet;
use std::sync::Arc;

use crate::blob::BlobKind;
use crate::blobfilter::BlobFilter;
use crate::codec::{Dec, Enc};
use crate::compress::MAX_BLOB_LEN;
use crate::crypto::SALT_LEN;
use crate::error::{Error, Result};
use crate::id::{BlobId, Id, IndexId, PackId};
use crate::pack::PackEntry;

/// One pack as an index object records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    pub id: PackId,
    pub salt: [u8; SALT_LEN],
    pub blobs: Vec<PackEntry>,
}

/// The payload of one index object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexFile {
    pub packs: Vec<IndexPack>,
    pub supersedes: Vec<IndexId>,
}

const BLOB_LEN: usize = 45;

/// Largest stored (compressed, sealed) blob: its plaintext cap plus the compression header and
/// the seal.
pub(crate) const MAX_STORED_LEN: usize = MAX_BLOB_LEN + 5 + crate::crypto::SEAL_OVERHEAD;

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let n: usize = self.packs.iter().map(|p| 68 + p.blobs.len() * BLOB_LEN).sum();
        let mut e = Enc::with_capacity(8 + n + self.supersedes.len() * 32);
        e.u32(self.packs.len() as u32);
        for p in &self.packs {
            e.id(&p.id.0).raw(&p.salt).u32(p.blobs.len() as u32);
            for b in &p.blobs {
                e.u8(b.kind as u8).id(&b.id.0).u32(b.offset).u32(b.stored_len).u32(b.raw_len);
            }
        }
        e.u32(self.supersedes.len() as u32);
        for s in &self.supersedes {
            e.id(&s.0);
        }
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut packs: Vec<IndexPack> = Vec::new();
        let supersedes = Self::visit(b, |item| {
            match item {
                Item::Pack { id, salt, blobs } => packs.push(IndexPack { id, salt, blobs: Vec::with_capacity(blobs) }),
                Item::Blob(e) => packs.last_mut().expect("a blob comes after its pack").blobs.push(e),
            }
            Ok(())
        })?;
        Ok(IndexFile { packs, supersedes })
    }

    /// Parse payload `b`, handing each pack and then each of its blobs to `each`, in order, and
    /// return the superseded ids. Every check is made whatever `each` keeps; an error from
    /// `each` stops the parse.
    fn visit(b: &[u8], mut each: impl FnMut(Item) -> Result<()>) -> Result<Vec<IndexId>> {
        let mut d = Dec::new(b, "index");
        let np = d.count(68)?;
        for _ in 0..np {
            let id = PackId(d.id()?);
            let salt: [u8; SALT_LEN] = d.take(SALT_LEN)?.try_into().expect("32 bytes");
            let nb = d.count(BLOB_LEN)?;
            each(Item::Pack { id, salt, blobs: nb })?;
            for _ in 0..nb {
                let kind = BlobKind::from_u8(d.u8()?)?;
                let id = BlobId(d.id()?);
                let offset = d.u32()?;
                let stored_len = d.u32()?;
                let raw_len = d.u32()?;
                // A blob is at most MAX_BLOB_LEN of plaintext, so what a reader buffers for one
                // is bounded whatever an index says.
                if raw_len as usize > MAX_BLOB_LEN || stored_len as usize > MAX_STORED_LEN {
                    return Err(Error::corrupt(
                        "index",
                        format!("blob {} has lengths {stored_len}/{raw_len} over the blob size limit", id.0.short()),
                    ));
                }
                each(Item::Blob(PackEntry { kind, id, offset, stored_len, raw_len }))?;
            }
        }
        let ns = d.count(32)?;
        let supersedes = (0..ns).map(|_| d.id().map(IndexId)).collect::<Result<_>>()?;
        d.finish()?;
        Ok(supersedes)
    }
}

/// One item of an index payload as `IndexFile::visit` parses it: a pack (with the number of
/// blobs that follow), then its blobs.
enum Item {
    Pack { id: PackId, salt: [u8; SALT_LEN], blobs: usize },
    Blob(PackEntry),
}

/// Bit of `Entry::pack` that marks a tree blob.
const TREE_BIT: u32 = 1 << 31;

/// One blob in memory: 48 bytes, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Entry {
    id: [u8; 32],
    /// Index into `Index::packs`, with `TREE_BIT` for tree blobs.
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
}

impl Entry {
    /// The entry of `b`, stored in pack number `pack`.
    fn of(b: &PackEntry, pack: u32) -> Entry {
        Entry {
            id: b.id.0.0,
            pack: pack | if b.kind == BlobKind::Tree { TREE_BIT } else { 0 },
            offset: b.offset,
            stored_len: b.stored_len,
            raw_len: b.raw_len,
        }
    }

    fn kind(&self) -> BlobKind {
        if self.pack & TREE_BIT != 0 { BlobKind::Tree } else { BlobKind::Data }
    }
    fn key(&self) -> ([u8; 32], bool) {
        (self.id, self.pack & TREE_BIT != 0)
    }
}

/// Where a blob is, resolved for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub kind: BlobKind,
    pub pack: PackId,
    pub salt: [u8; SALT_LEN],
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// A pack known to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackRef {
    pub id: PackId,
    pub salt: [u8; SALT_LEN],
}

/// Which blobs an index built by `IndexBuilder` keeps (every pack is kept either way).
#[derive(Debug, Clone, Default)]
pub enum Selection {
    #[default]
    All,
    /// Tree blobs only: what reading trees needs (listing, planning a restore).
    Trees,
    /// Tree blobs, and the data blobs the filter may contain (a restore's content).
    TreesAnd(Arc<BlobFilter>),
}

impl Selection {
    fn keeps(&self, b: &PackEntry) -> bool {
        match self {
            Selection::All => true,
            Selection::Trees => b.kind == BlobKind::Tree,
            Selection::TreesAnd(f) => b.kind == BlobKind::Tree || f.may_contain(&b.id),
        }
    }

    fn scope(&self) -> IndexScope {
        match self {
            Selection::All => IndexScope::Full,
            Selection::Trees => IndexScope::Trees,
            Selection::TreesAnd(_) => IndexScope::Selected,
        }
    }
}

/// What an index holds: every blob, or a `Selection` of them. Only a full index may be used to
/// decide what is unused; a writer deduplicates against a full or a `Dedup` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexScope {
    #[default]
    Full,
    /// Tree blobs only.
    Trees,
    /// Tree blobs and some data blobs.
    Selected,
    /// Tree blobs, and every data blob of the current index objects by key only (`Keys`):
    /// whether it is stored, not where (what a writer needs; `Repository::load_index_for_writing`).
    Dedup,
}

/// Bytes of a data blob's id a `Dedup` index keeps. Two different blobs sharing them would
/// make a writer skip the second as stored: with ids that are keyed 256-bit hashes, the chance
/// is about `stored × new / 2^128` (10^-22 for ten billion new blobs into a repository of ten
/// million), far below that of undetected storage errors. Ids are secret to whoever lacks the
/// key (index objects are encrypted), so they cannot be forged to collide either.
pub const KEY_BYTES: usize = 16;

/// Stored index size from which a writer knows data blobs by key (`Repository::
/// load_index_for_writing`): 16 MiB of index objects, about 350,000 blobs, whose full index
/// is 17 MB in memory against 6 with keys.
pub const KEYS_FROM_BYTES: u64 = 16 << 20;

/// A fan-out table over sorted items: the items whose id starts with the `bits`-bit value `b`
/// are `items[table[b]..table[b + 1]]`; empty (and `bits` 0) for fewer than 64 items.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Fan {
    table: Vec<u32>,
    bits: u32,
}

impl Fan {
    /// The table of `n` sorted items whose ids start with `first(i)` (none below 64 items, or
    /// past 2^32).
    fn of(n: usize, first: impl Fn(usize) -> [u8; 4]) -> Fan {
        if n < 64 || u32::try_from(n).is_err() {
            return Fan::default();
        }
        let bits = (n / FAN_ENTRIES).ilog2().min(FAN_MAX_BITS);
        let mut table = Vec::with_capacity((1 << bits) + 1);
        let mut at = 0usize;
        for b in 0..1u32 << bits {
            while at < n && Self::bucket_of(first(at), bits) < b {
                at += 1;
            }
            table.push(at as u32);
        }
        table.push(n as u32);
        Fan { table, bits }
    }

    /// The value of the first `bits` bits of an id starting with `first` (1 ≤ bits ≤ 32).
    fn bucket_of(first: [u8; 4], bits: u32) -> u32 {
        u32::from_be_bytes(first) >> (32 - bits)
    }

    /// The range of `n` items that can hold an id starting with `first`.
    fn candidates(&self, first: [u8; 4], n: usize) -> std::ops::Range<usize> {
        if self.bits == 0 {
            return 0..n;
        }
        let b = Self::bucket_of(first, self.bits) as usize;
        self.table[b] as usize..self.table[b + 1] as usize
    }

    fn memory_bytes(&self) -> usize {
        self.table.capacity() * 4
    }
}

/// The first four bytes of an id.
fn first4(id: &[u8]) -> [u8; 4] {
    [id[0], id[1], id[2], id[3]]
}

/// Data blobs known by the first `KEY_BYTES` bytes of their ids (as big-endian integers, so
/// their order is the ids'), sorted, with a fan-out table: 16 bytes a blob instead of an
/// entry's 48.
#[derive(Debug, Default, Clone)]
struct Keys {
    keys: Vec<u128>,
    fan: Fan,
}

/// The first `KEY_BYTES` bytes of blob `id` as a big-endian integer (ordered as the ids are).
pub(crate) fn key_of(id: &BlobId) -> u128 {
    u128::from_be_bytes(id.0.0[..KEY_BYTES].try_into().expect("ids are longer than keys"))
}

impl Keys {
    fn contains(&self, id: &BlobId) -> bool {
        let r = self.fan.candidates(first4(&id.0.0), self.keys.len());
        self.keys[r].binary_search(&key_of(id)).is_ok()
    }
}

/// The immutable in-memory index.
#[derive(Debug, Default, Clone)]
pub struct Index {
    scope: IndexScope,
    entries: Vec<Entry>,
    packs: Vec<PackRef>,
    /// Where the entries of each value of an id's first bits start.
    fan: Fan,
    /// Data blobs known by key only (`IndexScope::Dedup`; empty otherwise).
    keys: Keys,
}

/// Entries per fan-out bucket, on average (a bucket is searched by bisection within a few
/// neighbouring cache lines; the table costs `4 / FAN_ENTRIES` bytes per blob).
const FAN_ENTRIES: usize = 8;

/// Largest fan-out table: 2^24 buckets (64 MiB, at 128 M blobs).
const FAN_MAX_BITS: u32 = 24;

/// Bytes of memory one indexed blob costs (the entry; packs are counted apart).
pub const INDEX_ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

impl Index {
    /// Build from index files; duplicates (the same blob stored by two writers) keep one copy.
    pub fn build<'a>(files: impl IntoIterator<Item = &'a IndexFile>) -> Result<Self> {
        let mut idx = Index::default();
        for f in files {
            idx.add_file(f)?;
        }
        idx.seal();
        Ok(idx)
    }

    fn add_file(&mut self, f: &IndexFile) -> Result<()> {
        for p in &f.packs {
            let pi = Index::pack_index(self.packs.len())?;
            self.packs.push(PackRef { id: p.id, salt: p.salt });
            self.entries.extend(p.blobs.iter().map(|b| Entry::of(b, pi)));
        }
        Ok(())
    }

    /// Pack number `n` as an entry stores it, or an error past 2^31 packs.
    fn pack_index(n: usize) -> Result<u32> {
        u32::try_from(n).ok().filter(|n| *n < TREE_BIT).ok_or_else(|| Error::Invalid("more than 2^31 packs".into()))
    }

    fn seal(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.key());
        self.entries.dedup_by_key(|e| e.key());
        self.entries.shrink_to_fit();
        self.build_fan();
    }

    /// The fan-out table of the sorted entries.
    fn build_fan(&mut self) {
        self.fan = Fan::of(self.entries.len(), |i| first4(&self.entries[i].id));
    }

    /// Position of the entry of `(kind, id)`.
    fn search(&self, kind: BlobKind, id: &BlobId) -> Option<usize> {
        let key = (id.0.0, kind == BlobKind::Tree);
        let r = self.fan.candidates(first4(&id.0.0), self.entries.len());
        let start = r.start;
        self.entries[r].binary_search_by(|e| e.key().cmp(&key)).ok().map(|i| start + i)
    }

    /// A new index with the blobs of `more` added (`add` on a copy).
    pub fn extended(&self, more: &IndexFile) -> Result<Self> {
        let mut idx = self.clone();
        idx.add(more)?;
        Ok(idx)
    }

    /// Add the blobs of `more` in place (after a writer flushes). The new entries are sorted and
    /// merged into the sorted ones from the back, so the index grows by what is added: a copy
    /// (`extended`) holds two indexes for a moment, 960 MB at 10 M blobs. A blob already indexed
    /// keeps its entry. On error (past 2^31 packs) nothing is changed.
    pub fn add(&mut self, more: &IndexFile) -> Result<()> {
        if let Some(last) = (self.packs.len() + more.packs.len()).checked_sub(1) {
            Index::pack_index(last)?;
        }
        let mut tail: Vec<Entry> = Vec::with_capacity(more.packs.iter().map(|p| p.blobs.len()).sum());
        for p in &more.packs {
            let pi = Index::pack_index(self.packs.len())?;
            self.packs.push(PackRef { id: p.id, salt: p.salt });
            tail.extend(p.blobs.iter().map(|b| Entry::of(b, pi)));
        }
        tail.sort_unstable_by_key(|e| e.key());
        let old = self.entries.len();
        self.entries.reserve_exact(tail.len());
        self.entries.extend_from_slice(&tail);
        // Backwards: the largest of what is left of either goes to the last free place; on equal
        // keys the new entry goes behind the old one, which `dedup` keeps.
        let (mut i, mut j) = (old, tail.len());
        while j > 0 {
            let w = i + j - 1;
            if i > 0 && self.entries[i - 1].key() > tail[j - 1].key() {
                self.entries[w] = self.entries[i - 1];
                i -= 1;
            } else {
                self.entries[w] = tail[j - 1];
                j -= 1;
            }
        }
        self.entries.dedup_by_key(|e| e.key());
        self.build_fan();
        Ok(())
    }

    fn find(&self, kind: BlobKind, id: &BlobId) -> Option<&Entry> {
        self.search(kind, id).map(|i| &self.entries[i])
    }

    /// Whether the blob is stored (for a `Dedup` index, a data blob by its key).
    pub fn contains(&self, kind: BlobKind, id: &BlobId) -> bool {
        self.find(kind, id).is_some() || (kind == BlobKind::Data && self.keys.contains(id))
    }

    /// The blob's position in `0..len()`, stable for this index: callers that mark blobs (check,
    /// garbage collection) keep one bit per blob instead of a set of ids. Blobs known by key
    /// only (`Dedup`) have none.
    pub fn position(&self, kind: BlobKind, id: &BlobId) -> Option<usize> {
        self.search(kind, id)
    }

    /// Where the blob is (`None` for a blob known by key only).
    pub fn lookup(&self, kind: BlobKind, id: &BlobId) -> Option<BlobLocation> {
        self.find(kind, id).map(|e| {
            let p = &self.packs[(e.pack & !TREE_BIT) as usize];
            BlobLocation {
                kind: e.kind(),
                pack: p.id,
                salt: p.salt,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
            }
        })
    }

    /// Number of distinct blobs (those known by key only included).
    pub fn len(&self) -> usize {
        self.entries.len() + self.keys.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of blobs known by key only (`Dedup`).
    pub fn keys_len(&self) -> usize {
        self.keys.keys.len()
    }

    /// Which blobs the index holds.
    pub fn scope(&self) -> IndexScope {
        self.scope
    }

    /// Packs in the order they were added (may repeat a pack listed by two index objects).
    /// Every pack the index objects list, whatever the scope.
    pub fn packs(&self) -> &[PackRef] {
        &self.packs
    }

    /// Bytes of heap the index holds.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * INDEX_ENTRY_BYTES
            + self.packs.capacity() * std::mem::size_of::<PackRef>()
            + self.fan.memory_bytes()
            + self.keys.keys.capacity() * KEY_BYTES
            + self.keys.fan.memory_bytes()
    }

    /// Every blob with its location (for check and statistics; not those known by key only).
    pub fn iter(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.entries.iter().map(|e| {
            let id = BlobId(Id(e.id));
            (id, self.lookup(e.kind(), &id).expect("entry is indexed"))
        })
    }
}

/// Builds the index of a repository from its index objects one at a time, so that the decoded
/// objects are never all held next to the index (at 10M blobs they were as large as it: the
/// peak was twice the 48 B per blob). Which objects are current (not superseded by another) is
/// only known at the end: entries carry their object through their pack, and the superseded
/// ones are dropped in place.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    select: Selection,
    entries: Vec<Entry>,
    /// Every pack seen, with the number of the object that listed it.
    packs: Vec<(PackRef, u32)>,
    /// Every object seen, with what it supersedes.
    objects: Vec<(IndexId, Vec<IndexId>)>,
}

impl IndexBuilder {
    /// A builder keeping only the blobs `select` names (`default()` keeps all). The entries
    /// left out never take memory: a restore of a few files from a repository of 10 M blobs
    /// holds their entries, not 480 MB.
    pub fn selecting(select: Selection) -> IndexBuilder {
        IndexBuilder { select, ..Default::default() }
    }

    /// Take one index object's blobs (in any order of objects).
    pub fn add(&mut self, id: IndexId, file: IndexFile) -> Result<()> {
        let object = self.next_object()?;
        let mut pi = 0;
        for p in file.packs {
            self.fold(Item::Pack { id: p.id, salt: p.salt, blobs: p.blobs.len() }, object, &mut pi)?;
            for b in p.blobs {
                self.fold(Item::Blob(b), object, &mut pi)?;
            }
        }
        self.objects.push((id, file.supersedes));
        Ok(())
    }

    /// `add` from the object's plaintext payload, parsed straight into entries: a blob the
    /// selection leaves out is never held, and the kept ones are not first decoded into lists
    /// of their own. If the payload does not parse, nothing of it is kept.
    pub fn add_payload(&mut self, id: IndexId, payload: &[u8]) -> Result<()> {
        let object = self.next_object()?;
        let (entries_before, packs_before) = (self.entries.len(), self.packs.len());
        let mut pi = 0;
        match IndexFile::visit(payload, |item| self.fold(item, object, &mut pi)) {
            Ok(supersedes) => {
                self.objects.push((id, supersedes));
                Ok(())
            }
            Err(e) => {
                self.entries.truncate(entries_before);
                self.packs.truncate(packs_before);
                Err(e)
            }
        }
    }

    /// Take one item of object number `object`: a pack (its number becomes `pi`), or a blob of
    /// pack `pi`, kept if the selection keeps it.
    fn fold(&mut self, item: Item, object: u32, pi: &mut u32) -> Result<()> {
        match item {
            Item::Pack { id, salt, .. } => {
                *pi = Index::pack_index(self.packs.len())?;
                self.packs.push((PackRef { id, salt }, object));
            }
            Item::Blob(b) if self.select.keeps(&b) => self.entries.push(Entry::of(&b, *pi)),
            Item::Blob(_) => {}
        }
        Ok(())
    }

    /// The number the next object added gets.
    fn next_object(&self) -> Result<u32> {
        u32::try_from(self.objects.len()).map_err(|_| Error::Invalid("more than 2^32 index objects".into()))
    }

    /// Whether each object added so far is current (no object added supersedes it), in the
    /// order added.
    fn current_flags(&self) -> Vec<bool> {
        let superseded: HashSet<IndexId> = self.objects.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        self.objects.iter().map(|(id, _)| !superseded.contains(id)).collect()
    }

    /// The objects added so far that no object added supersedes.
    pub fn current(&self) -> HashSet<IndexId> {
        self.objects.iter().zip(self.current_flags()).filter(|(_, c)| *c).map(|((id, _), _)| *id).collect()
    }

    /// The index of the current objects, and the fallback index of the packs that only
    /// superseded objects list (what `current` and `marked_only` give from whole objects).
    pub fn finish(self) -> Result<(Index, Index)> {
        let current = self.current_flags();
        let IndexBuilder { select, mut entries, packs, objects: _ } = self;
        let scope = select.scope();
        let listed: HashSet<PackId> = packs.iter().filter(|(_, o)| current[*o as usize]).map(|(p, _)| p.id).collect();
        // New pack numbers: the current objects' packs in one index, the marked-only packs
        // (first listing of each) in the other; None: left out.
        let (mut main, mut fallback) = (Vec::new(), Vec::new());
        let mut marked_seen = HashSet::new();
        let renumber: Vec<(bool, Option<u32>)> = packs
            .iter()
            .map(|(p, o)| {
                if current[*o as usize] {
                    main.push(*p);
                    Ok((true, Some(Index::pack_index(main.len() - 1)?)))
                } else if !listed.contains(&p.id) && marked_seen.insert(p.id) {
                    fallback.push(*p);
                    Ok((false, Some(Index::pack_index(fallback.len() - 1)?)))
                } else {
                    Ok((false, None))
                }
            })
            .collect::<Result<_>>()?;
        let with_pack = |e: &Entry, n: u32| Entry { pack: n | (e.pack & TREE_BIT), ..*e };
        let fallback_entries: Vec<Entry> = entries
            .iter()
            .filter_map(|e| match renumber[(e.pack & !TREE_BIT) as usize] {
                (false, Some(n)) => Some(with_pack(e, n)),
                _ => None,
            })
            .collect();
        entries.retain_mut(|e| match renumber[(e.pack & !TREE_BIT) as usize] {
            (true, Some(n)) => {
                *e = with_pack(e, n);
                true
            }
            _ => false,
        });
        let mut idx = Index { scope, entries, packs: main, ..Default::default() };
        idx.seal();
        let mut fb = Index { scope, entries: fallback_entries, packs: fallback, ..Default::default() };
        fb.seal();
        Ok((idx, fb))
    }
}

/// The second reading of a load for a writer (`Repository::load_index_for_writing`): the keys
/// of the data blobs that the objects the first reading found current list. The first reading
/// kept the trees (`Selection::Trees`); objects it did not see (written since) are skipped, so
/// the result is the repository as the first reading found it, less what was deleted since: a
/// writer may store again what it does not know, never skip what is not stored.
#[derive(Debug, Default)]
pub struct KeysBuilder {
    current: HashSet<IndexId>,
    keys: Vec<u128>,
}

impl KeysBuilder {
    /// A builder taking the objects of `current` (`IndexBuilder::current` of the first reading).
    pub fn new(current: HashSet<IndexId>) -> KeysBuilder {
        KeysBuilder { current, keys: Vec::new() }
    }

    /// Take the data blobs of one object's plaintext payload, if it is current. If the payload
    /// does not parse, nothing of it is kept.
    pub fn add_payload(&mut self, id: IndexId, payload: &[u8]) -> Result<()> {
        if !self.current.contains(&id) {
            return Ok(());
        }
        let before = self.keys.len();
        let parsed = IndexFile::visit(payload, |item| {
            if let Item::Blob(b) = item {
                if b.kind == BlobKind::Data {
                    self.keys.push(key_of(&b.id));
                }
            }
            Ok(())
        });
        if parsed.is_err() {
            self.keys.truncate(before);
        }
        parsed.map(|_| ())
    }

    /// `trees` (the first reading's index) with the data blobs' keys: a `Dedup` index.
    pub fn finish(self, trees: Index) -> Index {
        let mut keys = self.keys;
        keys.sort_unstable();
        keys.dedup();
        keys.shrink_to_fit();
        let fan = Fan::of(keys.len(), |i| ((keys[i] >> 96) as u32).to_be_bytes());
        Index { scope: IndexScope::Dedup, keys: Keys { keys, fan }, ..trees }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entry_is_48_bytes() {
        assert_eq!(INDEX_ENTRY_BYTES, 48);
    }

    /// An index of `ids` (data blobs, and a tree blob of the same id for every third), each at
    /// its own offset.
    fn index_of(ids: &[[u8; 32]]) -> Index {
        let blobs = ids
            .iter()
            .enumerate()
            .flat_map(|(i, id)| {
                let data = PackEntry {
                    kind: BlobKind::Data,
                    id: BlobId(Id(*id)),
                    offset: i as u32,
                    stored_len: 1,
                    raw_len: 1,
                };
                let tree = PackEntry { kind: BlobKind::Tree, offset: u32::MAX - i as u32, ..data };
                std::iter::once(data).chain((i % 3 == 0).then_some(tree))
            })
            .collect();
        let pack = IndexPack { id: PackId(Id([9; 32])), salt: [0; 32], blobs };
        Index::build([&IndexFile { packs: vec![pack], supersedes: Vec::new() }]).unwrap()
    }

    /// Ids spread evenly (the fan-out table's buckets are small), and ids forged to share their
    /// first bytes (all in one of three buckets: the first, the last, one between).
    fn fan_test_ids() -> [Vec<[u8; 32]>; 2] {
        let hash = |i: u64| *blake3::hash(&i.to_le_bytes()).as_bytes();
        let even = (0..20_000).map(hash).collect();
        let piled = (0..5_000)
            .map(|i| {
                let mut id = hash(i);
                id[..4].copy_from_slice(&[[0x00; 4], [0xff; 4], [0x5a; 4]][i as usize % 3]);
                id
            })
            .collect();
        [even, piled]
    }

    /// Every id is found at its place and its position is its rank among the entries, absent
    /// ids (and kinds) are not found: with ids spread evenly (the fan-out table's buckets are
    /// small), and with ids forged to share their first bytes (all in one bucket, or at the ends
    /// of the table).
    #[test]
    fn lookups_through_the_fan_out_table_find_exactly_what_is_there() {
        for ids in &fan_test_ids() {
            let idx = index_of(ids);
            assert!(idx.fan.bits > 0, "the table is built for {} entries", idx.len());
            let mut keys: Vec<([u8; 32], bool)> = idx.entries.iter().map(|e| e.key()).collect();
            keys.sort_unstable();
            for (i, id) in ids.iter().enumerate() {
                let b = BlobId(Id(*id));
                assert_eq!(idx.lookup(BlobKind::Data, &b).unwrap().offset, i as u32);
                assert_eq!(idx.lookup(BlobKind::Tree, &b).map(|l| l.offset), (i % 3 == 0).then(|| u32::MAX - i as u32));
                let rank = keys.binary_search(&(*id, false)).unwrap();
                assert_eq!(idx.position(BlobKind::Data, &b), Some(rank));
                let mut other = *id;
                other[31] ^= 1;
                assert!(!idx.contains(BlobKind::Data, &BlobId(Id(other))));
            }
        }
    }

    /// A `Dedup` index finds every data blob by its key through its own fan-out table, with ids
    /// spread evenly and piled into few buckets; an id that differs in its first `KEY_BYTES`
    /// bytes is not found, one that differs only after them is (what a key is).
    #[test]
    fn data_blobs_known_by_key_are_found_through_their_fan_out_table() {
        for ids in &fan_test_ids() {
            let full = index_of(ids);
            let object = IndexId(Id([1; 32]));
            let mut keys = KeysBuilder::new([object].into_iter().collect());
            let blobs = full
                .iter()
                .map(|(id, l)| PackEntry { kind: l.kind, id, offset: l.offset, stored_len: 1, raw_len: 1 })
                .collect();
            let pack = IndexPack { id: PackId(Id([9; 32])), salt: [0; 32], blobs };
            keys.add_payload(object, &IndexFile { packs: vec![pack], supersedes: Vec::new() }.encode()).unwrap();
            let idx = keys.finish(Index::default());
            assert_eq!((idx.keys_len(), idx.scope()), (ids.len(), IndexScope::Dedup));
            assert!(idx.keys.fan.bits > 0, "the table is built for {} keys", idx.keys_len());
            for id in ids {
                assert!(idx.contains(BlobKind::Data, &BlobId(Id(*id))));
                assert_eq!(idx.lookup(BlobKind::Data, &BlobId(Id(*id))), None, "no location");
                for (byte, known) in [(KEY_BYTES - 1, false), (2, false), (KEY_BYTES, true), (31, true)] {
                    let mut other = *id;
                    other[byte] ^= 1;
                    assert_eq!(idx.contains(BlobKind::Data, &BlobId(Id(other))), known, "byte {byte} differs");
                }
            }
        }
    }

    fn arb_entry() -> impl Strategy<Value = PackEntry> {
        let len = 0..=MAX_BLOB_LEN as u32;
        (any::<bool>(), any::<[u8; 32]>(), any::<u32>(), len.clone(), len).prop_map(|(t, id, o, s, r)| PackEntry {
            kind: if t { BlobKind::Tree } else { BlobKind::Data },
            id: BlobId(Id(id)),
            offset: o,
            stored_len: s,
            raw_len: r,
        })
    }

    fn arb_file() -> impl Strategy<Value = IndexFile> {
        let pack = (any::<[u8; 32]>(), any::<[u8; 32]>(), proptest::collection::vec(arb_entry(), 0..20))
            .prop_map(|(id, salt, blobs)| IndexPack { id: PackId(Id(id)), salt, blobs });
        (proptest::collection::vec(pack, 0..5), proptest::collection::vec(any::<[u8; 32]>(), 0..3))
            .prop_map(|(packs, s)| IndexFile { packs, supersedes: s.into_iter().map(|i| IndexId(Id(i))).collect() })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(f in arb_file()) {
            prop_assert_eq!(IndexFile::decode(&f.encode()).unwrap(), f);
        }

        #[test]
        fn every_blob_is_found_where_it_was_put(f in arb_file()) {
            let idx = Index::build([&f]).unwrap();
            for p in &f.packs {
                for b in &p.blobs {
                    let loc = idx.lookup(b.kind, &b.id).unwrap();
                    prop_assert_eq!(loc.kind, b.kind);
                    let pos = idx.position(b.kind, &b.id).unwrap();
                    prop_assert!(pos < idx.len());
                    let (at, _) = idx.iter().nth(pos).unwrap();
                    prop_assert_eq!(at, b.id);
                }
            }
            prop_assert!(!idx.contains(BlobKind::Data, &BlobId(Id([0xee; 32]))) || f.packs.iter().any(|p| p.blobs.iter().any(|b| b.id.0.0 == [0xee; 32])));
        }

        /// `add` (in place, a sorted merge) gives the index `build` gives from all the files:
        /// the same sorted keys and fan-out table, every blob found, a blob stored once where
        /// it was put.
        #[test]
        fn adding_in_place_is_building_from_all(mut files in proptest::collection::vec(arb_file(), 1..6), again in 0..4usize) {
            // Blobs of the first file stored again (another writer's copy), in the last file.
            let copies: Vec<PackEntry> = files[0].packs.iter().flat_map(|p| p.blobs.iter().take(again)).map(|b| PackEntry { offset: b.offset ^ 1, ..*b }).collect();
            let first: Vec<(BlobKind, BlobId, u32)> = copies.iter().map(|b| (b.kind, b.id, b.offset ^ 1)).collect();
            files.last_mut().unwrap().packs.push(IndexPack { id: PackId(Id([0x77; 32])), salt: [1; 32], blobs: copies });
            let built = Index::build(files.iter()).unwrap();
            let mut added = Index::build([&files[0]]).unwrap();
            for f in &files[1..] {
                added.add(f).unwrap();
            }
            let keys = |i: &Index| i.entries.iter().map(|e| e.key()).collect::<Vec<_>>();
            prop_assert_eq!(keys(&added), keys(&built));
            prop_assert!(added.entries.windows(2).all(|w| w[0].key() < w[1].key()));
            prop_assert_eq!(&added.fan, &built.fan);
            let all: Vec<(&IndexPack, &PackEntry)> =
                files.iter().flat_map(|f| f.packs.iter().flat_map(|p| p.blobs.iter().map(move |b| (p, b)))).collect();
            for (p, b) in &all {
                let loc = added.lookup(b.kind, &b.id).unwrap();
                let once = all.iter().filter(|(_, o)| (o.kind, o.id) == (b.kind, b.id)).count() == 1;
                if once {
                    prop_assert_eq!((loc.pack, loc.salt, loc.offset, loc.stored_len, loc.raw_len), (p.id, p.salt, b.offset, b.stored_len, b.raw_len));
                }
            }
            if files.len() > 1 {
                for (kind, id, offset) in &first {
                    prop_assert_eq!(added.lookup(*kind, id).unwrap().offset, *offset, "the entry indexed first is kept");
                }
            }
        }

        /// Parsing a payload straight into the builder (`add_payload`) builds what decoding it
        /// and adding the decoded file (`add`) builds, under every selection; a payload that
        /// does not parse (cut short) is refused and leaves nothing behind.
        #[test]
        fn adding_a_payload_is_adding_its_decoded_file(files in proptest::collection::vec(arb_file(), 1..4), cut in any::<usize>(), pick in any::<u64>()) {
            let mut filter = BlobFilter::with_capacity(64);
            files.iter().flat_map(|f| f.packs.iter().flat_map(|p| &p.blobs)).filter(|b| b.id.0.0[0] as u64 % 3 == pick % 3).for_each(|b| filter.insert(&b.id));
            let filter = Arc::new(filter);
            let dump = |i: &Index| (i.scope(), i.packs().to_vec(), i.iter().collect::<Vec<_>>());
            for select in [Selection::All, Selection::Trees, Selection::TreesAnd(filter.clone())] {
                let (mut decoded, mut parsed) = (IndexBuilder::selecting(select.clone()), IndexBuilder::selecting(select.clone()));
                for (n, f) in files.iter().enumerate() {
                    let id = IndexId(Id([n as u8; 32]));
                    decoded.add(id, IndexFile::decode(&f.encode()).unwrap()).unwrap();
                    // Another object, cut short: what it held before the cut must not stay.
                    let mut other = f.clone();
                    other.packs.iter_mut().flat_map(|p| &mut p.blobs).for_each(|b| b.id.0.0[31] ^= 0x55);
                    let bad = other.encode();
                    if cut % bad.len() > 0 {
                        prop_assert!(parsed.add_payload(IndexId(Id([0xff; 32])), &bad[..cut % bad.len()]).is_err());
                    }
                    parsed.add_payload(id, &f.encode()).unwrap();
                }
                let ((a, fa), (b, fb)) = (decoded.finish().unwrap(), parsed.finish().unwrap());
                prop_assert_eq!(dump(&a), dump(&b));
                prop_assert_eq!(dump(&fa), dump(&fb));
            }
        }

        #[test]
        fn truncation_is_corrupt_never_a_panic(f in arb_file(), cut in any::<usize>()) {
            let b = f.encode();
            let cut = cut % b.len().max(1);
            if cut < b.len() {
                prop_assert!(IndexFile::decode(&b[..cut]).is_err());
            }
        }
    }

    #[test]
    fn blob_lengths_over_the_cap_are_corrupt() {
        let f = |stored_len, raw_len| IndexFile {
            packs: vec![IndexPack {
                id: PackId(Id([9; 32])),
                salt: [0; 32],
                blobs: vec![PackEntry {
                    kind: BlobKind::Data,
                    id: BlobId(Id([1; 32])),
                    offset: 0,
                    stored_len,
                    raw_len,
                }],
            }],
            supersedes: vec![],
        };
        assert!(IndexFile::decode(&f(u32::MAX, 10).encode()).unwrap_err().is_corrupt(), "4 GiB stored length");
        assert!(IndexFile::decode(&f(10, MAX_BLOB_LEN as u32 + 1).encode()).unwrap_err().is_corrupt());
        assert!(IndexFile::decode(&f(MAX_STORED_LEN as u32, MAX_BLOB_LEN as u32).encode()).is_ok());
    }

    #[test]
    fn same_id_different_kind_are_distinct() {
        let id = BlobId(Id([1; 32]));
        let e = |kind, offset| PackEntry { kind, id, offset, stored_len: 1, raw_len: 1 };
        let f = IndexFile {
            packs: vec![IndexPack {
                id: PackId(Id([9; 32])),
                salt: [0; 32],
                blobs: vec![e(BlobKind::Data, 0), e(BlobKind::Tree, 1)],
            }],
            supersedes: vec![],
        };
        let idx = Index::build([&f]).unwrap();
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.lookup(BlobKind::Tree, &id).unwrap().offset, 1);
        assert_eq!(idx.lookup(BlobKind::Data, &id).unwrap().offset, 0);
    }
}
