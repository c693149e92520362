//! Key files (`keys/<id>`): `keyfile::info` on any bytes, and `keyfile::open` with a fixed
//! password when the decoded Argon2 cost is tiny (so the fuzzer does not spend its time in the
//! KDF). First byte even: the rest is a key file as read from storage. Odd: the rest chooses tiny
//! costs, a creation time, a label and a bit to flip; a key file made with them must open to
//! exactly what was put in, and the flipped copy must not open.
#![no_main]

use ferry_fuzz::{PASSWORD, bounded, le32, master};
use libfuzzer_sys::fuzz_target;
use repo_format::fuzzing::{keyfile_create, keyfile_info, keyfile_open};
use repo_format::{KdfParams, Result};

/// Costs small enough to run Argon2 on every input (at most 64 KiB, 2 passes).
fn tiny(k: &KdfParams) -> bool {
    k.m_cost <= 64 && k.t_cost <= 2
}

/// `keyfile_info`, with a bound on the heap it may hold.
fn info(bytes: &[u8]) -> Option<Result<KdfParams>> {
    Some(bounded("keyfile::info", bytes.len(), 1, || keyfile_info(bytes)))
}

fn stored(bytes: &[u8]) {
    let Some(info) = info(bytes) else { return };
    let kdf = match info {
        Ok(kdf) => kdf,
        // A newer key-file version is "unsupported" (upgrade ferry), anything else corrupt.
        Err(e) => {
            let newer = matches!(e, repo_format::Error::UnsupportedVersion { .. }) && bytes.get(8).is_some_and(|v| *v > 1);
            return assert!(e.is_corrupt() || newer, "{e}");
        }
    };
    // FORMAT.md 4.5: refused before Argon2 runs (1 GiB, 16 passes, 16 lanes, 4 GiB-passes).
    assert!(kdf.m_cost <= 1 << 20 && (1..=16).contains(&kdf.t_cost) && (1..=16).contains(&kdf.p_cost), "{kdf:?}");
    assert!(u64::from(kdf.m_cost) * u64::from(kdf.t_cost) <= 4 << 20, "{kdf:?}");
    assert!(kdf.m_cost >= 8 * kdf.p_cost, "{kdf:?}: argon2 needs 8 KiB per lane");
    if tiny(&kdf) {
        match keyfile_open(bytes, PASSWORD) {
            // Only a key file made with `PASSWORD` opens (the seeds hold one).
            Ok(_) => {}
            Err(e) => assert!(e.is_corrupt(), "a key file that info accepts fails with {e}"),
        }
    }
}

fn round_trip(b: &[u8]) {
    let Some(&[pm, tm, mm]) = b.get(..3).map(|s| <&[u8; 3]>::try_from(s).unwrap()) else { return };
    let p_cost = 1 + u32::from(pm % 2);
    let kdf = KdfParams { m_cost: 8 * p_cost + u32::from(mm % 25), t_cost: 1 + u32::from(tm % 2), p_cost };
    let created = i64::from(le32(b, 3).unwrap_or(0) as i32) * 1_000_000_007;
    let flip = le32(b, 7);
    let label = String::from_utf8_lossy(b.get(11..).unwrap_or_default());
    let mk = master();
    let kf = keyfile_create(&mk, PASSWORD, kdf, created, &label).expect("create with tiny costs");
    assert_eq!(kf.len(), 186 + label.len(), "FORMAT.md 5.1: a key file is 186 + len(label) bytes");
    assert_eq!(keyfile_info(&kf).unwrap(), kdf);
    let (m, c, l) = keyfile_open(&kf, PASSWORD).unwrap().expect("the password opens its key file");
    assert!(m == mk && c == created && l == label);
    if let Some(f) = flip {
        let mut bad = kf.clone();
        let i = f as usize % bad.len();
        bad[i] ^= 1 << (f >> 29);
        if let Some(Ok(k)) = info(&bad)
            && tiny(&k)
        {
            match keyfile_open(&bad, PASSWORD) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("a key file with byte {i} flipped still opens"),
                Err(e) => assert!(e.is_corrupt(), "{e}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 { stored(rest) } else { round_trip(rest) }
});
