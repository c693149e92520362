//! Per-entry problems, typed: what kind, which path, and the message. Serializable, so the CLI
//! prints them as JSON lines and the agent copies them into a resource's status.
//!
//! A job's fatal error is an `anyhow::Error` instead (its chain holds the repository's typed
//! `repo_format::Error`, or `Cancelled`).

use std::path::Path;

/// What went wrong with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryErrorKind {
    /// Backup: a source entry could not be listed, stat'ed or read.
    Read,
    /// Backup: a file was read but its content could not be stored.
    NotStored,
    /// Backup (warning): a file changed while it was read; it is kept as read.
    Changed,
    /// Backup (warning): the files cache could not be updated (the next backup reads more).
    Cache,
    /// Restore: the snapshot's entry was refused (an unsafe name, a device node, a duplicate).
    Refused,
    /// Restore: an entry could not be created or written in the target.
    Write,
    /// Restore: content could not be fetched or decoded from the repository.
    Content,
    /// Restore: a file did not get all its content; it was emptied.
    Incomplete,
    /// Restore: owner, mode, times or extended attributes could not be set.
    Metadata,
    /// Restore: the restored file does not match the snapshot.
    Verify,
}

impl EntryErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryErrorKind::Read => "read",
            EntryErrorKind::NotStored => "not_stored",
            EntryErrorKind::Changed => "changed",
            EntryErrorKind::Cache => "cache",
            EntryErrorKind::Refused => "refused",
            EntryErrorKind::Write => "write",
            EntryErrorKind::Content => "content",
            EntryErrorKind::Incomplete => "incomplete",
            EntryErrorKind::Metadata => "metadata",
            EntryErrorKind::Verify => "verify",
        }
    }
}

/// One entry's problem. `path`: the source path (backup), the path inside the target (restore),
/// or empty when the problem is not an entry's (a pack, the files cache).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryError {
    pub kind: EntryErrorKind,
    pub path: String,
    pub message: String,
}

impl EntryError {
    pub fn new(kind: EntryErrorKind, path: impl AsRef<Path>, message: impl std::fmt::Display) -> Self {
        EntryError { kind, path: path.as_ref().display().to_string(), message: message.to_string() }
    }

    /// A problem that is not one entry's.
    pub fn general(kind: EntryErrorKind, message: impl std::fmt::Display) -> Self {
        EntryError { kind, path: String::new(), message: message.to_string() }
    }
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}
