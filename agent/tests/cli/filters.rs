//! `restore --include/--exclude` select exactly the right entries.

use std::path::PathBuf;

use crate::common::{Env, list_tree, stderr, write};

const FILES: [&str; 8] =
    ["top.txt", "top.log", "a/1.txt", "a/2.log", "b/3.txt", "b/c/4.txt", "b/c/5.log", "b/c/d/6.txt"];

#[test]
fn restore_include_exclude() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    for f in FILES {
        write(&src.join(f), format!("content of {f}\n").as_bytes());
    }
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    env.backup(&src, &[]);

    let cases: [(&str, &[&str], &[&str]); 9] = [
        ("all", &[], &[]),
        ("one dir", &["--include", "a"], &["a", "a/1.txt", "a/2.log"]),
        ("dir contents", &["--include", "a/*"], &["a", "a/1.txt", "a/2.log"]),
        ("one file", &["--include", "b/c/4.txt"], &["b", "b/c", "b/c/4.txt"]),
        ("by pattern", &["--include", "*.log"], &["a", "a/2.log", "b", "b/c", "b/c/5.log", "top.log"]),
        (
            "exclude by name",
            &["--exclude", "*.log"],
            &["a", "a/1.txt", "b", "b/3.txt", "b/c", "b/c/4.txt", "b/c/d", "b/c/d/6.txt", "empty-dir", "top.txt"],
        ),
        ("exclude a subtree", &["--exclude", "b"], &["a", "a/1.txt", "a/2.log", "empty-dir", "top.log", "top.txt"]),
        (
            "include and exclude",
            &["--include", "b", "--exclude", "*.log", "--exclude", "d"],
            &["b", "b/3.txt", "b/c", "b/c/4.txt"],
        ),
        (
            "two includes",
            &["--include", "top.txt", "--include", "b/c/d"],
            &["b", "b/c", "b/c/d", "b/c/d/6.txt", "top.txt"],
        ),
    ];
    for (i, (what, args, expect)) in cases.iter().enumerate() {
        let target = env.path(&format!("target-{i}"));
        let out = env.restore("latest", &target, args);
        assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
        let got = list_tree(&target);
        let want: Vec<PathBuf> = if expect.is_empty() {
            list_tree(&src)
        } else {
            let mut w: Vec<PathBuf> = expect.iter().map(PathBuf::from).collect();
            w.sort();
            w
        };
        assert_eq!(got, want, "{what} ({args:?})");
        for p in &got {
            let (a, b) = (src.join(p), target.join(p));
            if a.is_file() {
                assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{what}: {}", p.display());
            }
        }
    }

    // A bad pattern is a clear usage error and restores nothing.
    let target = env.path("target-bad");
    let out = env.restore("latest", &target, &["--include", "a/[x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("include pattern"), "{}", stderr(&out));
    assert!(!target.exists() || list_tree(&target).is_empty());
}
