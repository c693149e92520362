//! Ferry's own resources against the real API server: VolumeBackups selecting volumes by
//! namespace, label and Velero's pod annotations and backing them up live from the node's pods
//! directory; CSI VolumeBackups that freeze the volume only while the snapshot is cut (the test
//! plays the CSI snapshotter and checks a writer is blocked exactly then), through the agent
//! being killed with `kill -9` while frozen; BackupSchedules firing, catching up once after a
//! pause, expiring backups (TTL) and applying retention.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use ferry_daemon::own::types::{
    BackupPhase, BackupSchedule, VolumeBackup, VolumeBackupStatus, VolumePhase, VolumeRestore, VolumeRestoreStatus,
};
use ferry_daemon::types::{Phase, VolumeSnapshot, VolumeSnapshotContent};

use crate::common::devices::{BindMount, Ext4};
use crate::world::{Backing, NS, World};

/// Install deploy/crds (if tests/kube/start.sh has not) and wait until they serve.
async fn own_crds(w: &World) {
    let crds: Api<CustomResourceDefinition> = Api::all(w.client.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).unwrap();
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
            Err(e) => panic!("installing {}: {e}", crd.metadata.name.unwrap_or_default()),
        }
    }
    for name in ["volumebackups.ferry.dev", "backupschedules.ferry.dev"] {
        w.until(&format!("CRD {name} established"), 30, || async {
            let c = crds.get(name).await.ok()?;
            c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
    }
    // The agents' watches started before the CRDs existed and retry with back-off; a new
    // VolumeBackup is picked up at the next attempt (within a few seconds).
}

/// An application volume on `node`: a bound PVC `ns/pvc` (with `labels`) on a PV, laid out
/// for pod `pod_uid` as kubelet does; the filesystem is a loop-mounted ext4 when `fs` is true
/// (it can be frozen), else a bind mount of a directory. Returns the mount.
async fn app_volume(w: &mut World, node: &str, ns: &str, pvc: &str, labels: Value, pod_uid: &str, fs: bool) -> PathBuf {
    let pv = format!("pv-{ns}-{pvc}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(w.client.clone(), ns);
    let c: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": pvc, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeName": pv,
                 "resources": {"requests": {"storage": "64Mi"}}}}))
    .unwrap();
    let c = claims.create(&PostParams::default(), &c).await.unwrap();
    let pvs: Api<PersistentVolume> = Api::all(w.client.clone());
    let p: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                 "csi": {"driver": "fake.csi.ferry.dev", "volumeHandle": format!("vol-{ns}-{pvc}")},
                 "claimRef": {"namespace": ns, "name": pvc, "uid": c.metadata.uid}}}))
    .unwrap();
    pvs.create(&PostParams::default(), &p).await.unwrap();
    claims
        .patch_status(pvc, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Bound"}})))
        .await
        .unwrap();
    let mnt =
        w.tmp.path().join(node).join("pods").join(pod_uid).join("volumes/kubernetes.io~csi").join(&pv).join("mount");
    let image = w.tmp.path().join(format!("{ns}-{pvc}.img"));
    if fs {
        w.backing.push(Backing::Fs(Ext4::new(&image, &mnt, 48 << 20, &[])));
    } else {
        std::fs::create_dir_all(&image).unwrap();
        w.backing.push(Backing::Bind(BindMount::new(&image, &mnt)));
    }
    std::fs::create_dir_all(mnt.join("data")).unwrap();
    std::fs::write(mnt.join("data/hello.txt"), format!("{ns}/{pvc}\n")).unwrap();
    mnt
}

/// A Running pod `ns/name` on `node` mounting `claims` = (pod volume, pvc); its uid.
async fn app_pod(
    w: &World,
    node: &str,
    ns: &str,
    name: &str,
    labels: Value,
    ann: Value,
    claims: &[(&str, &str)],
) -> String {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), ns);
    let vols: Vec<_> =
        claims.iter().map(|(v, c)| json!({"name": v, "persistentVolumeClaim": {"claimName": c}})).collect();
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": ann},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}], "volumes": vols}}))
    .unwrap();
    let p = pods.create(&PostParams::default(), &p).await.unwrap();
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}})))
        .await
        .unwrap();
    p.metadata.uid.unwrap()
}

/// A pod with one volume: its uid first, then the volume laid out for it.
#[allow(clippy::too_many_arguments)]
async fn app(
    w: &mut World,
    node: &str,
    ns: &str,
    pod: &str,
    pvc: &str,
    pvc_labels: Value,
    ann: Value,
    fs: bool,
) -> PathBuf {
    let uid = app_pod(w, node, ns, pod, json!({"app": pod}), ann, &[("data", pvc)]).await;
    app_volume(w, node, ns, pvc, pvc_labels, &uid, fs).await
}

async fn volume_backup(w: &World, name: &str, spec: Value) {
    let api: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
    let vb: VolumeBackup = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VolumeBackup",
        "metadata": {"name": name, "namespace": NS}, "spec": spec}))
    .unwrap();
    api.create(&PostParams::default(), &vb).await.unwrap();
}

async fn vb_status(w: &World, name: &str) -> Option<VolumeBackupStatus> {
    let api: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
    api.get_opt(name).await.unwrap().and_then(|v| v.status)
}

/// Wait until VolumeBackup `name` has ended; its status.
async fn vb_ended(w: &World, name: &str, secs: u64) -> VolumeBackupStatus {
    w.until(&format!("VolumeBackup {name} to end"), secs, || async {
        vb_status(w, name).await.filter(|s| s.phase.is_some_and(|p| p.is_terminal()))
    })
    .await
}

/// The repository's snapshots (`ferry snapshots --json`), each as its tags.
fn snapshot_tags(w: &World) -> Vec<Vec<String>> {
    let out = w.ferry(&["snapshots", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .collect()
}

/// A writer (write + fsync of a new file); the receiver gets the time it finished.
fn writer(mnt: &Path, name: &str) -> mpsc::Receiver<Instant> {
    let path = mnt.join(name);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"written while a backup ran\n").unwrap();
        f.sync_all().unwrap();
        let _ = tx.send(Instant::now());
    });
    rx
}

