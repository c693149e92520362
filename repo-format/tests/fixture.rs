//! The golden fixture repository `tests/fixtures/repo-v1` (workspace top level).
//!
//! The fixture was written by this library once and is committed: reading it back pins the
//! on-storage format (a change that makes old repositories unreadable fails here). Its content
//! is described independently by `tests/fixtures/repo-v1.expected.txt`.
//!
//! Regenerate (only when the format changes on purpose):
//! `FERRY_REGEN_FIXTURES=1 cargo test -p ferry-repo-format --test fixture -- --ignored regenerate`
//!
//! The other tests copy the fixture into a temporary directory, damage the copy in one way and
//! check that the library reports that damage with the right error kind (never a panic).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use repo_format::{
    BlobId, BlobKind, BlobWriter, Chunker, ChunkerParams, Content, Error, FileKind, Id, KdfParams, Node, NodeType,
    ObjectRef, ObjectStorage, ReadOnly, RepoConfig, Repository, Segment, Snapshot, Storage, Summary, Tree, TreeId,
    WriterOptions, decode_segment_list, encode_segment_list, is_zero, parse_pack, path_of,
};

const PASSWORD: &[u8] = b"fixture";
/// 2023-11-14T22:13:20Z: every time in the fixture derives from it.
const TIME_NS: i64 = 1_700_000_000_000_000_000;
const PACK_SIZE: u32 = 1 << 20;

fn chunker_params() -> ChunkerParams {
    ChunkerParams { min: 8 << 10, avg: 32 << 10, max: 128 << 10 }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The x86_64-made fixture; `FERRY_FIXTURE_NAME` picks another (the regenerator writes there).
fn fixture_repo() -> PathBuf {
    fixtures_dir().join(std::env::var("FERRY_FIXTURE_NAME").unwrap_or_else(|_| "repo-v1".into()))
}

fn manifest_path() -> PathBuf {
    fixtures_dir().join("repo-v1.expected.txt")
}

// ---------------------------------------------------------------------------------------------
// The source tree the fixture holds.

/// Deterministic incompressible bytes.
fn seeded(label: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(b"ferry fixture ").update(label.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Deterministic compressible text.
fn text(label: &str, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "ferry", "backup", "chunk", "pack", "index", "snapshot", "tree", "blob", "the", "a", "of", "volume", "restore",
        "key", "salt", "node", "\n",
    ];
    let r = seeded(label, len);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[r[i % r.len()] as usize % WORDS.len()].as_bytes());
        out.push(b' ');
        i += 1;
    }
    out.truncate(len);
    out
}

enum Part {
    Data(Vec<u8>),
    /// A hole: stored as a `Segment::Zero`, nothing in any pack.
    Hole(u64),
}

enum Src {
    File { parts: Vec<Part>, indirect: bool },
    Dir(Vec<Entry>),
    Symlink(Vec<u8>),
}

struct Entry {
    name: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    src: Src,
}

fn entry(name: &[u8], mode: u32, src: Src) -> Entry {
    // mtime differs per entry so a field mix-up shows.
    let mtime_ns = TIME_NS - 1_000_000_007 * i64::from(name.iter().map(|&b| u32::from(b)).sum::<u32>());
    Entry { name: name.to_vec(), mode, uid: 1000, gid: 1000, mtime_ns, xattrs: Vec::new(), src }
}

fn file(name: &[u8], mode: u32, parts: Vec<Part>) -> Entry {
    entry(name, mode, Src::File { parts, indirect: false })
}

