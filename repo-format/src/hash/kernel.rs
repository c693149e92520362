//! The 4-way chunk kernel of csrc/blake3_hash4.c, and whether this CPU may run it.
//!
//! build.rs compiles the C file for every target: for ppc64le with `-mcpu=power8` (VSX), for
//! s390x with `-march=z13` (vector facility), elsewhere with the target's defaults (there only
//! the tests call it, so the native suite exercises the same C as the Power and Z builds). The
//! CPU is asked at run time through the auxiliary vector: a binary built for the base ISA runs
//! the kernel where the CPU has it and the portable code where it does not.

use super::tree::{CHUNK_LEN, Kernel};

unsafe extern "C" {
    fn ferry_blake3_hash4(inputs: *const *const u8, key: *const u32, counter: u64, flags: u32, out: *mut u8);
    fn ferry_blake3_parent4(blocks: *const *const u8, key: *const u32, flags: u32, out: *mut u8);
}

/// The C kernel behind the `Hash4` signature (`tree::Hash4`).
///
/// # Safety
/// The CPU must have the vector unit the kernel was compiled for (`available()`).
unsafe fn hash4_c(inputs: &[&[u8; CHUNK_LEN]; 4], key: &[u32; 8], counter: u64, flags: u32, out: &mut [u8; 128]) {
    let ptrs: [*const u8; 4] = std::array::from_fn(|i| inputs[i].as_ptr());
    // Safety: four valid 1024-byte inputs, 8 key words, 128 writable bytes; the caller vouches
    // for the CPU.
    unsafe { ferry_blake3_hash4(ptrs.as_ptr(), key.as_ptr(), counter, flags, out.as_mut_ptr()) }
}

/// The C kernel behind the `Parent4` signature.
///
/// # Safety
/// As `hash4_c`.
unsafe fn parent4_c(blocks: &[&[u8; 64]; 4], key: &[u32; 8], flags: u32, out: &mut [u8; 128]) {
    let ptrs: [*const u8; 4] = std::array::from_fn(|i| blocks[i].as_ptr());
    // Safety: four valid 64-byte blocks, 8 key words, 128 writable bytes.
    unsafe { ferry_blake3_parent4(ptrs.as_ptr(), key.as_ptr(), flags, out.as_mut_ptr()) }
}

const C_KERNEL: Kernel = Kernel { hash4: hash4_c, parent4: parent4_c };

/// Everywhere but Power and Z the C is compiled for the target's base ISA and any CPU runs it:
/// used only when forced (`FERRY_BLAKE3=kernel4`), so the native tests exercise the same C.
pub(crate) fn base_isa() -> Option<(Kernel, &'static str)> {
    if cfg!(any(target_arch = "powerpc64", target_arch = "s390x")) {
        None
    } else {
        Some((C_KERNEL, "4-way C kernel, generic vectors (forced)"))
    }
}

/// The kernel for the tests, where this CPU runs it.
#[cfg(test)]
pub(crate) fn for_tests() -> Option<Kernel> {
    available().or_else(base_isa).map(|k| k.0)
}

/// What the kernel is on this architecture, and whether this CPU runs it.
pub(crate) fn available() -> Option<(Kernel, &'static str)> {
    #[cfg(target_arch = "powerpc64")]
    {
        // PPC_FEATURE_HAS_VSX (AT_HWCAP) and PPC_FEATURE2_ARCH_2_07, POWER8 (AT_HWCAP2).
        const HAS_VSX: libc_ulong = 0x0000_0080;
        const ARCH_2_07: libc_ulong = 0x8000_0000;
        let (hw, hw2) = (hwcap(AT_HWCAP), hwcap(AT_HWCAP2));
        if hw & HAS_VSX != 0 && hw2 & ARCH_2_07 != 0 {
            return Some((C_KERNEL, "vsx (power8), 4-way"));
        }
        None
    }
    #[cfg(target_arch = "s390x")]
    {
        // HWCAP_S390_VXRS: the vector facility (z13).
        const VXRS: libc_ulong = 1 << 11;
        if hwcap(AT_HWCAP) & VXRS != 0 {
            return Some((C_KERNEL, "z vector (z13), 4-way"));
        }
        None
    }
    #[cfg(not(any(target_arch = "powerpc64", target_arch = "s390x")))]
    {
        None
    }
}

