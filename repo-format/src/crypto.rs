//! Keys, key derivation and authenticated encryption (AES-256-GCM).
//!
//! The master key holds two independent 32-byte secrets: `enc` (encryption) and `idk` (the
//! BLAKE3 key of blob ids and the chunker seed). Nothing is ever encrypted under `enc` itself:
//! every use derives a subkey with BLAKE3's KDF (`derive_key`, a context string per purpose):
//!
//! * pack key  = derive_key("ferry v1 pack key", enc ‖ pack salt)   — one per pack, salt random
//! * object key = derive_key("ferry v1 object key", enc)           — config, index, snapshots
//!
//! Sealed bytes are `nonce(12) ‖ ciphertext ‖ tag(16)` with a random 96-bit nonce. A pack key
//! encrypts only the blobs of one pack plus its header (far below 2^20 messages), so the
//! random-nonce bound of 2^32 messages per key is unreachable; the object key encrypts one
//! message per config/index/snapshot object. This module must never log or expose key bytes.

use std::ops::Range;
use std::sync::OnceLock;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

use crate::error::{Error, Result};
use crate::id::{BlobId, Id};

// AES-256-GCM composed from csrc/gcm.c's kernels where the crate has no hardware path (FFI).
#[allow(unsafe_code)]
mod gcm;

/// Bytes a sealed message adds to its plaintext: nonce and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
/// Length of a pack salt.
pub const SALT_LEN: usize = 32;

const CTX_PACK: &str = "ferry v1 pack key";
const CTX_OBJECT: &str = "ferry v1 object key";
const CTX_CHUNKER: &str = "ferry v1 chunker seed";

/// Fill `buf` from the operating system's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system random source failed");
}

/// The repository's secrets. Created once by `init`, stored only wrapped in key files.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    pub(crate) enc: [u8; 32],
    pub(crate) idk: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Self {
        let mut enc = [0u8; 32];
        let mut idk = [0u8; 32];
        random_bytes(&mut enc);
        random_bytes(&mut idk);
        MasterKey { enc, idk }
    }

    /// Build from raw bytes (key files, golden tests).
    pub fn from_bytes(enc: [u8; 32], idk: [u8; 32]) -> Self {
        MasterKey { enc, idk }
    }

    /// A new master key with a fresh random `enc` and `other`'s id key: equal plaintext gets
    /// equal blob ids and files are cut at the same places, while nothing is encrypted alike
    /// (FORMAT.md §4.1).
    pub(crate) fn sharing_id_key_of(other: &MasterKey) -> Self {
        MasterKey { idk: other.idk, ..MasterKey::generate() }
    }

    /// True when both keys give every plaintext the same blob id (they share `idk`). Compares
    /// the ids of a fixed probe, never the secrets themselves.
    pub fn same_id_key(&self, other: &MasterKey) -> bool {
        const PROBE: &[u8] = b"ferry id key probe";
        self.blob_id(PROBE) == other.blob_id(PROBE)
    }

    /// The id of a blob: BLAKE3 keyed with the id key, over the plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(Id(crate::hash::keyed_hash(&self.idk, plaintext)))
    }

    /// The secret FastCDC gear-table seed (first 8 bytes of a KDF output, little-endian).
    pub fn chunker_seed(&self) -> u64 {
        let k = blake3::derive_key(CTX_CHUNKER, &self.idk);
        u64::from_le_bytes(k[..8].try_into().expect("8 bytes"))
    }

    pub(crate) fn pack_cipher(&self, salt: &[u8; SALT_LEN]) -> Cipher {
        let mut material = [0u8; 64];
        material[..32].copy_from_slice(&self.enc);
        material[32..].copy_from_slice(salt);
        Cipher::new(&blake3::derive_key(CTX_PACK, &material))
    }

    pub(crate) fn object_cipher(&self) -> Cipher {
        Cipher::new(&blake3::derive_key(CTX_OBJECT, &self.enc))
    }
}

