//! The Kubernetes objects the agent reads and writes that k8s-openapi does not define:
//! Velero's `DataUpload`/`DataDownload` (`velero.io/v2alpha1`), `BackupStorageLocation` and
//! `Backup` (`velero.io/v1`), and the CSI `VolumeSnapshot`/`VolumeSnapshotContent`
//! (`snapshot.storage.k8s.io/v1`).
//!
//! Written by hand from Velero's Go types (field tables in the project's DATAMOVER notes):
//! every field is optional or defaulted, so objects of Velero 1.12 to 1.18 all decode, and
//! unknown fields are ignored. The agent never PUTs these objects back whole (that would drop
//! fields a newer Velero added): it writes merge patches of the fields it owns
//! (`crate::transfer`). Velero's CRDs have no status subresource, so `status` is patched on the
//! main resource.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The eight phases shared by DataUpload and DataDownload. An absent phase is `New`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    #[serde(alias = "")]
    New,
    Accepted,
    Prepared,
    InProgress,
    Canceling,
    Canceled,
    Completed,
    Failed,
}

impl Phase {
    /// Completed, Failed and Canceled: nobody changes the object after these.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "New",
            Phase::Accepted => "Accepted",
            Phase::Prepared => "Prepared",
            Phase::InProgress => "InProgress",
            Phase::Canceling => "Canceling",
            Phase::Canceled => "Canceled",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
        }
    }
}

/// `status.progress` of both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
}

/// `spec.csiSnapshot` of a DataUpload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CsiSnapshotSpec {
    #[serde(default)]
    pub volume_snapshot: String,
    #[serde(default)]
    pub storage_class: String,
    #[serde(default)]
    pub snapshot_class: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
}

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "velero.io",
    version = "v2alpha1",
    kind = "DataUpload",
    namespaced,
    status = "DataUploadStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct DataUploadSpec {
    #[serde(default)]
    pub snapshot_type: Option<String>,
    #[serde(default)]
    pub csi_snapshot: Option<CsiSnapshotSpec>,
    #[serde(default, rename = "sourcePVC")]
    pub source_pvc: String,
    /// All lower case in JSON.
    #[serde(default)]
    pub datamover: Option<String>,
    #[serde(default)]
    pub backup_storage_location: String,
    #[serde(default)]
    pub source_namespace: String,
    #[serde(default)]
    pub data_mover_config: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub cancel: Option<bool>,
    /// A Go duration (`"10m0s"`).
    #[serde(default)]
    pub operation_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataUploadStatus {
    #[serde(default)]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default, rename = "snapshotID")]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub data_mover_result: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub start_timestamp: Option<Time>,
    #[serde(default)]
    pub completion_timestamp: Option<Time>,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub incremental_bytes: Option<i64>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default, rename = "nodeOS")]
    pub node_os: Option<String>,
    #[serde(default)]
    pub accepted_by_node: Option<String>,
    #[serde(default)]
    pub accepted_timestamp: Option<Time>,
}

/// `spec.targetVolume` of a DataDownload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetVolume {
    #[serde(default)]
    pub pvc: String,
    /// Velero's restore action never sets it.
    #[serde(default)]
    pub pv: Option<String>,
    #[serde(default)]
    pub namespace: String,
}

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "velero.io",
    version = "v2alpha1",
    kind = "DataDownload",
    namespaced,
    status = "DataDownloadStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct DataDownloadSpec {
    #[serde(default)]
    pub target_volume: TargetVolume,
    #[serde(default)]
    pub backup_storage_location: String,
    #[serde(default)]
    pub datamover: Option<String>,
    #[serde(default, rename = "snapshotID")]
    pub snapshot_id: String,
    #[serde(default)]
    pub source_namespace: String,
    #[serde(default)]
    pub data_mover_config: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub cancel: Option<bool>,
    #[serde(default)]
    pub operation_timeout: Option<String>,
    #[serde(default, rename = "nodeOS")]
    pub node_os: Option<String>,
    #[serde(default)]
    pub snapshot_size: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataDownloadStatus {
    #[serde(default)]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub start_timestamp: Option<Time>,
    #[serde(default)]
    pub completion_timestamp: Option<Time>,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub accepted_by_node: Option<String>,
    #[serde(default)]
    pub accepted_timestamp: Option<Time>,
}