/// Thaws a mount on drop, whatever happened (a failed test must not leave it frozen).
struct Unfreeze(PathBuf);

impl Drop for Unfreeze {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new("fsfreeze").arg("-u").arg(&self.0).stderr(std::process::Stdio::null()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_backup_selects_by_namespace_label_and_velero_annotations_and_reads_live_volumes() {
    let Some(mut w) = World::new(&["n1", "n2"]).await else { return };
    own_crds(&w).await;
    for ns in ["app1", "app2", "other"] {
        w.namespace(ns).await;
    }
    // app1/db-0 mounts "db" and "logs" (both tier=db) but excludes "logs" by annotation.
    let uid = app_pod(
        &w,
        "n1",
        "app1",
        "db-0",
        json!({"app": "db"}),
        json!({"backup.velero.io/backup-volumes-excludes": "logs"}),
        &[("data", "db"), ("logs", "logs")],
    )
    .await;
    let db1 = app_volume(&mut w, "n1", "app1", "db", json!({"tier": "db"}), &uid, false).await;
    app_volume(&mut w, "n1", "app1", "logs", json!({"tier": "db"}), &uid, false).await;
    // tier=web: not selected.
    app(&mut w, "n1", "app1", "web", "web", json!({"tier": "web"}), json!({}), false).await;
    // app2/db-0 on the other node opts in its volume "data" (Velero's opt-in annotation).
    let db2 = app(
        &mut w,
        "n2",
        "app2",
        "db-0",
        "db",
        json!({"tier": "db"}),
        json!({"backup.velero.io/backup-volumes": "data"}),
        false,
    )
    .await;
    std::fs::write(db2.join("data/more.bin"), vec![9u8; 1 << 20]).unwrap();
    // Another namespace: not included.
    app(&mut w, "n1", "other", "db-0", "db", json!({"tier": "db"}), json!({}), false).await;

    volume_backup(
        &w,
        "vb1",
        json!({"includedNamespaces": ["app1", "app2"],
        "selector": {"matchLabels": {"tier": "db"}}, "tags": {"purpose": "e2e"}}),
    )
    .await;
    let st = vb_ended(&w, "vb1", 120).await;
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:?}\n{}", w.logs());
    let keys: Vec<&str> = st.volumes.keys().map(String::as_str).collect();
    assert_eq!(keys, ["app1/db", "app2/db"], "{st:?}");
    assert_eq!(st.volumes["app1/db"].node, "n1");
    assert_eq!(st.volumes["app2/db"].node, "n2", "each node backs up its own pods' volumes");
    for v in st.volumes.values() {
        assert_eq!(v.phase, VolumePhase::Completed, "{v:?}");
        assert_eq!(v.mode, "Live");
        assert!(v.snapshot_id.as_deref().unwrap().starts_with("ferry:"), "{v:?}");
    }
    assert!(st.volumes["app2/db"].bytes.unwrap() >= 1 << 20);
    let p = st.progress.unwrap();
    assert_eq!((p.total_volumes, p.done_volumes, p.failed_volumes), (2, 2, 0));
    let tags = snapshot_tags(&w);
    assert_eq!(tags.len(), 2, "{tags:?}");
    for t in &tags {
        for want in ["volume-backup=vb1", "purpose=e2e", "volume-mode=filesystem"] {
            assert!(t.contains(&want.to_string()), "{want} not in {t:?}");
        }
    }
    assert!(tags.iter().any(|t| t.contains(&"namespace=app1".into()) && t.contains(&"pvc=db".into())));
    // The data is the volume's: restore app1/db's snapshot with the CLI and compare.
    let id = st.volumes["app1/db"].snapshot_id.clone().unwrap();
    let short = id.rsplit(':').next().unwrap().to_string();
    let target = w.tmp.path().join("restored");
    let out = w.ferry(&["restore", &short, "--target", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = std::fs::read_to_string(walk_find(&target, "hello.txt").unwrap()).unwrap();
    assert_eq!(restored, std::fs::read_to_string(db1.join("data/hello.txt")).unwrap());

    // Bad input is a message naming the field.
    volume_backup(
        &w,
        "bad-selector",
        json!({"podSelector": {"matchExpressions":
        [{"key": "app", "operator": "Near", "values": ["x"]}]}}),
    )
    .await;
    volume_backup(
        &w,
        "nothing",
        json!({"includedNamespaces": ["app1"], "selector": {"matchLabels": {"tier": "none"}}}),
    )
    .await;
    volume_backup(&w, "bad-ttl", json!({"ttl": "a week"})).await;
    volume_backup(&w, "bad-location", json!({"location": "nowhere"})).await;
    for (name, want) in [
        ("bad-selector", "spec.podSelector:"),
        ("nothing", "nothing to back up"),
        ("bad-ttl", "spec.ttl: \"a week\""),
        ("bad-location", "spec.location \"nowhere\""),
    ] {
        let st = vb_ended(&w, name, 60).await;
        assert_eq!(st.phase, Some(BackupPhase::Failed), "{name}: {st:?}");
        let msg = st.message.unwrap_or_default();
        assert!(msg.contains(want), "{name}: {msg:?} lacks {want:?}");
    }

    // The examples in deploy/examples are valid objects for the CRDs and decode into the types.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    for e in std::fs::read_dir(&examples).unwrap() {
        let path = e.unwrap().path();
        let v: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        match v["kind"].as_str().unwrap() {
            "VolumeBackup" => {
                let o: VolumeBackup = serde_json::from_value(v).unwrap();
                Api::<VolumeBackup>::namespaced(w.client.clone(), NS).create(&PostParams::default(), &o).await.unwrap();
                let st = vb_ended(&w, &name, 60).await;
                assert!(st.message.unwrap_or_default().contains("nothing to back up"), "{}", path.display());
            }
            "BackupSchedule" => {
                let o: BackupSchedule = serde_json::from_value(v).unwrap();
                let api = Api::<BackupSchedule>::namespaced(w.client.clone(), NS);
                api.create(&PostParams::default(), &o).await.unwrap();
                let st = w.until("the example schedule", 30, || async { api.get(&name).await.unwrap().status }).await;
                assert_eq!(st.phase.as_deref(), Some("Enabled"), "{}: {st:?}", path.display());
            }
            "VolumeRestore" => {
                let o: VolumeRestore = serde_json::from_value(v).unwrap();
                Api::<VolumeRestore>::namespaced(w.client.clone(), NS)
                    .create(&PostParams::default(), &o)
                    .await
                    .unwrap();
                let st = vr_ended(&w, &name, 60).await;
                assert!(st.message.unwrap_or_default().contains("no such VolumeBackup"), "{}", path.display());
            }
            k => panic!("{}: unexpected kind {k}", path.display()),
        }
    }

    // Deleting the backup forgets its snapshots (its finalizer).
    let api: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
    api.delete("vb1", &Default::default()).await.unwrap();
    w.until("vb1 to go", 60, || async { api.get_opt("vb1").await.unwrap().is_none().then_some(()) }).await;
    assert!(snapshot_tags(&w).is_empty(), "the deleted backup's snapshots were forgotten");
}

/// The first file named `name` under `dir`.
fn walk_find(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(f) = walk_find(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

/// Play the CSI snapshotter for `ns/vs`: a content, and the snapshot cut and ready.
async fn cut_snapshot(w: &World, ns: &str, vs: &str) {
    let content = format!("snapcontent-{ns}-{vs}");
    let vscs: Api<VolumeSnapshotContent> = Api::all(w.client.clone());
    let c: VolumeSnapshotContent = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": {"name": content},
        "spec": {"deletionPolicy": "Delete", "driver": "fake.csi.ferry.dev",
                 "source": {"volumeHandle": format!("vol-{ns}")},
                 "volumeSnapshotRef": {"namespace": ns, "name": vs}, "volumeSnapshotClassName": "fake"}}))
    .unwrap();
    vscs.create(&PostParams::default(), &c).await.unwrap();
    let pp = PatchParams::default();
    vscs.patch_status(
        &content,
        &pp,
        &Patch::Merge(json!({"status": {"snapshotHandle": format!("handle-{vs}"),
        "readyToUse": true, "restoreSize": 64 << 20}})),
    )
    .await
    .unwrap();
    let vss: Api<VolumeSnapshot> = Api::namespaced(w.client.clone(), ns);
    vss.patch_status(
        vs,
        &pp,
        &Patch::Merge(json!({"status": {"boundVolumeSnapshotContentName": content,
        "readyToUse": true, "restoreSize": "64Mi", "creationTime": k8s_openapi::chrono::Utc::now()}})),
    )
    .await
    .unwrap();
}

/// Wait for the VolumeSnapshot a VolumeBackup creates in `ns`; its name.
async fn snapshot_created(w: &World, ns: &str, vb: &str) -> String {
    let vss: Api<VolumeSnapshot> = Api::namespaced(w.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("ferry.dev/volume-backup={vb}"));
    w.until(&format!("a VolumeSnapshot of {vb}"), 60, || async {
        vss.list(&lp).await.unwrap().items.first().and_then(|s| s.metadata.name.clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csi_volume_backup_freezes_only_while_the_snapshot_is_cut_and_moves_it_through_a_data_upload() {
    let Some(mut w) = World::new(&["n1"]).await else { return };
    own_crds(&w).await;
    w.namespace("app").await;
    let mnt = app(&mut w, "n1", "app", "pg-0", "pg", json!({}), json!({"ferry.dev/freeze": "true"}), true).await;
    let _thaw = Unfreeze(mnt.clone());
    volume_backup(
        &w,
        "csi1",
        json!({"includedNamespaces": ["app"], "volumeSnapshotClassName": "fake",
                                      "maxFreeze": "60s"}),
    )
    .await;
    // The snapshot is requested while the filesystem is frozen: a writer blocks...
    let vs = snapshot_created(&w, "app", "csi1").await;
    let rx = writer(&mnt, "during-snapshot");
    assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err(), "not frozen while the snapshot is cut");
    // ...until the snapshotter has cut it; then the agent thaws at once.
    let cut = Instant::now();
    cut_snapshot(&w, "app", &vs).await;
    let resumed = rx.recv_timeout(Duration::from_secs(20)).expect("thawed once the snapshot was cut");
    let thaw_lag = resumed.saturating_duration_since(cut);
    assert!(thaw_lag < Duration::from_secs(5), "thawed {thaw_lag:?} after the cut");
    // The data moves through a DataUpload, as Velero's would.
    let du =
        w.until("the DataUpload", 60, || async { w.get_in::<ferry_daemon::types::DataUpload>(NS, &vs).await }).await;
    assert_eq!(du.spec.datamover.as_deref(), Some("ferry"));
    w.upload_phase(&vs, Phase::Accepted, 60).await;
    w.serve_mover(&vs, "n1", false, |d| std::fs::write(d.join("from-snapshot"), b"cut").unwrap()).await;
    let st = vb_ended(&w, "csi1", 120).await;
    // Its result copied into the entry, the DataUpload is deleted (it belongs to no Velero Backup).
    w.until("the DataUpload to go", 30, || async {
        w.get_in::<ferry_daemon::types::DataUpload>(NS, &vs).await.is_none().then_some(())
    })
    .await;
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:?}\n{}", w.logs());
    let v = &st.volumes["app/pg"];
    assert_eq!(v.mode, "CSI");
    assert!(v.snapshot_id.as_deref().unwrap().starts_with("ferry:"), "{v:?}");
    let frozen = Duration::from_millis(v.frozen_ms.unwrap());
    assert!(frozen >= Duration::from_millis(1500) && frozen < Duration::from_secs(30), "{v:?}");
    eprintln!("frozen for {frozen:?} (the test held the snapshot for 1.5 s); thawed {thaw_lag:?} after the cut");
    let tags = snapshot_tags(&w);
    assert_eq!(tags.len(), 1);
    assert!(tags[0].contains(&"volume-backup=csi1".to_string()), "{tags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_is_thawed_by_the_watchdog_and_after_kill_9_by_the_next_start() {
    let Some(mut w) = World::new(&["n1"]).await else { return };
    own_crds(&w).await;
    w.namespace("app").await;
    let a = app(&mut w, "n1", "app", "a-0", "a", json!({}), json!({}), true).await;
    let b = app(&mut w, "n1", "app", "b-0", "b", json!({}), json!({}), true).await;
    let c = app(&mut w, "n1", "app", "c-0", "c", json!({}), json!({}), true).await;
    let _thaw = (Unfreeze(a.clone()), Unfreeze(b.clone()), Unfreeze(c.clone()));

    // The snapshotter never answers: the watchdog thaws at maxFreeze and the volume fails.
    volume_backup(
        &w,
        "hung",
        json!({"includedNamespaces": ["app"], "selector": {"matchLabels": {}},
        "podSelector": {"matchLabels": {"app": "a-0"}}, "volumeSnapshotClassName": "fake", "freeze": true,
        "maxFreeze": "2s"}),
    )
    .await;
    snapshot_created(&w, "app", "hung").await;
    let t0 = Instant::now();
    let rx = writer(&a, "w1");
    let resumed = rx.recv_timeout(Duration::from_secs(30)).expect("the watchdog thaws");
    let waited = resumed - t0;
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let st = vb_ended(&w, "hung", 60).await;
    assert_eq!(st.phase, Some(BackupPhase::Failed), "{st:?}");
    let v = &st.volumes["app/a"];
    assert!(v.message.as_deref().unwrap_or("").contains("not taken within"), "{v:?}");
    assert!(v.frozen_ms.unwrap() <= 3000, "{v:?}");

    // Killed while frozen: nothing thaws until the agent starts again, and then at once.
    volume_backup(
        &w,
        "killed",
        json!({"includedNamespaces": ["app"],
        "podSelector": {"matchLabels": {"app": "b-0"}}, "volumeSnapshotClassName": "fake", "freeze": true,
        "maxFreeze": "10m"}),
    )
    .await;
    let vs = snapshot_created(&w, "app", "killed").await;
    let rx = writer(&b, "w2");
    assert!(rx.recv_timeout(Duration::from_millis(1000)).is_err(), "frozen while the snapshot is requested");
    w.kill_agent("n1");
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err(), "a killed agent cannot thaw: still frozen");
    let restart = Instant::now();
    w.start_agent("n1", &[]);
    let resumed = rx.recv_timeout(Duration::from_secs(30)).expect("the restarted agent thaws first thing");
    let lag = resumed.saturating_duration_since(restart);
    eprintln!("kill -9 while frozen: thawed {lag:?} after the restart");
    assert!(lag < Duration::from_secs(10), "{lag:?}");
    // The restarted agent redoes the volume: let the snapshotter answer this time.
    cut_snapshot(&w, "app", &vs).await;
    w.until("the DataUpload of the redone volume", 60, || async {
        w.get_in::<ferry_daemon::types::DataUpload>(NS, &vs).await
    })
    .await;
    let log = std::fs::read_to_string(&w.agents.last().unwrap().log).unwrap();
    assert!(log.contains("recovered freeze"), "{log}");

    // SIGTERM while frozen: the agent thaws before it exits, and exits 0.
    volume_backup(
        &w,
        "termed",
        json!({"includedNamespaces": ["app"],
        "podSelector": {"matchLabels": {"app": "c-0"}}, "volumeSnapshotClassName": "fake", "freeze": true,
        "maxFreeze": "10m"}),
    )
    .await;
    snapshot_created(&w, "app", "termed").await;
    let rx = writer(&c, "w3");
    assert!(rx.recv_timeout(Duration::from_millis(1000)).is_err(), "frozen while the snapshot is requested");
    let status = w.stop_agent("n1");
    assert!(status.success(), "{status:?}");
    rx.recv_timeout(Duration::from_secs(5)).expect("thawed by the agent's shutdown");
}

async fn schedule(w: &World, name: &str, spec: Value) {
    let api: Api<BackupSchedule> = Api::namespaced(w.client.clone(), NS);
    let bs: BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": name, "namespace": NS}, "spec": spec}))
    .unwrap();
    api.create(&PostParams::default(), &bs).await.unwrap();
}

/// The VolumeBackups of schedule `name`: (name, created, phase).
async fn scheduled(
    w: &World,
    name: &str,
) -> Vec<(String, k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>, Option<BackupPhase>)> {
    let api: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
    let lp = ListParams::default().labels(&format!("ferry.dev/schedule={name}"));
    let mut v: Vec<_> = api
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .map(|b| {
            let created = b.metadata.creation_timestamp.clone().unwrap().0;
            (b.metadata.name.clone().unwrap(), created, b.status.and_then(|s| s.phase))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_on_time_catch_up_once_after_a_pause_and_apply_ttl_and_retention() {
    use k8s_openapi::chrono::Utc;
    let Some(mut w) = World::new(&["n1"]).await else { return };
    own_crds(&w).await;
    w.namespace("app").await;
    app(&mut w, "n1", "app", "db-0", "db", json!({}), json!({}), false).await;
    let template = json!({"includedNamespaces": ["app"]});

    // Bad input: a status message naming the field.
    schedule(&w, "bad", json!({"schedule": "61 * * * *", "template": template})).await;
    let api: Api<BackupSchedule> = Api::namespaced(w.client.clone(), NS);
    let st = w
        .until("bad to fail validation", 30, || async {
            api.get("bad").await.unwrap().status.filter(|s| s.phase.as_deref() == Some("FailedValidation"))
        })
        .await;
    assert!(st.message.as_deref().unwrap().starts_with("spec.schedule \"61 * * * *\""), "{st:?}");

    // Every 4 s, keeping the last 2; a new schedule waits for its first slot (as Velero's).
    schedule(&w, "often", json!({"schedule": "@every 4s", "template": template, "retention": {"last": 2}})).await;
    let t0 = Utc::now();
    w.until("4 backups of often", 90, || async { (scheduled(&w, "often").await.len() >= 2).then_some(()) }).await;
    w.until("retention to have deleted one", 90, || async {
        let s = api.get("often").await.unwrap().status?;
        (s.retention_deleted? >= 2).then_some(())
    })
    .await;
    // Drift: how long after its slot each backup was created (the agent's annotations).
    let vbs: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
    let mut drifts = Vec::new();
    for b in vbs.list(&ListParams::default().labels("ferry.dev/schedule=often")).await.unwrap().items {
        let ann = b.metadata.annotations.unwrap_or_default();
        let at = |k: &str| k8s_openapi::chrono::DateTime::parse_from_rfc3339(&ann[k]).unwrap().to_utc();
        let (slot, created) = (at("ferry.dev/slot"), at("ferry.dev/created-at"));
        assert!(slot >= t0 - k8s_openapi::chrono::Duration::seconds(1), "{slot} before the schedule existed");
        let name = b.metadata.name.unwrap();
        assert_eq!(name, format!("often-{}", slot.format("%Y%m%d%H%M%S")));
        drifts.push((created - slot).to_std().unwrap_or_default());
    }
    drifts.sort();
    let drift = *drifts.last().unwrap();
    eprintln!("schedule drift over {} runs: median {:?}, max {drift:?}", drifts.len(), drifts[drifts.len() / 2]);
    assert!(drift <= Duration::from_secs(3), "{drifts:?}");
    // Retention: at most 2 ended backups are left, and the repository has no snapshot of the
    // deleted ones.
    api.patch("often", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true}}))).await.unwrap();
    w.until("often to pause", 30, || async {
        (api.get("often").await.unwrap().status?.phase.as_deref() == Some("Paused")).then_some(())
    })
    .await;
    // Let whatever was created end, and retention run once more.
    w.until("often's backups to end", 60, || async {
        scheduled(&w, "often").await.iter().all(|b| b.2.is_some_and(|p| p.is_terminal())).then_some(())
    })
    .await;
    let kept = scheduled(&w, "often").await;
    let tags = snapshot_tags(&w);
    let of_schedule: Vec<_> = tags.iter().filter(|t| t.contains(&"schedule=often".to_string())).collect();
    let kept_names: Vec<String> = kept.iter().map(|b| format!("volume-backup={}", b.0)).collect();
    for t in &of_schedule {
        assert!(
            kept_names.iter().any(|k| t.contains(k)),
            "a snapshot of a deleted backup is left: {t:?} (kept {kept:?})"
        );
    }

    // Paused for 9 s (two slots or more), then unpaused: one backup at once, the rest counted.
    let before = scheduled(&w, "often").await.len();
    let missed_before = api.get("often").await.unwrap().status.unwrap().missed_runs.unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(scheduled(&w, "often").await.len(), before, "nothing runs while paused");
    api.patch("often", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": false}}))).await.unwrap();
    let st = w
        .until("often to catch up", 30, || async {
            let s = api.get("often").await.unwrap().status?;
            (s.missed_runs.unwrap_or(0) > missed_before).then_some(s)
        })
        .await;
    assert!(st.missed_runs.unwrap() - missed_before >= 1, "{st:?}");
    let created: Vec<_> = scheduled(&w, "often").await;
    let new_since = created.iter().filter(|b| (Utc::now() - b.1).num_seconds() < 3).count();
    assert!(new_since <= 1, "the missed slots ran once, not once each: {created:?}");
    api.delete("often", &Default::default()).await.unwrap();

    // skipImmediately: nothing until the first slot (an hour away).
    schedule(
        &w,
        "hourly",
        json!({"schedule": "CRON_TZ=Europe/Paris 0 * * * *", "skipImmediately": true,
                                   "template": template}),
    )
    .await;
    let st = w.until("hourly's next run", 30, || async { api.get("hourly").await.unwrap().status?.next_run }).await;
    assert!(st.0 > Utc::now(), "{st:?}");
    assert!(scheduled(&w, "hourly").await.is_empty());

    // TTL: a backup expires, is deleted, and its snapshots are forgotten.
    schedule(&w, "short", json!({"schedule": "@every 2s", "template": {"includedNamespaces": ["app"], "ttl": "3s"}}))
        .await;
    let name =
        w.until("short's backup", 30, || async { scheduled(&w, "short").await.first().map(|b| b.0.clone()) }).await;
    api.patch("short", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true}}))).await.unwrap();
    let st = vb_ended(&w, &name, 60).await;
    assert!(st.expiration.is_some(), "{st:?}");
    let uid = {
        let vbs: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
        vbs.get_opt(&name).await.unwrap().map(|v| v.metadata.uid.unwrap())
    };
    let vbs: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
    w.until("the expired backup to go", 60, || async { vbs.get_opt(&name).await.unwrap().is_none().then_some(()) })
        .await;
    if let Some(uid) = uid {
        let left = snapshot_tags(&w).into_iter().filter(|t| t.contains(&format!("volume-backup-uid={uid}"))).count();
        assert_eq!(left, 0, "the expired backup's snapshots are forgotten");
    }
}

