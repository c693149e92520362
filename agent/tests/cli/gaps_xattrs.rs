//! Extended attributes beyond `user.*`: `security.*` (including a real file capability),
//! `trusted.*` and POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`) on files,
//! directories, a FIFO and a symlink, backed up and restored as root and compared exactly by
//! `compare_trees` (which compares every namespace). The trees live on a loop-mounted ext4 file
//! system (default `mkfs.ext4`: `user_xattr` and `acl` on), which stores all four namespaces;
//! ACLs are written as their kernel xattr encoding, so no `acl` package is needed.

use std::path::Path;

use nix::sys::stat::{Mode, SFlag, mknod};

use crate::common::devices::Ext4;
use crate::common::{Env, compare_trees, set_mtime, stderr, write};

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// The `system.posix_acl_*` value for `(tag, perm, id)` entries (in the kernel's order:
/// `posix_acl_xattr_header` version 2, then `posix_acl_xattr_entry`s, little-endian).
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `cap_net_raw+ep` as `security.capability` (VFS_CAP_REVISION_2 with the effective flag).
fn cap_net_raw() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    for word in [1u32 << 13, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn set(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value).unwrap_or_else(|e| panic!("setting {name} on {}: {e}", p.display()));
}

/// The tree; every value set here is checked to be there before the backup.
pub(crate) fn build(src: &Path) {
    // A file capability (chown first: it clears security.capability).
    write(&src.join("ping"), b"\x7fELF pretend\n");
    chown(&src.join("ping"), 1234, 5678);
    set(&src.join("ping"), "security.capability", &cap_net_raw());
    // trusted.* and security.* on a file, a directory, a FIFO and a symlink.
    write(&src.join("labelled"), b"labelled file\n");
    std::fs::create_dir(src.join("labelled-dir")).unwrap();
    mknod(&src.join("fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o640), 0).unwrap();
    std::os::unix::fs::symlink("labelled", src.join("link")).unwrap();
    for name in ["labelled", "labelled-dir", "fifo", "link"] {
        let p = src.join(name);
        set(&p, "trusted.ferry", b"\x00binary\xfftrusted");
        set(&p, "security.ferry", b"a label");
    }
    set(&src.join("labelled"), "user.also", b"user namespace too");
    // An access ACL on a file: a named user and a named group, the mask below the group.
    write(&src.join("acl-file"), b"shared\n");
    let file_acl = acl(&[
        (USER_OBJ, 6, NO_ID),
        (USER, 4, 1234),
        (GROUP_OBJ, 6, NO_ID),
        (GROUP, 4, 5678),
        (MASK, 4, NO_ID),
        (OTHER, 0, NO_ID),
    ]);
    set(&src.join("acl-file"), "system.posix_acl_access", &file_acl);
    // A directory with both ACLs; entries made before its default ACL have none of their own.
    let d = src.join("acl-dir");
    std::fs::create_dir(&d).unwrap();
    write(&d.join("plain"), b"no acl\n");
    std::fs::create_dir(d.join("sub")).unwrap();
    mknod(&d.join("fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0).unwrap();
    let dir_acl =
        acl(&[(USER_OBJ, 7, NO_ID), (USER, 5, 1234), (GROUP_OBJ, 5, NO_ID), (MASK, 5, NO_ID), (OTHER, 0, NO_ID)]);
    let default_acl =
        acl(&[(USER_OBJ, 7, NO_ID), (USER, 7, 4321), (GROUP_OBJ, 5, NO_ID), (MASK, 7, NO_ID), (OTHER, 5, NO_ID)]);
    set(&d, "system.posix_acl_access", &dir_acl);
    set(&d, "system.posix_acl_default", &default_acl);
    // Made after the default ACL: inherits an access ACL (and a default one, being a directory).
    write(&d.join("inherited"), b"inherits\n");
    std::fs::create_dir(d.join("inherited-dir")).unwrap();
    for (p, name) in [
        (d.join("inherited"), "system.posix_acl_access"),
        (d.join("inherited-dir"), "system.posix_acl_default"),
        (src.join("ping"), "security.capability"),
        (src.join("link"), "trusted.ferry"),
    ] {
        assert!(xattr::get(&p, name).unwrap().is_some(), "{} lacks {name}", p.display());
    }
    for p in ["plain", "sub", "fifo"] {
        assert!(xattr::get(d.join(p), "system.posix_acl_access").unwrap().is_none(), "{p} has an ACL");
    }
    let mut all = crate::common::list_tree(src);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(&src.join(p), 1_650_000_000_000_000_000 + i as i64 * 1_000_000_011);
    }
}

/// The xattrs a restored entry must carry, read back directly (not only through the comparator).
fn assert_values(target: &Path) {
    let get = |p: &str, n: &str| xattr::get(target.join(p), n).unwrap();
    assert_eq!(get("ping", "security.capability"), Some(cap_net_raw()));
    assert_eq!(get("link", "trusted.ferry").as_deref(), Some(&b"\x00binary\xfftrusted"[..]));
    assert_eq!(get("fifo", "security.ferry").as_deref(), Some(&b"a label"[..]));
    assert!(get("acl-file", "system.posix_acl_access").is_some());
    assert!(get("acl-dir", "system.posix_acl_default").is_some());
    assert_eq!(get("acl-dir/fifo", "system.posix_acl_access"), None);
}

#[test]
fn security_trusted_and_acl_xattrs_round_trip_on_ext4() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let fs = Ext4::new(&env.path("x.img"), &env.path("x"), 64 << 20, &[]);
    let src = fs.mnt.join("src");
    std::fs::create_dir(&src).unwrap();
    build(&src);
    let s = env.backup(&src, &[]);
    assert_eq!(crate::common::num(&s, "errors"), 0, "{s}");
    let target = fs.mnt.join("target");
    let out = env.restore("latest", &target, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "restored tree differs:\n{}", diffs.join("\n"));
    assert_values(&target);
}

/// Restoring again over a previous restore must leave the same xattrs: entries re-created inside
/// a directory that already has a default ACL inherit an access ACL from it, which the snapshot
/// does not have.
#[test]
fn restoring_over_a_previous_restore_keeps_acls_exact() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let fs = Ext4::new(&env.path("x.img"), &env.path("x"), 64 << 20, &[]);
    let src = fs.mnt.join("src");
    std::fs::create_dir(&src).unwrap();
    build(&src);
    env.backup(&src, &[]);
    let target = fs.mnt.join("target");
    for round in 1..=2 {
        let out = env.restore("latest", &target, &["--verify"]);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", stderr(&out));
        let diffs = compare_trees(&src, &target);
        assert!(diffs.is_empty(), "round {round}: restored tree differs:\n{}", diffs.join("\n"));
        assert_values(&target);
    }
}
