//! A snapshot crafted to escape the restore target (bad names, duplicate names, symlink tricks)
//! and a target prepared with symlinks and hardlinks: nothing is written outside the target.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use repo_format::{
    BlobKind, BlobWriter, Content, KdfParams, Node, NodeType, ObjectStorage, RepoConfig, Repository, Segment, Snapshot,
    Storage, Tree, TreeId, WriterOptions,
};

use crate::common::{Env, PASSWORD, list_tree, stderr};

const T0: i64 = 1_650_000_000_000_000_000;

fn file(w: &BlobWriter, name: &[u8], data: &[u8]) -> Node {
    let saved = w.save(BlobKind::Data, data).unwrap();
    let mut n = Node::new(name.to_vec(), NodeType::File);
    n.mode = 0o644;
    n.size = data.len() as u64;
    n.mtime_ns = T0;
    n.atime_ns = T0;
    n.nlink = 1;
    n.content = Content::Segments(vec![Segment::Blob { id: saved.id, len: data.len() as u32 }]);
    n
}

fn dir(w: &BlobWriter, name: &[u8], nodes: Vec<Node>) -> Node {
    let saved = w.save(BlobKind::Tree, &Tree { nodes }.encode().unwrap()).unwrap();
    let mut n = Node::new(name.to_vec(), NodeType::Dir);
    n.mode = 0o755;
    n.mtime_ns = T0;
    n.atime_ns = T0;
    n.content = Content::Tree(TreeId(saved.id.0));
    n
}

fn symlink(name: &[u8], target: &Path) -> Node {
    let mut n = Node::new(name.to_vec(), NodeType::Symlink);
    n.mode = 0o777;
    n.mtime_ns = T0;
    n.atime_ns = T0;
    n.link_target = target.as_os_str().as_encoded_bytes().to_vec();
    n
}

/// Create the repository with the library and write the hostile snapshot into it.
fn craft(env: &Env, outside: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let tmp = env.path("writer-tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (repo_dir, outside) = (env.repo.clone(), outside.to_path_buf());
    rt.block_on(async move {
        let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&repo_dir).unwrap());
        Repository::init(
            storage.clone(),
            PASSWORD.as_bytes(),
            KdfParams::insecure_for_tests(),
            RepoConfig::new(T0),
            "t",
        )
        .await
        .unwrap();
        let repo = Repository::open(storage, PASSWORD.as_bytes(), None).await.unwrap();
        repo.load_index().await.unwrap();
        let writer = repo.writer(WriterOptions { tmp_dir: tmp, ..Default::default() });
        let w = writer.clone();
        let root = tokio::task::spawn_blocking(move || {
            let nodes = vec![
                dir(&w, b"..", vec![file(&w, b"escaped-dotdot", b"evil")]),
                file(&w, b"a/b", b"evil"),
                file(&w, b"nul\0byte", b"evil"),
                file(&w, b"", b"evil"),
                file(&w, b".", b"evil"),
                // A symlink out of the target, then a directory of the same name through which
                // a file would land outside.
                symlink(b"x", &outside),
                dir(&w, b"x", vec![file(&w, b"pwned", b"evil")]),
                symlink(b"y", &outside),
                file(&w, b"y/pwned2", b"evil"),
                // The same trick one level down, and a relative symlink upwards.
                dir(
                    &w,
                    b"deep",
                    vec![
                        symlink(b"up", Path::new("../..")),
                        dir(&w, b"up", vec![file(&w, b"pwned3", b"evil")]),
                        file(&w, b"ok", b"deep ok"),
                    ],
                ),
                // A directory where the target has a symlink to the outside.
                dir(&w, b"d", vec![file(&w, b"f", b"d/f content")]),
                // Good entries.
                file(&w, b"good1", b"good one"),
                dir(&w, b"sub", vec![file(&w, b"good2", b"good two")]),
            ];
            let saved = w.save(BlobKind::Tree, &Tree { nodes }.encode().unwrap()).unwrap();
            TreeId(saved.id.0)
        })
        .await
        .unwrap();
        repo.finish_writer(writer).await.unwrap();
        let snap = Snapshot {
            time_ns: T0,
            tree: root,
            hostname: "evil".into(),
            username: "mallory".into(),
            program: "crafted".into(),
            paths: vec![b"/evil".to_vec()],
            ..Default::default()
        };
        repo.save_snapshot(&snap).await.unwrap();
    });
}

#[test]
fn hostile_snapshot_writes_nothing_outside_target() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    craft(&env, &outside);

    // The target is prepared: `d` is a symlink to the outside directory, `good1` a hardlink to a
    // file outside the target.
    let target = env.path("work/target");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("d")).unwrap();
    let victim = env.path("victim");
    std::fs::write(&victim, b"original").unwrap();
    std::fs::hard_link(&victim, target.join("good1")).unwrap();

    let out = env.ferry().args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "refused entries make the restore partial: {err}");

    // Nothing outside the target.
    assert_eq!(list_tree(&outside), Vec::<std::path::PathBuf>::new(), "written outside the target");
    assert_eq!(std::fs::read(&victim).unwrap(), b"original", "written through a hardlink");
    assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1, "the target's hardlink was replaced");
    let work: Vec<_> = list_tree(&env.path("work")).into_iter().filter(|p| !p.starts_with("target")).collect();
    assert!(work.is_empty(), "written next to the target: {work:?}");
    let mut top: Vec<_> = std::fs::read_dir(env.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    top.sort();
    assert_eq!(top, ["cache", "outside", "repo", "victim", "work", "writer-tmp"], "written above the target");

    // The good entries are restored.
    assert_eq!(std::fs::read(target.join("good1")).unwrap(), b"good one");
    assert_eq!(std::fs::read(target.join("sub/good2")).unwrap(), b"good two");
    assert_eq!(std::fs::read(target.join("deep/ok")).unwrap(), b"deep ok");
    let d = std::fs::symlink_metadata(target.join("d")).unwrap();
    assert!(d.is_dir(), "target/d must now be a real directory, not the symlink");
    assert_eq!(std::fs::read(target.join("d/f")).unwrap(), b"d/f content");
    // The first of two entries of the same name wins: x and y are the snapshot's symlinks.
    assert_eq!(std::fs::read_link(target.join("x")).unwrap(), outside);
    assert_eq!(std::fs::read_link(target.join("y")).unwrap(), outside);
    assert_eq!(std::fs::read_link(target.join("deep/up")).unwrap(), Path::new("../.."));

    // One error line per refused entry, naming it.
    for needle in [
        r#"unsafe name "..""#,
        r#"unsafe name "a/b""#,
        r#"unsafe name "nul\0byte""#,
        r#"unsafe name """#,
        r#"unsafe name ".""#,
        r#"unsafe name "y/pwned2""#,
        "x: duplicate entry refused",
        "deep/up: duplicate entry refused",
    ] {
        assert!(err.lines().any(|l| l.starts_with("ferry: error: ") && l.contains(needle)), "no {needle:?} in:\n{err}");
    }
    assert_eq!(err.lines().filter(|l| l.contains("refused")).count(), 8, "{err}");
}
