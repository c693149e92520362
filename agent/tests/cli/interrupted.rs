//! Interrupted backups: a `ferry backup` killed with SIGKILL, and an S3 server (s3s-fs,
//! disk-backed, so its data survives) killed under a running backup and started again. Each time
//! the interrupted backup must fail cleanly, every earlier snapshot must still restore exactly,
//! and the next backup must reuse what was already uploaded: the pending-pack journal lets it
//! index the interrupted backup's packs instead of uploading them again.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::tree::compare_trees;
use crate::common::{Env, num, random_bytes, stderr, summary_of, write};

/// New data of the interrupted backups: 6 × 8 MiB of random bytes, in 1 MiB packs.
const FILES: usize = 6;
const FILE_LEN: usize = 8 << 20;

fn init_small_packs(env: &Env, extra_env: &[(&str, &str)]) {
    let out = env
        .ferry()
        .envs(extra_env.iter().copied())
        .args(["init", "--kdf-memory", "64", "--kdf-iterations", "1", "--pack-size-mib", "1"])
        .args(["--chunk-avg-kib", "256"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "init: {}", stderr(&out));
}

/// A source with a small first file (for the first snapshot) and the big files added later.
fn first_source(env: &Env) -> PathBuf {
    let src = env.path("src");
    write(&src.join("small"), &random_bytes("small", 300_000));
    src
}

fn add_big_files(src: &Path, dir: &str) {
    for i in 0..FILES {
        write(&src.join(format!("{dir}/{i}")), &random_bytes(&format!("{dir}{i}"), FILE_LEN));
    }
}

/// Regular files anywhere under `dir`.
fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// Packs seen on the storage before a backup is interrupted, so that at least 3 are journaled:
/// the writer runs at most 2 uploads at once and starts one only after a finished one was
/// journaled, so the n-th pack seen guarantees n - 2 journaled (with 4, a loaded machine
/// resumed only 2). Fewer than `INDEX_EVERY` (8), after which an index replaces the journal.
const UNDER_WAY_PACKS: usize = 5;

/// Wait until `dir` holds `n` files more than `before`; panics if `child` ends first.
fn wait_for_packs(child: &mut Child, dir: &Path, before: usize, n: usize) {
    let t = Instant::now();
    while files_under(dir) < before + n {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the backup ended ({st}) before {n} packs were uploaded: it could not be interrupted");
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no {n} packs uploaded within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("the backup did not end within {limit:?} after its storage went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut stderr).unwrap();
    }
    std::process::Output { status: child.wait().unwrap(), stdout: Vec::new(), stderr: stderr.into_bytes() }
}

/// The resumed-backup checks: the journal's packs were indexed and not uploaded again, and both
/// snapshots restore exactly.
fn check_resumed(env: &Env, extra_env: &[(&str, &str)], src: &Path, first: &str) {
    let out = env.ferry().envs(extra_env.iter().copied()).args(["backup", "--json"]).arg(src).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "backup after the interruption: {}", stderr(&out));
    let s = summary_of(&out.stdout);
    let resumed = &s["resumed"];
    let (packs, bytes) = (num(resumed, "packs"), num(resumed, "bytes"));
    assert!(packs >= 3, "the interrupted backup's packs were not reused: {s}");
    assert_eq!(num(resumed, "missing"), 0, "{s}");
    // Random data stores slightly more than it reads: what was resumed is not added again.
    let new = (FILES * FILE_LEN) as u64;
    assert!(num(&s, "bytes_added") + bytes <= new + (64 << 10), "resumed {bytes} B but added {s}");
    assert!(num(&s["requests"], "bytes_up") < new - bytes / 2, "uploaded again: {s}");
    let pending: Vec<_> = std::fs::read_dir(&env.cache)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path().join("pending")).into_iter().flatten().flatten())
        .collect();
    assert!(pending.is_empty(), "journals left behind: {pending:?}");
    for (snap, expect_big) in [("latest", true), (first, false)] {
        let target = env.path(&format!("restore-{expect_big}"));
        let mut cmd = env.ferry();
        cmd.envs(extra_env.iter().copied()).args(["restore", snap, "--verify", "--target"]).arg(&target);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "restore {snap}: {}", stderr(&out));
        if expect_big {
            let diffs = compare_trees(src, &target);
            assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        } else {
            assert!(!target.join("big").exists() && !target.join("more").exists());
            assert_eq!(std::fs::read(target.join("small")).unwrap(), std::fs::read(src.join("small")).unwrap());
        }
    }
}

fn first_snapshot(env: &Env, extra_env: &[(&str, &str)], src: &Path) -> String {
    let out = env.ferry().envs(extra_env.iter().copied()).args(["backup", "--json"]).arg(src).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "first backup: {}", stderr(&out));
    summary_of(&out.stdout)["snapshot_id"].as_str().unwrap().to_string()
}

/// A first snapshot of a small source, then big files added and a backup of them started and
/// under way (`UNDER_WAY_PACKS` uploaded): the source, the first snapshot, the running backup
/// and the number of pack files before it started.
fn backup_under_way(env: &Env, stderr: Stdio) -> (PathBuf, String, Child, usize) {
    init_small_packs(env, &[]);
    let src = first_source(env);
    let first = first_snapshot(env, &[], &src);
    add_big_files(&src, "big");
    let data = env.repo.join("data");
    let before = files_under(&data);
    let mut child = env.ferry_std().args(["backup", "-q"]).arg(&src).stderr(stderr).spawn().unwrap();
    wait_for_packs(&mut child, &data, before, UNDER_WAY_PACKS);
    (src, first, child, before)
}

