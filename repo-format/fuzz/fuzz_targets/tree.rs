//! The tree payload (`Tree::decode`). Entries may carry extension bytes, so the encoding is not
//! canonical: a decoded tree must re-encode to something that decodes to the same tree and is no
//! longer than the input. Every node's name check runs (it must not panic on any name). The
//! same bytes as a directory's blob (`Directory::decode`): a tree decodes as before, a directory
//! index re-encodes exactly.
#![no_main]

use ferry_fuzz::bounded;
use libfuzzer_sys::fuzz_target;
use repo_format::{Directory, Node, Tree, encode_dir_index};

/// Known defect, fixed on the hardening branch: `Tree::decode` reserves `count` nodes up front,
/// with `count` bounded only by input bytes / 4, i.e. `size_of::<Node>() / 4` times the input.
/// Lower this to the generic 16 once that fix is merged.
const RATIO: usize = size_of::<Node>() / 4 + 16;

fuzz_target!(|data: &[u8]| {
    match bounded("Directory::decode", data.len(), RATIO, || Directory::decode(data)) {
        Ok(Directory::Parts(parts)) => assert_eq!(encode_dir_index(&parts), data, "an index is canonical"),
        Ok(Directory::Tree(t)) => assert_eq!(Tree::decode(data).unwrap(), t),
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
    let t = match bounded("Tree::decode", data.len(), RATIO, || Tree::decode(data)) {
        Ok(t) => t,
        Err(e) => return assert!(e.is_corrupt(), "{e}"),
    };
    let e = t.encode().expect("a decoded tree encodes");
    assert!(e.len() <= data.len(), "re-encoded tree is longer than its input");
    assert_eq!(Tree::decode(&e).unwrap(), t);
    for n in &t.nodes {
        let _ = n.has_safe_name();
    }
});
