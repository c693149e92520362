//! The VolumeBackup controller, run by every agent.
//!
//! 1. `New`: one agent (an exclusive write: `metadata.resourceVersion` as precondition) checks
//!    the spec, selects the volumes (`select`), adds the finalizer and writes `InProgress` with
//!    one `Pending` entry per volume, each assigned to the node of the pod mounting it (a CSI
//!    snapshot of an unmounted PVC goes to the selecting node; live mode skips it).
//! 2. `InProgress`: each agent works on its node's entries, one pod at a time (Velero's order:
//!    pre hook, freeze, snapshot, thaw, post hook):
//!    - live: back the mounted volume up from `/host_pods` (frozen throughout if asked, with a
//!      warning saying for how long);
//!    - CSI: create a VolumeSnapshot, wait until it is cut (frozen only that long), then a
//!      DataUpload (`spec.datamover` = this agent's) that the agents move like Velero's; its
//!      result is copied into the entry.
//!
//!    Entries are merge patches of `status.volumes["ns/pvc"]`, so nodes never overwrite each
//!    other. A node that restarts redoes its unfinished entries (the backup is incremental).
//! 3. Once every entry has ended, one agent writes the phase (`Completed`, `PartiallyFailed`,
//!    `Failed`) and the expiration (`spec.ttl`).
//! 4. Expired: deleted. Deleted: the finalizer forgets the snapshots tagged with its uid.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use serde_json::json;

use ferry_engine::identity::Identity;
use ferry_engine::podvolume;

use super::hooks::{self, OnError, When};
use super::select;
use super::types::{BackupPhase, BackupProgress, VolumeBackup, VolumePhase, VolumeStatus};
use crate::agent::{Agent, Error};
use crate::snapshot_ref::SnapshotRef;
use crate::transfer::parse_go_duration;
use crate::types::{DataUpload, Phase, VolumeSnapshot};

/// On every VolumeBackup: its deletion forgets its snapshots.
pub const FINALIZER: &str = "ferry.dev/forget-snapshots";
/// Label on what a VolumeBackup creates (DataUploads, VolumeSnapshots): its name.
pub const BACKUP_LABEL: &str = "ferry.dev/volume-backup";
/// Annotation on a DataUpload: a JSON object of tags its snapshot gets.
pub const TAGS_ANNOTATION: &str = "ferry.dev/tags";
/// A pod annotation asking for its volumes to be frozen around their snapshots.
pub const FREEZE_ANNOTATION: &str = "ferry.dev/freeze";
/// The default longest freeze.
pub const DEFAULT_MAX_FREEZE: Duration = Duration::from_secs(30);

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    crate::transfer::now()
}

async fn patch(a: &Agent, vb: &VolumeBackup, p: serde_json::Value) -> Result<bool> {
    super::patch(a, vb, p).await
}

/// Patch one volume's entry.
async fn patch_volume(a: &Agent, vb: &VolumeBackup, key: &str, v: &VolumeStatus) -> Result<()> {
    let mut v = v.clone();
    super::bound_notes(&mut v.message, &mut v.warnings);
    patch(a, vb, json!({"status": {"volumes": {key: v}}})).await.map(drop)
}

fn location(vb: &VolumeBackup) -> String {
    vb.spec.location.clone().filter(|l| !l.is_empty()).unwrap_or_else(|| "default".into())
}

pub async fn reconcile(vb: Arc<VolumeBackup>, a: Arc<Agent>) -> Result<Requeue, Error> {
    let st = vb.status.clone().unwrap_or_default();
    let phase = st.phase.unwrap_or_default();
    if vb.meta().deletion_timestamp.is_some() {
        return deleted(&vb, &a).await.map_err(Error::from);
    }
    match phase {
        BackupPhase::New => start(&vb, &a).await.map_err(Error::from),
        BackupPhase::InProgress => progress(&vb, &a).await.map_err(Error::from),
        _ => {
            super::jobs_forget(&a, &vb.uid().unwrap_or_default());
            let Some(exp) = st.expiration else { return Ok(Requeue::await_change()) };
            let left = (exp.0 - Utc::now()).to_std().unwrap_or_default();
            if !left.is_zero() {
                return Ok(Requeue::requeue(left.min(Duration::from_secs(3600))));
            }
            let api: Api<VolumeBackup> = Api::namespaced(a.client.clone(), &a.s.namespace);
            match api.delete(&vb.name_any(), &Default::default()).await {
                Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => {}
                Err(e) => return Err(anyhow::Error::from(e).context("deleting an expired VolumeBackup").into()),
            }
            tracing::info!(backup = %vb.name_any(), "expired (spec.ttl): deleted");
            Ok(Requeue::await_change())
        }
    }
}

