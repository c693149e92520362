//! A whole pack in memory (`parse_pack`). Input: a mode byte, then either (even mode) the pack as
//! read from storage, or (odd mode) `blob area length u16 LE ‖ header
//! length adjustment i8 ‖ blob area ‖ header payload`: the pack is assembled here as a writer
//! does (header sealed under the pack key, trailer with salt, header length and magic), with the
//! stored header length off by the adjustment. It parses only when the adjustment is 0, and then
//! its entries tile the blob area exactly.
#![no_main]

use ferry_fuzz::{SALT, bounded, check_tiling, master};
use libfuzzer_sys::fuzz_target;
use repo_format::fuzzing::pack_header_seal;
use repo_format::{Error, TRAILER_LEN, parse_pack, parse_trailer};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mk = master();
    if mode % 2 == 0 {
        match bounded("parse_pack", rest.len(), 4, || parse_pack(&mk, rest)) {
            Ok((salt, entries)) => {
                let (_, hlen) = parse_trailer(&rest[rest.len() - TRAILER_LEN..]).unwrap();
                assert_eq!(salt, rest[rest.len() - 44..][..32]);
                check_tiling(&entries, (rest.len() - TRAILER_LEN - hlen as usize) as u64);
            }
            // A header of a newer format version is refused as such (FORMAT.md 5.2).
            Err(e) => assert!(e.is_corrupt() || matches!(e, Error::UnsupportedVersion { .. }), "{e}"),
        }
        return;
    }
    let [l0, l1, adjust, rest @ ..] = rest else { return };
    let n = usize::from(u16::from_le_bytes([*l0, *l1])).min(rest.len());
    let (blobs, payload) = rest.split_at(n);
    let header = pack_header_seal(&mk, &SALT, payload);
    let mut pack = blobs.to_vec();
    pack.extend_from_slice(&header);
    pack.extend_from_slice(&SALT);
    pack.extend_from_slice(&(header.len() as u32).wrapping_add(*adjust as i8 as u32).to_le_bytes());
    pack.extend_from_slice(b"FERRYPAK");
    match bounded("parse_pack", pack.len(), 4, || parse_pack(&mk, &pack)) {
        Ok((salt, entries)) => {
            assert_eq!(*adjust, 0, "a pack whose trailer misstates the header length parsed");
            assert_eq!(salt, SALT);
            check_tiling(&entries, blobs.len() as u64);
        }
        // A misstated header length can point at blob bytes that read as a newer version's
        // header: "unsupported" is then the right answer, as for any header.
        Err(e) => assert!(e.is_corrupt() || (*adjust != 0 && matches!(e, Error::UnsupportedVersion { .. })), "{e}"),
    }
});
