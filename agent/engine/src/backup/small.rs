//! Small files read by the blob workers, in batches.
//!
//! A file smaller than the chunker's minimum is one blob. When the scan read each one itself
//! and handed its bytes to a worker, a backup of many small files was one thread's syscalls
//! and waits on the disk, plus a worker woken for every file (measured on a million files:
//! the scan thread was the busiest and about a quarter of all CPU was the scheduler). Instead,
//! the scan only stats: it collects small files into a batch (`Batcher`) and a blob worker
//! opens, reads, re-stats and stores every file of the batch, answering each file on its own
//! channel. A worker opens a file by name from its directory (held open by the scan: one path
//! component, no PATH_MAX), or by absolute path where the scan holds none, and reads it only
//! if it is the very file the scan stat'ed (`open::open_for_read`): a directory on the path
//! swapped for a symlink, or a FIFO or device renamed over the file, cannot lead it out of the
//! source, block it or act on
//! the node. Reads then run on every worker at once, and a worker is woken once per batch. A
//! worker keeps `READ_AHEAD` files of its batch open ahead of the one it reads, their reads
//! started (`POSIX_FADV_WILLNEED`): on a tree not in the page cache the disk gets many requests
//! at once instead of one per worker (200,000 small files, caches dropped: 8.5 s against
//! 12.9 s; no change when they are cached).
//!
//! The tree builder waits for a file's answer only after the scan has sent the batch (a batch
//! is sent before every directory record), so the builder never waits for a batch that is not
//! on its way.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crossbeam_channel::{Receiver, Sender, bounded};
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use repo_format::{BlobKind, BlobWriter, Saved};

use super::Tally;
use super::open::{At, Stamp, changed_while_read, open_for_read};
use super::scan::BufPool;
use crate::job::Permit;
use crate::progress::Counters;
use crate::report::{EntryError, EntryErrorKind};

/// Files per batch at most.
const BATCH_FILES: usize = 64;
/// Bytes per batch at most (a batch's bytes are held from the job's memory budget at once).
const BATCH_BYTES: u64 = 4 << 20;
/// Files a worker has open ahead of the one it reads (that one included), each with its
/// read-ahead started (`POSIX_FADV_WILLNEED`): on a tree not in the page cache a worker would
/// otherwise wait for one file's blocks at a time, while a disk (or a network volume) serves
/// many requests at once about as fast as one. Workers hold this many descriptors each at most.
const READ_AHEAD: usize = 16;
/// Directories a batch holds a descriptor of, at most: the batches queued and in progress
/// (about ten) hold at most this many each, whatever the tree's shape (a directory per file
/// would otherwise hold 64 a batch, hundreds per job).
const BATCH_DIRS: usize = 16;

/// One small file to read and store whole.
pub(crate) struct SmallFile {
    /// Its absolute path, also how it is opened when `dir` is `None`.
    pub path: PathBuf,
    /// The directory it is opened from by name (one path component; no PATH_MAX).
    pub dir: Option<Arc<File>>,
    /// Size (what is read at most), inode and mtime when it was stat'ed.
    pub stamp: Stamp,
    pub reply: Sender<SmallRead>,
}

impl SmallFile {
    fn at(&self) -> At<'_> {
        match (&self.dir, self.path.file_name()) {
            (Some(dir), Some(name)) => At::In(dir, name),
            _ => At::Path(&self.path),
        }
    }
}

/// What became of a small file.
pub(crate) enum SmallRead {
    /// `len` bytes read and stored (`saved` is `None` for a file found empty); `changed` is the
    /// warning when the file changed while it was read.
    Read { saved: Option<Saved>, len: u32, changed: Option<EntryError> },
    /// It could not be read: the error line (the file is left out of the snapshot).
    Unreadable(EntryError),
    /// It was read but could not be stored.
    NotStored(repo_format::Error),
}

/// A batch for one blob worker.
pub(crate) struct FileBatch {
    pub files: Vec<SmallFile>,
    /// The batch's bytes held from the job's memory budget.
    pub permit: Option<Permit>,
    pub counters: Arc<Counters>,
    pub tally: Arc<Tally>,
}

impl FileBatch {
    /// Read and store every file, answering each (by a blob worker).
    pub(crate) fn run(self, writer: &BlobWriter, pool: &BufPool) {
        let mut ahead = VecDeque::with_capacity(READ_AHEAD);
        let mut next = 0;
        for (i, f) in self.files.iter().enumerate() {
            while next < self.files.len() && next < i + READ_AHEAD {
                ahead.push_back(open_ahead(&self.files[next]));
                next += 1;
            }
            let opened = ahead.pop_front().flatten();
            let r = self.one(f, opened, writer, pool);
            let _ = f.reply.send(r);
        }
        drop(self.permit);
    }

