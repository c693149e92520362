//! Which volumes a VolumeBackup takes: a pure function of its spec and the cluster's
//! namespaces, PVCs and pods.
//!
//! - namespaces: `includedNamespaces` (empty or `*`: all) minus `excludedNamespaces`;
//! - PVCs there matching `selector`, bound (a pending claim has no data);
//! - with `podSelector`, only PVCs mounted by a pod it matches;
//! - Velero's pod annotations, as its fs-backup reads them: `backup.velero.io/backup-volumes`
//!   (comma-separated pod volume names) limits that pod's volumes to those named, and
//!   `backup.velero.io/backup-volumes-excludes` removes volumes;
//! - each PVC goes to the node of a running pod mounting it (hooks and freezes run in that
//!   pod); a PVC no pod mounts has no node (live mode skips it; CSI mode snapshots it anyway).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use super::types::{VolumeBackupSpec, VolumePhase, VolumeStatus};

pub const INCLUDE_ANNOTATION: &str = "backup.velero.io/backup-volumes";
pub const EXCLUDE_ANNOTATION: &str = "backup.velero.io/backup-volumes-excludes";

fn selector(field: &str, s: &Option<LabelSelector>) -> Result<Option<Selector>, String> {
    s.clone().map(|s| Selector::try_from(s).map_err(|e| format!("{field}: {e}"))).transpose()
}

fn listed(annotations: &BTreeMap<String, String>, key: &str) -> Option<Vec<String>> {
    annotations.get(key).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
}

/// A running pod mounting a claim.
struct Mount {
    pod: String,
    /// The pod's name for the volume.
    volume: String,
    node: String,
    /// The pod selector and the pod's annotations take it.
    wanted: bool,
    running: bool,
}

/// Whether `ns` is selected.
pub fn namespace_selected(spec: &VolumeBackupSpec, ns: &str) -> bool {
    let inc = &spec.included_namespaces;
    (inc.is_empty() || inc.iter().any(|i| i == "*" || i == ns)) && !spec.excluded_namespaces.iter().any(|e| e == ns)
}

