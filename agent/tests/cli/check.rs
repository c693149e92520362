//! `ferry check` against real damage done behind its back: packs and index objects deleted,
//! packs truncated or with a flipped byte, snapshot objects corrupted. Each test checks the
//! exit code (13 for damage, 0 otherwise), the finding's kind and object, and that the
//! snapshots a finding names are exactly the ones that no longer restore.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{Env, compare_trees, json_lines, num, random_bytes, stderr, summary_of, write};

/// Every object file under `repo/<dir>` (recursively), sorted.
pub(crate) fn objects(repo: &Path, dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

/// `ferry check --json [extra]` without a cache: (exit code, damage lines, summary).
pub(crate) fn check(env: &Env, extra: &[&str]) -> (i32, Vec<Value>, Value) {
    let out = env.ferry().args(["--no-cache", "check", "--json"]).args(extra).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 13, "check failed to run: {}", stderr(&out));
    let damage = json_lines(&out.stdout).into_iter().filter(|l| l["message_type"] == "damage").collect();
    (code, damage, summary_of(&out.stdout))
}

pub(crate) fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Three snapshots sharing data: A of `one`, B of `two` (no data in common with A), C of `one`
/// with a file added. Returns (snapshot id, source) in that order.
pub(crate) fn three_snapshots(env: &Env) -> Vec<(String, PathBuf)> {
    let (one, two) = (env.path("one"), env.path("two"));
    write(&one.join("a.bin"), &random_bytes("check-a", 700 << 10));
    write(&one.join("small.txt"), b"small\n");
    write(&two.join("b.bin"), &random_bytes("check-b", 500 << 10));
    let a = env.backup(&one, &[])["snapshot_id"].as_str().unwrap().to_string();
    let b = env.backup(&two, &[])["snapshot_id"].as_str().unwrap().to_string();
    let kept = env.path("one-at-a");
    copy_dir(&one, &kept);
    write(&one.join("c.bin"), &random_bytes("check-c", 600 << 10));
    let c = env.backup(&one, &[])["snapshot_id"].as_str().unwrap().to_string();
    vec![(a, kept), (b, two), (c, one)]
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

/// Does the snapshot restore exactly (exit 0, same tree)?
pub(crate) fn restores(env: &Env, snap: &str, src: &Path, n: usize) -> bool {
    let target = env.path(&format!("restored-{n}-{}", &snap[..8]));
    let out = env.ferry().args(["--no-cache", "restore", snap, "--target"]).arg(&target).output().unwrap();
    out.status.code() == Some(0) && compare_trees(src, &target).is_empty()
}

#[test]
fn a_whole_repository_passes_and_read_data_reads_every_pack_once() {
    let env = Env::new();
    three_snapshots(&env);
    let (code, damage, s) = check(&env, &[]);
    assert_eq!((code, damage.len()), (0, 0), "{s}");
    let packs = objects(&env.repo, "data");
    assert_eq!(num(&s, "packs") as usize, packs.len(), "{s}");
    assert_eq!((num(&s, "snapshots"), num(&s, "packs_read"), num(&s, "unused_blobs")), (3, 0, 0), "{s}");

    let (code, _, s) = check(&env, &["--read-data"]);
    assert_eq!(code, 0, "{s}");
    let on_disk: u64 = packs.iter().map(|p| p.metadata().unwrap().len()).sum();
    assert_eq!((num(&s, "packs_read") as usize, num(&s, "bytes_read")), (packs.len(), on_disk), "{s}");

    // 1/3, 2/3 and 3/3 read every pack exactly once between them.
    let mut read = 0;
    for part in ["1/3", "2/3", "3/3"] {
        let (code, _, s) = check(&env, &["--read-data-subset", part]);
        assert_eq!(code, 0, "{s}");
        read += num(&s, "packs_read") as usize;
    }
    assert_eq!(read, packs.len());
    let (_, _, s) = check(&env, &["--read-data-subset", "100%"]);
    assert_eq!(num(&s, "packs_read") as usize, packs.len(), "{s}");

    for bad in ["0/3", "4/3", "1/0", "x", "0%", "101%"] {
        let out = env.ferry().args(["check", "--read-data-subset", bad]).output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{bad} must be refused");
        assert!(stderr(&out).contains(bad), "the message names {bad}: {}", stderr(&out));
    }
}

#[test]
fn each_deleted_pack_is_named_with_exactly_the_snapshots_it_breaks() {
    let env = Env::new();
    let snaps = three_snapshots(&env);
    let packs = objects(&env.repo, "data");
    assert!(packs.len() >= 4, "data and tree packs of three backups: {packs:?}");
    let mut broke_some = 0;
    for (n, pack) in packs.iter().enumerate() {
        let aside = env.path("aside");
        std::fs::rename(pack, &aside).unwrap();
        let (code, damage, s) = check(&env, &[]);
        assert_eq!(code, 13, "pack {} deleted: {s}", name(pack));
        assert_eq!(damage.len(), 1, "one finding for one pack: {damage:?}");
        let d = &damage[0];
        assert_eq!(
            (d["kind"].as_str(), d["object"].as_str()),
            (Some("missing_pack"), Some(&*format!("pack {}", name(pack))))
        );
        let broken = strings(&d["snapshots"]);
        for (snap, src) in &snaps {
            let ok = restores(&env, snap, src, n);
            assert_eq!(
                !ok,
                broken.contains(snap),
                "pack {}: snapshot {snap} restores: {ok}; named: {broken:?}",
                name(pack)
            );
        }
        broke_some += usize::from(!broken.is_empty());
        std::fs::rename(&aside, pack).unwrap();
    }
    assert_eq!(broke_some, packs.len(), "every pack holds something a snapshot uses");
    assert_eq!(check(&env, &[]).0, 0, "whole again once the packs are back");
}

#[test]
fn a_flipped_byte_is_found_by_read_data_and_a_truncated_pack_without_it() {
    let env = Env::new();
    let snaps = three_snapshots(&env);
    let biggest = objects(&env.repo, "data").into_iter().max_by_key(|p| p.metadata().unwrap().len()).unwrap();
    let original = std::fs::read(&biggest).unwrap();

    let mut flipped = original.clone();
    flipped[1000] ^= 0x10;
    std::fs::write(&biggest, &flipped).unwrap();
    assert_eq!(check(&env, &[]).0, 0, "the structure is intact: only reading the data can tell");
    let (code, damage, _) = check(&env, &["--read-data"]);
    assert_eq!(code, 13);
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0]["kind"], "pack_data");
    assert_eq!(damage[0]["object"], format!("pack {}", name(&biggest)));
    let broken = strings(&damage[0]["snapshots"]);
    assert!(!broken.is_empty(), "{damage:?}");
    for (n, (snap, src)) in snaps.iter().enumerate() {
        assert_eq!(!restores(&env, snap, src, n), broken.contains(snap), "snapshot {snap}, named: {broken:?}");
    }

    std::fs::write(&biggest, &original[..original.len() - 7]).unwrap();
    let (code, damage, _) = check(&env, &[]);
    assert_eq!(code, 13);
    assert_eq!((damage.len(), damage[0]["kind"].as_str()), (1, Some("pack_size")), "{damage:?}");
    std::fs::write(&biggest, &original).unwrap();
    assert_eq!(check(&env, &["--read-data"]).0, 0);
}