fn source() -> Vec<Entry> {
    let mut root_owned = file(b"root-owned.conf", 0o600, vec![Part::Data(b"owner=root\n".to_vec())]);
    root_owned.uid = 0;
    root_owned.gid = 0;
    let mut link = entry(b"link", 0o777, Src::Symlink(b"sub/nested.txt".to_vec()));
    link.xattrs = vec![
        (b"trusted.bin".to_vec(), vec![0, 0xff, b'=', b',', 0x80]),
        (b"user.comment".to_vec(), b"golden fixture".to_vec()),
    ];
    let indirect = entry(
        b"indirect.txt",
        0o644,
        Src::File { parts: vec![Part::Data(text("indirect", 40 << 10))], indirect: true },
    );
    vec![
        file(b"hello.txt", 0o644, vec![Part::Data(b"Hello from the Ferry golden fixture.\n".to_vec())]),
        file(b"random.bin", 0o600, vec![Part::Data(seeded("random.bin", 100 << 10))]),
        file(
            b"sparse.img",
            0o640,
            vec![Part::Data(text("sparse head", 5000)), Part::Hole(1 << 20), Part::Data(seeded("sparse tail", 3000))],
        ),
        file(b"caf\xe9 latin-1.txt", 0o644, vec![Part::Data(b"a non-UTF-8 name\n".to_vec())]),
        file(b"empty", 0o644, vec![]),
        root_owned,
        link,
        entry(
            b"sub",
            0o755,
            Src::Dir(vec![
                file(b"nested.txt", 0o664, vec![Part::Data(text("nested", 3000))]),
                // Two incompressible blobs of one size: the swap test exchanges them.
                file(b"twin-a.bin", 0o644, vec![Part::Data(seeded("twin a", 2048))]),
                file(b"twin-b.bin", 0o644, vec![Part::Data(seeded("twin b", 2048))]),
                indirect,
                entry(b"empty-dir", 0o700, Src::Dir(Vec::new())),
            ]),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The manifest: one line per entry, compared as text.

#[derive(Debug)]
struct Line {
    path: Vec<u8>,
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    size: u64,
    blake3: Option<String>,
    target: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    layout: String,
}

/// Bytes as printable ASCII; anything else (and `%`, `=`, `,`, `\`) as `%xx`.
fn esc(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_graphic() && !matches!(c, b'%' | b'=' | b',' | b'\\') {
            s.push(c as char);
        } else {
            write!(s, "%{c:02x}").expect("string");
        }
    }
    s
}

impl Line {
    fn render(&self) -> String {
        let xattrs: Vec<String> = self.xattrs.iter().map(|(k, v)| format!("{}={}", esc(k), esc(v))).collect();
        format!(
            "{}\t{}\tmode={:o}\tuid={}\tgid={}\tmtime_ns={}\tsize={}\tblake3={}\ttarget={}\txattrs={}\tlayout={}",
            self.kind,
            esc(&self.path),
            self.mode,
            self.uid,
            self.gid,
            self.mtime_ns,
            self.size,
            self.blake3.as_deref().unwrap_or("-"),
            esc(&self.target),
            xattrs.join(","),
            self.layout,
        )
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() }
}

fn expected_lines(prefix: &[u8], entries: &[Entry], out: &mut Vec<Line>) {
    for e in entries {
        let path = join(prefix, &e.name);
        let mut l = Line {
            path: path.clone(),
            kind: "dir",
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime_ns: e.mtime_ns,
            size: 0,
            blake3: None,
            target: Vec::new(),
            xattrs: e.xattrs.clone(),
            layout: "-".into(),
        };
        match &e.src {
            Src::Dir(children) => expected_lines(&path, children, out),
            Src::Symlink(t) => {
                l.kind = "symlink";
                l.target = t.clone();
                l.size = t.len() as u64;
            }
            Src::File { parts, indirect } => {
                l.kind = "file";
                let mut h = blake3::Hasher::new();
                let mut layout = Vec::new();
                for p in parts {
                    match p {
                        Part::Data(d) => {
                            h.update(d);
                            l.size += d.len() as u64;
                            layout.push("data");
                        }
                        Part::Hole(n) => {
                            h.update(&vec![0u8; *n as usize]);
                            l.size += n;
                            layout.push("zero");
                        }
                    }
                }
                l.blake3 = Some(h.finalize().to_hex().to_string());
                l.layout = if layout.is_empty() { "-".into() } else { layout.join("+") };
                if *indirect {
                    l.layout = format!("indirect({})", l.layout);
                }
            }
        }
        out.push(l);
    }
}

fn snapshot_line(s: &Snapshot) -> String {
    let tags: Vec<String> =
        s.tags.iter().map(|(k, v)| format!("{}={}", esc(k.as_bytes()), esc(v.as_bytes()))).collect();
    let paths: Vec<String> = s.paths.iter().map(|p| esc(p)).collect();
    format!(
        "snapshot\ttime_ns={}\tparent={}\thost={}\tuser={}\tprogram={}\tpaths={}\ttags={}\tfiles_new={}\tdirs={}\tbytes_total={}",
        s.time_ns,
        s.parent.map_or("-".to_string(), |p| p.0.to_hex()),
        esc(s.hostname.as_bytes()),
        esc(s.username.as_bytes()),
        esc(s.program.as_bytes()),
        paths.join(","),
        tags.join(","),
        s.summary.files_new,
        s.summary.dirs,
        s.summary.bytes_total,
    )
}

fn render_manifest(snapshot: String, mut lines: Vec<Line>) -> Vec<String> {
    lines.sort_by(|a, b| a.path.cmp(&b.path));
    std::iter::once(snapshot).chain(lines.iter().map(Line::render)).collect()
}

const MANIFEST_HEADER: &str = "\
# Expected content of tests/fixtures/repo-v1 (password \"fixture\"), checked by
# repo-format/tests/fixture.rs. One snapshot line, then one line per entry sorted by path:
# type, path, mode (octal), uid, gid, mtime, size, BLAKE3 (unkeyed) of the content, symlink
# target, xattrs, and the segment layout (data = data blobs, zero = a Zero segment,
# indirect(..) = a segment list stored in a tree blob). Bytes outside printable ASCII, and
# % = , \\ are written %xx. Generated with FERRY_REGEN_FIXTURES=1; do not edit by hand.
";

fn committed_manifest() -> Vec<String> {
    let text = std::fs::read_to_string(manifest_path()).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (regenerate with FERRY_REGEN_FIXTURES=1 cargo test -p ferry-repo-format --test fixture -- --ignored regenerate)",
            manifest_path().display()
        )
    });
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// Writing (the generator).

