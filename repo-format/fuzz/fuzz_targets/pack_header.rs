//! The pack header (`parse_header`). Input: the length of the blob area as `u64` LE, a mode byte,
//! then the header. Even mode: the header as read from storage. Odd mode: the
//! rest is a header payload, sealed here under the pack key as a writer does. Entries that parse
//! must tile the blob area exactly, each at the offset where the previous one ends (FORMAT.md
//! 5.5), and re-encode to the payload (which has no room for extensions).
#![no_main]

use ferry_fuzz::{SALT, bounded, check_tiling, master};
use libfuzzer_sys::fuzz_target;
use repo_format::fuzzing::pack_header_seal;
use repo_format::{Error, PackEntry, parse_header};

fn payload_of(entries: &[PackEntry]) -> Vec<u8> {
    let mut p = (entries.len() as u32).to_le_bytes().to_vec();
    for e in entries {
        p.push(e.kind as u8);
        p.extend_from_slice(&e.id.0.0);
        p.extend_from_slice(&e.stored_len.to_le_bytes());
        p.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<8>() else { return };
    let blobs_len = u64::from_le_bytes(*len);
    let Some((&mode, header)) = rest.split_first() else { return };
    let mk = master();
    if mode % 2 == 0 {
        match bounded("parse_header", header.len(), 4, || parse_header(&mk, &SALT, header, blobs_len)) {
            Ok(entries) => check_tiling(&entries, blobs_len),
            // A header of a newer format version is refused as such (FORMAT.md 5.2).
            Err(e) => assert!(e.is_corrupt() || matches!(e, Error::UnsupportedVersion { .. }), "{e}"),
        }
        return;
    }
    let sealed = pack_header_seal(&mk, &SALT, header);
    match bounded("parse_header", sealed.len(), 4, || parse_header(&mk, &SALT, &sealed, blobs_len)) {
        Ok(entries) => {
            check_tiling(&entries, blobs_len);
            assert_eq!(payload_of(&entries), header, "the pack header encoding is canonical");
        }
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
});
