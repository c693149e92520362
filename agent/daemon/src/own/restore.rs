//! The VolumeRestore controller, run by every agent: snapshots restored in place into existing
//! PVCs, by the agent of the node of the pod mounting each (Velero's fs-restore model: the pod
//! typically waits in its `restore-wait` init container).
//!
//! With `target: New`, the claims are created instead (class, size and mode as the backup
//! recorded them, or from the spec), each with Velero's `velero.io/dynamic-pv-restore`
//! selector so no provisioner binds it, and a DataDownload per claim fills a new volume and
//! hands it over, exactly as for Velero; the selecting agent creates them and follows them.
//!
//! 1. `New`: one agent (exclusively) finds the sources — the completed volumes of
//!    `spec.backup`, or the newest snapshot of each (namespace, pvc) carrying `spec.tags` —,
//!    maps their namespaces, finds each target claim and the pod mounting it, and writes
//!    `InProgress` with one entry per volume (or `Failed`, naming the field).
//! 2. Each agent restores its node's entries (`include`/`exclude` path globs applied), writes
//!    Velero's restore-wait mark `<volume>/.velero/<restore uid>`, then runs the pod's
//!    `post.hook.restore.velero.io` hook once its container runs (or is ready).
//! 3. Once every entry has ended, one agent writes the phase.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use serde_json::json;

use ferry_engine::podvolume;

use super::hooks::{self, OnError};
use super::types::{BackupPhase, RestoreVolumeStatus, VolumeBackup, VolumePhase, VolumeRestore};
use crate::agent::{Agent, Error};
use crate::snapshot_ref::SnapshotRef;
use crate::types::{DataDownload, Phase};

/// Label on what a VolumeRestore creates (new claims, DataDownloads): its name.
pub const RESTORE_LABEL: &str = "ferry.dev/volume-restore";

async fn patch(a: &Agent, vr: &VolumeRestore, p: serde_json::Value) -> Result<bool> {
    super::patch(a, vr, p).await
}

async fn patch_volume(a: &Agent, vr: &VolumeRestore, key: &str, v: &RestoreVolumeStatus) -> Result<()> {
    let mut v = v.clone();
    super::bound_notes(&mut v.message, &mut v.warnings);
    patch(a, vr, json!({"status": {"volumes": {key: v}}})).await.map(drop)
}

pub async fn reconcile(vr: Arc<VolumeRestore>, a: Arc<Agent>) -> Result<Requeue, Error> {
    let phase = vr.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    let r = match phase {
        BackupPhase::New => start(&vr, &a).await,
        BackupPhase::InProgress => progress(&vr, &a).await,
        _ => {
            super::jobs_forget(&a, &vr.uid().unwrap_or_default());
            Ok(Requeue::await_change())
        }
    };
    r.map_err(Error::from)
}

/// One volume to restore, as the backup recorded it.
#[derive(Debug, Clone, Default)]
struct Source {
    namespace: String,
    pvc: String,
    snapshot_id: String,
    storage_class: Option<String>,
    size: Option<String>,
    volume_mode: Option<String>,
}