/// Validate and select (one agent, exclusively).
async fn start(vb: &VolumeBackup, a: &Agent) -> Result<Requeue> {
    // One agent selects: the others would list the same pods and lose the write.
    let Some(rv) = super::claim(a, vb).await? else { return Ok(Requeue::requeue(Duration::from_secs(5))) };
    let fail = |msg: String| {
        json!({"metadata": {"resourceVersion": rv},
               "status": {"phase": "Failed", "message": msg, "completionTimestamp": now()}})
    };
    if let Err(msg) = super::check_backup_spec(&vb.spec, "spec") {
        patch(a, vb, fail(msg)).await?;
        return Ok(Requeue::await_change());
    }
    if let Err(e) = a.repos.get(&location(vb)).await {
        patch(a, vb, fail(format!("spec.location {:?}: {e:#}", location(vb)))).await?;
        return Ok(Requeue::await_change());
    }
    let csi = vb.spec.volume_snapshot_class_name.is_some();
    let mode = if csi { "CSI" } else { "Live" };
    let pvcs: Vec<PersistentVolumeClaim> = super::list_in(a, &vb.spec.included_namespaces).await?;
    let pods: Vec<Pod> = super::list_in(a, &vb.spec.included_namespaces).await?;
    let mut volumes = match select::select(&vb.spec, mode, &pvcs, &pods) {
        Ok(v) => v,
        Err(msg) => {
            patch(a, vb, fail(msg)).await?;
            return Ok(Requeue::await_change());
        }
    };
    if volumes.is_empty() {
        let msg = format!(
            "nothing to back up: no bound PVC matches spec.selector/spec.podSelector in namespaces {} (excluding {:?})",
            if vb.spec.included_namespaces.is_empty() {
                "[*]".to_string()
            } else {
                format!("{:?}", vb.spec.included_namespaces)
            },
            vb.spec.excluded_namespaces
        );
        patch(a, vb, fail(msg)).await?;
        return Ok(Requeue::await_change());
    }
    for v in volumes.values_mut() {
        if v.node.is_empty() {
            if csi {
                v.node = a.s.node.clone();
            } else {
                v.phase = VolumePhase::Skipped;
                v.message = Some("no running pod mounts it: a live backup reads mounted volumes only".into());
            }
        }
    }
    let mut finalizers = vb.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.into());
    }
    let total = volumes.len() as u32;
    let p = json!({"metadata": {"resourceVersion": rv, "finalizers": finalizers},
                   "status": {"phase": "InProgress", "startTimestamp": now(), "volumes": volumes,
                              "progress": BackupProgress { total_volumes: total, ..Default::default() }}});
    if patch(a, vb, p).await? {
        tracing::info!(backup = %vb.name_any(), volumes = total, mode, "selected");
    }
    Ok(Requeue::requeue(Duration::from_millis(200)))
}

