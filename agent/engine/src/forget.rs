//! Retention: which snapshots a `forget` policy keeps and which it removes.
//!
//! A pure decision over a list of snapshots: no I/O, no clock (the caller passes "now"), nothing
//! removed here. The rules are restic's (`restic forget`, "Removing backup snapshots"):
//!
//! - Snapshots are split into groups (`GroupBy`, by default host and paths) and the policy is
//!   applied to each group on its own. Within a group snapshots are taken newest first (equal
//!   times: the higher id counts as newer, as `select::latest` does).
//! - `last N` keeps the N newest. `hourly`/`daily`/`weekly`/`monthly`/`yearly N` keep, for each
//!   of the last N hours (days, ISO weeks, months, years) that hold a snapshot, the newest
//!   snapshot of it; periods without a snapshot do not count. `Count::Unlimited` (restic's
//!   `unlimited`, `-1`) counts every period.
//! - When a count is not used up by the time the oldest snapshot of the group is reached, the
//!   oldest is kept too ("oldest daily snapshot"), so a young group keeps its history.
//! - `within D` keeps every snapshot newer than D before the group's newest snapshot (not
//!   before now); `within_daily D` (and the other periods) keeps the newest snapshot of each day
//!   within D of it, and the oldest one in that range when it is the group's oldest. Snapshots
//!   dated in the future (beyond `FUTURE_SKEW_NS`) are not taken as the newest.
//! - `keep_tags` keeps every snapshot carrying one of the tags (`key=value`, or a bare `key`
//!   for any value; see `select::has_tag`).
//! - A snapshot kept by several rules lists every reason, in restic's words ("last snapshot",
//!   "daily snapshot", "oldest monthly snapshot", "within 2d", "daily within 7d",
//!   "has tag backup=x").
//!
//! Unlike restic, which uses the local time zone, periods are calendar periods **in UTC**
//! (nodes run in UTC): a day is 00:00 to 24:00 UTC, a week an ISO 8601 week (Monday to
//! Sunday; 2024-12-30 is in week 1 of 2025). Durations are exact lengths (a `std` `Duration`),
//! not calendar steps: restic's `1m` is a calendar month, a Ferry month is what the caller
//! parsed it to.
//!
//! An empty policy (`Policy::is_empty`) removes every snapshot, as restic's does: callers must
//! refuse it first.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{Result, bail};
use repo_format::{FUTURE_SKEW_NS, FileKind, Snapshot, SnapshotId, Storage};

/// How many periods (or snapshots, for `last`) a rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// At most this many; 0 is the same as no rule.
    Upto(u32),
    /// Every one (restic's `unlimited`, `-1`).
    Unlimited,
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Upto(n) => write!(f, "{n}"),
            Count::Unlimited => f.write_str("all"),
        }
    }
}

/// What to keep. Every rule that matches a snapshot keeps it (the rules are ORed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: Option<Count>,
    pub hourly: Option<Count>,
    pub daily: Option<Count>,
    pub weekly: Option<Count>,
    pub monthly: Option<Count>,
    pub yearly: Option<Count>,
    /// Every snapshot newer than this before the group's newest.
    pub within: Option<Duration>,
    pub within_hourly: Option<Duration>,
    pub within_daily: Option<Duration>,
    pub within_weekly: Option<Duration>,
    pub within_monthly: Option<Duration>,
    pub within_yearly: Option<Duration>,
    /// `key=value` or a bare `key`; a snapshot with any of them is kept.
    pub keep_tags: Vec<String>,
}

