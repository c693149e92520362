//! Restore phase 3: fetch every needed blob once per pack range and write it everywhere it goes.
//!
//! Blobs are grouped by pack and sorted by offset; neighbours closer than `MAX_GAP` are merged
//! into one ranged read of at most `MAX_RANGE` bytes from an object store (each read is a
//! request: fewer, larger ones), `LOCAL_RANGE` from a local directory (a read is a `pread`:
//! smaller ones hold less memory at the same speed). `IN_FLIGHT` ranges are read at once
//! (`LOCAL_IN_FLIGHT` from a local directory);
//! decryption, verification and the positioned writes run on blocking threads. Memory: about
//! `IN_FLIGHT ×` the range size (blobs are decrypted where they lie in it) plus one
//! decompression buffer per range in flight, and 64 bytes per use of a blob (`Want`). Both
//! kinds of buffer are reused from range to range (a local directory's ranges are read into
//! them), so a restore touches the same memory throughout instead of faulting in fresh pages.
//! A target of 64 MiB or more is written past the page cache by two writer threads (`direct`),
//! which the range threads hand their blobs to in 1 MiB aligned staging buffers (five in all),
//! into space allocated for its data first.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::StreamExt;
use repo_format::{
    BlobFilter, BlobId, BlobKind, BlobLocation, FileKind, IndexScope, PackId, PackOpener, Repository, SALT_LEN,
    Segment, Selection,
};

use crate::direct::{Direct, MIN_DIRECT};
use crate::job::Job;
use crate::pool::Pool;
use crate::progress::Counters;
use crate::report::{EntryError, EntryErrorKind};

const MAX_GAP: u64 = 256 << 10;
const MAX_RANGE: u64 = 4 << 20;
/// Measured on the peer corpus (local repository, median of 3): 1 MiB ranges restore as fast
/// as 4 MiB ones (2.49 s vs 2.57 s) with 8 MiB less peak RSS (52 vs 60 MiB).
const LOCAL_RANGE: u64 = 1 << 20;
const IN_FLIGHT: usize = 4;
/// Measured on the peer corpus (median of 3): 3 local ranges at once restore as fast as 4
/// (2.47 s vs 2.48 s; 200,000 small files 5.71 s vs 5.93 s) with 3 MiB less peak RSS (49.4 vs
/// 52.5 MiB). With buffers reused (`Pool`), 2 restore as fast as 3 (2.12 s vs 2.13 s, CPU 3.40
/// vs 3.69 s) with 7.5 MiB less peak RSS (51.3 vs 58.8 MiB).
const LOCAL_IN_FLIGHT: usize = 2;

/// Where content goes: numbered targets (files of a plan, or one disk), each with its segments.
pub(crate) trait Targets: Send + Sync {
    fn count(&self) -> usize;
    fn segments(&self, i: usize) -> &[Segment];
    /// Open target `i` for positioned writes.
    fn open(&self, i: usize) -> std::io::Result<File>;
    /// A name for messages.
    fn name(&self, i: usize) -> String;
    /// Whether target `i` is made whole by one write: the caller guarantees it has at most one
    /// use of one blob. Such a target is not opened but created (`create`) just before that
    /// write and completed (`finish`) just after it, in one visit instead of three (a million
    /// small files were three passes of path lookups, opens and inode updates).
    fn single(&self, _i: usize) -> bool {
        false
    }
    /// Create single target `i` for its one write.
    fn create(&self, i: usize) -> std::io::Result<File> {
        self.open(i)
    }
    /// Complete single target `i` after its write (its metadata), through the open file.
    fn finish(&self, _i: usize, _f: &File) -> std::io::Result<()> {
        Ok(())
    }
}

