//! The snapshot payload (`Snapshot::decode`). Extension bytes and a shorter summary are allowed,
//! so the encoding is not canonical: a decoded snapshot must re-encode to something that decodes
//! to the same snapshot.
#![no_main]

use ferry_fuzz::bounded;
use libfuzzer_sys::fuzz_target;
use repo_format::Snapshot;

fuzz_target!(|data: &[u8]| {
    match bounded("Snapshot::decode", data.len(), 16, || Snapshot::decode(data)) {
        Ok(s) => assert_eq!(Snapshot::decode(&s.encode().expect("a decoded snapshot encodes")).unwrap(), s),
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
});
