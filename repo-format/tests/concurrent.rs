//! Concurrency at the library level: several `Repository` handles on one local directory.
//!
//! Two handles (as two agents on two nodes would have) each run a writer at the same time, from
//! several threads, over data that is partly shared; both finish and write a snapshot; a third
//! handle opened afterwards must see both snapshots and read every blob back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Barrier};

use repo_format::{
    BlobId, BlobKind, BlobWriter, Content, Error, FileKind, KdfParams, Node, NodeType, ObjectStorage, RepoConfig,
    Repository, Saved, Segment, Snapshot, Storage, Tree, TreeId, WriterOptions,
};

const PW: &[u8] = b"concurrent";
const SHARED: usize = 48;
const OWN: usize = 96;

fn storage(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(ObjectStorage::local(dir).unwrap())
}

fn seeded(label: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(label.as_bytes()).finalize_xof().fill(&mut out);
    // Every third blob compressible, so both pack paths (raw and zstd) are exercised.
    if len % 3 == 0 {
        for b in out.iter_mut().skip(1).step_by(2) {
            *b = b'.';
        }
    }
    out
}

/// Blob contents by name: `shared-NNN` (both writers), `<who>-NNN` (one writer).
fn blobs(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i:03}");
            let data = seeded(&name, (48 << 10) + i * 1031);
            (name, data)
        })
        .collect()
}

fn opts() -> WriterOptions {
    WriterOptions { open_packs: 3, max_uploads: 2, ..WriterOptions::default() }
}

/// Save `items` through `w` after every thread reached the barrier.
fn save_all(w: BlobWriter, start: Arc<Barrier>, items: Vec<(String, Vec<u8>)>) -> Vec<Saved> {
    start.wait();
    items.iter().map(|(_, d)| w.save(BlobKind::Data, d).unwrap()).collect()
}