/// One use of a blob: where it is stored and where it goes. A blob used several times has one
/// `Want` per use; sorted by pack, offset and id, its uses are neighbours, read and decrypted
/// once. 64 bytes, no allocation of its own and no map from ids (a million small files are a
/// million wants).
struct Want {
    id: BlobId,
    /// Index into the restore's table of packs (`Packs`).
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    /// The length the segment gives (a blob must fill its segment exactly).
    len: u32,
    /// Target index (a plan holds fewer than 2^32 files), and offset in it.
    target: u32,
    at: u64,
}

const _: () = assert!(std::mem::size_of::<Want>() <= 64);

impl Want {
    /// Same blob at the same place: one read and decryption serves both.
    fn same_blob(&self, other: &Want) -> bool {
        self.pack == other.pack && self.offset == other.offset && self.id == other.id
    }
}

/// The packs a restore reads, with the salt their index entries gave (a pack listed twice with
/// two salts is two entries: each blob is opened with the salt its own lookup gave).
#[derive(Default)]
struct Packs {
    list: Vec<(PackId, [u8; SALT_LEN])>,
    at: HashMap<(PackId, [u8; SALT_LEN]), u32>,
}

impl Packs {
    fn of(&mut self, loc: &BlobLocation) -> u32 {
        *self.at.entry((loc.pack, loc.salt)).or_insert_with(|| {
            self.list.push((loc.pack, loc.salt));
            (self.list.len() - 1) as u32
        })
    }
}

/// A contiguous read of one pack: `blobs` indexes the restore's wants, sorted by pack and offset.
struct Range {
    pack: PackId,
    salt: [u8; SALT_LEN],
    start: u64,
    end: u64,
    blobs: std::ops::Range<usize>,
}

/// What `write_all` did.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub bytes: u64,
    pub errors: Vec<EntryError>,
    /// Targets that did not get all their content.
    pub failed: HashSet<usize>,
}

