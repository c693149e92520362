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
use rusqlite::{Connection, params};

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
    /// Unchanged: its content, and whether its row is to be marked seen (`Writer::touch`);
    /// a row seen by the previous backup is not rewritten (see `Reader`).
    Hit { segs: Vec<Segment>, touch: bool },
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

/// Entries whose last recorded sighting is more than this many backups old are dropped.
const KEEP_GENERATIONS: i64 = 5;
/// A hit rewrites its row's generation only when that is this many backups old: marking every
/// unchanged file seen was half of the tree builder's CPU in an unchanged backup.
const TOUCH_AFTER: i64 = 3;

/// A read handle (used by the scanner thread).
///
/// Lookups run inside a read transaction renewed every `READ_TX_LOOKUPS` lookups or
/// `READ_TX_AGE`: outside one, every statement takes and drops SQLite's WAL read lock (file
/// locks on the shared-memory file). Renewing keeps the snapshot read recent and lets the
/// writer's checkpoints move on.
///
/// The scan asks for paths in nearly ascending order (depth-first, names sorted), so a lookup
/// reads a window of up to `WINDOW` rows from the path asked on, and the following lookups
/// are answered from it while they fall inside: one query per window, not per file (a
/// point query was a quarter of an unchanged backup's scan). A path before the window or
/// past its end reads a new window; a renewed transaction drops it.
///
/// A hit asks for a touch only when its row's generation is `TOUCH_AFTER` backups old, so an
/// unchanged file's row is rewritten every third backup. A row seen by a committed backup never
/// goes with that commit (its generation is at most two behind, `KEEP_GENERATIONS` is five); an
/// unseen file's row goes after four to six backups.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    /// Device and inode numbers are not compared (a volume with an identity: mounted elsewhere,
    /// they change while the files do not).
    ignore_inode: bool,
    /// The open read transaction: lookups made in it and when it began.
    tx: Option<(u32, std::time::Instant)>,
    /// A read transaction older than this is renewed (`READ_TX_AGE`; tests set it longer).
    tx_age: std::time::Duration,
    window: Window,
    /// This backup's generation (`Writer`'s).
    generation: i64,
}

/// Rows read at once.
const WINDOW: usize = 128;

/// Consecutive rows of the table, in path order: every row with a path from `from` up to the
/// last row's path (to the end of the table when fewer than `WINDOW` came).
#[derive(Debug, Default)]
struct Window {
    from: Vec<u8>,
    rows: Vec<Row>,
    valid: bool,
}

#[derive(Debug)]
struct Row {
    path: Vec<u8>,
    stat: [i64; 5],
    content: Vec<u8>,
    seen: i64,
}

impl Window {
    /// Whether the window holds every row `path` could be, and that row if there is one.
    fn answer(&self, path: &[u8]) -> Option<Option<&Row>> {
        if !self.valid || path < self.from.as_slice() {
            return None;
        }
        let covered = self.rows.len() < WINDOW || self.rows.last().is_some_and(|r| path <= r.path.as_slice());
        if !covered {
            return None;
        }
        Some(self.rows.binary_search_by(|r| r.path.as_slice().cmp(path)).ok().map(|i| &self.rows[i]))
    }
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
    Ok((
        Reader { conn: r, ignore_inode, tx: None, tx_age: READ_TX_AGE, window: Window::default(), generation },
        Writer { conn: w, generation, pending: Vec::new() },
    ))
}

impl Reader {
    pub fn lookup(&mut self, path: &[u8], key: &FileKey) -> Result<Lookup> {
        self.read_tx()?;
        if self.window.answer(path).is_none() {
            self.read_window(path)?;
        }
        let Some(Some(row)) = self.window.answer(path) else { return Ok(Lookup::Miss) };
        let [dev, ino, size, mtime, ctime] = row.stat;
        let same = (self.ignore_inode || (dev as u64 == key.dev && ino as u64 == key.ino))
            && size as u64 == key.size
            && mtime == key.mtime_ns
            && ctime == key.ctime_ns;
        if !same {
            return Ok(Lookup::Changed);
        }
        match decode_segment_list(&row.content) {
            Ok(segs) if segs.iter().try_fold(0u64, |a, s| a.checked_add(s.len())) == Some(key.size) => {
                Ok(Lookup::Hit { segs, touch: row.seen <= self.generation - TOUCH_AFTER })
            }
            _ => Ok(Lookup::Changed),
        }
    }

    /// Read the window of rows from `path` on.
    fn read_window(&mut self, path: &[u8]) -> Result<()> {
        let w = &mut self.window;
        w.valid = false;
        w.rows.clear();
        w.from.clear();
        w.from.extend_from_slice(path);
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, dev, ino, size, mtime, ctime, content, gen FROM files WHERE path >= ?1 ORDER BY path LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![path, WINDOW as i64])?;
        while let Some(r) = rows.next()? {
            w.rows.push(Row {
                path: r.get(0)?,
                stat: [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                content: r.get(6)?,
                seen: r.get(7)?,
            });
        }
        w.valid = true;
        Ok(())
    }

