//! Owner and mode come out as the snapshot has them however a file was created. Restore creates
//! a file that will belong to its own user and group, in a directory it made itself, with its
//! final permission bits already, so that setting its metadata changes nothing but times
//! (owner and mode are changed only where they differ: each change is an inode update in the
//! journal, two of the ten system calls a small file cost). Such a directory is 0700 and
//! root's until the end, so nobody else can reach the file meanwhile, whatever group a setgid
//! directory gave it. Any other file (in the target itself, or in a directory that was already
//! there) is created 0600 until its metadata is set. A change of owner clears setuid and
//! setgid, so the mode is set again after one, even where it looked right before.

mod common;

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use ferry_engine::Job;
use ferry_engine::restore::{self, FileMeta, Filter, RestoreOptions};
use ferry_engine::safefs::SafeRoot;
use repo_format::{BlobKind, Node, Segment, Tree, TreeId};

const THEM: u32 = 1000;
const OTHER_GROUP: u32 = 4321;

fn owned(mut n: Node, uid: u32, gid: u32, mode: u32) -> Node {
    (n.uid, n.gid, n.mode) = (uid, gid, mode);
    n
}

fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

/// A setgid directory of another group, as a target may already have.
fn setgid_dir(p: &Path) {
    std::fs::create_dir(p).unwrap();
    std::os::unix::fs::chown(p, Some(0), Some(OTHER_GROUP)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o2775)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_mode_are_the_snapshots_however_each_file_was_created() {
    if !nix::unistd::geteuid().is_root() {
        skip::skip("giving files another owner needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(&tmp.path().join("repo")).await;
    let (x, y) = (random_bytes("x", 5_000), random_bytes("y", 3_000));
    let ids = save(&repo, vec![(BlobKind::Data, x.clone()), (BlobKind::Data, y.clone())]).await;
    let bx = Segment::Blob { id: ids[0], len: x.len() as u32 };
    let by = Segment::Blob { id: ids[1], len: y.len() as u32 };
    let holes = || vec![Segment::Zero { len: 4096 }, by];
    // g is a setgid directory of another group already in the target; g/k is made there.
    let deeper = vec![owned(file("m-mine", vec![bx]), 0, 0, 0o640)];
    let deeper = TreeId(save(&repo, vec![(BlobKind::Tree, Tree { nodes: deeper }.encode().unwrap())]).await[0].0);
    let inner = vec![
        owned(file("h-mine", vec![bx]), 0, 0, 0o644),
        owned(file("i-theirs", vec![by]), THEM, THEM, 0o600),
        owned(dir("k", deeper), 0, 0, 0o755),
    ];
    let inner = TreeId(save(&repo, vec![(BlobKind::Tree, Tree { nodes: inner }.encode().unwrap())]).await[0].0);
    let nodes = vec![
        owned(file("a-mine", vec![bx]), 0, 0, 0o644),
        owned(file("b-mine-odd", vec![by]), 0, 0, 0o604),
        owned(file("c-theirs", vec![bx]), THEM, THEM, 0o640),
        owned(file("d-suid", vec![by]), THEM, THEM, 0o4755),
        owned(file("e-holes-theirs", holes()), THEM, THEM, 0o2750),
        owned(file("f-holes-mine", holes()), 0, 0, 0o664),
        owned(dir("g", inner), 0, 0, 0o755),
    ];
    let expect: Vec<_> = nodes.iter().map(|n| (n.name.clone(), (n.mode, n.uid, n.gid))).collect();
    let root = TreeId(save(&repo, vec![(BlobKind::Tree, Tree { nodes }.encode().unwrap())]).await[0].0);
    let target = tmp.path().join("out");
    std::fs::create_dir(&target).unwrap();
    setgid_dir(&target.join("g"));

    repo.load_index().await.unwrap();
    let opts = RestoreOptions { keep_setuid: true, ..Default::default() };
    let plan = restore::plan(&repo, root, &Filter::default(), &opts).await.unwrap();
    let out = restore::execute(repo.clone(), plan, &target, &Job::new(), &opts).await.unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    for (name, want) in expect {
        let name = String::from_utf8(name).unwrap();
        assert_eq!(mode_owner(&target.join(&name)), want, "{name}: (mode, uid, gid)");
    }
    assert_eq!(mode_owner(&target.join("g/h-mine")), (0o644, 0, 0), "a file restored into a setgid directory");
    assert_eq!(mode_owner(&target.join("g/i-theirs")), (0o600, THEM, THEM));
    assert_eq!(mode_owner(&target.join("g/k")), (0o755, 0, 0), "a directory made in a setgid directory");
    assert_eq!(mode_owner(&target.join("g/k/m-mine")), (0o640, 0, 0));
    assert_eq!(std::fs::read(target.join("f-holes-mine")).unwrap(), [&[0u8; 4096][..], &y].concat());
}

/// Before its metadata is set: a file of this process's user and group in a directory this
/// restore made has its final bits (setuid aside), and that directory lets nobody else in; any
/// other file is 0600.
#[test]
fn a_file_is_created_with_its_final_mode_only_where_nobody_else_can_reach_it() {
    if !nix::unistd::geteuid().is_root() {
        skip::skip("a directory of another group and files of another owner need root");
        return;
    }
    let target = tempfile::tempdir().unwrap();
    setgid_dir(&target.path().join("g"));
    let root = SafeRoot::open(target.path(), true).unwrap();
    let meta = |uid, gid, mode| FileMeta::of(&owned(file("x", vec![]), uid, gid, mode));
    let created = |rel: &str, m: &FileMeta| {
        let (f, _) = root.create_file_for(Path::new(rel), 0, m).unwrap();
        f.metadata().unwrap().permissions().mode() & 0o7777
    };
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    root.mkdir(Path::new("made")).unwrap();
    root.mkdir(Path::new("g/made")).unwrap();
    root.mkdir(Path::new("g")).unwrap(); // there already: kept, not made
    assert_eq!(created("made/mine", &meta(0, 0, 0o644)), 0o644);
    assert_eq!(created("made/mine-suid", &meta(0, 0, 0o4755)), 0o755, "setuid comes with the metadata");
    assert_eq!(created("made/theirs", &meta(THEM, THEM, 0o644)), 0o600);
    assert_eq!(created("mine", &meta(0, 0, 0o644)), 0o600, "the target was there before the restore");
    assert_eq!(created("g/mine", &meta(0, 0, 0o644)), 0o600, "a directory that was there before");
    // Made in a setgid directory: the file has that directory's group, but nobody else can
    // pass the directory it is in until the restore's end.
    assert_eq!(created("g/made/mine", &meta(0, 0, 0o644)), 0o644);
    assert_eq!(mode_owner(&target.path().join("g/made/mine")), (0o644, 0, OTHER_GROUP));
    assert_eq!(mode_owner(&target.path().join("g/made")).0 & 0o077, 0, "group and others are kept out");
    nix::sys::stat::umask(old);

    // A change of owner clears setuid: the mode is set again although it looked right before.
    let p = target.path().join("suid-before");
    std::fs::write(&p, b"x").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let (_, set) = root.set_file_metadata_of(&f, &meta(THEM, THEM, 0o4755)).unwrap();
    set.unwrap();
    assert_eq!(mode_owner(&p), (0o4755, THEM, THEM));
}