/// Which AES-256-GCM this process uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    /// The aes-gcm crate: AES-NI + CLMUL, ARMv8 AES + PMULL, or bitsliced software.
    Crate,
    /// `gcm`'s composition (Power and Z with the vector unit; elsewhere only when forced).
    Kernel(gcm::AesImpl, &'static str),
    /// AWS-LC (x86_64): AES and GHASH stitched in one pass (AES-NI + CLMUL with AVX, or
    /// VAES + VPCLMULQDQ with AVX-512). The default there.
    #[cfg(target_arch = "x86_64")]
    AwsLc,
}

/// The engine of this process: AWS-LC on x86_64, `gcm` on Power and Z when the CPU has the
/// vector unit, the crate otherwise. `FERRY_AES=crate` forces the crate, `FERRY_AES=kernel`
/// forces `gcm` where it can run (on x86_64 and aarch64 too, for the tests); read once per
/// process. Every engine makes the same bytes (the tests compare them).
fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    *ENGINE.get_or_init(|| {
        let kernel = |k: Option<(gcm::AesImpl, &'static str)>| k.map(|(aes, name)| Engine::Kernel(aes, name));
        match std::env::var("FERRY_AES").unwrap_or_default().as_str() {
            "crate" => Engine::Crate,
            "kernel" => kernel(gcm::available().or_else(gcm::base_isa)).unwrap_or(Engine::Crate),
            #[cfg(target_arch = "x86_64")]
            _ => Engine::AwsLc,
            #[cfg(not(target_arch = "x86_64"))]
            _ => kernel(gcm::available()).unwrap_or(Engine::Crate),
        }
    })
}

/// The AES-256-GCM code path in use, for `ferry version` and `ferry bench`.
pub fn path() -> &'static str {
    match engine() {
        Engine::Kernel(_, name) => return name,
        #[cfg(target_arch = "x86_64")]
        Engine::AwsLc => {
            // AWS-LC's own dispatch (crypto/fipsmodule/modes/gcm.c): AVX-512 with VAES and
            // VPCLMULQDQ, else AES-NI and CLMUL stitched with AVX (and MOVBE), else unstitched.
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("vaes") && has!("vpclmulqdq");
            return match (has!("aes") && has!("pclmulqdq"), avx512, has!("avx") && has!("movbe")) {
                (true, true, _) => "aws-lc: vaes + vpclmulqdq (avx-512)",
                (true, false, true) => "aws-lc: aes-ni + clmul (stitched, avx)",
                (true, false, false) => "aws-lc: aes-ni + clmul",
                (false, ..) => "aws-lc: software (vector permutes)",
            };
        }
        Engine::Crate => {}
    }
    #[cfg(target_arch = "x86_64")]
    {
        let aes = std::arch::is_x86_feature_detected!("aes");
        let clmul = std::arch::is_x86_feature_detected!("pclmulqdq");
        if aes && clmul { "aes-ni + clmul" } else { "software (bitsliced)" }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull") {
            "armv8 aes + pmull"
        } else {
            "software (bitsliced)"
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "software (bitsliced)"
    }
}

/// AES-256-GCM on the repository's code path (`path()`) under one key, for benchmarks and the
/// instruction counts: sealed bytes are `nonce ‖ ciphertext ‖ tag` as in packs and objects.
#[derive(Debug)]
pub struct Aead(Cipher);

impl Aead {
    pub fn new(key: &[u8; 32]) -> Self {
        Aead(Cipher::new(key))
    }

    /// Append `nonce ‖ E(plaintext) ‖ tag` to `out` (random nonce).
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        self.0.seal_into(aad, plaintext, out)
    }

    /// Authenticate and decrypt `sealed` into `buf`.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        self.0.open_into(aad, sealed, "sealed message", buf)
    }
}

