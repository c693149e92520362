//! A snapshot crafted to escape the restore target (bad names, duplicate names, symlink tricks)
//! and a target prepared with symlinks and hardlinks: nothing is written outside the target.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use repo_format::{Node, NodeType};

use crate::common::forge::{Forge, T0, special};
use crate::common::{Env, list_tree, stderr};

fn symlink(name: &[u8], target: &Path) -> Node {
    let mut n = special(name, NodeType::Symlink, 0o777, 0);
    n.link_target = target.as_os_str().as_encoded_bytes().to_vec();
    n
}

/// Create the repository with the library and write the hostile snapshot into it.
fn craft(env: &Env, outside: &Path) {
    let f = Forge::init(env);
    let nodes = vec![
        f.dir(b"..", vec![f.file(b"escaped-dotdot", b"evil")]),
        f.file(b"a/b", b"evil"),
        f.file(b"nul\0byte", b"evil"),
        f.file(b"", b"evil"),
        f.file(b".", b"evil"),
        // A symlink out of the target, then a directory of the same name through which
        // a file would land outside.
        symlink(b"x", outside),
        f.dir(b"x", vec![f.file(b"pwned", b"evil")]),
        symlink(b"y", outside),
        f.file(b"y/pwned2", b"evil"),
        // The same trick one level down, and a relative symlink upwards.
        f.dir(
            b"deep",
            vec![
                symlink(b"up", Path::new("../..")),
                f.dir(b"up", vec![f.file(b"pwned3", b"evil")]),
                f.file(b"ok", b"deep ok"),
            ],
        ),
        // A directory where the target has a symlink to the outside.
        f.dir(b"d", vec![f.file(b"f", b"d/f content")]),
        // Good entries.
        f.file(b"good1", b"good one"),
        f.dir(b"sub", vec![f.file(b"good2", b"good two")]),
    ];
    let root = f.tree(nodes);
    f.snapshot(root, T0, "evil");
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
    assert_eq!(top, ["cache", "forge-tmp", "outside", "repo", "victim", "work"], "written above the target");

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
