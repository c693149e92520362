//! `ferry copy` and `ferry init --copy-chunker-params-from`: snapshots copied between local and
//! S3 repositories restore exactly; with a shared id key the copies deduplicate against the
//! destination's own backups; snapshots the destination has are skipped; a wrong source password
//! is named and exits 12.

use std::path::Path;

use serde_json::Value;

use crate::common::{Env, PASSWORD, compare_trees, json_lines, num, random_bytes, stderr, summary_of, write};

/// `ferry copy --json --from-repo FROM [args]` into `to`; asserts exit 0 and returns the lines.
fn copy(to: &Env, from: &Path, args: &[&str]) -> Vec<Value> {
    let mut cmd = to.ferry();
    cmd.args(["copy", "--json", "--from-repo"]).arg(from).args(args).env("FERRY_FROM_PASSWORD", PASSWORD);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "copy from {}: {}", from.display(), stderr(&out));
    json_lines(&out.stdout)
}

fn copied(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["message_type"] == "copied").collect()
}

fn summary(lines: &[Value]) -> &Value {
    lines.iter().find(|l| l["message_type"] == "summary").expect("a summary line")
}

/// The snapshots of a repository, oldest first (`snapshots --json`).
fn snapshots(env: &Env) -> Vec<Value> {
    let out = env.ferry().args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// What must survive a copy: everything but the ids (tree, parent) and the program.
fn origin(s: &Value) -> Value {
    serde_json::json!([s["time_ns"], s["hostname"], s["username"], s["paths"], s["tags"], s["summary"]])
}

fn restores_exactly(env: &Env, snapshot: &str, src: &Path, target: &str) {
    let target = env.path(target);
    let out = env.restore(snapshot, &target, &["--verify", "--allow-devices", "--keep-setuid"]);
    assert_eq!(out.status.code(), Some(0), "restore {snapshot}: {}", stderr(&out));
    let diffs = compare_trees(src, &target);
    assert!(diffs.is_empty(), "the copy restores differently:\n{}", diffs.join("\n"));
}

#[test]
fn copy_from_local_to_s3_and_back_restores_exactly() {
    if crate::common::under_qemu() {
        return;
    }
    let Some((endpoint, bucket)) = crate::cloud::moto() else { return };
    let local = Env::new();
    let src = local.path("src");
    std::fs::create_dir(&src).unwrap();
    crate::fidelity::build(&src);
    local.backup(&src, &["--tag", "app=shop"]);

    let s3 = Env::at(&format!("s3:{endpoint}/{bucket}/{}", crate::cloud::unique("copy")));
    let lines = copy(&s3, &local.repo, &[]);
    assert_eq!(copied(&lines).len(), 1, "{lines:?}");
    let s = summary(&lines);
    assert!(num(s, "data_blobs_added") > 0 && s["shared_id_key"] == false, "{s}");
    assert!(num(&s["requests"], "http_attempts") > 0, "the destination is reached over HTTP: {s}");

    let back = Env::new();
    let lines = copy(&back, &s3.repo, &[]);
    assert_eq!(num(summary(&lines), "snapshots_copied"), 1, "{lines:?}");
    assert!(num(&summary(&lines)["source_requests"], "http_attempts") > 0, "{lines:?}");
    restores_exactly(&back, "latest", &src, "target");
    let (a, b) = (snapshots(&local), snapshots(&back));
    assert_eq!(a.iter().map(origin).collect::<Vec<_>>(), b.iter().map(origin).collect::<Vec<_>>());
}

#[test]
fn with_shared_chunker_params_copies_and_backups_deduplicate() {
    if crate::common::under_qemu() {
        return;
    }
    // Small chunks in the source, so that the destination can only cut alike by taking them.
    let a = Env::empty();
    let out = a.ferry().args(["init", "--kdf-memory", "64", "--kdf-iterations", "1", "--chunk-avg-kib", "64"]).output();
    assert_eq!(out.unwrap().status.code(), Some(0));
    let src = a.path("src");
    for i in 0..3 {
        write(&src.join(format!("f{i}")), &random_bytes(&format!("shared-{i}"), 1 << 20));
    }
    a.backup(&src, &["--host", "one"]);

    let b = Env::empty();
    let mut cmd = b.ferry();
    cmd.args(["init", "--json", "--kdf-memory", "64", "--kdf-iterations", "1", "--copy-chunker-params-from"]);
    let out = cmd.arg(&a.repo).env("FERRY_FROM_PASSWORD", PASSWORD).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_lines(&out.stdout)[0]["chunker_params_from"], a.repo.to_str().unwrap());
    let config = |env: &Env| {
        let out = env.ferry().args(["cat", "--json", "config"]).output().unwrap();
        let c: Value = serde_json::from_slice(&out.stdout).unwrap();
        (c["chunker"].clone(), c["disk_chunk_size"].clone(), c["id"].clone())
    };
    let (ca, cb) = (config(&a), config(&b));
    assert_eq!((&ca.0, &ca.1), (&cb.0, &cb.1), "chunk sizes are taken from the source");
    assert_eq!(cb.0["avg"], 65536);
    assert_ne!(ca.2, cb.2, "a repository of its own");

    let lines = copy(&b, &a.repo, &[]);
    let first = summary(&lines);
    assert!(first["shared_id_key"] == true && num(first, "data_blobs_added") > 12, "{first}");
    // The same data in another snapshot: nothing of its content is uploaded again.
    a.backup(&src, &["--host", "two"]);
    let lines = copy(&b, &a.repo, &[]);
    let c = copied(&lines);
    assert_eq!(c.len(), 2, "{lines:?}");
    assert!(c[0]["skipped"] == true && c[1]["skipped"] == false, "{lines:?}");
    assert_eq!(num(c[1], "data_blobs_added"), 0, "{lines:?}");
    // A backup of the same files straight into the destination finds every chunk there.
    let direct = b.backup(&src, &["--force"]);
    assert_eq!(num(&direct, "data_blobs_added"), 0, "{direct}");
    restores_exactly(&b, &c[1]["destination_id"].as_str().unwrap()[..12], &src, "target");
}

