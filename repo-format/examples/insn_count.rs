//! One pass of a primitive over N bytes, for counting guest instructions under qemu
//! (benches/insn-count.sh runs it twice, at N and at 0, and takes the difference).
//!
//!   insn_count baseline|hash|keyed|aes-gcm BYTES   (baseline: only make the input)
//! The BLAKE3 path follows FERRY_BLAKE3 (repo_format::hash); stdout names the path taken.
use aes_gcm::aead::{AeadInOut, KeyInit};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (what, n) = match args.as_slice() {
        [_, w, n] => (w.as_str(), n.parse::<usize>().expect("BYTES is a number")),
        _ => {
            eprintln!("usage: insn_count baseline|hash|keyed|aes-gcm BYTES");
            std::process::exit(2)
        }
    };
    let mut data: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    let out = match what {
        "baseline" => std::hint::black_box(&data).last().copied().unwrap_or(0),
        "hash" => repo_format::hash::hash(&data)[0],
        "keyed" => repo_format::hash::keyed_hash(&[7; 32], &data)[0],
        "aes-gcm" => {
            let cipher = aes_gcm::Aes256Gcm::new(&aes_gcm::Key::<aes_gcm::Aes256Gcm>::from([9u8; 32]));
            let tag = cipher
                .encrypt_inout_detached(&aes_gcm::Nonce::from([1u8; 12]), b"", data.as_mut_slice().into())
                .expect("encrypt");
            tag[0]
        }
        _ => {
            eprintln!("unknown primitive {what:?}");
            std::process::exit(2)
        }
    };
    println!(
        "{what} {n} bytes via {}: {out:02x}",
        if what == "aes-gcm" {
            "aes-gcm crate (software)"
        } else if what == "baseline" {
            "-"
        } else {
            repo_format::hash::path()
        }
    );
}