/// Work on this node's entries; end the backup once all have ended.
async fn progress(vb: &Arc<VolumeBackup>, a: &Arc<Agent>) -> Result<Requeue> {
    let st = vb.status.clone().unwrap_or_default();
    let uid = vb.uid().unwrap_or_default();
    // Group this node's unfinished entries by pod (hooks run once per pod).
    let mut groups: BTreeMap<String, Vec<(String, VolumeStatus)>> = BTreeMap::new();
    for (key, v) in &st.volumes {
        if v.phase.is_terminal() {
            continue;
        }
        if v.node != a.s.node {
            let pending = v.phase == VolumePhase::Pending;
            if let Some(why) = super::orphaned(a, &v.node, pending, st.start_timestamp.as_ref()).await {
                let failed = VolumeStatus { phase: VolumePhase::Failed, message: Some(why), ..v.clone() };
                patch_volume(a, vb, key, &failed).await?;
            }
            continue;
        }
        if v.phase == VolumePhase::InProgress && v.data_upload.is_some() {
            follow_upload(vb, a, key, v).await?;
            continue;
        }
        groups.entry(v.pod.clone().unwrap_or_else(|| format!("pvc:{key}"))).or_default().push((key.clone(), v.clone()));
    }
    for (pod, vols) in groups {
        let job = format!("{uid}/{}/{pod}", vols[0].1.namespace);
        let Some(cancel) = super::job_start(a, &job) else { continue };
        let (vb, a) = (vb.clone(), a.clone());
        tokio::spawn(async move {
            let run = tokio::spawn(run_group(vb.clone(), a.clone(), vols.clone(), cancel));
            if let Err(e) = run.await.map_err(|e| anyhow!("the job panicked: {e}")).and_then(|r| r) {
                for (key, mut v) in vols {
                    v.phase = VolumePhase::Failed;
                    v.message = Some(format!("{e:#}"));
                    if let Err(e) = patch_volume(&a, &vb, &key, &v).await {
                        tracing::error!(backup = %vb.name_any(), "writing the failure of {key}: {e:#}");
                    }
                }
            }
            super::job_end(&a, &job);
        });
    }
    if st.volumes.values().all(|v| v.phase.is_terminal()) {
        finish(vb, a).await?;
        return Ok(Requeue::await_change());
    }
    Ok(Requeue::requeue(Duration::from_secs(5)))
}

/// All entries ended: write the phase (exclusively; a 409 means someone else did).
async fn finish(vb: &VolumeBackup, a: &Agent) -> Result<()> {
    let st = vb.status.clone().unwrap_or_default();
    let count = |p: VolumePhase| st.volumes.values().filter(|v| v.phase == p).count();
    let (done, failed) = (count(VolumePhase::Completed), count(VolumePhase::Failed));
    let phase = match (done, failed) {
        (_, 0) => BackupPhase::Completed,
        (0, _) => BackupPhase::Failed,
        _ => BackupPhase::PartiallyFailed,
    };
    let skipped = count(VolumePhase::Skipped);
    let message = format!("{done} volumes backed up, {failed} failed, {skipped} skipped");
    // Validated at the start (more than zero, at most 100 years): the sum cannot overflow, and
    // if it could the backup would be kept rather than expire at once.
    let expiration = vb
        .spec
        .ttl
        .as_deref()
        .and_then(parse_go_duration)
        .and_then(|d| Utc::now().checked_add_signed(k8s_openapi::chrono::Duration::from_std(d).ok()?))
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    let p = json!({"metadata": {"resourceVersion": vb.resource_version()},
                   "status": {"phase": phase, "message": message, "completionTimestamp": now(),
                              "expiration": expiration,
                              "progress": BackupProgress { total_volumes: st.volumes.len() as u32,
                                                           done_volumes: (done + skipped) as u32,
                                                           failed_volumes: failed as u32 }}});
    if patch(a, vb, p).await? {
        tracing::info!(backup = %vb.name_any(), ?phase, "{message}");
    }
    Ok(())
}

/// A CSI entry whose DataUpload runs: copy its end into the entry.
async fn follow_upload(vb: &VolumeBackup, a: &Agent, key: &str, v: &VolumeStatus) -> Result<()> {
    let api: Api<DataUpload> = Api::namespaced(a.client.clone(), &a.s.namespace);
    let name = v.data_upload.clone().unwrap_or_default();
    let mut v = v.clone();
    match api.get_opt(&name).await? {
        None => {
            v.phase = VolumePhase::Failed;
            v.message = Some(format!("DataUpload {name} was deleted"));
        }
        Some(du) => {
            let s = du.status.clone().unwrap_or_default();
            match s.phase.unwrap_or_default() {
                Phase::Completed => {
                    v.phase = VolumePhase::Completed;
                    v.snapshot_id = s.snapshot_id;
                    v.bytes = s.progress.and_then(|p| p.total_bytes).map(|b| b as u64);
                }
                Phase::Failed | Phase::Canceled => {
                    v.phase = VolumePhase::Failed;
                    v.message = Some(format!("DataUpload {name}: {}", s.message.unwrap_or_default()));
                }
                _ => return Ok(()),
            }
        }
    }
    patch_volume(a, vb, key, &v).await?;
    // Its result is in the entry: the DataUpload has served (Velero's own stay with their
    // Backup; these have none).
    match api.delete(&name, &Default::default()).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting DataUpload {name}")),
    }
}

