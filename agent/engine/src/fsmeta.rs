//! Reading a file system entry's metadata into a `Node` (backup side).
//!
//! Captures type, permission bits (with setuid/setgid/sticky), numeric owner, times in ns,
//! size, device and inode (for hardlinks), rdev, symlink target and xattrs (never following a
//! symlink). Applying metadata on restore is `safefs`'s job.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use repo_format::{Node, NodeType};

pub fn node_type(md: &Metadata) -> NodeType {
    let t = md.file_type();
    if t.is_dir() {
        NodeType::Dir
    } else if t.is_symlink() {
        NodeType::Symlink
    } else if t.is_fifo() {
        NodeType::Fifo
    } else if t.is_char_device() {
        NodeType::CharDev
    } else if t.is_block_device() {
        NodeType::BlockDev
    } else if t.is_socket() {
        NodeType::Socket
    } else {
        NodeType::File
    }
}

fn ns(s: i64, n: i64) -> i64 {
    s.saturating_mul(1_000_000_000).saturating_add(n)
}

/// A node for `path` (named `name`) from its `lstat` metadata.
pub fn node_from(name: &[u8], path: &Path, md: &Metadata) -> io::Result<Node> {
    let kind = node_type(md);
    let mut n = Node::new(name.to_vec(), kind);
    n.mode = md.mode() & 0o7777;
    n.uid = md.uid();
    n.gid = md.gid();
    n.mtime_ns = ns(md.mtime(), md.mtime_nsec());
    // Listing a directory updates its atime (relatime), which would make every tree differ from
    // the previous backup's: directories record their mtime as atime.
    n.atime_ns = if kind == NodeType::Dir { n.mtime_ns } else { ns(md.atime(), md.atime_nsec()) };
    n.ctime_ns = ns(md.ctime(), md.ctime_nsec());
    n.size = if kind == NodeType::File { md.size() } else { 0 };
    n.dev = md.dev();
    n.ino = md.ino();
    n.nlink = md.nlink() as u32;
    n.rdev = if matches!(kind, NodeType::CharDev | NodeType::BlockDev) { md.rdev() } else { 0 };
    if kind == NodeType::Symlink {
        n.link_target = std::fs::read_link(path)?.into_os_string().into_encoded_bytes();
    }
    n.xattrs = read_xattrs(path);
    Ok(n)
}

/// Extended attributes of `path` itself (not of a symlink's target), sorted by name. Errors
/// (no xattr support on the file system) mean "none".
fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else { return Vec::new() };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter_map(|k| {
            let v = xattr::get(path, &k).ok().flatten()?;
            Some((k.as_bytes().to_vec(), v))
        })
        .collect();
    out.sort();
    out
}

/// A path from raw bytes.
pub fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}
