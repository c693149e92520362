//! Every password source the README and `--help` name: `FERRY_PASSWORD`, `--password-file`,
//! `FERRY_PASSWORD_FILE` (and `FERRY_NEW_PASSWORD` / `--new-password-file` for `key add`), their
//! precedence, line endings, the refusal of empty passwords, and a clear error (never a hang)
//! when no password is given and there is no terminal to ask on.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, PASSWORD, stderr, write};

const CHEAP: [&str; 4] = ["--kdf-memory", "64", "--kdf-iterations", "1"];

/// `ferry --repo REPO` without any password in its environment.
fn bare(env: &Env) -> assert_cmd::Command {
    let mut c = env.ferry();
    c.env_remove("FERRY_PASSWORD");
    c
}

/// Exit code of `snapshots` run by `c`.
fn opens(mut c: assert_cmd::Command) -> Option<i32> {
    let out = c.arg("snapshots").output().unwrap();
    if out.status.code() != Some(0) && out.status.code() != Some(12) {
        panic!("unexpected failure: {}", stderr(&out));
    }
    out.status.code()
}

fn file(env: &Env, name: &str, content: &[u8]) -> std::path::PathBuf {
    let p = env.path(name);
    write(&p, content);
    p
}

fn key_count(env: &Env) -> usize {
    std::fs::read_dir(env.repo.join("keys")).unwrap().count()
}

/// Run `c` with stdin from /dev/null; fail (and kill it) if it has not ended within `secs`.
fn run_no_tty(mut c: Command, secs: u64) -> Output {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("ferry waited for a password with no terminal (killed after {secs} s): {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_password_source_and_their_precedence() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let right = file(&env, "right", format!("{PASSWORD}\n").as_bytes());
    let crlf = file(&env, "crlf", format!("{PASSWORD}\r\n").as_bytes());
    let no_newline = file(&env, "no-newline", PASSWORD.as_bytes());
    let two_lines = file(&env, "two-lines", format!("{PASSWORD}\nnot part of it\n").as_bytes());
    let wrong = file(&env, "wrong", b"wrong\n");

    // Each source alone.
    assert_eq!(opens(env.ferry()), Some(0), "FERRY_PASSWORD");
    for f in [&right, &crlf, &no_newline, &two_lines] {
        let mut c = bare(&env);
        c.arg("--password-file").arg(f);
        assert_eq!(opens(c), Some(0), "--password-file {}", f.display());
        let mut c = bare(&env);
        c.env("FERRY_PASSWORD_FILE", f);
        assert_eq!(opens(c), Some(0), "FERRY_PASSWORD_FILE {}", f.display());
    }
    let mut c = bare(&env);
    c.arg("--password-file").arg(&wrong);
    assert_eq!(opens(c), Some(12), "a wrong password from a file");
    // Only the first line counts, and a trailing CR is not part of the password.
    assert_eq!(opens(env.ferry_pw(&format!("{PASSWORD}\r"))), Some(12), "a CR in FERRY_PASSWORD is kept");
    assert_eq!(opens(env.ferry_pw(&format!("{PASSWORD}\nnot part of it"))), Some(12));

    // FERRY_PASSWORD comes first, then --password-file, then FERRY_PASSWORD_FILE.
    let mut c = env.ferry();
    c.arg("--password-file").arg(&wrong).env("FERRY_PASSWORD_FILE", &wrong);
    assert_eq!(opens(c), Some(0), "FERRY_PASSWORD beats both files");
    let mut c = env.ferry_pw("wrong");
    c.arg("--password-file").arg(&right).env("FERRY_PASSWORD_FILE", &right);
    assert_eq!(opens(c), Some(12), "FERRY_PASSWORD beats both files");
    let mut c = bare(&env);
    c.arg("--password-file").arg(&right).env("FERRY_PASSWORD_FILE", &wrong);
    assert_eq!(opens(c), Some(0), "--password-file beats FERRY_PASSWORD_FILE");
    let mut c = bare(&env);
    c.arg("--password-file").arg(&wrong).env("FERRY_PASSWORD_FILE", &right);
    assert_eq!(opens(c), Some(12), "--password-file beats FERRY_PASSWORD_FILE");

    // A missing password file is an error naming it (not a wrong password, not a prompt).
    let missing = env.path("no-such-password-file");
    let out = bare(&env).arg("--password-file").arg(&missing).arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("reading the password file {}", missing.display())), "{}", stderr(&out));

    // init takes the same sources: a CRLF file creates the password without the CR.
    let other = Env::empty();
    let crlf2 = file(&other, "crlf", b"from a windows editor\r\n");
    let out = bare(&other).arg("--password-file").arg(&crlf2).arg("init").args(CHEAP).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(opens(other.ferry_pw("from a windows editor")), Some(0));
    assert_eq!(opens(other.ferry_pw("from a windows editor\r")), Some(12));
}

