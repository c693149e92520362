//! `compare_trees`: every difference between two directory trees that a backup and restore
//! must not introduce.
//!
//! Both trees are walked with `lstat` (symlinks are never followed). For every entry below the
//! roots it compares: the set of names (raw bytes), type, permission bits including
//! setuid/setgid/sticky, uid, gid, size (regular files), content bytes (regular files), symlink
//! targets, mtime in ns (every type), rdev (devices), xattrs of every namespace the caller may
//! list (`user.*`, `trusted.*`, `security.*`, and `system.posix_acl_*` ACLs; names and values),
//! hardlink structure (paths sharing an inode in A share one in B and vice versa) and
//! sparseness (a sparse file of A uses at most `SPARSE_SLACK_BLOCKS` more 512-byte blocks in B).
//!
//! The roots' own metadata is not compared: a snapshot of one directory makes it the snapshot's
//! root, and a restore target keeps its own metadata. Directory sizes are file-system specific
//! and not compared either.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// How many more 512-byte blocks a sparse file may use in B than in A (128 KiB).
pub const SPARSE_SLACK_BLOCKS: u64 = 256;

struct Entry {
    md: Metadata,
    link_target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn kind(md: &Metadata) -> &'static str {
    let t = md.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "file"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "char device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// Every entry below `root`, keyed by its relative path as raw bytes.
fn collect(root: &Path) -> Result<BTreeMap<Vec<u8>, Entry>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(std::ffi::OsStr::from_bytes(&rel)) };
        let rd = std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("reading {}: {e}", dir.display()))?;
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(e.file_name().as_bytes());
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).map_err(|e| format!("lstat {}: {e}", path.display()))?;
            let link_target = if md.file_type().is_symlink() {
                Some(
                    std::fs::read_link(&path)
                        .map_err(|e| format!("readlink {}: {e}", path.display()))?
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else {
                None
            };
            let mut xattrs = BTreeMap::new();
            if let Ok(names) = xattr::list(&path) {
                for n in names {
                    let v =
                        xattr::get(&path, &n).map_err(|e| format!("reading xattr {n:?} of {}: {e}", path.display()))?;
                    xattrs.insert(n.as_bytes().to_vec(), v.unwrap_or_default());
                }
            }
            if md.is_dir() {
                stack.push(child.clone());
            }
            out.insert(child, Entry { md, link_target, xattrs });
        }
    }
    Ok(out)
}

fn show(p: &[u8]) -> String {
    p.escape_ascii().to_string()
}

fn mtime(md: &Metadata) -> i64 {
    md.mtime() * 1_000_000_000 + md.mtime_nsec()
}

