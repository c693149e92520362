//! Tests of the local directory's write protocol (`local`), on real file systems: an object is
//! visible under its final name only whole, a write that fails midway leaves neither the object
//! nor a temporary file, create-only still refuses an existing object, and listings never show
//! temporary names. (That the protocol `fsync`s is shown by `benches/durability-strace.sh`:
//! no file system a test can make forgets unsynced writes on demand.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::{FileKind, ObjectStorage, Storage, path_of};
use crate::error::Error;
use crate::id::Id;

/// Every file under `root`, as paths relative to it, sorted.
fn files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// `n` bytes that differ with `seed`.
fn data(seed: u32, n: usize) -> Vec<u8> {
    (0..n as u32).map(|i| (i.wrapping_add(seed << 20).wrapping_mul(2654435761) >> 13) as u8).collect()
}

/// A file holding `bytes`, positioned at its start (what `upload_file` takes).
fn temp_file(bytes: &[u8]) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    std::io::Seek::rewind(&mut f).unwrap();
    f
}

/// While packs and small objects are written, a thread polls their final names: whenever one
/// exists it already has its full length (a partial object is never visible), and once all
/// writes are done no temporary file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_partial_object_is_ever_visible() {
    let dir = tempfile::tempdir().unwrap();
    let s = ObjectStorage::local(dir.path()).unwrap();
    let (packs, smalls): (Vec<_>, Vec<_>) =
        ((0..12).map(|i| data(i, 3 << 20)).collect(), (0..12).map(|i| data(100 + i, 1 << 20)).collect());
    let mut expected = BTreeMap::new();
    for p in &packs {
        expected.insert(dir.path().join(path_of(FileKind::Pack, &Id::of_stored(p))), p.len() as u64);
    }
    for b in &smalls {
        expected.insert(dir.path().join(path_of(FileKind::Snapshot, &Id::of_stored(b))), b.len() as u64);
    }
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (done, expected) = (done.clone(), expected.clone());
        std::thread::spawn(move || {
            // how often an object was seen, and the first few seen with a partial length
            let (mut seen, mut partial) = (0u64, Vec::<(PathBuf, u64)>::new());
            while !done.load(Ordering::Acquire) {
                for (path, len) in &expected {
                    if let Ok(m) = std::fs::metadata(path) {
                        seen += 1;
                        if m.len() != *len && partial.len() < 5 {
                            partial.push((path.clone(), m.len()));
                        }
                    }
                }
            }
            (seen, partial)
        })
    };
    for (p, b) in packs.iter().zip(&smalls) {
        s.upload_file(FileKind::Pack, &Id::of_stored(p), temp_file(p), p.len() as u64).await.unwrap();
        s.create(FileKind::Snapshot, &Id::of_stored(b), Bytes::from(b.clone())).await.unwrap();
    }
    done.store(true, Ordering::Release);
    let (seen, partial) = poller.join().unwrap();
    assert!(partial.is_empty(), "objects seen under their final name with a partial length: {partial:?}");
    assert!(seen > 0, "the poller never saw an object: the test proved nothing");
    let mut want: Vec<String> =
        expected.keys().map(|p| p.strip_prefix(dir.path()).unwrap().to_string_lossy().into_owned()).collect();
    want.sort();
    assert_eq!(files(dir.path()), want, "only the objects themselves are left");
    for (path, len) in &expected {
        assert_eq!(std::fs::metadata(path).unwrap().len(), *len);
    }
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None` (the caller skips) where mounting is not allowed (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<SmallFs> {
        use nix::mount::{MsFlags, mount};
        let dir = tempfile::tempdir().unwrap();
        let opts = format!("size={size},mode=0700");
        match mount(Some("tmpfs"), dir.path(), Some("tmpfs"), MsFlags::empty(), Some(opts.as_str())) {
            Ok(()) => Some(SmallFs { dir }),
            Err(e) => {
                super::conformance::skip(&format!("cannot mount a small tmpfs ({e}): needs root"));
                None
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A write that fails midway (the file system fills up) leaves no object under the final name
/// and no temporary file; the listing stays empty and the next write that fits succeeds.
#[tokio::test]
async fn a_write_that_fails_midway_leaves_nothing() {
    let Some(fs) = SmallFs::mount("1m") else { return };
    let root = fs.dir.path().join("repo");
    let s = ObjectStorage::local(&root).unwrap();
    let big = data(7, 3 << 20);
    let id = Id::of_stored(&big);
    let r = s.upload_file(FileKind::Pack, &id, temp_file(&big), big.len() as u64).await;
    assert!(r.is_err(), "a 3 MiB pack does not fit in 1 MiB");
    let r = s.create(FileKind::Snapshot, &id, Bytes::from(big.clone())).await;
    assert!(r.is_err(), "a 3 MiB snapshot does not fit in 1 MiB");
    assert_eq!(files(&root), Vec::<String>::new(), "neither the objects nor their temporary files are left");
    assert!(matches!(s.read(FileKind::Pack, &id, 1 << 30).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.read(FileKind::Snapshot, &id, 1 << 30).await, Err(Error::NotFound { .. })));
    assert!(s.list(FileKind::Pack).await.unwrap().is_empty());
    assert!(s.list(FileKind::Snapshot).await.unwrap().is_empty());
    // the failures freed their space: what fits is written
    s.create(FileKind::Snapshot, &id, Bytes::from_static(b"small")).await.unwrap();
    assert_eq!(files(&root), vec![path_of(FileKind::Snapshot, &id)]);
}

/// Create-only holds on a local directory: an object already there (whoever wrote it) is
/// neither replaced nor joined by a leftover staging file; a pack (content-named) may be
/// written again.
#[tokio::test]
async fn create_only_refuses_an_existing_object() {
    let dir = tempfile::tempdir().unwrap();
    // the repository folder and its missing parents are made on demand
    let root = dir.path().join("a/b/repo");
    let s = ObjectStorage::local(&root).unwrap();
    let id = Id::of_stored(b"snap");
    let path = root.join(path_of(FileKind::Snapshot, &id));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"already there").unwrap();
    let r = s.create(FileKind::Snapshot, &id, Bytes::from_static(b"other bytes")).await;
    assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"already there");
    let pack = data(3, 100_000);
    let pid = Id::of_stored(&pack);
    for _ in 0..2 {
        s.upload_file(FileKind::Pack, &pid, temp_file(&pack), pack.len() as u64).await.unwrap();
    }
    assert_eq!(files(&root), vec![path_of(FileKind::Pack, &pid), path_of(FileKind::Snapshot, &id)]);
    s.remove(FileKind::Pack, &pid).await.unwrap();
    assert!(matches!(s.remove(FileKind::Pack, &pid).await, Err(Error::NotFound { .. })));
    assert_eq!(files(&root), vec![path_of(FileKind::Snapshot, &id)]);
}

/// A pack spooled without a name in the repository's `spool_dir` becomes the object itself (a
/// link, no copy); a spooled file that has a name, or a pack already stored, is copied as before;
/// nothing is left beside the packs.
#[tokio::test]
async fn a_pack_spooled_in_the_repository_is_linked_not_copied() {
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let s = ObjectStorage::local(dir.path()).unwrap();
    let spool = s.spool_dir().expect("a local directory has a spool directory");
    assert_eq!(spool, dir.path().join("data"));
    let spooled = |bytes: &[u8]| {
        let mut f = tempfile::tempfile_in(&spool).unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    };
    let (a, b) = (data(11, 200_000), data(12, 300_000));
    let (ida, idb) = (Id::of_stored(&a), Id::of_stored(&b));
    let (pa, pb) = (dir.path().join(path_of(FileKind::Pack, &ida)), dir.path().join(path_of(FileKind::Pack, &idb)));

    let f = spooled(&a);
    let ino = f.metadata().unwrap().ino();
    s.upload_file(FileKind::Pack, &ida, f, a.len() as u64).await.unwrap();
    assert_eq!(std::fs::metadata(&pa).unwrap().ino(), ino, "the spooled file is linked");
    assert_eq!(std::fs::read(&pa).unwrap(), a);

    let mut named = tempfile::NamedTempFile::new_in(&spool).unwrap();
    named.write_all(&b).unwrap();
    named.rewind().unwrap();
    s.upload_file(FileKind::Pack, &idb, named.reopen().unwrap(), b.len() as u64).await.unwrap();
    assert_ne!(std::fs::metadata(&pb).unwrap().ino(), named.as_file().metadata().unwrap().ino(), "copied");
    assert_eq!(std::fs::read(&pb).unwrap(), b);
    assert_eq!(std::fs::read(named.path()).unwrap(), b, "the named file is left as it was");
    drop(named);

    let f = spooled(&a);
    let ino = f.metadata().unwrap().ino();
    s.upload_file(FileKind::Pack, &ida, f, a.len() as u64).await.unwrap();
    assert_ne!(std::fs::metadata(&pa).unwrap().ino(), ino, "a stored pack's name is not linked over");
    assert_eq!(std::fs::read(&pa).unwrap(), a);
    let mut want = vec![path_of(FileKind::Pack, &ida), path_of(FileKind::Pack, &idb)];
    want.sort();
    assert_eq!(files(dir.path()), want, "no temporary file is left");
}

/// Temporary names a crash may leave behind (`.upload-*`, and `<name>#<n>` of earlier versions,
/// which wrote small objects through object_store; partial content in both) are never listed and
/// never read.
#[tokio::test]
async fn listings_never_show_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = ObjectStorage::local(dir.path()).unwrap();
    let snap = Id::of_stored(b"snapshot");
    s.create(FileKind::Snapshot, &snap, Bytes::from_static(b"whole")).await.unwrap();
    let pack = data(5, 4096);
    let pid = Id::of_stored(&pack);
    s.upload_file(FileKind::Pack, &pid, temp_file(&pack), pack.len() as u64).await.unwrap();
    let other = Id::of_stored(b"interrupted");
    let snap_path = dir.path().join(path_of(FileKind::Snapshot, &other));
    let pack_path = dir.path().join(path_of(FileKind::Pack, &other));
    std::fs::create_dir_all(pack_path.parent().unwrap()).unwrap();
    for (leftover, bytes) in [
        (format!("{}#1", snap_path.display()), &b"par"[..]),
        (format!("{}/.upload-x1Yz9q", snap_path.parent().unwrap().display()), b""),
        (format!("{}#2", pack_path.display()), b"partial"),
        (format!("{}/{}k3Jd0a", pack_path.parent().unwrap().display(), super::local::UPLOAD_PREFIX), b"partial"),
        (format!("{}/{}abc", dir.path().join("data/ab").display(), super::local::UPLOAD_PREFIX), b"partial"),
    ] {
        std::fs::create_dir_all(Path::new(&leftover).parent().unwrap()).unwrap();
        std::fs::write(&leftover, bytes).unwrap();
    }
    assert_eq!(s.list(FileKind::Snapshot).await.unwrap(), vec![(snap, 5)]);
    assert_eq!(s.list(FileKind::Pack).await.unwrap(), vec![(pid, pack.len() as u64)]);
    assert!(matches!(s.read(FileKind::Snapshot, &other, 1 << 20).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.read(FileKind::Pack, &other, 1 << 20).await, Err(Error::NotFound { .. })));
    // and they do not stop the object from being written
    s.create(FileKind::Snapshot, &other, Bytes::from_static(b"now whole")).await.unwrap();
    assert_eq!(&s.read(FileKind::Snapshot, &other, 1 << 20).await.unwrap()[..], b"now whole");
}
