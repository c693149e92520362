//! Compiles csrc/blake3_hash4.c, the 4-way BLAKE3 chunk kernel (src/hash/kernel.rs), and
//! csrc/gcm.c, GHASH and POWER8 AES (src/crypto/gcm.rs): with the vector ISA of POWER8 on
//! ppc64le (-mcpu=power8 includes its crypto instructions) and of z13 on s390x (the code checks
//! the CPU before calling it), with the target's defaults elsewhere (only the tests call them
//! there).
fn main() {
    println!("cargo:rerun-if-changed=csrc/blake3_hash4.c");
    println!("cargo:rerun-if-changed=csrc/gcm.c");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let mut build = cc::Build::new();
    build.file("csrc/blake3_hash4.c").file("csrc/gcm.c").opt_level(3).warnings(true);
    match arch.as_str() {
        "powerpc64" => {
            build.flag("-mcpu=power8").flag("-mvsx");
        }
        "s390x" => {
            build.flag("-march=z13").flag("-mzvector");
        }
        _ => {}
    }
    build.compile("ferry_kernels");
}
