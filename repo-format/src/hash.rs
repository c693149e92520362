//! BLAKE3 for every id in the repository (FORMAT.md §2), with the fastest path this CPU has.
//!
//! The blake3 crate is the implementation on x86_64 (SSE4.1/AVX2/AVX-512) and aarch64 (NEON).
//! On ppc64le and s390x it has no vector code, so there `tree` hashes whole chunks four at a time
//! through the C kernel in `kernel` (VSX on POWER8+, the vector facility on z13+) when the CPU
//! has it, and the crate's portable code is the fallback. Both give BLAKE3's bytes: the ids are
//! the format, and the tests compare every path with the crate.
//!
//! `FERRY_BLAKE3=crate` forces the crate, `FERRY_BLAKE3=kernel4` forces the 4-way kernel where
//! it can run (on x86_64 and aarch64 too, for the tests); read once per process.

// The FFI to the C kernel and the CPU check (getauxval).
#[allow(unsafe_code)]
mod kernel;
mod tree;

#[cfg(any(target_arch = "powerpc64", target_arch = "s390x"))]
pub(crate) use kernel::hwcap;

use std::sync::OnceLock;

use tree::Kernel;

#[derive(Clone, Copy)]
enum Engine {
    Crate,
    Kernel(Kernel, &'static str),
}

fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    *ENGINE.get_or_init(|| {
        let forced = std::env::var("FERRY_BLAKE3").unwrap_or_default();
        let kernel = kernel::available().or_else(|| (forced == "kernel4").then(kernel::base_isa).flatten());
        match (forced.as_str(), kernel) {
            ("crate", _) | (_, None) => Engine::Crate,
            (_, Some((k, name))) => Engine::Kernel(k, name),
        }
    })
}

/// The code path in use, for `ferry version` and `ferry bench`.
pub fn path() -> &'static str {
    match engine() {
        Engine::Kernel(_, name) => name,
        Engine::Crate => crate_path(),
    }
}

fn crate_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
            return "avx512 (blake3 crate)";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2 (blake3 crate)";
        }
        if std::arch::is_x86_feature_detected!("sse4.1") {
            return "sse4.1 (blake3 crate)";
        }
        "sse2 (blake3 crate)"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon (blake3 crate)"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "portable (blake3 crate)"
    }
}

/// Unkeyed BLAKE3, 32 bytes.
pub fn hash(bytes: &[u8]) -> [u8; 32] {
    match engine() {
        Engine::Crate => *blake3::hash(bytes).as_bytes(),
        Engine::Kernel(k, _) => tree::Hasher::new(Some(k)).update(bytes).finalize(),
    }
}

/// Keyed BLAKE3, 32 bytes.
pub fn keyed_hash(key: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    match engine() {
        Engine::Crate => *blake3::keyed_hash(key, bytes).as_bytes(),
        Engine::Kernel(k, _) => tree::Hasher::new_keyed(key, Some(k)).update(bytes).finalize(),
    }
}

/// Incremental unkeyed BLAKE3 (a pack's id is the hash of bytes written one blob at a time).
pub enum Hasher {
    Crate(Box<blake3::Hasher>),
    Kernel(tree::Hasher),
}

impl Hasher {
    pub fn new() -> Hasher {
        match engine() {
            Engine::Crate => Hasher::Crate(Box::new(blake3::Hasher::new())),
            Engine::Kernel(k, _) => Hasher::Kernel(tree::Hasher::new(Some(k))),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        match self {
            Hasher::Crate(h) => {
                h.update(bytes);
            }
            Hasher::Kernel(h) => {
                h.update(bytes);
            }
        }
        self
    }

    pub fn finalize(&self) -> [u8; 32] {
        match self {
            Hasher::Crate(h) => *h.finalize().as_bytes(),
            Hasher::Kernel(h) => h.finalize(),
        }
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hasher::Crate(_) => "Hasher(blake3 crate)",
            Hasher::Kernel(_) => "Hasher(4-way kernel)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_in_use_gives_the_crate_s_bytes() {
        let d: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
        let key = [9u8; 32];
        assert_eq!(hash(&d), *blake3::hash(&d).as_bytes(), "{}", path());
        assert_eq!(keyed_hash(&key, &d), *blake3::keyed_hash(&key, &d).as_bytes(), "{}", path());
        let mut h = Hasher::new();
        for p in d.chunks(33_333) {
            h.update(p);
        }
        assert_eq!(h.finalize(), *blake3::hash(&d).as_bytes(), "{}", path());
    }
}
