//! Exit codes the README documents that `errors.rs` does not cover: 2 (bad command line) and 11
//! (repository format newer than this ferry). 10 and 12 are in `errors.rs`; 3 and 13 elsewhere.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::common::{Env, json_lines, snapshot_dir, stderr, write};

/// `ferry ARGS` against `env`; returns the output.
fn run(env: &Env, args: &[&str]) -> std::process::Output {
    env.ferry().args(args).output().unwrap()
}

#[test]
fn bad_command_lines_exit_2_and_change_nothing() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"data");
    env.backup(&src, &[]);
    let before = snapshot_dir(&env.repo);
    let target = env.path("target");
    let t = target.to_str().unwrap();
    let s = src.to_str().unwrap();
    // (arguments, a word stderr must name)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--no-such-flag", "snapshots"], "--no-such-flag"),
        (vec!["snapshots", "--no-such-flag"], "--no-such-flag"),
        (vec!["frobnicate"], "frobnicate"),
        (vec![], "Usage"),
        (vec!["init", "--kdf-memory", "lots"], "--kdf-memory"),
        (vec!["init", "--compression", "-"], "--compression"),
        (vec!["backup", "--json"], "<PATHS>"),
        (vec!["backup", s, "--pod-volume", "/x/y/z"], "--pod-volume"),
        (vec!["backup", "--changed-blocks", "a", "--allocated-blocks", "b", s], "--allocated-blocks"),
        (vec!["backup", "--parent", "latest", "--force", s], "--force"),
        (vec!["restore", "latest"], "--target"),
        (vec!["restore", "--target", t], "<SNAPSHOT>"),
        (vec!["cat", "everything"], "everything"),
        (vec!["key", "frob"], "frob"),
        (vec!["key", "remove"], "<ID>"),
        (vec!["--location", "dpa.yaml", "snapshots"], "--repo"),
    ];
    for (args, word) in &cases {
        let out = run(&env, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(word), "{args:?}: stderr does not name {word:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    // Usage is checked before the password: a wrong password does not turn 2 into 12.
    let out = env.ferry_pw("wrong").args(["ls", "latest", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(snapshot_dir(&env.repo), before, "a bad command line changed the repository");
    assert!(!target.exists(), "a bad command line created the restore target");

    // An init with a bad value creates nothing.
    let fresh = Env::empty();
    let out = fresh.ferry().args(["init", "--kdf-iterations", "many"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!fresh.repo.exists(), "init with a bad value created {}", fresh.repo.display());

    // --help and --version are not errors, and --help documents the exit codes.
    let out = run(&env, &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for code in ["2 bad usage", "10 no repository", "11 repository newer", "12 wrong password", "13 corrupt"] {
        assert!(help.contains(code), "--help lacks {code:?}: {help}");
    }
    assert_eq!(run(&env, &["--version"]).status.code(), Some(0));
}

/// Set the clear format version (bytes 6..8, u16 little-endian: FORMAT.md §5.2) of a sealed
/// object. Objects other than `config` are named by the BLAKE3 of their bytes (§2): they are
/// renamed to match, as a newer ferry would have named them. Returns the new path.
fn set_version(path: &Path, version: u16) -> PathBuf {
    let mut b = std::fs::read(path).unwrap();
    assert_eq!(&b[..5], b"FERRY", "{} is not a sealed object", path.display());
    assert_ne!(u16::from_le_bytes([b[6], b[7]]), version, "{} is already version {version}", path.display());
    b[6..8].copy_from_slice(&version.to_le_bytes());
    if path.file_name().unwrap() == "config" {
        std::fs::write(path, &b).unwrap();
        return path.to_path_buf();
    }
    let renamed = path.with_file_name(blake3::hash(&b).to_hex().as_str());
    std::fs::write(&renamed, &b).unwrap();
    std::fs::remove_file(path).unwrap();
    renamed
}

/// The only file in `dir`.
fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

fn assert_newer(out: &std::process::Output, version: u16, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(11), "{what}: {err}");
    assert!(
        err.contains(&format!(
            "repository format version {version} is newer than this ferry supports (up to {})",
            repo_format::FORMAT_VERSION
        )) && err.contains("upgrade ferry"),
        "{what}: the message must name the version and say to upgrade: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{what}: one error line: {err}");
}

#[test]
fn repository_format_newer_than_this_ferry_exits_11() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f"), b"written by an older ferry");
    env.backup(&src, &[]);
    let config = env.repo.join("config");
    let pristine = std::fs::read(&config).unwrap();
    let target = env.path("target");
    let commands: Vec<Vec<OsString>> = vec![
        vec!["snapshots".into()],
        vec!["backup".into(), src.clone().into()],
        vec!["ls".into(), "latest".into()],
        vec!["restore".into(), "latest".into(), "--target".into(), target.clone().into()],
        vec!["cat".into(), "config".into()],
        vec!["key".into(), "list".into()],
        vec!["key".into(), "add".into(), "--kdf-memory".into(), "64".into(), "--kdf-iterations".into(), "1".into()],
    ];
    // The next version, and 256 (01 00 read as little-endian: a big-endian misreading would see 1).
    let next = repo_format::FORMAT_VERSION + 1;
    for version in [next, 256] {
        set_version(&config, version);
        let before = snapshot_dir(&env.repo);
        for args in &commands {
            let out = env.ferry().env("FERRY_NEW_PASSWORD", "another").args(args).output().unwrap();
            assert_newer(&out, version, &format!("config version {version}, {args:?}"));
        }
        // Whatever the password: the version is checked before any key is tried.
        let out = env.ferry_pw("not the password").arg("snapshots").output().unwrap();
        assert_newer(&out, version, "wrong password");
        // --json: the error line carries the exit code.
        let out = env.ferry().args(["--json", "snapshots"]).output().unwrap();
        assert_eq!(out.status.code(), Some(11));
        let lines = json_lines(&out.stdout);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["message_type"], "error");
        assert_eq!(lines[0]["exit_code"], 11);
        assert!(lines[0]["error"].as_str().unwrap().contains("upgrade ferry"), "{lines:?}");
        assert_eq!(snapshot_dir(&env.repo), before, "a refused command changed the repository");
        assert!(!target.exists(), "a refused restore created its target");
        std::fs::write(&config, &pristine).unwrap();
    }
    let out = env.ferry().arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the restored config opens again: {}", stderr(&out));

    // A snapshot written by a newer ferry: listing refuses with 11 instead of guessing.
    let snap = set_version(&only_file(&env.repo.join("snapshots")), next);
    for args in [&["snapshots"][..], &["ls", "latest"], &["restore", "latest", "--target", target.to_str().unwrap()]] {
        let out = env.ferry().args(args).output().unwrap();
        assert_newer(&out, next, &format!("snapshot version {next}, {args:?}"));
    }
    assert!(!target.exists(), "a refused restore created its target");
    set_version(&snap, 1);

    // An index object written by a newer ferry: anything that loads the index refuses.
    let index = set_version(&only_file(&env.repo.join("index")), next);
    let fresh_cache = env.path("cache2");
    for args in [&["restore", "latest", "--target", target.to_str().unwrap()][..], &["backup", src.to_str().unwrap()]] {
        let out = env.ferry().env("FERRY_CACHE_DIR", &fresh_cache).args(args).output().unwrap();
        assert_newer(&out, next, &format!("index version {next}, {args:?}"));
    }
    set_version(&index, 1);
    let out = env.restore("latest", &target, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"written by an older ferry");
}

/// A key file of a newer key-file version (FORMAT.md §5.1: "a key-file version other than 1 is
/// refused as unsupported"; §11: refuse "with a clear error naming it and asking for an
/// upgrade") must exit 11, not pass for a wrong password (12).
#[test]
fn key_file_version_newer_than_this_ferry_exits_11() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let key = only_file(&env.repo.join("keys"));
    let mut b = std::fs::read(&key).unwrap();
    assert_eq!(&b[..8], b"FERRYKEY");
    assert_eq!(b[8], 1, "key file version");
    b[8] = 2;
    std::fs::write(key.with_file_name(blake3::hash(&b).to_hex().as_str()), &b).unwrap();
    std::fs::remove_file(&key).unwrap();
    let out = env.ferry().arg("snapshots").output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert!(err.contains("upgrade ferry"), "{err}");
}
