//! What a writer has taken is known by kind: the same bytes saved as a tree and as data are two
//! blobs, each stored once, each read back as what it is. (A writer keeps what it took as 16
//! bytes of id with the kind in the lowest bit.)

use std::sync::Arc;

use repo_format::{BlobId, BlobKind, Id, KdfParams, ObjectStorage, RepoConfig, Repository, WriterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_as_a_tree_and_as_data_are_two_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = Arc::new(ObjectStorage::local(tmp.path()).unwrap());
    let repo =
        Repository::init(storage, b"taken", KdfParams::insecure_for_tests(), RepoConfig::new(3), "t").await.unwrap();
    repo.load_index().await.unwrap();
    let w = repo.writer(WriterOptions::default());
    let bytes = b"the same bytes, twice".to_vec();
    let (id, saved) = {
        let w = w.clone();
        tokio::task::spawn_blocking(move || {
            let id = w.id_of(&bytes);
            let mut saved = Vec::new();
            assert!(!w.is_known(BlobKind::Data, &id) && !w.is_known(BlobKind::Tree, &id));
            saved.push(w.save(BlobKind::Data, &bytes).unwrap().new);
            assert!(w.is_known(BlobKind::Data, &id), "taken as data");
            assert!(!w.is_known(BlobKind::Tree, &id), "not as a tree");
            saved.push(w.save(BlobKind::Tree, &bytes).unwrap().new);
            saved.push(w.save(BlobKind::Data, &bytes).unwrap().new);
            saved.push(w.save(BlobKind::Tree, &bytes).unwrap().new);
            // Ids that differ in their first 16 bytes (past the kind's bit) are not taken.
            for (byte, bit) in [(0, 0x80), (8, 1), (15, 2)] {
                let mut other = id.0.0;
                other[byte] ^= bit;
                let other = BlobId(Id(other));
                assert!(!w.is_known(BlobKind::Data, &other) && !w.is_known(BlobKind::Tree, &other), "byte {byte}");
            }
            (id, saved)
        })
        .await
        .unwrap()
    };
    assert_eq!(saved, [true, true, false, false], "each kind stored once");
    let result = repo.finish_writer(w).await.unwrap();
    assert_eq!(result.index_file.packs.iter().map(|p| p.blobs.len()).sum::<usize>(), 2);
    let repo = Repository::open(Arc::new(ObjectStorage::local(tmp.path()).unwrap()), b"taken", None).await.unwrap();
    repo.load_index().await.unwrap();
    for kind in [BlobKind::Data, BlobKind::Tree] {
        assert_eq!(repo.read_blob(kind, &id).await.unwrap(), b"the same bytes, twice", "{kind:?}");
    }
}
