//! The job store: one SQLite file on the node's state directory (a hostPath) recording each
//! job this agent started, so a restarted agent knows which InProgress objects it was moving
//! and how many times it has started each (`machine::MAX_ATTEMPTS`).
//!
//! What a job created in the cluster is not recorded here: those objects carry the label
//! `ferry.dev/owner-uid` and are found by it, from any node, even after this file is lost.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

/// A recorded job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub attempts: u32,
    pub done: bool,
}

/// The store (one connection; the agent's few writes a minute need no more).
#[derive(Debug)]
pub struct Store {
    db: Mutex<Connection>,
}

impl Store {
    /// Open or create `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Connection::open(path).with_context(|| format!("opening the job store {}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS jobs (
                uid TEXT PRIMARY KEY, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
                attempts INTEGER NOT NULL, done INTEGER NOT NULL, updated_s INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS freezes (
                path TEXT PRIMARY KEY, owner TEXT NOT NULL, since_s INTEGER NOT NULL)",
        )
        .with_context(|| format!("preparing the job store {}", path.display()))?;
        Ok(Store { db: Mutex::new(db) })
    }

    /// Record a start of the job `uid` and return how many starts it has had, this one included.
    pub fn start(&self, uid: &str, kind: &str, namespace: &str, name: &str) -> Result<u32> {
        let db = self.db.lock().expect("job store lock");
        db.execute(
            "INSERT INTO jobs (uid, kind, namespace, name, attempts, done, updated_s)
             VALUES (?1, ?2, ?3, ?4, 1, 0, unixepoch())
             ON CONFLICT(uid) DO UPDATE SET attempts = attempts + 1, done = 0, updated_s = unixepoch()",
            params![uid, kind, namespace, name],
        )?;
        Ok(db.query_row("SELECT attempts FROM jobs WHERE uid = ?1", [uid], |r| r.get(0))?)
    }

    /// The job ended (whatever its outcome): it is no longer interrupted when the agent restarts.
    pub fn finish(&self, uid: &str) -> Result<()> {
        let db = self.db.lock().expect("job store lock");
        db.execute("UPDATE jobs SET done = 1, updated_s = unixepoch() WHERE uid = ?1", [uid])?;
        Ok(())
    }

    /// Drop the record of `uid`.
    pub fn forget(&self, uid: &str) -> Result<()> {
        self.db.lock().expect("job store lock").execute("DELETE FROM jobs WHERE uid = ?1", [uid])?;
        Ok(())
    }

    pub fn get(&self, uid: &str) -> Result<Option<Record>> {
        let db = self.db.lock().expect("job store lock");
        Ok(db
            .query_row("SELECT uid, kind, namespace, name, attempts, done FROM jobs WHERE uid = ?1", [uid], |r| {
                Ok(Record {
                    uid: r.get(0)?,
                    kind: r.get(1)?,
                    namespace: r.get(2)?,
                    name: r.get(3)?,
                    attempts: r.get(4)?,
                    done: r.get(5)?,
                })
            })
            .optional()?)
    }

    /// Record that `path` is about to be frozen for `owner` (written before the freeze, so a
    /// crash at any later moment leaves the record for the next start to thaw).
    pub fn freezing(&self, path: &str, owner: &str) -> Result<()> {
        let db = self.db.lock().expect("job store lock");
        db.execute(
            "INSERT INTO freezes (path, owner, since_s) VALUES (?1, ?2, unixepoch())
             ON CONFLICT(path) DO UPDATE SET owner = ?2, since_s = unixepoch()",
            params![path, owner],
        )?;
        Ok(())
    }

    /// `path` is thawed: drop its record.
    pub fn thawed(&self, path: &str) -> Result<()> {
        self.db.lock().expect("job store lock").execute("DELETE FROM freezes WHERE path = ?1", [path])?;
        Ok(())
    }

    /// Every recorded freeze: `(path, owner)`.
    pub fn freezes(&self) -> Result<Vec<(String, String)>> {
        let db = self.db.lock().expect("job store lock");
        let mut q = db.prepare("SELECT path, owner FROM freezes ORDER BY since_s")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Remove records of jobs that ended more than `age_s` seconds ago.
    pub fn expire(&self, age_s: i64) -> Result<usize> {
        let db = self.db.lock().expect("job store lock");
        Ok(db.execute("DELETE FROM jobs WHERE done = 1 AND updated_s < unixepoch() - ?1", [age_s])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_counted_across_reopening_and_finishing_ends_the_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.start("u1", "DataUpload", "velero", "a").unwrap(), 1);
        drop(s);
        let s = Store::open(&path).unwrap();
        let r = s.get("u1").unwrap().unwrap();
        assert_eq!((r.attempts, r.done, r.name.as_str()), (1, false, "a"));
        assert_eq!(s.start("u1", "DataUpload", "velero", "a").unwrap(), 2);
        s.finish("u1").unwrap();
        assert!(s.get("u1").unwrap().unwrap().done);
        assert_eq!(s.expire(-10).unwrap(), 1);
        assert_eq!(s.get("u1").unwrap(), None);
        s.forget("nothing").unwrap();
    }

    #[test]
    fn freeze_records_survive_reopening_until_thawed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let s = Store::open(&path).unwrap();
        s.freezing("/a", "vb1").unwrap();
        s.freezing("/b", "vb2").unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.freezes().unwrap(), vec![("/a".into(), "vb1".into()), ("/b".into(), "vb2".into())]);
        s.thawed("/a").unwrap();
        assert_eq!(s.freezes().unwrap(), vec![("/b".to_string(), "vb2".to_string())]);
    }
}
