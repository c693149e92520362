//! What this machine remembers about a repository location, to notice the storage going back.
//!
//! Storage is not trusted to keep what it was given: its owner can delete a snapshot (rolling
//! `latest` back to an older one) or put back a key file that was removed (bringing a revoked
//! password back to life). Neither can be prevented by cryptography alone (FORMAT.md §10); both
//! can be noticed by a reader that remembers what it saw. This module keeps, per location, a
//! small text file in the cache root:
//!
//! ```text
//! repo <repository id>         the repository these lines are about (its config's id)
//! key-used <key id>            the key file that unlocked the last session (tried first next time)
//! key-seen <key id>            key files present at the last open
//! key-gone <key id>            key files seen once and later absent (removed): never trusted again
//! newest <snapshot id> <ns>    the newest snapshot seen
//! ```
//!
//! A location holding another repository than the one remembered (deleted and initialized
//! again, or swapped) starts a new memory: the old repository's snapshots are not this one's.
//!
//! The file is private (0600 in a 0700 directory) and replaced atomically. It is advisory: a
//! missing or unreadable file only loses the warnings, and nothing here decides what exists.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::id::Id;

/// The remembered state of one location.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Memory {
    pub repo: Option<Id>,
    pub key_used: Option<Id>,
    pub keys_seen: BTreeSet<Id>,
    pub keys_gone: BTreeSet<Id>,
    pub newest: Option<(Id, i64)>,
}

/// Where the memory of `location` lives under `cache_root`.
pub(crate) fn path(cache_root: &Path, location: &str) -> PathBuf {
    cache_root.join("locations").join(Id::of_stored(location.as_bytes()).to_hex())
}

impl Memory {
    /// Read what was remembered (empty when there is nothing, or nothing readable).
    pub fn load(path: &Path) -> Memory {
        let mut m = Memory::default();
        let Ok(text) = std::fs::read_to_string(path) else { return m };
        for line in text.lines() {
            let mut w = line.split(' ');
            let (Some(tag), Some(id)) = (w.next(), w.next().and_then(|h| Id::from_hex(h).ok())) else { continue };
            match tag {
                "repo" => m.repo = Some(id),
                "key-used" => m.key_used = Some(id),
                "key-seen" => {
                    m.keys_seen.insert(id);
                }
                "key-gone" => {
                    m.keys_gone.insert(id);
                }
                "newest" => {
                    if let Some(ns) = w.next().and_then(|t| t.parse().ok()) {
                        m.newest = Some((id, ns));
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// Replace the file atomically (best effort: failing to remember only loses warnings).
    pub fn save(&self, path: &Path) {
        let mut text = String::new();
        if let Some(r) = self.repo {
            text.push_str(&format!("repo {r}\n"));
        }
        if let Some(k) = self.key_used {
            text.push_str(&format!("key-used {k}\n"));
        }
        for k in &self.keys_seen {
            text.push_str(&format!("key-seen {k}\n"));
        }
        for k in &self.keys_gone {
            text.push_str(&format!("key-gone {k}\n"));
        }
        if let Some((id, ns)) = self.newest {
            text.push_str(&format!("newest {id} {ns}\n"));
        }
        let Some(dir) = path.parent() else { return };
        if crate::cache::private_dir(dir).is_err() {
            return;
        }
        let Ok(mut tmp) = tempfile::Builder::new().prefix(".memory-").tempfile_in(dir) else { return };
        if tmp.write_all(text.as_bytes()).is_ok() {
            let _ = tmp.persist(path);
        }
    }

    /// Take the current key listing into account: a key seen before and now missing was
    /// removed, and is remembered as gone. Returns the listed keys that had been removed before
    /// (they are back: the storage replayed them).
    pub fn observe_keys(&mut self, listed: &[Id]) -> Vec<Id> {
        let now: BTreeSet<Id> = listed.iter().copied().collect();
        for k in self.keys_seen.difference(&now) {
            self.keys_gone.insert(*k);
        }
        let replayed: Vec<Id> = now.intersection(&self.keys_gone).copied().collect();
        self.keys_seen = now;
        replayed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_key_that_comes_back_is_reported() {
        let (a, b) = (Id([1; 32]), Id([2; 32]));
        let mut m = Memory::default();
        assert!(m.observe_keys(&[a, b]).is_empty());
        assert!(m.observe_keys(&[a]).is_empty(), "b removed");
        assert_eq!(m.observe_keys(&[a, b]), vec![b], "b is back");
        assert_eq!(m.observe_keys(&[a, b]), vec![b], "and stays suspicious");
    }

    #[test]
    fn round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "s3:http://127.0.0.1:9/b/p");
        let mut m = Memory {
            repo: Some(Id([6; 32])),
            key_used: Some(Id([7; 32])),
            newest: Some((Id([9; 32]), -5)),
            ..Default::default()
        };
        m.keys_seen.insert(Id([3; 32]));
        m.keys_gone.insert(Id([4; 32]));
        m.save(&p);
        assert_eq!(Memory::load(&p), m);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(p.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
