//! The garbage-collection protocol, step by step, in-process: a writer whose view of the index
//! predates a prune's mark, an index object that lists a marked pack, repacking, and the
//! re-check a backup longer than the grace period makes. Each scenario also runs the unsafe
//! order (the sweep before the writer's snapshot) to show that the check would catch a broken
//! protocol.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{PASSWORD, config, random_tree};
use ferry_engine::Job;
use ferry_engine::check::{self, CheckOptions, ReadData};
use ferry_engine::prune::{self, MaxUnused, PruneOptions};
use repo_format::{
    BlobKind, Content, FileKind, KdfParams, Node, NodeType, ObjectStorage, RepoConfig, Repository, Segment, Snapshot,
    SnapshotId, Storage, Tree, TreeId, WriterOptions,
};

async fn repo_with_grace(dir: &Path, grace_ns: u64) -> Arc<Repository> {
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).unwrap());
    let mut config = RepoConfig::new(1);
    config.pack_size = 1 << 20;
    config.gc_grace_ns = grace_ns;
    Arc::new(Repository::init(storage, PASSWORD, KdfParams::insecure_for_tests(), config, "test").await.unwrap())
}

async fn reopen(dir: &Path) -> Arc<Repository> {
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).unwrap());
    Arc::new(Repository::open(storage, PASSWORD, None).await.unwrap())
}

async fn damage(dir: &Path) -> Vec<String> {
    let r = reopen(dir).await;
    let rep = check::check(&r, &CheckOptions { read_data: ReadData::All }, &Job::new()).await.unwrap();
    rep.damage.iter().map(|d| format!("{}: {}", d.object, d.message)).collect()
}

async fn prune_run(dir: &Path, opts: &PruneOptions) -> prune::PruneReport {
    let r = reopen(dir).await;
    prune::prune(&r, opts, &Job::new()).await.unwrap()
}

fn sweep_now() -> PruneOptions {
    PruneOptions { sweep_now: true, ..Default::default() }
}

/// What a writer that loaded the index earlier does: store `content` as one file (a single
/// blob, deduplicated against its old view) and write a snapshot of it.
async fn write_from_old_view(view: &Repository, content: &[u8]) -> (SnapshotId, bool) {
    let w = view.writer(WriterOptions::default());
    let saved = w.save(BlobKind::Data, content).unwrap();
    let mut node = Node::new(b"f".to_vec(), NodeType::File);
    node.size = content.len() as u64;
    node.content = Content::Segments(vec![Segment::Blob { id: saved.id, len: content.len() as u32 }]);
    let tree = Tree { nodes: vec![node] }.encode().unwrap();
    let root = TreeId(w.save(BlobKind::Tree, &tree).unwrap().id.0);
    view.finish_writer(w).await.unwrap();
    let s = Snapshot {
        time_ns: 2,
        tree: root,
        parent: None,
        hostname: "old-view".into(),
        username: String::new(),
        program: "test".into(),
        paths: vec![b"/f".to_vec()],
        tags: Vec::new(),
        summary: Default::default(),
    };
    (view.save_snapshot(&s).await.unwrap(), !saved.new)
}

fn packs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir.join("data")).unwrap() {
        out.extend(std::fs::read_dir(sub.unwrap().path()).unwrap().map(|e| e.unwrap().path()));
    }
    out
}

/// One file's content, a single chunk (below the minimum chunk size), backed up and forgotten:
/// its data blob is unused.
async fn forgotten_file(tmp: &Path, repo: &Arc<Repository>) -> Vec<u8> {
    let src = random_tree(&tmp.join("src"), 1, 100 << 10);
    let content = std::fs::read(src.join("f0000")).unwrap();
    let out = ferry_engine::backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();
    repo.storage().remove(FileKind::Snapshot, &out.snapshot_id.0).await.unwrap();
    content
}

#[tokio::test]
async fn a_snapshot_from_an_older_view_written_before_the_sweep_keeps_its_blobs() {
    for unsafe_order in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        let repo = repo_with_grace(&dir, 24 * 3600 * 1_000_000_000).await;
        let content = forgotten_file(tmp.path(), &repo).await;
        // A backup starts: it loads the index while the blob is still listed.
        let view = reopen(&dir).await;
        view.load_index().await.unwrap();
        // Prune marks the unused blob's pack (due in 24 h).
        let marked = prune_run(&dir, &PruneOptions::default()).await.marked.unwrap();
        assert!(marked.packs_unused >= 1, "{marked:?}");
        if unsafe_order {
            // Sweeping before the writer's snapshot exists deletes the pack it will reuse.
            prune_run(&dir, &sweep_now()).await;
        }
        let (_, deduplicated) = write_from_old_view(&view, &content).await;
        assert!(deduplicated, "the old view deduplicates against the marked blob");
        if !unsafe_order {
            let swept = prune_run(&dir, &sweep_now()).await;
            assert_eq!(swept.swept[0].packs_withdrawn, 1, "{swept:?}");
            assert_eq!(damage(&dir).await, Vec::<String>::new());
        } else {
            // The protocol's other half: such a writer ran past the sweep, so it is longer than
            // the grace period and must re-check itself before writing its snapshot.
            assert!(!damage(&dir).await.is_empty(), "the unsafe order loses the blob, and check sees it");
        }
    }
}