#[test]
fn a_deleted_index_object_leaves_blobs_in_no_index_and_its_packs_unreferenced() {
    let env = Env::new();
    let snaps = three_snapshots(&env);
    // Any index object: each backup wrote its own, listing packs only it uses.
    let victim = objects(&env.repo, "index").remove(0);
    let out = env.ferry().args(["cat", "--json", "index", &name(&victim)]).output().unwrap();
    let listed: BTreeSet<String> = serde_json::from_slice::<Value>(&out.stdout).unwrap()["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    std::fs::remove_file(&victim).unwrap();

    let out = env.ferry().args(["--no-cache", "check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    let lines = json_lines(&out.stdout);
    let damage: Vec<&Value> = lines.iter().filter(|l| l["message_type"] == "damage").collect();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!((damage[0]["kind"].as_str(), damage[0]["object"].as_str()), (Some("missing_blobs"), Some("blobs")));
    let unreferenced: BTreeSet<String> = lines
        .iter()
        .filter(|l| l["message_type"] == "unreferenced_pack")
        .map(|l| l["pack"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unreferenced, listed, "the packs the deleted index object listed, and no others");
    let broken = strings(&damage[0]["snapshots"]);
    assert!(!broken.is_empty());
    for (n, (snap, src)) in snaps.iter().enumerate() {
        assert_eq!(!restores(&env, snap, src, n), broken.contains(snap), "snapshot {snap}, named: {broken:?}");
    }
}

#[test]
fn unreferenced_packs_alone_are_not_damage_and_a_bad_snapshot_object_is() {
    let env = Env::new();
    let one = env.path("one");
    write(&one.join("a"), &random_bytes("unref-a", 200 << 10));
    env.backup(&one, &[]);
    let index_before: BTreeSet<PathBuf> = objects(&env.repo, "index").into_iter().collect();
    let packs_before: BTreeSet<PathBuf> = objects(&env.repo, "data").into_iter().collect();
    // A second backup of new data whose snapshot and index objects vanish: what an interrupted
    // backup leaves (packs that no index lists).
    let two = env.path("two");
    write(&two.join("b"), &random_bytes("unref-b", 300 << 10));
    let b = env.backup(&two, &[])["snapshot_id"].as_str().unwrap().to_string();
    std::fs::remove_file(env.repo.join("snapshots").join(&b)).unwrap();
    for i in objects(&env.repo, "index") {
        if !index_before.contains(&i) {
            std::fs::remove_file(i).unwrap();
        }
    }
    let new_packs: BTreeSet<String> =
        objects(&env.repo, "data").into_iter().filter(|p| !packs_before.contains(p)).map(|p| name(&p)).collect();
    assert!(!new_packs.is_empty());
    let out = env.ferry().args(["--no-cache", "check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unreferenced: BTreeSet<String> = json_lines(&out.stdout)
        .iter()
        .filter(|l| l["message_type"] == "unreferenced_pack")
        .map(|l| l["pack"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(unreferenced, new_packs);

    // A snapshot object with a flipped byte: damage naming it.
    let snap = objects(&env.repo, "snapshots").remove(0);
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&snap, bytes).unwrap();
    let (code, damage, _) = check(&env, &[]);
    assert_eq!(code, 13);
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(
        (damage[0]["kind"].as_str(), damage[0]["object"].as_str()),
        (Some("snapshot"), Some(&*format!("snapshot {}", name(&snap))))
    );
    // Plain output names it too, on stderr.
    let out = env.ferry().args(["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(13));
    assert!(stderr(&out).contains(&format!("snapshot {}", name(&snap))), "{}", stderr(&out));
}
