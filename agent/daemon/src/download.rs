//! DataDownloads: expose a volume like the target PVC, restore into it, hand its PV to the
//! target PVC.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::json;

use ferry_engine::podvolume;

use crate::agent::{Agent, Runner};
use crate::expose::{self, Owner};
use crate::snapshot_ref::SnapshotRef;
use crate::transfer::Transfer;
use crate::types::DataDownload;

impl Runner for DataDownload {
    async fn expose(dd: &Self, a: &Agent, owner: &Owner) -> Result<bool> {
        let t = &dd.spec.target_volume;
        if t.pvc.is_empty() || t.namespace.is_empty() {
            bail!("spec.targetVolume: pvc and namespace are required");
        }
        // Refuse an unreadable snapshot ID before anything is created.
        dd.spec.snapshot_id.parse::<SnapshotRef>().context("spec.snapshotID")?;
        expose::expose_download(&a.client, owner, &t.namespace, &t.pvc, &a.s.pod).await?;
        Ok(true)
    }

    async fn run(
        dd: &Self,
        a: &Agent,
        owner: &Owner,
        volume: PathBuf,
        job: ferry_engine::Job,
    ) -> Result<(serde_json::Value, String)> {
        let sref: SnapshotRef = dd.spec.snapshot_id.parse().context("spec.snapshotID")?;
        let repo = a.repos.get(&dd.spec.backup_storage_location).await?;
        sref.check(repo.config(), &dd.spec.backup_storage_location)?;
        let out = podvolume::restore(repo, &sref.snapshot, &volume, &Default::default(), &job).await?;
        if !out.errors.is_empty() {
            bail!("{} entries could not be restored, first: {}", out.errors.len(), out.errors[0]);
        }
        if job.cancel.is_cancelled() {
            bail!("canceled");
        }
        let t = &dd.spec.target_volume;
        let pv = expose::rebind(&a.client, owner, &t.namespace, &t.pvc).await?;
        // Completed only once the claim is bound to it, as Velero's mover does.
        expose::wait_bound(&a.client, &t.namespace, &t.pvc, &pv, dd.timeout(), &job.cancel).await?;
        Ok((
            json!({"progress": {"bytesDone": out.bytes_written as i64, "totalBytes": out.bytes_written as i64}}),
            format!(
                "restored {} bytes into PersistentVolume {pv}, bound to {}/{}",
                out.bytes_written, t.namespace, t.pvc
            ),
        ))
    }
}
