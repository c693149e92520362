//! Packs: many sealed blobs in one storage object.
//!
//! Layout: `blob₀ ‖ blob₁ ‖ … ‖ header ‖ trailer`.
//! * header = sealed object of type 4 under the pack key, payload `count u32 ‖ count ×
//!   (kind u8 ‖ id[32] ‖ stored length u32 ‖ raw length u32)`; blob i starts where blob i-1
//!   ends (the first at 0).
//! * trailer (44 bytes) = `salt[32] ‖ header length u32 LE ‖ "FERRYPAK"`.
//!
//! The pack's storage name is the BLAKE3 of all its bytes. A pack is built in an anonymous
//! temporary file, never in memory, so memory stays bounded by the number of open packs, not
//! their size. The header repeats what the index says, so a lost index can be rebuilt.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use crate::blob::{self, BlobKind};
use crate::codec::{Dec, Enc};
use crate::crypto::{Cipher, MasterKey, SALT_LEN, random_bytes};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::object::{self, ObjectType};

/// Length of the pack trailer.
pub const TRAILER_LEN: usize = 44;
const TRAILER_MAGIC: &[u8; 8] = b"FERRYPAK";
const ENTRY_LEN: usize = 41;

/// Where one blob sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: BlobId,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// A finished pack waiting for upload: an unlinked temporary file and what it holds.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: PackId,
    pub file: File,
    pub len: u64,
    pub salt: [u8; SALT_LEN],
    pub entries: Vec<PackEntry>,
}

/// The pack file's write buffer: blobs smaller than this (small files, trees) are gathered into
/// writes of this size; a bigger one (most chunks of big files) is written from the caller's
/// buffer, not copied through this one first.
const WRITE_BUFFER: usize = 256 << 10;

