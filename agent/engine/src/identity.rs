//! Volume identity: what a snapshot is a copy of, whatever node or pod took it.
//!
//! Recorded as the snapshot tag `identity` (for a Kubernetes volume also `namespace` and `pvc`;
//! who asked for the backup goes in `requester`). The parent of a backup with an identity is
//! the newest snapshot with the same identity, not dated in the future, from any host and any
//! mount path; its files cache is one database per identity, keyed by the path inside the
//! volume, so a volume mounted elsewhere (a rescheduled pod, another node) still finds its
//! entries. Without an identity, the parent is found by host and source paths, as restic does.

use repo_format::Snapshot;

/// The snapshot tag holding the identity.
pub const IDENTITY_TAG: &str = "identity";
/// The snapshot tag naming who asked for the backup (a Velero backup, a schedule, a user).
pub const REQUESTER_TAG: &str = "requester";

/// What a volume is, independent of where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    value: String,
    /// Tags written with it (`namespace`, `pvc`).
    tags: Vec<(String, String)>,
}

impl Identity {
    /// A Kubernetes persistent volume claim: `pvc/<namespace>/<name>`.
    pub fn pvc(namespace: &str, name: &str) -> anyhow::Result<Self> {
        for (what, v) in [("namespace", namespace), ("PVC name", name)] {
            if v.is_empty() || v.contains('/') {
                anyhow::bail!("the {what} {v:?} is not valid: it must be non-empty and contain no '/'");
            }
        }
        Ok(Identity {
            value: format!("pvc/{namespace}/{name}"),
            tags: vec![("namespace".into(), namespace.into()), ("pvc".into(), name.into())],
        })
    }

    /// Any other name a user gives a source (e.g. `db-volume`).
    pub fn named(value: &str) -> anyhow::Result<Self> {
        if value.trim().is_empty() {
            anyhow::bail!("an identity must not be empty");
        }
        Ok(Identity { value: value.to_string(), tags: Vec::new() })
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The identity a snapshot records, if any.
    pub fn of(s: &Snapshot) -> Option<&str> {
        s.tags.iter().find(|(k, _)| k == IDENTITY_TAG).map(|(_, v)| v.as_str())
    }

    /// Add the identity's tags (and the requester's) to `tags`, replacing any of the same keys.
    pub fn tag(&self, tags: &mut Vec<(String, String)>, requester: Option<&str>) {
        let mut add = vec![(IDENTITY_TAG.to_string(), self.value.clone())];
        add.extend(self.tags.iter().cloned());
        if let Some(r) = requester {
            add.push((REQUESTER_TAG.to_string(), r.to_string()));
        }
        tags.retain(|(k, _)| !add.iter().any(|(a, _)| a == k));
        tags.extend(add);
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvc_identities_are_checked_and_tagged() {
        let id = Identity::pvc("shop", "data").unwrap();
        assert_eq!(id.as_str(), "pvc/shop/data");
        let mut tags = vec![("pvc".to_string(), "old".to_string()), ("x".to_string(), "y".to_string())];
        id.tag(&mut tags, Some("backup-1"));
        tags.sort();
        assert_eq!(
            tags,
            [
                ("identity", "pvc/shop/data"),
                ("namespace", "shop"),
                ("pvc", "data"),
                ("requester", "backup-1"),
                ("x", "y")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(Identity::pvc("a/b", "c").is_err());
        assert!(Identity::pvc("a", "").is_err());
        assert!(Identity::named(" ").is_err());
    }
}