impl Policy {
    /// No rule at all (counts of 0 and zero durations are no rule): applying it would remove
    /// everything.
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|(c, _)| c.is_none())
            && self.within.is_none_or(|d| d.is_zero())
            && self.within_periods().iter().all(|(d, _)| d.is_none())
            && self.keep_tags.is_empty()
    }

    /// The count rules in restic's order; `None` for no rule (absent or 0).
    fn counts(&self) -> [(Option<Count>, Option<Period>); 6] {
        let on = |c: Option<Count>| c.filter(|c| *c != Count::Upto(0));
        [
            (on(self.last), None),
            (on(self.hourly), Some(Period::Hour)),
            (on(self.daily), Some(Period::Day)),
            (on(self.weekly), Some(Period::Week)),
            (on(self.monthly), Some(Period::Month)),
            (on(self.yearly), Some(Period::Year)),
        ]
    }

    /// The `within_*` period rules in restic's order; `None` for no rule (absent or zero).
    fn within_periods(&self) -> [(Option<Duration>, Period); 5] {
        let on = |d: Option<Duration>| d.filter(|d| !d.is_zero());
        [
            (on(self.within_hourly), Period::Hour),
            (on(self.within_daily), Period::Day),
            (on(self.within_weekly), Period::Week),
            (on(self.within_monthly), Period::Month),
            (on(self.within_yearly), Period::Year),
        ]
    }
}

/// `keep 2 last, 7 daily snapshots; daily snapshots within 7d; all snapshots within 2d of the
/// newest; snapshots with tag pin`.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let counts: Vec<String> = self
            .counts()
            .iter()
            .filter_map(|(c, p)| c.map(|c| format!("{c} {}", p.map_or("last", Period::adjective))))
            .collect();
        if !counts.is_empty() {
            parts.push(format!("{} snapshots", counts.join(", ")));
        }
        for (d, p) in self.within_periods() {
            if let Some(d) = d {
                parts.push(format!("{} snapshots within {}", p.adjective(), duration_label(d)));
            }
        }
        if let Some(d) = self.within.filter(|d| !d.is_zero()) {
            parts.push(format!("all snapshots within {} of the newest", duration_label(d)));
        }
        if !self.keep_tags.is_empty() {
            parts.push(format!("snapshots with tag {}", self.keep_tags.join(" or ")));
        }
        if parts.is_empty() { f.write_str("keep nothing") } else { write!(f, "keep {}", parts.join("; ")) }
    }
}

/// Which snapshots form a group: the policy applies to each group on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    /// All tags, as a set.
    pub tags: bool,
    /// The value of each of these tags (`tag:KEY`).
    pub tag_keys: Vec<String>,
}

impl Default for GroupBy {
    /// restic's default: host and paths.
    fn default() -> Self {
        GroupBy { host: true, paths: true, tags: false, tag_keys: Vec::new() }
    }
}

impl GroupBy {
    /// A comma-separated list of `host`, `paths`, `tags` (all tags) and `tag:KEY` (the value
    /// of the tag KEY: `tag:namespace,tag:pvc` makes each Kubernetes volume a group); `host`,
    /// `path` and `tag` are accepted for `hosts`, `paths` and `tags` as in restic. The empty
    /// string is one group of everything.
    pub fn parse(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy { host: false, paths: false, tags: false, tag_keys: Vec::new() };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "host" | "hosts" => g.host = true,
                "path" | "paths" => g.paths = true,
                "tag" | "tags" => g.tags = true,
                _ => match item.strip_prefix("tag:") {
                    Some("") => bail!("group-by {item:?} names no tag: use tag:KEY"),
                    Some(k) if k.contains('=') => bail!("group-by {item:?}: give the tag's key only (tag:KEY)"),
                    Some(k) => {
                        if !g.tag_keys.iter().any(|x| x == k) {
                            g.tag_keys.push(k.to_string());
                        }
                    }
                    None => bail!("unknown group-by {item:?}: use host, paths, tags or tag:KEY, separated by commas"),
                },
            }
        }
        Ok(g)
    }

    /// The group of a snapshot.
    pub fn key(&self, s: &Snapshot) -> GroupKey {
        let paths = self.paths.then(|| {
            let mut p: Vec<String> = s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            p.sort();
            p
        });
        let tags = self.tags.then(|| {
            let mut t: Vec<String> = s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            t.sort();
            t.dedup();
            t
        });
        let tag = self.tag_keys.iter().map(|k| (k.clone(), s.tag(k).map(str::to_string))).collect();
        GroupKey { host: self.host.then(|| s.hostname.clone()), paths, tags, tag }
    }
}

