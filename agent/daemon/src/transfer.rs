//! What DataUpload and DataDownload have in common for the reconciler: their phase fields,
//! read the same way, and the status patches the agent writes (merge patches on the main
//! resource: Velero's CRDs have no status subresource).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use serde_json::{Value, json};

use crate::types::{DataDownload, DataUpload, Phase};

/// The operation timeout when `spec.operationTimeout` is absent or unreadable (Velero's
/// `csiSnapshotTimeout` default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A DataUpload or DataDownload.
pub trait Transfer:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// `upload` or `download`.
    const DIRECTION: &'static str;
    fn datamover(&self) -> Option<&str>;
    fn phase(&self) -> Phase;
    fn cancel(&self) -> bool;
    fn accepted_by(&self) -> Option<&str>;
    fn data_node(&self) -> Option<&str>;
    fn accepted_at(&self) -> Option<&Time>;
    fn started_at(&self) -> Option<&Time>;
    fn operation_timeout(&self) -> Option<&str>;
    fn bsl(&self) -> &str;
    /// The source VolumeSnapshot (namespace, name) Velero made for an upload.
    fn source_snapshot(&self) -> Option<(&str, &str)>;

    fn timeout(&self) -> Duration {
        self.operation_timeout().and_then(parse_go_duration).unwrap_or(DEFAULT_TIMEOUT)
    }
}

macro_rules! common {
    ($t:ty, $dir:literal, $source:expr) => {
        impl Transfer for $t {
            const DIRECTION: &'static str = $dir;
            fn datamover(&self) -> Option<&str> {
                self.spec.datamover.as_deref()
            }
            fn phase(&self) -> Phase {
                self.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
            }
            fn cancel(&self) -> bool {
                self.spec.cancel == Some(true)
            }
            fn accepted_by(&self) -> Option<&str> {
                self.status.as_ref().and_then(|s| s.accepted_by_node.as_deref()).filter(|n| !n.is_empty())
            }
            fn data_node(&self) -> Option<&str> {
                self.status.as_ref().and_then(|s| s.node.as_deref()).filter(|n| !n.is_empty())
            }
            fn accepted_at(&self) -> Option<&Time> {
                self.status.as_ref().and_then(|s| s.accepted_timestamp.as_ref())
            }
            fn started_at(&self) -> Option<&Time> {
                self.status.as_ref().and_then(|s| s.start_timestamp.as_ref())
            }
            fn operation_timeout(&self) -> Option<&str> {
                self.spec.operation_timeout.as_deref()
            }
            fn bsl(&self) -> &str {
                &self.spec.backup_storage_location
            }
            fn source_snapshot(&self) -> Option<(&str, &str)> {
                $source(self)
            }
        }
    };
}
common!(DataUpload, "upload", upload_source);
common!(DataDownload, "download", no_source);

fn upload_source(du: &DataUpload) -> Option<(&str, &str)> {
    du.spec.csi_snapshot.as_ref().map(|c| (du.spec.source_namespace.as_str(), c.volume_snapshot.as_str()))
}

fn no_source(_: &DataDownload) -> Option<(&str, &str)> {
    None
}

/// A Go `time.Duration` string (`"10m0s"`, `"1h30m"`, `"45s"`, `"1.5h"`, `"300ms"`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    Duration::try_from_secs_f64(total).ok()
}

pub fn now() -> Time {
    Time(k8s_openapi::chrono::Utc::now())
}

/// The patch accepting an object: exclusive through its `resourceVersion` (the API server
/// answers 409 when another node changed it first).
pub fn accept_patch(resource_version: &str, node: &str) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {"phase": "Accepted", "acceptedByNode": node, "acceptedTimestamp": now()},
    })
}

/// `Prepared` on `node`, exclusive.
pub fn prepare_patch(resource_version: &str, node: &str) -> Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {"phase": "Prepared", "node": node},
    })
}

/// `InProgress`: the data path starts here. DataUploads also get `nodeOS` (it flows to the
/// DataDownload's `spec.nodeOS`); DataDownloads have no such status field.
pub fn start_patch(resource_version: &str, node: &str, upload: bool) -> Value {
    let mut st = json!({"phase": "InProgress", "node": node, "startTimestamp": now()});
    if upload {
        st["nodeOS"] = json!("linux");
    }
    json!({"metadata": {"resourceVersion": resource_version}, "status": st})
}

pub fn progress_patch(done: u64, total: u64) -> Value {
    json!({"status": {"progress": {"bytesDone": done as i64, "totalBytes": total.max(done) as i64}}})
}

/// A terminal phase with its message; `startTimestamp` is set if the job never started.
pub fn end_patch(phase: Phase, message: &str, started: bool) -> Value {
    let mut st = json!({"phase": phase.as_str(), "completionTimestamp": now()});
    if !message.is_empty() {
        st["message"] = json!(message);
    }
    if !started {
        st["startTimestamp"] = st["completionTimestamp"].clone();
    }
    json!({"status": st})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_velero_writes_them() {
        assert_eq!(parse_go_duration("10m0s"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("4h"), Some(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_go_duration("1h30m15s"), Some(Duration::from_secs(5415)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "10x", "m", "-1s", "1e400h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_accept_patch_carries_the_resource_version_and_the_node() {
        let p = accept_patch("42", "n1");
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["status"]["phase"], "Accepted");
        assert_eq!(p["status"]["acceptedByNode"], "n1");
        assert!(p["status"]["acceptedTimestamp"].as_str().unwrap().ends_with('Z'));
        assert!(start_patch("1", "n", false)["status"].get("nodeOS").is_none());
        assert_eq!(start_patch("1", "n", true)["status"]["nodeOS"], "linux");
        let e = end_patch(Phase::Failed, "boom", false);
        assert_eq!(e["status"]["startTimestamp"], e["status"]["completionTimestamp"]);
    }
}
