//! 32-byte identifiers and their typed newtypes.
//!
//! `Id` is raw bytes; `BlobId`, `PackId`, `SnapshotId`, … wrap it so that one kind can never be
//! passed where another is expected. Hex is lowercase, 64 characters. Ordering is bytewise.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;

/// A 32-byte identifier (BLAKE3 output).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; ID_LEN]);

impl Id {
    /// The all-zero id (never the hash of anything in practice).
    pub const ZERO: Id = Id([0; ID_LEN]);

    /// Unkeyed BLAKE3 of stored bytes: the storage name of an object.
    pub fn of_stored(bytes: &[u8]) -> Id {
        Id(crate::hash::hash(bytes))
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters, for humans.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parse 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Id, Error> {
        let mut out = [0u8; ID_LEN];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| Error::Invalid(format!("{s:?} is not a 64-character hex id: {e}")))?;
        Ok(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Id::from_hex(s)
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub Id);

        impl $name {
            /// The untyped id.
            pub fn id(&self) -> &Id {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.short())
            }
        }

        impl From<Id> for $name {
            fn from(id: Id) -> Self {
                $name(id)
            }
        }

        impl From<$name> for Id {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name(Id::from_hex(s)?))
            }
        }
    };
}

typed_id!(
    /// Keyed BLAKE3 of a blob's plaintext (data chunk or tree).
    BlobId
);
typed_id!(
    /// A tree blob's id (a `BlobId` of kind tree).
    TreeId
);
typed_id!(
    /// Storage name of a pack: BLAKE3 of its stored bytes.
    PackId
);
typed_id!(
    /// Storage name of a snapshot object.
    SnapshotId
);
typed_id!(
    /// Storage name of an index object.
    IndexId
);
typed_id!(
    /// Storage name of a key file.
    KeyId
);
typed_id!(
    /// Storage name of a garbage-collection marker.
    MarkerId
);

impl From<TreeId> for BlobId {
    fn from(t: TreeId) -> Self {
        BlobId(t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let id = Id::of_stored(b"abc");
        assert_eq!(Id::from_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(id.to_hex().len(), 64);
        assert!(Id::from_hex("zz").is_err());
        assert!(Id::from_hex(&"0".repeat(63)).is_err());
    }
}