    /// Count a lookup into the open read transaction, renewing it (and dropping the window
    /// read in the old one) when it is full or old.
    fn read_tx(&mut self) -> Result<()> {
        match self.tx.take() {
            Some((n, since)) if n < READ_TX_LOOKUPS && since.elapsed() < self.tx_age => {
                self.tx = Some((n + 1, since));
                return Ok(());
            }
            Some(_) if self.conn.execute_batch("COMMIT").is_err() => {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            _ => {}
        }
        self.window.valid = false;
        self.conn.execute_batch("BEGIN").context("reading the files cache")?;
        self.tx = Some((1, std::time::Instant::now()));
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
            let (mut r, mut w) = open(&db, false).unwrap();
            w.put(b"/a", &key, &segs).unwrap();
            assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Miss), "buffered entries are invisible");
            drop(w); // never committed
        }
        let (mut r, mut w) = open(&db, false).unwrap();
        assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Miss));
        w.put(b"/a", &key, &segs).unwrap();
        w.commit().unwrap();
        drop(r);
        let (mut r, _w) = open(&db, false).unwrap();
        match r.lookup(b"/a", &key).unwrap() {
            Lookup::Hit { segs: s, .. } => assert_eq!(s, segs),
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
        assert!(
            matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Hit { .. }),
            "the renewed transaction sees the commit"
        );
    }

    #[test]
    fn a_row_whose_segments_do_not_cover_the_size_is_no_hit_and_the_cache_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sub/files.sqlite");
        let key = FileKey { dev: 1, ino: 2, size: 10, mtime_ns: 4, ctime_ns: 5 };
        let (mut r, mut w) = open(&db, false).unwrap();
        // Stat fields all match, but the content recorded is 3 bytes for a 10-byte file.
        w.put(b"/a", &key, &[Segment::Zero { len: 3 }]).unwrap();
        w.commit().unwrap();
        assert!(matches!(r.lookup(b"/a", &key).unwrap(), Lookup::Changed));
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(db.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }

    /// Each backup looks `/kept` up and touches it when asked to: it is rewritten every third
    /// backup and stays, while `/old`, never seen again, goes after six.
    #[test]
    fn entries_unseen_for_several_backups_are_dropped_and_seen_ones_rewritten_every_third_backup() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("files.sqlite");
        let key = FileKey { dev: 1, ino: 2, size: 3, mtime_ns: 4, ctime_ns: 5 };
        let segs = [Segment::Zero { len: 3 }];
        let (_, mut w) = open(&db, false).unwrap();
        w.put(b"/old", &key, &segs).unwrap();
        w.put(b"/kept", &key, &segs).unwrap();
        w.commit().unwrap();
        let mut touches = Vec::new();
        for _ in 0..6 {
            let (mut r, mut w) = open(&db, false).unwrap();
            match r.lookup(b"/kept", &key).unwrap() {
                Lookup::Hit { touch, .. } => {
                    touches.push(touch);
                    if touch {
                        w.touch(b"/kept").unwrap();
                    }
                }
                other => panic!("/kept after {} backups: {other:?}", touches.len()),
            }
            // Never touched, /old is still there until the sixth backup commits.
            assert!(matches!(r.lookup(b"/old", &key).unwrap(), Lookup::Hit { .. }));
            w.commit().unwrap();
        }
        assert_eq!(touches, [false, false, true, false, false, true]);
        let (mut r, _) = open(&db, false).unwrap();
        assert!(matches!(r.lookup(b"/old", &key).unwrap(), Lookup::Miss));
        assert!(matches!(r.lookup(b"/kept", &key).unwrap(), Lookup::Hit { .. }));
    }

    /// Lookups in and out of order, before, inside and past a window, give what point queries
    /// would.
    #[test]
    fn lookups_through_the_window_answer_like_point_queries() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("files.sqlite");
        let key = |size: u64| FileKey { dev: 1, ino: 2, size, mtime_ns: 4, ctime_ns: 5 };
        let (_, mut w) = open(&db, false).unwrap();
        // Every third path of 3 * 3 * WINDOW has a row, its size its number.
        let path = |i: u64| format!("/d{:05}", i).into_bytes();
        let n = 3 * 3 * WINDOW as u64;
        for i in (0..n).step_by(3) {
            w.put(&path(i), &key(i), &[Segment::Zero { len: i }]).unwrap();
        }
        w.commit().unwrap();
        let (mut r, _) = open(&db, false).unwrap();
        let mut order: Vec<u64> = (0..n).collect();
        // Forward runs, a jump back and one far ahead.
        order.swap(10, 700);
        order.swap(200, 5);
        order.push(n + 7);
        order.push(1);
        for i in order {
            match r.lookup(&path(i), &key(i)).unwrap() {
                Lookup::Hit { segs, .. } if i % 3 == 0 => assert_eq!(segs, [Segment::Zero { len: i }]),
                Lookup::Miss if i % 3 != 0 => {}
                other => panic!("path {i}: {other:?}"),
            }
        }
        assert!(matches!(r.lookup(&path(3), &key(4)).unwrap(), Lookup::Changed));
    }
}