/// The tags of the snapshots of `vb` (besides what the data path adds).
fn tags(vb: &VolumeBackup, v: &VolumeStatus) -> Vec<(String, String)> {
    let mut t = vec![
        ("namespace".to_string(), v.namespace.clone()),
        ("pvc".to_string(), v.pvc.clone()),
        ("volume-backup".to_string(), vb.name_any()),
        ("volume-backup-uid".to_string(), vb.uid().unwrap_or_default()),
    ];
    if let Some(s) = vb.labels().get(super::schedules::SCHEDULE_LABEL) {
        t.push(("schedule".into(), s.clone()));
    }
    t.extend(vb.spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    t
}

/// One pod's volumes on this node: hooks, freeze, snapshot, thaw, hooks, data.
async fn run_group(
    vb: Arc<VolumeBackup>,
    a: Arc<Agent>,
    mut vols: Vec<(String, VolumeStatus)>,
    cancel: ferry_engine::job::CancelToken,
) -> Result<()> {
    let ns = vols[0].1.namespace.clone();
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &ns);
    let pod = match &vols[0].1.pod {
        Some(p) => Some(pods.get(p).await.with_context(|| format!("reading pod {ns}/{p}"))?),
        None => None,
    };
    let csi = vols[0].1.mode == "CSI";
    for (key, v) in vols.iter_mut() {
        v.phase = VolumePhase::InProgress;
        patch_volume(&a, &vb, key, v).await?;
    }
    let _slot = tokio::select! {
        slot = a.own_slot() => slot,
        _ = cancel.cancelled() => anyhow::bail!("canceled: the VolumeBackup was deleted"),
    };
    // Pre hook: a failure with on-error Fail fails every volume of the pod.
    let (pre, post) = match &pod {
        Some(p) => (hooks::hook(p, When::Pre)?, hooks::hook(p, When::Post)?),
        None => (None, None),
    };
    let mut notes = Vec::new();
    if let (Some(h), Some(p)) = (&pre, &pod) {
        let ran = hooks::run(&pods, &p.name_any(), h).await;
        tracing::info!(backup = %vb.name_any(), "pre hook: {}", ran.note);
        if !ran.ok {
            if h.on_error == OnError::Fail {
                anyhow::bail!("pre hook failed (on-error Fail): {}", ran.note);
            }
            notes.push(format!("pre hook failed (on-error Continue): {}", ran.note));
        }
    }
    let freeze = vb.spec.freeze == Some(true)
        || pod.as_ref().is_some_and(|p| p.annotations().get(FREEZE_ANNOTATION).is_some_and(|v| v == "true"));
    let max_freeze =
        vb.spec.max_freeze.as_deref().and_then(parse_go_duration).unwrap_or(DEFAULT_MAX_FREEZE).min(super::MAX_FREEZE);
    let mut results = Vec::new();
    for (key, v) in vols.iter_mut() {
        v.warnings.extend(notes.iter().cloned());
        let r = if csi {
            snapshot_volume(&vb, &a, pod.as_ref(), v, freeze, max_freeze, &cancel).await
        } else {
            live_volume(&vb, &a, pod.as_ref(), v, freeze, max_freeze, &cancel).await
        };
        results.push((key.clone(), r));
    }
    if let (Some(h), Some(p)) = (&post, &pod) {
        let ran = hooks::run(&pods, &p.name_any(), h).await;
        tracing::info!(backup = %vb.name_any(), "post hook: {}", ran.note);
        if !ran.ok {
            for (_, v) in vols.iter_mut() {
                v.warnings.push(format!("post hook failed: {}", ran.note));
            }
            if h.on_error == OnError::Fail {
                for (_, v) in vols.iter_mut() {
                    v.phase = VolumePhase::Failed;
                    v.message = Some(format!("post hook failed (on-error Fail): {}", ran.note));
                }
            }
        }
    }
    for ((key, v), (_, r)) in vols.iter_mut().zip(results) {
        if let Err(e) = r {
            v.phase = VolumePhase::Failed;
            v.message = Some(format!("{e:#}"));
        } else if v.phase == VolumePhase::InProgress && v.data_upload.is_none() {
            v.phase = VolumePhase::Completed;
        }
        patch_volume(&a, &vb, key, v).await?;
    }
    Ok(())
}

