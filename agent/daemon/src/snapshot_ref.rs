//! The `snapshotID` the agent reports for a DataUpload: `ferry:<repository id>:<snapshot id>`,
//! both in hex. A DataDownload receives nothing else from its backup (Velero drops
//! `dataMoverResult` on the way), so the reference names the repository too: a restore that
//! was given another location's repository says so instead of "snapshot not found".

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};
use repo_format::{RepoConfig, SnapshotId};

/// Hex digits of the repository id kept in a reference.
const REPO_ID_HEX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The first `REPO_ID_HEX` hex digits of the repository id.
    pub repository: String,
    pub snapshot: SnapshotId,
}

impl SnapshotRef {
    pub fn new(config: &RepoConfig, snapshot: SnapshotId) -> SnapshotRef {
        SnapshotRef { repository: config.repo_id.to_string()[..REPO_ID_HEX].to_string(), snapshot }
    }

    /// Fail unless the snapshot belongs to `config`'s repository (of location `bsl`).
    pub fn check(&self, config: &RepoConfig, bsl: &str) -> Result<()> {
        let here = &config.repo_id.to_string()[..REPO_ID_HEX];
        if self.repository != here {
            bail!(
                "snapshot {} belongs to repository {}, but BackupStorageLocation {bsl} holds repository {here}",
                self.snapshot,
                self.repository
            );
        }
        Ok(())
    }
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ferry:{}:{}", self.repository, self.snapshot)
    }
}

impl FromStr for SnapshotRef {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || anyhow!("{s:?} is not a ferry snapshot reference (ferry:<repository id>:<snapshot id>)");
        let rest = s.strip_prefix("ferry:").ok_or_else(bad)?;
        let (repo, snap) = rest.split_once(':').ok_or_else(bad)?;
        if repo.len() != REPO_ID_HEX || !repo.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let snapshot = snap.parse::<SnapshotId>().map_err(|_| bad())?;
        Ok(SnapshotRef { repository: repo.to_string(), snapshot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_and_names_its_repository() {
        let cfg = RepoConfig::new(0);
        let id: SnapshotId = "ab".repeat(32).parse().unwrap();
        let r = SnapshotRef::new(&cfg, id);
        let text = r.to_string();
        assert!(text.starts_with("ferry:") && text.len() == 6 + 16 + 1 + 64, "{text}");
        assert_eq!(text.parse::<SnapshotRef>().unwrap(), r);
        r.check(&cfg, "default").unwrap();
        let other = RepoConfig::new(0);
        let e = r.check(&other, "second").unwrap_err().to_string();
        assert!(e.contains("BackupStorageLocation second holds repository"), "{e}");
        for bad in ["", "ferry:", "kopia:abc", "ferry:0123456789abcdef", "ferry:0123:ab", "ferry:0123456789ABCDEF:ab"] {
            assert!(bad.parse::<SnapshotRef>().is_err(), "{bad:?}");
        }
    }
}
