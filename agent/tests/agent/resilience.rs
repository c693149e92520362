//! The agent under failures: `kill -9` in the middle of an upload (the restarted agent resumes
//! it and reuses what was uploaded), the API server restarting under a running job, and a
//! cancel while data moves. The location's S3 endpoint is a proxy that delays every PUT, so a
//! job is still running when the test acts.

use std::time::Duration;

use serde_json::json;

use ferry_daemon::types::Phase;

use crate::common::faultproxy::{Class, FaultProxy, Plan};
use crate::world::World;

/// A world whose location goes through a proxy delaying PUTs by `delay`, with a repository made
/// beforehand with 4 MiB packs (so a volume of a few packs has several uploads to interrupt).
async fn slow_world(nodes: &[&str], delay: Duration) -> Option<(World, FaultProxy)> {
    let server = std::env::var("FERRY_TEST_S3_ENDPOINT").ok()?;
    let upstream: std::net::SocketAddr = server.trim_start_matches("http://").parse().unwrap();
    // The proxy runs its own runtime: start it off this one.
    let proxy = std::thread::spawn(move || FaultProxy::start(upstream, Plan::slow_puts(delay))).join().unwrap();
    let w = World::with_endpoint(&[], Some(proxy.endpoint())).await?;
    let out = w.ferry(&["init", "--pack-size-mib", "4", "--kdf-memory", "64", "--kdf-iterations", "1"]);
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let mut w = w;
    for n in nodes {
        w.start_agent(n, &[]);
    }
    Some((w, proxy))
}

fn random_tree(dir: &std::path::Path, mib: usize) {
    let mut data = vec![0u8; mib << 20];
    blake3::Hasher::new_keyed(&[3; 32]).finalize_xof().fill(&mut data);
    std::fs::write(dir.join("random.bin"), &data).unwrap();
    std::fs::write(dir.join("small.txt"), b"small\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_upload_then_the_restarted_agent_resumes_without_uploading_again() {
    let Some((mut w, proxy)) = slow_world(&["n1"], Duration::from_millis(700)).await else { return };
    w.namespace("app").await;
    w.snapshot("app", "p", "s", false).await;
    w.data_upload("k9-1", "app", "p", "s", "ferry").await;
    w.upload_phase("k9-1", Phase::Accepted, 60).await;
    let before = proxy.stats().forwarded(Class::Put);
    w.serve_mover("k9-1", "n1", false, |d| random_tree(d, 24)).await;
    w.upload_phase("k9-1", Phase::InProgress, 60).await;
    // Two packs are stored: kill the agent with the rest still to upload.
    w.until("two packs uploaded", 60, || async { (proxy.stats().forwarded(Class::Put) >= before + 2).then_some(()) })
        .await;
    w.kill_agent("n1");
    let du = w.upload("k9-1").await;
    assert_eq!(du.status.as_ref().unwrap().phase, Some(Phase::InProgress), "killed mid-upload");
    w.start_agent("n1", &[]);
    let du = w.upload_phase("k9-1", Phase::Completed, 180).await;
    let st = du.status.unwrap();
    let resumed: u64 = st.data_mover_result.as_ref().unwrap()["ferry.dev/resumed-bytes"].parse().unwrap();
    assert!(resumed >= 4 << 20, "the packs uploaded before the kill were reused: {st:?}");
    // And the volume is whole in the repository.
    let out = w.ferry(&["check", "--read-data"]);
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_restarting_under_a_running_job_does_not_lose_it() {
    let Some((w, _proxy)) = slow_world(&["n1"], Duration::from_millis(400)).await else { return };
    let mut w = w;
    w.namespace("app").await;
    w.snapshot("app", "p", "s", false).await;
    w.data_upload("api-1", "app", "p", "s", "ferry").await;
    w.upload_phase("api-1", Phase::Accepted, 60).await;
    w.serve_mover("api-1", "n1", false, |d| random_tree(d, 16)).await;
    w.upload_phase("api-1", Phase::InProgress, 60).await;
    w.cluster.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.cluster.start_apiserver();
    let st = w.upload_phase("api-1", Phase::Completed, 180).await.status.unwrap();
    assert!(st.snapshot_id.unwrap().starts_with("ferry:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_data_moves_stops_the_job_and_stores_no_snapshot() {
    let Some((mut w, _proxy)) = slow_world(&["n1"], Duration::from_millis(700)).await else { return };
    w.namespace("app").await;
    w.snapshot("app", "p", "s", false).await;
    w.data_upload("cx-1", "app", "p", "s", "ferry").await;
    w.upload_phase("cx-1", Phase::Accepted, 60).await;
    w.serve_mover("cx-1", "n1", false, |d| random_tree(d, 24)).await;
    w.upload_phase("cx-1", Phase::InProgress, 60).await;
    w.patch_upload("cx-1", json!({"spec": {"cancel": true}})).await;
    let st = w.upload_phase("cx-1", Phase::Canceled, 60).await.status.unwrap();
    assert!(st.snapshot_id.is_none(), "{st:?}");
    let out = w.ferry(&["snapshots", "--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a canceled upload stores no snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_promptly_and_the_next_one_finishes_the_job() {
    let Some((mut w, _proxy)) = slow_world(&["n1"], Duration::from_millis(700)).await else { return };
    w.namespace("app").await;
    w.snapshot("app", "p", "s", false).await;
    w.data_upload("term-1", "app", "p", "s", "ferry").await;
    w.upload_phase("term-1", Phase::Accepted, 60).await;
    w.serve_mover("term-1", "n1", false, |d| random_tree(d, 16)).await;
    w.upload_phase("term-1", Phase::InProgress, 60).await;
    let t = std::time::Instant::now();
    let status = w.stop_agent("n1");
    assert!(status.success(), "SIGTERM exits 0: {status:?}\n{}", w.logs());
    assert!(t.elapsed() < Duration::from_secs(20), "stopped in {:?}, past a pod's grace period", t.elapsed());
    // The object is left for the next start, not failed or canceled.
    assert_eq!(w.upload("term-1").await.status.unwrap().phase, Some(Phase::InProgress));
    w.start_agent("n1", &[]);
    w.upload_phase("term-1", Phase::Completed, 180).await;
}
