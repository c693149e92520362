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

/// Why an entry assigned to another node will never be worked on, if it will not: its node left
/// the cluster, or it stayed `Pending` past the pickup timeout since `started` (no agent runs
/// there). Any agent may then fail it.
pub(crate) async fn orphaned(
    a: &Agent,
    node: &str,
    pending: bool,
    started: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Option<String> {
    if node.is_empty() || node == a.s.node {
        return None;
    }
    if crate::agent::node_gone(a, Some(node)).await {
        return Some(format!("node {node} is no longer in the cluster"));
    }
    let waited = started.map(|t| (k8s_openapi::chrono::Utc::now() - t.0).to_std().unwrap_or_default())?;
    (pending && waited > a.s.pickup_timeout).then(|| {
        format!(
            "no agent on node {node} took it within {:?} (is the ferry agent DaemonSet running there?)",
            a.s.pickup_timeout
        )
    })
}

/// Bound what an entry carries (a message, warnings): texts that come from a workload (hook
/// output, annotations) must not grow the object past what the API server stores.
pub(crate) fn bound_notes(message: &mut Option<String>, warnings: &mut Vec<String>) {
    fn clip(s: &mut String, max: usize) {
        if let Some((i, _)) = s.char_indices().nth(max) {
            s.truncate(i);
            s.push('…');
        }
    }
    if let Some(m) = message {
        clip(m, 1024);
    }
    for w in warnings.iter_mut() {
        clip(w, 512);
    }
    if warnings.len() > 10 {
        let dropped = warnings.len() - 9;
        warnings.truncate(9);
        warnings.push(format!("… and {dropped} more warnings"));
    }
}

/// Start the job `key` (`<object uid>/…`) unless this process started it before (it may have
/// ended: a stale view of the object may still show its work unfinished, and it is not done
/// twice; a restart does redo what never ended).
/// Returns the job's cancel token.
pub(crate) fn job_start(a: &Agent, key: &str) -> Option<ferry_engine::job::CancelToken> {
    let mut jobs = a.own_jobs.lock().expect("own jobs lock");
    if jobs.contains_key(key) {
        return None;
    }
    let token = ferry_engine::job::CancelToken::new();
    jobs.insert(key.to_string(), Some(token.clone()));
    Some(token)
}

pub(crate) fn job_end(a: &Agent, key: &str) {
    a.own_jobs.lock().expect("own jobs lock").insert(key.to_string(), None);
}

/// Whether a job of object `uid` runs in this process.
pub(crate) fn jobs_running(a: &Agent, uid: &str) -> bool {
    a.own_jobs.lock().expect("own jobs lock").iter().any(|(k, t)| t.is_some() && k.starts_with(&format!("{uid}/")))
}

/// Cancel the running jobs of object `uid` (it was deleted).
pub(crate) fn jobs_cancel(a: &Agent, uid: &str) {
    for (k, t) in a.own_jobs.lock().expect("own jobs lock").iter() {
        if let Some(t) = t.as_ref().filter(|_| k.starts_with(&format!("{uid}/"))) {
            t.cancel();
        }
    }
}

/// Forget the jobs of an object that ended.
pub(crate) fn jobs_forget(a: &Agent, uid: &str) {
    a.own_jobs.lock().expect("own jobs lock").retain(|k, t| t.is_some() || !k.starts_with(&format!("{uid}/")));
}

/// Annotation by which one agent claims the one-time work on an object (selection): `<node>
/// <unix seconds>`.
pub const CLAIM_ANNOTATION: &str = "ferry.dev/claimed-by";
/// After this long without progress, another agent may take a claim over.
pub const CLAIM_TTL_S: i64 = 120;

/// Claim the one-time work on `obj` for this agent, exclusively: `Some(resourceVersion)` after
/// the claim (to make the next write exclusive too), `None` if another agent holds a fresh
/// claim or won the race (look again later).
pub(crate) async fn claim<K>(a: &Agent, obj: &K) -> Result<Option<String>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let now = k8s_openapi::chrono::Utc::now().timestamp();
    if let Some(c) = obj.annotations().get(CLAIM_ANNOTATION) {
        let (node, at) = c.split_once(' ').unwrap_or((c.as_str(), "0"));
        if node != a.s.node && now - at.parse::<i64>().unwrap_or(0) < CLAIM_TTL_S {
            return Ok(None);
        }
    }
    let p = serde_json::json!({"metadata": {"resourceVersion": obj.resource_version(),
                                            "annotations": {CLAIM_ANNOTATION: format!("{} {now}", a.s.node)}}});
    let api: Api<K> = Api::namespaced(a.client.clone(), &a.s.namespace);
    match api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(p)).await {
        Ok(o) => Ok(o.resource_version()),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(None),
        Err(e) => Err(e).with_context(|| format!("claiming {} {}", K::kind(&()), obj.name_any())),
    }
}

