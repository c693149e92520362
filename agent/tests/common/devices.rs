//! Loop devices and loop-mounted ext4 and xfs file systems (root only), each
//! undone on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use repo_format::testing::unmount;

/// Run a command, asserting success; returns its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a file, detached on drop.
#[derive(Debug)]
pub struct Loop(pub String);

impl Loop {
    pub fn new(file: &Path) -> Loop {
        Loop(run("losetup", &["-f", "--show", file.to_str().unwrap()]).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A file system (ext4, or another with [`Ext4::with_mkfs`]) in a sparse image file, mounted
/// on a directory; unmounted on drop.
#[derive(Debug)]
pub struct Ext4 {
    pub mnt: PathBuf,
    _dev: Loop,
}

impl Ext4 {
    /// `size` bytes, made with the extra `mkfs_args` (e.g. `-I 128`), mounted at `mnt`.
    pub fn new(image: &Path, mnt: &Path, size: u64, mkfs_args: &[&str]) -> Ext4 {
        let mut args = vec!["-q", "-F"];
        args.extend_from_slice(mkfs_args);
        Ext4::with_mkfs("mkfs.ext4", &args, image, mnt, size)
    }

    /// An xfs file system of `size` bytes (at least 300 MiB for mkfs.xfs) mounted at `mnt`.
    pub fn xfs(image: &Path, mnt: &Path, size: u64) -> Ext4 {
        Ext4::with_mkfs("mkfs.xfs", &["-q", "-f"], image, mnt, size)
    }

    /// Made by `mkfs` with `args` followed by the device.
    pub fn with_mkfs(mkfs: &str, args: &[&str], image: &Path, mnt: &Path, size: u64) -> Ext4 {
        std::fs::File::create(image).unwrap().set_len(size).unwrap();
        let dev = Loop::new(image);
        let mut args = args.to_vec();
        args.push(&dev.0);
        run(mkfs, &args);
        std::fs::create_dir_all(mnt).unwrap();
        run("mount", &[&dev.0, mnt.to_str().unwrap()]);
        Ext4 { mnt: mnt.to_path_buf(), _dev: dev }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// `source` bind-mounted on `target` (created), unmounted on drop.
#[derive(Debug)]
pub struct BindMount {
    pub target: PathBuf,
}

impl BindMount {
    pub fn new(source: &Path, target: &Path) -> BindMount {
        std::fs::create_dir_all(target).unwrap();
        run("mount", &["--bind", source.to_str().unwrap(), target.to_str().unwrap()]);
        BindMount { target: target.to_path_buf() }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        unmount(&self.target);
    }
}