/// Builds one pack in a temporary file.
#[derive(Debug)]
pub(crate) struct PackWriter {
    salt: [u8; SALT_LEN],
    cipher: Cipher,
    file: BufWriter<File>,
    hasher: crate::hash::Hasher,
    len: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    /// A new empty pack with a fresh random salt (and so a fresh key), spooled under `dir`.
    pub fn new(master: &MasterKey, dir: &Path) -> Result<Self> {
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt);
        let file = tempfile::tempfile_in(dir)
            .map_err(|e| Error::io(format!("creating a temporary pack file in {}", dir.display()), e))?;
        Ok(PackWriter {
            salt,
            cipher: master.pack_cipher(&salt),
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            hasher: crate::hash::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        })
    }

    /// Blobs added so far.
    pub fn blob_count(&self) -> usize {
        self.entries.len()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Compress, seal and append a blob. Returns its stored length.
    #[cfg(test)]
    pub fn add(&mut self, kind: BlobKind, id: BlobId, plaintext: &[u8], level: i32) -> Result<u32> {
        let mut payload = Vec::new();
        crate::compress::compress_into(plaintext, level, &mut payload);
        self.add_payload(kind, id, &payload, plaintext.len() as u32)
    }

    /// Seal an already compressed payload (see `compress`) and append it, from a copy laid out
    /// for `add_prepared` (the writer lays its payloads out so from the start).
    #[cfg(test)]
    pub fn add_payload(&mut self, kind: BlobKind, id: BlobId, payload: &[u8], raw_len: u32) -> Result<u32> {
        let mut buf = vec![0; crate::crypto::NONCE_LEN];
        buf.extend_from_slice(payload);
        self.add_prepared(kind, id, &mut buf, raw_len)
    }

    /// Seal a compressed payload (see `compress`) laid out where it will be sealed and append
    /// it: `buf` is room for the nonce (`crypto::NONCE_LEN` bytes) followed by the payload. The
    /// payload is encrypted in place and the tag appended (`buf` then holds the stored blob), so
    /// neither the payload nor its ciphertext is copied before the pack's file has it.
    /// Compression happens outside any lock the caller holds on this writer; only encryption
    /// happens here.
    pub fn add_prepared(&mut self, kind: BlobKind, id: BlobId, buf: &mut Vec<u8>, raw_len: u32) -> Result<u32> {
        let offset = u32::try_from(self.len).map_err(|_| Error::Invalid("a pack grew beyond 4 GiB".into()))?;
        blob::seal_payload_in_place(&self.cipher, kind, &id, buf);
        let stored_len = buf.len() as u32;
        self.write(buf)?;
        self.entries.push(PackEntry { kind, id, offset, stored_len, raw_len });
        Ok(stored_len)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.file.write_all(b).map_err(|e| Error::io("writing a temporary pack file", e))?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    /// Append header and trailer; the file is rewound and ready to upload.
    pub fn finish(mut self) -> Result<FinishedPack> {
        let mut e = Enc::with_capacity(4 + self.entries.len() * ENTRY_LEN);
        e.u32(self.entries.len() as u32);
        for en in &self.entries {
            e.u8(en.kind as u8).id(&en.id.0).u32(en.stored_len).u32(en.raw_len);
        }
        let header = object::seal(&self.cipher, ObjectType::PackHeader, &e.buf, 0);
        self.write(&header)?;
        let mut trailer = Enc::with_capacity(TRAILER_LEN);
        trailer.raw(&self.salt).u32(header.len() as u32).raw(TRAILER_MAGIC);
        self.write(&trailer.buf)?;
        let mut file =
            self.file.into_inner().map_err(|e| Error::io("flushing a temporary pack file", e.into_error()))?;
        file.rewind().map_err(|e| Error::io("rewinding a temporary pack file", e))?;
        Ok(FinishedPack {
            id: PackId(crate::id::Id(self.hasher.finalize())),
            file,
            len: self.len,
            salt: self.salt,
            entries: self.entries,
        })
    }
}

/// Parse a trailer: the pack salt and the header's stored length.
pub fn parse_trailer(t: &[u8]) -> Result<([u8; SALT_LEN], u32)> {
    if t.len() != TRAILER_LEN || &t[36..] != TRAILER_MAGIC {
        return Err(Error::corrupt("pack", "bad trailer (not a ferry pack, or truncated)"));
    }
    let salt: [u8; SALT_LEN] = t[..32].try_into().expect("32 bytes");
    let hlen = u32::from_le_bytes(t[32..36].try_into().expect("4 bytes"));
    Ok((salt, hlen))
}

/// Decrypt and check a pack header; `blobs_len` is the pack length minus header and trailer.
pub fn parse_header(
    master: &MasterKey,
    salt: &[u8; SALT_LEN],
    header: &[u8],
    blobs_len: u64,
) -> Result<Vec<PackEntry>> {
    let plain = object::open(&master.pack_cipher(salt), ObjectType::PackHeader, header, "pack header")?;
    let mut d = Dec::new(&plain, "pack header");
    let n = d.count(ENTRY_LEN)?;
    let mut out = Vec::with_capacity(n);
    let mut offset = 0u64;
    for _ in 0..n {
        let kind = BlobKind::from_u8(d.u8()?)?;
        let id = BlobId(d.id()?);
        let stored_len = d.u32()?;
        let raw_len = d.u32()?;
        // Blob offsets are u32 (a pack is at most 4 GiB): a blob starting beyond that would be
        // recorded at a wrapped offset.
        let start = u32::try_from(offset)
            .map_err(|_| Error::corrupt("pack header", format!("a blob starts at {offset}, beyond 4 GiB")))?;
        out.push(PackEntry { kind, id, offset: start, stored_len, raw_len });
        offset += u64::from(stored_len);
    }
    d.finish()?;
    if offset != blobs_len {
        return Err(Error::corrupt("pack header", format!("blobs cover {offset} bytes, the pack holds {blobs_len}")));
    }
    Ok(out)
}

/// Parse a whole pack held in memory (check, repair, tests).
pub fn parse_pack(master: &MasterKey, pack: &[u8]) -> Result<([u8; SALT_LEN], Vec<PackEntry>)> {
    if pack.len() < TRAILER_LEN {
        return Err(Error::corrupt("pack", "shorter than its trailer"));
    }
    let (salt, hlen) = parse_trailer(&pack[pack.len() - TRAILER_LEN..])?;
    let hstart = (pack.len() - TRAILER_LEN)
        .checked_sub(hlen as usize)
        .ok_or_else(|| Error::corrupt("pack", "header longer than the pack"))?;
    let entries = parse_header(master, &salt, &pack[hstart..pack.len() - TRAILER_LEN], hstart as u64)?;
    Ok((salt, entries))
}

/// Open one stored blob given the pack salt (from the index or the trailer).
pub fn open_blob(
    master: &MasterKey,
    salt: &[u8; SALT_LEN],
    kind: BlobKind,
    id: &BlobId,
    stored: &[u8],
) -> Result<Vec<u8>> {
    blob::open(master, &master.pack_cipher(salt), kind, id, stored)
}

/// Opens the blobs of one pack for a reader of many: the pack's cipher is derived once (a key
/// derivation and an AES key schedule), not once per blob.
#[derive(Debug)]
pub struct PackOpener<'k> {
    master: &'k MasterKey,
    cipher: Cipher,
}

