//! The config payload (`RepoConfig::decode`). A decoded config is valid, and its encoding is
//! exactly the 65 bytes it was decoded from (the rest are ignored extension bytes).
#![no_main]

use ferry_fuzz::bounded;
use libfuzzer_sys::fuzz_target;
use repo_format::fuzzing::{config_decode, config_encode};

fuzz_target!(|data: &[u8]| {
    match bounded("config", data.len(), 1, || config_decode(data)) {
        Ok(c) => {
            c.validate().expect("a decoded config is valid");
            let e = config_encode(&c);
            assert_eq!(e, data[..65], "the config encoding is canonical");
            assert_eq!(config_decode(&e).unwrap(), c);
        }
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
});
