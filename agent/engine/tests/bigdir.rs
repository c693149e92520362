//! Directories too big for one tree blob (format version 3): a directory of 150,000 entries
//! is stored as parts and an index, backs up again with one new file by storing one part, is
//! taken whole from the parent through the parts (no files cache), restores whole, survives a
//! prune of the other snapshot and checks clean. A forged index that names one part twice
//! restores each entry once. (The million-entry figures are a benchmark: benches/bigdir.sh.)

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use ferry_engine::check::{self, CheckOptions, ReadData};
use ferry_engine::prune::{self, PruneOptions};
use ferry_engine::restore::{self, Filter, RestoreOptions};
use ferry_engine::{Job, backup};
use repo_format::{
    BlobKind, Content, DirPart, Directory, Node, NodeType, PART_MAX, Repository, SPLIT_ENTRIES, Tree, TreeId,
    encode_dir_index,
};

const ENTRIES: usize = 150_000;

/// Every 1000th entry holds its name as content; every 50,000th is a directory with one file.
fn make_big(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..ENTRIES {
        let name = format!("e{i:06}");
        let p = dir.join(&name);
        if i % 50_000 == 7 {
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("inner"), name.as_bytes()).unwrap();
        } else if i % 1000 == 3 {
            std::fs::write(&p, name.repeat(10)).unwrap();
        } else {
            std::fs::File::create(&p).unwrap();
        }
    }
}

/// The `big` directory's blob in the snapshot whose root is `root`.
async fn big_dir(repo: &Repository, root: TreeId) -> (TreeId, Directory) {
    let tree = repo.read_tree(&root).await.unwrap();
    let node = tree.nodes.iter().find(|n| n.name == b"big").expect("big in the root");
    let Content::Tree(id) = node.content else { panic!("big has no tree") };
    (id, repo.read_dir(&id).await.unwrap())
}