/// Where `pod`'s volume of claim `namespace/pvc` (pod volume `volume`) is on this node
/// (`<host pods>/<pod uid>/<pv or volume>`, as `podvolume::resolve` takes it).
pub(crate) async fn pod_volume(
    a: &Agent,
    pod: &Pod,
    namespace: &str,
    claim: &str,
    volume: Option<&str>,
) -> Result<std::path::PathBuf> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(a.client.clone(), namespace);
    let pvc = pvcs.get(claim).await.with_context(|| format!("reading PVC {namespace}/{claim}"))?;
    let pv = pvc.spec.and_then(|s| s.volume_name).unwrap_or_default();
    let dir = a.s.host_pods.join(pod.uid().unwrap_or_default());
    // kubelet names a CSI volume's directory after the PV, other plugins' after the pod volume.
    let candidates = [pv, volume.unwrap_or_default().to_string()];
    let mut last = None;
    for name in candidates.iter().filter(|n| !n.is_empty()) {
        match podvolume::resolve(&dir.join(name)) {
            Ok(_) => return Ok(dir.join(name)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("PVC {namespace}/{claim} is not bound")))
}

/// Freeze the filesystem of the volume at `spec` (a pod volume path), unless it is a block
/// device or an image (a warning says so). FIFREEZE blocks while it writes dirty data back: it
/// runs off the async threads.
async fn freeze_blocking(
    a: &Agent,
    spec: &std::path::Path,
    owner: &str,
    max: Duration,
    v: &mut VolumeStatus,
) -> Result<Option<crate::freeze::Frozen>> {
    let podvolume::PodVolume::Filesystem(dir) = podvolume::resolve(spec)? else {
        v.warnings.push("not frozen: a block volume or disk image has no filesystem mounted on the node".into());
        return Ok(None);
    };
    let (freezer, owner) = (a.freezer.clone(), owner.to_string());
    Ok(Some(tokio::task::spawn_blocking(move || freezer.freeze(&dir, &owner, max)).await??))
}

fn note_thaw(v: &mut VolumeStatus, t: crate::freeze::Thawed, live: bool) {
    v.frozen_ms = Some(t.frozen_for.as_millis() as u64);
    if let Some(e) = t.error {
        v.warnings.push(format!("{e} (the watchdog keeps trying, and the next start of the agent)"));
    }
    if let Some(by) = t.by_other {
        v.warnings.push(format!("thawed by the {by} after {:?}, before the snapshot was taken", t.frozen_for));
    } else if live {
        v.warnings.push(format!("frozen for the whole live backup: {:?}", t.frozen_for));
    }
}

