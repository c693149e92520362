//! Exposing a volume to the agent, and removing what was exposed.
//!
//! Backup (a DataUpload): the CSI snapshot in the source namespace is moved into the Velero
//! namespace the way Velero's own exposer does it: a new VolumeSnapshotContent on the same
//! snapshot handle (deletion policy `Delete`: it disposes of the storage snapshot when it goes)
//! and a VolumeSnapshot bound to it; the source content is set to `Retain` and both source
//! objects are deleted. A PVC is cloned from the new snapshot and a mover pod mounts it, so
//! kubelet mounts the clone on the node where the pod runs, under `<host pods>/<pod uid>/`.
//!
//! Restore (a DataDownload): a PVC like the target PVC (class, size, mode) and a mover pod that
//! mounts it read-write; after the data is in, the PV is handed to the target PVC
//! (`rebind`).
//!
//! Every object made here carries the label `ferry.dev/owner-uid` = the DataUpload's or
//! DataDownload's uid (and an owner reference where the scopes allow), so `cleanup` finds
//! them from any node, after any restart.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::machine::Mover;
use crate::types::{VolumeSnapshot, VolumeSnapshotContent};

/// The label that ties an exposed object to its DataUpload/DataDownload.
pub const OWNER_LABEL: &str = "ferry.dev/owner-uid";
/// The label of mover pods (`upload` or `download`): the agent watches pods with it.
pub const MOVER_LABEL: &str = "ferry.dev/mover";
/// The Velero namespace an exposed object belongs to: snapshot contents are cluster-scoped,
/// and another install (OADP's multi-instance) must never sweep this one's.
pub const NAMESPACE_LABEL: &str = "ferry.dev/namespace";
/// How old an exposed object must be before the sweep may remove it: an object exposed
/// between the sweep's two listings is not mistaken for a leftover.
const SWEEP_MIN_AGE_S: i64 = 600;
/// Annotation of the moved VolumeSnapshot: the source snapshot's restore size.
const SIZE_ANNOTATION: &str = "ferry.dev/restore-size";
/// PV annotation keeping the reclaim policy while the PV is held at `Retain`.
const RECLAIM_ANNOTATION: &str = "ferry.dev/reclaim-policy";

/// What a mover exposes for, and the object it belongs to.
#[derive(Debug, Clone)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    /// The Velero namespace, where the exposed objects live.
    pub namespace: String,
    /// `upload` or `download`.
    pub direction: &'static str,
}

impl Owner {
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K, direction: &'static str) -> Result<Owner> {
        Ok(Owner {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            name: obj.meta().name.clone().ok_or_else(|| anyhow!("object without a name"))?,
            uid: obj.meta().uid.clone().ok_or_else(|| anyhow!("object without a uid"))?,
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            direction,
        })
    }

    /// Name of every exposed object: `ferry-<owner name>` (owner names are unique in the
    /// namespace; a name too long for a label is cut and made unique by the uid).
    pub fn object_name(&self) -> String {
        let name = format!("ferry-{}", self.name);
        if name.len() <= 63 {
            return name;
        }
        format!("ferry-{}-{}", &self.name[..40], &self.uid[..8.min(self.uid.len())])
    }

    fn metadata(&self, cluster_scoped: bool) -> serde_json::Value {
        let mut m = json!({
            "name": self.object_name(),
            "labels": { OWNER_LABEL: self.uid, MOVER_LABEL: self.direction, NAMESPACE_LABEL: self.namespace },
        });
        if !cluster_scoped {
            m["namespace"] = json!(self.namespace);
            m["ownerReferences"] = json!([{
                "apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": true,
            }]);
        }
        m
    }
}

/// Settings of the objects made here.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// The mover pod's image (the agent's own) and command: it only holds the volume.
    pub image: String,
    pub command: Vec<String>,
    /// Mount backup clones read-only in the pod.
    pub read_only: bool,
}