#[tokio::test]
async fn a_long_backup_refuses_a_snapshot_whose_blobs_were_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = repo_with_grace(&dir, 1).await; // every backup is "longer" than 1 ns
    let content = forgotten_file(tmp.path(), &repo).await;
    let view = reopen(&dir).await;
    view.load_index().await.unwrap();
    let w = view.writer(WriterOptions::default());
    let saved = w.save(BlobKind::Data, &content).unwrap();
    assert!(!saved.new);
    let mut node = Node::new(b"f".to_vec(), NodeType::File);
    node.size = content.len() as u64;
    node.content = Content::Segments(vec![Segment::Blob { id: saved.id, len: content.len() as u32 }]);
    let root = TreeId(w.save(BlobKind::Tree, &Tree { nodes: vec![node] }.encode().unwrap()).unwrap().id.0);
    view.finish_writer(w).await.unwrap();
    let started = std::time::Instant::now();
    // Before any prune: the re-check passes.
    prune::guard_long_backup(&view, root, started, &Job::new()).await.unwrap();
    // Marked: refused (the sweep may run at any moment).
    prune_run(&dir, &PruneOptions::default()).await;
    let e = prune::guard_long_backup(&view, root, started, &Job::new()).await.unwrap_err();
    assert!(format!("{e:#}").contains("no snapshot was written"), "{e:#}");
    // Swept: refused too.
    prune_run(&dir, &sweep_now()).await;
    assert_eq!(prune::verify_long_backup(&view, root, &Job::new()).await.unwrap(), 1);
}

#[tokio::test]
async fn a_long_backups_recheck_reads_only_its_own_blobs_from_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let _repo = repo_with_grace(&dir, 1).await;
    let view = reopen(&dir).await;
    view.load_index().await.unwrap();
    // This backup's data blob, in an index object of its own (removed below).
    let content = b"this backup's content. ".repeat(2000);
    let w = view.writer(WriterOptions::default());
    let own = w.save(BlobKind::Data, &content).unwrap().id;
    view.finish_writer(w).await.unwrap();
    let own_index = view.storage().list(FileKind::Index).await.unwrap();
    assert_eq!(own_index.len(), 1);
    // A blob of another backup, and this one's trees: its file in a subdirectory.
    let w = view.writer(WriterOptions::default());
    let other = w.save(BlobKind::Data, &b"another backup's content. ".repeat(2000)).unwrap().id;
    let mut file = Node::new(b"f".to_vec(), NodeType::File);
    file.size = content.len() as u64;
    file.content = Content::Segments(vec![Segment::Blob { id: own, len: content.len() as u32 }]);
    let sub = TreeId(w.save(BlobKind::Tree, &Tree { nodes: vec![file] }.encode().unwrap()).unwrap().id.0);
    let mut d = Node::new(b"d".to_vec(), NodeType::Dir);
    d.content = Content::Tree(sub);
    let root = TreeId(w.save(BlobKind::Tree, &Tree { nodes: vec![d] }.encode().unwrap()).unwrap().id.0);
    view.finish_writer(w).await.unwrap();
    assert_eq!(prune::verify_long_backup(&view, root, &Job::new()).await.unwrap(), 0);
    // The index it left in place: its trees and its own data blob, not the other backup's
    // (loaded whole, the index of a repository of 10 M blobs took 472 MiB).
    let index = view.index();
    assert!(index.lookup(BlobKind::Tree, &repo_format::BlobId(sub.0)).is_some());
    assert!(index.lookup(BlobKind::Data, &own).is_some(), "the snapshot's own blob was not looked up");
    assert!(index.lookup(BlobKind::Data, &other).is_none(), "the whole index was loaded");
    // Its blob gone from the index (as after a prune's sweep): counted, found through the
    // subdirectory.
    view.storage().remove(FileKind::Index, &own_index[0].0).await.unwrap();
    assert_eq!(prune::verify_long_backup(&view, root, &Job::new()).await.unwrap(), 1);
}

