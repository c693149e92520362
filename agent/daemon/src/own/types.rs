//! Ferry's own resources (`ferry.dev/v1alpha1`, CRDs in `deploy/crds/`): `VolumeBackup` (which
//! volumes, where, how), and `BackupSchedule` (when, with a VolumeBackup template, a TTL and a
//! retention policy). Every field is optional; a value that does not parse becomes a status
//! message naming the field, never a crash.
//!
//! Status: the object's phase, a message, and one entry per selected volume under
//! `status.volumes["<namespace>/<pvc>"]`. Each volume is written by the agent of the node that
//! backs it up, as a JSON merge patch of its own key, so agents never overwrite each other.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// What a VolumeBackup asks for.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "VolumeBackup",
    namespaced,
    status = "VolumeBackupStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupSpec {
    /// Namespaces whose PVCs are candidates (empty or `*`: all).
    #[serde(default)]
    pub included_namespaces: Vec<String>,
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    /// Only PVCs with these labels.
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    /// Only PVCs mounted by pods with these labels.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// The BackupStorageLocation (default: `default`).
    #[serde(default)]
    pub location: Option<String>,
    /// Added to every snapshot's tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Take CSI snapshots of this VolumeSnapshotClass and move their data (through DataUploads
    /// for the agents); without it the mounted volumes are read live.
    #[serde(default)]
    pub volume_snapshot_class_name: Option<String>,
    /// Freeze each mounted filesystem volume around its snapshot (a pod can ask for it with the
    /// annotation `ferry.dev/freeze: "true"`).
    #[serde(default)]
    pub freeze: Option<bool>,
    /// The longest a filesystem stays frozen (a Go duration; default 30s): the watchdog thaws it.
    #[serde(default)]
    pub max_freeze: Option<String>,
    /// How long the backup is kept (a Go duration); then it is deleted and its snapshots
    /// forgotten. None: kept until deleted.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A VolumeBackup's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BackupPhase {
    #[default]
    #[serde(alias = "")]
    New,
    InProgress,
    Completed,
    PartiallyFailed,
    Failed,
}

impl BackupPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, BackupPhase::Completed | BackupPhase::PartiallyFailed | BackupPhase::Failed)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupStatus {
    #[serde(default)]
    pub phase: Option<BackupPhase>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub start_timestamp: Option<Time>,
    #[serde(default)]
    pub completion_timestamp: Option<Time>,
    /// When the TTL deletes it.
    #[serde(default)]
    pub expiration: Option<Time>,
    /// `"<namespace>/<pvc>"` → its volume.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeStatus>,
    #[serde(default)]
    pub progress: Option<BackupProgress>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupProgress {
    pub total_volumes: u32,
    pub done_volumes: u32,
    pub failed_volumes: u32,
}

/// One volume's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VolumePhase {
    #[default]
    #[serde(alias = "")]
    Pending,
    InProgress,
    Completed,
    Failed,
    /// Not backed up, for the reason in its message (e.g. not mounted in live mode).
    Skipped,
}

impl VolumePhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Skipped)
    }
}

/// One selected volume. Every field is written, absent ones as `null`, so that a merge patch of
/// an entry also clears what an earlier write of it set (a message, a snapshot ID).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub namespace: String,
    pub pvc: String,
    /// The pod mounting it (hooks and freeze run there), if any.
    #[serde(default)]
    pub pod: Option<String>,
    /// The pod's volume name.
    #[serde(default)]
    pub volume: Option<String>,
    /// The node whose agent backs it up.
    #[serde(default)]
    pub node: String,
    /// `Live` or `CSI`.
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub phase: VolumePhase,
    #[serde(default, rename = "snapshotID")]
    pub snapshot_id: Option<String>,
    /// The DataUpload moving a CSI snapshot's data.
    #[serde(default)]
    pub data_upload: Option<String>,
    /// The claim as it was (what a restore into a new claim creates): its StorageClass, size
    /// and volume mode.
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub volume_mode: Option<String>,
    #[serde(default)]
    pub volume_snapshot: Option<String>,
    #[serde(default)]
    pub bytes: Option<u64>,
    /// How long its filesystem was frozen, in milliseconds.
    #[serde(default)]
    pub frozen_ms: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    /// Hook and freeze notes, in order.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// When and what a BackupSchedule backs up.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    status = "BackupScheduleStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// 5-field cron, a descriptor (`@daily`), `@every <duration>`, optionally prefixed with
    /// `CRON_TZ=<zone> `.
    #[serde(default)]
    pub schedule: String,
    #[serde(default)]
    pub paused: Option<bool>,
    /// Do not run at once when created or unpaused: wait for the first slot.
    #[serde(default)]
    pub skip_immediately: Option<bool>,
    /// The VolumeBackups it creates (its `ttl` applies to each).
    #[serde(default)]
    pub template: VolumeBackupSpec,
    /// Which of its completed backups to keep; the others are deleted and their snapshots
    /// forgotten.
    #[serde(default)]
    pub retention: Option<Retention>,
}

