//! The golden fixture of format version 2: `tests/fixtures/repo-v2-pruned` (workspace top
//! level), a repository caught between a prune's mark and its sweep. It holds two backups, the
//! first forgotten and marked: a version 2 index object that supersedes the version 1 ones, a
//! marker `gc/<id>` naming the unused packs (still in storage), and a config with the grace
//! period field. Committed once; reading it back pins the bytes of FORMAT.md §5.4, §5.6, §5.9.
//!
//! Regenerate (only when the format changes on purpose, as a new fixture beside this one):
//! `FERRY_REGEN_FIXTURES=1 cargo test -p ferry-engine --test fixture_v2 -- --ignored regenerate`

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_engine::Job;
use ferry_engine::check::{self, CheckOptions, ReadData};
use ferry_engine::prune::{self, PruneOptions};
use repo_format::{ChunkerParams, FileKind, KdfParams, ObjectStorage, ReadOnly, RepoConfig, Repository, Storage};

const PASSWORD: &[u8] = b"fixture";
const GRACE_NS: u64 = 3600 * 1_000_000_000;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/repo-v2-pruned")
}

/// Deterministic incompressible bytes.
fn seeded(label: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(b"ferry fixture v2 ").update(label.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// The kept backup's files (the forgotten one had `gone.bin` as well).
fn kept_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![("kept.bin", seeded("kept", 40 << 10)), ("notes.txt", b"kept across a prune\n".repeat(50))]
}

async fn open(dir: &Path) -> Arc<Repository> {
    let st: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).unwrap());
    Arc::new(Repository::open(st, PASSWORD, None).await.unwrap())
}

#[tokio::test]
#[ignore = "writes tests/fixtures/repo-v2-pruned: run with FERRY_REGEN_FIXTURES=1 and --ignored"]
async fn regenerate() {
    if std::env::var("FERRY_REGEN_FIXTURES").as_deref() != Ok("1") {
        return;
    }
    let dir = dir();
    let _ = std::fs::remove_dir_all(&dir);
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&dir).unwrap());
    let mut cfg = RepoConfig::new(1_700_000_000_000_000_000);
    cfg.chunker = ChunkerParams { min: 8 << 10, avg: 32 << 10, max: 128 << 10 };
    cfg.pack_size = 1 << 20;
    cfg.gc_grace_ns = GRACE_NS;
    let repo =
        Arc::new(Repository::init(storage, PASSWORD, KdfParams::insecure_for_tests(), cfg, "fixture").await.unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let (gone, kept) = (tmp.path().join("gone"), tmp.path().join("kept"));
    for d in [&gone, &kept] {
        std::fs::create_dir(d).unwrap();
        for (name, data) in kept_files() {
            std::fs::write(d.join(name), data).unwrap();
        }
    }
    std::fs::write(gone.join("gone.bin"), seeded("gone", 60 << 10)).unwrap();
    let cfg = |p: &Path, host: &str| ferry_engine::backup::BackupConfig {
        paths: vec![p.to_path_buf()],
        excludes: Vec::new(),
        host: host.into(),
        tags: vec![("fixture".into(), host.into())],
        parent: None,
        force: false,
        cache_dir: None,
        identity: None,
        requester: None,
    };
    let first = ferry_engine::backup::run(repo.clone(), cfg(&gone, "gone"), &Job::new()).await.unwrap();
    ferry_engine::backup::run(repo.clone(), cfg(&kept, "kept"), &Job::new()).await.unwrap();
    repo.storage().remove(FileKind::Snapshot, &first.snapshot_id.0).await.unwrap();
    let rep = prune::prune(&*open(&dir).await, &PruneOptions::default(), &Job::new()).await.unwrap();
    assert!(rep.marked.unwrap().marker.is_some());
    verify(&dir).await;
}