#[test]
fn without_shared_params_copies_restore_exactly_and_a_rerun_skips_everything() {
    if crate::common::under_qemu() {
        return;
    }
    let a = Env::new();
    let src = a.path("src");
    std::fs::create_dir(&src).unwrap();
    crate::fidelity::build(&src);
    a.backup(&src, &[]);
    write(&src.join("later.txt"), b"added before the second backup\n");
    a.backup(&src, &[]);

    let b = Env::new();
    let lines = copy(&b, &a.repo, &[]);
    let s = summary(&lines);
    assert!(s["shared_id_key"] == false && num(s, "snapshots_copied") == 2, "{s}");
    let c = copied(&lines);
    assert!(c.iter().all(|l| l["skipped"] == false && l["existing_id"].is_null()), "{lines:?}");
    // The second backup's parent is the first: in the copy, the first's copy.
    let (sa, sb) = (snapshots(&a), snapshots(&b));
    assert_eq!(sa.iter().map(origin).collect::<Vec<_>>(), sb.iter().map(origin).collect::<Vec<_>>());
    assert_eq!(sb[1]["parent"], sb[0]["id"], "{sb:?}");
    assert_ne!(sa[1]["tree"], sb[1]["tree"], "re-keyed trees have other ids");
    restores_exactly(&b, "latest", &src, "target");
    // The copy is whole: check reads every byte of it.
    let out = b.ferry().args(["check", "--json", "--read-data"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(summary_of(&out.stdout)["unused_blobs"], 0);

    let again = copy(&b, &a.repo, &[]);
    let s = summary(&again);
    assert_eq!((num(s, "snapshots_copied"), num(s, "snapshots_skipped")), (0, 2), "{s}");
    assert_eq!(num(&s["requests"], "put"), 0, "a copy with nothing to do writes nothing: {s}");
    for (l, first) in copied(&again).iter().zip(&c) {
        assert!(l["skipped"] == true && l["destination_id"].is_null(), "{l}");
        assert_eq!(l["existing_id"], first["destination_id"], "{l}");
    }
    assert_eq!(snapshots(&b).len(), 2);
}

#[test]
fn a_snapshot_the_destination_has_is_skipped_and_filters_select() {
    if crate::common::under_qemu() {
        return;
    }
    let a = Env::new();
    let src = a.path("src");
    write(&src.join("f"), &random_bytes("skip", 300_000));
    let one = summary_of(&a.ferry().args(["backup", "--json", "--host", "one"]).arg(&src).output().unwrap().stdout);
    a.backup(&src, &["--host", "two"]);
    let one = one["snapshot_id"].as_str().unwrap();

    let b = Env::new();
    let lines = copy(&b, &a.repo, &["--host", "one"]);
    let c = copied(&lines);
    assert_eq!(c.len(), 1, "the filter selects one snapshot: {lines:?}");
    assert_eq!(c[0]["source_id"], one);
    let copied_as = c[0]["destination_id"].as_str().unwrap().to_string();
    // Named by id prefix: the destination has it.
    let lines = copy(&b, &a.repo, &[&one[..8]]);
    let c = copied(&lines);
    assert!(c.len() == 1 && c[0]["skipped"] == true && c[0]["existing_id"] == copied_as.as_str(), "{lines:?}");
    // Everything: the first is skipped, the other copied.
    let lines = copy(&b, &a.repo, &[]);
    let s = summary(&lines);
    assert_eq!((num(s, "snapshots_copied"), num(s, "snapshots_skipped")), (1, 1), "{s}");
    assert_eq!(snapshots(&b).len(), 2);
    // An id the source does not have is an error naming the source.
    let mut cmd = b.ferry();
    cmd.args(["copy", "--from-repo"]).arg(&a.repo).arg("deadbeef").env("FERRY_FROM_PASSWORD", PASSWORD);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no snapshot deadbeef") && stderr(&out).contains("source repository"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_source_password_is_named_and_exits_12() {
    if crate::common::under_qemu() {
        return;
    }
    let a = Env::new();
    let b = Env::new();
    let out =
        b.ferry().args(["copy", "--from-repo"]).arg(&a.repo).env("FERRY_FROM_PASSWORD", "wrong").output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("source repository") && err.contains(a.repo.to_str().unwrap()), "{err}");
    // From a file too, and for init: no repository is created.
    let pw = a.path("pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    let c = Env::empty();
    let mut cmd = c.ferry();
    cmd.args(["init", "--kdf-memory", "64", "--kdf-iterations", "1", "--copy-chunker-params-from"]).arg(&a.repo);
    let out = cmd.arg("--from-password-file").arg(&pw).output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    assert!(stderr(&out).contains(a.repo.to_str().unwrap()), "{}", stderr(&out));
    assert!(!c.repo.join("config").exists(), "a repository was created");
    // No password at all for the source, no terminal: an error saying what to set.
    let out = b.ferry().args(["copy", "--from-repo"]).arg(&a.repo).write_stdin("").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("FERRY_FROM_PASSWORD"), "{}", stderr(&out));
}
