//! The files cache: an unchanged file costs a stat, not a read.
//!
//! One SQLite database per backed-up volume of a repository: per identity when the backup has
//! one (`identity`), else per host and source paths
//! (`<cache>/<repo id>/files/<hash>.sqlite`). Entries age with the backups of their own volume
//! only, so many volumes backing up in turn into one repository never evict each other's
//! entries (one shared database with one generation counter did, from the fourth volume on).
//! A database is keyed by the path inside the volume (with an identity; the volume may be
//! mounted anywhere) or by absolute path, holding device, inode, size, mtime and ctime (ns) and
//! the file's content as an encoded segment list. With an identity, device and inode are not
//! compared (they change when the volume is mounted elsewhere). A hit requires all five to match and every blob to be in the repository's
//! index (checked by the caller), so a stale or foreign cache can cost reads, never data.
//! Updates are written in short batched transactions (so two backups sharing a cache never wait
//! long for each other); an entry written by a backup that later failed is harmless, since a hit
//! is only used when all its blobs are in the index.
//!
//! The database names every file backed up: it is created 0600 in a 0700 directory (SQLite
//! gives its journal files the database's mode). A hit also needs the recorded segments to
//! cover exactly the file's size, so a damaged or planted row can cost a read, never a wrong
//! snapshot.

use std::path::Path;

use anyhow::{Context, Result};
use repo_format::{Segment, decode_segment_list, encode_segment_list};
use rusqlite::{Connection, OptionalExtension, params};

/// The stat fields that must match for a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// No entry for the path: a new file.
    Miss,
    /// An entry that no longer matches: a changed file.
    Changed,
    Hit(Vec<Segment>),
}

const SCHEMA: &str = "
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
    content BLOB NOT NULL,
    gen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
";

/// Entries not seen for this many backups are dropped.
const KEEP_GENERATIONS: i64 = 3;

/// A read handle (used by the scanner thread).
///
/// Lookups run inside a read transaction renewed every `READ_TX_LOOKUPS` lookups or
/// `READ_TX_AGE`: outside one, every statement takes and drops SQLite's WAL read lock (file
/// locks on the shared-memory file). Renewing keeps the snapshot read recent and lets the
/// writer's checkpoints move on.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    /// Device and inode numbers are not compared (a volume with an identity: mounted elsewhere,
    /// they change while the files do not).
    ignore_inode: bool,
    /// The open read transaction: lookups made in it and when it began.
    tx: std::cell::Cell<Option<(u32, std::time::Instant)>>,
    /// A read transaction older than this is renewed (`READ_TX_AGE`; tests set it longer).
    tx_age: std::time::Duration,
}

const READ_TX_LOOKUPS: u32 = 4096;
const READ_TX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// A write handle; updates are buffered and written in batches.
#[derive(Debug)]
pub struct Writer {
    conn: Connection,
    generation: i64,
    pending: Vec<(Vec<u8>, Option<Entry>)>,
}

const BATCH: usize = 4096;

/// A buffered row: the stat key and the encoded segment list.
type Entry = (FileKey, Vec<u8>);

fn connect(path: &Path) -> Result<Connection> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the cache directory {}", dir.display()))?;
    }
    // Create it private before SQLite opens it (SQLite would use 0644), and make an older,
    // readable one private.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening the files cache {}", path.display()))?;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    drop(f);
    let conn = Connection::open(path).with_context(|| format!("opening the files cache {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // Switching to WAL while another process creates the database answers SQLITE_BUSY at once
    // (the busy timeout does not apply there): retry for a while.
    let mut tries = 0;
    loop {
        match conn.execute_batch(SCHEMA) {
            Ok(()) => return Ok(conn),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if tries < 300
                    && matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10 + tries % 40));
            }
            Err(e) => return Err(e).with_context(|| format!("preparing the files cache {}", path.display())),
        }
    }
}

