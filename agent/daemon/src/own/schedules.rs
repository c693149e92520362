//! The BackupSchedule controller, run by every agent; every write is exclusive.
//!
//! - A schedule that does not parse, or a template with a bad duration: phase
//!   `FailedValidation` and a message naming the field.
//! - Due (`crate::schedule::due`): a VolumeBackup `<schedule>-<slot as YYYYMMDDhhmmss>` is
//!   created from the template, labelled `ferry.dev/schedule`. The name is the slot, so two
//!   agents that see the same slot create one backup (the second gets a conflict). After an
//!   outage or a pause, only the latest passed slot runs; the others count in `missedRuns`.
//! - A new schedule waits for its first slot (Velero's behaviour since 1.8).
//! - `paused`: nothing is created; unpausing runs the latest missed slot at once, or with
//!   `skipImmediately` records `lastSkipped` and waits for the next slot (the spec is left as
//!   written: Velero resets the flag, which fights GitOps tools).
//! - Retention: of its ended backups (Completed or PartiallyFailed), those the policy does not
//!   keep are deleted, and their finalizers forget their snapshots (restic's rules, through the
//!   engine's `forget::apply`). Failed backups are left to their TTL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::types::{BackupPhase, BackupSchedule, Retention, VolumeBackup};
use crate::agent::{Agent, Error};
use crate::schedule::{Due, Schedule, due};

/// Label on the VolumeBackups a schedule creates: its name.
pub const SCHEDULE_LABEL: &str = "ferry.dev/schedule";
/// Annotations on them: the slot (RFC 3339), and when the agent created it (milliseconds).
pub const SLOT_ANNOTATION: &str = "ferry.dev/slot";
pub const CREATED_ANNOTATION: &str = "ferry.dev/created-at";

async fn patch(a: &Agent, bs: &BackupSchedule, p: serde_json::Value) -> Result<bool> {
    super::patch(a, bs, p).await
}

/// The spec's problems, each naming its field.
fn validate(bs: &BackupSchedule) -> Result<Schedule, String> {
    if bs.name_any().len() > 238 {
        return Err("metadata.name: at most 238 characters (its backups are named <name>-<YYYYMMDDhhmmss>)".into());
    }
    let s = Schedule::parse(&bs.spec.schedule).map_err(|e| format!("spec.schedule {:?}: {e}", bs.spec.schedule))?;
    super::check_backup_spec(&bs.spec.template, "spec.template")?;
    Ok(s)
}

pub async fn reconcile(bs: Arc<BackupSchedule>, a: Arc<Agent>) -> Result<Requeue, Error> {
    // The schedule as it is now, not as a lagging cache has it: a stale `lastBackup` would make
    // this agent create the backup of a slot that already ran (and may since have been deleted
    // by the retention policy).
    let api: Api<BackupSchedule> = Api::namespaced(a.client.clone(), &a.s.namespace);
    let Some(bs) = api.get_opt(&bs.name_any()).await.map_err(|e| Error::from(anyhow::Error::from(e)))? else {
        return Ok(Requeue::await_change());
    };
    run(&bs, &a).await.map_err(Error::from)
}

