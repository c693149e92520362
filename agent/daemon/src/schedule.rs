//! Schedules of Ferry's `BackupSchedule` resource, with the semantics of Velero's `Schedule`.
//!
//! Velero parses `spec.schedule` with robfig/cron v3's `ParseStandard`. [`Schedule::parse`]
//! accepts the same language, and [`due`] decides when to run the way Velero's schedule
//! controller does. Pure code: the caller passes every time in, nothing here reads a clock.
//!
//! # Language
//!
//! - Five fields, `minute hour day-of-month month day-of-week`, separated by whitespace.
//!   Ranges 0-59, 0-23, 1-31, 1-12 and 0-6 (0 = Sunday; `7` is rejected, as robfig does).
//!   Each field is a comma list of `*` or `?` (the whole range), `N`, `N-M`, each optionally
//!   followed by `/step`; `N/step` means `N-max/step`. Months and weekdays also take the
//!   three-letter English names, in any case (`JAN`, `mon`). Six or seven fields (a seconds
//!   or year field) are rejected, as are Quartz's `L`, `W` and `#`.
//! - Day of month and day of week: when both are restricted a day matches if EITHER matches
//!   (Vixie cron's OR, so `0 0 13 * FRI` runs on every 13th and on every Friday); when one
//!   of them is unrestricted, both must match. As in robfig, a field counts as unrestricted
//!   when one of its list items is `*` or `?` with no step or step 1: `*/1` is
//!   unrestricted, `*/2` is restricted (Vixie cron would call `*/2` unrestricted).
//! - Descriptors `@yearly` = `@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly`
//!   (`0 0 * * 0`), `@daily` = `@midnight` (`0 0 * * *`), `@hourly` (`0 * * * *`), all case
//!   sensitive like robfig's.
//! - `@every <duration>` in Go's syntax: a sequence of decimal numbers, each with an optional
//!   fraction and a unit among `ns us µs ms s m h` (`1h30m`, `1.5h`, `90s`); the interval is
//!   cut to whole seconds as robfig does (`1.5s` is 1s). Unlike robfig, which silently turns
//!   anything below one second (even `0s` or `-5m`) into 1s, Ferry rejects it. The next run
//!   is the reference (cut to the second) plus the interval.
//! - A prefix `CRON_TZ=<IANA zone> ` or `TZ=<IANA zone> ` evaluates the rest in that zone
//!   (names are case sensitive, as Go's `time.LoadLocation`); the default is UTC. The zone is
//!   accepted but meaningless before `@every`, which counts elapsed time.
//! - A cron expression whose day of month never falls in its months (`0 0 30 2 *`) is
//!   rejected: robfig accepts it and then finds no time, which makes Velero run it at every
//!   reconcile.
//!
//! # Daylight saving time
//!
//! A slot at wall-clock time L runs at the first instant at which the zone's clock shows L or
//! later. Hence:
//! - in the spring gap (America/New_York 2026-03-08, 02:00 EST jumps to 03:00 EDT) a slot at
//!   02:30 is moved to the end of the gap, 03:00 EDT, and is not lost; several slots moved to
//!   the same instant (for `*/30 * * * *`: 02:00, 02:30 and 03:00) run once;
//! - in the autumn overlap (2026-11-01, 02:00 EDT falls back to 01:00 EST) a slot at 01:30
//!   runs once, at its first occurrence (01:30 EDT). This holds for every schedule, so an
//!   hourly one runs at 01:00 EDT and next at 02:00 EST, two hours later.
//!
//! robfig itself skips slots in the gap and runs those in the overlap twice. The rule keeps
//! the slots in wall-clock order in real time, so `next_after` is monotone.
//!
//! # When to run: [`due`]
//!
//! Velero (since 1.8) keeps one reference time per schedule: its last run, or, before the
//! first run, its creation time; when `skipImmediately` is consumed the reference becomes that
//! moment (`status.lastSkipped`). The schedule is due once the first slot after the reference
//! has passed. Consequences, which [`due`] reproduces:
//! - a new schedule does NOT run at creation: it waits for its first slot after the creation
//!   time (Velero 1.8 changelog: "Don't create a backup immediately after creating a
//!   schedule" (#4281); docs/backup-reference: "the backup will not be taken until the next
//!   scheduled time"). `skipImmediately` therefore changes nothing for a new schedule seen at
//!   once, only for one first seen after a slot passed;
//! - a schedule unpaused after some slots passed runs one catch-up backup right away, unless
//!   `skipImmediately`, with which it waits for the first slot after now;
//! - after an outage it runs once, never once per missed slot.
//!
//! Two details differ from Velero on purpose: Velero records its run time as the reference,
//! Ferry's caller should record the slot it ran for, so that `@every` does not drift by the
//! reconcile delay; and a slot is due from its own instant (Velero: strictly after it).

use std::fmt;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A parsed `spec.schedule`: a cron expression in a time zone, or a fixed interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Cron(Cron),
    /// `@every`: whole seconds, at least 1.
    Every(i64),
}

/// Bit sets of the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cron {
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6, 0 = Sunday.
    weekdays: u64,
    /// The day-of-month field is unrestricted (robfig's star bit).
    any_day: bool,
    /// The day-of-week field is unrestricted.
    any_weekday: bool,
    zone: Tz,
}

/// Why `spec.schedule` was rejected. Its `Display` names the problem; the caller adds the
/// path (`spec.schedule: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// Nothing but whitespace.
    #[error(
        "empty: expected 5 cron fields (minute hour day-of-month month day-of-week) or a descriptor such as @daily"
    )]
    Empty,
    /// Not five fields.
    #[error("Ferry expects 5 fields (minute hour day-of-month month day-of-week), found {found}{}", count_hint(*.found))]
    FieldCount {
        /// How many whitespace-separated fields there were.
        found: usize,
    },
    /// A field (1-based `index`) has a bad list item.
    #[error("field {index} ({name}) \"{item}\": {}", .problem.describe(.item))]
    Field {
        /// 1 = minute ... 5 = day-of-week.
        index: u8,
        /// `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        name: &'static str,
        /// The comma-separated list item at fault, as written.
        item: String,
        /// What is wrong with it.
        problem: FieldProblem,
    },
    /// The zone of a `CRON_TZ=`/`TZ=` prefix is not in the IANA database.
    #[error("unknown time zone \"{0}\"")]
    UnknownZone(String),
    /// A `CRON_TZ=`/`TZ=` prefix with no schedule after it.
    #[error("no schedule after the time zone \"{0}\"")]
    NothingAfterZone(String),
    /// An `@` word that is not a descriptor.
    #[error(
        "unknown descriptor \"{0}\": expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>"
    )]
    UnknownDescriptor(String),
    /// A bad `@every` duration.
    #[error("@every \"{value}\": {problem}")]
    Every {
        /// The duration as written.
        value: String,
        /// What is wrong with it.
        problem: DurationProblem,
    },
    /// Valid fields that no date satisfies, e.g. `0 0 30 2 *`.
    #[error("never runs: no month in \"{months}\" has a day in \"{days}\"")]
    NeverRuns {
        /// The day-of-month field.
        days: String,
        /// The month field.
        months: String,
    },
}