#[tokio::test]
async fn an_index_object_listing_a_marked_pack_withdraws_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    // Every mark is due at once: the second prune sweeps (and marks again, without sweeping).
    let repo = repo_with_grace(&dir, 1).await;
    forgotten_file(tmp.path(), &repo).await;
    let before = reopen(&dir).await;
    let files = before.index_files().await.unwrap();
    prune_run(&dir, &PruneOptions::default()).await;
    // Another writer (a resumed journal) indexes one of the marked packs again.
    let m = &before.markers().await.unwrap()[0].1;
    let listed = files.iter().flat_map(|(_, f)| &f.packs).find(|p| m.packs.contains(&p.id)).unwrap().clone();
    before.save_index(&repo_format::IndexFile { packs: vec![listed.clone()], supersedes: Vec::new() }).await.unwrap();
    let swept = prune_run(&dir, &PruneOptions::default()).await;
    assert!(swept.swept[0].packs_withdrawn >= 1, "{swept:?}");
    assert!(packs(&dir).iter().any(|p| p.ends_with(listed.id.to_string())), "the pack is still there");
    assert_eq!(damage(&dir).await, Vec::<String>::new());
}

#[tokio::test]
async fn repacking_keeps_the_used_blobs_and_frees_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = repo_with_grace(&dir, 24 * 3600 * 1_000_000_000).await;
    let all = random_tree(&tmp.path().join("all"), 24, 60 << 10);
    let first = ferry_engine::backup::run(repo.clone(), config(&all, "h"), &Job::new()).await.unwrap();
    // Half of the files, backed up again: their blobs are shared, the other half's are not.
    let half = tmp.path().join("half");
    std::fs::create_dir(&half).unwrap();
    for i in (0..24).step_by(2) {
        std::fs::copy(all.join(format!("f{i:04}")), half.join(format!("f{i:04}"))).unwrap();
    }
    let kept = ferry_engine::backup::run(repo.clone(), config(&half, "h"), &Job::new()).await.unwrap();
    repo.storage().remove(FileKind::Snapshot, &first.snapshot_id.0).await.unwrap();
    let bytes_before: u64 = packs(&dir).iter().map(|p| p.metadata().unwrap().len()).sum();

    let dry =
        prune_run(&dir, &PruneOptions { dry_run: true, max_unused: MaxUnused::Percent(0.0), ..Default::default() })
            .await;
    let planned = dry.marked.unwrap();
    assert!(planned.packs_repacked >= 1, "partly used packs are repacked: {planned:?}");
    assert_eq!(packs(&dir).iter().map(|p| p.metadata().unwrap().len()).sum::<u64>(), bytes_before, "dry run");

    let opts = PruneOptions { max_unused: MaxUnused::Percent(0.0), sweep_now: true, ..Default::default() };
    let done = prune_run(&dir, &opts).await;
    let marked = done.marked.unwrap();
    assert_eq!((marked.packs_repacked, marked.blobs_repacked), (planned.packs_repacked, planned.blobs_repacked));
    assert_eq!(marked.bytes_unused_after, 0);
    let bytes_after: u64 = packs(&dir).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(bytes_after < bytes_before * 2 / 3, "{bytes_before} → {bytes_after}");
    assert_eq!(damage(&dir).await, Vec::<String>::new());
    // Nothing left to do, and the kept snapshot restores exactly.
    let again = prune_run(&dir, &PruneOptions { max_unused: MaxUnused::Percent(0.0), ..Default::default() }).await;
    assert!(again.marked.unwrap().marker.is_none(), "a second prune finds nothing");
    let r = reopen(&dir).await;
    r.load_index().await.unwrap();
    let snap = r.load_snapshot(&kept.snapshot_id).await.unwrap();
    let plan = ferry_engine::restore::plan(&r, snap.tree, &Default::default(), &Default::default()).await.unwrap();
    let target = tmp.path().join("restored");
    ferry_engine::restore::execute(r.clone(), plan, &target, &Job::new(), &Default::default()).await.unwrap();
    for i in (0..24).step_by(2) {
        let name = format!("f{i:04}");
        let restored = walkdir_find(&target, &name);
        assert_eq!(std::fs::read(restored).unwrap(), std::fs::read(half.join(&name)).unwrap(), "{name}");
    }
}

/// The one file named `name` below `dir`.
fn walkdir_find(dir: &Path, name: &str) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() == name {
                return p;
            }
        }
    }
    panic!("{name} not restored under {}", dir.display());
}