/// Create `obj` unless an object of that name exists (expose is idempotent).
async fn create<K>(api: &Api<K>, obj: serde_json::Value) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).context("building an object")?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The mover pod for `claim`, mounting it at `/data` (filesystem) or `/dev/ferry-data` (block).
fn mover_pod(owner: &Owner, claim: &str, block: bool, read_only: bool, s: &PodSettings) -> serde_json::Value {
    let mut container = json!({
        "name": "mover", "image": s.image, "command": s.command,
        "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}},
    });
    if block {
        container["volumeDevices"] = json!([{"name": "data", "devicePath": "/dev/ferry-data"}]);
    } else {
        container["volumeMounts"] = json!([{"name": "data", "mountPath": "/data", "readOnly": read_only}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": owner.metadata(false),
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only && !block}}],
        }
    })
}

/// What a DataUpload's exposure needs from its source.
#[derive(Debug, Clone)]
pub struct UploadSource {
    pub namespace: String,
    pub pvc: String,
    pub volume_snapshot: String,
    pub storage_class: String,
}

/// Expose a DataUpload's snapshot. `Ok(false)`: the source snapshot is not ready yet.
pub async fn expose_upload(client: &Client, owner: &Owner, src: &UploadSource, s: &PodSettings) -> Result<bool> {
    let name = owner.object_name();
    let ns = &owner.namespace;
    let vs_api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    let vsc_api: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let src_api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &src.namespace);
    let source = src_api.get_opt(&src.volume_snapshot).await?;
    // The source's size: the clone may not be smaller than the snapshot.
    let mut size = source.as_ref().and_then(|v| v.status.as_ref()).and_then(|s| s.restore_size.clone()).map(|q| q.0);
    if vs_api.get_opt(&name).await?.is_none() {
        let vs = source.clone().ok_or_else(|| {
            anyhow!(
                "VolumeSnapshot {}/{} (spec.csiSnapshot.volumeSnapshot) not found",
                src.namespace,
                src.volume_snapshot
            )
        })?;
        let st = vs.status.clone().unwrap_or_default();
        if let Some(err) = st.error.as_ref().filter(|e| !e.is_null()) {
            bail!("VolumeSnapshot {}/{} failed: {err}", src.namespace, src.volume_snapshot);
        }
        let Some(content) = st.bound_volume_snapshot_content_name.filter(|_| st.ready_to_use == Some(true)) else {
            return Ok(false);
        };
        let vsc = vsc_api.get_opt(&content).await?.ok_or_else(|| {
            anyhow!(
                "VolumeSnapshotContent {content} of VolumeSnapshot {}/{} not found",
                src.namespace,
                src.volume_snapshot
            )
        })?;
        let handle = vsc
            .status
            .as_ref()
            .and_then(|s| s.snapshot_handle.clone())
            .or(vsc.spec.source.snapshot_handle.clone())
            .ok_or_else(|| anyhow!("VolumeSnapshotContent {content} has no snapshot handle yet"))?;
        let mut meta = owner.metadata(true);
        meta["name"] = json!(name);
        create(
            &vsc_api,
            json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": meta,
                "spec": {
                    "deletionPolicy": "Delete", "driver": vsc.spec.driver,
                    "source": {"snapshotHandle": handle},
                    "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                          "namespace": ns, "name": name},
                    "volumeSnapshotClassName": vsc.spec.volume_snapshot_class_name,
                    "sourceVolumeMode": vsc.spec.source_volume_mode,
                }
            }),
        )
        .await?;
        let mut vs_meta = owner.metadata(false);
        if let Some(q) = &size {
            // Kept for a retry after the source is gone.
            vs_meta["annotations"] = json!({SIZE_ANNOTATION: q});
        }
        create(
            &vs_api,
            json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": vs_meta,
                "spec": {"source": {"volumeSnapshotContentName": name},
                         "volumeSnapshotClassName": vs.spec.volume_snapshot_class_name},
            }),
        )
        .await?;
    }
    // The storage snapshot now belongs to the new content: the source objects go, their
    // content kept at `Retain` first (also after a crash between the steps above and here).
    if let Some(vs) = &source {
        if let Some(content) = vs.status.as_ref().and_then(|s| s.bound_volume_snapshot_content_name.clone()) {
            let retain = Patch::Merge(json!({"spec": {"deletionPolicy": "Retain"}}));
            ignore_absent(vsc_api.patch(&content, &PatchParams::default(), &retain).await)?;
            ignore_absent(src_api.delete(&src.volume_snapshot, &DeleteParams::default()).await.map(|_| ()))?;
            ignore_absent(vsc_api.delete(&content, &DeleteParams::default()).await.map(|_| ()))?;
        } else {
            ignore_absent(src_api.delete(&src.volume_snapshot, &DeleteParams::default()).await.map(|_| ()))?;
        }
    }
    let moved = vs_api.get(&name).await?;
    if size.is_none() {
        size = moved.annotations().get(SIZE_ANNOTATION).cloned();
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &src.namespace);
    let source = pvcs
        .get_opt(&src.pvc)
        .await?
        .ok_or_else(|| anyhow!("PersistentVolumeClaim {}/{} (spec.sourcePVC) not found", src.namespace, src.pvc))?;
    let sspec = source.spec.unwrap_or_default();
    let block = sspec.volume_mode.as_deref() == Some("Block");
    let size = size
        .or_else(|| moved.status.and_then(|s| s.restore_size).map(|q| q.0))
        .or_else(|| sspec.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").map(|q| q.0.clone())))
        .ok_or_else(|| anyhow!("neither the snapshot nor PVC {}/{} gives a size", src.namespace, src.pvc))?;
    let access = if s.read_only { "ReadOnlyMany" } else { "ReadWriteOnce" };
    create(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": owner.metadata(false),
            "spec": {
                "accessModes": [access],
                "storageClassName": src.storage_class,
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "resources": {"requests": {"storage": size}},
                "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name},
            }
        }),
    )
    .await?;
    create(&Api::<Pod>::namespaced(client.clone(), ns), mover_pod(owner, &name, block, true, s)).await?;
    Ok(true)
}

