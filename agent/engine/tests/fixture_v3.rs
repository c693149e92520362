//! The golden fixture of format version 3: `tests/fixtures/repo-v3-dirparts` (workspace top
//! level), a repository whose snapshot has a directory stored in parts (FORMAT.md §5.7): `big`
//! is a directory index of three parts (2, 2 and 1 entries, one of them a subdirectory), beside
//! an ordinary file at the root. Writers split only directories of more than 65536 entries; the
//! fixture is cut by hand so that it stays small, which readers must accept all the same (where
//! a writer cuts is its own choice). Committed once; reading it back pins the directory index's
//! bytes and the snapshot's version 3 header.
//!
//! Regenerate (only when the format changes on purpose, as a new fixture beside this one):
//! `FERRY_REGEN_FIXTURES=1 cargo test -p ferry-engine --test fixture_v3 -- --ignored regenerate`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_engine::Job;
use ferry_engine::check::{self, CheckOptions, ReadData};
use repo_format::{
    BlobKind, ChunkerParams, Content, DirPart, Directory, KdfParams, Node, NodeType, ObjectStorage, ReadOnly,
    RepoConfig, Repository, Segment, Snapshot, Storage, Summary, Tree, TreeId, encode_dir_index,
};

const PASSWORD: &[u8] = b"fixture";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/repo-v3-dirparts")
}

/// The files of the snapshot, by path, with their bytes.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("big/a.txt", b"part one, first entry\n".repeat(20)),
        ("big/b", Vec::new()),
        ("big/c/inner.txt", b"in a subdirectory of the second part\n".to_vec()),
        ("big/d.txt", b"part two\n".to_vec()),
        ("big/e.txt", b"part three, alone\n".repeat(3)),
        ("top.txt", b"beside the big directory\n".to_vec()),
    ]
}

fn content(path: &str) -> Vec<u8> {
    files().into_iter().find(|(p, _)| *p == path).unwrap().1
}

#[tokio::test]
#[ignore = "writes tests/fixtures/repo-v3-dirparts: run with FERRY_REGEN_FIXTURES=1 and --ignored"]
async fn regenerate() {
    if std::env::var("FERRY_REGEN_FIXTURES").as_deref() != Ok("1") {
        return;
    }
    let dir = dir();
    let _ = std::fs::remove_dir_all(&dir);
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&dir).unwrap());
    let mut cfg = RepoConfig::new(1_700_000_000_000_000_000);
    cfg.chunker = ChunkerParams { min: 8 << 10, avg: 32 << 10, max: 128 << 10 };
    let repo =
        Arc::new(Repository::init(storage, PASSWORD, KdfParams::insecure_for_tests(), cfg, "fixture").await.unwrap());
    repo.load_index().await.unwrap();
    let w = repo.writer(Default::default());
    let w2 = w.clone();
    let root = tokio::task::spawn_blocking(move || {
        let tree = |nodes: Vec<Node>| TreeId(w2.save(BlobKind::Tree, &Tree { nodes }.encode().unwrap()).unwrap().id.0);
        let file = |name: &str, path: &str| {
            let data = content(path);
            let mut n = Node::new(name, NodeType::File);
            (n.mode, n.mtime_ns, n.size) = (0o644, 1_700_000_000_000_000_000, data.len() as u64);
            if !data.is_empty() {
                let id = w2.save(BlobKind::Data, &data).unwrap().id;
                n.content = Content::Segments(vec![Segment::Blob { id, len: data.len() as u32 }]);
            }
            n
        };
        let dir = |name: &str, id: TreeId| {
            let mut n = Node::new(name, NodeType::Dir);
            (n.mode, n.mtime_ns, n.content) = (0o755, 1_700_000_000_000_000_000, Content::Tree(id));
            n
        };
        let c = tree(vec![file("inner.txt", "big/c/inner.txt")]);
        let parts = [
            vec![file("a.txt", "big/a.txt"), file("b", "big/b")],
            vec![dir("c", c), file("d.txt", "big/d.txt")],
            vec![file("e.txt", "big/e.txt")],
        ];
        let parts: Vec<DirPart> =
            parts.into_iter().map(|nodes| DirPart { entries: nodes.len() as u32, id: tree(nodes) }).collect();
        let big = TreeId(w2.save(BlobKind::Tree, &encode_dir_index(&parts)).unwrap().id.0);
        tree(vec![dir("big", big), file("top.txt", "top.txt")])
    })
    .await
    .unwrap();
    repo.finish_writer(w).await.unwrap();
    let snap = Snapshot {
        time_ns: 1_700_000_000_000_000_000,
        tree: root,
        hostname: "fixture".into(),
        paths: vec![b"/fixture".to_vec()],
        summary: Summary { files_new: 6, dirs: 3, dirs_split: 1, ..Summary::default() },
        ..Snapshot::default()
    };
    repo.save_snapshot(&snap).await.unwrap();
    verify(&dir).await;
}

async fn verify(dir: &Path) {
    let st: Arc<dyn Storage> = Arc::new(ReadOnly(ObjectStorage::local(dir).unwrap()));
    let repo = Arc::new(Repository::open(st, PASSWORD, None).await.unwrap());
    repo.load_index().await.unwrap();
    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let (id, snap) = &snaps[0];
    assert_eq!(snap.summary.dirs_split, 1);
    let raw = std::fs::read(dir.join("snapshots").join(id.to_string())).unwrap();
    assert_eq!(&raw[..8], b"FERRY\x03\x03\x00", "magic, type 3 (snapshot), version 3");
    // The directory index: three parts of 2, 2 and 1 entries; joined, the whole directory.
    let root = repo.read_tree(&snap.tree).await.unwrap();
    let Content::Tree(big) = root.nodes[0].content else { panic!("big is not a directory") };
    let Directory::Parts(parts) = repo.read_dir(&big).await.unwrap() else { panic!("big is not in parts") };
    assert_eq!(parts.iter().map(|p| p.entries).collect::<Vec<_>>(), [2, 2, 1]);
    let names: Vec<_> = repo.read_tree(&big).await.unwrap().nodes.into_iter().map(|n| n.name).collect();
    assert_eq!(names, [&b"a.txt"[..], b"b", b"c", b"d.txt", b"e.txt"]);
    // Restored exactly, and clean to a full check.
    let plan = ferry_engine::restore::plan(&repo, snap.tree, &Default::default(), &Default::default()).await.unwrap();
    assert!(plan.rejected.is_empty(), "{:?}", plan.rejected);
    let target = tempfile::tempdir().unwrap();
    ferry_engine::restore::execute(repo.clone(), plan, target.path(), &Job::new(), &Default::default()).await.unwrap();
    for (path, data) in files() {
        assert_eq!(std::fs::read(target.path().join(path)).unwrap(), data, "{path}");
    }
    let report = check::check(&repo, &CheckOptions { read_data: ReadData::All }, &Job::new()).await.unwrap();
    assert!(report.damage.is_empty() && report.unused_blobs == 0, "{report:?}");
    assert_eq!((report.trees, report.blobs), (3, 11), "root, big, c; 6 tree-kind blobs and 5 data: {report:?}");
}

#[tokio::test]
async fn v3_fixture_reads_back_exactly() {
    assert!(dir().join("config").is_file(), "{} is missing", dir().display());
    verify(&dir()).await;
}