/// `(location, sources)` of the spec.
async fn sources(vr: &VolumeRestore, a: &Agent) -> Result<(String, Vec<Source>), String> {
    let spec = &vr.spec;
    let ns_ok = |ns: &str| {
        let inc = &spec.included_namespaces;
        (inc.is_empty() || inc.iter().any(|i| i == "*" || i == ns)) && !spec.excluded_namespaces.iter().any(|e| e == ns)
    };
    if let Some(name) = &spec.backup {
        let api: Api<VolumeBackup> = Api::namespaced(a.client.clone(), &a.s.namespace);
        let vb = api
            .get_opt(name)
            .await
            .map_err(|e| format!("spec.backup {name:?}: {e}"))?
            .ok_or_else(|| format!("spec.backup {name:?}: no such VolumeBackup in {}", a.s.namespace))?;
        let location = spec.location.clone().or(vb.spec.location.clone()).unwrap_or_else(|| "default".into());
        let st = vb.status.unwrap_or_default();
        let phase = st.phase.unwrap_or_default();
        if !phase.is_terminal() {
            return Err(format!("spec.backup {name:?}: the VolumeBackup is {phase:?}; restore it once it has ended"));
        }
        let list = st
            .volumes
            .values()
            .filter(|v| v.phase == VolumePhase::Completed && ns_ok(&v.namespace))
            .filter_map(|v| {
                Some(Source {
                    namespace: v.namespace.clone(),
                    pvc: v.pvc.clone(),
                    snapshot_id: v.snapshot_id.clone()?,
                    storage_class: v.storage_class.clone(),
                    size: v.size.clone(),
                    volume_mode: v.volume_mode.clone(),
                })
            })
            .collect();
        return Ok((location, list));
    }
    if spec.tags.is_empty() {
        return Err("spec.backup or spec.tags: one is required".into());
    }
    let location = spec.location.clone().unwrap_or_else(|| "default".into());
    let repo = a.repos.get(&location).await.map_err(|e| format!("spec.location {location:?}: {e:#}"))?;
    let snaps = repo.snapshots().await.map_err(|e| format!("listing the snapshots of {location:?}: {e:#}"))?;
    let mut newest: BTreeMap<(String, String), (i64, repo_format::SnapshotId)> = BTreeMap::new();
    for (id, s) in &snaps {
        if !spec.tags.iter().all(|(k, v)| s.tag(k) == Some(v.as_str())) {
            continue;
        }
        let (Some(ns), Some(pvc)) = (s.tag("namespace"), s.tag("pvc")) else { continue };
        if !ns_ok(ns) {
            continue;
        }
        let e = newest.entry((ns.to_string(), pvc.to_string())).or_insert((s.time_ns, *id));
        if s.time_ns > e.0 {
            *e = (s.time_ns, *id);
        }
    }
    let list = newest
        .into_iter()
        .map(|((namespace, pvc), (_, id))| Source {
            namespace,
            pvc,
            snapshot_id: SnapshotRef::new(repo.config(), id).to_string(),
            ..Default::default()
        })
        .collect();
    Ok((location, list))
}

/// The running pod of `ns` mounting claim `pvc`, and its volume's name.
fn mounting(pods: &[Pod], pvc: &str) -> Option<(String, String, String)> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .find_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let vol = p
                .spec
                .as_ref()?
                .volumes
                .iter()
                .flatten()
                .find(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == pvc))?;
            Some((p.name_any(), vol.name.clone(), node))
        })
}