async fn restore_to(repo: &std::sync::Arc<Repository>, root: TreeId, target: &Path) {
    let opts = RestoreOptions::default();
    let plan = restore::plan(repo, root, &Filter::default(), &opts).await.unwrap();
    assert!(plan.rejected.is_empty(), "{:?}", plan.rejected);
    let out = restore::execute(repo.clone(), plan, target, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
}

/// Entries of `dir` and the content of the files that have some, compared with the source.
fn same_big(src: &Path, dst: &Path) {
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let (a, b) = (names(src), names(dst));
    assert_eq!(a.len(), b.len(), "entries restored");
    assert!(a == b, "the same names");
    for name in &a {
        let (s, d) = (src.join(name), dst.join(name));
        let (ms, md) = (std::fs::symlink_metadata(&s).unwrap(), std::fs::symlink_metadata(&d).unwrap());
        assert_eq!((ms.is_dir(), ms.size()), (md.is_dir(), md.size()), "{name:?}");
        if ms.is_dir() {
            assert_eq!(std::fs::read(s.join("inner")).unwrap(), std::fs::read(d.join("inner")).unwrap());
        } else if ms.size() > 0 {
            assert_eq!(std::fs::read(&s).unwrap(), std::fs::read(&d).unwrap(), "{name:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_150k_entries_goes_in_parts_and_comes_back_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (tmp.path().join("src"), tmp.path().join("repo"));
    make_big(&src.join("big"));
    std::fs::write(src.join("small"), b"a small file beside it").unwrap();
    // Files changed in the second before a backup are not trusted from it by the next one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let repo = new_repo(&repo_dir).await;

    let first = backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    // A backup works on a view of the repository (an index of its own): read what it wrote.
    repo.load_index().await.unwrap();
    assert_eq!(first.snapshot.summary.dirs_split, 1, "one directory in parts");
    // Format version 3 in the snapshot's clear header: older software refuses it by name.
    let stored = std::fs::read(repo_dir.join("snapshots").join(first.snapshot_id.0.to_hex())).unwrap();
    assert_eq!(u16::from_le_bytes([stored[6], stored[7]]), 3, "snapshot header version");

    let (_, dir) = big_dir(&repo, first.snapshot.tree).await;
    let Directory::Parts(parts) = dir else { panic!("{ENTRIES} entries in one tree") };
    const { assert!(ENTRIES > SPLIT_ENTRIES) };
    assert!(parts.len() >= 3, "{} parts", parts.len());
    assert_eq!(parts.iter().map(|p| p.entries as usize).sum::<usize>(), ENTRIES);
    assert!(parts.iter().all(|p| p.entries as usize <= PART_MAX));

    // One file more, no files cache: every other file is taken from the parent, found through
    // its parts; only the parts around the new name, the index, and the root are new trees.
    std::fs::write(src.join("big").join("e075000x"), b"new").unwrap();
    let second = backup::run(repo.clone(), config(&src, "h"), &Job::new()).await.unwrap();
    repo.load_index().await.unwrap();
    let s = &second.snapshot.summary;
    assert_eq!(second.snapshot.parent, Some(first.snapshot_id));
    assert_eq!((s.files_new, s.files_changed), (1, 0), "{s:?}");
    assert_eq!(s.files_unchanged, first.snapshot.summary.files_new, "{s:?}");
    let (_, Directory::Parts(parts2)) = big_dir(&repo, second.snapshot.tree).await else { panic!("not in parts") };
    let new_parts = parts2.iter().filter(|p| !parts.contains(p)).count() as u64;
    assert_eq!(s.tree_blobs_added, new_parts + 2, "tree blobs: the new parts, the index and the root");
    // How many parts one name changes depends on where the repository's random seed puts the
    // cuts: the part holding it, and the next one when a cut moves (a name passing `PART_MIN`
    // or `PART_MAX`). Over 3000 seeds with these names: one part 93.4 %, two 6.6 %, three
    // 0.03 % (a moved cut moving the next); the fixed-seed property is dirparts'
    // `one_more_entry_changes_few_parts`.
    assert!((1..=3).contains(&new_parts), "{new_parts} of {} parts new", parts2.len());

    // Forget the first snapshot and prune: what the second needs (its parts) stays.
    let gone = ferry_engine::forget::remove_snapshots(&**repo.storage(), &[first.snapshot_id]).await;
    assert!(gone.is_empty(), "{gone:?}");
    let repo = reopen(&repo_dir).await;
    // Nothing unused may stay: every pack with a blob of the first snapshot alone is rewritten,
    // so a prune that did not follow the index to the parts would delete the second's parts.
    let opts = PruneOptions { sweep_now: true, max_unused: prune::MaxUnused::Bytes(0), ..Default::default() };
    let pruned = prune::prune(&repo, &opts, &Job::new()).await.unwrap();
    let repo = reopen(&repo_dir).await;
    let report = check::check(&repo, &CheckOptions { read_data: ReadData::All }, &Job::new()).await.unwrap();
    assert!(report.damage.is_empty(), "{report:?}");
    assert_eq!(report.unused_blobs, 0, "the first snapshot's own parts were pruned: {pruned:?} {report:?}");

    let target = tmp.path().join("restored");
    restore_to(&repo, second.snapshot.tree, &target).await;
    same_big(&src.join("big"), &target.join("big"));
    assert_eq!(std::fs::read(target.join("small")).unwrap(), b"a small file beside it");
}

/// Save tree-kind blobs; their ids.
async fn save_trees(repo: &Repository, blobs: Vec<Vec<u8>>) -> Vec<TreeId> {
    let w = repo.writer(Default::default());
    let w2 = w.clone();
    let ids = tokio::task::spawn_blocking(move || {
        blobs.iter().map(|b| TreeId(w2.save(BlobKind::Tree, b).unwrap().id.0)).collect()
    })
    .await
    .unwrap();
    repo.finish_writer(w).await.unwrap();
    ids
}

#[tokio::test]
async fn a_forged_index_naming_one_part_twice_restores_each_entry_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    repo.load_index().await.unwrap();
    let file = |name: &str| {
        let mut n = Node::new(name, NodeType::File);
        n.mode = 0o644;
        n
    };
    let part = Tree { nodes: vec![file("a"), file("b"), file("c")] };
    let [part_id] = save_trees(&repo, vec![part.encode().unwrap()]).await[..] else { unreachable!() };
    let twice = encode_dir_index(&[DirPart { id: part_id, entries: 3 }, DirPart { id: part_id, entries: 3 }]);
    let lying = encode_dir_index(&[DirPart { id: part_id, entries: 4 }]);
    let ids = save_trees(&repo, vec![twice, lying]).await;
    let repo = reopen(&tmp.path().join("repo")).await;
    repo.load_index().await.unwrap();

    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, ids[0], &Filter::default(), &opts).await.unwrap();
    assert_eq!(plan.files.len(), 3, "each entry once");
    assert_eq!(plan.rejected.len(), 3, "{:?}", plan.rejected);
    assert!(plan.rejected.iter().all(|r| r.to_string().contains("out-of-order")), "{:?}", plan.rejected);

    // An index whose count disagrees with its part is refused as damage, naming the blob.
    let err = restore::plan(&repo, ids[1], &Filter::default(), &opts).await.unwrap_err();
    assert!(format!("{err:#}").contains("index says 4"), "{err:#}");
}