    /// Read and store `f`, opened ahead (`None`: not opened yet).
    fn one(&self, f: &SmallFile, opened: Option<io::Result<File>>, writer: &BlobWriter, pool: &BufPool) -> SmallRead {
        let mut data = pool.take();
        let read = opened
            .unwrap_or_else(|| open_for_read(f.at(), &f.stamp))
            .and_then(|file| (&file).take(f.stamp.size()).read_to_end(&mut data).and_then(|_| f.stamp.check(&file)));
        let same = match read {
            Ok(same) => same,
            Err(e) => {
                pool.give(data);
                self.counters.errors.fetch_add(1, Relaxed);
                let error = EntryError::new(EntryErrorKind::Read, &f.path, e);
                tracing::warn!("{error}");
                return SmallRead::Unreadable(error);
            }
        };
        let len = data.len() as u32;
        self.counters.bytes_done.fetch_add(u64::from(len), Relaxed);
        self.tally.bytes_read.fetch_add(u64::from(len), Relaxed);
        let changed = (!same).then(|| changed_while_read(&f.path));
        let saved = if data.is_empty() { Ok(None) } else { writer.save(BlobKind::Data, &data).map(Some) };
        pool.give(data);
        self.counters.files_done.fetch_add(1, Relaxed);
        match saved {
            Ok(saved) => SmallRead::Read { saved, len, changed },
            Err(e) => SmallRead::NotStored(e),
        }
    }
}

/// Open `f` for reading (`open_for_read`) and start reading its blocks into the page cache
/// without waiting for them. `None` when out of descriptors: it is opened when its turn comes.
fn open_ahead(f: &SmallFile) -> Option<io::Result<File>> {
    match open_for_read(f.at(), &f.stamp) {
        Ok(file) => {
            let len = i64::try_from(f.stamp.size()).unwrap_or(i64::MAX);
            if len > 0 {
                // Advice only: where it is refused the read still comes, just not ahead.
                let _ = posix_fadvise(file.as_fd(), 0, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
            }
            Some(Ok(file))
        }
        Err(e) if super::cwd::out_of_descriptors(&e) => None,
        Err(e) => Some(Err(e)),
    }
}

/// The scan's batch being filled.
#[derive(Default)]
pub(crate) struct Batcher {
    files: Vec<SmallFile>,
    bytes: u64,
    /// Directories held by the batch (counted as they change from one file to the next).
    dirs: usize,
}

impl Batcher {
    /// Add a file; the receiver gets its answer once the batch is sent and read. Returns
    /// whether the batch is full (send it).
    pub(crate) fn push(
        &mut self,
        path: PathBuf,
        dir: Option<Arc<File>>,
        md: &std::fs::Metadata,
    ) -> (Receiver<SmallRead>, bool) {
        let (reply, rx) = bounded(1);
        self.bytes += md.size();
        let last = self.files.last().and_then(|f| f.dir.as_ref());
        if dir.as_ref().is_some_and(|d| !last.is_some_and(|l| Arc::ptr_eq(l, d))) {
            self.dirs += 1;
        }
        self.files.push(SmallFile { path, dir, stamp: Stamp::of(md), reply });
        (rx, self.files.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES || self.dirs >= BATCH_DIRS)
    }

    /// The batch so far, with its byte count (`None` when empty); the batcher starts again.
    pub(crate) fn take(&mut self) -> Option<(Vec<SmallFile>, u64)> {
        if self.files.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.bytes);
        self.dirs = 0;
        Some((std::mem::take(&mut self.files), bytes))
    }
}

#[cfg(test)]
mod tests {
    use repo_format::{KdfParams, ObjectStorage, RepoConfig, Repository, Storage, WriterOptions};

    use super::*;