fn save_dir(w: &BlobWriter, ch: &Chunker, entries: &[Entry]) -> repo_format::Result<TreeId> {
    let mut nodes = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kind = match e.src {
            Src::File { .. } => NodeType::File,
            Src::Dir(_) => NodeType::Dir,
            Src::Symlink(_) => NodeType::Symlink,
        };
        let mut n = Node::new(e.name.clone(), kind);
        n.mode = e.mode;
        n.uid = e.uid;
        n.gid = e.gid;
        n.mtime_ns = e.mtime_ns;
        n.atime_ns = e.mtime_ns + 1;
        n.ctime_ns = e.mtime_ns + 2;
        n.dev = 0x803;
        n.ino = 1000 + i as u64;
        n.nlink = 1;
        n.xattrs = e.xattrs.clone();
        match &e.src {
            Src::Dir(children) => {
                n.nlink = 2;
                n.content = Content::Tree(save_dir(w, ch, children)?);
            }
            Src::Symlink(t) => {
                n.link_target = t.clone();
                n.size = t.len() as u64;
            }
            Src::File { parts, indirect } => {
                let mut segs = Vec::new();
                for p in parts {
                    match p {
                        Part::Data(d) => {
                            let mut at = 0;
                            for len in ch.lengths(d) {
                                let c = &d[at..at + len];
                                at += len;
                                if is_zero(c) {
                                    segs.push(Segment::Zero { len: len as u64 });
                                } else {
                                    let s = w.save(BlobKind::Data, c)?;
                                    segs.push(Segment::Blob { id: s.id, len: len as u32 });
                                }
                            }
                        }
                        Part::Hole(len) => segs.push(Segment::Zero { len: *len }),
                    }
                }
                n.size = segs.iter().map(Segment::len).sum();
                if *indirect {
                    let s = w.save(BlobKind::Tree, &encode_segment_list(&segs))?;
                    segs = vec![Segment::Indirect { id: TreeId(s.id.0), len: n.size }];
                }
                n.content = Content::Segments(segs);
            }
        }
        nodes.push(n);
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let s = w.save(BlobKind::Tree, &Tree { nodes }.encode()?)?;
    Ok(TreeId(s.id.0))
}

