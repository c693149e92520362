//! Names in a storage listing (`layout::id_of`): a name is ours exactly when its last path
//! component is 64 lowercase hex characters, and then the id is what they spell. Every path the
//! layout gives an id lists back as that id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use repo_format::fuzzing::listing_id;
use repo_format::{FileKind, Id, path_of};

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data) {
        let last = name.rsplit('/').next().unwrap_or(name);
        let ours = last.len() == 64 && last.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        match listing_id(name) {
            Some(id) => assert!(ours && id.to_hex() == last, "{name:?} listed as {id}"),
            None => assert!(!ours, "{name:?} is ours but was ignored"),
        }
    }
    if let Some(b) = data.first_chunk::<32>() {
        let id = Id(*b);
        for kind in [FileKind::Key, FileKind::Snapshot, FileKind::Index, FileKind::Pack] {
            assert_eq!(listing_id(&path_of(kind, &id)), Some(id), "{kind}");
        }
    }
});
