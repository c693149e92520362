//! `ferry repair index` and `ferry repair snapshots` after objects were deleted behind ferry's
//! back: `check` names the damage, the repairs bring the repository back to a state `check`
//! passes, and a backup after `repair index` uploads again what was lost instead of
//! referencing it.

use crate::check::{check, name, objects, restores, strings, three_snapshots};
use crate::common::{Env, json_lines, stderr, summary_of};

fn run(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let out = env.ferry().arg("--json").args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    json_lines(&out.stdout)
}

#[test]
fn a_lost_pack_is_repaired_by_index_then_snapshots_and_the_next_backup_uploads_again() {
    let env = Env::new();
    let snaps = three_snapshots(&env);
    // A pack whose loss breaks some snapshots but not all.
    let mut chosen = None;
    for pack in objects(&env.repo, "data") {
        let aside = env.path("aside");
        std::fs::rename(&pack, &aside).unwrap();
        let (_, damage, _) = check(&env, &[]);
        let broken = strings(&damage[0]["snapshots"]);
        std::fs::rename(&aside, &pack).unwrap();
        if !broken.is_empty() && broken.len() < snaps.len() {
            chosen = Some((pack, broken));
            break;
        }
    }
    let (pack, broken) = chosen.expect("some pack breaks only part of the snapshots");
    std::fs::remove_file(&pack).unwrap();

    let rep = &run(&env, &["repair", "index"])[0];
    assert_eq!(rep["message_type"], "index_repair");
    assert_eq!(rep["index_written"], 1, "{rep}");
    let (code, damage, _) = check(&env, &[]);
    assert_eq!(code, 13);
    assert_eq!((damage.len(), damage[0]["kind"].as_str()), (1, Some("missing_blobs")), "{damage:?}");
    assert_eq!(strings(&damage[0]["snapshots"]), broken, "the same snapshots are broken");

    // Dry run: names what it would drop, writes nothing.
    let before = objects(&env.repo, "snapshots");
    let dry = run(&env, &["repair", "snapshots", "--dry-run"]);
    assert_eq!(dry.iter().filter(|l| l["message_type"] == "snapshot_repair").count(), broken.len(), "{dry:?}");
    assert_eq!(objects(&env.repo, "snapshots"), before);

    let lines = run(&env, &["repair", "snapshots", "--forget"]);
    let repaired: Vec<&serde_json::Value> = lines.iter().filter(|l| l["message_type"] == "snapshot_repair").collect();
    assert_eq!(repaired.len(), broken.len(), "{lines:?}");
    for r in &repaired {
        assert!(broken.contains(r["snapshot"].as_str().unwrap()) && r["forgotten"] == true, "{r}");
        assert!(!r["dropped"].as_array().unwrap().is_empty(), "{r}");
        // A snapshot whose root tree was in the lost pack has nothing left: no copy.
        let Some(new) = r["repaired"].as_str() else {
            assert!(r["dropped"][0].as_str().unwrap().starts_with("/ (the snapshot's root tree is gone"), "{r}");
            continue;
        };
        let out = env.ferry().args(["cat", "--json", "snapshot", new]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tagged =
            v["tags"].as_array().unwrap().iter().any(|t| t["key"] == "repaired-from" && t["value"] == r["snapshot"]);
        assert!(tagged, "{v}");
    }
    let (code, damage, _) = check(&env, &["--read-data"]);
    assert_eq!(code, 0, "whole after the repairs: {damage:?}");
    // The snapshots the lost pack did not touch are untouched and restore exactly.
    for (n, (snap, src)) in snaps.iter().enumerate() {
        if !broken.contains(snap) {
            assert!(restores(&env, snap, src, 200 + n));
        } else {
            assert!(!env.repo.join("snapshots").join(snap).exists(), "--forget removed {snap}");
        }
    }
    // A new backup of each source: it uploads again what was lost (the index no longer lists
    // it) and restores exactly.
    let mut fresh = Vec::new();
    for (n, (_, src)) in snaps.iter().enumerate() {
        let out = env.ferry().args(["backup", "--json"]).arg(src).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let id = summary_of(&out.stdout)["snapshot_id"].as_str().unwrap().to_string();
        assert!(restores(&env, &id, src, 100 + n), "the backup after the repair is whole");
        fresh.push(id);
    }
    assert_eq!(fresh.len(), snaps.len());
    assert_eq!(check(&env, &["--read-data"]).0, 0, "the new backups reference nothing lost");

    let _ = name(&pack);
}

#[test]
fn a_lost_index_object_is_rebuilt_from_the_packs() {
    let env = Env::new();
    let snaps = three_snapshots(&env);
    std::fs::remove_file(objects(&env.repo, "index").remove(0)).unwrap();
    assert_eq!(check(&env, &[]).0, 13);
    let dry = &run(&env, &["repair", "index", "--dry-run"])[0];
    assert_eq!((dry["dry_run"].as_bool(), dry["index_written"].as_u64()), (Some(true), Some(0)), "{dry}");
    assert_eq!(check(&env, &[]).0, 13, "a dry run repairs nothing");
    let rep = &run(&env, &["repair", "index"])[0];
    assert_eq!(rep["packs"].as_u64().unwrap() as usize, objects(&env.repo, "data").len(), "{rep}");
    let (code, damage, _) = check(&env, &["--read-data"]);
    assert_eq!(code, 0, "{damage:?}");
    for (n, (snap, src)) in snaps.iter().enumerate() {
        assert!(restores(&env, snap, src, n), "{snap}");
    }
    // The superseded index objects are garbage a prune removes.
    let lines = run(&env, &["prune", "--sweep-now"]);
    let swept = lines.iter().find(|l| l["message_type"] == "swept").unwrap();
    assert!(swept["index_deleted"].as_u64().unwrap() >= 1, "{swept}");
    assert_eq!(check(&env, &["--read-data"]).0, 0);
    assert_eq!(objects(&env.repo, "index").len(), 1, "only the rebuilt index is left");
}