fn count_hint(found: usize) -> &'static str {
    match found {
        6 => " (a seconds field is not supported)",
        7 => " (seconds and year fields are not supported)",
        _ => "",
    }
}

/// What is wrong with one item of a cron field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldProblem {
    /// A number outside the field's range.
    OutOfRange {
        /// The number as written.
        token: String,
        /// The field's smallest value.
        min: u32,
        /// The field's largest value.
        max: u32,
    },
    /// Neither a number nor, for months and weekdays, a name.
    NotANumber {
        /// The word as written.
        token: String,
        /// The field's names, e.g. `JAN-DEC`, if it has any.
        names: Option<&'static str>,
    },
    /// Quartz's `L`, `W` or `#`.
    Unsupported,
    /// `N-M` with N > M.
    Backwards {
        /// Start of the range.
        start: u32,
        /// End of the range.
        end: u32,
    },
    /// `/0`.
    ZeroStep,
    /// Misplaced punctuation.
    Syntax(&'static str),
}

impl FieldProblem {
    /// The text after `field N (name) "item": `; the number is left out when it is the
    /// whole item.
    fn describe(&self, item: &str) -> String {
        match self {
            Self::OutOfRange { token, min, max } if token == item => format!("out of range {min}-{max}"),
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { token, min, max } => write!(f, "{token} out of range {min}-{max}"),
            Self::NotANumber { token, names: Some(names) } => {
                write!(f, "\"{token}\" is neither a number nor a name ({names})")
            }
            Self::NotANumber { token, names: None } => write!(f, "\"{token}\" is not a number"),
            Self::Unsupported => f.write_str("L, W and # are not supported (Velero's cron has no such extension)"),
            Self::Backwards { start, end } => write!(f, "range {start}-{end} runs backwards"),
            Self::ZeroStep => f.write_str("step must be at least 1"),
            Self::Syntax(what) => f.write_str(what),
        }
    }
}

/// What is wrong with an `@every` duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationProblem {
    /// Not Go's duration syntax.
    #[error("not a duration")]
    Invalid,
    /// A number with no unit, e.g. `90`.
    #[error("not a duration: a number needs a unit (ns, us, µs, ms, s, m or h)")]
    MissingUnit,
    /// An unknown unit, e.g. `1d`.
    #[error("not a duration: unknown unit \"{0}\" (units are ns, us, µs, ms, s, m and h)")]
    UnknownUnit(String),
    /// Beyond Go's limit of 2^63-1 nanoseconds (about 292 years).
    #[error("too long (Go durations end at about 292 years)")]
    TooLong,
    /// Zero, negative or below one second.
    #[error("below the minimum of 1s")]
    TooShort,
}

/// What the controller should do now, from [`due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Run once now, for `slot`: the latest slot at or before now. Record `slot` as the next
    /// reference. `missed` = how many earlier slots since the reference are not run (0 when
    /// only one slot passed); it counts the last 100 years at most.
    Now {
        /// The slot this run stands for.
        slot: DateTime<Utc>,
        /// Slots passed before it that are skipped.
        missed: u32,
    },
    /// Nothing to do before this instant (the first slot after the reference).
    At(DateTime<Utc>),
    /// No slot after the reference. Only past the end of chrono's calendar (year 262143):
    /// [`Schedule::parse`] rejects schedules that never run.
    Never,
}

const MINUTE: Field = Field { index: 1, name: "minute", min: 0, max: 59, names: &[], hint: None };
const HOUR: Field = Field { index: 2, name: "hour", min: 0, max: 23, names: &[], hint: None };
const DAY: Field = Field { index: 3, name: "day-of-month", min: 1, max: 31, names: &[], hint: None };
const MONTH: Field = Field {
    index: 4,
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    hint: Some("JAN-DEC"),
};
const WEEKDAY: Field = Field {
    index: 5,
    name: "day-of-week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    hint: Some("SUN-SAT"),
};

/// The last day of each month (index 1..=12), February counting its leap day. Index 0 is no
/// month (its bit is never set).
const LONGEST_MONTH: [u32; 13] = [1, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// A match lies at most 8 years ahead (29 February across a non-leap century year, e.g.
/// 2096 to 2104); searching a little more than 9 years is always enough.
const SEARCH_DAYS: u64 = 3_400;

/// `missed` counts slots in at most this many days before now, bounding the work.
const COUNT_DAYS: i64 = 36_525;

struct Field {
    index: u8,
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    hint: Option<&'static str>,
}

/// Bits `min..=max`.
const fn span(min: u32, max: u32) -> u64 {
    (u64::MAX >> (63 - max)) & (u64::MAX << min)
}

impl Schedule {
    /// Parses `spec.schedule`: five cron fields or a descriptor, optionally after
    /// `CRON_TZ=<zone> ` or `TZ=<zone> ` (see the module documentation).
    ///
    /// # Errors
    ///
    /// A [`ScheduleError`] naming the first problem found.
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let text = expr.trim();
        if text.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let (zone, text) = split_zone(text)?;
        let kind =
            if text.starts_with('@') { parse_descriptor(text, zone)? } else { Kind::Cron(parse_cron(text, zone)?) };
        Ok(Self { kind })
    }

    /// The first slot strictly after `t`; `None` only past the end of chrono's calendar.
    #[must_use]
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => cron.next_after(t),
            Kind::Every(seconds) => t.with_nanosecond(0)?.checked_add_signed(TimeDelta::seconds(*seconds)),
        }
    }

    /// How many slots lie in `(after, until]`, and the latest of them. The window is cut to
    /// the last [`COUNT_DAYS`] days before `until`.
    fn slots_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> (u64, Option<DateTime<Utc>>) {
        if until <= after {
            return (0, None);
        }
        let after = until.checked_sub_signed(TimeDelta::days(COUNT_DAYS)).map_or(after, |floor| after.max(floor));
        match &self.kind {
            Kind::Cron(cron) => cron.slots_between(after, until),
            Kind::Every(seconds) => {
                let Some(base) = after.with_nanosecond(0) else { return (0, None) };
                let steps = (until - base).num_seconds() / seconds;
                let latest = base.checked_add_signed(TimeDelta::seconds(steps * seconds));
                (u64::try_from(steps).unwrap_or(0), latest.filter(|_| steps > 0))
            }
        }
    }
}