#[test]
fn killed_backup_is_resumed_by_the_next() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let (src, first, mut child, _) = backup_under_way(&env, Stdio::null());
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind runs
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9), "{st}");
    check_resumed(&env, &[], &src, &first);
}

/// An s3s-fs server on loopback, storing under `root`.
struct S3sFs {
    bin: String,
    root: PathBuf,
    port: u16,
    child: Option<Child>,
}

const AK: &str = "ferry-access";
const SK: &str = "ferry-secret";

impl S3sFs {
    fn start(bin: &str, root: &Path) -> S3sFs {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut s = S3sFs { bin: bin.to_string(), root: root.to_path_buf(), port, child: None };
        s.restart();
        s
    }

    fn restart(&mut self) {
        let t = Instant::now();
        loop {
            let mut child = Command::new(&self.bin)
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--access-key", AK, "--secret-key", SK])
                .arg(&self.root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            while t.elapsed() < Duration::from_secs(30) {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port may still be held by the killed one: try again
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(t.elapsed() < Duration::from_secs(30), "s3s-fs did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn s3_server_killed_mid_backup_then_restarted() {
    if crate::common::under_qemu() {
        return;
    }
    let Ok(bin) = std::env::var("FERRY_TEST_S3S_FS") else {
        crate::common::skip("FERRY_TEST_S3S_FS not set (tests/servers.sh install && start)");
        return;
    };
    let mut env = Env::empty();
    let root = env.path("s3root");
    std::fs::create_dir_all(root.join("bkt")).unwrap();
    let mut server = S3sFs::start(&bin, &root);
    let location = format!("s3:http://127.0.0.1:{}/bkt/repo", server.port);
    env.repo = PathBuf::from(&location);
    let creds: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", AK), ("AWS_SECRET_ACCESS_KEY", SK)];
    init_small_packs(&env, creds);

    // A wrong secret is refused by the server: a named error with a hint, at once.
    let t = Instant::now();
    let out = env.ferry().envs(creds.iter().copied()).env("AWS_SECRET_ACCESS_KEY", "wrong").arg("snapshots").output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains(&location) && e.contains("403") && e.contains("check the credentials"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30), "a refused credential took {:?}", t.elapsed());

    let src = first_source(&env);
    let first = first_snapshot(&env, creds, &src);
    let data = root.join("bkt/repo/data");

    // A short outage (the server killed and back 2 s later) is ridden out by retries.
    add_big_files(&src, "more");
    let before = files_under(&data);
    let mut cmd = env.ferry_std();
    cmd.envs(creds.iter().copied()).args(["backup", "-q"]).arg(&src).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    wait_for_packs(&mut child, &data, before, 2);
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let out = wait_exit(&mut child, Duration::from_secs(150));
    assert_eq!(out.status.code(), Some(0), "a 2 s outage failed the backup: {}", stderr(&out));
    let target = env.path("restore-outage");
    let mut cmd = env.ferry();
    cmd.envs(creds.iter().copied()).args(["restore", "latest", "--verify", "--target"]).arg(&target);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));

    // A server that stays down fails the backup with a named error, in bounded time.
    add_big_files(&src, "big");
    let before = files_under(&data);
    let mut child = env
        .ferry_std()
        .envs(creds.iter().copied())
        .args(["backup", "-q"])
        .arg(&src)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_packs(&mut child, &data, before, UNDER_WAY_PACKS);
    server.kill();
    let killed = Instant::now();
    let out = wait_exit(&mut child, Duration::from_secs(150));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains(&format!("127.0.0.1:{}", server.port)), "the error does not name the location: {e}");
    eprintln!("backup failed {:.1} s after the server was killed: {e}", killed.elapsed().as_secs_f64());

    server.restart();
    let out = env.ferry().envs(creds.iter().copied()).args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&first), "{listed}");
    check_resumed(&env, creds, &src, &first);
}

/// SIGINT (Ctrl-C): the backup stops reading, indexes what it uploaded, writes no snapshot and
/// exits 130; the next backup uploads only the rest.
#[test]
fn interrupted_backup_exits_130_and_the_next_uploads_only_the_rest() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::empty();
    let (src, first, mut child, before) = backup_under_way(&env, Stdio::piped());
    let data = env.repo.join("data");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    let uploaded = files_under(&data) - before;

    let out = env.ferry().args(["snapshots", "--json"]).output().unwrap();
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "a cancelled backup wrote a snapshot: {snaps}");

    let out = env.ferry().args(["backup", "--json"]).arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "backup after the interruption: {}", stderr(&out));
    let s = summary_of(&out.stdout);
    assert_eq!(num(&s["resumed"], "packs"), 0, "the cancelled backup indexed its own packs: {s}");
    let new = (FILES * FILE_LEN) as u64;
    let reused = (uploaded as u64).saturating_sub(1) << 20;
    assert!(num(&s["requests"], "bytes_up") < new - reused / 2, "uploaded again ({uploaded} packs before): {s}");
    for snap in ["latest", first.as_str()] {
        let out = env.restore(snap, &env.path(&format!("restore-{snap}")), &["--verify"]);
        assert_eq!(out.status.code(), Some(0), "restore {snap}: {}", stderr(&out));
    }
    let diffs = compare_trees(&src, &env.path("restore-latest"));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
