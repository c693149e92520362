//! The retention rules on hand-made snapshot lists. Every expected outcome below was worked out
//! by hand from the rules in the module documentation (restic's), not by running the code;
//! the comment of each case shows the reasoning, newest snapshot first.

use std::time::Duration;

use repo_format::{Id, Snapshot, SnapshotId, Summary, TreeId};

use super::*;

/// ns since the epoch of an RFC 3339 UTC time (parsed by humantime, not by the code under test).
fn ns(t: &str) -> i64 {
    let st = humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    st.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// Snapshot number `n` (its id is `n` repeated, so a higher number is a higher id).
fn snap(n: u8, time: &str, host: &str, paths: &[&str], tags: &[(&str, &str)]) -> (SnapshotId, Snapshot) {
    let s = Snapshot {
        time_ns: ns(time),
        tree: TreeId::default(),
        parent: None,
        hostname: host.into(),
        username: "root".into(),
        program: "ferry test".into(),
        paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        summary: Summary::default(),
    };
    (SnapshotId(Id([n; 32])), s)
}

/// A snapshot of host `n1` and path `/data` without tags.
fn plain(n: u8, time: &str) -> (SnapshotId, Snapshot) {
    snap(n, time, "n1", &["/data"], &[])
}

fn number(id: &SnapshotId) -> u8 {
    id.0.0[0]
}

/// Per group: its key, the kept snapshots (number, reasons) and the removed ones, newest first.
type Outcome = Vec<(GroupKey, Vec<(u8, Vec<String>)>, Vec<u8>)>;

fn outcome(groups: &[Group]) -> Outcome {
    groups
        .iter()
        .map(|g| {
            let kept = g.kept().map(|(e, r)| (number(&e.id), r.to_vec())).collect();
            let removed = g.removed().map(|e| number(&e.id)).collect();
            (g.key.clone(), kept, removed)
        })
        .collect()
}

fn reasons(list: &[(u8, &[&str])]) -> Vec<(u8, Vec<String>)> {
    list.iter().map(|(n, r)| (*n, r.iter().map(|s| s.to_string()).collect())).collect()
}

const LATER: &str = "2030-01-01T00:00:00Z";

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3_600)
}