/// The database of the source set `sources` backed up as `host`, under the repository's cache
/// directory `repo_dir`.
pub fn path_for(repo_dir: &Path, host: &str, sources: &[std::path::PathBuf]) -> std::path::PathBuf {
    let mut sorted: Vec<&std::path::PathBuf> = sources.iter().collect();
    sorted.sort();
    let mut h = blake3::Hasher::new();
    h.update(host.as_bytes()).update(&[0]);
    for p in sorted {
        h.update(p.as_os_str().as_encoded_bytes()).update(&[0]);
    }
    repo_dir.join("files").join(format!("{}.sqlite", &h.finalize().to_hex()[..32]))
}

/// The database of the volume `identity`, under the repository's cache directory `repo_dir`.
pub fn path_for_identity(repo_dir: &Path, identity: &str) -> std::path::PathBuf {
    let h = blake3::Hasher::new().update(b"identity\0").update(identity.as_bytes()).finalize();
    repo_dir.join("files").join(format!("{}.sqlite", &h.to_hex()[..32]))
}

/// Open the cache for reading and writing (a new generation starts). `ignore_inode`: see
/// `Reader`.
pub fn open(path: &Path, ignore_inode: bool) -> Result<(Reader, Writer)> {
    let w = connect(path)?;
    let generation: i64 = w.query_row(
        "INSERT INTO meta (k, v) VALUES ('gen', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1 RETURNING v",
        [],
        |r| r.get(0),
    )?;
    let r = connect(path)?;
    Ok((Reader { conn: r, ignore_inode, tx: Default::default(), tx_age: READ_TX_AGE }, Writer { conn: w, generation, pending: Vec::new() }))
}

