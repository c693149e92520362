//! The pending-pack journal: packs uploaded but not yet listed in an index object.
//!
//! A writer lists its packs in an index object only every few packs (see `writer`), so a backup
//! that dies in between — process killed, pod evicted, storage unreachable — leaves packs in
//! storage that no index names: without this journal the next backup would upload them again.
//! Each writer therefore appends every uploaded pack's index record to a local journal file,
//! `<cache>/<repository id>/pending/<pid>-<random>.journal`, and empties it whenever an index
//! object covering those packs has been written. The file is held under an exclusive `flock`
//! for the writer's whole life; the kernel drops the lock when the process dies, however it
//! dies. A later writer on the same machine (`Repository::resume_interrupted`) takes over every
//! journal whose lock is free, checks that each recorded pack is really stored, and writes one
//! index object for them: the interrupted backup's uploads are reused, not repeated.
//!
//! This file is local state, not part of the repository (nothing here changes bytes on
//! storage: a resumed pack is listed by an ordinary index object). Record layout:
//! `length u32 LE ‖ sealed index object holding one pack` (the same sealing as an index object
//! on storage, so the journal reveals nothing the repository does not). A torn last record (a
//! crash during the append) ends the read; earlier records stand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::crypto::Cipher;
use crate::index::{IndexFile, IndexPack};
use crate::object::{self, ObjectType};

const SUFFIX: &str = ".journal";
/// A record longer than this is not one (a pack lists at most 50k blobs: about 2.3 MB).
const MAX_RECORD: usize = 16 << 20;

/// The journal of one running writer.
#[derive(Debug)]
pub(crate) struct Journal {
    file: Flock<File>,
    path: PathBuf,
    /// Records appended since the last `clear`.
    pending: usize,
}

impl Journal {
    /// Create and lock a new journal in `dir`.
    pub(crate) fn create(dir: &Path) -> std::io::Result<Journal> {
        crate::cache::private_dir(dir)?;
        let name = format!("{}-{:016x}{SUFFIX}", std::process::id(), rand::random::<u64>());
        let path = dir.join(name);
        let f = OpenOptions::new().read(true).append(true).create_new(true).mode(0o600).open(&path)?;
        let file = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(Journal { file, path, pending: 0 })
    }

    /// Record an uploaded pack; durable (fdatasync) when this returns.
    pub(crate) fn record(&mut self, cipher: &Cipher, pack: &IndexPack) -> std::io::Result<()> {
        let file = IndexFile { packs: vec![pack.clone()], supersedes: Vec::new() };
        let sealed = object::seal(cipher, ObjectType::Index, &file.encode(), 0);
        let mut rec = Vec::with_capacity(4 + sealed.len());
        rec.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        rec.extend_from_slice(&sealed);
        self.file.write_all(&rec)?;
        self.file.sync_data()?;
        self.pending += 1;
        Ok(())
    }

    /// Every recorded pack is now listed by an index object on storage.
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        if self.pending > 0 {
            self.file.set_len(0)?;
            self.pending = 0;
        }
        Ok(())
    }

    /// Close: remove the file when nothing is pending, else keep it for the next writer.
    pub(crate) fn close(self) {
        if self.pending == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A journal left by a writer that is gone, locked by us until dropped.
#[derive(Debug)]
pub(crate) struct Orphan {
    _lock: Flock<File>,
    pub(crate) path: PathBuf,
    pub(crate) packs: Vec<IndexPack>,
}

impl Orphan {
    /// The packs are indexed (or were found missing): delete the journal.
    pub(crate) fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Every journal in `dir` whose writer is gone (its lock is free), with the packs it records.
/// Journals of running writers (here or in another process) are skipped.
pub(crate) fn orphans(dir: &Path, cipher: &Cipher) -> Vec<Orphan> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(SUFFIX)) {
            continue;
        }
        let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
        let Ok(mut lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) else { continue };
        // Another process may have taken this journal over and removed it between our open and
        // our lock: only a file still at its path is ours.
        let same = match (lock.metadata(), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            continue;
        }
        let packs = read_records(&mut lock, cipher, &path);
        out.push(Orphan { _lock: lock, path, packs });
    }
    out
}

fn read_records(f: &mut File, cipher: &Cipher, path: &Path) -> Vec<IndexPack> {
    let mut all = Vec::new();
    if f.read_to_end(&mut all).is_err() {
        return Vec::new();
    }
    let mut packs = Vec::new();
    let mut rest = &all[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD || rest.len() < 4 + len {
            break; // torn last record
        }
        match object::open(cipher, ObjectType::Index, &rest[4..4 + len], "journal").and_then(|p| IndexFile::decode(&p))
        {
            Ok(f) => packs.extend(f.packs),
            Err(e) => {
                tracing::warn!("pending-pack journal {}: unreadable record ({e}); ignoring the rest", path.display());
                break;
            }
        }
        rest = &rest[4 + len..];
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;
    use crate::crypto::MasterKey;
    use crate::id::{BlobId, Id, PackId};
    use crate::pack::PackEntry;

    fn pack(n: u8) -> IndexPack {
        IndexPack {
            id: PackId(Id([n; 32])),
            salt: [n; 32],
            blobs: vec![PackEntry {
                kind: BlobKind::Data,
                id: BlobId(Id([n; 32])),
                offset: 0,
                stored_len: 9,
                raw_len: 7,
            }],
        }
    }

    #[test]
    fn live_journals_are_skipped_dead_ones_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = MasterKey::generate().object_cipher();
        let mut j = Journal::create(dir.path()).unwrap();
        j.record(&c, &pack(1)).unwrap();
        j.record(&c, &pack(2)).unwrap();
        // Still locked by `j` (flock locks are per open file description, so this holds even
        // within one process).
        assert!(orphans(dir.path(), &c).is_empty());
        let path = j.path.clone();
        drop(j); // as if the process died: the lock goes, the file stays
        let o = orphans(dir.path(), &c);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].packs, vec![pack(1), pack(2)]);
        // While we hold the orphan, nobody else can take it.
        assert!(orphans(dir.path(), &c).is_empty());
        o.into_iter().for_each(Orphan::remove);
        assert!(!path.exists());
    }

    #[test]
    fn cleared_and_closed_journal_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = MasterKey::generate().object_cipher();
        let mut j = Journal::create(dir.path()).unwrap();
        j.record(&c, &pack(1)).unwrap();
        j.clear().unwrap();
        j.close();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A journal closed with packs pending stays for the next writer.
        let mut j = Journal::create(dir.path()).unwrap();
        j.record(&c, &pack(3)).unwrap();
        j.close();
        assert_eq!(orphans(dir.path(), &c)[0].packs, vec![pack(3)]);
    }

    #[test]
    fn torn_or_foreign_records_end_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let c = MasterKey::generate().object_cipher();
        let mut j = Journal::create(dir.path()).unwrap();
        j.record(&c, &pack(1)).unwrap();
        let path = j.path.clone();
        j.close();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap(); // a torn append
        assert_eq!(orphans(dir.path(), &c)[0].packs, vec![pack(1)]);
        // Another repository's key reads nothing.
        let other = MasterKey::generate().object_cipher();
        assert!(orphans(dir.path(), &other)[0].packs.is_empty());
    }
}