/// Decides whether a schedule runs now, with Velero's rules (module documentation).
///
/// - `reference`: the latest of the slot the schedule last ran for ([`Due::Now`]'s `slot`)
///   and the moment `skipImmediately` was last consumed (Velero's `status.lastSkipped`);
///   `None` if neither happened. Keep it across a pause: on unpause Velero runs once for
///   the slots that passed, unless `skip_immediately`.
/// - `created`: the schedule's creation time, the reference when `reference` is `None`.
/// - `skip_immediately`: `spec.skipImmediately` (or the server default). When true, any slot
///   up to `now` is skipped and the answer is `At` the first slot after `now`; the caller
///   then records `now` as the reference and clears the flag, as Velero does.
///
/// Returns `Now` once the first slot after the reference is at or before `now`, for the
/// latest such slot; otherwise `At` that first slot. The cost does not grow with the number
/// of missed slots for `@every`, and grows with the number of days for cron (bounded by
/// 100 years), never with the number of slots.
#[must_use]
pub fn due(
    schedule: &Schedule,
    reference: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    skip_immediately: bool,
    now: DateTime<Utc>,
) -> Due {
    let mut base = reference.unwrap_or(created);
    if skip_immediately {
        base = base.max(now);
    }
    let Some(first) = schedule.next_after(base) else { return Due::Never };
    if first > now {
        return Due::At(first);
    }
    let (count, latest) = schedule.slots_between(base, now);
    Due::Now { slot: latest.unwrap_or(first), missed: u32::try_from(count.saturating_sub(1)).unwrap_or(u32::MAX) }
}

fn split_zone(text: &str) -> Result<(Tz, &str), ScheduleError> {
    let Some(spec) = text.strip_prefix("CRON_TZ=").or_else(|| text.strip_prefix("TZ=")) else {
        return Ok((Tz::UTC, text));
    };
    let (name, rest) = spec.split_once(char::is_whitespace).unwrap_or((spec, ""));
    let zone: Tz = name.parse().map_err(|_| ScheduleError::UnknownZone(name.to_owned()))?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Err(ScheduleError::NothingAfterZone(name.to_owned()));
    }
    Ok((zone, rest))
}

fn parse_descriptor(text: &str, zone: Tz) -> Result<Kind, ScheduleError> {
    if let Some(arg) = text.strip_prefix("@every").filter(|arg| arg.is_empty() || arg.starts_with(char::is_whitespace))
    {
        let value = arg.trim();
        let every = |problem| ScheduleError::Every { value: value.to_owned(), problem };
        let nanos = parse_go_duration(value).map_err(every)?;
        if nanos < 1_000_000_000 {
            return Err(every(DurationProblem::TooShort));
        }
        let seconds = i64::try_from(nanos / 1_000_000_000).map_err(|_| every(DurationProblem::TooLong))?;
        return Ok(Kind::Every(seconds));
    }
    let daily = Cron {
        minutes: 1,
        hours: 1,
        days: span(1, 31),
        months: span(1, 12),
        weekdays: span(0, 6),
        any_day: true,
        any_weekday: true,
        zone,
    };
    let cron = match text {
        "@yearly" | "@annually" => Cron { days: 1 << 1, months: 1 << 1, any_day: false, ..daily },
        "@monthly" => Cron { days: 1 << 1, any_day: false, ..daily },
        "@weekly" => Cron { weekdays: 1, any_weekday: false, ..daily },
        "@daily" | "@midnight" => daily,
        "@hourly" => Cron { hours: span(0, 23), ..daily },
        _ => return Err(ScheduleError::UnknownDescriptor(text.to_owned())),
    };
    Ok(Kind::Cron(cron))
}

fn parse_cron(text: &str, zone: Tz) -> Result<Cron, ScheduleError> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [minute, hour, day, month, weekday] = fields[..] else {
        return Err(ScheduleError::FieldCount { found: fields.len() });
    };
    let (minutes, _) = parse_field(minute, &MINUTE)?;
    let (hours, _) = parse_field(hour, &HOUR)?;
    let (days, any_day) = parse_field(day, &DAY)?;
    let (months, _) = parse_field(month, &MONTH)?;
    let (weekdays, any_weekday) = parse_field(weekday, &WEEKDAY)?;
    let cron = Cron { minutes, hours, days, months, weekdays, any_day, any_weekday, zone };
    // Both restricted: the weekdays alone occur in every month. Otherwise both must match,
    // and every weekday occurs in every month, so only the days of month can be impossible.
    let possible = any_day
        || !any_weekday
        || LONGEST_MONTH
            .iter()
            .enumerate()
            .any(|(month, last)| months & (1 << month) != 0 && days & span(1, *last) != 0);
    if !possible {
        return Err(ScheduleError::NeverRuns { days: day.to_owned(), months: month.to_owned() });
    }
    Ok(cron)
}

/// One field: the set of values and whether it counts as unrestricted (robfig's star bit:
/// some item is `*` or `?` with no step or step 1).
fn parse_field(text: &str, field: &Field) -> Result<(u64, bool), ScheduleError> {
    let mut bits = 0;
    let mut star = false;
    for item in text.split(',') {
        let (set, item_star) = parse_item(item, field).map_err(|problem| ScheduleError::Field {
            index: field.index,
            name: field.name,
            item: item.to_owned(),
            problem,
        })?;
        bits |= set;
        star |= item_star;
    }
    Ok((bits, star))
}

fn parse_item(item: &str, field: &Field) -> Result<(u64, bool), FieldProblem> {
    if item.is_empty() {
        return Err(FieldProblem::Syntax("empty list item"));
    }
    let (range, step) = match item.split_once('/') {
        Some((_, step)) if step.contains('/') => return Err(FieldProblem::Syntax("more than one '/'")),
        Some((_, "")) => return Err(FieldProblem::Syntax("missing step after '/'")),
        Some((range, step)) if step.bytes().all(|b| b.is_ascii_digit()) => {
            (range, Some(step.parse::<u32>().unwrap_or(u32::MAX)))
        }
        Some((_, step)) => return Err(FieldProblem::NotANumber { token: step.to_owned(), names: None }),
        None => (item, None),
    };
    if step == Some(0) {
        return Err(FieldProblem::ZeroStep);
    }
    let (start, end, star) = if range == "*" || range == "?" {
        (field.min, field.max, step.is_none_or(|s| s == 1))
    } else {
        match range.split_once('-') {
            Some((_, high)) if high.contains('-') => return Err(FieldProblem::Syntax("more than one '-'")),
            Some((low, high)) => (field.value(low)?, field.value(high)?, false),
            // robfig: "N/step" means "N-max/step".
            None if step.is_some() => (field.value(range)?, field.max, false),
            None => {
                let value = field.value(range)?;
                (value, value, false)
            }
        }
    };
    if start > end {
        return Err(FieldProblem::Backwards { start, end });
    }
    let step = step.unwrap_or(1);
    let mut bits = 0;
    let mut value = Some(start);
    while let Some(v) = value.filter(|v| *v <= end) {
        bits |= 1 << v;
        value = v.checked_add(step);
    }
    Ok((bits, star))
}