/// With an index of tree blobs only (`restore::load_index`), load the entries of the data blobs
/// `segments` use, and the trees again; any other index is left as it is. Memory: the filter's
/// 2 to 4 bytes per use of a blob while the index objects are read, then the entries kept.
pub(crate) async fn select_index(repo: &Repository, segments: &[Segment]) -> repo_format::Result<()> {
    if repo.index().scope() != IndexScope::Trees {
        return Ok(());
    }
    let blobs = || {
        segments.iter().filter_map(|s| match s {
            Segment::Blob { id, .. } => Some(id),
            _ => None,
        })
    };
    let mut filter = BlobFilter::with_capacity(blobs().count());
    blobs().for_each(|id| filter.insert(id));
    let started = std::time::Instant::now();
    let idx = repo.load_index_selecting(Selection::TreesAnd(Arc::new(filter))).await?;
    tracing::info!("restore: {} index entries selected in {:.2} s", idx.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Every use of a blob by the targets (sorted by pack, offset and id), and the reads that fetch
/// them. The wants are never copied into per-pack or per-range lists (at a million small files
/// those copies were a third of a restore's peak).
fn ranges(repo: &Repository, targets: &dyn Targets, skip: &HashSet<usize>) -> (Vec<Want>, Vec<Range>, Written) {
    let max_range = if repo.storage().is_local() { LOCAL_RANGE } else { MAX_RANGE };
    let (index, fallback) = (repo.index(), repo.fallback());
    let mut done = Written::default();
    // Counted first: a list grown by doubling holds up to twice its wants for the whole restore.
    let uses = (0..targets.count())
        .filter(|fi| !skip.contains(fi))
        .map(|fi| targets.segments(fi).iter().filter(|s| matches!(s, Segment::Blob { .. })).count())
        .sum();
    let mut wants: Vec<Want> = Vec::with_capacity(uses);
    let mut packs = Packs::default();
    for fi in 0..targets.count() {
        if skip.contains(&fi) {
            continue;
        }
        let mut off = 0u64;
        for s in targets.segments(fi) {
            if let Segment::Blob { id, len } = s {
                match index.lookup(BlobKind::Data, id).or_else(|| fallback.lookup(BlobKind::Data, id)) {
                    Some(loc) => wants.push(Want {
                        id: *id,
                        pack: packs.of(&loc),
                        offset: loc.offset,
                        stored_len: loc.stored_len,
                        raw_len: loc.raw_len,
                        len: *len,
                        target: u32::try_from(fi).expect("fewer than 2^32 targets"),
                        at: off,
                    }),
                    None => {
                        done.errors.push(EntryError::new(
                            EntryErrorKind::Content,
                            targets.name(fi),
                            format!("blob {id} is not in the index"),
                        ));
                        done.failed.insert(fi);
                    }
                }
            }
            off += s.len();
        }
    }
    // Pack order, then offset: reads of one pack go out together, and the uses of one blob
    // are neighbours.
    wants.sort_unstable_by(|a, b| (a.pack, a.offset, &a.id).cmp(&(b.pack, b.offset, &b.id)));
    let mut out = Vec::new();
    let mut cur: Option<Range> = None;
    for (i, w) in wants.iter().enumerate() {
        let (s, e) = (u64::from(w.offset), u64::from(w.offset) + u64::from(w.stored_len));
        let (pack, salt) = packs.list[w.pack as usize];
        match &mut cur {
            Some(r)
                if r.pack == pack && r.salt == salt && s <= r.end + MAX_GAP && e.max(r.end) - r.start <= max_range =>
            {
                r.end = r.end.max(e);
                r.blobs.end = i + 1;
            }
            _ => {
                out.extend(cur.take());
                cur = Some(Range { pack, salt, start: s, end: e, blobs: i..i + 1 });
            }
        }
    }
    out.extend(cur);
    (wants, out, done)
}

/// Write all content (targets in `skip` are left out): bytes written, error lines, and the
/// targets that did not get all their content.
pub(crate) async fn write_all(
    repo: Arc<Repository>,
    targets: Arc<dyn Targets>,
    skip: &HashSet<usize>,
    job: &Job,
) -> Written {
    let counters = job.progress.clone();
    let started = std::time::Instant::now();
    let (wants, ranges, mut done) = ranges(&repo, &*targets, skip);
    tracing::info!(
        "restore content: {} uses of blobs in {} reads, found in {:.2} s",
        wants.len(),
        ranges.len(),
        started.elapsed().as_secs_f64()
    );
    let wants = Arc::new(wants);
    let local = repo.storage().is_local();
    // Decompression buffers, and (local directory) range buffers: one per range in flight,
    // reused. An object store's reads come back in memory of their own.
    let (plain_keep, range_keep) = keep_sizes(repo.config());
    let bufs = Arc::new(Pool::new(plain_keep, IN_FLIGHT));
    let range_bufs = Arc::new(Pool::new(if local { range_keep } else { 0 }, IN_FLIGHT));
    // Big targets are written directly, by `direct`'s writer threads.
    let direct = Arc::new(Direct::new((0..targets.count()).map(|i| {
        !skip.contains(&i)
            && !targets.single(i)
            && targets.segments(i).iter().map(Segment::len).sum::<u64>() >= MIN_DIRECT
    })));
    // Range threads hand direct writes over and do not wait for the disk. A third range in
    // flight (with 8 pieces queued) restored 3.2 GiB of an image in 3.06–3.08 s against
    // 3.37–3.48 s, for 3–5 MiB more peak RSS: not taken.
    let in_flight = if local { LOCAL_IN_FLIGHT } else { IN_FLIGHT };
    let results: Vec<RangeResult> = futures::stream::iter(ranges.into_iter().map(|r| {
        let (repo, targets, counters, cancel) = (repo.clone(), targets.clone(), counters.clone(), job.cancel.clone());
        let (bufs, range_bufs, wants) = (bufs.clone(), range_bufs.clone(), wants.clone());
        let direct = direct.clone();
        async move {
            let all_targets = |wants: &[Want]| wants.iter().map(|w| w.target as usize).collect();
            if cancel.is_cancelled() {
                // Not read: its files are incomplete (the caller reports the cancellation).
                return RangeResult { bytes: 0, errors: Vec::new(), failed: all_targets(&wants[r.blobs.clone()]) };
            }
            let mut bytes = range_bufs.take();
            match repo.storage().read_range_into(FileKind::Pack, &r.pack.0, r.start, r.end - r.start, &mut bytes).await
            {
                Ok(()) => tokio::task::spawn_blocking(move || {
                    // Blobs are decrypted where they lie in it.
                    let done = write_range(
                        &repo,
                        &*targets,
                        &direct,
                        &r,
                        &wants[r.blobs.clone()],
                        &mut bytes,
                        &counters,
                        &bufs,
                    );
                    range_bufs.give(bytes);
                    done
                })
                .await
                .expect("write task"),
                Err(e) => RangeResult {
                    bytes: 0,
                    errors: vec![EntryError::general(
                        EntryErrorKind::Content,
                        format!("pack {}: {e}", r.pack.0.short()),
                    )],
                    failed: all_targets(&wants[r.blobs.clone()]),
                },
            }
        }
    }))
    .buffer_unordered(in_flight)
    .collect()
    .await;
    for r in results {
        done.bytes += r.bytes;
        done.errors.extend(r.errors);
        done.failed.extend(r.failed);
    }
    // The direct writes handed over: made before the targets are finished. Bytes were counted
    // as written when handed over; those not written are taken back.
    let direct_failed = tokio::task::spawn_blocking(move || direct.finish()).await.expect("direct writes");
    for f in direct_failed {
        done.errors.push(EntryError::new(EntryErrorKind::Write, targets.name(f.i), f.error));
        done.failed.insert(f.i);
        done.bytes = done.bytes.saturating_sub(f.lost);
        let _ = counters.bytes_done.fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(f.lost)));
    }
    done
}

