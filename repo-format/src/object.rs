//! Sealed objects: config, index and snapshot files, and pack headers.
//!
//! Layout: an 8-byte header `"FERRY" ‖ type (u8) ‖ format version (u16 LE)` in clear, then
//! `nonce ‖ AES-256-GCM(payload) ‖ tag` where the header is the associated data, so an object of
//! one type can never be passed off as another. The payload is a compression payload
//! (`compress` module), so every object may be zstd-compressed.

use crate::compress;
use crate::crypto::Cipher;
use crate::error::{Error, Result};

pub(crate) const MAGIC: &[u8; 5] = b"FERRY";
pub(crate) const HEADER_LEN: usize = 8;

/// Newest format version this code reads, and writes where it must. Version 2 adds garbage
/// collection (FORMAT.md §9): index objects that supersede others, and markers. Objects that
/// need nothing of version 2 are still written as version 1, so a repository that was never
/// pruned stays readable by version 1 software. Version 3 adds directories stored in parts
/// (FORMAT.md §5.7): only a snapshot whose tree has one is written as version 3.
pub const FORMAT_VERSION: u16 = 3;
/// The version of objects that need no version 2 feature.
pub(crate) const BASE_VERSION: u16 = 1;

/// The type byte of a sealed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ObjectType {
    Config = 1,
    Index = 2,
    Snapshot = 3,
    PackHeader = 4,
    Blob = 5,
    /// A garbage-collection marker (`gc/<id>`, version 2).
    Marker = 6,
}

pub(crate) fn header(t: ObjectType, version: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..5].copy_from_slice(MAGIC);
    h[5] = t as u8;
    h[6..8].copy_from_slice(&version.to_le_bytes());
    h
}

/// Check the clear header: magic, type, and a version this code can read.
pub(crate) fn check_header(bytes: &[u8], t: ObjectType, what: &'static str) -> Result<u16> {
    if bytes.len() < HEADER_LEN || &bytes[..5] != MAGIC {
        return Err(Error::corrupt(what, "not a ferry object (bad magic)"));
    }
    if bytes[5] != t as u8 {
        return Err(Error::corrupt(what, format!("object type {} where {} was expected", bytes[5], t as u8)));
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { found: version.into(), supported: FORMAT_VERSION.into() });
    }
    if version == 0 {
        return Err(Error::corrupt(what, "format version 0"));
    }
    Ok(version)
}

/// Compress (at `level`) and encrypt `payload` into a complete version 1 object.
pub(crate) fn seal(cipher: &Cipher, t: ObjectType, payload: &[u8], level: i32) -> Vec<u8> {
    seal_version(cipher, t, payload, level, BASE_VERSION)
}

/// As `seal`, with the format version in the header.
pub(crate) fn seal_version(cipher: &Cipher, t: ObjectType, payload: &[u8], level: i32, version: u16) -> Vec<u8> {
    let h = header(t, version);
    let mut body = Vec::with_capacity(payload.len() / 2 + 16);
    compress::compress_into(payload, level, &mut body);
    let mut out = Vec::with_capacity(body.len() + 64);
    out.extend_from_slice(&h);
    cipher.seal_into(&h, &body, &mut out);
    out
}

/// Verify, decrypt and decompress an object made by `seal`.
pub(crate) fn open(cipher: &Cipher, t: ObjectType, bytes: &[u8], what: &'static str) -> Result<Vec<u8>> {
    open_reusing(cipher, t, bytes, what, &mut Default::default()).map(<[u8]>::to_vec)
}

/// As `open`, into buffers the caller keeps from object to object (`bufs`: the decrypted payload,
/// and the decompressed one if it is compressed): loading the index's thousands of objects then
/// faults in no fresh pages for each (at 10 M blobs those were half of a load's time).
pub(crate) fn open_reusing<'a>(
    cipher: &Cipher,
    t: ObjectType,
    bytes: &[u8],
    what: &'static str,
    bufs: &'a mut (Vec<u8>, Vec<u8>),
) -> Result<&'a [u8]> {
    check_header(bytes, t, what)?;
    let (body, plain) = bufs;
    cipher.open_into(&bytes[..HEADER_LEN], &bytes[HEADER_LEN..], what, body)?;
    compress::decoded(body, plain).map_err(|e| match e {
        Error::Corrupt { reason, .. } => Error::corrupt(what, reason),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_is_authenticated() {
        let c = Cipher::new(&[3; 32]);
        let mut sealed = seal(&c, ObjectType::Snapshot, b"payload payload payload", 3);
        assert_eq!(open(&c, ObjectType::Snapshot, &sealed, "s").unwrap(), b"payload payload payload");
        assert!(open(&c, ObjectType::Index, &sealed, "s").unwrap_err().is_corrupt());
        sealed[5] = ObjectType::Index as u8; // relabel in clear: the tag must catch it
        assert!(open(&c, ObjectType::Index, &sealed, "s").unwrap_err().is_corrupt());
    }

    /// Reused buffers give what `open` gives, compressed or not, whatever they held before;
    /// a forged object fails the same way.
    #[test]
    fn opening_into_reused_buffers_is_opening() {
        let c = Cipher::new(&[3; 32]);
        let mut bufs = (vec![9; 100_000], vec![7; 100_000]);
        let payloads: [Vec<u8>; 3] =
            [vec![1; 50_000], (0..70_000u32).map(|i| ((i * 7919) >> 3) as u8).collect(), b"x".to_vec()];
        for p in &payloads {
            let sealed = seal(&c, ObjectType::Index, p, 3);
            assert_eq!(open_reusing(&c, ObjectType::Index, &sealed, "i", &mut bufs).unwrap(), &p[..]);
            assert_eq!(open(&c, ObjectType::Index, &sealed, "i").unwrap(), *p);
            let mut forged = sealed.clone();
            *forged.last_mut().unwrap() ^= 1;
            assert!(open_reusing(&c, ObjectType::Index, &forged, "i", &mut bufs).unwrap_err().is_corrupt());
        }
    }

    #[test]
    fn newer_version_is_refused_by_name() {
        let c = Cipher::new(&[3; 32]);
        let mut sealed = seal(&c, ObjectType::Config, b"x", 0);
        sealed[6] = 4;
        assert!(matches!(
            open(&c, ObjectType::Config, &sealed, "c"),
            Err(Error::UnsupportedVersion { found: 4, supported: 3 })
        ));
    }
}
