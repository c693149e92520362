//! Blobs: the unit of deduplication (a file chunk or a tree), sealed for a pack.
//!
//! Stored blob = `nonce ‖ AES-256-GCM_packkey(compression payload) ‖ tag` with associated data
//! `object header(type 5) ‖ kind u8 ‖ blob id[32]`: a blob moved to another id or kind fails
//! authentication. After decryption the plaintext is re-hashed with the id key and compared
//! with the id (invariant 4: every read is verified).

use crate::compress;
use crate::crypto::{Cipher, MasterKey};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::object::{ObjectType, header};

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlobKind {
    /// A chunk of file or disk content.
    Data = 0,
    /// An encoded directory tree (or a content list of a large file).
    Tree = 1,
}

impl BlobKind {
    pub(crate) fn from_u8(v: u8) -> Result<Self> {
        match v {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            _ => Err(Error::corrupt("blob entry", format!("unknown blob kind {v}"))),
        }
    }
}

impl std::fmt::Display for BlobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
        })
    }
}

/// The associated data of a blob. Its version field is always 1 (not the writer's format
/// version), so blobs stay readable whatever later versions change elsewhere.
fn aad(kind: BlobKind, id: &BlobId) -> [u8; 41] {
    let mut a = [0u8; 41];
    a[..8].copy_from_slice(&header(ObjectType::Blob, 1));
    a[8] = kind as u8;
    a[9..].copy_from_slice(&id.0.0);
    a
}

/// Seal a payload in place (`Cipher::seal_in_place`): `buf` is room for the nonce, then the payload.
pub(crate) fn seal_payload_in_place(cipher: &Cipher, kind: BlobKind, id: &BlobId, buf: &mut Vec<u8>) {
    cipher.seal_in_place(&aad(kind, id), buf, 0);
}

/// Decrypt, decompress and verify one stored blob.
pub(crate) fn open(master: &MasterKey, cipher: &Cipher, kind: BlobKind, id: &BlobId, stored: &[u8]) -> Result<Vec<u8>> {
    let payload = cipher.open(&aad(kind, id), stored, "blob")?;
    let plain = compress::decompress(&payload)?;
    verify(master, id, &plain)?;
    Ok(plain)
}

/// As `open`, decrypting `stored` where it lies: the blob's bytes, which are `stored`'s own
/// for a blob stored raw and decompressed into `plain` (reused) otherwise.
pub(crate) fn open_in_place<'a>(
    master: &MasterKey,
    cipher: &Cipher,
    kind: BlobKind,
    id: &BlobId,
    stored: &'a mut [u8],
    plain: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let payload = cipher.open_in_place(&aad(kind, id), stored, "blob")?;
    let bytes = compress::decoded(payload, plain)?;
    verify(master, id, bytes)?;
    Ok(bytes)
}

/// Invariant 4: what was read hashes to the id it was read as.
fn verify(master: &MasterKey, id: &BlobId, bytes: &[u8]) -> Result<()> {
    if master.blob_id(bytes) != *id {
        return Err(Error::corrupt("blob", "content does not hash to its id"));
    }
    Ok(())
}