/// Expose a restore volume like the target PVC `namespace/pvc`.
pub async fn expose_download(
    client: &Client,
    owner: &Owner,
    namespace: &str,
    pvc: &str,
    s: &PodSettings,
) -> Result<()> {
    let name = owner.object_name();
    let target = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get_opt(pvc)
        .await?
        .ok_or_else(|| anyhow!("PersistentVolumeClaim {namespace}/{pvc} (spec.targetVolume) not found"))?;
    let spec = target.spec.unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let size =
        spec.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").map(|q| q.0.clone())).ok_or_else(
            || anyhow!("PersistentVolumeClaim {namespace}/{pvc}: spec.resources.requests.storage missing"),
        )?;
    create(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &owner.namespace),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": owner.metadata(false),
            "spec": {
                "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "storageClassName": spec.storage_class_name,
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "resources": {"requests": {"storage": size}},
            }
        }),
    )
    .await?;
    create(&Api::<Pod>::namespaced(client.clone(), &owner.namespace), mover_pod(owner, &name, block, false, s)).await
}

/// The mover pod's state, and its uid and the PV of its claim once it runs.
pub async fn mover(client: &Client, owner: &Owner) -> Result<(Mover, Option<Pod>)> {
    let pod = Api::<Pod>::namespaced(client.clone(), &owner.namespace).get_opt(&owner.object_name()).await?;
    let Some(pod) = pod else { return Ok((Mover::Absent, None)) };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok((Mover::Broken("it is being deleted".into()), Some(pod)));
    }
    let status = pod.status.clone().unwrap_or_default();
    let state = match status.phase.as_deref() {
        Some("Running") => match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => Mover::Running { node },
            None => Mover::Pending,
        },
        Some("Failed") | Some("Succeeded") => Mover::Broken(format!(
            "pod {}/{} is {}{}",
            owner.namespace,
            owner.object_name(),
            status.phase.unwrap_or_default(),
            status.message.map(|m| format!(": {m}")).unwrap_or_default()
        )),
        _ => match waiting_for_good(&status) {
            Some(why) => Mover::Broken(format!("pod {}/{}: {why}", owner.namespace, owner.object_name())),
            None => Mover::Pending,
        },
    };
    Ok((state, Some(pod)))
}