async fn verify(dir: &Path) {
    let st: Arc<dyn Storage> = Arc::new(ReadOnly(ObjectStorage::local(dir).unwrap()));
    let repo = Repository::open(st, PASSWORD, None).await.unwrap();
    assert_eq!(repo.config().gc_grace_ns, GRACE_NS, "the config's grace field");
    // Index objects: the superseding one is version 2 and names the two backups' objects;
    // the prune's others (the new index, the repacked packs' index) are current.
    let files = repo.index_files().await.unwrap();
    let superseding: Vec<_> = files.iter().filter(|(_, f)| !f.supersedes.is_empty()).collect();
    assert_eq!(superseding.len(), 1);
    let named: HashSet<_> = superseding[0].1.supersedes.iter().copied().collect();
    let all: HashSet<_> = files.iter().map(|(id, _)| *id).collect();
    assert!(named.len() == 2 && named.is_subset(&all), "{named:?}");
    let raw = std::fs::read(dir.join("index").join(superseding[0].0.to_string())).unwrap();
    assert_eq!(&raw[..8], b"FERRY\x02\x02\x00", "magic, type 2 (index), version 2");
    // The marker: its packs are in storage and in no current index object.
    let markers = repo.markers().await.unwrap();
    assert_eq!(markers.len(), 1);
    let (mid, m) = &markers[0];
    let raw = std::fs::read(dir.join("gc").join(mid.to_string())).unwrap();
    assert_eq!(&raw[..8], b"FERRY\x06\x02\x00", "magic, type 6 (marker), version 2");
    assert_eq!(m.grace_ns, GRACE_NS);
    assert!(!m.packs.is_empty());
    assert_eq!(m.snapshots.len(), 1);
    assert_eq!(m.superseded.iter().copied().collect::<HashSet<_>>(), named);
    assert_eq!(
        m.indexes.iter().copied().collect::<HashSet<_>>(),
        all,
        "every index object was seen or written by the mark"
    );
    let index = repo.load_index().await.unwrap();
    let current: HashSet<_> = index.packs().iter().map(|p| p.id).collect();
    let stored: HashSet<_> =
        repo.storage().list(FileKind::Pack).await.unwrap().into_iter().map(|(i, _)| repo_format::PackId(i)).collect();
    for p in &m.packs {
        assert!(stored.contains(p) && !current.contains(p), "marked pack {p}");
    }
    // One snapshot, restoring the kept files exactly.
    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].1.tag("fixture"), Some("kept"));
    let repo = Arc::new(repo);
    let plan =
        ferry_engine::restore::plan(&repo, snaps[0].1.tree, &Default::default(), &Default::default()).await.unwrap();
    let target = tempfile::tempdir().unwrap();
    ferry_engine::restore::execute(repo.clone(), plan, target.path(), &Job::new(), &Default::default()).await.unwrap();
    for (name, data) in kept_files() {
        assert_eq!(std::fs::read(target.path().join(name)).unwrap(), data, "{name}");
    }
}

#[tokio::test]
async fn v2_fixture_reads_back_exactly() {
    assert!(dir().join("config").is_file(), "{} is missing", dir().display());
    verify(&dir()).await;
}

#[tokio::test]
async fn v2_fixture_sweeps_to_a_whole_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("repo");
    let st = std::process::Command::new("cp").arg("-a").arg(dir()).arg(&copy).status().unwrap();
    assert!(st.success());
    let repo = open(&copy).await;
    let marked = repo.markers().await.unwrap().remove(0).1;
    let rep = prune::prune(&repo, &PruneOptions { sweep_now: true, ..Default::default() }, &Job::new()).await.unwrap();
    assert_eq!(rep.swept.len(), 1);
    assert_eq!(rep.swept[0].packs_deleted as usize, marked.packs.len(), "{rep:?}");
    assert!(repo.markers().await.unwrap().is_empty());
    let repo = open(&copy).await;
    let report = check::check(&repo, &CheckOptions { read_data: ReadData::All }, &Job::new()).await.unwrap();
    assert!(report.damage.is_empty() && report.unreferenced_packs.is_empty(), "{report:?}");
    assert_eq!(report.unused_blobs, 0, "{report:?}");
}
