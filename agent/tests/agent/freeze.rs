//! The freeze and its guaranteed thaw, on loop-mounted ext4 and xfs: a writer blocked while
//! frozen resumes after the thaw by the guard, by the watchdog, by a panic's unwinding, and by
//! the recovery of a freeze recorded by an earlier process. (The agent killed with `kill -9`
//! while frozen is in `own.rs`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_daemon::freeze::Freezer;
use ferry_daemon::store::Store;

use crate::common::devices::{Ext4, run};

/// Thaws `0` on drop whatever happened (a failing test must not leave a frozen mount that
/// its unmount would wait on forever).
struct Unfreeze(PathBuf);

impl Drop for Unfreeze {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new("fsfreeze").arg("-u").arg(&self.0).stderr(std::process::Stdio::null()).status();
    }
}

struct Setup {
    // Dropped in order: thaw, then unmount, then the directory (removed while the file system
    // was still mounted on it, it was left behind with its image: 65 MB in /tmp per run).
    _unfreeze: Unfreeze,
    fs: Ext4,
    store: Arc<Store>,
    freezer: Arc<Freezer>,
    _dir: tempfile::TempDir,
}

fn setup(kind: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let fs = match kind {
        "ext4" => Ext4::new(&dir.path().join("img"), &mnt, 64 << 20, &[]),
        _ => Ext4::xfs(&dir.path().join("img"), &mnt, 320 << 20),
    };
    let store = Arc::new(Store::open(&dir.path().join("jobs.db")).unwrap());
    let freezer = Arc::new(Freezer::new(store.clone(), &[dir.path(), Path::new("/")]));
    Setup { _unfreeze: Unfreeze(mnt), fs, store, freezer, _dir: dir }
}

/// Start a writer (write + fsync of a new file on `mnt`); the receiver gets the time it
/// finished.
fn writer(mnt: &Path, name: &str) -> mpsc::Receiver<Instant> {
    let path = mnt.join(name);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.sync_all().unwrap();
        let _ = tx.send(Instant::now());
    });
    rx
}

/// The writer is still blocked after a while.
fn blocked(rx: &mpsc::Receiver<Instant>) -> bool {
    rx.recv_timeout(Duration::from_millis(700)).is_err()
}

fn blocks_writers_until_the_guard_thaws(kind: &str) {
    let s = setup(kind);
    let frozen = s.freezer.freeze(&s.fs.mnt, "vb/one", Duration::from_secs(60)).unwrap();
    assert_eq!(s.store.freezes().unwrap().len(), 1, "recorded while frozen");
    assert_eq!(s.freezer.frozen(), 1);
    let rx = writer(&s.fs.mnt, "during");
    assert!(blocked(&rx), "{kind}: a write went through a frozen file system");
    let thawed_at = Instant::now();
    let t = frozen.thaw();
    assert_eq!((t.by_other, t.error.as_deref()), (None, None));
    let done = rx.recv_timeout(Duration::from_secs(20)).expect("the writer resumes after the thaw");
    assert!(done >= thawed_at);
    assert!(t.frozen_for >= Duration::from_millis(700), "{:?}", t.frozen_for);
    assert!(s.store.freezes().unwrap().is_empty(), "the record goes with the thaw");
    assert_eq!(std::fs::read(s.fs.mnt.join("during")).unwrap().len(), 4096);
    eprintln!("{kind}: frozen for {:?}", t.frozen_for);
}

#[test]
fn ext4_blocks_writers_until_the_guard_thaws() {
    blocks_writers_until_the_guard_thaws("ext4");
}

#[test]
fn xfs_blocks_writers_until_the_guard_thaws() {
    blocks_writers_until_the_guard_thaws("xfs");
}

#[test]
fn the_watchdog_thaws_at_the_maximum_freeze_time() {
    for kind in ["ext4", "xfs"] {
        let s = setup(kind);
        let frozen = s.freezer.freeze(&s.fs.mnt, "vb/hung", Duration::from_millis(1500)).unwrap();
        let t0 = Instant::now();
        let rx = writer(&s.fs.mnt, "w");
        let done = rx.recv_timeout(Duration::from_secs(20)).expect("the watchdog thaws");
        let waited = done - t0;
        assert!(waited >= Duration::from_millis(1200), "{kind}: thawed too early: {waited:?}");
        let t = frozen.thaw();
        assert_eq!(t.by_other, Some("watchdog"), "{kind}");
        assert!(t.frozen_for < Duration::from_secs(10), "{kind}: {:?}", t.frozen_for);
        assert!(s.store.freezes().unwrap().is_empty());
    }
}

#[test]
fn a_panic_while_frozen_thaws() {
    let s = setup("ext4");
    let (freezer, mnt) = (s.freezer.clone(), s.fs.mnt.clone());
    let r = std::thread::spawn(move || {
        let _frozen = freezer.freeze(&mnt, "vb/panics", Duration::from_secs(600)).unwrap();
        panic!("a hook handler panicked");
    })
    .join();
    assert!(r.is_err());
    let rx = writer(&s.fs.mnt, "after-panic");
    rx.recv_timeout(Duration::from_secs(20)).expect("unwinding thawed it");
    assert_eq!(s.freezer.frozen(), 0);
}

