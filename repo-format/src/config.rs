//! The repository config: identity and the parameters every writer must share.
//!
//! Stored as the sealed object `config` (type 1). Payload, little-endian:
//! `repo id[32] ‖ created ns i64 ‖ chunker u8 (1 = FastCDC 2020) ‖ min u32 ‖ avg u32 ‖ max u32 ‖
//! fixed chunk size u32 ‖ zstd level i32 ‖ pack size u32`, then (an addition of format
//! version 2, ignored by version 1 readers) `gc grace ns u64`, then bytes that newer versions
//! may add and this version ignores. A config without the grace field has the default grace.

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};
use crate::id::Id;

/// Content-defined chunking parameters (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: see FORMAT.md for the measurement behind it.
    fn default() -> Self {
        ChunkerParams { min: 256 << 10, avg: 1 << 20, max: 4 << 20 }
    }
}

/// The repository-wide parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    pub repo_id: Id,
    pub created_ns: i64,
    pub chunker: ChunkerParams,
    /// Chunk size for disk images and block devices (aligned fixed-size chunks).
    pub fixed_chunk_size: u32,
    /// zstd level for new blobs (0 = store raw).
    pub compression_level: i32,
    /// Target size of a pack in bytes.
    pub pack_size: u32,
    /// Garbage collection's grace period (FORMAT.md §9), nanoseconds: longer than any backup
    /// may run. A backup that ran longer re-checks its snapshot's blobs before writing it.
    pub gc_grace_ns: u64,
}

/// The grace period of a config that does not state one: 24 hours.
pub const DEFAULT_GC_GRACE_NS: u64 = 24 * 3600 * 1_000_000_000;

impl RepoConfig {
    /// A config with the default parameters and a random id.
    pub fn new(created_ns: i64) -> Self {
        let mut id = [0u8; 32];
        crate::crypto::random_bytes(&mut id);
        RepoConfig {
            repo_id: Id(id),
            created_ns,
            chunker: ChunkerParams::default(),
            fixed_chunk_size: 256 << 10,
            compression_level: 3,
            pack_size: 32 << 20,
            gc_grace_ns: DEFAULT_GC_GRACE_NS,
        }
    }

    /// Check the parameters are usable; `Invalid` names the bad one.
    pub fn validate(&self) -> Result<()> {
        let c = &self.chunker;
        // fastcdc 2020 limits: min 64 B..1 MiB, avg 256 B..4 MiB, max 1 KiB..16 MiB.
        let sizes_ok = (64..=1 << 20).contains(&c.min)
            && (256..=4 << 20).contains(&c.avg)
            && (1024..=16 << 20).contains(&c.max)
            && c.min <= c.avg
            && c.avg <= c.max
            && [c.min, c.avg, c.max].iter().all(|v| v % 2 == 0);
        if !sizes_ok {
            return Err(Error::Invalid(format!("chunker sizes {c:?} are out of range (even sizes, min ≤ avg ≤ max)")));
        }
        if !self.fixed_chunk_size.is_power_of_two() || !(4096..=16 << 20).contains(&self.fixed_chunk_size) {
            return Err(Error::Invalid(format!(
                "fixed chunk size {} must be a power of two between 4 KiB and 16 MiB",
                self.fixed_chunk_size
            )));
        }
        if !(0..=22).contains(&self.compression_level) {
            return Err(Error::Invalid(format!("zstd level {} is not in 0..=22", self.compression_level)));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(Error::Invalid(format!("pack size {} must be between 1 MiB and 1 GiB", self.pack_size)));
        }
        Ok(())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(80);
        e.id(&self.repo_id)
            .i64(self.created_ns)
            .u8(1)
            .u32(self.chunker.min)
            .u32(self.chunker.avg)
            .u32(self.chunker.max)
            .u32(self.fixed_chunk_size)
            .u32(self.compression_level as u32)
            .u32(self.pack_size)
            .u64(self.gc_grace_ns);
        e.buf
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        let mut d = Dec::new(b, "config");
        let repo_id = d.id()?;
        let created_ns = d.i64()?;
        let kind = d.u8()?;
        if kind != 1 {
            return Err(Error::corrupt("config", format!("unknown chunker type {kind}")));
        }
        let chunker = ChunkerParams { min: d.u32()?, avg: d.u32()?, max: d.u32()? };
        let cfg = RepoConfig {
            repo_id,
            created_ns,
            chunker,
            fixed_chunk_size: d.u32()?,
            compression_level: d.u32()? as i32,
            pack_size: d.u32()?,
            gc_grace_ns: if d.remaining() >= 8 { d.u64()? } else { DEFAULT_GC_GRACE_NS },
        };
        cfg.validate().map_err(|e| Error::corrupt("config", e.to_string()))?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ignores_trailing_extension() {
        let c = RepoConfig::new(123);
        let mut b = c.encode();
        assert_eq!(RepoConfig::decode(&b).unwrap(), c);
        b.extend_from_slice(b"future fields");
        assert_eq!(RepoConfig::decode(&b).unwrap(), c);
        assert!(RepoConfig::decode(&b[..20]).unwrap_err().is_corrupt());
        // A version 1 config (no grace field) has the default grace.
        let mut v1 = c.clone();
        v1.gc_grace_ns = 5;
        let b = v1.encode();
        assert_eq!(RepoConfig::decode(&b[..b.len() - 8]).unwrap().gc_grace_ns, DEFAULT_GC_GRACE_NS);
        assert_eq!(RepoConfig::decode(&b).unwrap().gc_grace_ns, 5);
    }

    #[test]
    fn validation_names_the_parameter() {
        let mut c = RepoConfig::new(0);
        c.fixed_chunk_size = 3000;
        assert!(c.validate().unwrap_err().to_string().contains("fixed chunk size"));
    }
}
