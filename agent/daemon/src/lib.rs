//! `ferry agent`: the node agent. One per node (a DaemonSet); Velero's data mover for CSI
//! snapshots through the DataUpload/DataDownload protocol (`spec.datamover: ferry`).
//!
//! - `types`: the Velero and CSI snapshot objects, every field optional;
//! - `machine`: the reconcile decisions as a pure function (unit-tested case by case);
//! - `agent`: the controllers, jobs and status writes; `transfer`: the patches;
//! - `expose`: the snapshot's PVC and mover pod, cleanup, the restore's PV rebinding;
//! - `upload`/`download`: what a job does with the engine; `repos`: repositories from
//!   BackupStorageLocations and Secrets; `store`: the SQLite job store on the node;
//! - `backups`: a deleted Velero Backup forgets its snapshots (a finalizer);
//! - `metrics`: Prometheus text, `/healthz`, `/readyz`;
//! - `own`: Ferry's own resources (VolumeBackup, BackupSchedule), hooks; `freeze`: FIFREEZE
//!   with a guaranteed thaw; `schedule`: cron expressions.

pub mod agent;
pub mod backups;
pub mod download;
pub mod expose;
pub mod freeze;
pub mod machine;
pub mod metrics;
pub mod own;
pub mod repos;
pub mod schedule;
pub mod snapshot_ref;
pub mod store;
pub mod transfer;
pub mod types;
pub mod upload;

pub use agent::{Agent, Settings, run};
