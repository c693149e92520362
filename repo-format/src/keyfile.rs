//! Password-protected key files: the master key wrapped under an Argon2id-derived key.
//!
//! Layout (all integers little-endian):
//! `"FERRYKEY" ‖ version u8 (1) ‖ kdf u8 (1 = Argon2id v0x13) ‖ 0u16 ‖ m_cost KiB u32 ‖ t_cost u32
//! ‖ p_cost u32 ‖ salt[32] ‖ wrapped ‖ meta`, where
//! * wrapped (92 bytes) = `nonce[12] ‖ AES-256-GCM_{argon2id(password, salt)}(enc[32] ‖ idk[32]) ‖
//!   tag[16]` with the 56-byte prefix as associated data (so KDF parameters cannot be weakened
//!   unnoticed);
//! * meta = `nonce ‖ AES-256-GCM_{object key}(created ns i64 ‖ label (u16 length + UTF-8)) ‖ tag`
//!   with the prefix as associated data: any unlocked session can list every key's label and
//!   date, nobody without a password can.
//!
//! A key file's storage name is the BLAKE3 of its bytes. Several may exist; each unlocks the
//! same master key, so adding or removing one never touches data.

use crate::codec::{Dec, Enc};
use crate::crypto::{Cipher, MasterKey, random_bytes};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"FERRYKEY";
const PREFIX_LEN: usize = 56;

/// Argon2id cost parameters, stored in each key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 32 MiB, 4 passes, 1 lane (well above OWASP's Argon2id minimums; see FORMAT.md for the
    /// measured unlock time). 32 rather than 64 MiB keeps a whole backup's peak memory low: the
    /// KDF's buffer is the largest single allocation a small backup makes.
    fn default() -> Self {
        KdfParams { m_cost: 32 * 1024, t_cost: 4, p_cost: 1 }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only (and for emulated architectures in CI).
    pub fn insecure_for_tests() -> Self {
        KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }
    }

    /// Argon2 work: memory (KiB) × passes.
    pub fn work(&self) -> u64 {
        u64::from(self.m_cost) * u64::from(self.t_cost)
    }

    fn derive(&self, password: &[u8], salt: &[u8; 32]) -> Result<[u8; 32]> {
        let params = argon2::Params::new(self.m_cost, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| Error::Invalid(format!("argon2 parameters {self:?}: {e}")))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        a.hash_password_into(password, salt, &mut out).map_err(|e| Error::Invalid(format!("argon2: {e}")))?;
        Ok(out)
    }
}

/// What a key file says about itself without the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileInfo {
    pub kdf: KdfParams,
}

/// Decrypted content of a key file.
#[derive(Debug, Clone)]
#[allow(dead_code)] // created_ns and label are read by tests and `key list` via `meta`
pub struct KeyFileContent {
    pub master: MasterKey,
    pub created_ns: i64,
    pub label: String,
}

/// Make a key file wrapping `master` under `password`.
pub fn create(master: &MasterKey, password: &[u8], kdf: KdfParams, created_ns: i64, label: &str) -> Result<Vec<u8>> {
    let mut salt = [0u8; 32];
    random_bytes(&mut salt);
    let wrap = kdf.derive(password, &salt)?;
    let mut e = Enc::with_capacity(256);
    e.raw(MAGIC).u8(1).u8(1).u16(0).u32(kdf.m_cost).u32(kdf.t_cost).u32(kdf.p_cost).raw(&salt);
    debug_assert_eq!(e.buf.len(), PREFIX_LEN);
    let mut plain = Enc::with_capacity(64);
    plain.raw(&master.enc).raw(&master.idk);
    let prefix = e.buf.clone();
    Cipher::new(&wrap).seal_into(&prefix, &plain.buf, &mut e.buf);
    let mut meta = Enc::with_capacity(64);
    meta.i64(created_ns).bytes16(label.as_bytes())?;
    master.object_cipher().seal_into(&prefix, &meta.buf, &mut e.buf);
    Ok(e.buf)
}

/// Read the clear part of a key file.
pub fn info(bytes: &[u8]) -> Result<KeyFileInfo> {
    let mut d = Dec::new(bytes, "key file");
    if d.take(8)? != MAGIC {
        return Err(Error::corrupt("key file", "bad magic"));
    }
    let version = d.u8()?;
    if version > 1 {
        return Err(Error::UnsupportedVersion { found: version.into(), supported: 1 });
    }
    if version != 1 {
        return Err(Error::corrupt("key file", format!("key file version {version} is unknown to this ferry")));
    }
    let kdf = d.u8()?;
    if kdf != 1 {
        return Err(Error::corrupt("key file", format!("unknown key derivation function {kdf}")));
    }
    d.u16()?;
    let kdf = KdfParams { m_cost: d.u32()?, t_cost: d.u32()?, p_cost: d.u32()? };
    // Refuse absurd costs before spending memory or time on them (a hostile key file could ask
    // for TiBs, or minutes per try). Checked in an order that cannot overflow.
    if kdf.p_cost == 0
        || kdf.p_cost > MAX_P_COST
        || kdf.t_cost == 0
        || kdf.t_cost > MAX_T_COST
        || kdf.m_cost > MAX_M_COST
        || kdf.m_cost < 8 * kdf.p_cost
        || kdf.work() > MAX_WORK
    {
        return Err(Error::corrupt("key file", format!("unreasonable argon2 parameters {kdf:?}")));
    }
    Ok(KeyFileInfo { kdf })
}