impl Reader {
    pub fn lookup(&self, path: &[u8], key: &FileKey) -> Result<Lookup> {
        self.read_tx()?;
        let row: Option<(i64, i64, i64, i64, i64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT dev, ino, size, mtime, ctime, content FROM files WHERE path = ?1")?
            .query_row([path], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .optional()?;
        let Some((dev, ino, size, mtime, ctime, content)) = row else { return Ok(Lookup::Miss) };
        let same = (self.ignore_inode || (dev as u64 == key.dev && ino as u64 == key.ino))
            && size as u64 == key.size
            && mtime == key.mtime_ns
            && ctime == key.ctime_ns;
        if !same {
            return Ok(Lookup::Changed);
        }
        match decode_segment_list(&content) {
            Ok(segs) if segs.iter().try_fold(0u64, |a, s| a.checked_add(s.len())) == Some(key.size) => {
                Ok(Lookup::Hit(segs))
            }
            _ => Ok(Lookup::Changed),
        }
    }
}

impl Reader {
    /// Count a lookup into the open read transaction, renewing it when it is full or old.
    fn read_tx(&self) -> Result<()> {
        match self.tx.take() {
            Some((n, since)) if n < READ_TX_LOOKUPS && since.elapsed() < self.tx_age => {
                self.tx.set(Some((n + 1, since)));
                return Ok(());
            }
            Some(_) if self.conn.execute_batch("COMMIT").is_err() => {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            _ => {}
        }
        self.conn.execute_batch("BEGIN").context("reading the files cache")?;
        self.tx.set(Some((1, std::time::Instant::now())));
        Ok(())
    }
}

impl Writer {
    /// Record a file's content as of this backup.
    pub fn put(&mut self, path: &[u8], key: &FileKey, segments: &[Segment]) -> Result<()> {
        self.pending.push((path.to_vec(), Some((*key, encode_segment_list(segments)))));
        self.maybe_flush()
    }

    /// Mark an unchanged file as seen.
    pub fn touch(&mut self, path: &[u8]) -> Result<()> {
        self.pending.push((path.to_vec(), None));
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<()> {
        if self.pending.len() >= BATCH { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<()> {
        let tx = self.conn.transaction().context("writing the files cache")?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO files (path, dev, ino, size, mtime, ctime, content, gen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut touch = tx.prepare_cached("UPDATE files SET gen = ?2 WHERE path = ?1")?;
            for (path, entry) in self.pending.drain(..) {
                match entry {
                    Some((k, content)) => put.execute(params![
                        path,
                        k.dev as i64,
                        k.ino as i64,
                        k.size as i64,
                        k.mtime_ns,
                        k.ctime_ns,
                        content,
                        self.generation
                    ])?,
                    None => touch.execute(params![path, self.generation])?,
                };
            }
        }
        tx.commit().context("committing the files cache")?;
        Ok(())
    }

    /// Write what is buffered and drop entries unseen for a while.
    pub fn commit(mut self) -> Result<()> {
        self.flush()?;
        self.conn.execute("DELETE FROM files WHERE gen < ?1", [self.generation - KEEP_GENERATIONS])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repo_format::{BlobId, Id};

    #[test]
    fn hit_only_when_every_field_matches_and_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("files.sqlite");
        let key = FileKey { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: 5 };
        let segs = vec![Segment::Blob { id: BlobId(Id([7; 32])), len: 3 }];
        {
            let (r, mut w) = open(&db, false).unwrap();
            w.put(b"/a", &key, &segs).unwrap();
            assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Miss), "buffered entries are invisible");
            drop(w); // never committed
        }
        let (r, mut w) = open(&db, false).unwrap();
        assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Miss));
        w.put(b"/a", &key, &segs).unwrap();
        w.commit().unwrap();
        drop(r);
        let (r, _w) = open(&db, false).unwrap();
        match r.lookup(b"/a", &key).unwrap() {
            Lookup::Hit(s) => assert_eq!(s, segs),
            other => panic!("{other:?}"),
        }
        let changed = FileKey { ctime_ns: 6, ..key };
        assert!(matches!(r.lookup(b"/a", &changed).unwrap(), Lookup::Changed));
    }

    /// Lookups share a read transaction (one WAL read lock for thousands of lookups), renewed
    /// after `READ_TX_LOOKUPS` lookups: what the writer committed meanwhile becomes visible then,
    /// and the writer is never blocked by the open read.
    #[test]
    fn a_reader_sees_commits_once_its_read_transaction_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("files.sqlite");
        let key = FileKey { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: 5 };
        let segs = vec![Segment::Blob { id: BlobId(Id([7; 32])), len: 3 }];
        let (mut r, mut w) = open(&db, false).unwrap();
        // Renewal by age is not under test: a slow machine must not renew early.
        r.tx_age = std::time::Duration::from_secs(3600);
        assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Miss));
        w.put(b"/a", &key, &segs).unwrap();
        w.commit().unwrap();
        let early = r.lookup(b"/a", &key).unwrap();
        assert!(matches!(early, Lookup::Miss), "still the first lookup's snapshot: {early:?}");
        for _ in 0..READ_TX_LOOKUPS {
            let _ = r.lookup(b"/other", &key).unwrap();
        }
        assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Hit(_)), "the renewed transaction sees the commit");
    }

    #[test]
    fn a_row_whose_segments_do_not_cover_the_size_is_no_hit_and_the_cache_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sub/files.sqlite");
        let key = FileKey { dev: 1, ino: 2, size: 10, mtime_ns: 4, ctime_ns: 5 };
        let (r, mut w) = open(&db, false).unwrap();
        // Stat fields all match, but the content recorded is 3 bytes for a 10-byte file.
        w.put(b"/a", &key, &[Segment::Zero { len: 3 }]).unwrap();
        w.commit().unwrap();
        assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Changed));
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(db.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn entries_unseen_for_several_backups_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("files.sqlite");
        let key = FileKey { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: 5 };
        let segs = [Segment::Zero { len: 3 }];
        let (_, mut w) = open(&db, false).unwrap();
        w.put(b"/old", &key, &segs).unwrap();
        w.put(b"/kept", &key, &segs).unwrap();
        w.commit().unwrap();
        for _ in 0..KEEP_GENERATIONS + 1 {
            let (_, mut w) = open(&db, false).unwrap();
            w.touch(b"/kept").unwrap();
            w.commit().unwrap();
        }
        let (r, _) = open(&db, false).unwrap();
        assert!(matches!(r.lookup(b"/old", &key).unwrap(), Lookup::Miss));
        assert!(matches!(r.lookup(b"/kept", &key).unwrap(), Lookup::Hit(_)));
    }
}