/// What the snapshots of a group share; a field is `None` when the grouping does not use it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct GroupKey {
    pub host: Option<String>,
    /// Sorted.
    pub paths: Option<Vec<String>>,
    /// Every tag as `key=value`, sorted.
    pub tags: Option<Vec<String>>,
    /// `tag:KEY` groupings: KEY → the snapshot's value, `None` when it has no such tag.
    pub tag: BTreeMap<String, Option<String>>,
}

/// `host n1, paths /a /b, tags a=1,b=2, tag pvc=db` (`all snapshots` for no grouping).
impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths {}", p.join(" ")));
        }
        if let Some(t) = &self.tags {
            parts.push(if t.is_empty() { "no tags".to_string() } else { format!("tags {}", t.join(",")) });
        }
        for (k, v) in &self.tag {
            parts.push(match v {
                Some(v) => format!("tag {k}={v}"),
                None => format!("no tag {k}"),
            });
        }
        if parts.is_empty() { f.write_str("all snapshots") } else { f.write_str(&parts.join(", ")) }
    }
}

/// What happens to one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Kept, with every rule that keeps it.
    Keep {
        reasons: Vec<String>,
    },
    Remove,
}

/// One snapshot of a group and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: SnapshotId,
    pub time_ns: i64,
    pub decision: Decision,
}

/// One group: its key and its snapshots, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub key: GroupKey,
    pub entries: Vec<Entry>,
}

impl Group {
    /// The snapshots kept, with their reasons, newest first.
    pub fn kept(&self) -> impl Iterator<Item = (&Entry, &[String])> {
        self.entries.iter().filter_map(|e| match &e.decision {
            Decision::Keep { reasons } => Some((e, reasons.as_slice())),
            Decision::Remove => None,
        })
    }

    /// The snapshots removed, newest first.
    pub fn removed(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.decision == Decision::Remove)
    }
}

/// Apply `policy` to `snaps` (any order) grouped by `group_by`; `now_ns` decides which
/// snapshots are dated in the future. Groups come in key order; every snapshot is in exactly
/// one group with one decision.
pub fn apply(snaps: &[(SnapshotId, Snapshot)], policy: &Policy, group_by: &GroupBy, now_ns: i64) -> Vec<Group> {
    let mut groups: BTreeMap<GroupKey, Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    for s in snaps {
        groups.entry(group_by.key(&s.1)).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(key, mut list)| {
            list.sort_by_key(|(id, s)| std::cmp::Reverse((s.time_ns, *id)));
            let decisions = decide(&list, policy, now_ns);
            let entries = list
                .iter()
                .zip(decisions)
                .map(|((id, s), decision)| Entry { id: *id, time_ns: s.time_ns, decision })
                .collect();
            Group { key, entries }
        })
        .collect()
}

