//! Deleting a Velero Backup forgets its snapshots.
//!
//! Velero deletes nothing in a third-party mover's repository (its delete action for
//! DataUploads only acts for its own mover). So the agent puts a finalizer on each Backup whose
//! volumes it moves, before it moves them; when the Backup is deleted (by a user or by its TTL),
//! any agent forgets the snapshots tagged with the Backup's uid in the Backup's location and
//! then removes the finalizer. The data goes at the next `ferry prune` of that repository
//! (scheduled maintenance). A Backup whose location is gone keeps the finalizer until an
//! operator removes it, with the reason in the agent's log.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::agent::{Agent, Error};
use crate::types::Backup;

/// The finalizer the agent puts on Backups.
pub const FINALIZER: &str = "ferry.dev/forget-snapshots";

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

/// A Backup being deleted with the finalizer: forget its snapshots, then let it go.
pub async fn reconcile(b: Arc<Backup>, a: Arc<Agent>) -> Result<Requeue, Error> {
    if b.metadata.deletion_timestamp.is_none() || !b.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Requeue::await_change());
    }
    let uid = b.uid().unwrap_or_default();
    let ns = &a.s.namespace;
    let location = b.spec.storage_location.clone().filter(|l| !l.is_empty()).unwrap_or_else(|| "default".into());
    let repo = a
        .repos
        .get(&location)
        .await
        .with_context(|| format!("forgetting the snapshots of Backup {ns}/{}", b.name_any()))?;
    let snaps = repo.snapshots().await.context("listing snapshots")?;
    let doomed: Vec<_> =
        snaps.iter().filter(|(_, s)| s.tag("backup-uid") == Some(uid.as_str())).map(|(id, _)| *id).collect();
    let failed = ferry_engine::forget::remove_snapshots(repo.storage().as_ref(), &doomed).await;
    if let Some((id, e)) = failed.first() {
        return Err(anyhow::anyhow!("removing snapshot {id} of Backup {ns}/{}: {e}", b.name_any()).into());
    }
    repo.forget_newest();
    let rest: Vec<String> = b.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"resourceVersion": b.resource_version(), "finalizers": rest}});
    let api: Api<Backup> = Api::namespaced(a.client.clone(), ns);
    match api.patch(&b.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Requeue::requeue(Duration::from_millis(200))),
        Err(e) => return Err(anyhow::Error::from(e).into()),
    }
    tracing::info!(backup = %b.name_any(), location, "forgot {} snapshots of the deleted backup", doomed.len());
    Ok(Requeue::await_change())
}
