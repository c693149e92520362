//! The local cache as it saves requests: tree blobs come from a cached copy of their whole pack
//! (one GET per tree pack, then none while the cache holds it), and a damaged cached pack is
//! dropped and storage read instead, so the cache can cost requests but never correctness; the
//! same holds for index objects, each hashed once on its way through the cache.

use std::path::Path;
use std::sync::Arc;

use repo_format::{BlobId, BlobKind, Counting, KdfParams, ObjectStorage, RepoConfig, Repository, WriterOptions};

const PW: &[u8] = b"cache";

async fn open(dir: &Path, cache: &Path) -> (Repository, Arc<repo_format::RequestCounts>) {
    let s = Counting::new(ObjectStorage::local(dir).unwrap());
    let counts = s.counts();
    let r = Repository::open(Arc::new(s), PW, Some(cache.to_path_buf())).await.unwrap();
    r.load_index().await.unwrap();
    (r, counts)
}

/// A new repository in `<tmp>/repo` (its cache, when opened, in `<tmp>/cache`).
async fn init() -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("repo")).unwrap();
    let storage = Arc::new(ObjectStorage::local(&tmp.path().join("repo")).unwrap());
    let repo = Repository::init(storage, PW, KdfParams::insecure_for_tests(), RepoConfig::new(7), "t").await.unwrap();
    (tmp, repo)
}

fn gets(c: &repo_format::RequestCounts) -> u64 {
    c.snapshot()[1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_blobs_cost_one_get_per_pack() {
    let (tmp, repo) = init().await;
    let (dir, cache) = (tmp.path().join("repo"), tmp.path().join("cache"));
    let w = repo.writer(WriterOptions::default());
    let trees: Vec<(BlobId, Vec<u8>)> = (0..60u32)
        .map(|i| format!("tree {i} {}", "x".repeat(i as usize)))
        .map(|t| {
            let b = t.into_bytes();
            (repo.master_key().blob_id(&b), b)
        })
        .collect();
    let data: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100_000]).collect();
    let saver = {
        let (w, trees, data) = (w.clone(), trees.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            for (_, t) in &trees {
                w.save(BlobKind::Tree, t).unwrap();
            }
            data.iter().map(|d| w.save(BlobKind::Data, d).unwrap().id).collect::<Vec<_>>()
        })
    };
    let data_ids = saver.await.unwrap();
    repo.finish_writer(w).await.unwrap();

    let (r, counts) = open(&dir, &cache).await;
    let before = gets(&counts);
    for (id, t) in &trees {
        assert_eq!(&r.read_blob(BlobKind::Tree, id).await.unwrap(), t);
    }
    assert_eq!(gets(&counts) - before, 1, "60 trees in one pack: one GET of the whole pack");
    let before = gets(&counts);
    for (id, d) in data_ids.iter().zip(&data) {
        assert_eq!(&r.read_blob(BlobKind::Data, id).await.unwrap(), d);
    }
    assert_eq!(gets(&counts) - before, 5, "data blobs are ranged reads, never cached");

    // A second session with the same cache reads no tree from storage.
    let (r, counts) = open(&dir, &cache).await;
    let before = gets(&counts);
    for (id, t) in &trees {
        assert_eq!(&r.read_blob(BlobKind::Tree, id).await.unwrap(), t);
    }
    assert_eq!(gets(&counts), before);

    // A damaged cached pack: the read still succeeds (from storage) and the copy is dropped.
    let packs: Vec<_> = walk(&cache).into_iter().filter(|p| p.parent().unwrap().ends_with("pack")).collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&packs[0], &bytes).unwrap();
    let (r, counts) = open(&dir, &cache).await;
    let before = gets(&counts);
    let (id, t) = &trees[0];
    let loc = r.index().lookup(BlobKind::Tree, id).unwrap();
    assert!(loc.offset <= 10, "the flipped byte is in the first blob");
    assert_eq!(&r.read_blob(BlobKind::Tree, id).await.unwrap(), t);
    assert_eq!(gets(&counts) - before, 1, "one ranged read from storage");
    assert!(!packs[0].exists(), "the damaged copy is dropped");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// An index object is hashed once on its way through the cache (`Cache::read_through` says
/// whether it was verified); these are the cases that check must still catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_index_objects_are_caught_in_the_cache_and_in_storage() {
    let (tmp, repo) = init().await;
    let (dir, cache) = (tmp.path().join("repo"), tmp.path().join("cache"));
    let w = repo.writer(WriterOptions::default());
    let blob = vec![7u8; 50_000];
    let id = {
        let w = w.clone();
        tokio::task::spawn_blocking(move || w.save(BlobKind::Data, &blob).unwrap().id).await.unwrap()
    };
    repo.finish_writer(w).await.unwrap();
    let in_kind = |root: &Path| -> Vec<std::path::PathBuf> {
        walk(root).into_iter().filter(|p| p.parent().unwrap().ends_with("index")).collect()
    };

    // First session: the index object is downloaded, verified and cached.
    let (r, _) = open(&dir, &cache).await;
    assert!(r.index().lookup(BlobKind::Data, &id).is_some());
    let cached = in_kind(&cache);
    assert_eq!(cached.len(), 1, "{cached:?}");

    // A damaged cached copy: dropped, storage read instead, and the copy written again.
    let good = std::fs::read(&cached[0]).unwrap();
    let mut bad = good.clone();
    bad[20] ^= 1;
    std::fs::write(&cached[0], &bad).unwrap();
    let (r, counts) = open(&dir, &cache).await;
    assert!(r.index().lookup(BlobKind::Data, &id).is_some(), "the index is whole");
    assert!(gets(&counts) >= 1, "the index object came from storage");
    assert_eq!(std::fs::read(&cached[0]).unwrap(), good, "the cached copy is good again");

    // A damaged stored object with no cached copy: refused by name, and not cached.
    std::fs::remove_file(&cached[0]).unwrap();
    let stored = in_kind(&dir);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let mut bad = std::fs::read(&stored[0]).unwrap();
    bad[20] ^= 1;
    std::fs::write(&stored[0], &bad).unwrap();
    let s = ObjectStorage::local(&dir).unwrap();
    let r = Repository::open(Arc::new(s), PW, Some(cache.clone())).await.unwrap();
    let err = r.load_index().await.expect_err("a damaged index object");
    assert!(err.to_string().contains("do not hash to the object's name"), "{err}");
    assert!(in_kind(&cache).is_empty(), "bytes that do not hash to their name are not cached");
}