async fn start(vr: &VolumeRestore, a: &Agent) -> Result<Requeue> {
    // One agent finds the sources and targets.
    let Some(rv) = super::claim(a, vr).await? else { return Ok(Requeue::requeue(Duration::from_secs(5))) };
    let fail = |msg: String| {
        json!({"metadata": {"resourceVersion": rv},
               "status": {"phase": "Failed", "message": msg, "completionTimestamp": crate::transfer::now()}})
    };
    if let Err(e) = ferry_engine::restore::Filter::parse(&vr.spec.include_paths, &vr.spec.exclude_paths) {
        patch(a, vr, fail(format!("spec.includePaths/excludePaths: {e:#}"))).await?;
        return Ok(Requeue::await_change());
    }
    let (_, list) = match sources(vr, a).await {
        Ok(s) => s,
        Err(msg) => {
            patch(a, vr, fail(msg)).await?;
            return Ok(Requeue::await_change());
        }
    };
    if list.is_empty() {
        patch(a, vr, fail("nothing to restore: no completed volume matches the spec".into())).await?;
        return Ok(Requeue::await_change());
    }
    let new = match vr.spec.target.as_deref() {
        None | Some("Existing") => false,
        Some("New") => true,
        Some(o) => {
            patch(a, vr, fail(format!("spec.target: {o:?} is neither Existing nor New"))).await?;
            return Ok(Requeue::await_change());
        }
    };
    let mut volumes = BTreeMap::new();
    for src in list {
        let pvc = src.pvc.clone();
        let ns = vr.spec.namespace_mapping.get(&src.namespace).cloned().unwrap_or_else(|| src.namespace.clone());
        let mut v = RestoreVolumeStatus {
            source_namespace: src.namespace.clone(),
            namespace: ns.clone(),
            pvc: pvc.clone(),
            snapshot_id: src.snapshot_id.clone(),
            ..Default::default()
        };
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(a.client.clone(), &ns);
        let exists = claims.get_opt(&pvc).await?.is_some();
        if new {
            v.storage_class = vr.spec.storage_class_name.clone().or(src.storage_class);
            v.size = vr.spec.size.clone().or(src.size);
            v.volume_mode = src.volume_mode;
            // The objects are created by this agent, once it won the write below.
            v.node = a.s.node.clone();
            if exists {
                v.phase = VolumePhase::Failed;
                v.message = Some(format!(
                    "{ns}/{pvc} exists: target New creates its claims (target Existing restores into this one)"
                ));
            } else if v.size.is_none() {
                v.phase = VolumePhase::Failed;
                v.message = Some(format!("spec.size: needed to create {ns}/{pvc} (its backup did not record a size)"));
            }
        } else if !exists {
            v.phase = VolumePhase::Failed;
            v.message =
                Some(format!("the target PVC {ns}/{pvc} does not exist: create it, or restore with target New"));
        } else {
            let pods = Api::<Pod>::namespaced(a.client.clone(), &ns).list(&ListParams::default()).await?.items;
            match mounting(&pods, &pvc) {
                Some((pod, _, node)) => {
                    v.pod = Some(pod);
                    v.node = node;
                }
                None => {
                    v.phase = VolumePhase::Failed;
                    v.message =
                        Some(format!("no pod scheduled to a node mounts {ns}/{pvc}: nothing can write into it"));
                }
            }
        }
        volumes.insert(format!("{ns}/{pvc}"), v);
    }
    let p = json!({"metadata": {"resourceVersion": rv},
                   "status": {"phase": "InProgress", "startTimestamp": crate::transfer::now(), "volumes": volumes}});
    patch(a, vr, p).await?;
    Ok(Requeue::requeue(Duration::from_millis(200)))
}

async fn progress(vr: &Arc<VolumeRestore>, a: &Arc<Agent>) -> Result<Requeue> {
    let st = vr.status.clone().unwrap_or_default();
    let uid = vr.uid().unwrap_or_default();
    let new = vr.spec.target.as_deref() == Some("New");
    for (i, (key, v)) in st.volumes.iter().enumerate() {
        if v.phase.is_terminal() {
            continue;
        }
        if v.node != a.s.node {
            let pending = v.phase == VolumePhase::Pending;
            if let Some(why) = super::orphaned(a, &v.node, pending, st.start_timestamp.as_ref()).await {
                let failed = RestoreVolumeStatus { phase: VolumePhase::Failed, message: Some(why), ..v.clone() };
                patch_volume(a, vr, key, &failed).await?;
            }
            continue;
        }
        if new {
            let out = match &v.data_download {
                None => download(vr, a, i, v).await,
                Some(dd) => follow_download(a, dd, v).await,
            };
            let out = out.unwrap_or_else(|e| RestoreVolumeStatus {
                phase: VolumePhase::Failed,
                message: Some(format!("{e:#}")),
                ..v.clone()
            });
            if out != *v {
                patch_volume(a, vr, key, &out).await?;
            }
            continue;
        }
        let job = format!("{uid}/{key}");
        if super::job_start(a, &job).is_none() {
            continue;
        }
        let (vr, a, key, v) = (vr.clone(), a.clone(), key.clone(), v.clone());
        tokio::spawn(async move {
            let mut out = v.clone();
            out.phase = VolumePhase::InProgress;
            let _ = patch_volume(&a, &vr, &key, &out).await;
            let run = tokio::spawn({
                let (vr, a, v) = (vr.clone(), a.clone(), v.clone());
                async move { restore_volume(&vr, &a, v).await }
            });
            let end = match run.await.map_err(|e| anyhow!("the job panicked: {e}")).and_then(|r| r) {
                Ok(done) => done,
                Err(e) => RestoreVolumeStatus { phase: VolumePhase::Failed, message: Some(format!("{e:#}")), ..v },
            };
            if let Err(e) = patch_volume(&a, &vr, &key, &end).await {
                tracing::error!(restore = %vr.name_any(), "writing the end of {key}: {e:#}");
            }
            super::job_end(&a, &job);
        });
    }
    if st.volumes.values().all(|v| v.phase.is_terminal()) {
        let count = |p: VolumePhase| st.volumes.values().filter(|v| v.phase == p).count();
        let (done, failed) = (count(VolumePhase::Completed), count(VolumePhase::Failed));
        let phase = match (done, failed) {
            (_, 0) => BackupPhase::Completed,
            (0, _) => BackupPhase::Failed,
            _ => BackupPhase::PartiallyFailed,
        };
        let p = json!({"metadata": {"resourceVersion": vr.resource_version()},
                       "status": {"phase": phase, "completionTimestamp": crate::transfer::now(),
                                  "message": format!("{done} volumes restored, {failed} failed")}});
        patch(a, vr, p).await?;
        return Ok(Requeue::await_change());
    }
    Ok(Requeue::requeue(Duration::from_secs(5)))
}