fn fixture_snapshot(tree: TreeId, entries: &[Entry]) -> Snapshot {
    let mut lines = Vec::new();
    expected_lines(b"", entries, &mut lines);
    Snapshot {
        time_ns: TIME_NS,
        tree,
        parent: None,
        hostname: "fixture-host".into(),
        username: "fixture".into(),
        program: "ferry-repo-format fixture generator".into(),
        paths: vec![b"/data".to_vec()],
        tags: vec![
            ("backup".into(), "golden".into()),
            ("namespace".into(), "default".into()),
            ("pvc".into(), "data-0".into()),
        ],
        summary: Summary {
            files_new: lines.iter().filter(|l| l.kind == "file").count() as u64,
            dirs: lines.iter().filter(|l| l.kind == "dir").count() as u64 + 1,
            bytes_total: lines.iter().filter(|l| l.kind == "file").map(|l| l.size).sum(),
            duration_ns: 1,
            ..Summary::default()
        },
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() { dir_size(&e.path()) } else { m.len() }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/repo-v1: run with FERRY_REGEN_FIXTURES=1 and --ignored"]
async fn regenerate_fixture() {
    if std::env::var("FERRY_REGEN_FIXTURES").as_deref() != Ok("1") {
        eprintln!("FERRY_REGEN_FIXTURES=1 is not set: the fixture is left as it is");
        return;
    }
    let dir = fixture_repo();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::local(&dir).unwrap());
    let mut cfg = RepoConfig::new(TIME_NS);
    cfg.chunker = chunker_params();
    cfg.pack_size = PACK_SIZE;
    let repo = Repository::init(storage, PASSWORD, KdfParams::insecure_for_tests(), cfg, "fixture").await.unwrap();
    let w = repo.writer(WriterOptions { open_packs: 1, max_uploads: 1, ..WriterOptions::default() });
    let chunker = Chunker::new(repo.config().chunker, repo.master_key().chunker_seed());
    let w2 = w.clone();
    let tree = tokio::task::spawn_blocking(move || save_dir(&w2, &chunker, &source())).await.unwrap().unwrap();
    repo.finish_writer(w).await.unwrap();
    let snap = fixture_snapshot(tree, &source());
    repo.save_snapshot(&snap).await.unwrap();

    let mut lines = Vec::new();
    expected_lines(b"", &source(), &mut lines);
    let mut text = MANIFEST_HEADER.to_string();
    for l in render_manifest(snapshot_line(&snap), lines) {
        text.push_str(&l);
        text.push('\n');
    }
    std::fs::write(manifest_path(), text).unwrap();
    let size = dir_size(&dir);
    eprintln!("fixture written: {} ({size} bytes)", dir.display());
    assert!(size < 200 << 10, "fixture is {size} bytes: keep it small");
    // And it must read back.
    verify(&dir).await;
}

// ---------------------------------------------------------------------------------------------
// Reading.

async fn open(dir: &Path, password: &[u8]) -> repo_format::Result<Repository> {
    let st: Arc<dyn Storage> = Arc::new(ReadOnly(ObjectStorage::local(dir)?));
    Repository::open(st, password, None).await
}

type Walked = (u64, Vec<String>);

/// Hash the content of a segment list; returns its length and layout. Records blobs seen.
fn expand<'a>(
    repo: &'a Repository,
    segs: Vec<Segment>,
    h: &'a mut blake3::Hasher,
    seen: &'a mut BTreeSet<(BlobKind, BlobId)>,
) -> Pin<Box<dyn Future<Output = repo_format::Result<Walked>> + 'a>> {
    Box::pin(async move {
        let mut size = 0u64;
        let mut layout: Vec<String> = Vec::new();
        for s in segs {
            match s {
                Segment::Blob { id, len } => {
                    let b = repo.read_blob(BlobKind::Data, &id).await?;
                    assert_eq!(b.len(), len as usize, "blob {id:?} length");
                    h.update(&b);
                    seen.insert((BlobKind::Data, id));
                    if layout.last().map(String::as_str) != Some("data") {
                        layout.push("data".into());
                    }
                }
                Segment::Zero { len } => {
                    h.update(&vec![0u8; len as usize]);
                    if layout.last().map(String::as_str) != Some("zero") {
                        layout.push("zero".into());
                    }
                }
                Segment::Indirect { id, len } => {
                    let b = repo.read_blob(BlobKind::Tree, &BlobId(id.0)).await?;
                    seen.insert((BlobKind::Tree, BlobId(id.0)));
                    let (n, inner) = expand(repo, decode_segment_list(&b)?, h, seen).await?;
                    assert_eq!(n, len, "indirect segment length");
                    let inner = if inner.is_empty() { "-".to_string() } else { inner.join("+") };
                    layout.push(format!("indirect({inner})"));
                }
            }
            size += s.len();
        }
        Ok((size, layout))
    })
}