/// An upload that ends without moving the snapshot (failed or canceled before its exposure)
/// disposes of the source VolumeSnapshot Velero made for it, as Velero's own mover does: the
/// snapshot exists only for this backup. Its content follows its own deletion policy.
pub async fn dispose_source(client: &Client, namespace: &str, volume_snapshot: &str) -> Result<()> {
    if volume_snapshot.is_empty() {
        return Ok(());
    }
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    ignore_absent(api.delete(volume_snapshot, &DeleteParams::default()).await.map(|_| ()))
}

/// Why a pending pod will not run without someone's help: an image that cannot be pulled,
/// a container crashing, or no node to schedule it on.
fn waiting_for_good(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    const STUCK: [&str; 5] =
        ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError"];
    for c in status.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            if let Some(r) = w.reason.as_deref().filter(|r| STUCK.contains(r)) {
                return Some(format!("{r}{}", w.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()));
            }
        }
    }
    None
}

/// The PV bound to the mover's claim.
pub async fn claim_volume(client: &Client, owner: &Owner) -> Result<String> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &owner.namespace)
        .get(&owner.object_name())
        .await
        .with_context(|| format!("reading PersistentVolumeClaim {}/{}", owner.namespace, owner.object_name()))?;
    pvc.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()).ok_or_else(|| {
        anyhow!("PersistentVolumeClaim {}/{} is not bound to a volume", owner.namespace, owner.object_name())
    })
}

fn ignore_absent<T>(r: Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Delete every object exposed for `uid`: pods, claims and snapshots in `namespace`, snapshot
/// contents in the cluster. Returns how many were deleted.
pub async fn cleanup(client: &Client, namespace: &str, uid: &str) -> Result<usize> {
    let lp = ListParams::default().labels(&format!("{OWNER_LABEL}={uid},{NAMESPACE_LABEL}={namespace}"));
    let dp = DeleteParams::background();
    let mut n = 0;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for p in pods.list(&lp).await?.items {
        ignore_absent(pods.delete(&p.name_any(), &dp).await)?;
        n += 1;
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    for p in pvcs.list(&lp).await?.items {
        ignore_absent(pvcs.delete(&p.name_any(), &dp).await)?;
        n += 1;
    }
    let vss: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    for v in vss.list(&lp).await?.items {
        ignore_absent(vss.delete(&v.name_any(), &dp).await)?;
        n += 1;
    }
    let vscs: Api<VolumeSnapshotContent> = Api::all(client.clone());
    for v in vscs.list(&lp).await?.items {
        ignore_absent(vscs.delete(&v.name_any(), &dp).await)?;
        n += 1;
    }
    Ok(n)
}

/// The owner uids of the exposed objects of this namespace that are older than
/// `SWEEP_MIN_AGE_S` (the sweep compares them with the live transfers; younger ones may belong
/// to a transfer created after it listed them).
pub async fn owners(client: &Client, namespace: &str) -> Result<std::collections::HashSet<String>> {
    let lp = ListParams::default().labels(&format!("{OWNER_LABEL},{NAMESPACE_LABEL}={namespace}"));
    let now = k8s_openapi::chrono::Utc::now();
    let mut young = std::collections::HashSet::new();
    let mut out = std::collections::HashSet::new();
    let mut add = |meta: &kube::api::ObjectMeta| {
        let Some(uid) = meta.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)) else { return };
        let age = meta.creation_timestamp.as_ref().map(|t| (now - t.0).num_seconds()).unwrap_or(0);
        if age < SWEEP_MIN_AGE_S {
            young.insert(uid.clone());
        }
        out.insert(uid.clone());
    };
    for p in Api::<Pod>::namespaced(client.clone(), namespace).list(&lp).await?.items {
        add(&p.metadata);
    }
    for p in Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace).list(&lp).await?.items {
        add(&p.metadata);
    }
    for v in Api::<VolumeSnapshot>::namespaced(client.clone(), namespace).list(&lp).await?.items {
        add(&v.metadata);
    }
    for v in Api::<VolumeSnapshotContent>::all(client.clone()).list(&lp).await?.items {
        add(&v.metadata);
    }
    Ok(out.difference(&young).cloned().collect())
}