/// The decisions for one group, `list` newest first.
fn decide(list: &[&(SnapshotId, Snapshot)], policy: &Policy, now_ns: i64) -> Vec<Decision> {
    // The newest snapshot not dated in the future: durations count back from it. When every
    // snapshot is in the future, every one is within any duration (restic: the zero time).
    let limit = now_ns.saturating_add(FUTURE_SKEW_NS);
    let newest = list.iter().map(|(_, s)| s.time_ns).filter(|t| *t <= limit).max();
    let within = |d: Duration, t: i64| match newest {
        Some(n) => t > n.saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        None => true,
    };
    struct Counted {
        period: Option<Period>,
        left: Count,
        last: Option<i64>,
    }
    let mut counted: Vec<Counted> = policy
        .counts()
        .into_iter()
        .filter_map(|(c, period)| c.map(|left| Counted { period, left, last: None }))
        .collect();
    let mut periods: Vec<(Duration, Period, Option<i64>)> =
        policy.within_periods().into_iter().filter_map(|(d, p)| d.map(|d| (d, p, None))).collect();
    let oldest = list.len().saturating_sub(1);
    let mut out = Vec::with_capacity(list.len());
    for (nr, (_, s)) in list.iter().enumerate() {
        let mut reasons = Vec::new();
        for t in &policy.keep_tags {
            if crate::select::has_tag(s, t).unwrap_or(false) {
                reasons.push(format!("has tag {t}"));
            }
        }
        if let Some(d) = policy.within.filter(|d| !d.is_zero()) {
            if within(d, s.time_ns) {
                reasons.push(format!("within {}", duration_label(d)));
            }
        }
        for c in counted.iter_mut() {
            if c.left == Count::Upto(0) {
                continue;
            }
            // `last` puts every snapshot in a bucket of its own.
            let val = c.period.map_or(nr as i64, |p| p.bucket(s.time_ns));
            if c.last != Some(val) || nr == oldest {
                let what = c.period.map_or("last", Period::adjective);
                reasons.push(if c.last == Some(val) {
                    format!("oldest {what} snapshot")
                } else {
                    format!("{what} snapshot")
                });
                c.last = Some(val);
                if let Count::Upto(n) = &mut c.left {
                    *n -= 1;
                }
            }
        }
        for (d, p, last) in periods.iter_mut() {
            if !within(*d, s.time_ns) {
                continue;
            }
            let val = p.bucket(s.time_ns);
            if *last != Some(val) || nr == oldest {
                let oldest = if *last == Some(val) { "oldest " } else { "" };
                reasons.push(format!("{oldest}{} within {}", p.adjective(), duration_label(*d)));
                *last = Some(val);
            }
        }
        out.push(if reasons.is_empty() { Decision::Remove } else { Decision::Keep { reasons } });
    }
    out
}

/// A calendar period in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn adjective(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    /// A number naming the period (UTC) that holds `ns`: equal for two times in the same
    /// period, and never larger for an earlier time.
    fn bucket(self, ns: i64) -> i64 {
        let secs = ns.div_euclid(1_000_000_000);
        let days = secs.div_euclid(86_400);
        match self {
            Period::Hour => secs.div_euclid(3_600),
            Period::Day => days,
            Period::Week => {
                let (y, w) = iso_week(days);
                y * 100 + i64::from(w)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + i64::from(m)
            }
            Period::Year => civil_from_days(days).0,
        }
    }
}

/// A duration as it reads in a reason: whole years or months as humantime parses them
/// (`1y` is 365.25 days, `1month` 30.44 days), else days, hours, minutes and seconds (`2d`,
/// `1d12h`, `90min` → `1h30min`).
pub fn duration_label(d: Duration) -> String {
    const YEAR: u64 = 31_557_600;
    const MONTH: u64 = 2_630_016;
    let s = d.as_secs();
    if s > 0 && s % YEAR == 0 {
        return format!("{}y", s / YEAR);
    }
    if s > 0 && s % MONTH == 0 {
        let n = s / MONTH;
        return format!("{n}{}", if n == 1 { "month" } else { "months" });
    }
    let mut out = String::new();
    let (days, hours, mins, secs) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    for (n, unit) in [(days, "d"), (hours, "h"), (mins, "min"), (secs, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out = format!("{}ms", d.as_millis());
    }
    out
}

/// The civil date (year, month 1–12, day 1–31) of a day counted from 1970-01-01, in the
/// proleptic Gregorian calendar.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01 so that the leap day ends each 4-, 100- and 400-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the 400-year era, 0..=146096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year, 0..=365
    let mp = (5 * doy + 2) / 153; // month counted from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day counted from 1970-01-01 of a civil date (the inverse of `civil_from_days`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The ISO 8601 (year, week 1–53) of a day counted from 1970-01-01: weeks run Monday to
/// Sunday and week 1 is the one holding the year's first Thursday, so a week's year is the
/// year of its Thursday.
pub fn iso_week(days: i64) -> (i64, u32) {
    let weekday = (days + 3).rem_euclid(7); // 0 = Monday (1970-01-01 was a Thursday)
    let thursday = days - weekday + 3;
    let year = civil_from_days(thursday).0;
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week as u32)
}