/// A new claim for `v` (with Velero's restore selector, so nothing else binds it) and the
/// DataDownload that fills it; the entry, InProgress.
async fn download(vr: &VolumeRestore, a: &Agent, index: usize, v: &RestoreVolumeStatus) -> Result<RestoreVolumeStatus> {
    let uid8: String = vr.uid().unwrap_or_default().chars().take(8).collect();
    let selector = format!("ferry-{uid8}-{index}");
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": v.pvc, "namespace": v.namespace, "labels": {RESTORE_LABEL: super::label_value(&vr.name_any())}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": v.storage_class,
                 "volumeMode": v.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
                 "resources": {"requests": {"storage": v.size}},
                 "selector": {"matchLabels": {"velero.io/dynamic-pv-restore": selector}}}});
    let claim: PersistentVolumeClaim = serde_json::from_value(claim)?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(a.client.clone(), &v.namespace);
    match claims.create(&PostParams::default(), &claim).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
        Err(e) => return Err(e).with_context(|| format!("creating the claim {}/{}", v.namespace, v.pvc)),
    }
    let location = location(vr, a).await?;
    let name: String = format!("{}-{}-{uid8}", vr.name_any(), v.pvc).chars().take(240).collect();
    let dd = json!({"apiVersion": "velero.io/v2alpha1", "kind": "DataDownload",
        "metadata": {"name": name, "namespace": a.s.namespace, "labels": {RESTORE_LABEL: super::label_value(&vr.name_any())}},
        "spec": {"targetVolume": {"pvc": v.pvc, "namespace": v.namespace, "pv": ""},
                 "backupStorageLocation": location, "datamover": a.s.datamover, "snapshotID": v.snapshot_id,
                 "sourceNamespace": v.source_namespace, "operationTimeout": "10m0s"}});
    let dd: DataDownload = serde_json::from_value(dd)?;
    let api: Api<DataDownload> = Api::namespaced(a.client.clone(), &a.s.namespace);
    match api.create(&PostParams::default(), &dd).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
        Err(e) => return Err(e).context("creating the DataDownload"),
    }
    Ok(RestoreVolumeStatus { phase: VolumePhase::InProgress, data_download: Some(name), ..v.clone() })
}

/// A new claim's DataDownload: its end copied into the entry.
async fn follow_download(a: &Agent, name: &str, v: &RestoreVolumeStatus) -> Result<RestoreVolumeStatus> {
    let api: Api<DataDownload> = Api::namespaced(a.client.clone(), &a.s.namespace);
    let mut v = v.clone();
    let Some(dd) = api.get_opt(name).await? else {
        v.phase = VolumePhase::Failed;
        v.message = Some(format!("DataDownload {name} was deleted"));
        return Ok(v);
    };
    let s = dd.status.unwrap_or_default();
    match s.phase.unwrap_or_default() {
        Phase::Completed => {
            v.phase = VolumePhase::Completed;
            v.bytes = s.progress.and_then(|p| p.bytes_done).map(|b| b as u64);
        }
        Phase::Failed | Phase::Canceled => {
            v.phase = VolumePhase::Failed;
            v.message = Some(format!("DataDownload {name}: {}", s.message.unwrap_or_default()));
        }
        _ => return Ok(v),
    }
    // Ended: its result is in the entry, and the DataDownload has served.
    match api.delete(name, &Default::default()).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => {}
        Err(e) => tracing::warn!("deleting DataDownload {name}: {e}"),
    }
    Ok(v)
}

