//! Every kind of file system entry and metadata survives backup and restore.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::common::{Env, compare_trees, join_raw, json_lines, random_bytes, set_mtime, write};

const NL_NAME: &[u8] = b"new\nline";
const NON_UTF8: &[u8] = b"\xff\xfe";
const DASH: &[u8] = b"-dash";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// Build the tree; returns nothing, everything is checked against the source itself.
pub(crate) fn build(src: &Path) {
    let long_name = vec![b'L'; 255];
    // Regular files.
    write(&src.join("small.txt"), b"a small text file\n");
    write(&src.join("random.bin"), &random_bytes("fidelity", 5_000_000));
    write(&src.join("empty"), b"");
    write(&src.join("dir/sub/nested.txt"), b"nested\n");
    // A deep tree: 40 levels, a file at the bottom and one halfway.
    let mut deep = src.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level-{i:02}"));
        if i == 20 {
            write(&deep.join("halfway"), b"halfway\n");
        }
    }
    write(&deep.join("bottom"), b"bottom\n");
    // Symlinks: relative, absolute, dangling.
    symlink("../small.txt", src.join("dir/rel-link")).unwrap();
    symlink("/etc/hostname", src.join("abs-link")).unwrap();
    symlink("does/not/exist", src.join("dangling")).unwrap();
    // Hardlinks: one inode, three names in two directories.
    write(&src.join("hl/one"), b"hardlinked content\n");
    std::fs::hard_link(src.join("hl/one"), src.join("hl/two")).unwrap();
    std::fs::hard_link(src.join("hl/one"), src.join("dir/three")).unwrap();
    // A sparse file: 64 MiB with a few KB of data at two offsets.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(src.join("sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&random_bytes("sparse-1", 3000), 1 << 20).unwrap();
        f.write_all_at(&random_bytes("sparse-2", 5000), (40 << 20) + 123).unwrap();
    }
    // FIFO and devices.
    mknod(&src.join("fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o640), 0).unwrap();
    mknod(&src.join("chardev"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o620), makedev(1, 3)).unwrap();
    mknod(&src.join("blockdev"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), makedev(7, 200)).unwrap();
    // Permission bits and owners (owner first: chown clears setuid/setgid).
    write(&src.join("setuid"), b"#!/bin/sh\n");
    chown(&src.join("setuid"), 1234, 5678);
    chmod(&src.join("setuid"), 0o4755);
    std::fs::create_dir(src.join("setgid-dir")).unwrap();
    write(&src.join("setgid-dir/inside"), b"x");
    chown(&src.join("setgid-dir"), 0, 5678);
    chmod(&src.join("setgid-dir"), 0o2755);
    std::fs::create_dir(src.join("sticky")).unwrap();
    chmod(&src.join("sticky"), 0o1777);
    write(&src.join("private"), b"secret\n");
    chmod(&src.join("private"), 0o600);
    chown(&src.join("private"), 0, 0);
    chown(&src.join("dir/sub/nested.txt"), 1234, 5678);
    chown(&src.join("abs-link"), 4321, 8765);
    // Extended attributes on a file and a directory.
    xattr::set(src.join("small.txt"), "user.a", b"1").unwrap();
    xattr::set(src.join("dir"), "user.a", b"1").unwrap();
    xattr::set(src.join("dir"), "user.binary", b"\x00\xff\x01").unwrap();
    // Odd names.
    write(&join_raw(src, NON_UTF8), b"non-utf8 name\n");
    write(&join_raw(src, NL_NAME), b"newline in the name\n");
    write(&join_raw(src, DASH), b"starts with a dash\n");
    write(&join_raw(src, &long_name), b"255 bytes of name\n");
    std::fs::create_dir(join_raw(src, b"dir \xc3\xa9\xff")).unwrap();
    write(&join_raw(src, b"dir \xc3\xa9\xff/\x01ctl"), b"ctl\n");
    // Times: every non-directory entry gets a distinct mtime with nonzero ns; directories last,
    // deepest first, so creating entries does not change them again.
    let mut all = crate::common::list_tree(src);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let (dirs, others): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|p| std::fs::symlink_metadata(src.join(p)).unwrap().is_dir());
    for (i, p) in others.iter().chain(&dirs).enumerate() {
        set_mtime(&src.join(p), 1_600_000_000_000_000_000 + i as i64 * 1_000_000_007 + 123_456_789);
    }
}

