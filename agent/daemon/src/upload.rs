//! DataUploads: expose the CSI snapshot, back the volume up, report a self-describing
//! snapshot ID.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use kube::ResourceExt;
use serde_json::json;

use ferry_engine::identity::Identity;
use ferry_engine::podvolume::{self, VolumeBackup};

use crate::agent::{Agent, Runner};
use crate::expose::{self, Owner, UploadSource};
use crate::snapshot_ref::SnapshotRef;
use crate::types::DataUpload;

impl Runner for DataUpload {
    async fn expose(du: &Self, a: &Agent, owner: &Owner) -> Result<bool> {
        let csi = du.spec.csi_snapshot.clone().ok_or_else(|| anyhow!("spec.csiSnapshot: missing"))?;
        for (field, v) in [
            ("spec.sourceNamespace", &du.spec.source_namespace),
            ("spec.sourcePVC", &du.spec.source_pvc),
            ("spec.csiSnapshot.volumeSnapshot", &csi.volume_snapshot),
        ] {
            if v.is_empty() {
                bail!("{field}: missing");
            }
        }
        let src = UploadSource {
            namespace: du.spec.source_namespace.clone(),
            pvc: du.spec.source_pvc.clone(),
            volume_snapshot: csi.volume_snapshot,
            storage_class: csi.storage_class,
        };
        expose::expose_upload(&a.client, owner, &src, &a.s.pod).await
    }

    async fn run(
        du: &Self,
        a: &Agent,
        _owner: &Owner,
        volume: PathBuf,
        job: ferry_engine::Job,
    ) -> Result<(serde_json::Value, String)> {
        let repo = a.repos.get(&du.spec.backup_storage_location).await?;
        let labels = du.labels();
        // Deleting the Backup will forget this snapshot: hold it with a finalizer first.
        if let Some(backup) = labels.get("velero.io/backup-name") {
            if let Err(e) = crate::backups::hold(&a.client, &a.s.namespace, backup).await {
                tracing::warn!(object = %du.name_any(), "its snapshot will outlive the Backup: {e:#}");
            }
        }
        let mut tags = vec![
            ("namespace".to_string(), du.spec.source_namespace.clone()),
            ("pvc".to_string(), du.spec.source_pvc.clone()),
            ("data-upload".to_string(), du.name_any()),
            ("node".to_string(), a.s.node.clone()),
        ];
        for (label, tag) in [("velero.io/backup-name", "backup"), ("velero.io/backup-uid", "backup-uid")] {
            if let Some(v) = labels.get(label) {
                tags.push((tag.to_string(), v.clone()));
            }
        }
        // Tags asked for by whoever created it (a Ferry VolumeBackup).
        if let Some(extra) = du.annotations().get(crate::own::backup::TAGS_ANNOTATION) {
            let extra: std::collections::BTreeMap<String, String> = serde_json::from_str(extra).map_err(|e| {
                anyhow!("annotation {}: not a JSON object of strings: {e}", crate::own::backup::TAGS_ANNOTATION)
            })?;
            for (k, v) in extra {
                if !tags.iter().any(|(t, _)| *t == k) {
                    tags.push((k, v));
                }
            }
        }
        let vb = VolumeBackup {
            host: a.s.node.clone(),
            tags,
            parent: None,
            cache_dir: Some(a.s.state_dir.join("files-cache")),
            identity: Some(Identity::pvc(&du.spec.source_namespace, &du.spec.source_pvc)?),
            requester: Some("velero".into()),
        };
        // `status.path`: the volume as found on the node (the mount, the device or the image).
        let path = match podvolume::resolve(&volume)? {
            podvolume::PodVolume::Filesystem(p) | podvolume::PodVolume::Image(p) | podvolume::PodVolume::Block(p) => p,
        };
        let out = podvolume::backup(repo.clone(), &volume, vb, &job).await?;
        if !out.errors.is_empty() {
            bail!(
                "{} entries could not be backed up (snapshot {} kept, not reported), first: {}",
                out.errors.len(),
                out.snapshot_id,
                out.errors[0]
            );
        }
        let s = &out.snapshot.summary;
        let id = SnapshotRef::new(repo.config(), out.snapshot_id).to_string();
        let empty = s.bytes_total == 0 && s.files_new + s.files_changed + s.files_unchanged == 0;
        let message = if empty { "volume was empty so no data was upload".to_string() } else { String::new() };
        Ok((
            json!({
                "snapshotID": id,
                "path": path.display().to_string(),
                "incrementalBytes": s.bytes_added_stored as i64,
                "progress": {"bytesDone": s.bytes_total as i64, "totalBytes": s.bytes_total as i64},
                "dataMoverResult": {"ferry.dev/bytes-added": s.bytes_added.to_string(),
                                    "ferry.dev/files": (s.files_new + s.files_changed + s.files_unchanged).to_string(),
                                    "ferry.dev/resumed-bytes": out.resumed.bytes.to_string()},
            }),
            message,
        ))
    }
}