/// What one range did.
struct RangeResult {
    bytes: u64,
    errors: Vec<EntryError>,
    failed: Vec<usize>,
}

#[allow(clippy::too_many_arguments)]
fn write_range(
    repo: &Repository,
    targets: &dyn Targets,
    direct: &Direct,
    r: &Range,
    blobs: &[Want],
    bytes: &mut [u8],
    counters: &Counters,
    plain_bufs: &Pool,
) -> RangeResult {
    // Each target's file, and its direct reopening when it is written directly (shared with
    // the direct writer threads until it has made this range's writes).
    let mut files: HashMap<usize, (Arc<File>, Option<Arc<File>>)> = HashMap::new();
    let mut written = 0u64;
    let mut errors = Vec::new();
    let mut failed = Vec::new();
    // Blobs are decrypted where they lie in the range; the decompression buffer is reused for
    // every blob (one per range in flight, so its memory is bounded like the ranges').
    let mut buf = plain_bufs.take();
    let opener = PackOpener::new(repo.master_key(), &r.salt);
    let mut rest = blobs;
    while let Some(w) = rest.first() {
        // This blob's uses: it is decrypted and checked once, then written to each.
        let n = rest.iter().take_while(|u| u.same_blob(w)).count();
        let (uses, next) = rest.split_at(n);
        rest = next;
        let at = (u64::from(w.offset) - r.start) as usize;
        let stored = &mut bytes[at..at + w.stored_len as usize];
        let plain = match opener.open_in_place(BlobKind::Data, &w.id, stored, &mut buf) {
            Ok(plain) => plain,
            Err(e) => {
                errors.push(EntryError::general(
                    EntryErrorKind::Content,
                    format!("blob {} in pack {}: {e}", w.id.0.short(), r.pack.0.short()),
                ));
                failed.extend(uses.iter().map(|u| u.target as usize));
                continue;
            }
        };
        if plain.len() != w.raw_len as usize {
            errors.push(EntryError::general(
                EntryErrorKind::Content,
                format!("blob {}: length {} differs from the index's {}", w.id.0.short(), plain.len(), w.raw_len),
            ));
            failed.extend(uses.iter().map(|u| u.target as usize));
            continue;
        }
        for u in uses {
            let fi = u.target as usize;
            if plain.len() != u.len as usize {
                errors.push(EntryError::new(
                    EntryErrorKind::Content,
                    targets.name(fi),
                    format!("blob {} has {} bytes but its segment {}", w.id.0.short(), plain.len(), u.len),
                ));
                failed.push(fi);
                continue;
            }
            if targets.single(fi) {
                let Some(n) = write_single(targets, fi, plain, u.at, &mut errors) else {
                    failed.push(fi);
                    continue;
                };
                written += n;
                counters.bytes_done.fetch_add(n, Relaxed);
                continue;
            }
            let (f, d) = match files.entry(fi) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match targets.open(fi) {
                    Ok(f) => {
                        let d = direct.reopen(fi, &f).map(Arc::new);
                        if d.is_some() {
                            direct.allocate(fi, &f, targets.segments(fi));
                        }
                        v.insert((Arc::new(f), d))
                    }
                    Err(e) => {
                        errors.push(EntryError::new(EntryErrorKind::Write, targets.name(fi), e));
                        failed.push(fi);
                        continue;
                    }
                },
            };
            let wrote = match d {
                Some(d) if direct.wants(fi) => direct.write(fi, f, d, plain, u.at),
                _ => f.write_all_at(plain, u.at),
            };
            if let Err(e) = wrote {
                errors.push(EntryError::new(EntryErrorKind::Write, targets.name(fi), e));
                failed.push(fi);
                continue;
            }
            written += plain.len() as u64;
            counters.bytes_done.fetch_add(plain.len() as u64, Relaxed);
        }
    }
    plain_bufs.give(buf);
    RangeResult { bytes: written, errors, failed }
}