/// Keep the newest `last` backups, and the newest of each of the last `hourly` hours, `daily`
/// days, `weekly` ISO weeks, `monthly` months and `yearly` years (restic's rules). A backup kept
/// by any rule is kept. No rule at all keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    #[serde(default)]
    pub last: Option<u32>,
    #[serde(default)]
    pub hourly: Option<u32>,
    #[serde(default)]
    pub daily: Option<u32>,
    #[serde(default)]
    pub weekly: Option<u32>,
    #[serde(default)]
    pub monthly: Option<u32>,
    #[serde(default)]
    pub yearly: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// `Enabled`, `Paused` or `FailedValidation`.
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// The slot of the last backup created.
    #[serde(default)]
    pub last_backup: Option<Time>,
    /// The reference time set when created with skipImmediately or unpaused.
    #[serde(default)]
    pub last_skipped: Option<Time>,
    #[serde(default)]
    pub next_run: Option<Time>,
    /// Slots that passed while the agent was away or the schedule paused, in all.
    #[serde(default)]
    pub missed_runs: Option<u64>,
    /// Backups deleted by the retention policy, in all.
    #[serde(default)]
    pub retention_deleted: Option<u64>,
}

/// What a VolumeRestore asks for: the volumes of a VolumeBackup (or the latest snapshots with
/// some tags) restored into the PVCs of the same names in mapped namespaces: existing ones in
/// place, by the agent of the node of the pod mounting each (`target: Existing`, the default),
/// or new ones created for it and filled through DataDownloads (`target: New`).
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "VolumeRestore",
    namespaced,
    status = "VolumeRestoreStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreSpec {
    /// A VolumeBackup of this namespace: its completed volumes.
    #[serde(default)]
    pub backup: Option<String>,
    /// Or: the newest snapshot of each (namespace, pvc) carrying all these tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The location (default: the backup's, else `default`).
    #[serde(default)]
    pub location: Option<String>,
    /// Source namespaces (empty or `*`: all).
    #[serde(default)]
    pub included_namespaces: Vec<String>,
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    /// Source namespace → target namespace.
    #[serde(default)]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Globs of paths inside the volume to restore (default: all) and to leave out.
    #[serde(default)]
    pub include_paths: Vec<String>,
    #[serde(default)]
    pub exclude_paths: Vec<String>,
    /// `Existing` (default) or `New`.
    #[serde(default)]
    pub target: Option<String>,
    /// For new claims: their StorageClass and size when the backup did not record the
    /// source's (a restore by tags), or to override it.
    #[serde(default)]
    pub storage_class_name: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreStatus {
    #[serde(default)]
    pub phase: Option<BackupPhase>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub start_timestamp: Option<Time>,
    #[serde(default)]
    pub completion_timestamp: Option<Time>,
    /// `"<target namespace>/<pvc>"` → its volume.
    #[serde(default)]
    pub volumes: BTreeMap<String, RestoreVolumeStatus>,
}

/// One volume of a VolumeRestore.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreVolumeStatus {
    pub source_namespace: String,
    pub namespace: String,
    pub pvc: String,
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    #[serde(default)]
    pub pod: Option<String>,
    /// A new claim: the DataDownload filling it, and the claim as created.
    #[serde(default)]
    pub data_download: Option<String>,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub volume_mode: Option<String>,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub phase: VolumePhase,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub files: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}