/// What `velero-restore-helper` does in a pod's `restore-wait` init container, as a process of
/// its own: poll (every 100 ms here, each second there) until every volume has
/// `.velero/<restore uid>`, then delete each `.velero` and exit 0. The thread's result: how long
/// the process waited.
fn restore_wait(volumes: Vec<PathBuf>, uid: String) -> std::thread::JoinHandle<Duration> {
    let script = r#"uid=$1; shift
        until (for v in "$@"; do [ -f "$v/.velero/$uid" ] || exit 1; done); do sleep 0.1; done
        for v in "$@"; do rm -rf "$v/.velero"; done"#;
    let mut child =
        std::process::Command::new("sh").args(["-c", script, "restore-wait", &uid]).args(&volumes).spawn().unwrap();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "restore-wait exited {status:?}");
                return t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("restore-wait: no mark in {volumes:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

async fn volume_restore(w: &World, name: &str, spec: Value) -> String {
    let api: Api<VolumeRestore> = Api::namespaced(w.client.clone(), NS);
    let vr: VolumeRestore = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VolumeRestore",
        "metadata": {"name": name, "namespace": NS}, "spec": spec}))
    .unwrap();
    api.create(&PostParams::default(), &vr).await.unwrap().metadata.uid.unwrap()
}

async fn vr_ended(w: &World, name: &str, secs: u64) -> VolumeRestoreStatus {
    let api: Api<VolumeRestore> = Api::namespaced(w.client.clone(), NS);
    w.until(&format!("VolumeRestore {name} to end"), secs, || async {
        api.get(name).await.unwrap().status.filter(|s| s.phase.is_some_and(|p| p.is_terminal()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_restore_writes_in_place_filters_paths_and_releases_velero_restore_wait() {
    let Some(mut w) = World::new(&["n1", "n2"]).await else { return };
    own_crds(&w).await;
    for ns in ["app", "copy"] {
        w.namespace(ns).await;
    }
    let src = app(&mut w, "n1", "app", "db-0", "db", json!({}), json!({}), false).await;
    std::fs::write(src.join("data/drop.txt"), b"left out by excludePaths").unwrap();
    std::fs::create_dir_all(src.join("deep/er")).unwrap();
    std::fs::write(src.join("deep/er/big.bin"), vec![3u8; 2 << 20]).unwrap();
    volume_backup(&w, "src", json!({"includedNamespaces": ["app"]})).await;
    assert_eq!(vb_ended(&w, "src", 120).await.phase, Some(BackupPhase::Completed));

    // The target: the same claim name in another namespace, its pod on the other node waiting
    // in restore-wait; the volume has a file of its own already.
    let dst = app(&mut w, "n2", "copy", "db-0", "db", json!({}), json!({}), false).await;
    std::fs::remove_file(dst.join("data/hello.txt")).unwrap();
    std::fs::write(dst.join("own.txt"), b"already there").unwrap();
    let uid = volume_restore(
        &w,
        "r1",
        json!({"backup": "src", "namespaceMapping": {"app": "copy"},
                                              "excludePaths": ["data/drop.txt"]}),
    )
    .await;
    let waiter = restore_wait(vec![dst.clone()], uid);
    let st = vr_ended(&w, "r1", 120).await;
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:?}\n{}", w.logs());
    let v = &st.volumes["copy/db"];
    assert_eq!((v.source_namespace.as_str(), v.node.as_str(), v.phase), ("app", "n2", VolumePhase::Completed), "{v:?}");
    assert!(v.bytes.unwrap() >= 2 << 20, "{v:?}");
    let waited = waiter.join().expect("the restore-wait helper finished");
    eprintln!("restore-wait released after {waited:?}");
    assert_eq!(std::fs::read(dst.join("data/hello.txt")).unwrap(), std::fs::read(src.join("data/hello.txt")).unwrap());
    assert_eq!(std::fs::read(dst.join("deep/er/big.bin")).unwrap(), vec![3u8; 2 << 20]);
    assert!(!dst.join("data/drop.txt").exists(), "excludePaths");
    assert_eq!(std::fs::read(dst.join("own.txt")).unwrap(), b"already there", "a restore in place deletes nothing");
    assert!(!dst.join(".velero").exists(), "the helper removed its mark");

    // By tags, into the original namespace, only what includePaths names.
    std::fs::remove_dir_all(src.join("deep")).unwrap();
    volume_restore(&w, "r2", json!({"tags": {"volume-backup": "src"}, "includePaths": ["deep", "deep/**"]})).await;
    let st = vr_ended(&w, "r2", 120).await;
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:?}");
    assert_eq!(std::fs::read(src.join("deep/er/big.bin")).unwrap().len(), 2 << 20);
    assert!(src.join(".velero").is_dir(), "the mark is left for a restore-wait that is not running here");

    // Into a new claim: created with the backup's class and size, filled by a DataDownload
    // (the test plays the PV controller and kubelet for its mover), handed over.
    w.namespace("fresh").await;
    volume_restore(&w, "r3", json!({"backup": "src", "namespaceMapping": {"app": "fresh"}, "target": "New"})).await;
    let dds: Api<ferry_daemon::types::DataDownload> = Api::namespaced(w.client.clone(), NS);
    let dd = w
        .until("r3's DataDownload", 60, || async {
            let found = dds.list(&ListParams::default().labels("ferry.dev/volume-restore=r3")).await.unwrap().items;
            if found.is_empty() {
                let api: Api<VolumeRestore> = Api::namespaced(w.client.clone(), NS);
                let st = api.get("r3").await.unwrap().status;
                assert!(st.as_ref().and_then(|s| s.phase).is_none_or(|p| !p.is_terminal()), "r3 ended: {st:?}");
            }
            found.into_iter().next()
        })
        .await;
    let dd_name = dd.metadata.name.clone().unwrap();
    assert_eq!(dd.spec.target_volume.namespace, "fresh");
    let claim: PersistentVolumeClaim = w.get_in("fresh", "db").await.expect("the new claim");
    let cs = claim.spec.unwrap();
    assert_eq!(cs.storage_class_name.as_deref(), Some("fast"), "the backup's class");
    assert!(cs.selector.unwrap().match_labels.unwrap().contains_key("velero.io/dynamic-pv-restore"));
    w.download_phase(&dd_name, Phase::Accepted, 60).await;
    let pv = w.serve_mover(&dd_name, "n1", false, |_| {}).await;
    let restored = w.mount_of(&pv);
    w.bind_restored("fresh", "db", &pv).await;
    let st = vr_ended(&w, "r3", 120).await;
    assert_eq!(st.phase, Some(BackupPhase::Completed), "{st:?}\n{}", w.logs());
    assert_eq!(st.volumes["fresh/db"].data_download.as_deref(), Some(dd_name.as_str()));
    assert_eq!(
        std::fs::read(restored.join("data/hello.txt")).unwrap(),
        std::fs::read(src.join("data/hello.txt")).unwrap()
    );
    volume_restore(&w, "r4", json!({"backup": "src", "namespaceMapping": {"app": "fresh"}, "target": "New"})).await;
    let st = vr_ended(&w, "r4", 60).await;
    assert!(st.volumes["fresh/db"].message.as_deref().unwrap().contains("exists: target New creates"), "{st:?}");

    // Bad input names the field or the object.
    volume_restore(&w, "none", json!({})).await;
    // The CRD's schema refuses an unknown target at once, naming the field.
    let vrs: Api<VolumeRestore> = Api::namespaced(w.client.clone(), NS);
    let bad: VolumeRestore =
        serde_json::from_value(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "VolumeRestore",
        "metadata": {"name": "where", "namespace": NS}, "spec": {"backup": "src", "target": "Elsewhere"}}))
        .unwrap();
    let e = vrs.create(&PostParams::default(), &bad).await.unwrap_err().to_string();
    assert!(e.contains("spec.target") && e.contains("Elsewhere"), "{e}");
    volume_restore(&w, "ghost", json!({"backup": "ghost"})).await;
    volume_restore(&w, "glob", json!({"backup": "src", "includePaths": ["[oops"]})).await;
    volume_restore(&w, "unmapped", json!({"backup": "src", "namespaceMapping": {"app": "nowhere"}})).await;
    for (name, want) in [
        ("none", "spec.backup or spec.tags"),
        ("ghost", "spec.backup \"ghost\": no such VolumeBackup"),
        ("glob", "spec.includePaths/excludePaths: include pattern \"[oops\""),
    ] {
        let st = vr_ended(&w, name, 60).await;
        assert_eq!(st.phase, Some(BackupPhase::Failed), "{name}: {st:?}");
        assert!(st.message.as_deref().unwrap_or("").contains(want), "{name}: {st:?}");
    }
    let st = vr_ended(&w, "unmapped", 60).await;
    assert_eq!(st.phase, Some(BackupPhase::Failed), "{st:?}");
    assert!(st.volumes["nowhere/db"].message.as_deref().unwrap().contains("does not exist"), "{st:?}");
}

/// A pod `app/name` on n1 with `ann` and one volume (its claim `name`), laid out on ext4 when
/// `fs`; the volume's mount.
async fn hooked(w: &mut World, name: &str, ann: Value, fs: bool) -> PathBuf {
    app(w, "n1", "app", name, name, json!({}), ann, fs).await
}

/// `sh -c SCRIPT` as a hook command annotation.
fn sh(script: &str) -> String {
    serde_json::to_string(&["sh", "-c", script]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velero_hooks_run_through_exec_in_order_with_on_error_timeouts_and_restore_hooks() {
    let Some(mut w) = World::new(&["n1"]).await else { return };
    w.start_kubelet("n1");
    own_crds(&w).await;
    w.namespace("app").await;
    let pre = "pre.hook.backup.velero.io";
    let post = "post.hook.backup.velero.io";
    // ok: the pre hook writes into the volume (the backup must see it), the post hook too (the
    // backup must not); the restore hook runs once the container is ready.
    let ok = hooked(&mut w, "ok", json!({}), false).await;
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), "app");
    let ok_ann = json!({"metadata": {"annotations": {
        format!("{pre}/command"): sh(&format!("echo flushed > {}/flushed.txt", ok.display())),
        format!("{post}/command"): sh(&format!("echo after > {}/after.txt", ok.display())),
        "post.hook.restore.velero.io/command": sh(&format!("echo restored > {}/restored-hook.txt", ok.display())),
        "post.hook.restore.velero.io/wait-for-ready": "true",
    }}});
    pods.patch("ok", &PatchParams::default(), &Patch::Merge(ok_ann)).await.unwrap();
    hooked(&mut w, "fail", json!({format!("{pre}/command"): sh("echo no >&2; exit 3")}), false).await;
    hooked(
        &mut w,
        "cont",
        json!({format!("{pre}/command"): sh("exit 4"), format!("{pre}/on-error"): "Continue"}),
        false,
    )
    .await;
    hooked(
        &mut w,
        "slow",
        json!({format!("{pre}/command"): "[\"sleep\", \"31.25\"]", format!("{pre}/timeout"): "1s"}),
        false,
    )
    .await;
    hooked(&mut w, "bad", json!({format!("{pre}/command"): "[\"sync\""}), false).await;
    // Frozen for its live backup; its post hook fails: the filesystem is thawed all the same.
    let frz = hooked(
        &mut w,
        "frz",
        json!({"ferry.dev/freeze": "true", format!("{post}/command"): sh("exit 5"),
                                          format!("{post}/on-error"): "Continue"}),
        true,
    )
    .await;
    let _thaw = Unfreeze(frz.clone());

    // A KubeVirt VM pod: KubeVirt's virt-freezer hooks by default (there is no virt-freezer on
    // this machine, so the exec fails, and on-error Fail keeps an unfrozen VM out).
    let vm: Pod = serde_json::from_value(json!({
        "metadata": {"name": "virt-launcher-vm1-abcde",
                     "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/domain": "vm1"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "compute", "image": "virt-launcher:1"}],
                 "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": "vm1-disk"}}]}}))
    .unwrap();
    let vm = pods.create(&PostParams::default(), &vm).await.unwrap();
    app_volume(&mut w, "n1", "app", "vm1-disk", json!({}), &vm.metadata.uid.unwrap(), false).await;

    volume_backup(&w, "hooks", json!({"includedNamespaces": ["app"]})).await;
    let st = vb_ended(&w, "hooks", 120).await;
    assert_eq!(st.phase, Some(BackupPhase::PartiallyFailed), "{st:?}\n{}", w.logs());
    let vol = |k: &str| st.volumes[&format!("app/{k}")].clone();
    let msg = |k: &str| format!("{:?} {:?}", vol(k).message, vol(k).warnings);

    assert_eq!(vol("ok").phase, VolumePhase::Completed, "{}", msg("ok"));
    let id = vol("ok").snapshot_id.unwrap();
    let listing = w.ferry(&["ls", id.rsplit(':').next().unwrap()]);
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.contains("flushed.txt"), "the pre hook ran before the backup: {listing}");
    assert!(!listing.contains("after.txt"), "the post hook ran after it: {listing}");
    assert_eq!(std::fs::read_to_string(ok.join("after.txt")).unwrap(), "after\n");

    assert_eq!(vol("fail").phase, VolumePhase::Failed);
    assert!(msg("fail").contains("exit code 3") && msg("fail").contains("on-error Fail"), "{}", msg("fail"));
    assert_eq!(vol("cont").phase, VolumePhase::Completed, "{}", msg("cont"));
    assert!(msg("cont").contains("exit code 4") && msg("cont").contains("Continue"), "{}", msg("cont"));
    assert_eq!(vol("slow").phase, VolumePhase::Failed);
    assert!(msg("slow").contains("timed out after 1s"), "{}", msg("slow"));
    assert_eq!(vol("bad").phase, VolumePhase::Failed);
    assert!(msg("bad").contains("pre.hook.backup.velero.io/command: not a JSON array"), "{}", msg("bad"));
    assert_eq!(vol("vm1-disk").phase, VolumePhase::Failed);
    assert!(
        vol("vm1-disk").message.unwrap_or_default().contains(
            r#"["/usr/bin/virt-freezer", "--freeze", "--name", "vm1", "--namespace", "app"] in virt-launcher-vm1-abcde/compute"#
        ),
        "{}",
        msg("vm1-disk")
    );
    assert_eq!(vol("frz").phase, VolumePhase::Completed, "{}", msg("frz"));
    assert!(msg("frz").contains("exit code 5"), "{}", msg("frz"));
    assert!(msg("frz").contains("frozen for the whole live backup"), "{}", msg("frz"));
    let rx = writer(&frz, "after-hooks");
    rx.recv_timeout(Duration::from_secs(10)).expect("thawed although the post hook failed");
    // The timed-out hook's command was killed (its exec stream aborted).
    let end = Instant::now() + Duration::from_secs(10);
    while std::process::Command::new("pgrep").args(["-f", "sleep 31.25"]).status().unwrap().success() {
        assert!(Instant::now() < end, "the timed-out hook still runs");
        std::thread::sleep(Duration::from_millis(200));
    }
    // No snapshot for the failed ones.
    let tags = snapshot_tags(&w);
    assert_eq!(tags.len(), 3, "{tags:?}");
    for failed in ["pvc=fail", "pvc=slow", "pvc=bad"] {
        assert!(!tags.iter().any(|t| t.contains(&failed.to_string())), "{failed}: {tags:?}");
    }

    // The restore hook waits for the container to be ready, then runs.
    let uid = volume_restore(
        &w,
        "rh",
        json!({"backup": "hooks", "includedNamespaces": ["app"],
                                              "includePaths": ["data", "data/**"]}),
    )
    .await;
    let _ = uid;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!ok.join("restored-hook.txt").exists(), "ran before the container was ready");
    pods.patch_status(
        "ok",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running",
        "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "app:1", "imageID": "",
                               "state": {"running": {"startedAt": k8s_openapi::chrono::Utc::now()}}}]}})),
    )
    .await
    .unwrap();
    let st = vr_ended(&w, "rh", 60).await;
    assert_eq!(st.volumes["app/ok"].phase, VolumePhase::Completed, "{st:?}");
    assert_eq!(std::fs::read_to_string(ok.join("restored-hook.txt")).unwrap(), "restored\n");
}

