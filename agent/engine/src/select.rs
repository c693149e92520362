//! Choosing snapshots: filters (tags, host, paths), `latest`, and unique id prefixes.

use anyhow::{Result, bail};
use repo_format::{Content, Node, Repository, Snapshot, SnapshotId, TreeId};

/// Which snapshots a command considers (all given filters must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    pub host: Option<String>,
    /// `key=value`, or a bare `key` for any value.
    pub tags: Vec<String>,
    pub paths: Vec<String>,
}

/// Parse `key=value` (a bare `key` means an empty value).
pub fn parse_tag(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        bail!("tag {s:?} has no key: use key=value");
    }
    Ok((k.to_string(), v.to_string()))
}

/// Does a snapshot pass the filters?
pub fn matches(s: &Snapshot, f: &Filter) -> Result<bool> {
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

/// The latest snapshot, if any, and the snapshots passed over because they are dated in the
/// future.
pub type Latest = (Option<(SnapshotId, Snapshot)>, Vec<SnapshotId>);

/// The newest of `all` (oldest first) that passes the filters and is not dated in the future
/// (beyond `FUTURE_SKEW_NS`): a snapshot forged with a far-future date must not become
/// `latest` for ever. Skipped future snapshots are returned for a warning.
pub fn latest(all: Vec<(SnapshotId, Snapshot)>, f: &Filter, now_ns: i64) -> Result<Latest> {
    let limit = now_ns.saturating_add(repo_format::FUTURE_SKEW_NS);
    let (mut found, mut future) = (None, Vec::new());
    for (id, s) in all {
        if !matches(&s, f)? {
            continue;
        }
        if s.time_ns > limit {
            future.push(id);
        } else {
            found = Some((id, s));
        }
    }
    Ok((found, future))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Resolve `latest` or an id prefix to one snapshot.
pub async fn find(repo: &Repository, spec: &str, f: &Filter) -> Result<(SnapshotId, Snapshot)> {
    pick(repo.snapshots().await?, spec, f)
}

/// As `find`, among `all` (a repository's snapshots, oldest first).
pub fn pick(all: Vec<(SnapshotId, Snapshot)>, spec: &str, f: &Filter) -> Result<(SnapshotId, Snapshot)> {
    if spec == "latest" {
        let (found, future) = latest(all, f, now_ns())?;
        for id in &future {
            tracing::warn!(
                "snapshot {} is dated in the future and is not taken as latest: name it by id to use it",
                id.0.short()
            );
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

/// The tree id of the directory `path` (`/`-separated) inside the tree `root`.
pub async fn subtree(r: &Repository, root: TreeId, path: &str) -> Result<TreeId> {
    let mut cur = root;
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let tree = r.read_tree(&cur).await?;
        match tree.nodes.iter().find(|n| n.name == comp.as_bytes()) {
            Some(Node { content: Content::Tree(t), .. }) => cur = *t,
            Some(_) => bail!("{path}: {comp} is not a directory in the snapshot"),
            None => bail!("{path}: no entry {comp} in the snapshot"),
        }
    }
    Ok(cur)
}