const WRAPPED_LEN: usize = 12 + 64 + 16;

/// Ceilings a reader enforces before running Argon2 (FORMAT.md §4.5): 1 GiB of memory, 16
/// passes, 16 lanes, and 4 GiB-passes of work (memory × passes) in all: at most a few seconds
/// and 1 GiB for any key file, where the format once allowed 4 GiB and minutes.
pub(crate) const MAX_M_COST: u32 = 1 << 20;
pub(crate) const MAX_T_COST: u32 = 16;
pub(crate) const MAX_P_COST: u32 = 16;
pub(crate) const MAX_WORK: u64 = 4 << 20;

/// Unlock a key file. `Ok(None)` when the password does not open it.
pub fn open(bytes: &[u8], password: &[u8]) -> Result<Option<KeyFileContent>> {
    let info = info(bytes)?;
    if bytes.len() < PREFIX_LEN + WRAPPED_LEN {
        return Err(Error::corrupt("key file", "truncated"));
    }
    let salt: [u8; 32] = bytes[24..56].try_into().expect("32 bytes");
    let wrap = info.kdf.derive(password, &salt)?;
    let Ok(plain) =
        Cipher::new(&wrap).open(&bytes[..PREFIX_LEN], &bytes[PREFIX_LEN..PREFIX_LEN + WRAPPED_LEN], "key file")
    else {
        return Ok(None);
    };
    let enc: [u8; 32] = plain[..32].try_into().expect("32");
    let idk: [u8; 32] = plain[32..64].try_into().expect("32");
    let master = MasterKey::from_bytes(enc, idk);
    let (created_ns, label) = meta(bytes, &master)?;
    Ok(Some(KeyFileContent { master, created_ns, label }))
}

/// Read a key file's creation time and label with the master key (from any unlocked session).
pub fn meta(bytes: &[u8], master: &MasterKey) -> Result<(i64, String)> {
    if bytes.len() < PREFIX_LEN + WRAPPED_LEN {
        return Err(Error::corrupt("key file", "truncated"));
    }
    let plain = master.object_cipher().open(&bytes[..PREFIX_LEN], &bytes[PREFIX_LEN + WRAPPED_LEN..], "key file")?;
    let mut d = Dec::new(&plain, "key file");
    Ok((d.i64()?, d.string16()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_unwraps_and_rejects_wrong_password() {
        let mk = MasterKey::generate();
        let kf = create(&mk, b"secret", KdfParams::insecure_for_tests(), 42, "host@user").unwrap();
        let c = open(&kf, b"secret").unwrap().unwrap();
        assert_eq!(c.master, mk);
        assert_eq!(c.created_ns, 42);
        assert_eq!(c.label, "host@user");
        assert!(open(&kf, b"wrong").unwrap().is_none());
    }

    #[test]
    fn weakened_parameters_do_not_unlock() {
        let mk = MasterKey::generate();
        let mut kf = create(&mk, b"pw", KdfParams { m_cost: 128, t_cost: 2, p_cost: 1 }, 0, "").unwrap();
        kf[16] = 1; // t_cost 2 -> 1: the derived key differs and the prefix is authenticated
        assert!(open(&kf, b"pw").unwrap().is_none());
    }

    #[test]
    fn ceilings_are_checked_without_overflow() {
        let mk = MasterKey::generate();
        let kf = create(&mk, b"pw", KdfParams::insecure_for_tests(), 0, "").unwrap();
        let with = |m: u32, t: u32, p: u32| {
            let mut k = kf.clone();
            k[12..16].copy_from_slice(&m.to_le_bytes());
            k[16..20].copy_from_slice(&t.to_le_bytes());
            k[20..24].copy_from_slice(&p.to_le_bytes());
            info(&k)
        };
        // A lane count whose `8 * p` overflows u32 must be refused, not wrap or panic.
        assert!(with(64, 1, u32::MAX).unwrap_err().is_corrupt());
        assert!(with(64, 1, 0x2000_0001).unwrap_err().is_corrupt());
        assert!(with(MAX_M_COST + 1, 1, 1).unwrap_err().is_corrupt());
        assert!(with(MAX_M_COST, MAX_T_COST, 1).unwrap_err().is_corrupt(), "over the work ceiling");
        assert!(with(MAX_M_COST, 4, 1).is_ok());
        assert!(with(32 << 10, 4, 1).is_ok(), "the default cost");
    }

    #[test]
    fn hostile_cost_is_refused() {
        let mk = MasterKey::generate();
        let mut kf = create(&mk, b"pw", KdfParams::insecure_for_tests(), 0, "").unwrap();
        kf[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(open(&kf, b"pw").unwrap_err().is_corrupt());
    }
}