#[cfg(any(target_arch = "powerpc64", target_arch = "s390x"))]
#[allow(non_camel_case_types)]
type libc_ulong = std::ffi::c_ulong;
#[cfg(any(target_arch = "powerpc64", target_arch = "s390x"))]
const AT_HWCAP: libc_ulong = 16;
#[cfg(target_arch = "powerpc64")]
const AT_HWCAP2: libc_ulong = 26;

/// `getauxval(kind)`: the CPU's capability bits (also read by crypto/gcm.rs).
#[cfg(any(target_arch = "powerpc64", target_arch = "s390x"))]
pub(crate) fn hwcap(kind: libc_ulong) -> libc_ulong {
    unsafe extern "C" {
        fn getauxval(kind: std::ffi::c_ulong) -> std::ffi::c_ulong;
    }
    // Safety: getauxval only reads the process's auxiliary vector; 0 when absent.
    unsafe { getauxval(kind) }
}

#[cfg(test)]
mod tests {
    use super::super::tree::Hasher;

    #[test]
    fn the_cpu_check_agrees_with_what_the_runner_promises() {
        // As crypto::gcm's: FERRY_EXPECT_KERNEL comes from crossbuild/test.sh's CPU model.
        eprintln!("BLAKE3 kernel here: {:?}", super::available().map(|k| k.1));
        match std::env::var("FERRY_EXPECT_KERNEL").as_deref() {
            Ok("1") => assert!(super::available().is_some(), "the CPU has the vector unit but the kernel is not used"),
            Ok("0") => assert!(super::available().is_none(), "the CPU lacks the vector unit but the kernel is chosen"),
            _ => {}
        }
    }

    #[test]
    fn the_c_kernel_matches_the_crate() {
        let Some(k) = super::for_tests() else {
            eprintln!("this CPU has no vector unit for the kernel: not run");
            return;
        };
        let key = [0x17u8; 32];
        let d: Vec<u8> = (0..(1 << 20) + 3000).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for n in [4096, 4097, 8192, 12_289, 65_536, 100_000, 1 << 20, d.len()] {
            let k = Some(k);
            assert_eq!(Hasher::new(k).update(&d[..n]).finalize(), *blake3::hash(&d[..n]).as_bytes(), "{n}");
            assert_eq!(
                Hasher::new_keyed(&key, k).update(&d[..n]).finalize(),
                *blake3::keyed_hash(&key, &d[..n]).as_bytes(),
                "keyed {n}"
            );
        }
    }

    #[test]
    fn a_chunk_counter_past_32_bits_carries_into_the_high_word() {
        let Some(k) = super::for_tests() else { return };
        // The kernel builds each lane's counter from 64 bits: lanes 2^32-2 .. 2^32+1 straddle the carry.
        let chunks: Vec<[u8; 1024]> = (0..4u8).map(|i| [i.wrapping_mul(37); 1024]).collect();
        let refs: [&[u8; 1024]; 4] = std::array::from_fn(|i| &chunks[i]);
        let key = [7u32; 8];
        let base = (1u64 << 32) - 2;
        let mut out = [0u8; 128];
        // Safety: for_tests gives the kernel only where this CPU runs it.
        unsafe { (k.hash4)(&refs, &key, base, 16, &mut out) };
        for (i, cv) in out.chunks_exact(32).enumerate() {
            let want = super::super::tree::chunk_cv(refs[i], base + i as u64, &key, 16);
            let want: Vec<u8> = want.iter().flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(cv, &want[..], "lane {i}");
        }
    }
}