async fn run(bs: &BackupSchedule, a: &Agent) -> Result<Requeue> {
    let st = bs.status.clone().unwrap_or_default();
    let rv = bs.resource_version().unwrap_or_default();
    if bs.meta().deletion_timestamp.is_some() {
        return Ok(Requeue::await_change());
    }
    let schedule = match validate(bs) {
        Ok(s) => s,
        Err(msg) => {
            if st.phase.as_deref() != Some("FailedValidation") || st.message.as_deref() != Some(&msg) {
                patch(a, bs, json!({"status": {"phase": "FailedValidation", "message": msg}})).await?;
            }
            return Ok(Requeue::await_change());
        }
    };
    let now = Utc::now();
    let paused = bs.spec.paused == Some(true);
    let skip = bs.spec.skip_immediately == Some(true);
    if paused {
        if st.phase.as_deref() != Some("Paused") {
            patch(a, bs, json!({"metadata": {"resourceVersion": rv}, "status": {"phase": "Paused", "message": null}}))
                .await?;
        }
        return Ok(Requeue::await_change());
    }
    // Unpaused with skipImmediately: the slots of the pause are skipped, not run.
    if st.phase.as_deref() == Some("Paused") && skip {
        let p = json!({"metadata": {"resourceVersion": rv},
                       "status": {"phase": "Enabled", "lastSkipped": Time(now), "message": null}});
        patch(a, bs, p).await?;
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }
    let reference = match (st.last_backup.as_ref(), st.last_skipped.as_ref()) {
        (Some(b), Some(s)) => Some(b.0.max(s.0)),
        (b, s) => b.or(s).map(|t| t.0),
    };
    let created = bs.meta().creation_timestamp.as_ref().map_or(now, |t| t.0);
    retention(bs, a).await?;
    // skipImmediately acted above (at the unpause, as `lastSkipped`); a new schedule waits for
    // its first slot anyway, as Velero's does.
    match due(&schedule, reference, created, false, now) {
        Due::Never => {
            patch(
                a,
                bs,
                json!({"status": {"phase": "Enabled", "nextRun": null,
                                           "message": "spec.schedule: no slot remains"}}),
            )
            .await?;
            Ok(Requeue::await_change())
        }
        Due::At(next) => {
            if st.next_run.as_ref().map(|t| t.0) != Some(next) || st.phase.as_deref() != Some("Enabled") {
                let p = json!({"status": {"phase": "Enabled", "nextRun": Time(next), "message": null}});
                patch(a, bs, p).await?;
            }
            Ok(Requeue::requeue(
                (next - now).to_std().unwrap_or_default().clamp(Duration::from_millis(50), Duration::from_secs(300)),
            ))
        }
        Due::Now { slot, missed } => {
            if let Err(e) = create_backup(bs, a, slot).await {
                let msg = format!("{e:#}");
                patch(a, bs, json!({"status": {"message": msg}})).await?;
                return Err(e);
            }
            let next = schedule.next_after(slot.max(now));
            let p = json!({"metadata": {"resourceVersion": rv},
                           "status": {"phase": "Enabled", "lastBackup": Time(slot), "nextRun": next.map(Time),
                                      "missedRuns": st.missed_runs.unwrap_or(0) + u64::from(missed),
                                      "message": null}});
            if patch(a, bs, p).await? && missed > 0 {
                tracing::warn!(schedule = %bs.name_any(), missed, "slots passed while the agents were away or it was paused: ran once");
            }
            Ok(Requeue::requeue(Duration::from_millis(200)))
        }
    }
}

/// The backup of `slot` (its name is the slot: one per slot, whoever creates it).
async fn create_backup(bs: &BackupSchedule, a: &Agent, slot: DateTime<Utc>) -> Result<()> {
    let name: String = format!("{}-{}", bs.name_any(), slot.format("%Y%m%d%H%M%S")).chars().take(253).collect();
    // The slot and the moment it was acted on (to the millisecond): how late a run was.
    let millis = k8s_openapi::chrono::SecondsFormat::Millis;
    let vb = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "VolumeBackup",
                    "metadata": {"name": name, "namespace": a.s.namespace, "labels": {SCHEDULE_LABEL: super::label_value(&bs.name_any())},
                                 "annotations": {SLOT_ANNOTATION: slot.to_rfc3339_opts(millis, true),
                                                 CREATED_ANNOTATION: Utc::now().to_rfc3339_opts(millis, true)}},
                    "spec": bs.spec.template});
    let vb: VolumeBackup = serde_json::from_value(vb)?;
    let api: Api<VolumeBackup> = Api::namespaced(a.client.clone(), &a.s.namespace);
    match api.create(&PostParams::default(), &vb).await {
        Ok(_) => tracing::info!(schedule = %bs.name_any(), backup = %name, "created"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating a VolumeBackup"),
    }
    Ok(())
}

/// The engine's policy for `r`.
fn policy(r: &Retention) -> ferry_engine::forget::Policy {
    use ferry_engine::forget::Count::Upto;
    ferry_engine::forget::Policy {
        last: r.last.map(Upto),
        hourly: r.hourly.map(Upto),
        daily: r.daily.map(Upto),
        weekly: r.weekly.map(Upto),
        monthly: r.monthly.map(Upto),
        yearly: r.yearly.map(Upto),
        ..Default::default()
    }
}