/// Every entry under `root`, and the set of blobs the walk read.
async fn walk(repo: &Repository, root: TreeId) -> repo_format::Result<(Vec<Line>, BTreeSet<(BlobKind, BlobId)>)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![(Vec::new(), root)];
    while let Some((prefix, id)) = stack.pop() {
        seen.insert((BlobKind::Tree, BlobId(id.0)));
        let tree = repo.read_tree(&id).await?;
        let names: Vec<&[u8]> = tree.nodes.iter().map(|n| &n.name[..]).collect();
        assert!(names.is_sorted(), "tree entries are sorted by name");
        for n in tree.nodes {
            assert!(n.has_safe_name());
            let path = join(&prefix, &n.name);
            let mut l = Line {
                path: path.clone(),
                kind: match n.kind {
                    NodeType::File => "file",
                    NodeType::Dir => "dir",
                    NodeType::Symlink => "symlink",
                    other => panic!("unexpected node type {other:?}"),
                },
                mode: n.mode,
                uid: n.uid,
                gid: n.gid,
                mtime_ns: n.mtime_ns,
                size: n.size,
                blake3: None,
                target: n.link_target.clone(),
                xattrs: n.xattrs.clone(),
                layout: "-".into(),
            };
            match n.content {
                Content::Tree(sub) => {
                    assert_eq!(n.kind, NodeType::Dir);
                    stack.push((path, sub));
                }
                Content::Segments(segs) => {
                    let mut h = blake3::Hasher::new();
                    let (size, layout) = expand(repo, segs, &mut h, &mut seen).await?;
                    assert_eq!(size, n.size, "{}: size versus segments", esc(&path));
                    l.blake3 = Some(h.finalize().to_hex().to_string());
                    if !layout.is_empty() {
                        l.layout = layout.join("+");
                    }
                }
                Content::None => assert_eq!(n.kind, NodeType::Symlink),
            }
            out.push(l);
        }
    }
    Ok((out, seen))
}