/// Wait until the PV controller has bound PVC `namespace/pvc` to `pv` (Velero's mover waits
/// for the same before it completes a restore), for at most `timeout`, or until `cancel`.
pub async fn wait_bound(
    client: &Client,
    namespace: &str,
    pvc: &str,
    pv: &str,
    timeout: std::time::Duration,
    cancel: &ferry_engine::job::CancelToken,
) -> Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let end = std::time::Instant::now() + timeout;
    loop {
        let c = api.get_opt(pvc).await?;
        let Some(c) = c else { bail!("PersistentVolumeClaim {namespace}/{pvc} (spec.targetVolume) is gone") };
        let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if bound && c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv) {
            return Ok(());
        }
        if std::time::Instant::now() > end {
            bail!(
                "PersistentVolume {pv} was handed to PersistentVolumeClaim {namespace}/{pvc}, which did not bind to it within {}s",
                timeout.as_secs()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => bail!("canceled"),
        }
    }
}

/// Hand the restored PV to the target PVC, as Velero does: hold the PV at `Retain`, delete
/// the mover pod and claim, point the PV's `claimRef` at the target (without uid, so the PV
/// controller binds it), copy the target's selector labels (`velero.io/dynamic-pv-restore`)
/// onto the PV, then give back its reclaim policy. Returns the PV's name.
pub async fn rebind(client: &Client, owner: &Owner, namespace: &str, pvc: &str) -> Result<String> {
    // The target first: nothing is changed on the PV for a target that cannot take it.
    let target = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get_opt(pvc)
        .await?
        .ok_or_else(|| anyhow!("PersistentVolumeClaim {namespace}/{pvc} (spec.targetVolume) is gone"))?;
    let labels = target.spec.and_then(|s| s.selector).and_then(|s| s.match_labels).unwrap_or_default();
    if labels.is_empty() {
        bail!(
            "PersistentVolumeClaim {namespace}/{pvc} has no selector labels (velero.io/dynamic-pv-restore) to bind the volume by"
        );
    }
    let pv_name = claim_volume(client, owner).await?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs.get(&pv_name).await?;
    let policy = pv
        .annotations()
        .get(RECLAIM_ANNOTATION)
        .cloned()
        .or_else(|| pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.clone()))
        .unwrap_or_else(|| "Delete".into());
    pvs.patch(
        &pv_name,
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": {RECLAIM_ANNOTATION: policy}},
            "spec": {"persistentVolumeReclaimPolicy": "Retain"},
        })),
    )
    .await?;
    cleanup(client, &owner.namespace, &owner.uid).await?;
    pvs.patch(
        &pv_name,
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"labels": labels, "annotations": {RECLAIM_ANNOTATION: null}},
            "spec": {
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace, "name": pvc,
                             "uid": null, "resourceVersion": null},
                "persistentVolumeReclaimPolicy": policy,
            },
        })),
    )
    .await?;
    Ok(pv_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    fn waiting(reason: &str) -> PodStatus {
        serde_json::from_value(json!({"phase": "Pending", "containerStatuses": [{
            "name": "mover", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": "details"}}}]}))
        .unwrap()
    }

    #[test]
    fn a_pod_that_cannot_start_is_told_from_one_still_starting() {
        assert_eq!(waiting_for_good(&waiting("ImagePullBackOff")).as_deref(), Some("ImagePullBackOff: details"));
        assert!(waiting_for_good(&waiting("CrashLoopBackOff")).is_some());
        assert_eq!(waiting_for_good(&waiting("ContainerCreating")), None);
        assert_eq!(waiting_for_good(&PodStatus::default()), None);
    }

    #[test]
    fn exposed_names_fit_a_label_and_stay_unique() {
        let o = Owner {
            api_version: "velero.io/v2alpha1".into(),
            kind: "DataUpload".into(),
            name: "b".repeat(70),
            uid: "0123456789abcdef".into(),
            namespace: "velero".into(),
            direction: "upload",
        };
        let n = o.object_name();
        assert!(n.len() <= 63 && n.ends_with("-01234567"), "{n}");
        assert_eq!(Owner { name: "short".into(), ..o.clone() }.object_name(), "ferry-short");
        let m = o.metadata(true);
        assert_eq!(m["labels"][NAMESPACE_LABEL], "velero");
        assert!(m.get("ownerReferences").is_none(), "a cluster-scoped object has no namespaced owner");
    }
}