async fn live_volume(
    vb: &VolumeBackup,
    a: &Agent,
    pod: Option<&Pod>,
    v: &mut VolumeStatus,
    freeze: bool,
    max_freeze: Duration,
    cancel: &ferry_engine::job::CancelToken,
) -> Result<()> {
    let pod = pod.ok_or_else(|| anyhow!("no pod mounts it"))?;
    let spec = pod_volume(a, pod, &v.namespace, &v.pvc, v.volume.as_deref()).await?;
    let repo = a.repos.get(&location(vb)).await?;
    let owner = format!("VolumeBackup {}/{}", vb.name_any(), v.pvc);
    let frozen = if freeze { freeze_blocking(a, &spec, &owner, max_freeze, v).await? } else { None };
    let backup = podvolume::VolumeBackup {
        host: a.s.node.clone(),
        tags: tags(vb, v),
        parent: None,
        cache_dir: Some(a.s.state_dir.join("files-cache")),
        identity: Some(Identity::pvc(&v.namespace, &v.pvc)?),
        requester: Some("ferry".into()),
    };
    // Nothing reads this job's counters (the status counts volumes and bytes at the end).
    let job = ferry_engine::Job { limits: a.limits(), cancel: cancel.clone(), totals: false, ..Default::default() };
    let out = podvolume::backup(repo.clone(), &spec, backup, &job).await;
    if let Some(f) = frozen {
        note_thaw(v, f.thaw(), true);
    }
    let out = out?;
    if !out.errors.is_empty() {
        anyhow::bail!("{} entries could not be read, first: {}", out.errors.len(), out.errors[0]);
    }
    v.snapshot_id = Some(SnapshotRef::new(repo.config(), out.snapshot_id).to_string());
    v.bytes = Some(out.snapshot.summary.bytes_total);
    Ok(())
}

