//! One pass of a primitive over N bytes, for counting guest instructions under qemu
//! (benches/insn-count.sh runs it twice, at N and at 0, and takes the difference).
//!
//!   insn_count baseline|hash|keyed|aes-gcm BYTES   (baseline: only make the input)
//! The BLAKE3 path follows FERRY_BLAKE3 (repo_format::hash), AES-GCM's FERRY_AES
//! (repo_format::Aead); stdout names the path taken.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (what, n) = match args.as_slice() {
        [_, w, n] => (w.as_str(), n.parse::<usize>().expect("BYTES is a number")),
        _ => {
            eprintln!("usage: insn_count baseline|hash|keyed|aes-gcm BYTES");
            std::process::exit(2)
        }
    };
    let data: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    let out = match what {
        "baseline" => std::hint::black_box(&data).last().copied().unwrap_or(0),
        "hash" => repo_format::hash::hash(&data)[0],
        "keyed" => repo_format::hash::keyed_hash(&[7; 32], &data)[0],
        "aes-gcm" => {
            let mut sealed = Vec::with_capacity(n + repo_format::SEAL_OVERHEAD);
            repo_format::Aead::new(&[9u8; 32]).seal_into(b"", &data, &mut sealed);
            sealed[sealed.len() - 1]
        }
        _ => {
            eprintln!("unknown primitive {what:?}");
            std::process::exit(2)
        }
    };
    println!(
        "{what} {n} bytes via {}: {out:02x}",
        if what == "aes-gcm" {
            repo_format::aes_gcm_path()
        } else if what == "baseline" {
            "-"
        } else {
            repo_format::hash::path()
        }
    );
}
