//! The filesystem round trip against real object-storage servers on loopback (issue 4): moto
//! for S3 and Azurite for Azure Blob, started by `tests/servers.sh`. Skipped (with a message)
//! when their endpoints are not in the environment. No GCS server that object_store can talk to
//! exists in the registries this project can use, so GCS is covered by unit tests only.

use crate::common::tree::compare_trees;
use crate::common::{Env, stderr};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

fn round_trip(location: &str) {
    let env = Env::at(location);
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    crate::fidelity::build(&src);
    let s = env.backup(&src, &[]);
    assert_eq!(crate::common::num(&s, "errors"), 0, "{s}");
    let requests = &s["requests"];
    assert!(requests["put"].as_u64().unwrap() >= 3, "packs, index and snapshot were PUT: {requests}");
    let target = env.path("target");
    let out = env.restore("latest", &target, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "restore from {location}: {}", stderr(&out));
    let diffs = compare_trees(&src, &target);
    assert!(diffs.is_empty(), "restored tree from {location} differs:\n{}", diffs.join("\n"));
    // A second, unchanged backup costs no LIST beyond opening the repository and no pack PUT.
    let s2 = env.backup(&src, &[]);
    assert_eq!(crate::common::num(&s2, "data_blobs_added"), 0, "{s2}");
}

#[test]
fn filesystem_round_trip_on_s3() {
    if crate::common::under_qemu() {
        return;
    }
    let (Ok(endpoint), Ok(bucket)) = (std::env::var("FERRY_TEST_S3_ENDPOINT"), std::env::var("FERRY_TEST_S3_BUCKET"))
    else {
        eprintln!("skipped: FERRY_TEST_S3_ENDPOINT not set (tests/servers.sh start)");
        return;
    };
    round_trip(&format!("s3:{endpoint}/{bucket}/{}", unique("e2e")));
}

#[test]
fn filesystem_round_trip_on_azure() {
    if crate::common::under_qemu() {
        return;
    }
    let Ok(container) = std::env::var("FERRY_TEST_AZURE_CONTAINER") else {
        eprintln!("skipped: FERRY_TEST_AZURE_CONTAINER not set (tests/servers.sh start)");
        return;
    };
    round_trip(&format!("azure:{container}/{}", unique("e2e")));
}

#[test]
fn bad_credentials_and_missing_bucket_are_named_errors() {
    if crate::common::under_qemu() {
        return;
    }
    let Ok(endpoint) = std::env::var("FERRY_TEST_S3_ENDPOINT") else {
        eprintln!("skipped: FERRY_TEST_S3_ENDPOINT not set (tests/servers.sh start)");
        return;
    };
    let at = |loc: String| {
        let mut env = Env::empty();
        env.repo = loc.into();
        env
    };
    // A bucket that does not exist.
    let env = at(format!("s3:{endpoint}/no-such-bucket-{}/r", std::process::id()));
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));
    // No credentials at all: an error naming the settings, never a metadata-server lookup.
    let env = at(format!("s3:{endpoint}/ferry-test/x"));
    let out = env
        .ferry()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("AWS_ACCESS_KEY_ID"), "{}", stderr(&out));
    // An unreachable endpoint fails within a bounded time, naming the location.
    let t = std::time::Instant::now();
    let env = at("s3:http://127.0.0.1:9/ferry-test/x".into());
    let out = env.ferry().args(["snapshots"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("127.0.0.1:9"), "{}", stderr(&out));
    assert!(t.elapsed() < std::time::Duration::from_secs(180), "took {:?}", t.elapsed());
}