impl<'k> PackOpener<'k> {
    /// For the pack with this salt (from the index or the trailer).
    pub fn new(master: &'k MasterKey, salt: &[u8; SALT_LEN]) -> Self {
        PackOpener { master, cipher: master.pack_cipher(salt) }
    }

    /// Open one stored blob, decrypting it where it lies (no copy of the ciphertext): its
    /// bytes, which are `stored`'s own for a blob stored raw, and are decompressed into `plain`
    /// (cleared, its capacity reused) otherwise. Authenticated and hashed as `open_blob`. On any
    /// failure `stored`'s bytes are not to be used again: unspecified after an authentication
    /// failure (`Cipher::open_in_place`), the decrypted payload after a later one (a bad
    /// payload or id).
    pub fn open_in_place<'a>(
        &self,
        kind: BlobKind,
        id: &BlobId,
        stored: &'a mut [u8],
        plain: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        blob::open_in_place(self.master, &self.cipher, kind, id, stored, plain)
    }

    /// As `open_in_place`, for a reader that keeps the pack's bytes as they are (a checker
    /// reading the same bytes under several index entries): `stored` is copied into `scratch`
    /// (cleared first) and decrypted there; the bytes returned are `scratch`'s for a blob
    /// stored raw, `plain`'s otherwise. Both buffers' capacity is reused.
    pub fn open<'a>(
        &self,
        kind: BlobKind,
        id: &BlobId,
        stored: &[u8],
        scratch: &'a mut Vec<u8>,
        plain: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        scratch.clear();
        scratch.extend_from_slice(stored);
        self.open_in_place(kind, id, scratch, plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read;

    fn build(master: &MasterKey, blobs: &[(BlobKind, Vec<u8>)]) -> (FinishedPack, Vec<u8>) {
        let dir = std::env::temp_dir();
        let mut w = PackWriter::new(master, &dir).unwrap();
        for (k, b) in blobs {
            w.add(*k, master.blob_id(b), b, 3).unwrap();
        }
        let mut p = w.finish().unwrap();
        let mut bytes = Vec::new();
        p.file.read_to_end(&mut bytes).unwrap();
        (p, bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn pack_write_read_round_trip(blobs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..3000)), 0..12)) {
            let master = MasterKey::generate();
            let blobs: Vec<(BlobKind, Vec<u8>)> = blobs.into_iter().map(|(t, b)| (if t { BlobKind::Tree } else { BlobKind::Data }, b)).collect();
            let (p, bytes) = build(&master, &blobs);
            prop_assert_eq!(bytes.len() as u64, p.len);
            prop_assert_eq!(PackId(crate::id::Id::of_stored(&bytes)), p.id);
            let (salt, entries) = parse_pack(&master, &bytes).unwrap();
            prop_assert_eq!(&entries, &p.entries);
            let (opener, mut in_place, mut plain, mut scratch) = (PackOpener::new(&master, &salt), bytes.clone(), Vec::new(), Vec::new());
            for ((kind, data), e) in blobs.iter().zip(&entries) {
                let range = e.offset as usize..(e.offset + e.stored_len) as usize;
                prop_assert_eq!(&open_blob(&master, &salt, *kind, &e.id, &bytes[range.clone()]).unwrap(), data);
                prop_assert_eq!(opener.open(*kind, &e.id, &bytes[range.clone()], &mut scratch, &mut plain).unwrap(), &data[..]);
                prop_assert_eq!(opener.open_in_place(*kind, &e.id, &mut in_place[range], &mut plain).unwrap(), &data[..]);
            }
        }
    }

    /// In place: a blob stored raw is its own bytes in the buffer (no copy), a compressed one
    /// comes out of `plain`; a flipped byte fails and leaves the buffer as it was; an authentic
    /// blob under an id its content does not hash to fails. From a copy: the same verdicts, and
    /// the same bytes can be opened again.
    #[test]
    fn opening_in_place_or_from_a_copy_checks_as_open_blob_does() {
        let master = MasterKey::generate();
        let mut random = vec![0u8; 5000];
        crate::crypto::random_bytes(&mut random);
        let text = b"compressible text, line after line. ".repeat(200);
        let mut w = PackWriter::new(&master, &std::env::temp_dir()).unwrap();
        w.add(BlobKind::Data, master.blob_id(&random), &random, 3).unwrap();
        w.add(BlobKind::Data, master.blob_id(&text), &text, 3).unwrap();
        let mut payload = Vec::new();
        crate::compress::compress_into(&text, 3, &mut payload);
        w.add_payload(BlobKind::Data, master.blob_id(b"another content"), &payload, text.len() as u32).unwrap();
        let mut p = w.finish().unwrap();
        let mut bytes = Vec::new();
        p.file.read_to_end(&mut bytes).unwrap();
        let (salt, e) = parse_pack(&master, &bytes).unwrap();
        let range = |i: usize| e[i].offset as usize..(e[i].offset + e[i].stored_len) as usize;
        let opener = PackOpener::new(&master, &salt);
        let mut plain = Vec::new();

        let mut buf = bytes.clone();
        let inside = buf[range(0)].as_ptr_range();
        let got = opener.open_in_place(BlobKind::Data, &e[0].id, &mut buf[range(0)], &mut plain).unwrap();
        assert_eq!(got, &random[..]);
        assert!(inside.contains(&got.as_ptr()), "a raw blob is read where it lies");
        let got = opener.open_in_place(BlobKind::Data, &e[1].id, &mut buf[range(1)], &mut plain).unwrap();
        assert_eq!(got, &text[..]);
        assert_eq!(got.as_ptr(), plain.as_ptr(), "a compressed blob is decompressed into plain");

        let mut tampered = bytes.clone();
        tampered[range(1).start + 30] ^= 0x08;
        let before = tampered.clone();
        let err = opener.open_in_place(BlobKind::Data, &e[1].id, &mut tampered[range(1)], &mut plain).unwrap_err();
        assert!(err.is_corrupt() && err.to_string().contains("authentication"), "{err}");
        // Its own bytes are unspecified now (AWS-LC decrypts while it authenticates); its
        // neighbours' are not touched.
        let r = range(1);
        assert!(
            tampered[..r.start] == before[..r.start] && tampered[r.end..] == before[r.end..],
            "a failed open wrote outside its blob"
        );
        let err = opener.open_in_place(BlobKind::Tree, &e[0].id, &mut buf.clone()[range(0)], &mut plain).unwrap_err();
        assert!(err.is_corrupt(), "{err}");

        let err = opener.open_in_place(BlobKind::Data, &e[2].id, &mut bytes.clone()[range(2)], &mut plain).unwrap_err();
        assert!(err.is_corrupt() && err.to_string().contains("does not hash"), "{err}");

        // The copying form reads the same bytes as often as asked, and fails as the other does.
        let mut scratch = Vec::new();
        for _ in 0..2 {
            assert_eq!(
                opener.open(BlobKind::Data, &e[0].id, &bytes[range(0)], &mut scratch, &mut plain).unwrap(),
                &random[..]
            );
        }
        let err = opener.open(BlobKind::Data, &e[1].id, &before[range(1)], &mut scratch, &mut plain).unwrap_err();
        assert!(err.is_corrupt() && err.to_string().contains("authentication"), "{err}");
        let err = opener.open(BlobKind::Data, &e[2].id, &bytes[range(2)], &mut scratch, &mut plain).unwrap_err();
        assert!(err.is_corrupt() && err.to_string().contains("does not hash"), "{err}");
    }

    #[test]
    fn swapped_blob_and_flipped_byte_are_detected() {
        let master = MasterKey::generate();
        let a = b"first blob content".to_vec();
        let b = b"second blob content".to_vec();
        let (_, bytes) = build(&master, &[(BlobKind::Data, a.clone()), (BlobKind::Data, b.clone())]);
        let (salt, e) = parse_pack(&master, &bytes).unwrap();
        let blob_a = &bytes[e[0].offset as usize..(e[0].offset + e[0].stored_len) as usize];
        // The stored bytes of `a` presented as `b`: the associated data differs.
        assert!(open_blob(&master, &salt, BlobKind::Data, &e[1].id, blob_a).unwrap_err().is_corrupt());
        assert!(open_blob(&master, &salt, BlobKind::Tree, &e[0].id, blob_a).unwrap_err().is_corrupt());
        let mut flipped = blob_a.to_vec();
        flipped[20] ^= 0x40;
        assert!(open_blob(&master, &salt, BlobKind::Data, &e[0].id, &flipped).unwrap_err().is_corrupt());
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 50] ^= 1; // inside the header
        assert!(parse_pack(&master, &bad).unwrap_err().is_corrupt());
        assert!(parse_pack(&master, &bytes[..bytes.len() - 3]).unwrap_err().is_corrupt());
    }
}