/// The API server prunes fields a CRD's schema does not list: every field of each spec type
/// must be in deploy/crds (a field missing there would silently vanish from users' objects).
#[test]
fn the_crd_schemas_list_every_spec_field() {
    use ferry_daemon::own::types::{BackupScheduleSpec, VolumeBackupSpec, VolumeRestoreSpec};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (file, spec) in [
        ("ferry.dev_volumebackups.yaml", serde_json::to_value(VolumeBackupSpec::default()).unwrap()),
        ("ferry.dev_backupschedules.yaml", serde_json::to_value(BackupScheduleSpec::default()).unwrap()),
        ("ferry.dev_volumerestores.yaml", serde_json::to_value(VolumeRestoreSpec::default()).unwrap()),
    ] {
        let crd: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let mut in_crd: Vec<&String> = props.as_object().unwrap().keys().collect();
        let mut in_type: Vec<&String> = spec.as_object().unwrap().keys().collect();
        in_crd.sort();
        in_type.sort();
        assert_eq!(in_crd, in_type, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_nobody_can_take_fail_and_a_backup_deleted_mid_way_stops() {
    let Some(mut w) = World::new(&[]).await else { return };
    w.start_agent("n1", &["--pickup-timeout", "3s"]);
    w.register_node("n9");
    own_crds(&w).await;
    w.namespace("lost").await;
    // A pod on a node that left the cluster, and one on a node where no agent runs.
    app(&mut w, "ghost", "lost", "g-0", "g", json!({}), json!({}), false).await;
    app(&mut w, "n9", "lost", "w-0", "w", json!({}), json!({}), false).await;
    volume_backup(&w, "lost", json!({"includedNamespaces": ["lost"]})).await;
    let st = vb_ended(&w, "lost", 60).await;
    assert_eq!(st.phase, Some(BackupPhase::Failed), "{st:?}");
    let msg = |k: &str| st.volumes[k].message.clone().unwrap_or_default();
    assert!(msg("lost/g").contains("node ghost is no longer in the cluster"), "{st:?}");
    assert!(msg("lost/w").contains("no agent on node n9 took it within 3s"), "{st:?}");

    // Deleted while its snapshot is awaited: the job stops, the snapshot request goes, the
    // finalizer is released at once (not after the 10-minute wait).
    w.namespace("mid").await;
    app(&mut w, "n1", "mid", "m-0", "m", json!({}), json!({}), false).await;
    volume_backup(&w, "mid", json!({"includedNamespaces": ["mid"], "volumeSnapshotClassName": "fake"})).await;
    let vs = snapshot_created(&w, "mid", "mid").await;
    let api: Api<VolumeBackup> = Api::namespaced(w.client.clone(), NS);
    api.delete("mid", &Default::default()).await.unwrap();
    w.until("the deleted backup to go", 30, || async { api.get_opt("mid").await.unwrap().is_none().then_some(()) })
        .await;
    w.until("its snapshot request to go", 30, || async {
        w.get_in::<VolumeSnapshot>("mid", &vs).await.is_none().then_some(())
    })
    .await;
}
