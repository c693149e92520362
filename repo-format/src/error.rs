//! The one public error type of the repository library.
//!
//! Callers must be able to tell "missing" from "corrupt" from "wrong password": each has its own
//! variant. Messages are lowercase, name the object, and say what the user can do.

use std::fmt;

use crate::id::Id;
use crate::storage::FileKind;

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by kind. `#[non_exhaustive]`: new kinds may be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No repository at the location (no `config` object).
    #[error("no repository at {location}: create one with `ferry init` or check the location")]
    NoRepository { location: String },
    /// A repository already exists where one is being created.
    #[error("a repository already exists at {location}")]
    RepositoryExists { location: String },
    /// No key file could be opened with the password given.
    #[error("wrong password: no key file of this repository opens with it")]
    WrongPassword,
    /// The key files worth trying did not open with the password, and others were not tried
    /// because the work budget of one unlock was spent (many or costly key files).
    #[error(
        "wrong password, or too many key files: {tried} of the {listed} key files were tried within the \
         unlock budget{}; remove key files nobody uses (`ferry key list`, `ferry key remove`) from a session \
         that opens",
        if *replayed > 0 { format!(", {replayed} removed key files that reappeared were refused") } else { String::new() }
    )]
    KeyBudget { tried: usize, listed: usize, replayed: usize },
    /// Only a key file that had been removed (and is back) would open with this password.
    #[error(
        "this password only matches key files that were removed from the repository and reappeared ({count}): \
         the storage may have been rolled back or a revoked key file put back; they are not used"
    )]
    ReplayedKey { count: usize },
    /// The repository uses a format version this code does not know.
    #[error("repository format version {found} is newer than this ferry supports (up to {supported}): upgrade ferry")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// An object does not exist in storage.
    #[error("{kind} {id} not found in the repository")]
    NotFound { kind: FileKind, id: Id },
    /// A blob id is not in the index.
    #[error("blob {0} is not in the index: the repository is incomplete (a pack or index object is missing)")]
    BlobNotInIndex(Id),
    /// An object exists already (create-only write refused).
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: FileKind, id: Id },
    /// Stored bytes fail authentication, hashing or decoding.
    #[error("{what} is corrupt: {reason}")]
    Corrupt { what: ObjectRef, reason: String },
    /// The storage backend failed.
    #[error("storage error on {what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Local I/O (cache, temporary pack files).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A caller passed an invalid argument (bad parameters, an out-of-range value).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Names a stored thing in a `Corrupt` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectRef {
    /// A whole file in storage.
    File(FileKind, Id),
    /// A blob inside a pack.
    Blob { id: Id, pack: Id },
    /// Something in memory that has no storage name (a key file being parsed, a test buffer).
    Bytes(&'static str),
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::File(kind, id) => write!(f, "{kind} {id}"),
            ObjectRef::Blob { id, pack } => write!(f, "blob {id} in pack {pack}"),
            ObjectRef::Bytes(what) => f.write_str(what),
        }
    }
}

impl Error {
    /// A `Corrupt` error about in-memory bytes; `locate` fills in the object later.
    pub(crate) fn corrupt(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Corrupt { what: ObjectRef::Bytes(what), reason: reason.into() }
    }

    /// Replace an anonymous `Corrupt` location with the stored object it came from.
    pub(crate) fn locate(self, what: ObjectRef) -> Self {
        match self {
            Error::Corrupt { what: ObjectRef::Bytes(_), reason } => Error::Corrupt { what, reason },
            other => other,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }

    /// Is this a corruption (authentication, hash or decoding failure)?
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}
