//! Ferry's own resources (`ferry.dev/v1alpha1`): volume backups chosen by namespace, label and
//! Velero's pod annotations, schedules with a TTL and retention, restores in place, Velero's
//! backup and restore hooks, and a freeze that always thaws. Every agent runs these controllers; what must happen once is an
//! exclusive write (a `resourceVersion` precondition, or a name that only one create can take).
//!
//! - `types`: the resources; `select`: which volumes a backup takes;
//! - `hooks`: Velero's hook annotations, run through the exec API;
//! - `backup`: the VolumeBackup controller; `schedules`: the BackupSchedule controller;
//!   `restore`: the VolumeRestore controller (in place, with Velero's restore-wait mark).

pub mod backup;
pub mod hooks;
pub mod restore;
pub mod schedules;
pub mod select;
pub mod types;
