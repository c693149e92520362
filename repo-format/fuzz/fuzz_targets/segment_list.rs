//! The payload of an indirect segment list (`decode_segment_list`): no room for extensions, so a
//! decoded list re-encodes to exactly its input.
#![no_main]

use ferry_fuzz::bounded;
use libfuzzer_sys::fuzz_target;
use repo_format::{decode_segment_list, encode_segment_list};

fuzz_target!(|data: &[u8]| {
    match bounded("decode_segment_list", data.len(), 16, || decode_segment_list(data)) {
        Ok(s) => assert_eq!(encode_segment_list(&s), data, "the segment list encoding is canonical"),
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
});