/// Create single target `fi`, write `data` at `at` and finish it: the bytes written, or `None`
/// when its content is not all there (the error is in `errors`). A failed `finish` is reported
/// but the content stands.
fn write_single(targets: &dyn Targets, fi: usize, data: &[u8], at: u64, errors: &mut Vec<EntryError>) -> Option<u64> {
    let written = targets.create(fi).and_then(|f| f.write_all_at(data, at).map(|()| f));
    match written {
        Ok(f) => {
            if let Err(e) = targets.finish(fi, &f) {
                errors.push(EntryError::new(EntryErrorKind::Metadata, targets.name(fi), e));
            }
            Some(data.len() as u64)
        }
        Err(e) => {
            errors.push(EntryError::new(EntryErrorKind::Write, targets.name(fi), e));
            None
        }
    }
}

/// The largest buffers kept for the next range, (decompressed blob, local range): a blob of the
/// repository's largest chunk (content or disk) fits both, so a restore reuses its buffers
/// throughout (a big file's chunks go up to 4 MiB: with 2 MiB kept, every larger one was freed
/// and faulted in again). A larger blob's buffers (another repository's sizes) are freed after
/// use; a hostile config cannot make idle buffers larger than 16 MiB (the chunker's own limit).
fn keep_sizes(config: &repo_format::RepoConfig) -> (usize, usize) {
    let chunk = (config.chunker.max.max(config.fixed_chunk_size) as usize).min(16 << 20);
    (chunk, (LOCAL_RANGE as usize).max(chunk + (64 << 10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_of_the_largest_chunk_are_kept_and_no_more() {
        let mut config = repo_format::RepoConfig::new(1);
        let (plain, range) = keep_sizes(&config);
        assert_eq!(plain, config.chunker.max as usize, "a decompressed blob of the largest chunk");
        assert!(range > plain && range >= LOCAL_RANGE as usize, "a range of one such blob as stored");
        // A config naming huge chunks (hostile or not) does not make idle buffers huge.
        config.chunker.max = u32::MAX;
        config.fixed_chunk_size = u32::MAX;
        let (plain, range) = keep_sizes(&config);
        assert!(plain <= 16 << 20 && range <= 17 << 20, "{plain} {range}");
    }
}
