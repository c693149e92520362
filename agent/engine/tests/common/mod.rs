//! Shared fixtures of the engine's tests: a repository in a local directory and source trees
//! of incompressible data. Everything is real (files, a local-directory repository); these
//! tests call the engine in-process, without the CLI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_engine::backup::BackupConfig;
use repo_format::{
    BlobKind, Content, KdfParams, Node, NodeType, ObjectStorage, RepoConfig, Repository, Segment, Storage, TreeId,
};

pub const PASSWORD: &[u8] = b"engine-test";

/// A new repository in `dir` with 1 MiB packs (many packs, so a cancellation lands mid-way).
pub async fn new_repo(dir: &Path) -> Arc<Repository> {
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).unwrap());
    let mut config = RepoConfig::new(1);
    config.pack_size = 1 << 20;
    Arc::new(Repository::init(storage, PASSWORD, KdfParams::insecure_for_tests(), config, "test").await.unwrap())
}

/// The repository in `dir`, opened afresh (what another process would see).
pub async fn reopen(dir: &Path) -> Arc<Repository> {
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(dir).unwrap());
    Arc::new(Repository::open(storage, PASSWORD, None).await.unwrap())
}

/// `files` files of `size` random bytes each under `dir` (created).
pub fn random_tree(dir: &Path, files: usize, size: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        let mut data = vec![0u8; size];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
        std::fs::write(dir.join(format!("f{i:04}")), &data).unwrap();
    }
    dir.to_path_buf()
}

/// A backup of `path` with no files cache.
pub fn config(path: &Path, host: &str) -> BackupConfig {
    BackupConfig {
        paths: vec![path.to_path_buf()],
        excludes: Vec::new(),
        host: host.into(),
        tags: Vec::new(),
        parent: None,
        force: false,
        cache_dir: None,
        identity: None,
        requester: None,
    }
}

/// Pack files present in the repository directory.
pub fn packs_on_disk(repo_dir: &Path) -> usize {
    let mut n = 0;
    for sub in std::fs::read_dir(repo_dir.join("data")).unwrap() {
        n += std::fs::read_dir(sub.unwrap().path()).unwrap().count();
    }
    n
}

/// Data blobs in the (freshly loaded) index and their raw bytes.
pub async fn data_in_index(repo: &Repository) -> (usize, u64) {
    let index = repo.load_index().await.unwrap();
    index
        .iter()
        .filter(|(_, l)| l.kind == repo_format::BlobKind::Data)
        .fold((0, 0), |(n, b), (_, l)| (n + 1, b + u64::from(l.raw_len)))
}

// Forging snapshots by hand: blobs saved directly, trees built node by node.

/// Deterministic incompressible bytes.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Save blobs through a writer (on a blocking thread, as the engines do).
pub async fn save(repo: &Repository, blobs: Vec<(BlobKind, Vec<u8>)>) -> Vec<repo_format::BlobId> {
    let w = repo.writer(Default::default());
    let w2 = w.clone();
    let ids = tokio::task::spawn_blocking(move || blobs.iter().map(|(k, b)| w2.save(*k, b).unwrap().id).collect())
        .await
        .unwrap();
    repo.finish_writer(w).await.unwrap();
    ids
}

pub fn file(name: &str, segs: Vec<Segment>) -> Node {
    let mut n = Node::new(name, NodeType::File);
    n.mode = 0o644;
    n.size = segs.iter().map(Segment::len).sum();
    n.content = Content::Segments(segs);
    n
}

pub fn dir(name: &str, tree: TreeId) -> Node {
    let mut n = Node::new(name, NodeType::Dir);
    n.mode = 0o755;
    n.content = Content::Tree(tree);
    n
}

/// Make `unshare(2)` fail with EPERM on the calling thread and the threads it starts from now
/// on, as a container's default seccomp profile does without CAP_SYS_ADMIN: a real seccomp
/// filter (`PR_SET_SECCOMP`), not a flag inside Ferry. False where it cannot be installed (qemu
/// user mode refuses seccomp); the caller then skips.
#[allow(unsafe_code)]
pub fn refuse_unshare_on_this_thread() -> bool {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, sock_filter, sock_fprog};
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter { code: code as u16, jt, jf, k };
    // Load the system call number (offset 0 of seccomp_data); unshare: EPERM, else allow.
    let filter = [
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, libc::SYS_unshare as u32),
        op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: both calls only read their arguments; `prog` and `filter` outlive them.
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const sock_fprog) == 0
    };
    installed && nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS) == Err(nix::errno::Errno::EPERM)
}