/// A BackupStorageLocation: the spec is kept as JSON and validated by
/// `ferry_engine::dpa::backup_storage_location`, which names the bad field.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(group = "velero.io", version = "v1", kind = "BackupStorageLocation", namespaced, schema = "disabled")]
pub struct BackupStorageLocationSpec {
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A Velero Backup: only what the agent reads.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(group = "velero.io", version = "v1", kind = "Backup", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    #[serde(default)]
    pub datamover: Option<String>,
    #[serde(default)]
    pub snapshot_move_data: Option<bool>,
    /// The BackupStorageLocation (Velero's default location when absent).
    #[serde(default)]
    pub storage_location: Option<String>,
}

/// A Velero DeleteBackupRequest: Velero's record that it is deleting a backup (labels
/// `velero.io/backup-name`, `velero.io/backup-uid`).
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(group = "velero.io", version = "v1", kind = "DeleteBackupRequest", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct DeleteBackupRequestSpec {
    #[serde(default)]
    pub backup_name: String,
}

/// `spec.source` of a VolumeSnapshot: exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    #[serde(default)]
    pub source: VolumeSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default)]
    pub bound_volume_snapshot_content_name: Option<String>,
    #[serde(default)]
    pub ready_to_use: Option<bool>,
    #[serde(default)]
    pub restore_size: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    /// When the snapshot was cut (before it is ready to use).
    #[serde(default)]
    pub creation_time: Option<Time>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

/// `spec.source` of a VolumeSnapshotContent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
}

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotContent",
    status = "VolumeSnapshotContentStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSpec {
    #[serde(default)]
    pub deletion_policy: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub source: ContentSource,
    #[serde(default)]
    pub volume_snapshot_ref: k8s_openapi::api::core::v1::ObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume_mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    #[serde(default)]
    pub snapshot_handle: Option<String>,
    #[serde(default)]
    pub ready_to_use: Option<bool>,
    #[serde(default)]
    pub restore_size: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_velero_1_12_data_upload_decodes_and_a_1_18_one_too() {
        let old = serde_json::json!({
            "apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
            "metadata": {"name": "b-x", "namespace": "velero"},
            "spec": {"snapshotType": "CSI", "sourcePVC": "data", "datamover": "ferry",
                     "backupStorageLocation": "default", "sourceNamespace": "app",
                     "csiSnapshot": {"volumeSnapshot": "vs", "storageClass": "sc"},
                     "operationTimeout": "10m0s"}
        });
        let du: DataUpload = serde_json::from_value(old).unwrap();
        assert_eq!(du.spec.datamover.as_deref(), Some("ferry"));
        assert!(du.status.is_none());
        let new = serde_json::json!({
            "apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
            "metadata": {"name": "b-y", "namespace": "velero"},
            "spec": {"sourcePVC": "data", "someFutureField": {"x": 1}},
            "status": {"phase": "InProgress", "incrementalBytes": 5, "nodeOS": "linux",
                       "acceptedByNode": "n1", "progress": {"bytesDone": 3}, "later": true}
        });
        let du: DataUpload = serde_json::from_value(new).unwrap();
        let st = du.status.unwrap();
        assert_eq!(st.phase, Some(Phase::InProgress));
        assert_eq!(st.progress.unwrap().bytes_done, Some(3));
        assert_eq!(st.node_os.as_deref(), Some("linux"));
    }

    #[test]
    fn an_empty_phase_is_new() {
        let st: DataUploadStatus = serde_json::from_value(serde_json::json!({"phase": ""})).unwrap();
        assert_eq!(st.phase, Some(Phase::New));
        assert!(!Phase::New.is_terminal() && Phase::Canceled.is_terminal());
    }
}
