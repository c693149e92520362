//! Exit codes of the common failures, and that a failure changes nothing.

use crate::common::{Env, json_lines, snapshot_dir, stderr, write};

#[test]
fn wrong_password_and_missing_repository() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a"), b"some data");
    write(&src.join("b/c"), b"more data");
    env.backup(&src, &[]);
    let before = snapshot_dir(&env.repo);
    assert!(before.len() >= 4, "config, key, snapshot, index, pack: {before:?}");

    // Wrong password: exit 12 for every command that opens the repository, nothing written.
    let target = env.path("target-wrong-pw");
    let commands: Vec<Vec<std::ffi::OsString>> = vec![
        vec!["backup".into(), src.clone().into()],
        vec!["snapshots".into()],
        vec!["ls".into(), "latest".into()],
        vec!["restore".into(), "latest".into(), "--target".into(), target.clone().into()],
        vec!["key".into(), "list".into()],
        vec!["key".into(), "add".into(), "--kdf-memory".into(), "64".into(), "--kdf-iterations".into(), "1".into()],
        vec!["cat".into(), "config".into()],
    ];
    for args in &commands {
        let out = env.ferry_pw("not the password").env("FERRY_NEW_PASSWORD", "another").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(12), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("wrong password"), "{args:?}: {}", stderr(&out));
    }
    // With --json the error is also a JSON line carrying the exit code.
    let out = env.ferry_pw("nope").args(["--json", "snapshots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(12));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["message_type"], "error");
    assert_eq!(lines[0]["exit_code"], 12);
    // The same through --password-file.
    let pwfile = env.path("pw");
    std::fs::write(&pwfile, "wrong\n").unwrap();
    let mut c = env.ferry();
    c.env_remove("FERRY_PASSWORD").arg("--password-file").arg(&pwfile).arg("snapshots");
    assert_eq!(c.output().unwrap().status.code(), Some(12));

    assert_eq!(snapshot_dir(&env.repo), before, "the repository changed after wrong-password commands");
    assert!(!target.exists(), "a restore with a wrong password created its target");
    // A pre-existing, empty target stays empty.
    let target2 = env.path("target-existing");
    std::fs::create_dir(&target2).unwrap();
    let out = env.ferry_pw("wrong").args(["restore", "latest", "--target"]).arg(&target2).output().unwrap();
    assert_eq!(out.status.code(), Some(12));
    assert_eq!(std::fs::read_dir(&target2).unwrap().count(), 0);

    // The right password still works, and via --password-file too.
    std::fs::write(&pwfile, format!("{}\n", crate::common::PASSWORD)).unwrap();
    let mut c = env.ferry();
    c.env_remove("FERRY_PASSWORD").arg("--password-file").arg(&pwfile).arg("snapshots");
    assert_eq!(c.output().unwrap().status.code(), Some(0));

    // No repository: an empty directory, or a missing one → exit 10.
    let empty = Env::empty();
    std::fs::create_dir(&empty.repo).unwrap();
    let missing = Env::empty();
    for (what, e) in [("empty", &empty), ("missing", &missing)] {
        let t = e.path("target");
        let runs: [Vec<std::ffi::OsString>; 3] = [
            vec!["backup".into(), src.clone().into()],
            vec!["snapshots".into()],
            vec!["restore".into(), "latest".into(), "--target".into(), t.clone().into()],
        ];
        for args in &runs {
            let out = e.ferry().args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(10), "{what} repository, {args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("no repository at"), "{}", stderr(&out));
            assert_eq!(stderr(&out).lines().count(), 1, "one error line: {}", stderr(&out));
        }
        assert!(!t.exists(), "{what}: restore created its target");
        if e.repo.exists() {
            assert!(snapshot_dir(&e.repo).is_empty(), "{what}: files written into a non-repository");
        }
    }
    // No repository given at all: a usage failure (1), not 10.
    let mut c = assert_cmd::Command::cargo_bin("ferry").unwrap();
    c.env_remove("FERRY_REPOSITORY").env("FERRY_PASSWORD", "x").env("FERRY_CACHE_DIR", &env.cache).arg("snapshots");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no repository given"));
}