impl Field {
    fn value(&self, token: &str) -> Result<u32, FieldProblem> {
        if token.is_empty() {
            return Err(FieldProblem::Syntax("missing number"));
        }
        if token.bytes().all(|b| b.is_ascii_digit()) {
            return match token.parse::<u32>() {
                Ok(value) if (self.min..=self.max).contains(&value) => Ok(value),
                _ => Err(FieldProblem::OutOfRange { token: token.to_owned(), min: self.min, max: self.max }),
            };
        }
        if let Some(position) = self.names.iter().position(|name| name.eq_ignore_ascii_case(token)) {
            // At most 12 names: the cast cannot truncate.
            return Ok(self.min + position as u32);
        }
        let suffix = token.trim_start_matches(|c: char| c.is_ascii_digit()).to_ascii_uppercase();
        if token.contains('#') || matches!(suffix.as_str(), "L" | "W" | "LW") {
            return Err(FieldProblem::Unsupported);
        }
        Err(FieldProblem::NotANumber { token: token.to_owned(), names: self.hint })
    }
}

/// Go's `time.ParseDuration`, in nanoseconds (exact: Go computes fractions in floating
/// point and may differ by a nanosecond).
fn parse_go_duration(text: &str) -> Result<i128, DurationProblem> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(DurationProblem::Invalid);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(digits);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(DurationProblem::Invalid);
        }
        let (unit, next) = after.split_at(after.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(after.len()));
        if unit.is_empty() {
            return Err(DurationProblem::MissingUnit);
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationProblem::UnknownUnit(unit.to_owned()));
        };
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| DurationProblem::TooLong)? };
        let mut value = whole.checked_mul(scale).ok_or(DurationProblem::TooLong)?;
        // 19 digits are below a nanosecond even for hours, and keep the product in range.
        let fraction = &fraction[..fraction.len().min(19)];
        if !fraction.is_empty() {
            let numerator: u128 = fraction.parse().map_err(|_| DurationProblem::Invalid)?;
            let digits = u32::try_from(fraction.len()).map_err(|_| DurationProblem::Invalid)?;
            value += numerator * scale / 10u128.pow(digits);
        }
        total = total.checked_add(value).filter(|t| *t <= 1 << 63).ok_or(DurationProblem::TooLong)?;
        rest = next;
    }
    if !negative && total > i64::MAX as u128 {
        return Err(DurationProblem::TooLong);
    }
    let total = i128::try_from(total).map_err(|_| DurationProblem::TooLong)?;
    Ok(if negative { -total } else { total })
}

impl Cron {
    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.any_day || self.any_weekday { day && weekday } else { day || weekday }
    }

    /// The day's slot times `(hour, minute)` in order, those after `after` only.
    fn times(&self, after: Option<(u32, u32)>) -> impl Iterator<Item = (u32, u32)> + '_ {
        let first_hour = after.map_or(0, |(hour, _)| hour);
        bits(self.hours & (u64::MAX << first_hour))
            .flat_map(move |hour| bits(self.minutes).map(move |minute| (hour, minute)))
            .filter(move |time| after.is_none_or(|after| *time > after))
    }

    /// The first instant at which the zone's clock shows `local` or later: `local` itself,
    /// its first occurrence in an overlap, the end of the gap for a time in a gap.
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(at) => Some(at.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
            LocalResult::None => self.gap_end(local),
        }
    }

    /// For `local` in a gap: the instant the clock jumps past it, by bisection over the
    /// 52 hours around it (offsets are within ±24h), to the second.
    fn gap_end(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let shows_later = |utc: NaiveDateTime| {
            let offset = self.zone.offset_from_utc_datetime(&utc).fix().local_minus_utc();
            utc.checked_add_signed(TimeDelta::seconds(offset.into())).is_none_or(|clock| clock > local)
        };
        let mut low = local.checked_sub_signed(TimeDelta::hours(26))?;
        let mut high = local.checked_add_signed(TimeDelta::hours(26))?;
        while (high - low).num_seconds() > 1 {
            let middle = low + TimeDelta::seconds((high - low).num_seconds() / 2);
            if shows_later(middle) {
                high = middle;
            } else {
                low = middle;
            }
        }
        Some(high.and_utc())
    }

    /// The zone's wall clock at `t`, saturating at the ends of chrono's calendar.
    fn clock(&self, t: DateTime<Utc>) -> NaiveDateTime {
        let utc = t.naive_utc();
        let offset = self.zone.offset_from_utc_datetime(&utc).fix().local_minus_utc();
        utc.checked_add_signed(TimeDelta::seconds(offset.into())).unwrap_or(if offset < 0 {
            NaiveDateTime::MIN
        } else {
            NaiveDateTime::MAX
        })
    }

    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // A slot whose wall time is not after the clock at `t` resolves to `t` or earlier,
        // and `resolve` is monotone: the first slot, in wall-time order, after the clock at
        // `t` that resolves after `t` is the answer.
        let clock = self.clock(t);
        let mut date = clock.date();
        let mut after = Some((clock.hour(), clock.minute()));
        let limit = date.checked_add_days(chrono::Days::new(SEARCH_DAYS)).unwrap_or(NaiveDate::MAX);
        while date <= limit {
            if self.months & (1 << date.month()) == 0 {
                date = first_of_next_month(date)?;
                after = None;
                continue;
            }
            if self.day_matches(date) {
                let mut slots =
                    self.times(after).filter_map(|(hour, minute)| self.resolve(date.and_hms_opt(hour, minute, 0)?));
                if let Some(at) = slots.find(|at| *at > t) {
                    return Some(at);
                }
            }
            date = date.succ_opt()?;
            after = None;
        }
        None
    }

    /// The zone's offset in seconds if it holds for the whole of `date` (from its midnight to
    /// the next), so that each wall time of the day resolves to itself minus the offset.
    /// Checked every six hours: no zone changes its offset twice within six hours.
    fn fixed_offset(&self, date: NaiveDate) -> Option<i32> {
        let LocalResult::Single(start) = self.zone.from_local_datetime(&date.and_hms_opt(0, 0, 0)?) else {
            return None;
        };
        let offset = start.offset().fix().local_minus_utc();
        let start = start.naive_utc();
        for quarter in 1..=4 {
            let probe = start.checked_add_signed(TimeDelta::hours(6 * quarter))?;
            if self.zone.offset_from_utc_datetime(&probe).fix().local_minus_utc() != offset {
                return None;
            }
        }
        Some(offset)
    }

    /// Slots in `(after, until]`: how many distinct instants, and the latest. Whole days with
    /// a fixed offset are counted arithmetically; the first, the last and days with a
    /// transition slot by slot (at most 1440 each).
    fn slots_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> (u64, Option<DateTime<Utc>>) {
        let per_day = u64::from(self.hours.count_ones()) * u64::from(self.minutes.count_ones());
        let (first_time, last_time) = (
            (self.hours.trailing_zeros(), self.minutes.trailing_zeros()),
            (63 - self.hours.leading_zeros(), 63 - self.minutes.leading_zeros()),
        );
        let at_offset = |date: NaiveDate, (hour, minute): (u32, u32), offset: i32| {
            let local = date.and_hms_opt(hour, minute, 0)?;
            Some(local.checked_sub_signed(TimeDelta::seconds(offset.into()))?.and_utc())
        };
        let mut count = 0;
        let mut latest: Option<DateTime<Utc>> = None;
        let mut date = self.clock(after).date();
        // The day after `until`'s too: in an overlap, its slots can resolve before `until`.
        let last_date = self.clock(until).date().succ_opt().unwrap_or(NaiveDate::MAX);
        while date <= last_date {
            if self.months & (1 << date.month()) == 0 {
                let Some(next) = first_of_next_month(date) else { break };
                date = next;
                continue;
            }
            if self.day_matches(date) {
                let offset = self.fixed_offset(date);
                let whole = offset.and_then(|offset| {
                    let first = at_offset(date, first_time, offset)?;
                    let last = at_offset(date, last_time, offset)?;
                    (first > after && last <= until).then_some((first, last))
                });
                if let Some((first, last)) = whole {
                    count += per_day - u64::from(latest == Some(first));
                    latest = Some(last);
                } else {
                    for time in self.times(None) {
                        let at = match offset {
                            Some(offset) => at_offset(date, time, offset),
                            None => date.and_hms_opt(time.0, time.1, 0).and_then(|local| self.resolve(local)),
                        };
                        // Instants come in order: a repeat is a slot moved out of a gap.
                        if let Some(at) = at.filter(|at| *at > after && *at <= until && latest != Some(*at)) {
                            count += 1;
                            latest = Some(at);
                        }
                    }
                }
            }
            let Some(next) = date.succ_opt() else { break };
            date = next;
        }
        (count, latest)
    }
}

