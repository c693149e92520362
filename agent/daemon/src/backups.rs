//! Deleting a Velero Backup forgets its snapshots.
//!
//! Velero deletes nothing in a third-party mover's repository (its delete action for
//! DataUploads only acts for its own mover). So the agent puts a finalizer on each Backup whose
//! volumes it moves, before it moves them. When the Backup is deleted, one agent (the first to
//! claim it with an exclusive annotation) forgets the snapshots tagged with the Backup's uid in
//! the Backup's location and removes the finalizer; the data goes at the next `ferry prune` of
//! that repository (scheduled maintenance).
//!
//! Only a deletion Velero carries out forgets anything: `velero backup delete` and an expired
//! TTL both go through a DeleteBackupRequest (labelled with the Backup's uid), which deletes the
//! backup's files too. A Backup object deleted any other way (`kubectl delete backup`) keeps
//! its data in object storage, Velero's sync brings it back, and its snapshots must still
//! restore: the finalizer is released and the snapshots kept. A Backup whose location is gone
//! keeps the finalizer until an operator removes it, with the reason in the agent's log.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::agent::{Agent, Error};
use crate::types::{Backup, DeleteBackupRequest};

/// The finalizer the agent puts on Backups.
pub const FINALIZER: &str = "ferry.dev/forget-snapshots";
/// Annotation claiming a deleted Backup for one agent: `<node> <unix seconds>`.
const CLAIM: &str = "ferry.dev/forgetting";
/// After this long a claim of an agent that did not finish may be taken over.
const CLAIM_TTL_S: i64 = 600;

/// Put the finalizer on Backup `ns/name` unless it is there (exclusive read-modify-write).
pub async fn hold(client: &Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    for _ in 0..5 {
        let b = api.get(name).await.with_context(|| format!("reading Backup {ns}/{name}"))?;
        let mut finalizers = b.finalizers().to_vec();
        if finalizers.iter().any(|f| f == FINALIZER) || b.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        finalizers.push(FINALIZER.into());
        let patch = json!({"metadata": {"resourceVersion": b.resource_version(), "finalizers": finalizers}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("adding a finalizer to Backup {ns}/{name}")),
        }
    }
    anyhow::bail!("Backup {ns}/{name} kept changing while a finalizer was added")
}

/// Forget (remove) the snapshots of location `location` whose tag `tag` is `value`; returns
/// how many. Idempotent: a snapshot already gone is not an error.
pub async fn forget_tagged(a: &Agent, location: &str, tag: &str, value: &str) -> Result<usize> {
    let repo = a.repos.get(location).await?;
    let snaps = repo.snapshots().await.context("listing snapshots")?;
    let doomed: Vec<_> = snaps.iter().filter(|(_, s)| s.tag(tag) == Some(value)).map(|(id, _)| *id).collect();
    let failed = ferry_engine::forget::remove_snapshots(repo.storage().as_ref(), &doomed).await;
    if let Some((id, e)) = failed.first() {
        anyhow::bail!("removing snapshot {id}: {e}");
    }
    repo.forget_newest();
    Ok(doomed.len())
}

/// A Backup being deleted with the finalizer: forget its snapshots, then let it go.
pub async fn reconcile(b: Arc<Backup>, a: Arc<Agent>) -> Result<Requeue, Error> {
    if b.metadata.deletion_timestamp.is_none() || !b.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Requeue::await_change());
    }
    let uid = b.uid().unwrap_or_default();
    let ns = &a.s.namespace;
    let name = b.name_any();
    let api: Api<Backup> = Api::namespaced(a.client.clone(), ns);
    // One agent does it: claim the Backup exclusively (another agent's fresh claim wins).
    let now = k8s_openapi::chrono::Utc::now().timestamp();
    if let Some(claim) = b.annotations().get(CLAIM) {
        let (node, at) = claim.split_once(' ').unwrap_or((claim.as_str(), "0"));
        if node != a.s.node && now - at.parse::<i64>().unwrap_or(0) < CLAIM_TTL_S {
            return Ok(Requeue::requeue(Duration::from_secs(60)));
        }
    }
    let claim = json!({"metadata": {"resourceVersion": b.resource_version(),
                                    "annotations": {CLAIM: format!("{} {now}", a.s.node)}}});
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(claim)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            return Ok(Requeue::requeue(Duration::from_secs(1)));
        }
        Err(e) => return Err(anyhow::Error::from(e).into()),
    }
    let requests: Api<DeleteBackupRequest> = Api::namespaced(a.client.clone(), ns);
    let lp = kube::api::ListParams::default().labels(&format!("velero.io/backup-uid={uid}"));
    let by_velero = !requests.list(&lp).await.context("listing DeleteBackupRequests")?.items.is_empty();
    let mut forgotten = 0;
    if by_velero {
        let location = b.spec.storage_location.clone().filter(|l| !l.is_empty()).unwrap_or_else(|| "default".into());
        forgotten = forget_tagged(&a, &location, "backup-uid", &uid)
            .await
            .with_context(|| format!("forgetting the snapshots of Backup {ns}/{name}"))?;
    } else {
        tracing::warn!(backup = %name, "deleted without a DeleteBackupRequest (not by Velero): its snapshots are kept");
    }
    // Release it (the claim gave it a new resourceVersion: read it back).
    let Some(b) = api.get_opt(&name).await.context("reading the Backup")? else { return Ok(Requeue::await_change()) };
    let rest: Vec<String> = b.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"resourceVersion": b.resource_version(), "finalizers": rest}});
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Requeue::requeue(Duration::from_millis(200))),
        Err(e) => return Err(anyhow::Error::from(e).into()),
    }
    tracing::info!(backup = %name, "released the deleted backup; {forgotten} snapshots forgotten");
    Ok(Requeue::await_change())
}
