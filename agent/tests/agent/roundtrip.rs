//! A filesystem volume and a block volume through the whole protocol: DataUpload accepted by
//! one agent, moved on the node where the mover pod runs, Completed with a self-describing
//! snapshot ID and everything it created removed; then a DataDownload restores it into a new
//! volume, which is handed to the target PVC.

use k8s_openapi::api::core::v1::PersistentVolume;

use ferry_daemon::types::{Phase, VolumeSnapshot, VolumeSnapshotContent};

use crate::common::compare_trees;
use crate::world::World;

/// Files of several shapes, with enough data for progress to move.
fn fill_tree(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("data/sub")).unwrap();
    std::fs::write(dir.join("data/hello.txt"), b"hello from the volume\n").unwrap();
    let mut big = vec![0u8; 3 << 20];
    blake3::Hasher::new_keyed(&[7; 32]).finalize_xof().fill(&mut big);
    std::fs::write(dir.join("data/sub/big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("data/link")).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_volume_round_trips_through_data_upload_and_data_download() {
    let Some(mut w) = World::new(&["n1", "n2"]).await else { return };
    w.namespace("app").await;
    w.snapshot("app", "data", "snap-1", false).await;
    w.data_upload("b1-abcde", "app", "data", "snap-1", "ferry").await;

    let du = w.upload_phase("b1-abcde", Phase::Accepted, 60).await;
    let st = du.status.clone().unwrap();
    let accepted_by = st.accepted_by_node.clone().unwrap();
    assert!(["n1", "n2"].contains(&accepted_by.as_str()), "{st:?}");
    assert!(st.accepted_timestamp.is_some());
    // The source snapshot was moved into the Velero namespace.
    let pv = w.serve_mover("b1-abcde", "n2", false, fill_tree).await;
    let source = w.mount_of(&pv);
    let du = w.upload_phase("b1-abcde", Phase::Completed, 120).await;
    let st = du.status.clone().unwrap();
    assert_eq!(st.node.as_deref(), Some("n2"), "the data moves where the pod runs: {st:?}");
    assert_eq!(st.node_os.as_deref(), Some("linux"));
    let snapshot_id = st.snapshot_id.clone().unwrap();
    assert!(snapshot_id.starts_with("ferry:"), "{snapshot_id}");
    assert!(st.incremental_bytes.unwrap() > 0, "{st:?}");
    assert!(st.progress.as_ref().unwrap().bytes_done.unwrap() >= 3 << 20, "{st:?}");
    assert!(st.start_timestamp.is_some() && st.completion_timestamp.is_some());
    assert!(st.path.as_deref().unwrap().ends_with("/mount"), "{st:?}");

    // Everything exposed goes (Completed is written first, then the cleanup runs), and so does
    // the source snapshot (Velero's data mover disposes of it).
    w.exposed_gone("b1-abcde").await;
    assert!(w.get_in::<VolumeSnapshot>("app", "snap-1").await.is_none(), "source snapshot left");
    assert!(w.get_cluster::<VolumeSnapshotContent>("snapcontent-app-snap-1").await.is_none());

    // The moving agent counts it; both are healthy and ready.
    let (code, metrics) = w.agent_http("n2", "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("ferry_agent_ended_total{direction=\"upload\",phase=\"Completed\"} 1"), "{metrics}");
    assert!(metrics.contains("ferry_agent_storage_requests_total{op=\"put\"}"), "{metrics}");
    for node in ["n1", "n2"] {
        assert_eq!(w.agent_http(node, "/healthz").0, 200);
        assert_eq!(w.agent_http(node, "/readyz").0, 200);
    }
    assert_eq!(w.agent_http("n1", "/nope").0, 404);

    // Each phase change was published as an Event on the DataUpload.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(w.client.clone(), "velero");
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("b1-abcde"))
        .filter_map(|e| e.reason)
        .collect();
    for phase in ["Accepted", "Prepared", "InProgress", "Completed"] {
        assert!(reasons.iter().any(|r| r == phase), "no {phase} event: {reasons:?}");
    }

    // The repository has the snapshot, tagged with the volume's identity.
    let out = w.ferry(&["snapshots", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for tag in ["namespace=app", "pvc=data", "backup=b1", "node=n2"] {
        assert!(text.contains(tag), "tag {tag} missing: {text}");
    }

    // Restore into a new volume for app2/data.
    w.namespace("app2").await;
    w.data_download("r1-fghij", "app2", "data", &snapshot_id, false).await;
    w.download_phase("r1-fghij", Phase::Accepted, 60).await;
    let rpv = w.serve_mover("r1-fghij", "n1", false, |_| {}).await;
    let target = w.mount_of(&rpv);
    // Not Completed before the PV controller bound the target claim to the restored volume.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    w.bind_restored("app2", "data", &rpv).await;
    assert_eq!(
        w.download("r1-fghij").await.status.unwrap().phase,
        Some(Phase::InProgress),
        "completed before the claim bound"
    );
    let dd = w.download_phase("r1-fghij", Phase::Completed, 120).await;
    let st = dd.status.unwrap();
    assert_eq!(st.node.as_deref(), Some("n1"));
    let diffs = compare_trees(&source.join("data"), &target.join("data"));
    assert!(diffs.is_empty(), "restored volume differs:\n{}", diffs.join("\n"));
    // The PV now belongs to the target claim, found by Velero's selector label.
    let p: PersistentVolume = w.get_cluster(&rpv).await.unwrap();
    let spec = p.spec.unwrap();
    let claim = spec.claim_ref.unwrap();
    assert_eq!((claim.namespace.as_deref(), claim.name.as_deref()), (Some("app2"), Some("data")));
    assert!(claim.uid.is_none(), "the PV controller binds by name; a uid would pin the deleted claim");
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"), "reclaim policy given back");
    assert_eq!(
        w.pv_labels(&rpv).await.get("velero.io/dynamic-pv-restore").map(String::as_str),
        Some("app2.data.x1y2z")
    );
    w.exposed_gone("r1-fghij").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_volume_round_trips_byte_for_byte() {
    let Some(mut w) = World::new(&["n1"]).await else { return };
    w.namespace("vm").await;
    w.snapshot("vm", "disk", "snap-d", true).await;
    w.data_upload("b2-blk01", "vm", "disk", "snap-d", "ferry").await;
    w.upload_phase("b2-blk01", Phase::Accepted, 60).await;
    let mut written = vec![0u8; 5 << 20];
    blake3::Hasher::new_keyed(&[9; 32]).finalize_xof().fill(&mut written);
    let data = written.clone();
    w.serve_mover("b2-blk01", "n1", true, move |dev| {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    })
    .await;
    let du = w.upload_phase("b2-blk01", Phase::Completed, 120).await;
    let snapshot_id = du.status.unwrap().snapshot_id.unwrap();

    w.namespace("vm2").await;
    w.data_download("r2-blk01", "vm2", "disk", &snapshot_id, true).await;
    w.download_phase("r2-blk01", Phase::Accepted, 60).await;
    let dev_path = std::sync::Arc::new(std::sync::Mutex::new(None));
    let d2 = dev_path.clone();
    let rpv = w.serve_mover("r2-blk01", "n1", true, move |dev| *d2.lock().unwrap() = Some(dev.to_path_buf())).await;
    w.bind_restored("vm2", "disk", &rpv).await;
    w.download_phase("r2-blk01", Phase::Completed, 120).await;
    let dev = dev_path.lock().unwrap().clone().unwrap();
    let restored = std::fs::read(&dev).unwrap();
    assert_eq!(restored.len(), 16 << 20);
    assert!(restored[..1 << 20].iter().all(|&b| b == 0));
    assert!(restored[1 << 20..(1 << 20) + written.len()] == written[..], "restored device differs");
    assert!(restored[(1 << 20) + written.len()..].iter().all(|&b| b == 0));
}
