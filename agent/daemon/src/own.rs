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

use anyhow::{Context, Result};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::agent::Agent;

/// Merge-patch `obj` (one of these resources, in the agent's namespace). `Ok(false)`: a 409
/// (someone changed it first: an exclusive write lost) or a 404 (it is gone).
pub(crate) async fn patch<K>(a: &Agent, obj: &K, p: serde_json::Value) -> Result<bool>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(a.client.clone(), &a.s.namespace);
    match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(p)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
        Err(e) => Err(e).with_context(|| format!("patching {} {}", K::kind(&()), obj.name_any())),
    }
}
