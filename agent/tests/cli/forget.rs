//! `ferry forget` on a real repository: a policy removes exactly the snapshots it does not keep,
//! group by group; ids remove exactly those; `--dry-run`, a missing policy and a refused policy
//! remove nothing; what is kept still restores. Backups here run within seconds of each other,
//! so these tests rely on keep-last, keep-tag and ids: the calendar rules are the engine's unit
//! tests (`ferry_engine::forget`).

use std::path::Path;

use serde_json::Value;

use crate::common::{Env, compare_trees, json_lines, stderr, write};

/// `ferry backup SRC [extra]`; the new snapshot's id.
fn backup(env: &Env, src: &Path, extra: &[&str]) -> String {
    env.backup(src, extra)["snapshot_id"].as_str().expect("snapshot_id").to_string()
}

/// Every snapshot id in the repository, oldest first.
fn snapshot_ids(env: &Env) -> Vec<String> {
    let out = env.ferry().args(["snapshots", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

fn forget(env: &Env, args: &[&str]) -> std::process::Output {
    env.ferry().arg("forget").args(args).output().unwrap()
}

/// The `forget_group` lines and the `forget_summary` line of a `--json` run.
fn plan(out: &std::process::Output) -> (Vec<Value>, Value) {
    let lines = json_lines(&out.stdout);
    let groups = lines.iter().filter(|l| l["message_type"] == "forget_group").cloned().collect();
    let summary = lines.iter().find(|l| l["message_type"] == "forget_summary").expect("a forget_summary line").clone();
    (groups, summary)
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

/// A source whose `gen.txt` says which backup it is.
fn generation(env: &Env, src: &Path, n: u32) -> String {
    write(&src.join("gen.txt"), format!("generation {n}\n").as_bytes());
    backup(env, src, &[])
}

#[test]
fn keep_last_removes_exactly_the_older_snapshots_and_the_kept_ones_restore() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("data/a.bin"), &crate::common::random_bytes("forget-a", 200 << 10));
    let s: Vec<String> = (1..=4).map(|n| generation(&env, &src, n)).collect();
    assert_eq!(snapshot_ids(&env), s);

    // The plan, without removing anything.
    let out = forget(&env, &["--json", "--keep-last", "2", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (groups, summary) = plan(&out);
    assert_eq!(groups.len(), 1, "one host and one path: one group: {groups:?}");
    let g = &groups[0];
    assert_eq!(ids_of(&g["keep"]), [s[3].clone(), s[2].clone()]);
    assert_eq!(ids_of(&g["remove"]), [s[1].clone(), s[0].clone()]);
    assert_eq!(g["keep"][0]["reasons"], serde_json::json!(["last snapshot"]));
    assert_eq!(g["key"]["paths"], serde_json::json!([src.to_str().unwrap()]), "{g}");
    assert_eq!((summary["kept"].as_u64(), summary["removed"].as_u64()), (Some(2), Some(2)));
    assert_eq!(summary["dry_run"], true);
    assert_eq!(snapshot_ids(&env), s, "--dry-run removed something");

    // For real, in plain text.
    let out = forget(&env, &["--keep-last", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last snapshot") && text.contains("removed 2 snapshots, kept 2"), "{text}");
    assert!(text.contains("until `ferry prune`"), "the output says the data stays: {text}");
    assert_eq!(snapshot_ids(&env), s[2..], "exactly the two oldest are removed");

    // Both kept snapshots restore, the older one with its own generation of gen.txt.
    let target = env.path("restored-4");
    let out = env.restore(&s[3], &target, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(compare_trees(&src, &target), Vec::<String>::new());
    let target = env.path("restored-3");
    let out = env.restore(&s[2], &target, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(target.join("gen.txt")).unwrap(), "generation 3\n");
    assert_eq!(std::fs::read(target.join("data/a.bin")).unwrap(), std::fs::read(src.join("data/a.bin")).unwrap());

    // Again: nothing more to remove.
    let out = forget(&env, &["--json", "--keep-last", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(plan(&out).1["removed"], 0);
    assert_eq!(snapshot_ids(&env), s[2..]);
}

#[test]
fn forget_by_id_removes_exactly_those() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    let s: Vec<String> = (1..=4).map(|n| generation(&env, &src, n)).collect();

    // A unique prefix, and the same snapshot by its full id: removed once.
    let out = forget(&env, &["--json", &s[1][..8], &s[1]]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (groups, summary) = plan(&out);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["key"], Value::Null, "snapshots named by id form no group");
    assert_eq!(ids_of(&groups[0]["remove"]), [s[1].clone()]);
    assert_eq!((summary["kept"].as_u64(), summary["removed"].as_u64()), (Some(0), Some(1)));
    assert_eq!(snapshot_ids(&env), [s[0].clone(), s[2].clone(), s[3].clone()]);

    // `latest` is the newest: removing it on purpose leaves no rollback warning behind.
    let out = forget(&env, &["latest", &s[0][..10]]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&env), [s[2].clone()]);
    let out = env.ferry().arg("snapshots").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("no longer in the repository"), "a removal warned as a rollback: {}", stderr(&out));

    // An id that is not there fails before anything is removed.
    let out = forget(&env, &[&s[2][..8], "0000dead"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no snapshot 0000dead"), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&env), [s[2].clone()]);

    // Ids and a policy together are a usage error.
    let out = forget(&env, &[&s[2][..8], "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&env), [s[2].clone()]);
}

#[test]
fn a_tag_filter_limits_what_is_considered() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f.txt"), b"same source, same host\n");
    let a1 = backup(&env, &src, &["--tag", "backup=a"]);
    let b1 = backup(&env, &src, &["--tag", "backup=b"]);
    let a2 = backup(&env, &src, &["--tag", "backup=a"]);
    let b2 = backup(&env, &src, &["--tag", "backup=b"]);

    let out = forget(&env, &["--json", "--tag", "backup=a", "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (groups, summary) = plan(&out);
    assert_eq!(ids_of(&groups[0]["keep"]), [a2.as_str()]);
    assert_eq!(ids_of(&groups[0]["remove"]), [a1.as_str()]);
    assert_eq!((summary["kept"].as_u64(), summary["removed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(snapshot_ids(&env), [b1, a2, b2], "only backup=a snapshots were considered");
}

#[test]
fn grouped_by_pvc_each_volume_keeps_its_own() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let (src_a, src_b, src_c) = (env.path("node1/pod-a/db"), env.path("node2/pod-b/db"), env.path("node1/pod-c/cache"));
    for (dir, text) in [(&src_a, "db on node 1"), (&src_b, "db on node 2"), (&src_c, "cache")] {
        write(&dir.join("data.txt"), text.as_bytes());
    }
    let db1 = backup(&env, &src_a, &["--host", "n1", "--tag", "namespace=shop", "--tag", "pvc=db"]);
    let cache1 = backup(&env, &src_c, &["--host", "n1", "--tag", "namespace=shop", "--tag", "pvc=cache"]);
    // The db volume moved to another node and another pod.
    let db2 = backup(&env, &src_b, &["--host", "n2", "--tag", "namespace=shop", "--tag", "pvc=db"]);
    let cache2 = backup(&env, &src_c, &["--host", "n1", "--tag", "namespace=shop", "--tag", "pvc=cache"]);

    // By host and paths (the default) the two db snapshots are two groups: only cache1 goes.
    let out = forget(&env, &["--json", "--keep-last", "1", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (groups, summary) = plan(&out);
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(summary["removed"], 1);
    assert!(groups.iter().any(|g| ids_of(&g["remove"]) == [cache1.clone()]), "{groups:?}");

    // By volume: one group per namespace/pvc.
    let out = forget(&env, &["--json", "--keep-last", "1", "--group-by", "tag:namespace,tag:pvc"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (groups, summary) = plan(&out);
    let got: Vec<(Value, Vec<String>, Vec<String>)> =
        groups.iter().map(|g| (g["key"]["tag"].clone(), ids_of(&g["keep"]), ids_of(&g["remove"]))).collect();
    assert_eq!(
        got,
        vec![
            (serde_json::json!({"namespace": "shop", "pvc": "cache"}), vec![cache2.clone()], vec![cache1]),
            (serde_json::json!({"namespace": "shop", "pvc": "db"}), vec![db2.clone()], vec![db1]),
        ]
    );
    assert_eq!(groups[0]["key"]["host"], Value::Null, "not grouped by host");
    assert_eq!((summary["kept"].as_u64(), summary["removed"].as_u64()), (Some(2), Some(2)));
    assert_eq!(snapshot_ids(&env), [db2.clone(), cache2]);

    // The db volume's snapshot from the other node restores.
    let target = env.path("restored-db");
    let out = env.restore(&db2, &target, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(target.join("data.txt")).unwrap(), "db on node 2");
}

#[test]
fn keep_tag_keeps_pinned_snapshots_and_a_policy_keeping_none_of_a_group_is_refused() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f.txt"), b"x\n");
    let s1 = backup(&env, &src, &["--tag", "pin=yes"]);
    let s2 = backup(&env, &src, &[]);
    let s3 = backup(&env, &src, &[]);

    // Nothing carries `nope`: the group would lose every snapshot; nothing is removed.
    let out = forget(&env, &["--keep-tag", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("refusing to remove every snapshot"), "{}", stderr(&out));
    assert_eq!(snapshot_ids(&env), [s1.clone(), s2.clone(), s3.clone()]);

    let out = forget(&env, &["--json", "--keep-last", "1", "--keep-tag", "pin"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (groups, _) = plan(&out);
    let keep = &groups[0]["keep"];
    assert_eq!(ids_of(keep), [s3.clone(), s1.clone()]);
    assert_eq!(keep[0]["reasons"], serde_json::json!(["last snapshot"]));
    assert_eq!(keep[1]["reasons"], serde_json::json!(["has tag pin"]));
    assert_eq!(snapshot_ids(&env), [s1, s3]);
}

#[test]
fn without_a_policy_nothing_is_removed() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f.txt"), b"x\n");
    let s = [backup(&env, &src, &[]), backup(&env, &src, &[])];

    let out = forget(&env, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no policy was specified, no snapshots will be removed") && err.contains("--keep-last"),
        "{err}"
    );
    let out = forget(&env, &["--json", "--tag", "nothing=matches"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (groups, summary) = plan(&out);
    assert!(groups.is_empty());
    assert_eq!((summary["kept"].as_u64(), summary["removed"].as_u64()), (Some(0), Some(0)));
    assert_eq!(snapshot_ids(&env), s);
}

#[test]
fn bad_policy_values_are_usage_errors() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("f.txt"), b"x\n");
    let s = [backup(&env, &src, &[]), backup(&env, &src, &[])];
    for (args, says) in [
        (&["--keep-last", "0"][..], "at least 1"),
        (&["--keep-daily", "-2"], "not a count"),
        (&["--keep-within", "1y6m"], "ambiguous"),
        (&["--keep-within", "0d"], "more than zero"),
        (&["--group-by", "hostname"], "unknown group-by"),
        (&["--keep-tag", "=x"], "no key"),
    ] {
        let out = forget(&env, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // -1 (and `unlimited`) keep every one.
    for n in ["-1", "unlimited"] {
        let out = forget(&env, &["--json", "--keep-last", n]);
        assert_eq!(out.status.code(), Some(0), "{n}: {}", stderr(&out));
        assert_eq!(plan(&out).1["removed"], 0, "{n}");
    }
    assert_eq!(snapshot_ids(&env), s);
}