#[test]
fn fidelity_round_trip() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    build(&src);
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(src.join("sparse.img")).unwrap();
        assert!(md.blocks() * 512 < md.size() / 100, "the test file system must support sparse files");
    }

    let summary = env.backup(&src, &[]);
    assert_eq!(crate::common::num(&summary, "errors"), 0, "{summary}");
    // fifo, 2 devices and 3 symlinks: 6 other entries.
    assert_eq!(crate::common::num(&summary, "other_entries"), 6, "{summary}");

    let target = env.path("target");
    let out = env.restore("latest", &target, &["--verify", "--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "restore failed: {}", crate::common::stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "restored tree differs:\n{}", diffs.join("\n"));
    assert!(crate::common::list_tree(&target).len() > 60, "the comparison saw the whole tree");

    // Restoring again over the restored tree changes nothing.
    let out = env.restore("latest", &target, &["--verify", "--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "second restore failed: {}", crate::common::stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "tree differs after a second restore:\n{}", diffs.join("\n"));

    // The restore --json summary counts what it did.
    let target2 = env.path("target2");
    let out = env.restore("latest", &target2, &["--json", "--verify", "--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "restore failed: {}", crate::common::stderr(&out));
    let s = crate::common::summary_of(&out.stdout);
    assert_eq!(crate::common::num(&s, "errors"), 0);
    assert_eq!(crate::common::num(&s, "other_entries"), 6, "{s}");
    assert!(crate::common::num(&s, "verified_files") >= 15, "{s}");
    assert!(compare_trees(&src, &target2).is_empty());

    // `ls` names the odd entries; `ls --json` gives each path exactly.
    let out = env.ferry().args(["ls", "latest"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", crate::common::stderr(&out));
    let text = out.stdout;
    // A newline inside a name is shown escaped, so every entry stays on one line.
    for name in [&b"/-dash\n"[..], b"/new\\nline\n", &[&b"/"[..], &[b'L'; 255], b"\n"].concat(), b"/sparse.img\n"] {
        assert!(text.windows(name.len()).any(|w| w == name), "ls lacks {:?}", name.escape_ascii().to_string());
    }
    assert!(String::from_utf8_lossy(&text).contains("/\u{fffd}\u{fffd}\n"), "ls lacks the non-UTF-8 name");
    let deep_bottom = (0..40).map(|i| format!("/level-{i:02}")).collect::<String>();
    assert!(String::from_utf8_lossy(&text).contains(&format!("/deep{deep_bottom}/bottom\n")));

    let out = env.ferry().args(["ls", "--json", "latest"]).output().unwrap();
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[0]["message_type"], "snapshot");
    let node = |path: &str| {
        lines.iter().find(|l| l["path"] == path).unwrap_or_else(|| panic!("ls --json lacks {path:?}")).clone()
    };
    assert_eq!(node("/new\nline")["type"], "file");
    assert_eq!(node("/-dash")["type"], "file");
    assert_eq!(node("/setuid")["mode"], 0o4755);
    assert_eq!(node("/setuid")["uid"], 1234);
    assert_eq!(node("/setgid-dir")["mode"], 0o2755);
    assert_eq!(node("/sticky")["mode"], 0o1777);
    assert_eq!(node("/sparse.img")["size"], 64 << 20);
    assert_eq!(node("/dir/rel-link")["link_target"], "../small.txt");
    assert_eq!(node("/chardev")["type"], "chardev");

    // `snapshots --json` is one JSON array describing the snapshot.
    let out = env.ferry().args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("snapshots --json is JSON");
    let arr = v.as_array().expect("an array");
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["id"], summary["snapshot_id"]);
    assert_eq!(arr[0]["paths"][0], src.to_str().unwrap());
    assert_eq!(arr[0]["summary"]["files_new"], summary["files_new"]);
    assert_eq!(arr[0]["summary"]["errors"], 0);
}

/// The tree `crossbuild/cross-endian.sh` exchanges between architectures: this file's tree plus
/// `security.*`, `trusted.*` and ACL xattrs (in `xattrs/`), built at `$FERRY_TREE`. A tool of
/// that script (run natively, as root), not a test by itself.
#[test]
#[ignore = "tool of crossbuild/cross-endian.sh: builds the tree at $FERRY_TREE"]
fn cross_endian_build_tree() {
    let root = std::path::PathBuf::from(std::env::var_os("FERRY_TREE").expect("FERRY_TREE names the directory"));
    std::fs::create_dir(&root).unwrap();
    build(&root);
    let x = root.join("xattrs");
    std::fs::create_dir(&x).unwrap();
    crate::gaps_xattrs::build(&x);
}

/// `compare_trees($FERRY_TREE_A, $FERRY_TREE_B)`: every difference of names, types, modes,
/// owners, ns mtimes, symlink targets, xattrs, content, hardlinks and sparseness. A tool of
/// `crossbuild/cross-endian.sh`.
#[test]
#[ignore = "tool of crossbuild/cross-endian.sh: compares $FERRY_TREE_A with $FERRY_TREE_B"]
fn cross_endian_compare_trees() {
    let var = |v: &str| std::path::PathBuf::from(std::env::var_os(v).unwrap_or_else(|| panic!("{v} is not set")));
    let (a, b) = (var("FERRY_TREE_A"), var("FERRY_TREE_B"));
    assert!(crate::common::list_tree(&a).len() > 60, "{} is not the exchanged tree", a.display());
    let diffs = compare_trees(&a, &b);
    assert!(diffs.is_empty(), "{} differs from {}:\n{}", b.display(), a.display(), diffs.join("\n"));
}
