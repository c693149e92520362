//! Choosing snapshots: filters (tags, host, paths), `latest`, and unique id prefixes.

use anyhow::{Result, bail};
use repo_format::{Repository, Snapshot, SnapshotId};

use crate::cli::FilterArgs;

/// Parse `key=value` (a bare `key` means an empty value).
pub fn parse_tag(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        bail!("tag {s:?} has no key: use key=value");
    }
    Ok((k.to_string(), v.to_string()))
}

/// Does a snapshot pass the filters?
pub fn matches(s: &Snapshot, f: &FilterArgs) -> Result<bool> {
    if let Some(h) = &f.host {
        if &s.hostname != h {
            return Ok(false);
        }
    }
    for t in &f.tags {
        let (k, v) = parse_tag(t)?;
        if !s.tags.iter().any(|(sk, sv)| *sk == k && ((v.is_empty() && !t.contains('=')) || *sv == v)) {
            return Ok(false);
        }
    }
    for p in &f.paths {
        if !s.paths.iter().any(|sp| sp == p.as_bytes()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Resolve `latest` or an id prefix to one snapshot.
pub async fn find(repo: &Repository, spec: &str, f: &FilterArgs) -> Result<(SnapshotId, Snapshot)> {
    let all = repo.snapshots().await?;
    if spec == "latest" {
        let mut found = None;
        for (id, s) in all {
            if matches(&s, f)? {
                found = Some((id, s));
            }
        }
        return match found {
            Some(x) => Ok(x),
            None => bail!("no snapshot matches the filters (latest)"),
        };
    }
    if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{spec:?} is not a snapshot id: give `latest` or at least 4 hex digits");
    }
    let spec = spec.to_ascii_lowercase();
    let mut hits: Vec<_> = all.into_iter().filter(|(id, _)| id.to_string().starts_with(&spec)).collect();
    match hits.len() {
        0 => bail!("no snapshot {spec} in the repository (see `ferry snapshots`)"),
        1 => Ok(hits.remove(0)),
        n => bail!("snapshot prefix {spec} is ambiguous ({n} snapshots): give more digits"),
    }
}