    async fn new_repo(dir: &std::path::Path) -> Repository {
        let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&dir.join("repo")).unwrap());
        Repository::init(storage, b"pw", KdfParams::insecure_for_tests(), RepoConfig::new(1), "test").await.unwrap()
    }

    /// Run one batch of `files` on a blocking thread, as a blob worker does.
    async fn run_batch(repo: &Repository, files: Vec<SmallFile>) -> (BlobWriter, Arc<Counters>) {
        let writer = repo.writer(WriterOptions::default());
        let (counters, tally) = (Arc::new(Counters::default()), Arc::new(Tally::default()));
        let batch = FileBatch { files, permit: None, counters: counters.clone(), tally };
        let writer = tokio::task::spawn_blocking(move || {
            batch.run(&writer, &BufPool::new(2, 1 << 20));
            writer
        })
        .await
        .unwrap();
        (writer, counters)
    }

    /// Every file of a batch gets its own answer: a file read as stat'ed is stored under the id
    /// of its bytes, a file rewritten after its stat is stored as read with a `changed`
    /// warning, a file gone is an error line; the counters count what was read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_answers_every_file_stored_changed_or_unreadable() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path()).await;
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let (a, b) = (src.join("a"), src.join("b"));
        std::fs::write(&a, b"a small file, read as it was stat'ed").unwrap();
        std::fs::write(&b, b"before").unwrap();
        let (md_a, md_b) = (std::fs::metadata(&a).unwrap(), std::fs::metadata(&b).unwrap());

        let mut batcher = Batcher::default();
        let (ra, full_a) = batcher.push(a.clone(), None, &md_a);
        let (rb, _) = batcher.push(b.clone(), None, &md_b);
        let (rc, _) = batcher.push(src.join("gone"), None, &md_a);
        assert!(!full_a, "one file is not a full batch");
        std::fs::write(&b, b"rewritten after the stat").unwrap();
        let (files, bytes) = batcher.take().unwrap();
        assert_eq!((files.len(), bytes), (3, 2 * md_a.len() + md_b.len()));
        assert!(batcher.take().is_none(), "the batcher starts again empty");

        let (writer, counters) = run_batch(&repo, files).await;

        match ra.recv().unwrap() {
            SmallRead::Read { saved: Some(s), len, changed: None } => {
                assert_eq!(len as u64, md_a.len());
                assert_eq!(s.id, writer.id_of(b"a small file, read as it was stat'ed"));
            }
            _ => panic!("the unchanged file is stored without a warning"),
        }
        match rb.recv().unwrap() {
            SmallRead::Read { saved: Some(s), len, changed: Some(w) } => {
                assert_eq!(len as u64, md_b.len(), "read up to the size it was stat'ed with");
                assert_eq!(s.id, writer.id_of(b"rewrit"));
                assert_eq!((w.kind, w.path.as_str()), (EntryErrorKind::Changed, b.to_str().unwrap()));
            }
            _ => panic!("the rewritten file is stored as read, with a warning"),
        }
        match rc.recv().unwrap() {
            SmallRead::Unreadable(e) => assert!(e.kind == EntryErrorKind::Read && e.path.ends_with("gone"), "{e}"),
            _ => panic!("the file gone is an error line"),
        }
        assert_eq!(counters.files_done.load(Relaxed), 2);
        assert_eq!(counters.errors.load(Relaxed), 1);
        assert_eq!(counters.bytes_done.load(Relaxed), md_a.len() + md_b.len());
    }

    const MINE: &[u8] = b"the workload's own file";
    const SECRET: &[u8] = b"a file outside the source";

    /// A small file `src/d/f` batched (from its directory held open, or by path), then `d`
    /// moved away and a symlink to a directory outside holding an `f` put in its place, then
    /// the batch read: the file's answer, and the worker's writer and counters.
    async fn batched_then_swapped(held: bool) -> (SmallRead, BlobWriter, Arc<Counters>) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path()).await;
        let (src, outside) = (tmp.path().join("src"), tmp.path().join("outside"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(src.join("d/f"), MINE).unwrap();
        std::fs::write(outside.join("f"), SECRET).unwrap();
        let md = std::fs::symlink_metadata(src.join("d/f")).unwrap();
        let dir = held.then(|| Arc::new(File::open(src.join("d")).unwrap()));

        let mut batcher = Batcher::default();
        let (rx, _) = batcher.push(src.join("d/f"), dir, &md);
        std::fs::rename(src.join("d"), src.join("d.old")).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("d")).unwrap();
        let (files, _) = batcher.take().unwrap();
        let (writer, counters) = run_batch(&repo, files).await;
        (rx.recv().unwrap(), writer, counters)
    }

    /// A workload that swaps a directory for a symlink between the scan's stat and the
    /// worker's read cannot make a worker opening by path read what the link leads to
    /// (outside the source; the agent reads as root): the file opened must be the one stat'ed,
    /// else it is an error line and nothing of it is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_whose_directory_became_a_symlink_is_not_read_through_it() {
        let (read, writer, counters) = batched_then_swapped(false).await;
        match read {
            SmallRead::Unreadable(e) => {
                assert_eq!(e.kind, EntryErrorKind::Read);
                assert!(e.to_string().contains("replaced by another file"), "{e}");
            }
            _ => panic!("a file reached through the swapped-in symlink is not read"),
        }
        assert!(!writer.is_known(BlobKind::Data, &writer.id_of(SECRET)), "nothing of the outside file is stored");
        assert_eq!((counters.files_done.load(Relaxed), counters.errors.load(Relaxed)), (0, 1));
    }

    /// A file opened by name from the directory the scan held is the file stat'ed even when
    /// that directory is moved and a symlink put in its place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_is_opened_from_the_directory_the_scan_held() {
        match batched_then_swapped(true).await {
            (SmallRead::Read { saved: Some(s), changed: None, .. }, writer, _) => {
                assert_eq!(s.id, writer.id_of(MINE))
            }
            _ => panic!("the file stat'ed is read from its directory"),
        }
    }

    /// A batch is full at `BATCH_DIRS` directories held, however few files each has.
    #[test]
    fn a_batch_is_full_at_its_directory_count() {
        let tmp = tempfile::tempdir().unwrap();
        let md = std::fs::metadata(tmp.path()).unwrap();
        let dirs: Vec<_> = (0..BATCH_DIRS).map(|_| Arc::new(File::open(tmp.path()).unwrap())).collect();
        let mut batcher = Batcher::default();
        let mut fulls = Vec::new();
        for d in &dirs {
            // Two files in each directory: the second does not count again.
            fulls.push(batcher.push(PathBuf::new(), Some(d.clone()), &md).1);
            fulls.push(batcher.push(PathBuf::new(), Some(d.clone()), &md).1);
        }
        assert_eq!(
            fulls.iter().position(|f| *f),
            Some(2 * BATCH_DIRS - 2),
            "full at the first file of the last directory"
        );
        batcher.take();
        assert!(!batcher.push(PathBuf::new(), Some(dirs[0].clone()), &md).1, "the count starts again");
    }

    /// A batch is full at `BATCH_FILES` files, or earlier at `BATCH_BYTES` bytes.
    #[test]
    fn a_batch_is_full_by_count_or_by_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (small, big) = (tmp.path().join("small"), tmp.path().join("big"));
        std::fs::write(&small, b"x").unwrap();
        std::fs::File::create(&big).unwrap().set_len(BATCH_BYTES / 2).unwrap();
        let (small, big) = (std::fs::metadata(&small).unwrap(), std::fs::metadata(&big).unwrap());
        let mut batcher = Batcher::default();
        let fulls: Vec<bool> = (0..BATCH_FILES).map(|_| batcher.push(PathBuf::new(), None, &small).1).collect();
        assert_eq!(fulls.iter().position(|f| *f), Some(BATCH_FILES - 1));
        batcher.take();
        assert!(!batcher.push(PathBuf::new(), None, &big).1);
        assert!(batcher.push(PathBuf::new(), None, &big).1, "two halves of the byte limit fill a batch");
    }

    /// A full batch is longer than the worker's read-ahead: each file is still read from its
    /// own descriptor and answered in its place, the ones opened ahead included, around a file
    /// removed and one rewritten after the batch was made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_longer_than_the_read_ahead_answers_each_file_with_its_own_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path()).await;
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let dir = Arc::new(File::open(&src).unwrap());
        let content = |i: usize| format!("file {i} of a batch longer than the read-ahead").into_bytes();
        let (gone, rewritten) = (READ_AHEAD + 3, 2 * READ_AHEAD + 1);
        let mut batcher = Batcher::default();
        let mut replies = Vec::new();
        let mut full = false;
        for i in 0..BATCH_FILES {
            let p = src.join(format!("f{i:02}"));
            std::fs::write(&p, content(i)).unwrap();
            let (rx, f) = batcher.push(p.clone(), Some(dir.clone()), &std::fs::metadata(&p).unwrap());
            replies.push(rx);
            full = f;
        }
        assert!(full && BATCH_FILES > 3 * READ_AHEAD);
        std::fs::remove_file(src.join(format!("f{gone:02}"))).unwrap();
        std::fs::write(src.join(format!("f{rewritten:02}")), b"rewritten with other bytes, longer").unwrap();
        let (files, _) = batcher.take().unwrap();
        let (writer, counters) = run_batch(&repo, files).await;
        for (i, rx) in replies.into_iter().enumerate() {
            match rx.recv().unwrap() {
                SmallRead::Unreadable(e) => assert_eq!(i, gone, "f{i:02}: {e}"),
                SmallRead::Read { saved: Some(s), changed, .. } => {
                    if i == rewritten {
                        assert!(changed.is_some(), "f{i:02} changed after its stat");
                    } else {
                        assert!(changed.is_none(), "f{i:02}");
                        assert_eq!(s.id, writer.id_of(&content(i)), "f{i:02} stored another file's bytes");
                    }
                }
                _ => panic!("f{i:02}: not stored"),
            }
        }
        assert_eq!(counters.files_done.load(Relaxed) as usize, BATCH_FILES - 1);
    }
}
