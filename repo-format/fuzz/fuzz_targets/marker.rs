//! The garbage-collection marker payload (`Marker::decode`). It is consumed exactly, so a decoded
//! marker re-encodes to exactly its input.
#![no_main]

use ferry_fuzz::bounded;
use libfuzzer_sys::fuzz_target;
use repo_format::Marker;

fuzz_target!(|data: &[u8]| {
    match bounded("Marker::decode", data.len(), 2, || Marker::decode(data)) {
        Ok(m) => assert_eq!(m.encode(), data, "the marker encoding is canonical"),
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
});