/// Snapshot objects removed at once.
const REMOVE_CONCURRENCY: usize = 4;

/// Remove the snapshot objects `ids`, a few at a time. One already gone (removed meanwhile by
/// someone else) is not a failure; the others that fail are returned, sorted, with their error,
/// and the rest are still removed.
pub async fn remove_snapshots(storage: &dyn Storage, ids: &[SnapshotId]) -> Vec<(SnapshotId, repo_format::Error)> {
    use futures::StreamExt;
    // Owned ids: a closure over `&SnapshotId` is not general enough for a spawned task's
    // `Send` future (rust-lang/rust#64552).
    let mut failed: Vec<_> = futures::stream::iter(ids.iter().copied())
        .map(|id| async move { (id, storage.remove(FileKind::Snapshot, &id.0).await) })
        .buffer_unordered(REMOVE_CONCURRENCY)
        .filter_map(|(id, r)| async move {
            match r {
                Ok(()) | Err(repo_format::Error::NotFound { .. }) => None,
                Err(e) => Some((id, e)),
            }
        })
        .collect()
        .await;
    failed.sort_by_key(|(id, _)| *id);
    failed
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod remove_tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use bytes::Bytes;
    use repo_format::{Error, Id};

    use super::*;

    /// Holds snapshot ids; removing `broken` fails, removing a missing one is `NotFound`.
    #[derive(Debug)]
    struct Snapshots {
        present: Mutex<BTreeSet<Id>>,
        broken: Id,
    }

    #[async_trait::async_trait]
    impl Storage for Snapshots {
        fn location(&self) -> String {
            "test".into()
        }
        async fn create(&self, _: FileKind, _: &Id, _: Bytes) -> repo_format::Result<()> {
            Err(Error::Invalid("not in this test".into()))
        }
        async fn upload_file(&self, _: FileKind, _: &Id, _: std::fs::File, _: u64) -> repo_format::Result<()> {
            Err(Error::Invalid("not in this test".into()))
        }
        async fn read(&self, _: FileKind, _: &Id, _: u64) -> repo_format::Result<Bytes> {
            Err(Error::Invalid("not in this test".into()))
        }
        async fn read_range(&self, _: FileKind, _: &Id, _: u64, _: u64) -> repo_format::Result<Bytes> {
            Err(Error::Invalid("not in this test".into()))
        }
        async fn list(&self, _: FileKind) -> repo_format::Result<Vec<(Id, u64)>> {
            Err(Error::Invalid("not in this test".into()))
        }
        async fn remove(&self, kind: FileKind, id: &Id) -> repo_format::Result<()> {
            assert_eq!(kind, FileKind::Snapshot, "only snapshot objects are removed");
            if *id == self.broken {
                return Err(Error::Invalid("refused by the test".into()));
            }
            match self.present.lock().unwrap().remove(id) {
                true => Ok(()),
                false => Err(Error::NotFound { kind, id: *id }),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_removal_is_reported_and_the_others_go_on() {
        let ids: Vec<SnapshotId> = (1..=9u8).map(|n| SnapshotId(Id([n; 32]))).collect();
        let storage = Snapshots {
            // 9 is already gone (removed meanwhile by someone else): not a failure.
            present: Mutex::new(ids[..8].iter().map(|s| s.0).collect()),
            broken: ids[4].0,
        };
        let failed = remove_snapshots(&storage, &ids).await;
        assert_eq!(failed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![ids[4]]);
        assert!(failed[0].1.to_string().contains("refused by the test"), "{}", failed[0].1);
        assert_eq!(*storage.present.lock().unwrap(), BTreeSet::from([ids[4].0]), "every other snapshot is removed");
    }
}