/// Which of `ended` (name, start time) the retention policy removes.
pub fn doomed(ended: &[(String, DateTime<Utc>)], r: &Retention, now: DateTime<Utc>) -> Vec<String> {
    let policy = policy(r);
    if policy.is_empty() {
        return Vec::new();
    }
    // The engine's rules work on snapshots: one stand-in per backup, its time the backup's.
    let snaps: Vec<_> = ended
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            let mut id = [0u8; repo_format::ID_LEN];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let s = repo_format::Snapshot {
                time_ns: t.timestamp_nanos_opt().unwrap_or(0),
                tree: repo_format::TreeId(repo_format::Id([0; repo_format::ID_LEN])),
                parent: None,
                hostname: String::new(),
                username: String::new(),
                program: String::new(),
                paths: Vec::new(),
                tags: Vec::new(),
                summary: Default::default(),
            };
            (repo_format::SnapshotId(repo_format::Id(id)), s)
        })
        .collect();
    let groups =
        ferry_engine::forget::apply(&snaps, &policy, &Default::default(), now.timestamp_nanos_opt().unwrap_or(0));
    groups
        .iter()
        .flat_map(|g| g.removed())
        .filter_map(|e| {
            let i = u64::from_be_bytes(e.id.0.0[..8].try_into().ok()?) as usize;
            ended.get(i).map(|(n, _)| n.clone())
        })
        .collect()
}

async fn retention(bs: &BackupSchedule, a: &Agent) -> Result<()> {
    let Some(r) = bs.spec.retention.as_ref() else { return Ok(()) };
    let api: Api<VolumeBackup> = Api::namespaced(a.client.clone(), &a.s.namespace);
    let lp = ListParams::default().labels(&format!("{SCHEDULE_LABEL}={}", super::label_value(&bs.name_any())));
    let ended: Vec<(String, DateTime<Utc>)> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|vb| vb.meta().deletion_timestamp.is_none())
        .filter_map(|vb| {
            let st = vb.status.clone()?;
            matches!(st.phase, Some(BackupPhase::Completed | BackupPhase::PartiallyFailed))
                .then(|| st.start_timestamp.map(|t| (vb.name_any(), t.0)))
                .flatten()
        })
        .collect();
    let doomed = doomed(&ended, r, Utc::now());
    for name in &doomed {
        match api.delete(name, &Default::default()).await {
            Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 404, .. })) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting VolumeBackup {name} (retention)")),
        }
        tracing::info!(schedule = %bs.name_any(), backup = %name, "deleted by the retention policy");
    }
    if !doomed.is_empty() {
        // Exclusive: a count is lost rather than doubled when two agents race.
        let total = bs.status.as_ref().and_then(|s| s.retention_deleted).unwrap_or(0) + doomed.len() as u64;
        patch(
            a,
            bs,
            json!({"metadata": {"resourceVersion": bs.resource_version()},
                            "status": {"retentionDeleted": total}}),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::chrono::TimeZone;

    #[test]
    fn retention_keeps_what_the_rules_name() {
        let t = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap();
        // Two backups a day for five days, oldest first.
        let ended: Vec<_> = (1..=5).flat_map(|d| [6, 18].map(|h| (format!("b-{d:02}-{h:02}"), t(d, h)))).collect();
        let now = t(6, 0);
        let mut gone = doomed(&ended, &Retention { last: Some(3), ..Default::default() }, now);
        gone.sort();
        assert_eq!(gone.len(), 7);
        assert!(!gone.contains(&"b-05-18".to_string()) && !gone.contains(&"b-04-18".to_string()));
        // Daily 2 keeps the newest of each of the last two days; last 1 adds nothing new.
        let mut gone = doomed(&ended, &Retention { daily: Some(2), last: Some(1), ..Default::default() }, now);
        gone.sort();
        let kept: Vec<_> = ended.iter().map(|(n, _)| n.clone()).filter(|n| !gone.contains(n)).collect();
        assert_eq!(kept, ["b-04-18", "b-05-18"]);
        assert!(doomed(&ended, &Retention::default(), now).is_empty(), "no rule keeps everything");
    }
}