#[test]
fn the_shutdown_thaws_everything() {
    let s = setup("xfs");
    let frozen = s.freezer.freeze(&s.fs.mnt, "vb/sigterm", Duration::from_secs(600)).unwrap();
    let rx = writer(&s.fs.mnt, "w");
    assert!(blocked(&rx));
    assert_eq!(s.freezer.thaw_all(), 1);
    rx.recv_timeout(Duration::from_secs(20)).expect("thawed by the shutdown");
    assert_eq!(frozen.thaw().by_other, Some("shutdown"));
}

#[test]
fn recovery_thaws_what_an_earlier_process_recorded() {
    let s = setup("ext4");
    // An earlier agent recorded and froze, then died (`kill -9` leaves exactly this state).
    s.store.freezing(&s.fs.mnt.to_string_lossy(), "vb/killed").unwrap();
    run("fsfreeze", &["-f", s.fs.mnt.to_str().unwrap()]);
    let rx = writer(&s.fs.mnt, "w");
    assert!(blocked(&rx));
    let fresh = Freezer::new(s.store.clone(), &[Path::new("/")]);
    let out = fresh.recover().unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].1.starts_with("thawed"), "{out:?}");
    rx.recv_timeout(Duration::from_secs(20)).expect("recovery thawed it");
    assert!(s.store.freezes().unwrap().is_empty());
    // A second recovery has nothing to do; a stale record of a thawed mount is only dropped.
    s.store.freezing(&s.fs.mnt.to_string_lossy(), "vb/stale").unwrap();
    assert_eq!(fresh.recover().unwrap()[0].1, "was not frozen");
}

#[test]
fn refuses_what_must_not_be_frozen() {
    let s = setup("ext4");
    // A plain directory: freezing it would freeze the file system holding it.
    let plain = s.fs.mnt.join("plain");
    std::fs::create_dir(&plain).unwrap();
    let e = s.freezer.freeze(&plain, "x", Duration::from_secs(5)).unwrap_err().to_string();
    assert!(e.contains("not a mount point"), "{e}");
    // The agent's own state: a freezer whose state lives on the mount refuses it.
    let own = Freezer::new(s.store.clone(), &[s.fs.mnt.as_path()]);
    let e = Arc::new(own).freeze(&s.fs.mnt, "x", Duration::from_secs(5)).unwrap_err().to_string();
    assert!(e.contains("agent's own files"), "{e}");
    // Frozen by someone else: not ours to freeze, and not ours to thaw.
    run("fsfreeze", &["-f", s.fs.mnt.to_str().unwrap()]);
    let e = s.freezer.freeze(&s.fs.mnt, "x", Duration::from_secs(5)).unwrap_err().to_string();
    assert!(e.contains("already frozen"), "{e}");
    let rx = writer(&s.fs.mnt, "w");
    assert!(blocked(&rx), "the failed freeze must not thaw someone else's");
    assert!(s.store.freezes().unwrap().is_empty());
    run("fsfreeze", &["-u", s.fs.mnt.to_str().unwrap()]);
    rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let e = s.freezer.freeze(Path::new("/nonexistent/ferry"), "x", Duration::from_secs(5)).unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/ferry"), "{e:#}");
    // A subdirectory of the filesystem bind-mounted as a volume (local-path provisioners):
    // freezing it would freeze every volume on that disk.
    let sub = s.fs.mnt.join("tenant-a");
    std::fs::create_dir(&sub).unwrap();
    let bind = crate::common::devices::BindMount::new(&sub, &s._dir.path().join("vol-a"));
    let e = s.freezer.freeze(&bind.target, "x", Duration::from_secs(5)).unwrap_err().to_string();
    assert!(e.contains("subdirectory (/tenant-a)"), "{e}");
    assert_eq!(s.freezer.frozen(), 0);
}

#[test]
fn two_freezes_of_one_mount_never_lose_the_record() {
    let s = setup("ext4");
    for _ in 0..10 {
        let (f1, f2) = (s.freezer.clone(), s.freezer.clone());
        let (m1, m2) = (s.fs.mnt.clone(), s.fs.mnt.clone());
        let a = std::thread::spawn(move || f1.freeze(&m1, "vb/one", Duration::from_secs(60)));
        let b = std::thread::spawn(move || f2.freeze(&m2, "vb/two", Duration::from_secs(60)));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        let (won, lost) = match (a, b) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l.to_string()),
            (a, b) => panic!("exactly one freeze must win: {a:?} {b:?}"),
        };
        assert!(lost.contains("already frozen by this agent"), "{lost}");
        assert_eq!(s.store.freezes().unwrap().len(), 1, "the winner's record survives the loser");
        assert_eq!(won.thaw().error, None);
        assert!(s.store.freezes().unwrap().is_empty());
    }
}

#[test]
fn after_the_shutdown_nothing_is_frozen() {
    let s = setup("ext4");
    assert_eq!(s.freezer.thaw_all(), 0);
    let e = s.freezer.freeze(&s.fs.mnt, "late", Duration::from_secs(5)).unwrap_err().to_string();
    assert!(e.contains("the agent is stopping"), "{e}");
    assert!(s.store.freezes().unwrap().is_empty());
}