/// A one-level tree: one file per blob.
fn tree_of(items: &[(String, Vec<u8>)], w: &BlobWriter) -> TreeId {
    let mut nodes: Vec<Node> = items
        .iter()
        .map(|(name, d)| {
            let mut n = Node::new(name.as_bytes().to_vec(), NodeType::File);
            n.mode = 0o644;
            n.size = d.len() as u64;
            n.content = Content::Segments(vec![Segment::Blob { id: w.id_of(d), len: d.len() as u32 }]);
            n
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let s = w.save(BlobKind::Tree, &Tree { nodes }.encode().unwrap()).unwrap();
    TreeId(s.id.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_write_at_once_and_both_snapshots_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = RepoConfig::new(1);
    cfg.pack_size = 1 << 20;
    let a = Repository::init(storage(tmp.path()), PW, KdfParams::insecure_for_tests(), cfg, "a").await.unwrap();
    let b = Repository::open(storage(tmp.path()), PW, None).await.unwrap();
    assert_eq!(a.config(), b.config());
    assert_eq!(a.master_key(), b.master_key());
    assert!(a.load_index().await.unwrap().is_empty());
    assert!(b.load_index().await.unwrap().is_empty());

    let shared = blobs("shared", SHARED);
    let own_a = blobs("a", OWN);
    let own_b = blobs("b", OWN);
    let (wa, wb) = (a.writer(opts()), b.writer(opts()));

    // Four threads, two per writer. Within a writer both threads save every shared blob (in
    // opposite orders) and half of the writer's own blobs.
    let start = Arc::new(Barrier::new(4));
    let mut tasks = Vec::new();
    for (w, own) in [(&wa, &own_a), (&wb, &own_b)] {
        for half in 0..2 {
            let mut items: Vec<_> = own.iter().skip(half).step_by(2).cloned().collect();
            let mut sh = shared.clone();
            if half == 1 {
                sh.reverse();
            }
            items.splice(0..0, sh);
            let (w, start) = (w.clone(), start.clone());
            tasks.push(tokio::task::spawn_blocking(move || save_all(w, start, items)));
        }
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let shared_ids: Vec<BlobId> = shared.iter().map(|(_, d)| wa.id_of(d)).collect();
    for (w, res) in [(0, &results[0..2]), (1, &results[2..4])] {
        // Two threads of one writer raced on each shared blob: exactly one stored it.
        for id in &shared_ids {
            let new = res.iter().flatten().filter(|s| s.id == *id && s.new).count();
            assert_eq!(new, 1, "writer {w}: shared blob stored {new} times");
        }
        let new_total = res.iter().flatten().filter(|s| s.new).count();
        assert_eq!(new_total, SHARED + OWN, "writer {w}");
    }

    let everything_a: Vec<_> = shared.iter().chain(&own_a).cloned().collect();
    let everything_b: Vec<_> = shared.iter().chain(&own_b).cloned().collect();
    let (ta, tb) = {
        let (wa, wb) = (wa.clone(), wb.clone());
        let (ea, eb) = (everything_a.clone(), everything_b.clone());
        let ja = tokio::task::spawn_blocking(move || tree_of(&ea, &wa));
        let jb = tokio::task::spawn_blocking(move || tree_of(&eb, &wb));
        (ja.await.unwrap(), jb.await.unwrap())
    };
    // Clones that outlive `finish` (it consumes one handle; the counters are shared).
    let (stats_a, stats_b) = (wa.clone(), wb.clone());

    let (ra, rb) = tokio::join!(a.finish_writer(wa), b.finish_writer(wb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let packs_written = stats_a.stats().packs.load(Relaxed) + stats_b.stats().packs.load(Relaxed);
    let snap = |tree, host: &str| Snapshot { time_ns: 1, tree, hostname: host.into(), ..Snapshot::default() };
    let (snap_a, snap_b) = (snap(ta, "a"), snap(tb, "b"));
    let (sa, sb) = tokio::join!(a.save_snapshot(&snap_a), b.save_snapshot(&snap_b));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_ne!(sa, sb);

    // Each handle's own index now holds what it wrote (and not the other's).
    assert!(a.index().contains(BlobKind::Tree, &BlobId(ta.0)));
    assert!(!a.index().contains(BlobKind::Tree, &BlobId(tb.0)));

    // A third handle sees everything.
    let c = Repository::open(storage(tmp.path()), PW, None).await.unwrap();
    let idx = c.load_index().await.unwrap();
    assert_eq!(idx.len(), SHARED + 2 * OWN + 2, "distinct blobs");
    let st = c.storage();
    assert_eq!(st.list(FileKind::Index).await.unwrap().len(), ra.index_ids.len() + rb.index_ids.len());
    let packs = st.list(FileKind::Pack).await.unwrap();
    assert_eq!(packs.len() as u64, packs_written);
    assert_eq!(idx.packs().len() as u64, packs_written);
    // Both writers stored the shared blobs (neither could know of the other's): duplicates
    // exist in packs, the index keeps one location each.
    let stored_entries: usize = ra.index_file.packs.iter().chain(&rb.index_file.packs).map(|p| p.blobs.len()).sum();
    assert_eq!(stored_entries, 2 * (SHARED + OWN + 1));

    let snaps = c.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 2);
    let mut by_host: BTreeMap<String, TreeId> = BTreeMap::new();
    for (_, s) in &snaps {
        by_host.insert(s.hostname.clone(), s.tree);
    }
    assert_eq!(by_host["a"], ta);
    assert_eq!(by_host["b"], tb);
    for (host, expected) in [("a", &everything_a), ("b", &everything_b)] {
        let want: HashMap<&[u8], &[u8]> = expected.iter().map(|(n, d)| (n.as_bytes(), &d[..])).collect();
        let tree = c.read_tree(&by_host[host]).await.unwrap();
        assert_eq!(tree.nodes.len(), want.len());
        for n in &tree.nodes {
            let Content::Segments(segs) = &n.content else { panic!("file without segments") };
            let mut got = Vec::new();
            for s in segs {
                let Segment::Blob { id, .. } = s else { panic!("unexpected segment {s:?}") };
                got.extend(c.read_blob(BlobKind::Data, id).await.unwrap());
            }
            assert_eq!(&got[..], want[&n.name[..]], "{host}: {:?}", n.name);
        }
    }
    // And every indexed blob verifies.
    for (id, loc) in idx.iter() {
        c.read_blob(loc.kind, &id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_on_an_empty_directory_is_no_repository() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(Repository::open(storage(tmp.path()), PW, None).await, Err(Error::NoRepository { .. })));
    // A directory that does not exist yet either.
    let missing = tmp.path().join("not-yet");
    assert!(matches!(Repository::open(storage(&missing), PW, None).await, Err(Error::NoRepository { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_twice_is_repository_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let first = Repository::init(storage(tmp.path()), PW, KdfParams::insecure_for_tests(), RepoConfig::new(1), "first")
        .await
        .unwrap();
    let second = Repository::init(
        storage(tmp.path()),
        b"other password",
        KdfParams::insecure_for_tests(),
        RepoConfig::new(2),
        "second",
    )
    .await;
    assert!(matches!(second, Err(Error::RepositoryExists { .. })), "{second:?}");
    // The refused init changed nothing: one key, and the first password still opens it.
    let again = Repository::open(storage(tmp.path()), PW, None).await.unwrap();
    assert_eq!(again.config(), first.config());
    assert_eq!(again.keys().await.unwrap().len(), 1);
}

/// Run two `init`s at once on an empty directory; exactly one must win. Returns the winner.
async fn race_init(dir: &Path, round: usize) -> Repository {
    let init = |label: &'static str| {
        let st = storage(dir);
        async move { Repository::init(st, PW, KdfParams::insecure_for_tests(), RepoConfig::new(1), label).await }
    };
    let (x, y) = tokio::join!(tokio::spawn(init("x")), tokio::spawn(init("y")));
    match (x.unwrap(), y.unwrap()) {
        (Ok(r), Err(Error::RepositoryExists { .. })) | (Err(Error::RepositoryExists { .. }), Ok(r)) => r,
        other => panic!("round {round}: expected one winner, got {other:?}"),
    }
}

/// After an init race the repository opens with the winner's key (a key file left by the loser
/// unlocks another master key and must not hide the right one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_inits_leave_one_openable_repository() {
    for round in 0..8 {
        let tmp = tempfile::tempdir().unwrap();
        let winner = race_init(tmp.path(), round).await;
        let opened = Repository::open(storage(tmp.path()), PW, None).await;
        let opened = opened.unwrap_or_else(|e| panic!("round {round}: open failed: {e}"));
        assert_eq!(opened.master_key(), winner.master_key(), "round {round}");
        assert_eq!(opened.key_id(), winner.key_id(), "round {round}");
    }
}

/// Regression: the losing `init` used to leave its key file behind, and `Repository::keys` then
/// failed with `Corrupt` (the orphan's metadata is sealed under another master key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_inits_leave_no_orphan_key() {
    for round in 0..8 {
        let tmp = tempfile::tempdir().unwrap();
        let winner = race_init(tmp.path(), round).await;
        let opened = Repository::open(storage(tmp.path()), PW, None).await.unwrap();
        let keys = opened.keys().await.unwrap_or_else(|e| panic!("round {round}: keys: {e}"));
        assert_eq!(keys.len(), 1, "round {round}");
        assert_eq!(keys[0].id, winner.key_id());
    }
}
