//! Forging repositories for the hostile-input tests: the library, the password, and whatever
//! objects an attacker who holds both (or only the bucket) would write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use repo_format::{
    BlobKind, BlobWriter, Content, KdfParams, Node, NodeType, ObjectStorage, RepoConfig, Repository, Segment, Snapshot,
    SnapshotId, Storage, Tree, TreeId, WriterOptions,
};

use super::{Env, PASSWORD};

/// A fixed time for forged entries (2022).
pub const T0: i64 = 1_650_000_000_000_000_000;

/// An open repository with a runtime and a blob writer.
pub struct Forge {
    pub rt: tokio::runtime::Runtime,
    pub repo: Arc<Repository>,
    pub w: BlobWriter,
}

impl Forge {
    /// Create the repository of `env` (cheap KDF) and open it for forging.
    pub fn init(env: &Env) -> Forge {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&env.repo).unwrap());
        rt.block_on(async {
            Repository::init(storage, PASSWORD.as_bytes(), KdfParams::insecure_for_tests(), RepoConfig::new(T0), "t")
                .await
                .unwrap();
        });
        Forge::open(env)
    }

    /// Open the existing repository of `env`.
    pub fn open(env: &Env) -> Forge {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let tmp = env.path("forge-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&env.repo).unwrap());
        let (repo, w) = rt.block_on(async {
            let repo = Arc::new(Repository::open(storage, PASSWORD.as_bytes(), None).await.unwrap());
            repo.load_index().await.unwrap();
            let w = repo.writer(WriterOptions { tmp_dir: tmp, ..Default::default() });
            (repo, w)
        });
        Forge { rt, repo, w }
    }

    /// A file node holding `data` as one blob.
    pub fn file(&self, name: &[u8], data: &[u8]) -> Node {
        let saved = self.w.save(BlobKind::Data, data).unwrap();
        let mut n = Node::new(name.to_vec(), NodeType::File);
        n.mode = 0o644;
        n.size = data.len() as u64;
        n.mtime_ns = T0;
        n.atime_ns = T0;
        n.nlink = 1;
        n.content = Content::Segments(vec![Segment::Blob { id: saved.id, len: data.len() as u32 }]);
        n
    }

    /// Store a tree; its id.
    pub fn tree(&self, nodes: Vec<Node>) -> TreeId {
        TreeId(self.w.save(BlobKind::Tree, &Tree { nodes }.encode().unwrap()).unwrap().id.0)
    }

    /// Store raw bytes as a tree-kind blob (a forged tree or segment list); its id.
    pub fn raw_tree_blob(&self, bytes: &[u8]) -> TreeId {
        TreeId(self.w.save(BlobKind::Tree, bytes).unwrap().id.0)
    }

    /// A directory node for `sub`.
    pub fn dir_node(name: &[u8], sub: TreeId) -> Node {
        let mut n = Node::new(name.to_vec(), NodeType::Dir);
        n.mode = 0o755;
        n.mtime_ns = T0;
        n.atime_ns = T0;
        n.content = Content::Tree(sub);
        n
    }

    /// A directory node holding `nodes`.
    pub fn dir(&self, name: &[u8], nodes: Vec<Node>) -> Node {
        Forge::dir_node(name, self.tree(nodes))
    }

    /// Finish the writer (index the blobs) and save a snapshot of `root` at `time_ns`.
    pub fn snapshot(self, root: TreeId, time_ns: i64, host: &str) -> SnapshotId {
        let Forge { rt, repo, w } = self;
        rt.block_on(async move {
            repo.finish_writer(w).await.unwrap();
            let snap = Snapshot {
                time_ns,
                tree: root,
                hostname: host.into(),
                username: "mallory".into(),
                program: "forged".into(),
                paths: vec![b"/forged".to_vec()],
                ..Default::default()
            };
            repo.save_snapshot(&snap).await.unwrap()
        })
    }
}

/// A node of `kind` with the given mode (owner root).
pub fn special(name: &[u8], kind: NodeType, mode: u32, rdev: u64) -> Node {
    let mut n = Node::new(name.to_vec(), kind);
    n.mode = mode;
    n.rdev = rdev;
    n.mtime_ns = T0;
    n.atime_ns = T0;
    n
}

/// The path of a repository object by kind and hex id.
pub fn object_path(repo: &Path, rel: &str) -> PathBuf {
    repo.join(rel)
}

/// Run `ferry` args under `prlimit --as=BYTES` (address-space cap: an allocation beyond it fails
/// and the process dies by a signal instead of growing), with the test environment.
pub fn ferry_capped(env: &Env, as_bytes: u64, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new("prlimit");
    c.arg(format!("--as={as_bytes}")).arg("--").arg(super::ferry_bin());
    for v in ["FERRY_REPOSITORY", "FERRY_PASSWORD_FILE", "FERRY_NEW_PASSWORD", "FERRY_CHUNK_QUEUE"] {
        c.env_remove(v);
    }
    c.env("FERRY_PASSWORD", PASSWORD).env("FERRY_CACHE_DIR", &env.cache).arg("--repo").arg(&env.repo).args(args);
    c.output().unwrap()
}