/// Compare two files' bytes; `None` when equal, else where they differ.
fn content_difference(a: &Path, b: &Path) -> Option<String> {
    let (mut fa, mut fb) = match (File::open(a), File::open(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => return Some(format!("cannot open: {:?} / {:?}", x.err(), y.err())),
    };
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        match (na, nb) {
            (Ok(na), Ok(nb)) => {
                if ba[..na] != bb[..nb] {
                    let at = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y).unwrap_or(na.min(nb));
                    return Some(format!("content differs at offset {}", off + at as u64));
                }
                if na == 0 {
                    return None;
                }
                off += na as u64;
            }
            (x, y) => return Some(format!("read error: {:?} / {:?}", x.err(), y.err())),
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Hardlink groups: for each non-directory path, the sorted set of paths sharing its inode.
fn link_groups(t: &BTreeMap<Vec<u8>, Entry>) -> HashMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut by_inode: HashMap<(u64, u64), BTreeSet<Vec<u8>>> = HashMap::new();
    for (p, e) in t {
        if !e.md.is_dir() {
            by_inode.entry((e.md.dev(), e.md.ino())).or_default().insert(p.clone());
        }
    }
    let mut out = HashMap::new();
    for group in by_inode.into_values() {
        for p in &group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

/// All differences between the trees below `a` and `b`, one line each; empty means equal.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    let (ta, tb) = match (collect(a), collect(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => return vec![format!("cannot walk the trees: {:?} / {:?}", x.err(), y.err())],
    };
    let mut diffs = Vec::new();
    for p in ta.keys().filter(|p| !tb.contains_key(*p)) {
        diffs.push(format!("{}: missing in B", show(p)));
    }
    for p in tb.keys().filter(|p| !ta.contains_key(*p)) {
        diffs.push(format!("{}: only in B", show(p)));
    }
    for (p, ea) in &ta {
        let Some(eb) = tb.get(p) else { continue };
        let (ma, mb) = (&ea.md, &eb.md);
        let name = show(p);
        if kind(ma) != kind(mb) {
            diffs.push(format!("{name}: type {} vs {}", kind(ma), kind(mb)));
            continue;
        }
        let mut check = |what: &str, x: String, y: String| {
            if x != y {
                diffs.push(format!("{name}: {what} {x} vs {y}"));
            }
        };
        check("mode", format!("{:o}", ma.mode() & 0o7777), format!("{:o}", mb.mode() & 0o7777));
        check("uid", ma.uid().to_string(), mb.uid().to_string());
        check("gid", ma.gid().to_string(), mb.gid().to_string());
        check("mtime_ns", mtime(ma).to_string(), mtime(mb).to_string());
        check("symlink target", format!("{:?}", ea.link_target), format!("{:?}", eb.link_target));
        let xattrs = |x: &BTreeMap<Vec<u8>, Vec<u8>>| {
            let list: Vec<String> = x.iter().map(|(k, v)| format!("{}=\"{}\"", show(k), show(v))).collect();
            format!("{{{}}}", list.join(", "))
        };
        check("xattrs", xattrs(&ea.xattrs), xattrs(&eb.xattrs));
        let t = ma.file_type();
        if t.is_char_device() || t.is_block_device() {
            check("rdev", ma.rdev().to_string(), mb.rdev().to_string());
        }
        if t.is_file() {
            check("size", ma.size().to_string(), mb.size().to_string());
            if ma.size() == mb.size() {
                let (pa, pb) = (a.join(std::ffi::OsStr::from_bytes(p)), b.join(std::ffi::OsStr::from_bytes(p)));
                if let Some(d) = content_difference(&pa, &pb) {
                    diffs.push(format!("{name}: {d}"));
                }
            }
            if ma.blocks() * 512 < ma.size() && mb.blocks() > ma.blocks() + SPARSE_SLACK_BLOCKS {
                diffs.push(format!(
                    "{name}: sparse in A ({} blocks) but not in B ({} blocks)",
                    ma.blocks(),
                    mb.blocks()
                ));
            }
        }
    }
    let (ga, gb) = (link_groups(&ta), link_groups(&tb));
    let mut reported = BTreeSet::new();
    for (p, group_a) in &ga {
        let Some(group_b) = gb.get(p) else { continue };
        // Compare the groups restricted to paths present in both trees.
        let norm = |g: &BTreeSet<Vec<u8>>| -> BTreeSet<Vec<u8>> {
            g.iter().filter(|x| ta.contains_key(*x) && tb.contains_key(*x)).cloned().collect()
        };
        let (na, nb) = (norm(group_a), norm(group_b));
        if na != nb && reported.insert(na.clone()) && reported.insert(nb.clone()) {
            let list = |g: &BTreeSet<Vec<u8>>| g.iter().map(|x| show(x)).collect::<Vec<_>>().join(", ");
            diffs.push(format!(
                "{}: hardlink structure differs: A links [{}], B links [{}]",
                show(p),
                list(&na),
                list(&nb)
            ));
        }
    }
    diffs.sort();
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{set_mtime, write};

    /// A small tree with a file, a subdirectory, a hardlink pair and an xattr; fixed times.
    fn build(root: &Path) {
        write(&root.join("f"), b"hello");
        write(&root.join("sub/g"), b"world");
        std::fs::hard_link(root.join("sub/g"), root.join("g2")).unwrap();
        xattr::set(root.join("f"), "user.a", b"1").unwrap();
        for (p, t) in
            [("f", 1_600_000_000_123_456_789), ("sub/g", 1_600_000_001_000_000_001), ("sub", 1_500_000_000_000_000_005)]
        {
            set_mtime(&root.join(p), t);
        }
    }

    #[test]
    fn compare_trees_detects_each_kind_of_difference() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        build(&a);
        build(&b);
        assert_eq!(compare_trees(&a, &b), Vec::<String>::new(), "identical trees");

        // A changed mode.
        std::fs::set_permissions(b.join("f"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let d = compare_trees(&a, &b);
        assert!(d.len() == 1 && d[0].starts_with("f: mode"), "{d:?}");
        std::fs::set_permissions(b.join("f"), std::fs::metadata(a.join("f")).unwrap().permissions()).unwrap();
        assert!(compare_trees(&a, &b).is_empty());

        // A changed mtime (1 ns).
        set_mtime(&b.join("f"), 1_600_000_000_123_456_788);
        let d = compare_trees(&a, &b);
        assert!(d.len() == 1 && d[0].starts_with("f: mtime_ns"), "{d:?}");
        set_mtime(&b.join("f"), 1_600_000_000_123_456_789);
        assert!(compare_trees(&a, &b).is_empty());

        // A missing xattr.
        xattr::remove(b.join("f"), "user.a").unwrap();
        let d = compare_trees(&a, &b);
        assert!(d.len() == 1 && d[0].starts_with("f: xattrs"), "{d:?}");
        xattr::set(b.join("f"), "user.a", b"1").unwrap();
        assert!(compare_trees(&a, &b).is_empty());

        // An xattr outside user.* (the tests run as root): trusted.*, on a directory.
        xattr::set(b.join("sub"), "trusted.t", b"x").unwrap();
        let d = compare_trees(&a, &b);
        assert!(d.len() == 1 && d[0].starts_with("sub: xattrs"), "{d:?}");
        xattr::remove(b.join("sub"), "trusted.t").unwrap();
        assert!(compare_trees(&a, &b).is_empty());

        // A broken hardlink: g2 becomes an identical copy with the same metadata.
        std::fs::remove_file(b.join("g2")).unwrap();
        std::fs::copy(b.join("sub/g"), b.join("g2")).unwrap();
        set_mtime(&b.join("g2"), 1_600_000_001_000_000_001);
        set_mtime(&b.join("sub"), 1_500_000_000_000_000_005);
        let d = compare_trees(&a, &b);
        assert!(d.len() == 1 && d[0].contains("hardlink structure differs"), "{d:?}");

        // Names, content and sparseness.
        let c = tmp.path().join("c");
        build(&c);
        write(&c.join("extra"), b"");
        std::fs::write(c.join("f"), b"hellO").unwrap();
        set_mtime(&c.join("f"), 1_600_000_000_123_456_789);
        let d = compare_trees(&a, &c);
        assert!(d.iter().any(|l| l == "extra: only in B"), "{d:?}");
        assert!(d.iter().any(|l| l == "f: content differs at offset 4"), "{d:?}");
        let (s1, s2) = (tmp.path().join("s1"), tmp.path().join("s2"));
        for (dir, dense) in [(&s1, false), (&s2, true)] {
            std::fs::create_dir(dir).unwrap();
            let f = File::create(dir.join("sparse")).unwrap();
            if dense {
                std::io::Write::write_all(&mut &f, &vec![0u8; 4 << 20]).unwrap();
            } else {
                f.set_len(4 << 20).unwrap();
            }
            set_mtime(&dir.join("sparse"), 1_000_000_000);
        }
        let d = compare_trees(&s1, &s2);
        assert!(d.len() == 1 && d[0].contains("sparse in A"), "{d:?}");
    }
}
