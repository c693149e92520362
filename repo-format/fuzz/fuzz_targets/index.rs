//! The index payload (`IndexFile::decode`), and the in-memory index built from it. The payload
//! has no room for extensions, so a decoded file re-encodes to exactly its input; every blob it
//! lists is then found in the built index under its kind.
#![no_main]

use ferry_fuzz::bounded;
use libfuzzer_sys::fuzz_target;
use repo_format::{Index, IndexFile};

fuzz_target!(|data: &[u8]| {
    let f = match bounded("IndexFile::decode", data.len(), 4, || IndexFile::decode(data)) {
        Ok(f) => f,
        Err(e) => return assert!(e.is_corrupt(), "{e}"),
    };
    assert_eq!(f.encode(), data, "the index encoding is canonical");
    let idx = bounded("Index::build", data.len(), 4, || Index::build([&f])).unwrap();
    let blobs: usize = f.packs.iter().map(|p| p.blobs.len()).sum();
    assert!(idx.len() <= blobs);
    assert_eq!(idx.packs().len(), f.packs.len());
    for p in &f.packs {
        for b in &p.blobs {
            let loc = idx.lookup(b.kind, &b.id).expect("every listed blob is indexed");
            assert_eq!(loc.kind, b.kind);
        }
    }
});