/// Every `K` of the namespaces a spec names (`included`: empty or `*` means all), listed per
/// namespace when it names some (cheaper than the whole cluster).
pub(crate) async fn list_in<K>(a: &Agent, included: &[String]) -> Result<Vec<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let lp = kube::api::ListParams::default();
    if included.is_empty() || included.iter().any(|n| n == "*") {
        return Ok(Api::<K>::all(a.client.clone()).list(&lp).await?.items);
    }
    let mut out = Vec::new();
    for ns in included {
        out.extend(Api::<K>::namespaced(a.client.clone(), ns).list(&lp).await?.items);
    }
    Ok(out)
}

/// `name` as a label value (at most 63 characters): itself when it fits, else its first 54
/// characters and a hash of the whole (FNV-1a, stable across versions and architectures).
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let head = name[..54].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{:08x}", hash as u32)
}

/// The longest `ttl` (100 years) and `maxFreeze` accepted.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
pub const MAX_FREEZE: std::time::Duration = std::time::Duration::from_secs(600);

/// A duration field of a spec: a Go duration, not zero, at most `max`; the error names `field`.
pub fn duration_field(field: &str, value: &str, max: std::time::Duration) -> Result<std::time::Duration, String> {
    match crate::transfer::parse_go_duration(value) {
        None => Err(format!("{field}: {value:?} is not a duration such as 30s, 10m or 720h")),
        Some(d) if d.is_zero() => Err(format!("{field}: {value:?} must be more than zero (leave it out for none)")),
        Some(d) if d > max => Err(format!("{field}: {value:?} is more than the {}h allowed", max.as_secs() / 3600)),
        Some(d) => Ok(d),
    }
}

/// Check a VolumeBackup spec's durations (`prefix`: where the spec is, e.g. `spec.template`).
pub fn check_backup_spec(spec: &types::VolumeBackupSpec, prefix: &str) -> Result<(), String> {
    if let Some(t) = &spec.ttl {
        duration_field(&format!("{prefix}.ttl"), t, MAX_TTL)?;
    }
    if let Some(f) = &spec.max_freeze {
        duration_field(&format!("{prefix}.maxFreeze"), f, MAX_FREEZE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_become_valid_distinct_label_values() {
        assert_eq!(label_value("nightly"), "nightly");
        let a = label_value(&format!("{}-a", "x".repeat(70)));
        let b = label_value(&format!("{}-b", "x".repeat(70)));
        assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
        assert_eq!(label_value(&format!("{}-a", "x".repeat(70))), a, "stable");
        assert_eq!(label_value(&format!("{}.{}", "y".repeat(53), "z".repeat(20))).len(), 62);
    }

    #[test]
    fn durations_are_bounded_and_positive() {
        assert_eq!(duration_field("spec.ttl", "720h", MAX_TTL), Ok(std::time::Duration::from_secs(720 * 3600)));
        for (v, want) in [
            ("3000000000h", "more than the 876000h allowed"),
            ("0s", "must be more than zero"),
            ("a week", "is not a duration"),
        ] {
            let e = duration_field("spec.ttl", v, MAX_TTL).unwrap_err();
            assert!(e.starts_with("spec.ttl: ") && e.contains(want), "{v}: {e}");
        }
        let spec = types::VolumeBackupSpec { max_freeze: Some("1h".into()), ..Default::default() };
        assert!(check_backup_spec(&spec, "spec.template").unwrap_err().starts_with("spec.template.maxFreeze: "));
    }
}
