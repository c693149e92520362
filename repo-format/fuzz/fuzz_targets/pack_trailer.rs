//! The 44-byte clear pack trailer (`parse_trailer`): accepted exactly when it is 44 bytes ending
//! in the magic, and then it returns the salt and header length where FORMAT.md 5.5 puts them.
#![no_main]

use ferry_fuzz::le32;
use libfuzzer_sys::fuzz_target;
use repo_format::{TRAILER_LEN, parse_trailer};

fuzz_target!(|data: &[u8]| {
    match parse_trailer(data) {
        Ok((salt, hlen)) => {
            assert!(data.len() == TRAILER_LEN && &data[36..] == b"FERRYPAK");
            assert!(salt == data[..32] && Some(hlen) == le32(data, 32));
        }
        Err(e) => {
            assert!(e.is_corrupt(), "{e}");
            assert!(data.len() != TRAILER_LEN || &data[36..] != b"FERRYPAK");
        }
    }
});