/// CSI: snapshot (frozen only until it is cut), then a DataUpload moves its data.
async fn snapshot_volume(
    vb: &VolumeBackup,
    a: &Agent,
    pod: Option<&Pod>,
    v: &mut VolumeStatus,
    freeze: bool,
    max_freeze: Duration,
    cancel: &ferry_engine::job::CancelToken,
) -> Result<()> {
    let class = vb.spec.volume_snapshot_class_name.clone().unwrap_or_default();
    let suffix = vb.uid().unwrap_or_default().chars().take(8).collect::<String>();
    let name: String = format!("{}-{}-{suffix}", vb.name_any(), v.pvc).chars().take(240).collect();
    // Redone after a restart: a DataUpload already made for this volume carries on.
    let uploads: Api<DataUpload> = Api::namespaced(a.client.clone(), &a.s.namespace);
    if uploads.get_opt(&name).await?.is_some() {
        v.volume_snapshot = Some(name.clone());
        v.data_upload = Some(name);
        return Ok(());
    }
    let frozen = match (freeze, pod) {
        (true, Some(pod)) => {
            let spec = pod_volume(a, pod, &v.namespace, &v.pvc, v.volume.as_deref()).await?;
            let owner = format!("VolumeBackup {}/{}", vb.name_any(), v.pvc);
            freeze_blocking(a, &spec, &owner, max_freeze, v).await?
        }
        _ => None,
    };
    let snaps: Api<VolumeSnapshot> = Api::namespaced(a.client.clone(), &v.namespace);
    let vs = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                    "metadata": {"name": name, "namespace": v.namespace, "labels": {BACKUP_LABEL: super::label_value(&vb.name_any())}},
                    "spec": {"volumeSnapshotClassName": class, "source": {"persistentVolumeClaimName": v.pvc}}});
    let vs: VolumeSnapshot = serde_json::from_value(vs)?;
    match snaps.create(&PostParams::default(), &vs).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
        Err(e) => return Err(e).context("creating the VolumeSnapshot"),
    }
    v.volume_snapshot = Some(name.clone());
    // Cut: the snapshot has a creation time (or is ready). Frozen: at most until the watchdog.
    let wait = if frozen.is_some() { max_freeze } else { Duration::from_secs(600) };
    let deadline = tokio::time::Instant::now() + wait;
    let cut = loop {
        if let Some(s) = snaps.get_opt(&name).await?.and_then(|s| s.status) {
            if let Some(e) = s.error.as_ref().and_then(|e| e["message"].as_str().map(String::from)) {
                break Err(anyhow!("VolumeSnapshot {}/{name}: {e}", v.namespace));
            }
            if s.ready_to_use == Some(true) || s.creation_time.is_some() {
                break Ok(());
            }
        }
        if cancel.is_cancelled() {
            break Err(anyhow!("canceled: the VolumeBackup was deleted"));
        }
        if tokio::time::Instant::now() >= deadline {
            let why = if frozen.is_some() { " (spec.maxFreeze: the filesystem is not kept frozen longer)" } else { "" };
            break Err(anyhow!("VolumeSnapshot {}/{name} was not taken within {wait:?}{why}", v.namespace));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(f) = frozen {
        note_thaw(v, f.thaw(), false);
    }
    if let Err(e) = cut {
        // Not left behind in the application's namespace.
        let _ = snaps.delete(&name, &Default::default()).await;
        return Err(e);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(a.client.clone(), &v.namespace);
    let pvc = pvcs.get(&v.pvc).await?;
    let storage_class = pvc.spec.and_then(|s| s.storage_class_name).unwrap_or_default();
    let tags: BTreeMap<String, String> = tags(vb, v).into_iter().collect();
    let du = json!({"apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
        "metadata": {"name": name, "namespace": a.s.namespace,
                     "labels": {BACKUP_LABEL: super::label_value(&vb.name_any())},
                     "annotations": {TAGS_ANNOTATION: serde_json::to_string(&tags)?}},
        "spec": {"snapshotType": "CSI", "sourcePVC": v.pvc, "sourceNamespace": v.namespace,
                 "datamover": a.s.datamover, "backupStorageLocation": location(vb), "operationTimeout": "10m0s",
                 "csiSnapshot": {"volumeSnapshot": name, "storageClass": storage_class, "snapshotClass": class}}});
    let du: DataUpload = serde_json::from_value(du)?;
    let api: Api<DataUpload> = Api::namespaced(a.client.clone(), &a.s.namespace);
    match api.create(&PostParams::default(), &du).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
        Err(e) => return Err(e).context("creating the DataUpload"),
    }
    v.data_upload = Some(name);
    Ok(())
}

/// Deleted: forget the snapshots tagged with its uid, then release the finalizer.
async fn deleted(vb: &VolumeBackup, a: &Agent) -> Result<Requeue> {
    if !vb.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Requeue::await_change());
    }
    let uid = vb.uid().unwrap_or_default();
    // Work still under way would write snapshots after the forgetting: stop what has not
    // started, cancel the DataUploads, let running jobs end first.
    let st = vb.status.clone().unwrap_or_default();
    let mut waiting = false;
    for (key, v) in st.volumes.iter().filter(|(_, v)| !v.phase.is_terminal()) {
        let skipped = |why: &str| VolumeStatus {
            phase: VolumePhase::Skipped,
            message: Some(format!("the VolumeBackup was deleted {why}")),
            ..v.clone()
        };
        if v.node == a.s.node {
            if let Some(du) = &v.data_upload {
                let api: Api<DataUpload> = Api::namespaced(a.client.clone(), &a.s.namespace);
                let cancel = json!({"spec": {"cancel": true}});
                match api.patch(du, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(cancel)).await {
                    Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => {}
                    Err(e) => return Err(e).with_context(|| format!("canceling DataUpload {du}")),
                }
                patch_volume(a, vb, key, &skipped("(its DataUpload was canceled)")).await?;
            } else if super::jobs_running(a, &uid) {
                super::jobs_cancel(a, &uid);
                waiting = true;
            } else {
                patch_volume(a, vb, key, &skipped("before this volume was backed up")).await?;
            }
        } else if let Some(why) =
            super::orphaned(a, &v.node, v.phase == VolumePhase::Pending, st.start_timestamp.as_ref()).await
        {
            patch_volume(a, vb, key, &skipped(&format!("and {why}"))).await?;
        } else {
            // Its node's agent ends it.
            waiting = true;
        }
    }
    if waiting {
        return Ok(Requeue::requeue(Duration::from_secs(5)));
    }
    super::jobs_forget(a, &uid);
    let forgotten = crate::backups::forget_tagged(a, &location(vb), "volume-backup-uid", &uid).await.with_context(|| {
        format!(
            "forgetting the snapshots of VolumeBackup {} (retried; to give up, remove its finalizer {FINALIZER} by hand: \
             its snapshots then stay until forgotten with ferry forget --tag volume-backup-uid={uid})",
            vb.name_any()
        )
    })?;
    let rest: Vec<String> = vb.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if patch(a, vb, json!({"metadata": {"resourceVersion": vb.resource_version(), "finalizers": rest}})).await? {
        tracing::info!(backup = %vb.name_any(), "deleted; {forgotten} snapshots forgotten");
    }
    Ok(Requeue::await_change())
}
