//! Directories are made one depth at a time, those of one depth on several threads: every
//! directory of a wide and deep tree is there after a restore, with its mode and its files, and
//! a directory nothing can be made in gives error lines for its subtree, not a crash, a hang or
//! a directory made elsewhere.

mod common;
#[path = "../../tests/common/skip.rs"]
mod skip;

use std::os::unix::fs::PermissionsExt;

use common::*;
use ferry_engine::Job;
use ferry_engine::restore::{self, Filter, RestoreOptions};
use repo_format::{BlobKind, Node, Segment, Tree, TreeId};

/// Directories at each depth below the first, per top directory: with both, enough for several
/// threads (`par_fill` uses one per 256 entries).
const WIDE: usize = 600;

async fn tree(repo: &repo_format::Repository, nodes: Vec<Node>) -> TreeId {
    TreeId(save(repo, vec![(BlobKind::Tree, Tree { nodes }.encode().unwrap())]).await[0].0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_directory_of_a_wide_deep_tree_is_made_with_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let x = random_bytes("x", 700);
    let bx = Segment::Blob { id: save(&repo, vec![(BlobKind::Data, x.clone())]).await[0], len: x.len() as u32 };
    // {a,b}/d0000/e/f/leaf, {a,b}/d0001/e/f/leaf, …: two directories, then four depths as wide
    // as there are threads' slices. The plan lists a directory's children before going down
    // (depth first from the last one), so a slice holds directories whose parents are in
    // another slice: made in plan order on several threads, some would come before their parent.
    let f = tree(&repo, vec![file("leaf", vec![bx])]).await;
    let mut f_node = dir("f", f);
    f_node.mode = 0o750;
    let e = tree(&repo, vec![f_node]).await;
    let e = tree(&repo, vec![dir("e", e)]).await;
    let mut top = Vec::new();
    for i in 0..WIDE {
        let mut d = dir(&format!("d{i:04}"), e);
        d.mode = 0o700 | (i as u32 % 8) << 3;
        top.push(d);
    }
    let top = tree(&repo, top).await;
    let root = tree(&repo, vec![dir("a", top), dir("b", top)]).await;

    repo.load_index().await.unwrap();
    let target = tmp.path().join("out");
    let opts = RestoreOptions::default();
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    // d0007 is there already and immutable (`chattr +i`, which stops root too): nothing can be
    // made in it, so it and its subtree are error lines. Where the file system has no such
    // flag, every directory must simply be there.
    let stuck = target.join("a/d0007");
    std::fs::create_dir_all(&stuck).unwrap();
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&stuck)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await;
    if immutable {
        std::process::Command::new("chattr").arg("-i").arg(&stuck).status().unwrap();
    }
    let out = out.unwrap();

    let failed: Vec<String> = out.errors.iter().map(|e| format!("{e:?}")).collect();
    for (t, i) in ["a", "b"].into_iter().flat_map(|t| (0..WIDE).map(move |i| (t, i))) {
        let d = target.join(format!("{t}/d{i:04}"));
        if d == stuck && immutable {
            assert!(!d.join("e").exists());
            continue;
        }
        let got = std::fs::read(d.join("e/f/leaf")).map_err(|e| format!("{}: {e}: {failed:?}", d.display()));
        assert_eq!(got.unwrap(), x);
        assert_eq!(std::fs::metadata(d.join("e/f")).unwrap().permissions().mode() & 0o7777, 0o750);
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777, 0o700 | (i as u32 % 8) << 3);
    }
    if immutable {
        // a/d0007/e, a/d0007/e/f and the leaf, and a/d0007's own metadata.
        assert!(failed.len() >= 3, "{failed:?}");
        assert!(failed.iter().all(|e| e.contains("a/d0007")), "only a/d0007's subtree fails: {failed:?}");
        assert!(!target.join("e").exists() && !target.join("f").exists(), "nothing made outside its place");
    } else {
        assert!(failed.is_empty(), "{failed:?}");
        skip::skip("chattr +i refused here: the half with a directory nothing can be made in did not run");
    }
}
