//! The config payload (`RepoConfig::decode`). A decoded config is valid; its encoding is exactly
//! the 73 bytes it was decoded from (65 fixed, then the grace period; the rest are ignored
//! extension bytes), or, from a shorter version 1 payload, those 65 bytes and the default grace.
#![no_main]

use ferry_fuzz::bounded;
use libfuzzer_sys::fuzz_target;
use repo_format::DEFAULT_GC_GRACE_NS;
use repo_format::fuzzing::{config_decode, config_encode};

fuzz_target!(|data: &[u8]| {
    match bounded("config", data.len(), 1, || config_decode(data)) {
        Ok(c) => {
            c.validate().expect("a decoded config is valid");
            let e = config_encode(&c);
            if data.len() >= 73 {
                assert_eq!(e, data[..73], "the config encoding is canonical");
            } else {
                assert_eq!(e[..65], data[..65], "the config encoding is canonical");
                assert_eq!(c.gc_grace_ns, DEFAULT_GC_GRACE_NS, "a version 1 config has the default grace");
            }
            assert_eq!(config_decode(&e).unwrap(), c);
        }
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
});