struct Case {
    name: &'static str,
    snaps: Vec<(u8, &'static str)>,
    policy: Policy,
    /// Evaluated at this time.
    now: &'static str,
    /// These carry the tag `pin=1`.
    pinned: &'static [u8],
    /// Kept, newest first, with every reason; every other snapshot is removed.
    kept: &'static [(u8, &'static [&'static str])],
}

/// One group (one host, one path): the rules themselves.
fn cases() -> Vec<Case> {
    let same_day_and_next = vec![
        (1, "2024-03-01T09:00:00Z"),
        (2, "2024-03-01T18:00:00Z"),
        (3, "2024-03-02T08:00:00Z"),
        (4, "2024-03-02T20:00:00Z"),
        (5, "2024-03-03T12:00:00Z"),
    ];
    // restic's documentation example: every weekday for two weeks, a second backup on Fridays,
    // no backup on the second Wednesday (2025-04-30).
    let restic_doc = vec![
        (1, "2025-04-21T11:00:00Z"),
        (2, "2025-04-22T11:00:00Z"),
        (3, "2025-04-23T11:00:00Z"),
        (4, "2025-04-24T11:00:00Z"),
        (5, "2025-04-25T11:00:00Z"),
        (6, "2025-04-25T23:00:00Z"),
        (7, "2025-04-28T11:00:00Z"),
        (8, "2025-04-29T11:00:00Z"),
        (9, "2025-05-01T11:00:00Z"),
        (10, "2025-05-02T11:00:00Z"),
        (11, "2025-05-02T23:00:00Z"),
    ];
    let months = vec![
        (1, "2024-01-31T23:00:00Z"),
        (2, "2024-02-01T00:30:00Z"),
        (3, "2024-02-29T12:00:00Z"),
        (4, "2024-03-01T00:00:00Z"),
        (5, "2024-03-15T12:00:00Z"),
    ];
    vec![
        Case {
            // 3, 2: the two newest.
            name: "keep-last 2, three on one day",
            snaps: vec![(1, "2024-03-01T10:00:00Z"), (2, "2024-03-01T11:00:00Z"), (3, "2024-03-01T12:00:00Z")],
            policy: Policy { last: Some(Count::Upto(2)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(3, &["last snapshot"]), (2, &["last snapshot"])],
        },
        Case {
            // 5 (03-03, 1 left), 4 (03-02, 0 left); 3, 2, 1: the count is used up.
            name: "keep-daily 2, several a day",
            snaps: same_day_and_next.clone(),
            policy: Policy { daily: Some(Count::Upto(2)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(5, &["daily snapshot"]), (4, &["daily snapshot"])],
        },
        Case {
            // 5 (4 left), 4 (3 left), 3 (same day as 4), 2 (03-01, 2 left), 1 (same day as 2,
            // but the oldest and 2 still left): kept as the oldest.
            name: "keep-daily 5 not used up keeps the oldest",
            snaps: same_day_and_next.clone(),
            policy: Policy { daily: Some(Count::Upto(5)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[
                (5, &["daily snapshot"]),
                (4, &["daily snapshot"]),
                (2, &["daily snapshot"]),
                (1, &["oldest daily snapshot"]),
            ],
        },
        Case {
            // 5 (03-20, 2 left), 4 (same day), 3 (03-06, 1 left), 2 (03-05, 0 left), 1: used
            // up. The days from 03-07 to 03-19 hold nothing and do not count.
            name: "keep-daily 3 across gaps",
            snaps: vec![
                (1, "2024-03-01T12:00:00Z"),
                (2, "2024-03-05T12:00:00Z"),
                (3, "2024-03-06T12:00:00Z"),
                (4, "2024-03-20T08:00:00Z"),
                (5, "2024-03-20T09:00:00Z"),
            ],
            policy: Policy { daily: Some(Count::Upto(3)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(5, &["daily snapshot"]), (3, &["daily snapshot"]), (2, &["daily snapshot"])],
        },
        Case {
            // The output printed in restic's documentation for `--keep-daily 5`: 11, 9, 8, 7 and
            // 6 (the Friday's later backup), no Wednesday.
            name: "restic's example, keep-daily 5",
            snaps: restic_doc.clone(),
            policy: Policy { daily: Some(Count::Upto(5)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[
                (11, &["daily snapshot"]),
                (9, &["daily snapshot"]),
                (8, &["daily snapshot"]),
                (7, &["daily snapshot"]),
                (6, &["daily snapshot"]),
            ],
        },
        Case {
            // restic's documentation for `--keep-within-daily 7d`: newer than 04-25 23:00 (the
            // newest, 05-02 23:00, minus 7 days), one a day: 11, 9, 8, 7. 6 is exactly 7 days
            // older: not newer, not kept.
            name: "restic's example, keep-within-daily 7d",
            snaps: restic_doc.clone(),
            policy: Policy { within_daily: Some(days(7)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[
                (11, &["daily within 7d"]),
                (9, &["daily within 7d"]),
                (8, &["daily within 7d"]),
                (7, &["daily within 7d"]),
            ],
        },
        Case {
            // 2024-12-30 (Monday) opens ISO week 1 of 2025. 5 (2025-W02, 2 left), 4 (Sunday
            // 2025-01-05, W01, 1 left), 3 (Monday 2024-12-30, also 2025-W01: not kept), 2
            // (Sunday 2024-12-29, 2024-W52, 0 left), 1: used up. A week numbered within the
            // calendar year would keep 3 and drop 2.
            name: "keep-weekly 3 across a new year",
            snaps: vec![
                (1, "2024-12-23T10:00:00Z"),
                (2, "2024-12-29T10:00:00Z"),
                (3, "2024-12-30T10:00:00Z"),
                (4, "2025-01-05T10:00:00Z"),
                (5, "2025-01-06T10:00:00Z"),
            ],
            policy: Policy { weekly: Some(Count::Upto(3)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(5, &["weekly snapshot"]), (4, &["weekly snapshot"]), (2, &["weekly snapshot"])],
        },
        Case {
            // 2020 has 53 ISO weeks; 2021-01-03 (Sunday) is in 2020-W53 with 2020-12-28. 3
            // (2021-W01, 2 left), 2 (2020-W53, 1 left), 1 (same week as 2, the oldest, 1 left):
            // kept as the oldest.
            name: "keep-weekly 3 in a 53-week year",
            snaps: vec![(1, "2020-12-28T00:00:00Z"), (2, "2021-01-03T23:59:59Z"), (3, "2021-01-04T00:00:00Z")],
            policy: Policy { weekly: Some(Count::Upto(3)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(3, &["weekly snapshot"]), (2, &["weekly snapshot"]), (1, &["oldest weekly snapshot"])],
        },
        Case {
            // 5 (March, 1 left), 4 (March), 3 (February, 0 left), 2, 1: used up.
            name: "keep-monthly 2",
            snaps: months.clone(),
            policy: Policy { monthly: Some(Count::Upto(2)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(5, &["monthly snapshot"]), (3, &["monthly snapshot"])],
        },
        Case {
            // 5 (March, 3 left), 4 (March), 3 (February 29, 2 left), 2 (February, not the
            // oldest), 1 (January 31 23:00 UTC, January, 1 left): a new month, not "oldest".
            name: "keep-monthly 4 across a leap February",
            snaps: months.clone(),
            policy: Policy { monthly: Some(Count::Upto(4)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(5, &["monthly snapshot"]), (3, &["monthly snapshot"]), (1, &["monthly snapshot"])],
        },
        Case {
            // 5 (2024), 4 (2023), 3 (2023), 2 (2022, one second before 2023), 1 (2022, the
            // oldest, unlimited): kept as the oldest.
            name: "keep-yearly unlimited",
            snaps: vec![
                (1, "2022-06-01T00:00:00Z"),
                (2, "2022-12-31T23:59:59Z"),
                (3, "2023-01-01T00:00:00Z"),
                (4, "2023-07-01T00:00:00Z"),
                (5, "2024-02-01T00:00:00Z"),
            ],
            policy: Policy { yearly: Some(Count::Unlimited), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[
                (5, &["yearly snapshot"]),
                (4, &["yearly snapshot"]),
                (2, &["yearly snapshot"]),
                (1, &["oldest yearly snapshot"]),
            ],
        },
        Case {
            // 5 (13h, 9 left), 4 (11h, 8 left), 3 (11h), 2 (10h, 7 left), 1 (10h, the oldest,
            // 7 left): kept as the oldest.
            name: "keep-hourly 10",
            snaps: vec![
                (1, "2024-03-01T10:05:00Z"),
                (2, "2024-03-01T10:55:00Z"),
                (3, "2024-03-01T11:00:00Z"),
                (4, "2024-03-01T11:59:00Z"),
                (5, "2024-03-01T13:30:00Z"),
            ],
            policy: Policy { hourly: Some(Count::Upto(10)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[
                (5, &["hourly snapshot"]),
                (4, &["hourly snapshot"]),
                (2, &["hourly snapshot"]),
                (1, &["oldest hourly snapshot"]),
            ],
        },
        Case {
            // Counted back from the newest (05-14 12:00), not from now (2030): newer than
            // 05-12 12:00 are 5 and 4; 3 is exactly 2 days older, not newer.
            name: "keep-within 2d of the newest",
            snaps: vec![
                (1, "2024-05-10T12:00:00Z"),
                (2, "2024-05-12T11:00:00Z"),
                (3, "2024-05-12T12:00:00Z"),
                (4, "2024-05-13T00:00:00Z"),
                (5, "2024-05-14T12:00:00Z"),
            ],
            policy: Policy { within: Some(days(2)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(5, &["within 2d"]), (4, &["within 2d"])],
        },
        Case {
            // Now is 05-14 13:00: 3 (2099) is in the future and not the newest; the newest is 2
            // (05-14 12:00), so newer than 05-13 12:00: 3 and 2; 1 (05-13 00:00) is not.
            name: "keep-within ignores a future snapshot as the newest",
            snaps: vec![(1, "2024-05-13T00:00:00Z"), (2, "2024-05-14T12:00:00Z"), (3, "2099-01-01T00:00:00Z")],
            policy: Policy { within: Some(days(1)), ..Default::default() },
            now: "2024-05-14T13:00:00Z",
            pinned: &[],
            kept: &[(3, &["within 1d"]), (2, &["within 1d"])],
        },
        Case {
            // Now is 12:00; 2 (12:05) is within the 10 minutes of clock skew Ferry allows
            // (`latest` takes it too), so it is the newest: newer than 11:05 is 2 only.
            name: "keep-within takes a snapshot within the clock skew as the newest",
            snaps: vec![(1, "2024-05-14T11:00:00Z"), (2, "2024-05-14T12:05:00Z")],
            policy: Policy { within: Some(hours(1)), ..Default::default() },
            now: "2024-05-14T12:00:00Z",
            pinned: &[],
            kept: &[(2, &["within 1h"])],
        },
        Case {
            // 3, 2 (new day), 1 (same day as 2 but the oldest, within 10 days): kept as the
            // oldest.
            name: "keep-within-daily keeps the oldest in range",
            snaps: vec![(1, "2024-05-01T10:00:00Z"), (2, "2024-05-01T12:00:00Z"), (3, "2024-05-02T12:00:00Z")],
            policy: Policy { within_daily: Some(days(10)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(3, &["daily within 10d"]), (2, &["daily within 10d"]), (1, &["oldest daily within 10d"])],
        },
        Case {
            // The newest is 5 (03-03 10:00, Sunday; 03-01 to 03-03 are one ISO week).
            // 5: within 1d, last (0 left), daily (1 left), weekly (0 left).
            // 4 (03-03 09:00): within 1d; same day as 5; last and weekly used up.
            // 3 (03-02 10:00): exactly 1 day older, not within; daily (0 left).
            // 2 (03-01): has the tag; daily used up. 1 (02-20): nothing left, no tag.
            name: "combination: every reason listed",
            snaps: vec![
                (1, "2024-02-20T10:00:00Z"),
                (2, "2024-03-01T10:00:00Z"),
                (3, "2024-03-02T10:00:00Z"),
                (4, "2024-03-03T09:00:00Z"),
                (5, "2024-03-03T10:00:00Z"),
            ],
            policy: Policy {
                last: Some(Count::Upto(1)),
                daily: Some(Count::Upto(2)),
                weekly: Some(Count::Upto(1)),
                within: Some(days(1)),
                keep_tags: vec!["pin".into()],
                ..Default::default()
            },
            now: LATER,
            pinned: &[2],
            kept: &[
                (5, &["within 1d", "last snapshot", "daily snapshot", "weekly snapshot"]),
                (4, &["within 1d"]),
                (3, &["daily snapshot"]),
                (2, &["has tag pin"]),
            ],
        },
        Case {
            name: "keep-last unlimited keeps all",
            snaps: vec![(1, "2024-01-01T00:00:00Z"), (2, "2024-01-01T00:00:00Z"), (3, "2024-06-01T00:00:00Z")],
            policy: Policy { last: Some(Count::Unlimited), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(3, &["last snapshot"]), (2, &["last snapshot"]), (1, &["last snapshot"])],
        },
        Case {
            // Equal times: the higher id counts as newer (as `latest` picks it).
            name: "keep-last 1 with equal times",
            snaps: vec![(2, "2024-01-01T00:00:00Z"), (1, "2024-01-01T00:00:00Z")],
            policy: Policy { last: Some(Count::Upto(1)), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[(2, &["last snapshot"])],
        },
        Case {
            // Rules set to 0 are no rules: the policy is empty and removes everything (the CLI
            // refuses an empty policy before applying it).
            name: "an empty policy removes everything",
            snaps: vec![(1, "2024-01-01T00:00:00Z"), (2, "2024-01-02T00:00:00Z")],
            policy: Policy { last: Some(Count::Upto(0)), within: Some(Duration::ZERO), ..Default::default() },
            now: LATER,
            pinned: &[],
            kept: &[],
        },
    ]
}

#[test]
fn rules_on_one_group() {
    let mut failures = Vec::new();
    for c in cases() {
        let snaps: Vec<_> = c
            .snaps
            .iter()
            .map(|(n, t)| match c.pinned.contains(n) {
                true => snap(*n, t, "n1", &["/data"], &[("pin", "1")]),
                false => plain(*n, t),
            })
            .collect();
        let groups = apply(&snaps, &c.policy, &GroupBy::default(), ns(c.now));
        assert_eq!(groups.len(), 1, "{}: one group", c.name);
        let got = outcome(&groups).remove(0);
        let want_kept = reasons(c.kept);
        let mut want_removed: Vec<u8> =
            c.snaps.iter().map(|(n, _)| *n).filter(|n| !c.kept.iter().any(|(k, _)| k == n)).collect();
        // Newest first: the cases list them oldest first (ties: the higher number is newer).
        want_removed.sort_by_key(|n| std::cmp::Reverse((ns(c.snaps.iter().find(|(m, _)| m == n).unwrap().1), *n)));
        if got.1 != want_kept || got.2 != want_removed {
            failures.push(format!(
                "{}: kept {:?}, removed {:?}; expected kept {:?}, removed {:?}",
                c.name, got.1, got.2, want_kept, want_removed
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn keep_tag_forms() {
    let snaps = vec![
        snap(1, "2024-01-01T01:00:00Z", "n1", &["/data"], &[("backup", "x")]),
        snap(2, "2024-01-01T02:00:00Z", "n1", &["/data"], &[("backup", "y")]),
        snap(3, "2024-01-01T03:00:00Z", "n1", &["/data"], &[("backup", "x"), ("schedule", "daily")]),
        snap(4, "2024-01-01T04:00:00Z", "n1", &["/data"], &[]),
        snap(5, "2024-01-01T05:00:00Z", "n1", &["/data"], &[("keep", "")]),
    ];
    // --keep-tag values; kept (number, reasons); removed.
    type TagCase = (&'static [&'static str], &'static [(u8, &'static [&'static str])], &'static [u8]);
    let cases: [TagCase; 4] = [
        // key=value, and a bare key for any value (5's value is empty).
        (
            &["backup=x", "keep"],
            &[(5, &["has tag keep"]), (3, &["has tag backup=x"]), (1, &["has tag backup=x"])],
            &[4, 2],
        ),
        (&["backup"], &[(3, &["has tag backup"]), (2, &["has tag backup"]), (1, &["has tag backup"])], &[5, 4]),
        // `key=`: the empty value only.
        (&["keep="], &[(5, &["has tag keep="])], &[4, 3, 2, 1]),
        // Both tags match 3: two reasons.
        (
            &["backup=x", "schedule=daily"],
            &[(3, &["has tag backup=x", "has tag schedule=daily"]), (1, &["has tag backup=x"])],
            &[5, 4, 2],
        ),
    ];
    for (tags, kept, removed) in cases {
        let p = Policy { keep_tags: tags.iter().map(|t| t.to_string()).collect(), ..Default::default() };
        let got = outcome(&apply(&snaps, &p, &GroupBy::default(), ns(LATER))).remove(0);
        assert_eq!((got.1, got.2), (reasons(kept), removed.to_vec()), "--keep-tag {tags:?}");
    }
}

fn key(host: Option<&str>, paths: Option<&[&str]>, tags: Option<&[&str]>, tag: &[(&str, Option<&str>)]) -> GroupKey {
    GroupKey {
        host: host.map(String::from),
        paths: paths.map(|p| p.iter().map(|s| s.to_string()).collect()),
        tags: tags.map(|t| t.iter().map(|s| s.to_string()).collect()),
        tag: tag.iter().map(|(k, v)| (k.to_string(), v.map(String::from))).collect(),
    }
}

fn kept_last(n: u8) -> Vec<(u8, Vec<String>)> {
    reasons(&[(n, &["last snapshot"])])
}

/// Hosts and paths: 5 and 6 name the same paths in another order.
fn hosts_and_paths() -> Vec<(SnapshotId, Snapshot)> {
    vec![
        snap(1, "2024-01-01T01:00:00Z", "n1", &["/data"], &[]),
        snap(2, "2024-01-01T02:00:00Z", "n1", &["/data"], &[]),
        snap(3, "2024-01-01T03:00:00Z", "n2", &["/data"], &[]),
        snap(4, "2024-01-01T04:00:00Z", "n1", &["/other"], &[]),
        snap(5, "2024-01-01T05:00:00Z", "n1", &["/b", "/a"], &[]),
        snap(6, "2024-01-01T06:00:00Z", "n1", &["/a", "/b"], &[]),
    ]
}

#[test]
fn grouped_by_host_and_paths() {
    let p = Policy { last: Some(Count::Upto(1)), ..Default::default() };
    let got = outcome(&apply(&hosts_and_paths(), &p, &GroupBy::default(), ns(LATER)));
    let want: Outcome = vec![
        (key(Some("n1"), Some(&["/a", "/b"]), None, &[]), kept_last(6), vec![5]),
        (key(Some("n1"), Some(&["/data"]), None, &[]), kept_last(2), vec![1]),
        (key(Some("n1"), Some(&["/other"]), None, &[]), kept_last(4), vec![]),
        (key(Some("n2"), Some(&["/data"]), None, &[]), kept_last(3), vec![]),
    ];
    assert_eq!(got, want);
}

#[test]
fn one_group_when_grouping_by_nothing() {
    let p = Policy { last: Some(Count::Upto(1)), ..Default::default() };
    let got = outcome(&apply(&hosts_and_paths(), &p, &GroupBy::parse("").unwrap(), ns(LATER)));
    assert_eq!(got, vec![(key(None, None, None, &[]), kept_last(6), vec![5, 4, 3, 2, 1])]);
}

#[test]
fn grouped_by_tag_values_a_volume_is_a_group() {
    let ns_pvc = |a: &'static str, b: &'static str| vec![("namespace", a), ("pvc", b)];
    let snaps = vec![
        snap(1, "2024-01-01T01:00:00Z", "n1", &["/pods/u1/db"], &ns_pvc("shop", "db")),
        snap(2, "2024-01-01T02:00:00Z", "n2", &["/pods/u2/db"], &ns_pvc("shop", "db")),
        snap(3, "2024-01-01T03:00:00Z", "n1", &["/pods/u3/cache"], &ns_pvc("shop", "cache")),
        snap(4, "2024-01-01T04:00:00Z", "n1", &["/home"], &[]),
        snap(5, "2024-01-01T05:00:00Z", "n2", &["/x"], &ns_pvc("web", "db")),
    ];
    let p = Policy { last: Some(Count::Upto(1)), ..Default::default() };
    let g = GroupBy::parse("tag:namespace,tag:pvc").unwrap();
    let got = outcome(&apply(&snaps, &p, &g, ns(LATER)));
    let want: Outcome = vec![
        (key(None, None, None, &[("namespace", None), ("pvc", None)]), kept_last(4), vec![]),
        (key(None, None, None, &[("namespace", Some("shop")), ("pvc", Some("cache"))]), kept_last(3), vec![]),
        // Two hosts and two paths, one volume.
        (key(None, None, None, &[("namespace", Some("shop")), ("pvc", Some("db"))]), kept_last(2), vec![1]),
        (key(None, None, None, &[("namespace", Some("web")), ("pvc", Some("db"))]), kept_last(5), vec![]),
    ];
    assert_eq!(got, want);
}

#[test]
fn grouped_by_all_tags() {
    let snaps = vec![
        snap(1, "2024-01-01T01:00:00Z", "n1", &["/d"], &[("a", "1"), ("b", "2")]),
        snap(2, "2024-01-01T02:00:00Z", "n2", &["/e"], &[("b", "2"), ("a", "1")]),
        snap(3, "2024-01-01T03:00:00Z", "n1", &["/d"], &[("a", "1")]),
    ];
    let p = Policy { last: Some(Count::Upto(1)), ..Default::default() };
    let got = outcome(&apply(&snaps, &p, &GroupBy::parse("tags").unwrap(), ns(LATER)));
    let want: Outcome = vec![
        (key(None, None, Some(&["a=1"]), &[]), kept_last(3), vec![]),
        (key(None, None, Some(&["a=1", "b=2"]), &[]), kept_last(2), vec![1]),
    ];
    assert_eq!(got, want);
}

#[test]
fn group_by_parsing() {
    assert_eq!(GroupBy::parse("host,paths").unwrap(), GroupBy::default());
    assert_eq!(GroupBy::parse("").unwrap(), GroupBy { host: false, paths: false, tags: false, tag_keys: vec![] });
    assert_eq!(
        GroupBy::parse(" tag:pvc , host,tag:pvc,path").unwrap(),
        GroupBy { host: true, paths: true, tags: false, tag_keys: vec!["pvc".into()] }
    );
    assert_eq!(GroupBy::parse("tags").unwrap(), GroupBy { host: false, paths: false, tags: true, tag_keys: vec![] });
    for bad in ["tag:", "tag:a=b", "hostname", "host;paths"] {
        assert!(GroupBy::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn descriptions() {
    let p = Policy {
        last: Some(Count::Upto(2)),
        daily: Some(Count::Upto(7)),
        weekly: Some(Count::Unlimited),
        within: Some(days(2)),
        within_daily: Some(days(7)),
        keep_tags: vec!["pin".into(), "backup=x".into()],
        ..Default::default()
    };
    assert_eq!(
        p.to_string(),
        "keep 2 last, 7 daily, all weekly snapshots; daily snapshots within 7d; all snapshots within 2d of the \
         newest; snapshots with tag pin or backup=x"
    );
    assert!(!p.is_empty());
    assert!(Policy::default().is_empty());
    assert!(
        Policy { hourly: Some(Count::Upto(0)), within_yearly: Some(Duration::ZERO), ..Default::default() }.is_empty()
    );
    assert!(!Policy { keep_tags: vec!["x".into()], ..Default::default() }.is_empty());
    assert!(!Policy { within_monthly: Some(days(1)), ..Default::default() }.is_empty());

    let k = key(Some("n1"), Some(&["/a", "/b"]), Some(&[]), &[("pvc", Some("db")), ("zone", None)]);
    assert_eq!(k.to_string(), "host n1, paths /a /b, no tags, tag pvc=db, no tag zone");
    assert_eq!(key(None, None, None, &[]).to_string(), "all snapshots");

    for (d, want) in [
        (days(2), "2d"),
        (hours(36), "1d12h"),
        (Duration::from_secs(90 * 60), "1h30min"),
        (Duration::from_secs(61), "1min1s"),
        (Duration::from_secs(31_557_600), "1y"),
        (Duration::from_secs(2 * 31_557_600), "2y"),
        (Duration::from_secs(2_630_016), "1month"),
        (Duration::from_secs(6 * 2_630_016), "6months"),
        (Duration::from_millis(500), "500ms"),
    ] {
        assert_eq!(duration_label(d), want, "{d:?}");
    }
}

#[test]
fn civil_dates_of_known_days() {
    for (days, date) in [
        (0, (1970, 1, 1)),
        (-1, (1969, 12, 31)),
        (19_723, (2024, 1, 1)), // 1704067200 s
        (11_016, (2000, 2, 29)),
        (-25_508, (1900, 3, 1)), // 1900 is not a leap year
        (-25_509, (1900, 2, 28)),
        (24_855, (2038, 1, 19)), // 2^31 - 1 s
        (-719_468, (0, 3, 1)),
    ] {
        assert_eq!(civil_from_days(days), date, "day {days}");
        assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
    }
    // Every day from 1600 to 2400 follows the one before.
    let (mut y, mut m, mut d) = (1600, 1, 1);
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    for day in days_from_civil(1600, 1, 1)..days_from_civil(2401, 1, 1) {
        assert_eq!(civil_from_days(day), (y, m, d), "day {day}");
        assert_eq!(days_from_civil(y, m, d), day);
        let month_len = match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        d += 1;
        if d > month_len {
            (d, m) = (1, m + 1);
            if m > 12 {
                (m, y) = (1, y + 1);
            }
        }
    }
}

#[test]
fn iso_weeks_of_known_days() {
    for ((y, m, d), week) in [
        ((1970, 1, 1), (1970, 1)),
        ((1969, 12, 29), (1970, 1)),
        ((2008, 12, 29), (2009, 1)),
        ((2010, 1, 3), (2009, 53)),
        ((2020, 12, 31), (2020, 53)),
        ((2021, 1, 3), (2020, 53)),
        ((2021, 1, 4), (2021, 1)),
        ((2023, 1, 1), (2022, 52)),
        ((2024, 1, 1), (2024, 1)),
        ((2024, 12, 29), (2024, 52)),
        ((2024, 12, 30), (2025, 1)),
        ((2025, 1, 5), (2025, 1)),
        ((2025, 1, 6), (2025, 2)),
        ((2026, 1, 1), (2026, 1)),
        ((2027, 1, 1), (2026, 53)),
    ] {
        assert_eq!(iso_week(days_from_civil(y, m, d)), week, "{y}-{m}-{d}");
    }
}