/// The location of `vr`'s snapshots: its own, else its backup's, else `default`.
async fn location(vr: &VolumeRestore, a: &Agent) -> Result<String> {
    if let Some(l) = &vr.spec.location {
        return Ok(l.clone());
    }
    if let Some(b) = &vr.spec.backup {
        let api: Api<VolumeBackup> = Api::namespaced(a.client.clone(), &a.s.namespace);
        if let Some(l) = api.get_opt(b).await?.and_then(|vb| vb.spec.location) {
            return Ok(l);
        }
    }
    Ok("default".into())
}

/// Restore one volume here; its final entry.
async fn restore_volume(vr: &VolumeRestore, a: &Agent, mut v: RestoreVolumeStatus) -> Result<RestoreVolumeStatus> {
    let pod_name = v.pod.clone().ok_or_else(|| anyhow!("no pod mounts it"))?;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &v.namespace);
    let pod = pods.get(&pod_name).await.with_context(|| format!("reading pod {}/{pod_name}", v.namespace))?;
    let volume = mounting(std::slice::from_ref(&pod), &v.pvc).map(|m| m.1);
    let spec = super::backup::pod_volume(a, &pod, &v.namespace, &v.pvc, volume.as_deref()).await?;
    let sref: SnapshotRef = v.snapshot_id.parse().context("snapshotID")?;
    let location = location(vr, a).await?;
    let repo = a.repos.get(&location).await?;
    sref.check(repo.config(), &location)?;
    let filter = ferry_engine::restore::Filter::parse(&vr.spec.include_paths, &vr.spec.exclude_paths)?;
    let _slot = a.own_slot().await;
    let job = ferry_engine::Job { limits: a.limits(), ..Default::default() };
    let out = podvolume::restore(repo, &sref.snapshot, &spec, &filter, &job).await?;
    if !out.errors.is_empty() {
        anyhow::bail!("{} entries could not be restored, first: {}", out.errors.len(), out.errors[0]);
    }
    v.bytes = Some(out.bytes_written);
    v.files = Some(out.files);
    // Velero's restore-wait protocol: the pod's init container waits for this mark.
    if let podvolume::PodVolume::Filesystem(dir) = podvolume::resolve(&spec)? {
        podvolume::write_restore_mark(&dir, &vr.uid().unwrap_or_default()).context("writing the restore-wait mark")?;
    }
    v.phase = VolumePhase::Completed;
    if let Some(h) = hooks::restore_hook(&pod)? {
        if !hooks::wait_container(&pods, &pod_name, &h).await? {
            let note = format!(
                "container {} did not become {} within {:?}",
                h.hook.container,
                if h.wait_for_ready { "ready" } else { "running" },
                h.wait_timeout
            );
            if h.hook.on_error == OnError::Fail {
                v.phase = VolumePhase::Failed;
                v.message = Some(format!("post-restore hook: {note}"));
            } else {
                v.warnings.push(format!("post-restore hook skipped: {note}"));
            }
            return Ok(v);
        }
        let ran = hooks::run(&pods, &pod_name, &h.hook).await;
        tracing::info!(restore = %vr.name_any(), "post-restore hook: {}", ran.note);
        if !ran.ok {
            if h.hook.on_error == OnError::Fail {
                v.phase = VolumePhase::Failed;
                v.message = Some(format!("post-restore hook failed (on-error Fail): {}", ran.note));
            } else {
                v.warnings.push(format!("post-restore hook failed (on-error Continue): {}", ran.note));
            }
        }
    }
    Ok(v)
}
