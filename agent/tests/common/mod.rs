//! Shared helpers of the end-to-end tests: a repository per test, the `ferry` command with its
//! environment, file system builders and `compare_trees`.

#![allow(dead_code)]

pub mod devices;
pub mod faultproxy;
pub mod forge;
pub mod skip;
pub mod tree;

pub use skip::skip;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

pub use tree::compare_trees;

pub const PASSWORD: &str = "correct horse battery staple";

/// Under qemu-user (cross-architecture test runs) the test binary cannot start the `ferry`
/// binary (no binfmt registration), so end-to-end tests return early there; the cross-endian
/// end-to-end check is `crossbuild/cross-endian.sh`, which runs both binaries for real.
pub fn under_qemu() -> bool {
    let q = std::env::var_os("FERRY_UNDER_QEMU").is_some();
    if q {
        skip("under qemu-user: this test runs the ferry binary");
    }
    q
}

/// The `ferry` binary under test: this build's, or `FERRY_TEST_BIN` when set. crossbuild/e2e.sh
/// sets it to a wrapper that runs another architecture's build under qemu-user, so these native
/// test binaries drive the arm64, ppc64le or s390x `ferry` through the same checks.
pub fn ferry_bin() -> PathBuf {
    std::env::var_os("FERRY_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferry")))
}

/// One test's world: a temporary directory holding a repository, a cache and anything else.
#[derive(Debug)]
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub repo: PathBuf,
    pub cache: PathBuf,
}

impl Env {
    /// A fresh directory with an initialized repository (cheap KDF).
    pub fn new() -> Env {
        let env = Env::empty();
        let out = env.ferry().args(["init", "--kdf-memory", "64", "--kdf-iterations", "1"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        env
    }

    /// A repository at `location` (an object-store URL), with a fresh local cache.
    pub fn at(location: &str) -> Env {
        let mut env = Env::empty();
        env.repo = PathBuf::from(location);
        let out = env.ferry().args(["init", "--kdf-memory", "64", "--kdf-iterations", "1"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "init at {location} failed: {}", String::from_utf8_lossy(&out.stderr));
        env
    }

    /// A fresh directory without a repository.
    pub fn empty() -> Env {
        let tmp = tempfile::Builder::new().prefix("ferry-e2e-").tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        Env { tmp, repo, cache }
    }

    /// A path inside the test's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// `ferry --repo REPO` with the test password and cache, and no inherited configuration.
    pub fn ferry(&self) -> assert_cmd::Command {
        self.ferry_pw(PASSWORD)
    }

    /// As `ferry`, with another password.
    pub fn ferry_pw(&self, password: &str) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(ferry_bin());
        for v in INHERITED {
            c.env_remove(v);
        }
        c.env("FERRY_PASSWORD", password).env("FERRY_CACHE_DIR", &self.cache).arg("--repo").arg(&self.repo);
        c
    }

    /// A `std::process::Command` for `ferry` (for processes that must run at the same time).
    pub fn ferry_std(&self) -> std::process::Command {
        let mut c = std::process::Command::new(ferry_bin());
        for v in INHERITED {
            c.env_remove(v);
        }
        c.env("FERRY_PASSWORD", PASSWORD).env("FERRY_CACHE_DIR", &self.cache).arg("--repo").arg(&self.repo);
        c
    }

    /// `ferry backup --json SRC`; asserts exit 0 and returns the summary line.
    pub fn backup(&self, src: &Path, extra: &[&str]) -> serde_json::Value {
        let out = self.ferry().args(["backup", "--json"]).args(extra).arg(src).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
        summary_of(&out.stdout)
    }

    /// `ferry restore SNAP --target T [extra]`; returns the output (not checked).
    pub fn restore(&self, snap: &str, target: &Path, extra: &[&str]) -> std::process::Output {
        self.ferry().args(["restore", snap, "--target"]).arg(target).args(extra).output().unwrap()
    }
}

/// Configuration the test runner's environment may carry; removed from every invocation.
const INHERITED: [&str; 10] = [
    "FERRY_REPOSITORY",
    "FERRY_PASSWORD",
    "FERRY_PASSWORD_FILE",
    "FERRY_NEW_PASSWORD",
    "FERRY_CHUNK_QUEUE",
    "FERRY_PARALLEL_CHUNKING",
    "FERRY_INDEX_KEYS",
    "FERRY_FROM_REPOSITORY",
    "FERRY_FROM_PASSWORD",
    "FERRY_FROM_PASSWORD_FILE",
];

/// Every JSON line of a command's stdout.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The `"message_type":"summary"` line of a `--json` output.
pub fn summary_of(stdout: &[u8]) -> serde_json::Value {
    let mut found: Vec<_> = json_lines(stdout).into_iter().filter(|v| v["message_type"] == "summary").collect();
    assert_eq!(found.len(), 1, "one summary line expected in {}", String::from_utf8_lossy(stdout));
    found.remove(0)
}

/// A JSON number as u64 (panics with the field name otherwise).
pub fn num(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

/// Deterministic pseudo-random bytes (BLAKE3 in XOF mode, seeded).
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// A path from raw name bytes under `dir`.
pub fn join_raw(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

/// Write a file, creating its parent directories.
pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

/// Set atime and mtime (ns since the epoch) without following a symlink.
pub fn set_mtime(path: &Path, ns: i64) {
    let t = TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// mtime in ns (lstat).
pub fn mtime_ns(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path).unwrap();
    md.mtime() * 1_000_000_000 + md.mtime_nsec()
}

/// Every path below `root` (relative, sorted), directories included.
pub fn list_tree(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else { return };
        for e in rd {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            out.push(r.clone());
            if e.file_type().unwrap().is_dir() {
                walk(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out.sort();
    out
}

/// Every file below `root` with its bytes (a repository's state).
pub fn snapshot_dir(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    list_tree(root)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(root.join(p)).unwrap().is_file())
        .map(|p| {
            let b = std::fs::read(root.join(&p)).unwrap();
            (p, b)
        })
        .collect()
}

/// The stderr of an output, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