/// The volumes `spec` selects, keyed `"<namespace>/<pvc>"`, each `Pending`. `mode` is written
/// into each (`Live` or `CSI`). An invalid selector is an error naming the field.
pub fn select(
    spec: &VolumeBackupSpec,
    mode: &str,
    pvcs: &[PersistentVolumeClaim],
    pods: &[Pod],
) -> Result<BTreeMap<String, VolumeStatus>, String> {
    let pvc_sel = selector("spec.selector", &spec.selector)?;
    let pod_sel = selector("spec.podSelector", &spec.pod_selector)?;
    // (namespace, claim) → the running pods mounting it.
    let mut mounts: BTreeMap<(String, String), Vec<Mount>> = BTreeMap::new();
    for pod in pods {
        let ns = pod.namespace().unwrap_or_default();
        if !namespace_selected(spec, &ns) {
            continue;
        }
        if pod.labels().contains_key(crate::expose::MOVER_LABEL) {
            continue;
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
        if node.is_empty() || matches!(phase, "Succeeded" | "Failed") || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let matched = pod_sel.as_ref().is_none_or(|s| s.matches(pod.labels()));
        let only = listed(pod.annotations(), INCLUDE_ANNOTATION);
        let excluded = listed(pod.annotations(), EXCLUDE_ANNOTATION).unwrap_or_default();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(claim) = v.persistent_volume_claim.as_ref() else { continue };
            let wanted = matched && only.as_ref().is_none_or(|o| o.contains(&v.name)) && !excluded.contains(&v.name);
            mounts.entry((ns.clone(), claim.claim_name.clone())).or_default().push(Mount {
                pod: pod.name_any(),
                volume: v.name.clone(),
                node: node.clone(),
                wanted,
                running: phase == "Running",
            });
        }
    }
    let mut out = BTreeMap::new();
    for pvc in pvcs {
        let ns = pvc.namespace().unwrap_or_default();
        let name = pvc.name_any();
        if !namespace_selected(spec, &ns) || !pvc_sel.as_ref().is_none_or(|s| s.matches(pvc.labels())) {
            continue;
        }
        // Ferry's own (a mover's clone of a snapshot, a restore's staging claim): never data.
        if pvc.labels().contains_key(crate::expose::OWNER_LABEL) {
            continue;
        }
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            continue;
        }
        let users = mounts.get(&(ns.clone(), name.clone())).map(Vec::as_slice).unwrap_or_default();
        // A pod annotation or the pod selector excluding the volume excludes the PVC; a PVC
        // no pod mounts is taken unless a pod selector asks for mounted ones.
        // A running pod first (its volume is mounted); a pending one only if none runs.
        let chosen = users.iter().filter(|u| u.wanted).min_by_key(|u| !u.running);
        if chosen.is_none() && (!users.is_empty() || pod_sel.is_some()) {
            continue;
        }
        let spec = pvc.spec.as_ref();
        let mut v = VolumeStatus {
            namespace: ns.clone(),
            pvc: name.clone(),
            mode: mode.to_string(),
            phase: VolumePhase::Pending,
            storage_class: spec.and_then(|s| s.storage_class_name.clone()),
            size: spec.and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())),
            volume_mode: spec.and_then(|s| s.volume_mode.clone()),
            ..Default::default()
        };
        if let Some(m) = chosen {
            v.pod = Some(m.pod.clone());
            v.volume = Some(m.volume.clone());
            v.node = m.node.clone();
        }
        out.insert(format!("{ns}/{name}"), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc(ns: &str, name: &str, labels: serde_json::Value, bound: bool) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "status": {"phase": if bound { "Bound" } else { "Pending" }}
        }))
        .unwrap()
    }

    fn pod(ns: &str, name: &str, labels: serde_json::Value, ann: serde_json::Value, claims: &[(&str, &str)]) -> Pod {
        let vols: Vec<_> =
            claims.iter().map(|(v, c)| json!({"name": v, "persistentVolumeClaim": {"claimName": c}})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels, "annotations": ann},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}], "volumes": vols},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    fn keys(m: &BTreeMap<String, VolumeStatus>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    #[test]
    fn namespaces_labels_and_velero_annotations() {
        let pvcs = vec![
            pvc("a", "data", json!({"tier": "db"}), true),
            pvc("a", "logs", json!({"tier": "db"}), true),
            pvc("a", "cache", json!({"tier": "web"}), true),
            pvc("a", "pending", json!({"tier": "db"}), false),
            pvc("b", "data", json!({"tier": "db"}), true),
            pvc("c", "loose", json!({}), true),
            pvc("velero", "ferry-du-1", json!({"ferry.dev/owner-uid": "u1"}), true),
        ];
        let pods = vec![
            pod(
                "a",
                "db-0",
                json!({"app": "db"}),
                json!({EXCLUDE_ANNOTATION: "logs"}),
                &[("d", "data"), ("logs", "logs")],
            ),
            pod("a", "web", json!({"app": "web"}), json!({INCLUDE_ANNOTATION: "x"}), &[("c", "cache")]),
            pod("b", "db-0", json!({"app": "db"}), json!({}), &[("d", "data")]),
        ];
        // A pod stuck Pending on another node, named to sort first, does not take app2's claim.
        let mut pods = pods;
        let mut stuck = pod("b", "a-stuck", json!({}), json!({}), &[("d", "data")]);
        stuck.spec.as_mut().unwrap().node_name = Some("n9".into());
        stuck.status.as_mut().unwrap().phase = Some("Pending".into());
        pods.insert(0, stuck);
        let all = VolumeBackupSpec::default();
        let got = select(&all, "Live", &pvcs, &pods).unwrap();
        assert_eq!(got["b/data"].pod.as_deref(), Some("db-0"), "the running pod's node");
        // logs: excluded by annotation; cache: its pod opts in only volume "x"; pending: unbound.
        assert_eq!(keys(&got), ["a/data", "b/data", "c/loose"]);
        assert_eq!(got["a/data"].pod.as_deref(), Some("db-0"));
        assert_eq!(got["a/data"].volume.as_deref(), Some("d"));
        assert_eq!(got["a/data"].node, "n1");
        assert_eq!(got["c/loose"].node, "", "no pod mounts it");

        let spec = VolumeBackupSpec {
            included_namespaces: vec!["*".into()],
            excluded_namespaces: vec!["b".into()],
            ..Default::default()
        };
        assert_eq!(keys(&select(&spec, "Live", &pvcs, &pods).unwrap()), ["a/data", "c/loose"]);

        let spec = VolumeBackupSpec { included_namespaces: vec!["a".into(), "b".into()], ..Default::default() };
        assert_eq!(keys(&select(&spec, "Live", &pvcs, &pods).unwrap()), ["a/data", "b/data"]);

        let by_label: LabelSelector = serde_json::from_value(json!({"matchLabels": {"tier": "db"}})).unwrap();
        let spec = VolumeBackupSpec { selector: Some(by_label), ..Default::default() };
        assert_eq!(keys(&select(&spec, "CSI", &pvcs, &pods).unwrap()), ["a/data", "b/data"]);

        let by_pod: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}))
                .unwrap();
        let spec = VolumeBackupSpec {
            pod_selector: Some(by_pod),
            included_namespaces: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(keys(&select(&spec, "Live", &pvcs, &pods).unwrap()), ["a/data"]);
    }

    #[test]
    fn an_invalid_selector_names_the_field() {
        let bad: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "app", "operator": "Near", "values": ["x"]}]}))
                .unwrap();
        let spec = VolumeBackupSpec { pod_selector: Some(bad), ..Default::default() };
        let e = select(&spec, "Live", &[], &[]).unwrap_err();
        assert!(e.starts_with("spec.podSelector:"), "{e}");
    }
}
