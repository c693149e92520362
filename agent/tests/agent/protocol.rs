//! The protocol's edges against the real API server: agents racing for the same objects,
//! cancel in each non-terminal phase, other movers' objects left alone, and a location whose
//! credential Secret is missing.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::json;

use ferry_daemon::types::{Phase, VolumeSnapshot, VolumeSnapshotContent};

use crate::world::{NS, World};

fn small_tree(dir: &std::path::Path) {
    std::fs::write(dir.join("a.txt"), b"some data\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_race_and_each_upload_is_accepted_by_exactly_one() {
    let Some(w) = World::new(&["n1", "n2"]).await else { return };
    w.namespace("app").await;
    let names: Vec<String> = (0..6).map(|i| format!("race-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        w.snapshot("app", &format!("pvc-{i}"), &format!("snap-{i}"), false).await;
        w.data_upload(n, "app", &format!("pvc-{i}"), &format!("snap-{i}"), "ferry").await;
    }
    for n in &names {
        let du = w.upload_phase(n, Phase::Accepted, 60).await;
        let by = du.status.unwrap().accepted_by_node.unwrap();
        assert!(by == "n1" || by == "n2", "{n} accepted by {by}");
    }
    // Exactly one agent logged each accept: the other's exclusive patch got a 409. (The log
    // line follows the patch: a loaded machine may show the phase before the line is written,
    // so wait for every line, then count.)
    let count = |n: &str| {
        w.agents
            .iter()
            .map(|a| std::fs::read_to_string(&a.log).unwrap())
            .map(|l| {
                l.lines().filter(|line| line.contains("accepted") && line.contains(&format!("object={n} "))).count()
            })
            .sum::<usize>()
    };
    let t0 = std::time::Instant::now();
    while names.iter().any(|n| count(n) == 0) && t0.elapsed() < std::time::Duration::from_secs(30) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for n in &names {
        let accepted = count(n);
        assert_eq!(accepted, 1, "{n} accepted {accepted} times\n{}", w.logs());
    }
    // Velero cancels them all (its server restarted): every one ends Canceled, nothing left.
    for n in &names {
        w.patch_upload(n, json!({"spec": {"cancel": true}})).await;
    }
    for n in &names {
        w.upload_phase(n, Phase::Canceled, 60).await;
        w.exposed_gone(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_honoured_in_new_accepted_and_prepared() {
    let Some(w) = World::new(&["n1"]).await else { return };
    w.namespace("app").await;
    // New: canceled before any agent accepted it.
    w.snapshot("app", "p0", "s0", false).await;
    let mut du = serde_json::to_value(w.data_upload("c-new", "app", "p0", "s0", "velero").await).unwrap();
    // (created for another mover first so no agent takes it, then handed to ferry canceled)
    du = json!({"spec": {"datamover": "ferry", "cancel": true}, "metadata": {"resourceVersion": du["metadata"]["resourceVersion"]}});
    w.patch_upload("c-new", du).await;
    let st = w.upload_phase("c-new", Phase::Canceled, 60).await.status.unwrap();
    assert!(st.accepted_by_node.is_none(), "{st:?}");
    // Nothing was exposed; the snapshot Velero made for this upload is disposed of, as Velero's
    // own mover does when it cancels (right after the exclusive Canceled write).
    w.until("the source snapshot to be disposed of", 30, || async {
        w.get_in::<VolumeSnapshot>("app", "s0").await.is_none().then_some(())
    })
    .await;

    // Accepted: exposed, the mover pod never ran.
    w.snapshot("app", "p1", "s1", false).await;
    w.data_upload("c-accepted", "app", "p1", "s1", "ferry").await;
    w.upload_phase("c-accepted", Phase::Accepted, 60).await;
    w.until("the mover pod", 30, || async { w.get_in::<Pod>(NS, "ferry-c-accepted").await }).await;
    w.patch_upload("c-accepted", json!({"spec": {"cancel": true}})).await;
    w.upload_phase("c-accepted", Phase::Canceled, 60).await;
    // Canceled is written after the cleanup: nothing may be left at that point.
    assert!(w.gone_in::<Pod>(NS, "ferry-c-accepted").await);
    assert!(w.gone_in::<PersistentVolumeClaim>(NS, "ferry-c-accepted").await);
    assert!(w.get_cluster::<VolumeSnapshotContent>("ferry-c-accepted").await.is_none());

    // Prepared on this node (as an agent that restarted between Prepared and InProgress finds it).
    w.snapshot("app", "p2", "s2", false).await;
    w.data_upload("c-prepared", "app", "p2", "s2", "velero").await;
    w.patch_upload(
        "c-prepared",
        json!({"spec": {"datamover": "ferry", "cancel": true},
               "status": {"phase": "Prepared", "acceptedByNode": "n1", "node": "n1"}}),
    )
    .await;
    let st = w.upload_phase("c-prepared", Phase::Canceled, 60).await.status.unwrap();
    assert!(st.completion_timestamp.is_some() && st.start_timestamp.is_some(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_node_left_the_cluster_is_failed_by_another_agent() {
    let Some(w) = World::new(&["n1"]).await else { return };
    w.namespace("app").await;
    w.snapshot("app", "p", "s", false).await;
    // In progress on node n9, which is not (or no longer) a Node of the cluster.
    w.data_upload("orphan-1", "app", "p", "s", "velero").await;
    w.patch_upload(
        "orphan-1",
        json!({"spec": {"datamover": "ferry"},
               "status": {"phase": "InProgress", "acceptedByNode": "n9", "node": "n9"}}),
    )
    .await;
    let st = w.upload_phase("orphan-1", Phase::Failed, 120).await.status.unwrap();
    assert!(st.message.as_deref().unwrap().contains("node n9"), "{st:?}");
    // An object of a node that is there is left to it.
    w.register_node("n8");
    w.snapshot("app", "q", "t", false).await;
    w.data_upload("alive-1", "app", "q", "t", "velero").await;
    w.patch_upload(
        "alive-1",
        json!({"spec": {"datamover": "ferry"},
               "status": {"phase": "InProgress", "acceptedByNode": "n8", "node": "n8"}}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    assert_eq!(w.upload("alive-1").await.status.unwrap().phase, Some(Phase::InProgress));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_movers_objects_are_never_touched() {
    let Some(w) = World::new(&["n1"]).await else { return };
    w.namespace("app").await;
    w.snapshot("app", "p", "s", false).await;
    w.data_upload("kv-1", "app", "p", "s", "kubevirt").await;
    w.data_upload("vel-1", "app", "p", "s", "").await;
    // A ferry object after them: once it is accepted, the agent has seen the others.
    w.snapshot("app", "q", "t", false).await;
    w.data_upload("fe-1", "app", "q", "t", "ferry").await;
    w.upload_phase("fe-1", Phase::Accepted, 60).await;
    for n in ["kv-1", "vel-1"] {
        assert!(w.upload(n).await.status.is_none(), "{n} was touched");
    }
    assert!(w.get_in::<VolumeSnapshot>("app", "s").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_credential_secret_fails_the_upload_with_its_name_and_the_agent_goes_on() {
    let Some(mut w) = World::new(&["n1"]).await else { return };
    let endpoint = std::env::var("FERRY_TEST_S3_ENDPOINT").unwrap();
    w.bsl("nocreds", &endpoint, Some(("missing-creds", "cloud"))).await;
    w.namespace("app").await;
    w.snapshot("app", "p", "s", false).await;
    w.data_upload_to("bad-1", "app", "p", "s", "ferry", "nocreds").await;
    w.upload_phase("bad-1", Phase::Accepted, 60).await;
    w.serve_mover("bad-1", "n1", false, small_tree).await;
    let st = w.upload_phase("bad-1", Phase::Failed, 60).await.status.unwrap();
    let msg = st.message.unwrap();
    assert!(msg.contains("Secret velero/missing-creds") && msg.contains("not found"), "{msg}");
    assert!(msg.contains("BackupStorageLocation velero/nocreds"), "{msg}");
    w.exposed_gone("bad-1").await;
    // The agent lives on and serves the next one.
    w.snapshot("app", "q", "t", false).await;
    w.data_upload("good-1", "app", "q", "t", "ferry").await;
    w.upload_phase("good-1", Phase::Accepted, 60).await;
    w.serve_mover("good-1", "n1", false, small_tree).await;
    w.upload_phase("good-1", Phase::Completed, 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_velero_backup_forgets_its_snapshots() {
    let Some(mut w) = World::new(&["n1"]).await else { return };
    w.namespace("app").await;
    let keep_uid = w.backup("keep").await;
    let gone_uid = w.backup("gone").await;
    let kubectl_uid = w.backup("kubectl").await;
    for (du, pvc, backup) in [
        ("k-1", "p1", ("keep", keep_uid.as_str())),
        ("g-1", "p2", ("gone", gone_uid.as_str())),
        ("c-1", "p3", ("kubectl", kubectl_uid.as_str())),
    ] {
        w.snapshot("app", pvc, &format!("s-{pvc}"), false).await;
        w.data_upload_of(du, "app", pvc, &format!("s-{pvc}"), "ferry", "default", backup).await;
        w.upload_phase(du, Phase::Accepted, 60).await;
        w.serve_mover(du, "n1", false, small_tree).await;
        w.upload_phase(du, Phase::Completed, 120).await;
    }
    let backups: kube::Api<ferry_daemon::types::Backup> = kube::Api::namespaced(w.client.clone(), NS);
    let b = backups.get("gone").await.unwrap();
    assert!(b.metadata.finalizers.unwrap_or_default().contains(&"ferry.dev/forget-snapshots".to_string()));
    let snapshots = |w: &World| {
        let out = w.ferry(&["snapshots", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let count = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap().as_array().unwrap().len();
    assert_eq!(count(&snapshots(&w)), 3);
    // Velero deletes "gone" (a DeleteBackupRequest, then the Backup object).
    let requests: kube::Api<ferry_daemon::types::DeleteBackupRequest> = kube::Api::namespaced(w.client.clone(), NS);
    let dbr = serde_json::json!({"apiVersion": "velero.io/v1", "kind": "DeleteBackupRequest",
        "metadata": {"name": "gone-x1", "namespace": NS,
                     "labels": {"velero.io/backup-name": "gone", "velero.io/backup-uid": gone_uid}},
        "spec": {"backupName": "gone"}});
    requests.create(&Default::default(), &serde_json::from_value(dbr).unwrap()).await.unwrap();
    // "kubectl" is deleted behind Velero's back: its data stays in object storage, so must its snapshot.
    for name in ["gone", "kubectl"] {
        backups.delete(name, &Default::default()).await.unwrap();
        w.until(&format!("Backup {name} to go"), 60, || async {
            backups.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    let text = snapshots(&w);
    assert_eq!(count(&text), 2, "only the snapshot of the Backup Velero deleted is forgotten: {text}");
    assert!(text.contains(&keep_uid) && text.contains(&kubectl_uid) && !text.contains(&gone_uid), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_starting_together_open_the_repository_once() {
    let Some(mut w) = World::new(&[]).await else { return };
    w.start_agent("n1", &["--concurrency", "3"]);
    w.namespace("app").await;
    let dirs = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let d = dirs.path().join(format!("v{i}"));
        std::fs::create_dir(&d).unwrap();
        small_tree(&d);
        w.snapshot("app", &format!("p{i}"), &format!("s{i}"), false).await;
        w.data_upload(&format!("t{i}"), "app", &format!("p{i}"), &format!("s{i}"), "ferry").await;
    }
    for i in 0..3 {
        w.upload_phase(&format!("t{i}"), Phase::Accepted, 60).await;
    }
    // Bind mounts (no file system to make) so that the jobs start within a few requests of
    // each other, while the first is still creating and opening the repository.
    for i in 0..3 {
        w.serve_mover_from(&format!("t{i}"), "n1", &dirs.path().join(format!("v{i}"))).await;
    }
    for i in 0..3 {
        w.upload_phase(&format!("t{i}"), Phase::Completed, 120).await;
    }
    let (code, metrics) = w.agent_http("n1", "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("ferry_agent_repository_opens_total 1\n"), "each job opened the repository: {metrics}");
}