async fn verify(dir: &Path) {
    let repo = open(dir, PASSWORD).await.unwrap();
    assert_eq!(repo.config().chunker, chunker_params());
    assert_eq!(repo.config().pack_size, PACK_SIZE);
    assert_eq!(repo.config().created_ns, TIME_NS);
    let keys = repo.keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].label, "fixture");
    assert!(keys[0].current);
    assert_eq!(keys[0].kdf, KdfParams::insecure_for_tests());

    let idx = repo.load_index().await.unwrap();
    let snaps = repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    let (_, snap) = &snaps[0];
    let (lines, seen) = walk(&repo, snap.tree).await.unwrap();
    assert_eq!(render_manifest(snapshot_line(snap), lines), committed_manifest());

    // The walk read exactly the indexed blobs: nothing missing, nothing unreferenced.
    let indexed: BTreeSet<(BlobKind, BlobId)> = idx.iter().map(|(id, l)| (l.kind, id)).collect();
    assert_eq!(seen, indexed);
    for (id, loc) in idx.iter() {
        repo.read_blob(loc.kind, &id).await.unwrap();
    }

    // Every pack is named by its hash, and its header agrees with the index.
    let st = repo.storage();
    let packs = st.list(FileKind::Pack).await.unwrap();
    assert_eq!(packs.len(), idx.packs().len());
    for (pid, size) in packs {
        let b = st.read(FileKind::Pack, &pid, u64::MAX).await.unwrap();
        assert_eq!(b.len() as u64, size);
        assert_eq!(Id::of_stored(&b), pid, "pack name");
        let (salt, entries) = parse_pack(repo.master_key(), &b).unwrap();
        for e in entries {
            let loc = idx.lookup(e.kind, &e.id).expect("pack blob is indexed");
            assert_eq!(
                (loc.pack.0, loc.salt, loc.offset, loc.stored_len, loc.raw_len),
                (pid, salt, e.offset, e.stored_len, e.raw_len)
            );
        }
    }
    // Read-only really is.
    assert!(matches!(repo.save_snapshot(snap).await, Err(Error::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_reads_back_exactly() {
    let dir = fixture_repo();
    assert!(
        dir.join("config").is_file(),
        "{} is missing (regenerate with FERRY_REGEN_FIXTURES=1 cargo test -p ferry-repo-format --test fixture -- --ignored regenerate)",
        dir.display()
    );
    verify(&dir).await;
}

/// The same source tree written by the s390x (big-endian) build under qemu: every architecture
/// must read what every other one wrote.
#[tokio::test]
async fn s390x_fixture_reads_back_exactly() {
    let dir = fixtures_dir().join("repo-v1-s390x");
    assert!(
        dir.join("config").is_file(),
        "{} is missing (regenerate on s390x: FERRY_REGEN_FIXTURES=1 FERRY_FIXTURE_NAME=repo-v1-s390x crossbuild/test.sh s390x -p ferry-repo-format --test fixture -- --ignored regenerate)",
        dir.display()
    );
    verify(&dir).await;
}

#[test]
fn manifest_matches_the_source_description() {
    // The committed manifest is what the generator's source tree says (independent of the repo).
    let mut lines = Vec::new();
    expected_lines(b"", &source(), &mut lines);
    let committed = committed_manifest();
    assert_eq!(
        render_manifest(committed[0].clone(), lines),
        committed,
        "the source tree in fixture.rs and the committed manifest disagree: regenerate"
    );
}

// ---------------------------------------------------------------------------------------------
// Tampered copies.

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn copy_fixture() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&fixture_repo(), t.path());
    t
}

/// The reason of a `Corrupt` error located at `want`; panics on any other error.
fn corrupt_at(e: Error, want: &ObjectRef) -> String {
    match e {
        Error::Corrupt { what, reason } => {
            assert_eq!(&what, want, "corrupt object named ({reason})");
            reason
        }
        other => panic!("expected Corrupt at {want}, got {other:?}"),
    }
}

fn modify(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

async fn index_file(dir: &Path) -> (Id, PathBuf) {
    let st = ObjectStorage::local(dir).unwrap();
    let list = st.list(FileKind::Index).await.unwrap();
    assert_eq!(list.len(), 1, "the fixture has one index object");
    (list[0].0, dir.join(path_of(FileKind::Index, &list[0].0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_blob_is_corrupt_naming_the_blob() {
    let t = copy_fixture();
    let repo = open(t.path(), PASSWORD).await.unwrap();
    let idx = repo.load_index().await.unwrap();
    let (id, loc) = idx.iter().filter(|(_, l)| l.kind == BlobKind::Data).max_by_key(|(_, l)| l.stored_len).unwrap();
    modify(&t.path().join(path_of(FileKind::Pack, &loc.pack.0)), |b| {
        b[(loc.offset + loc.stored_len / 2) as usize] ^= 0x10;
    });
    let err = repo.read_blob(BlobKind::Data, &id).await.unwrap_err();
    let reason = corrupt_at(err, &ObjectRef::Blob { id: id.0, pack: loc.pack.0 });
    assert!(reason.contains("authentication"), "{reason}");
    // The other blobs are intact; the walk stops at the damaged one with the same error.
    for (other, l) in idx.iter().filter(|(i, _)| *i != id) {
        repo.read_blob(l.kind, &other).await.unwrap();
    }
    let snaps = repo.snapshots().await.unwrap();
    assert!(walk(&repo, snaps[0].1.tree).await.unwrap_err().is_corrupt());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_index_is_corrupt_by_name() {
    let t = copy_fixture();
    let (id, path) = index_file(t.path()).await;
    modify(&path, |b| b.truncate(b.len() / 2));
    let repo = open(t.path(), PASSWORD).await.unwrap();
    let reason = corrupt_at(repo.load_index().await.unwrap_err(), &ObjectRef::File(FileKind::Index, id));
    assert!(reason.contains("hash"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_index_under_a_matching_name_is_corrupt_by_content() {
    let t = copy_fixture();
    let (_, path) = index_file(t.path()).await;
    let b = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let repo = open(t.path(), PASSWORD).await.unwrap();
    // Cut inside the sealed body (fails authentication) and inside the clear header (bad magic).
    for (cut, expect) in [(b.len() / 2, "authentication"), (5, "magic")] {
        let short = &b[..cut];
        let id = Id::of_stored(short);
        let p = t.path().join(path_of(FileKind::Index, &id));
        std::fs::write(&p, short).unwrap();
        let reason = corrupt_at(repo.load_index().await.unwrap_err(), &ObjectRef::File(FileKind::Index, id));
        assert!(reason.contains(expect), "cut at {cut}: {reason}");
        std::fs::remove_file(&p).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_blobs_are_corrupt() {
    let t = copy_fixture();
    let repo = open(t.path(), PASSWORD).await.unwrap();
    let idx = repo.load_index().await.unwrap();
    // Two data blobs of one stored length in one pack (the twins): exchange their bytes.
    let data: Vec<_> = idx.iter().filter(|(_, l)| l.kind == BlobKind::Data).collect();
    let (a, b) = data
        .iter()
        .enumerate()
        .find_map(|(i, (_, la))| {
            data[i + 1..]
                .iter()
                .find(|(_, lb)| lb.pack == la.pack && lb.stored_len == la.stored_len)
                .map(|y| (data[i], *y))
        })
        .expect("the fixture has two data blobs of equal stored length in one pack");
    let (la, lb) = (a.1, b.1);
    modify(&t.path().join(path_of(FileKind::Pack, &la.pack.0)), |p| {
        let n = la.stored_len as usize;
        let (x, y) = (la.offset as usize, lb.offset as usize);
        let blob_a = p[x..x + n].to_vec();
        p.copy_within(y..y + n, x);
        p[y..y + n].copy_from_slice(&blob_a);
    });
    for (id, loc) in [a, b] {
        let reason = corrupt_at(
            repo.read_blob(BlobKind::Data, &id).await.unwrap_err(),
            &ObjectRef::Blob { id: id.0, pack: loc.pack.0 },
        );
        // The blob id and kind are associated data: a moved blob fails authentication.
        assert!(reason.contains("authentication"), "{reason}");
    }
    // The pack no longer matches its header-derived check either.
    let bytes = std::fs::read(t.path().join(path_of(FileKind::Pack, &la.pack.0))).unwrap();
    assert_ne!(Id::of_stored(&bytes), la.pack.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_wrong_password() {
    let t = copy_fixture();
    assert!(matches!(open(t.path(), b"not the fixture").await, Err(Error::WrongPassword)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_is_no_repository() {
    let t = copy_fixture();
    std::fs::remove_file(t.path().join("config")).unwrap();
    match open(t.path(), PASSWORD).await {
        Err(Error::NoRepository { location }) => {
            assert!(location.contains(&t.path().display().to_string()), "{location}")
        }
        other => panic!("expected NoRepository, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_of_a_newer_version_is_unsupported() {
    let t = copy_fixture();
    modify(&t.path().join("config"), |b| {
        assert_eq!(&b[..5], b"FERRY");
        assert_eq!(&b[6..8], &1u16.to_le_bytes());
        // One beyond FORMAT_VERSION (3 since directories in parts; this test said 3 before).
        b[6..8].copy_from_slice(&4u16.to_le_bytes());
    });
    // Reported before any password is tried: the wrong password gives the same answer.
    for pw in [PASSWORD, b"wrong"] {
        assert!(matches!(open(t.path(), pw).await, Err(Error::UnsupportedVersion { found: 4, supported: 3 })));
    }
}
