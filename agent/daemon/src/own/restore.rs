//! The VolumeRestore controller, run by every agent: snapshots restored in place into existing
//! PVCs, by the agent of the node of the pod mounting each (Velero's fs-restore model: the pod
//! typically waits in its `restore-wait` init container).
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
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use serde_json::json;

use ferry_engine::podvolume;

use super::hooks::{self, OnError};
use super::types::{BackupPhase, RestoreVolumeStatus, VolumeBackup, VolumePhase, VolumeRestore};
use crate::agent::{Agent, Error};
use crate::snapshot_ref::SnapshotRef;

async fn patch(a: &Agent, vr: &VolumeRestore, p: serde_json::Value) -> Result<bool> {
    let api: Api<VolumeRestore> = Api::namespaced(a.client.clone(), &a.s.namespace);
    match api.patch(&vr.name_any(), &PatchParams::default(), &Patch::Merge(p)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
        Err(e) => Err(e).with_context(|| format!("patching VolumeRestore {}", vr.name_any())),
    }
}

async fn patch_volume(a: &Agent, vr: &VolumeRestore, key: &str, v: &RestoreVolumeStatus) -> Result<()> {
    patch(a, vr, json!({"status": {"volumes": {key: v}}})).await.map(drop)
}

pub async fn reconcile(vr: Arc<VolumeRestore>, a: Arc<Agent>) -> Result<Requeue, Error> {
    let phase = vr.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    let r = match phase {
        BackupPhase::New => start(&vr, &a).await,
        BackupPhase::InProgress => progress(&vr, &a).await,
        _ => Ok(Requeue::await_change()),
    };
    r.map_err(Error::from)
}

/// `(location, [(source namespace, pvc, snapshot reference)])` of the spec.
async fn sources(vr: &VolumeRestore, a: &Agent) -> Result<(String, Vec<(String, String, String)>), String> {
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
        let list = st
            .volumes
            .values()
            .filter(|v| v.phase == VolumePhase::Completed && ns_ok(&v.namespace))
            .filter_map(|v| Some((v.namespace.clone(), v.pvc.clone(), v.snapshot_id.clone()?)))
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
        .map(|((ns, pvc), (_, id))| (ns, pvc, SnapshotRef::new(repo.config(), id).to_string()))
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
    let rv = vr.resource_version().unwrap_or_default();
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
    let mut volumes = BTreeMap::new();
    for (src_ns, pvc, snapshot_id) in list {
        let ns = vr.spec.namespace_mapping.get(&src_ns).cloned().unwrap_or_else(|| src_ns.clone());
        let mut v = RestoreVolumeStatus {
            source_namespace: src_ns,
            namespace: ns.clone(),
            pvc: pvc.clone(),
            snapshot_id,
            ..Default::default()
        };
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(a.client.clone(), &ns);
        if claims.get_opt(&pvc).await?.is_none() {
            v.phase = VolumePhase::Failed;
            v.message = Some(format!(
                "the target PVC {ns}/{pvc} does not exist: a VolumeRestore restores into existing claims \
                 (create it, or restore through Velero)"
            ));
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
    for (key, v) in &st.volumes {
        if v.node != a.s.node || v.phase.is_terminal() {
            continue;
        }
        let job = format!("{uid}/{key}");
        if !a.own_jobs.lock().expect("own jobs lock").insert(job) {
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

/// Restore one volume here; its final entry.
async fn restore_volume(vr: &VolumeRestore, a: &Agent, mut v: RestoreVolumeStatus) -> Result<RestoreVolumeStatus> {
    let pod_name = v.pod.clone().ok_or_else(|| anyhow!("no pod mounts it"))?;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), &v.namespace);
    let pod = pods.get(&pod_name).await.with_context(|| format!("reading pod {}/{pod_name}", v.namespace))?;
    let volume = mounting(std::slice::from_ref(&pod), &v.pvc).map(|m| m.1);
    let spec = super::backup::pod_volume(a, &pod, &v.namespace, &v.pvc, volume.as_deref()).await?;
    let sref: SnapshotRef = v.snapshot_id.parse().context("snapshotID")?;
    let location = match &vr.spec.backup {
        Some(b) => {
            let api: Api<VolumeBackup> = Api::namespaced(a.client.clone(), &a.s.namespace);
            let vb = api.get_opt(b).await?;
            vr.spec.location.clone().or(vb.and_then(|vb| vb.spec.location)).unwrap_or_else(|| "default".into())
        }
        None => vr.spec.location.clone().unwrap_or_else(|| "default".into()),
    };
    let repo = a.repos.get(&location).await?;
    sref.check(repo.config(), &location)?;
    let filter = ferry_engine::restore::Filter::parse(&vr.spec.include_paths, &vr.spec.exclude_paths)?;
    let _slot = a.own_slot().await;
    let job = ferry_engine::Job {
        limits: ferry_engine::job::Limits {
            threads: a.s.threads,
            chunk_queue: a.s.threads * 2,
            memory: Some(a.budget()),
        },
        ..Default::default()
    };
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