#[test]
fn empty_passwords_are_refused_and_create_nothing() {
    if crate::common::under_qemu() {
        return;
    }
    // init: from the environment, and from files that hold nothing, a newline, or CRLF.
    let empty_env = Env::empty();
    let out = empty_env.ferry_pw("").arg("init").args(CHEAP).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("empty password is not allowed"), "{}", stderr(&out));
    assert!(!empty_env.repo.join("config").exists(), "an empty password created a repository");
    for (name, content) in [("zero-bytes", &b""[..]), ("newline", b"\n"), ("crlf", b"\r\n")] {
        let e = Env::empty();
        let f = file(&e, name, content);
        let out = bare(&e).arg("--password-file").arg(&f).arg("init").args(CHEAP).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("empty password is not allowed"), "{name}: {}", stderr(&out));
        assert!(!e.repo.join("config").exists(), "{name}: an empty password created a repository");
    }

    // Opening an existing repository: refused as empty (exit 1), not tried as a password (12).
    let env = Env::new();
    let out = env.ferry_pw("").arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("empty password is not allowed"), "{}", stderr(&out));

    // key add: an empty new password adds no key.
    assert_eq!(key_count(&env), 1);
    let out = env.ferry().env("FERRY_NEW_PASSWORD", "").args(["key", "add"]).args(CHEAP).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("FERRY_NEW_PASSWORD") && stderr(&out).contains("empty"), "{}", stderr(&out));
    let f = file(&env, "empty-new", b"\n");
    let out = env.ferry().args(["key", "add", "--new-password-file"]).arg(&f).args(CHEAP).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(key_count(&env), 1, "a refused key add wrote a key file");
}

#[test]
fn new_password_for_key_add_from_the_environment_beats_the_file() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let f = file(&env, "new", b"from the file\r\n");
    let out = env
        .ferry()
        .env("FERRY_NEW_PASSWORD", "from the environment")
        .args(["key", "add", "--new-password-file"])
        .arg(&f)
        .args(CHEAP)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(opens(env.ferry_pw("from the environment")), Some(0));
    assert_eq!(opens(env.ferry_pw("from the file")), Some(12));
    // Without FERRY_NEW_PASSWORD the file is used, its CRLF stripped.
    let out = env.ferry().args(["key", "add", "--new-password-file"]).arg(&f).args(CHEAP).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(opens(env.ferry_pw("from the file")), Some(0));
    assert_eq!(key_count(&env), 3);
}

/// With stdin not a terminal and no password configured, every command fails at once with an
/// error naming what to set; it must never wait for input.
#[test]
fn no_password_and_no_terminal_is_a_clear_error_not_a_hang() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let fresh = Env::empty();
    let mut init = fresh.ferry_std();
    init.env_remove("FERRY_PASSWORD").arg("init").args(CHEAP);
    let mut snapshots = env.ferry_std();
    snapshots.env_remove("FERRY_PASSWORD").arg("snapshots");
    let src = env.path("src");
    write(&src.join("f"), b"data");
    let mut backup = env.ferry_std();
    backup.env_remove("FERRY_PASSWORD").arg("backup").arg(&src);
    for (what, c) in [("init", init), ("snapshots", snapshots), ("backup", backup)] {
        let out = run_no_tty(c, 30);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        for name in ["FERRY_PASSWORD", "FERRY_PASSWORD_FILE", "--password-file"] {
            assert!(err.contains(name), "{what}: the error does not name {name}: {err}");
        }
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
    }
    assert!(!fresh.repo.join("config").exists(), "init without a password created a repository");
    let snapshots = std::fs::read_dir(env.repo.join("snapshots")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(snapshots, 0, "backup without a password wrote a snapshot");

    // key add without a new password: the error names the new-password settings.
    let mut c = env.ferry_std();
    c.args(["key", "add"]).args(CHEAP);
    let out = run_no_tty(c, 30);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("FERRY_NEW_PASSWORD") && err.contains("--new-password-file"), "{err}");
    assert_eq!(key_count(&env), 1);
}