/// AES-256-GCM under one key.
#[derive(Clone)]
pub(crate) enum Cipher {
    Crate(Box<Aes256Gcm>),
    Kernel(Box<gcm::Gcm>),
    #[cfg(target_arch = "x86_64")]
    AwsLc(std::sync::Arc<aws_lc_rs::aead::LessSafeKey>),
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self::with(engine(), key)
    }

    fn with(engine: Engine, key: &[u8; 32]) -> Self {
        match engine {
            Engine::Kernel(aes, _) => Cipher::Kernel(Box::new(gcm::Gcm::new(key, aes))),
            Engine::Crate => Cipher::Crate(Box::new(Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)))),
            #[cfg(target_arch = "x86_64")]
            Engine::AwsLc => {
                use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
                let key = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes a 32-byte key");
                Cipher::AwsLc(std::sync::Arc::new(LessSafeKey::new(key)))
            }
        }
    }

    /// Append `nonce ‖ E(plaintext) ‖ tag` to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        out.reserve(plaintext.len() + SEAL_OVERHEAD);
        let at = out.len();
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(plaintext);
        self.seal_in_place(aad, out, at);
    }

    /// Seal where the plaintext lies: `buf[at..at + NONCE_LEN]` is room for the nonce (its bytes
    /// are overwritten), the plaintext is `buf[at + NONCE_LEN..]` and is encrypted in place, and
    /// the tag is appended. `buf[at..]` is then `nonce ‖ ciphertext ‖ tag`, as `seal_into` makes,
    /// without copying the plaintext (a payload compressed straight after the room).
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>, at: usize) {
        let start = at + NONCE_LEN;
        assert!(buf.len() >= start, "seal_in_place: no room for the nonce");
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce);
        buf[at..start].copy_from_slice(&nonce);
        let tag = self.encrypt(aad, &nonce, &mut buf[start..]);
        buf.extend_from_slice(&tag);
    }

    /// Encrypt `data` in place under `nonce`; the tag.
    fn encrypt(&self, aad: &[u8], nonce: &[u8; NONCE_LEN], data: &mut [u8]) -> [u8; TAG_LEN] {
        match self {
            Cipher::Crate(c) => c
                .encrypt_inout_detached(&Nonce::from(*nonce), aad, data.into())
                .expect("AES-GCM accepts messages below 64 GiB")
                .into(),
            Cipher::Kernel(g) => g.seal_in_place(nonce, aad, data),
            #[cfg(target_arch = "x86_64")]
            Cipher::AwsLc(k) => {
                use aws_lc_rs::aead::{Aad, Nonce};
                let tag = k
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data)
                    .expect("AES-GCM accepts messages below 64 GiB");
                tag.as_ref().try_into().expect("a 16-byte tag")
            }
        }
    }

    #[cfg(test)]
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(aad, plaintext, &mut out);
        out
    }

    /// Authenticate and decrypt; `Corrupt` (unlocated) when the tag does not verify.
    pub fn open(&self, aad: &[u8], sealed: &[u8], what: &'static str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_into(aad, sealed, what, &mut buf)?;
        Ok(buf)
    }

    /// Authenticate `sealed` and decrypt it where it lies: the plaintext, between nonce and
    /// tag. When the tag does not verify, nothing is returned and `sealed`'s bytes are
    /// unspecified: the crate and `gcm` check the tag before decrypting and leave them as they
    /// were, AWS-LC decrypts while it authenticates.
    pub fn open_in_place<'a>(&self, aad: &[u8], sealed: &'a mut [u8], what: &'static str) -> Result<&'a mut [u8]> {
        let (nonce, ct, tag) = Self::framing(sealed, what)?;
        let ct = &mut sealed[ct];
        if self.decrypt(aad, &nonce, ct, &tag) { Ok(ct) } else { Err(Self::unauthentic(what)) }
    }

    /// The nonce and tag of `nonce ‖ ciphertext ‖ tag`, and where the ciphertext lies;
    /// `Corrupt` when `sealed` is too short to hold both.
    fn framing(sealed: &[u8], what: &'static str) -> Result<([u8; NONCE_LEN], Range<usize>, [u8; TAG_LEN])> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::corrupt(what, format!("{} bytes is shorter than nonce and tag", sealed.len())));
        }
        let end = sealed.len() - TAG_LEN;
        let nonce = sealed[..NONCE_LEN].try_into().expect("12 bytes");
        let tag = sealed[end..].try_into().expect("16 bytes");
        Ok((nonce, NONCE_LEN..end, tag))
    }

    /// Decrypt `ct` in place; whether `tag` verifies. When it does not, `ct`'s bytes are
    /// unspecified (`open_in_place`).
    fn decrypt(&self, aad: &[u8], nonce: &[u8; NONCE_LEN], ct: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        match self {
            Cipher::Crate(c) => {
                c.decrypt_inout_detached(&Nonce::from(*nonce), aad, ct.into(), &Tag::from(*tag)).is_ok()
            }
            Cipher::Kernel(g) => g.open_in_place(nonce, aad, ct, tag),
            #[cfg(target_arch = "x86_64")]
            Cipher::AwsLc(k) => {
                use aws_lc_rs::aead::{Aad, Nonce};
                k.open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), tag, ct).is_ok()
            }
        }
    }

    fn unauthentic(what: &'static str) -> Error {
        Error::corrupt(what, "authentication failed (wrong key, or modified bytes)")
    }

    /// As `open`, decrypting into `buf` (cleared first; its capacity is reused).
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], what: &'static str, buf: &mut Vec<u8>) -> Result<()> {
        let (nonce, ct, tag) = Self::framing(sealed, what)?;
        buf.clear();
        buf.extend_from_slice(&sealed[ct]);
        if self.decrypt(aad, &nonce, buf, &tag) { Ok(()) } else { Err(Self::unauthentic(what)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let c = Cipher::new(&[7u8; 32]);
            let sealed = c.seal(&aad, &data);
            prop_assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
            prop_assert_eq!(c.open(&aad, &sealed, "t").unwrap(), data);
        }

        #[test]
        fn any_message_is_sealed_alike_by_every_engine(key in any::<[u8; 32]>(), nonce in any::<[u8; NONCE_LEN]>(),
                                                       aad in proptest::collection::vec(any::<u8>(), 0..100),
                                                       data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            same_under_every_engine(&key, &nonce, &aad, &data);
        }

        #[test]
        fn sealed_in_place_it_opens_and_what_lies_before_is_kept(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            before in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let c = Cipher::new(&[3u8; 32]);
            let mut buf = before.clone();
            buf.extend_from_slice(&[0xee; NONCE_LEN]);
            buf.extend_from_slice(&data);
            c.seal_in_place(b"aad", &mut buf, before.len());
            prop_assert_eq!(&buf[..before.len()], &before[..]);
            let sealed = &buf[before.len()..];
            prop_assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
            prop_assert_ne!(&sealed[..NONCE_LEN], &[0xee; NONCE_LEN][..], "the nonce was not written");
            prop_assert_eq!(c.open(b"aad", sealed, "t").unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 1..512), pos in any::<usize>(), bit in 0u8..8) {
            let c = Cipher::new(&[9u8; 32]);
            let mut sealed = c.seal(b"aad", &data);
            let i = pos % sealed.len();
            sealed[i] ^= 1 << bit;
            prop_assert!(c.open(b"aad", &sealed, "t").unwrap_err().is_corrupt());
        }
    }

    /// Every engine this CPU can run, the crate first (the reference).
    fn engines() -> Vec<Engine> {
        let mut v = vec![Engine::Crate];
        v.extend(gcm::available().or_else(gcm::base_isa).map(|(aes, name)| Engine::Kernel(aes, name)));
        #[cfg(target_arch = "x86_64")]
        v.push(Engine::AwsLc);
        v
    }

    /// Ciphertext and tag of `data` under every engine, the same bytes; each opens the others'.
    fn same_under_every_engine(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], data: &[u8]) {
        let ciphers: Vec<(Engine, Cipher)> = engines().into_iter().map(|e| (e, Cipher::with(e, key))).collect();
        let sealed: Vec<(Vec<u8>, [u8; TAG_LEN])> = ciphers
            .iter()
            .map(|(_, c)| {
                let mut ct = data.to_vec();
                let tag = c.encrypt(aad, nonce, &mut ct);
                (ct, tag)
            })
            .collect();
        for ((e, c), s) in ciphers.iter().zip(&sealed) {
            assert!(s == &sealed[0], "{e:?} sealed {} bytes (aad {}) unlike the crate", data.len(), aad.len());
            let mut ct = sealed[0].0.clone();
            assert!(c.decrypt(aad, nonce, &mut ct, &sealed[0].1), "{e:?} refused the crate's {} bytes", data.len());
            assert!(ct == data, "{e:?} opened {} bytes wrong", data.len());
            let mut ct = sealed[0].0.clone();
            let mut tag = sealed[0].1;
            tag[data.len() % TAG_LEN] ^= 0x10;
            assert!(!c.decrypt(aad, nonce, &mut ct, &tag), "{e:?} accepted a wrong tag");
        }
    }

    #[test]
    fn every_engine_makes_the_crates_bytes_at_every_length_around_blocks_and_batches() {
        // The default on x86_64 is AWS-LC (unless the environment forces another).
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("FERRY_AES").is_none() {
            assert_eq!(engine(), Engine::AwsLc);
        }
        let key: [u8; 32] = std::array::from_fn(|i| (i * 13 + 5) as u8);
        let data: Vec<u8> = (0..(1u32 << 20) + 4099).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        // Bulk loops take several blocks at a time (AWS-LC's stitched one 6, from 288 bytes on;
        // `gcm`'s 4 or 8): every length up to 50 blocks, then around powers of two up to a
        // restore's 1 MiB piece.
        let lens = (0..=800).chain((10..=20).flat_map(|b| [(1 << b) - 1, 1 << b, (1 << b) + 17]));
        for (i, n) in lens.enumerate() {
            let nonce: [u8; NONCE_LEN] = std::array::from_fn(|j| (i * 3 + j) as u8);
            same_under_every_engine(&key, &nonce, &data[..i % 70], &data[..n]);
        }
        same_under_every_engine(&key, &[0xff; NONCE_LEN], &data[..4099], &data);
    }

    #[test]
    fn wrong_aad_or_key_fails() {
        let c = Cipher::new(&[1u8; 32]);
        let sealed = c.seal(b"kind=1", b"hello");
        assert!(c.open(b"kind=2", &sealed, "t").is_err());
        assert!(Cipher::new(&[2u8; 32]).open(b"kind=1", &sealed, "t").is_err());
    }

    #[test]
    fn pack_keys_differ_by_salt_and_blob_ids_by_key() {
        let mk = MasterKey::from_bytes([1; 32], [2; 32]);
        let sealed = mk.pack_cipher(&[0; 32]).seal(b"", b"x");
        assert!(mk.pack_cipher(&[1; 32]).open(b"", &sealed, "t").is_err());
        let other = MasterKey::from_bytes([1; 32], [3; 32]);
        assert_ne!(mk.blob_id(b"x"), other.blob_id(b"x"));
    }

    #[test]
    fn a_key_sharing_the_id_key_encrypts_apart() {
        let a = MasterKey::generate();
        let b = MasterKey::sharing_id_key_of(&a);
        assert!(a.same_id_key(&b) && b.same_id_key(&a));
        assert_eq!(a.blob_id(b"chunk"), b.blob_id(b"chunk"));
        assert_eq!(a.chunker_seed(), b.chunker_seed());
        assert_ne!(a.enc, b.enc, "the encryption key is fresh");
        let sealed = a.object_cipher().seal(b"", b"x");
        assert!(b.object_cipher().open(b"", &sealed, "t").is_err());
        assert!(!a.same_id_key(&MasterKey::generate()));
    }

    /// Pinned values: keyed ids and derived seeds must never change (format stability).
    #[test]
    fn golden_blob_id_and_chunker_seed() {
        let mk = MasterKey::from_bytes([0x11; 32], [0x22; 32]);
        assert_eq!(mk.blob_id(b"ferry").to_string(), GOLDEN_BLOB_ID);
        assert_eq!(mk.chunker_seed(), GOLDEN_SEED);
    }
    const GOLDEN_BLOB_ID: &str = "64e48c24da7e80d1f0157fa722a0a656e0048cf535a400c2004836f659423750";
    const GOLDEN_SEED: u64 = 8927057272149395483;
}