/// The set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        let bit = (mask != 0).then(|| mask.trailing_zeros())?;
        mask &= mask - 1;
        Some(bit)
    })
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    match date.month() {
        12 => NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1),
        month => NaiveDate::from_ymd_opt(date.year(), month + 1, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn show(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// The first `n` slots after `from`.
    fn slots(expr: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(expr).unwrap();
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = schedule.next_after(t).unwrap();
            out.push(show(t));
        }
        out
    }

    fn error(expr: &str) -> String {
        Schedule::parse(expr).unwrap_err().to_string()
    }

    // 2026-05-17 is a Sunday.
    const SUNDAY: &str = "2026-05-17T10:20:30.5Z";

    #[test]
    fn descriptors() {
        for (expr, next) in [
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
            ("@monthly", "2026-06-01T00:00:00Z"),
            ("@weekly", "2026-05-24T00:00:00Z"),
            ("@daily", "2026-05-18T00:00:00Z"),
            ("@midnight", "2026-05-18T00:00:00Z"),
            ("@hourly", "2026-05-17T11:00:00Z"),
        ] {
            assert_eq!(slots(expr, SUNDAY, 1), [next], "{expr}");
        }
        assert_eq!(slots("@yearly", SUNDAY, 3)[2], "2029-01-01T00:00:00Z");
        assert_eq!(slots("@weekly", SUNDAY, 2)[1], "2026-05-31T00:00:00Z");
        assert_eq!(slots("CRON_TZ=Asia/Tokyo @daily", SUNDAY, 1), ["2026-05-17T15:00:00Z"]);
    }

    #[test]
    fn every() {
        for (expr, next) in [
            ("@every 1h30m", "2026-05-17T11:50:30Z"),
            ("@every 1.5h", "2026-05-17T11:50:30Z"),
            ("@every 90s", "2026-05-17T10:22:00Z"),
            ("@every 1.5s", "2026-05-17T10:20:31Z"),
            ("@every 1500ms", "2026-05-17T10:20:31Z"),
            ("@every 2h0.5m", "2026-05-17T12:21:00Z"),
            ("@every .5m", "2026-05-17T10:21:00Z"),
            ("@every 1.m", "2026-05-17T10:21:30Z"),
            ("@every +1m", "2026-05-17T10:21:30Z"),
            ("@every 1000000us", "2026-05-17T10:20:31Z"),
            ("@every 1000000µs", "2026-05-17T10:20:31Z"),
            ("@every 1000000000ns", "2026-05-17T10:20:31Z"),
            ("@every  24h ", "2026-05-18T10:20:30Z"),
            ("CRON_TZ=Europe/Berlin @every 1h", "2026-05-17T11:20:30Z"),
        ] {
            assert_eq!(slots(expr, SUNDAY, 1), [next], "{expr}");
        }
        // Each next run is the previous one plus the interval.
        assert_eq!(slots("@every 90m", SUNDAY, 3)[2], "2026-05-17T14:50:30Z");
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-1.5h"), Ok(-5_400_000_000_000));
        assert_eq!(parse_go_duration("1.000000001s"), Ok(1_000_000_001));
        assert_eq!(parse_go_duration("0.1234567890123456789999h"), Ok(444_444_440_444));
        assert_eq!(parse_go_duration("2562047h47m16.854775807s"), Ok(i128::from(i64::MAX)));
        assert_eq!(parse_go_duration("2562047h47m16.854775808s"), Err(DurationProblem::TooLong));
    }

    #[test]
    fn ranges_steps_lists_names() {
        // Friday 2026-05-15.
        let office = "*/15 9-17 * * MON-FRI";
        assert_eq!(slots(office, "2026-05-15T16:50:00Z", 2), ["2026-05-15T17:00:00Z", "2026-05-15T17:15:00Z"]);
        assert_eq!(slots(office, "2026-05-15T17:45:00Z", 1), ["2026-05-18T09:00:00Z"]);
        assert_eq!(
            slots("5/20 * * * *", SUNDAY, 3),
            ["2026-05-17T10:25:00Z", "2026-05-17T10:45:00Z", "2026-05-17T11:05:00Z"]
        );
        assert_eq!(slots("0 12 * jan,JUL *", SUNDAY, 2), ["2026-07-01T12:00:00Z", "2026-07-02T12:00:00Z"]);
        assert_eq!(
            slots("0-10/5 3 * * *", SUNDAY, 4),
            ["2026-05-18T03:00:00Z", "2026-05-18T03:05:00Z", "2026-05-18T03:10:00Z", "2026-05-19T03:00:00Z"]
        );
        assert_eq!(slots("? * * * ?", SUNDAY, 2), ["2026-05-17T10:21:00Z", "2026-05-17T10:22:00Z"]);
        assert_eq!(slots("0 0 1,15 * *", SUNDAY, 2), ["2026-06-01T00:00:00Z", "2026-06-15T00:00:00Z"]);
        assert_eq!(slots("0 0 * * sat,Sun", SUNDAY, 2), ["2026-05-23T00:00:00Z", "2026-05-24T00:00:00Z"]);
        assert_eq!(slots("0 0 1 */3 *", SUNDAY, 2), ["2026-07-01T00:00:00Z", "2026-10-01T00:00:00Z"]);
        assert_eq!(slots("0 0 1 FEB/5 *", SUNDAY, 2), ["2026-07-01T00:00:00Z", "2026-12-01T00:00:00Z"]);
        assert_eq!(slots("59 23 31 * *", SUNDAY, 2), ["2026-05-31T23:59:00Z", "2026-07-31T23:59:00Z"]);
        // 29 February: 2028, and across 2100, which is not a leap year.
        assert_eq!(slots("30 4 29 2 *", SUNDAY, 1), ["2028-02-29T04:30:00Z"]);
        assert_eq!(slots("30 4 29 2 *", "2096-03-01T00:00:00Z", 1), ["2104-02-29T04:30:00Z"]);
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: the 13th OR a Friday (2026-05-22, 2026-05-29, then 2026-06-05).
        let either = slots("0 0 13 * FRI", SUNDAY, 4);
        assert_eq!(
            either,
            ["2026-05-22T00:00:00Z", "2026-05-29T00:00:00Z", "2026-06-05T00:00:00Z", "2026-06-12T00:00:00Z"]
        );
        assert_eq!(slots("0 0 13 * FRI", "2026-06-12T00:00:00Z", 1), ["2026-06-13T00:00:00Z"]);
        // One of them unrestricted: both must match, which is just the other.
        assert_eq!(slots("0 0 * * MON", SUNDAY, 2), ["2026-05-18T00:00:00Z", "2026-05-25T00:00:00Z"]);
        assert_eq!(slots("0 0 13 * *", SUNDAY, 1), ["2026-06-13T00:00:00Z"]);
        // robfig: `*/1` and `*,5` are unrestricted, `*/2` is restricted.
        assert_eq!(slots("0 0 */1 * MON", SUNDAY, 1), ["2026-05-18T00:00:00Z"]);
        assert_eq!(slots("0 0 *,5 * MON", SUNDAY, 1), ["2026-05-18T00:00:00Z"]);
        assert_eq!(
            slots("0 0 */2 * MON", SUNDAY, 3),
            ["2026-05-18T00:00:00Z", "2026-05-19T00:00:00Z", "2026-05-21T00:00:00Z"]
        );
    }

    #[test]
    fn zone_and_spring_gap() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT. A 02:30 slot moves to 03:00 EDT.
        let expr = "CRON_TZ=America/New_York 30 2 * * *";
        assert_eq!(
            slots(expr, "2026-03-07T00:00:00Z", 3),
            ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
        );
        // Slots in the gap collapse with the 03:00 one.
        assert_eq!(
            slots("TZ=America/New_York */30 * * * *", "2026-03-08T06:00:00Z", 3),
            ["2026-03-08T06:30:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z"]
        );
        // Lord Howe moves by 30 minutes (02:00 +10:30 becomes 02:30 +11) on 2026-10-04.
        assert_eq!(
            slots("CRON_TZ=Australia/Lord_Howe 15 2 * * *", "2026-10-02T00:00:00Z", 3),
            ["2026-10-02T15:45:00Z", "2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"]
        );
        // Samoa skipped 2011-12-30 entirely: its noon slot runs when the clock jumps.
        assert_eq!(
            slots("CRON_TZ=Pacific/Apia 0 12 * * *", "2011-12-29T00:00:00Z", 3),
            ["2011-12-29T22:00:00Z", "2011-12-30T10:00:00Z", "2011-12-30T22:00:00Z"]
        );
        assert_eq!(slots("CRON_TZ=Asia/Kolkata 0 0 * * *", SUNDAY, 1), ["2026-05-17T18:30:00Z"]);
    }

    #[test]
    fn zone_and_autumn_overlap() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST. 02:30 is not repeated.
        let expr = "CRON_TZ=America/New_York 30 2 * * *";
        assert_eq!(
            slots(expr, "2026-10-31T00:00:00Z", 3),
            ["2026-10-31T06:30:00Z", "2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"]
        );
        // 01:30 occurs twice and runs once, the first time (EDT).
        let repeated = "CRON_TZ=America/New_York 30 1 * * *";
        assert_eq!(slots(repeated, "2026-10-31T12:00:00Z", 2), ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]);
        assert_eq!(slots(repeated, "2026-11-01T06:00:00Z", 1), ["2026-11-02T06:30:00Z"]);
        // Hourly: 01:00 EDT, then 02:00 EST; the repeated 01:00 EST does not run.
        assert_eq!(
            slots("TZ=America/New_York 0 * * * *", "2026-11-01T03:30:00Z", 4),
            ["2026-11-01T04:00:00Z", "2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"]
        );
    }

    #[test]
    fn rejections() {
        assert_eq!(error(""), error("   "));
        assert!(error("").starts_with("empty"));
        assert_eq!(
            error("0 0 3 * * *"),
            "Ferry expects 5 fields (minute hour day-of-month month day-of-week), found 6 (a seconds field is not supported)"
        );
        assert!(error("0 0 3 * * * 2026").contains("found 7"));
        assert!(error("0 3 * *").contains("found 4"));
        assert_eq!(error("0 25 * * *"), "field 2 (hour) \"25\": out of range 0-23");
        assert_eq!(error("0 1-25 * * *"), "field 2 (hour) \"1-25\": 25 out of range 0-23");
        assert_eq!(error("60 * * * *"), "field 1 (minute) \"60\": out of range 0-59");
        assert_eq!(error("0 0 0 * *"), "field 3 (day-of-month) \"0\": out of range 1-31");
        assert_eq!(error("0 0 * 13 *"), "field 4 (month) \"13\": out of range 1-12");
        assert_eq!(error("0 0 * * 7"), "field 5 (day-of-week) \"7\": out of range 0-6");
        assert_eq!(error("0 0 * * 1,99999999999"), "field 5 (day-of-week) \"99999999999\": out of range 0-6");
        assert_eq!(error("0 5-3 * * *"), "field 2 (hour) \"5-3\": range 5-3 runs backwards");
        assert_eq!(error("*/0 * * * *"), "field 1 (minute) \"*/0\": step must be at least 1");
        assert_eq!(error("1-2-3 * * * *"), "field 1 (minute) \"1-2-3\": more than one '-'");
        assert_eq!(error("1/2/3 * * * *"), "field 1 (minute) \"1/2/3\": more than one '/'");
        assert_eq!(error("1/ * * * *"), "field 1 (minute) \"1/\": missing step after '/'");
        assert_eq!(error("*/x * * * *"), "field 1 (minute) \"*/x\": \"x\" is not a number");
        assert_eq!(error("1,,2 * * * *"), "field 1 (minute) \"\": empty list item");
        assert_eq!(error("-5 * * * *"), "field 1 (minute) \"-5\": missing number");
        assert_eq!(error("*-5 * * * *"), "field 1 (minute) \"*-5\": \"*\" is not a number");
        assert_eq!(error("MON * * * *"), "field 1 (minute) \"MON\": \"MON\" is not a number");
        assert_eq!(
            error("0 0 * * Monday"),
            "field 5 (day-of-week) \"Monday\": \"Monday\" is neither a number nor a name (SUN-SAT)"
        );
        assert_eq!(
            error("0 0 * JANUARY *"),
            "field 4 (month) \"JANUARY\": \"JANUARY\" is neither a number nor a name (JAN-DEC)"
        );
        for quartz in ["0 0 L * *", "0 0 15W * *", "0 0 * * 5L", "0 0 * * 5#2"] {
            assert!(
                error(quartz).ends_with("L, W and # are not supported (Velero's cron has no such extension)"),
                "{quartz}"
            );
        }
        assert_eq!(error("0 0 30 2 *"), "never runs: no month in \"2\" has a day in \"30\"");
        assert_eq!(error("0 0 31 4,6,9,11 *"), "never runs: no month in \"4,6,9,11\" has a day in \"31\"");
        // With a weekday restricted too, 30 February is an OR: Mondays in February.
        assert!(Schedule::parse("0 0 30 2 MON").is_ok());
        assert_eq!(error("CRON_TZ=Mars/Base 0 3 * * *"), "unknown time zone \"Mars/Base\"");
        assert_eq!(error("TZ=america/new_york 0 3 * * *"), "unknown time zone \"america/new_york\"");
        assert_eq!(error("CRON_TZ= 0 3 * * *"), "unknown time zone \"\"");
        assert_eq!(error("CRON_TZ=UTC"), "no schedule after the time zone \"UTC\"");
        assert_eq!(error("@every abc"), "@every \"abc\": not a duration");
        assert_eq!(error("@every"), "@every \"\": not a duration");
        assert_eq!(
            error("@every 90"),
            "@every \"90\": not a duration: a number needs a unit (ns, us, µs, ms, s, m or h)"
        );
        assert_eq!(
            error("@every 1d"),
            "@every \"1d\": not a duration: unknown unit \"d\" (units are ns, us, µs, ms, s, m and h)"
        );
        assert_eq!(
            error("@every 1 h"),
            "@every \"1 h\": not a duration: unknown unit \" h\" (units are ns, us, µs, ms, s, m and h)"
        );
        assert_eq!(error("@every ."), "@every \".\": not a duration");
        assert_eq!(error("@every 500ms"), "@every \"500ms\": below the minimum of 1s");
        assert_eq!(error("@every 0"), "@every \"0\": below the minimum of 1s");
        assert_eq!(error("@every -5m"), "@every \"-5m\": below the minimum of 1s");
        assert_eq!(error("@every 3000000h"), "@every \"3000000h\": too long (Go durations end at about 292 years)");
        assert!(error("@reboot").starts_with("unknown descriptor \"@reboot\""));
        assert!(error("@Daily").starts_with("unknown descriptor \"@Daily\""));
        assert!(error("@daily 3").starts_with("unknown descriptor \"@daily 3\""));
        assert!(error("@everyday").starts_with("unknown descriptor \"@everyday\""));
    }

    #[test]
    fn due_new_schedule_waits_for_its_first_slot() {
        let nightly = Schedule::parse("0 3 * * *").unwrap();
        let created = utc("2026-05-17T10:20:30Z");
        let now = utc("2026-05-17T10:20:45Z");
        let first = Due::At(utc("2026-05-18T03:00:00Z"));
        assert_eq!(due(&nightly, None, created, false, now), first);
        assert_eq!(due(&nightly, None, created, true, now), first);
        // First seen after its first slot passed (the controller was down): one run,
        // unless skipImmediately.
        let created = utc("2026-05-17T01:00:00Z");
        let slot = utc("2026-05-17T03:00:00Z");
        assert_eq!(due(&nightly, None, created, false, now), Due::Now { slot, missed: 0 });
        assert_eq!(due(&nightly, None, created, true, now), first);
    }

    #[test]
    fn due_after_a_run() {
        let nightly = Schedule::parse("0 3 * * *").unwrap();
        let created = utc("2026-01-01T00:00:00Z");
        let last = Some(utc("2026-05-16T03:00:00Z"));
        let slot = utc("2026-05-17T03:00:00Z");
        assert_eq!(due(&nightly, last, created, false, utc("2026-05-17T02:59:59Z")), Due::At(slot));
        assert_eq!(due(&nightly, last, created, false, slot), Due::Now { slot, missed: 0 });
        assert_eq!(due(&nightly, last, created, false, utc("2026-05-17T03:00:05Z")), Due::Now { slot, missed: 0 });
        // The run recorded its slot: next is tomorrow.
        assert_eq!(
            due(&nightly, Some(slot), created, false, utc("2026-05-17T03:00:06Z")),
            Due::At(utc("2026-05-18T03:00:00Z"))
        );
        // A reference in the future (clock skew) waits for the slot after it.
        assert_eq!(
            due(&nightly, Some(utc("2026-05-18T03:00:00Z")), created, false, slot),
            Due::At(utc("2026-05-19T03:00:00Z"))
        );
    }

    #[test]
    fn due_after_an_outage_runs_once() {
        // Slots 06:00 ... 10:00 passed (5): one run for 10:00, 4 missed.
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let created = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-05-17T10:20:30Z");
        let slot = utc("2026-05-17T10:00:00Z");
        assert_eq!(due(&hourly, Some(utc("2026-05-17T05:00:00Z")), created, false, now), Due::Now { slot, missed: 4 });
        // Unpaused a week after its last run: one catch-up run, or none with skipImmediately.
        let nightly = Schedule::parse("0 3 * * *").unwrap();
        let last = Some(utc("2026-05-10T03:00:00Z"));
        assert_eq!(due(&nightly, last, created, false, now), Due::Now { slot: utc("2026-05-17T03:00:00Z"), missed: 6 });
        assert_eq!(due(&nightly, last, created, true, now), Due::At(utc("2026-05-18T03:00:00Z")));
        // @every counts from the reference.
        let every = Schedule::parse("@every 25m").unwrap();
        assert_eq!(
            due(&every, Some(utc("2026-05-17T09:00:00Z")), created, false, now),
            Due::Now { slot: utc("2026-05-17T10:15:00Z"), missed: 2 }
        );
    }

    #[test]
    fn due_after_a_year_is_fast() {
        let started = std::time::Instant::now();
        let created = utc("2020-01-01T00:00:00Z");
        let every = Schedule::parse("@every 1s").unwrap();
        let now = utc("2026-01-01T00:00:00Z");
        assert_eq!(
            due(&every, Some(utc("2025-01-01T00:00:00Z")), created, false, now),
            Due::Now { slot: now, missed: 365 * 86_400 - 1 }
        );
        // Every minute in New York over a year: 525600 minutes, less the 60 of the repeated
        // hour in November (the gap in March loses no real minute).
        let minutely = Schedule::parse("CRON_TZ=America/New_York * * * * *").unwrap();
        let now = utc("2026-06-01T00:00:00Z");
        assert_eq!(
            due(&minutely, Some(utc("2025-06-01T00:00:00Z")), created, false, now),
            Due::Now { slot: now, missed: 525_600 - 60 - 1 }
        );
        // From the start of chrono's calendar: counts the last 100 years only.
        assert_eq!(
            due(&every, Some(DateTime::<Utc>::MIN_UTC), created, false, now),
            Due::Now { slot: now, missed: 36_525 * 86_400 - 1 }
        );
        assert!(matches!(due(&minutely, Some(DateTime::<Utc>::MIN_UTC), created, false, now), Due::Now { .. }));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn ends_of_the_calendar() {
        let nightly = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(nightly.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert_eq!(Schedule::parse("@every 1h").unwrap().next_after(DateTime::<Utc>::MAX_UTC), None);
        let created = utc("2026-01-01T00:00:00Z");
        assert_eq!(due(&nightly, Some(DateTime::<Utc>::MAX_UTC), created, false, created), Due::Never);
        assert!(nightly.next_after(DateTime::<Utc>::MIN_UTC).is_some());
    }

    /// next_after(t) > t, no slot between t and it, monotone in t, and consistent with the
    /// slot count, over pseudo-random times from 1990 to 2060 in zones with odd transitions.
    #[test]
    fn next_after_is_increasing_minimal_and_monotone() {
        let zones = [
            "UTC",
            "America/New_York",
            "Europe/London",
            "Australia/Lord_Howe",
            "Pacific/Apia",
            "America/Santiago",
            "Asia/Kolkata",
            "America/St_Johns",
        ];
        let exprs =
            ["* * * * *", "*/7 * * * *", "30 2 * * *", "0 1 * * *", "0 0,12 13 * FRI", "15 0 1 */2 *", "0 * * * *"];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = move |bound: i64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            i64::try_from(seed >> 33).unwrap() % bound
        };
        let start = utc("1990-01-01T00:00:00Z");
        let span_seconds = 70 * 365 * 86_400;
        for zone in zones {
            for expr in exprs {
                let schedule = Schedule::parse(&format!("CRON_TZ={zone} {expr}")).unwrap();
                let mut times: Vec<DateTime<Utc>> = (0..120)
                    .map(|_| start + TimeDelta::seconds(random(span_seconds)) + TimeDelta::milliseconds(random(1000)))
                    .collect();
                // Also around each zone's transitions, where bugs would be.
                for base in
                    ["2026-03-08T06:00:00Z", "2026-11-01T04:00:00Z", "2026-10-03T15:00:00Z", "2011-12-30T08:00:00Z"]
                {
                    times.extend((0..40).map(|_| utc(base) + TimeDelta::seconds(random(4 * 3600))));
                }
                times.sort();
                let mut previous: Option<DateTime<Utc>> = None;
                for t in times {
                    let next = schedule.next_after(t).unwrap();
                    assert!(next > t, "{zone} {expr}: {t} -> {next}");
                    let middle = t + (next - t) / 2;
                    assert_eq!(schedule.next_after(middle), Some(next), "{zone} {expr}: not minimal at {t}");
                    assert_eq!(schedule.slots_between(t, next), (1, Some(next)), "{zone} {expr} {t}");
                    if let Some(previous) = previous {
                        assert!(next >= previous, "{zone} {expr}: not monotone at {t}");
                    }
                    previous = Some(next);
                }
            }
        }
    }

    /// Walking slot by slot through transitions gives strictly increasing times, as many
    /// as `slots_between` counts.
    #[test]
    fn walk_matches_count() {
        for expr in [
            "CRON_TZ=America/New_York */7 * * * *",
            "CRON_TZ=Australia/Lord_Howe */5 1-3 * * *",
            "CRON_TZ=Pacific/Apia 0 * * * *",
            "CRON_TZ=Europe/London 30 0-2 * * *",
        ] {
            let schedule = Schedule::parse(expr).unwrap();
            for (from, until) in [
                ("2026-03-06T00:00:00Z", "2026-03-10T00:00:00Z"),
                ("2026-10-30T00:00:00Z", "2026-11-03T00:00:00Z"),
                ("2026-10-02T00:00:00Z", "2026-10-06T00:00:00Z"),
                ("2026-04-03T00:00:00Z", "2026-04-07T00:00:00Z"),
                ("2011-12-28T00:00:00Z", "2012-01-02T00:00:00Z"),
                ("2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"),
                ("2026-10-23T00:00:00Z", "2026-10-27T00:00:00Z"),
            ] {
                let (from, until) = (utc(from), utc(until));
                let mut t = from;
                let mut walked = 0;
                loop {
                    let next = schedule.next_after(t).unwrap();
                    assert!(next > t);
                    if next > until {
                        break;
                    }
                    walked += 1;
                    t = next;
                }
                let (count, latest) = schedule.slots_between(from, until);
                assert_eq!(count, walked, "{expr} {from}");
                assert_eq!(latest, (walked > 0).then_some(t), "{expr} {from}");
            }
        }
    }
}
