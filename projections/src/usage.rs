//! Usage over time: verifications of each key, and of each tenant as a
//! whole, counted by outcome in minute, hour and day buckets, from the
//! `KeyUsageRecorded` events (`count` is the `VALID` answers, `refused` the
//! rest). Each bucket holds what the flushes placed in it; a flush lands in
//! the bucket of its `last_used_at`, so a count is exact to within one flush
//! interval.
//!
//! Old buckets go by [`Retention`] (minutes after 2 days, hours after 90
//! days, days never, by default); the fold that rebuilds and checks this
//! table applies the same cut.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_domain::{KeyUsageEvent, Outcomes};

use crate::error::ProjectionError;
use crate::event::{KeyledgerEvent, RecordedEvent};
use crate::schema::{Column, Fields, Index, Record, Table, Value, ValueOf};

/// The subject of a tenant's own totals (a key's subject is its id).
pub const TENANT_TOTAL: &str = "";

/// Bucket sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub const ALL: [Unit; 3] = [Unit::Minute, Unit::Hour, Unit::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.as_str() == s)
    }

    /// The bucket's length in milliseconds (days are UTC days).
    pub fn millis(self) -> i64 {
        match self {
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `ms`.
    pub fn floor(self, ms: i64) -> i64 {
        ms.div_euclid(self.millis()) * self.millis()
    }
}

/// How long buckets of each size are kept; `None` keeps them for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub minute: Option<std::time::Duration>,
    pub hour: Option<std::time::Duration>,
    pub day: Option<std::time::Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            minute: Some(std::time::Duration::from_secs(2 * DAY)),
            hour: Some(std::time::Duration::from_secs(90 * DAY)),
            day: None,
        }
    }
}

impl Retention {
    /// Keeps every bucket.
    pub const KEEP_ALL: Retention = Retention {
        minute: None,
        hour: None,
        day: None,
    };

    /// Buckets of `unit` starting before this are dropped at `now_ms`.
    pub fn cutoff(&self, unit: Unit, now_ms: i64) -> Option<i64> {
        let keep = match unit {
            Unit::Minute => self.minute,
            Unit::Hour => self.hour,
            Unit::Day => self.day,
        }?;
        let keep = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        Some(unit.floor(now_ms.saturating_sub(keep)))
    }

    /// Whether a bucket is still kept at `now_ms`.
    pub fn keeps(&self, row: &UsageRow, now_ms: i64) -> bool {
        self.cutoff(row.unit, now_ms)
            .is_none_or(|cut| row.start >= cut)
    }
}

/// Counts of one bucket, `VALID` first, then [`Outcomes::NAMES`] in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub valid: i64,
    pub refused: [i64; 7],
}

impl Counts {
    pub fn of(valid: u64, refused: &Outcomes) -> Self {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Self {
            valid: n(valid),
            refused: refused.counts().map(n),
        }
    }

    pub fn total(&self) -> i64 {
        self.refused
            .iter()
            .fold(self.valid, |a, n| a.saturating_add(*n))
    }

    pub fn add(&mut self, other: &Counts) {
        self.valid = self.valid.saturating_add(other.valid);
        for (a, b) in self.refused.iter_mut().zip(other.refused) {
            *a = a.saturating_add(b);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.valid == 0 && self.refused.iter().all(|n| *n == 0)
    }
}

/// One bucket of one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant: String,
    /// A key id, or [`TENANT_TOTAL`].
    pub subject: String,
    pub unit: Unit,
    /// Start of the bucket, milliseconds since the epoch (UTC).
    pub start: i64,
    pub counts: Counts,
}

impl UsageRow {
    pub fn start_time(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.start).unwrap_or_default()
    }
}

/// The usage table.
pub static TABLE: Table<12> = Table {
    name: "usage_buckets",
    scratch: "usage_buckets_rebuild",
    checkpoint: crate::checkpoint::USAGE,
    columns: [
        Column::text("tenant"),
        Column::text("subject"),
        Column::text("unit"),
        Column::int("start_ms"),
        Column::int("valid"),
        Column::int("disabled"),
        Column::int("expired"),
        Column::int("wrong_environment"),
        Column::int("insufficient_permissions"),
        Column::int("rate_limited"),
        Column::int("usage_exceeded"),
        Column::int("ip_not_allowed"),
    ],
    primary_key: "tenant, subject, unit, start_ms",
    indexes: &[Index {
        name: "usage_buckets_by_unit",
        columns: "unit, start_ms",
    }],
};

/// A bucket applied again adds its counts to the row already there: the
/// checkpoint, moved in the same transaction, makes each event count once.
pub(crate) fn upsert_tail() -> String {
    let mut sets = vec!["valid = usage_buckets.valid + excluded.valid".to_string()];
    sets.extend(
        Outcomes::NAMES
            .iter()
            .map(|n| format!("{n} = usage_buckets.{n} + excluded.{n}")),
    );
    format!(
        " ON CONFLICT ({}) DO UPDATE SET {}",
        TABLE.primary_key,
        sets.join(", ")
    )
}

impl Record<12> for UsageRow {
    const TABLE: &'static Table<12> = &TABLE;

    fn values(&self) -> [Value; 12] {
        let c = &self.counts;
        [
            Value::text(&self.tenant),
            Value::text(&self.subject),
            Value::text(self.unit.as_str()),
            Value::Int(Some(self.start)),
            Value::Int(Some(c.valid)),
            Value::Int(Some(c.refused[0])),
            Value::Int(Some(c.refused[1])),
            Value::Int(Some(c.refused[2])),
            Value::Int(Some(c.refused[3])),
            Value::Int(Some(c.refused[4])),
            Value::Int(Some(c.refused[5])),
            Value::Int(Some(c.refused[6])),
        ]
    }

    fn from_values(values: [Value; 12]) -> Result<Self, ProjectionError> {
        let mut f = Fields::new(&TABLE, values, 0);
        let tenant = f.text()?;
        let subject = f.text()?;
        let unit_text = f.text()?;
        let unit = Unit::parse(&unit_text).ok_or_else(|| ProjectionError::CorruptRow {
            table: TABLE.name,
            id: format!("{tenant}/{subject}"),
            column: "unit",
            message: format!("{unit_text:?} is not minute, hour or day"),
        })?;
        let start = f.int()?;
        let valid = f.int()?;
        let mut refused = [0i64; 7];
        for n in &mut refused {
            *n = f.int()?;
        }
        Ok(Self {
            tenant,
            subject,
            unit,
            start,
            counts: Counts { valid, refused },
        })
    }
}

/// The buckets one event adds to: its key's and its tenant's, in each unit.
pub fn rows_of(e: &RecordedEvent) -> Vec<UsageRow> {
    let KeyledgerEvent::Usage(KeyUsageEvent::KeyUsageRecorded(u)) = &e.event else {
        return Vec::new();
    };
    let counts = Counts::of(u.count, &u.refused);
    if counts.is_empty() {
        return Vec::new();
    }
    let at = u.last_used_at.timestamp_millis();
    let mut rows = Vec::with_capacity(6);
    for subject in [e.key_id.as_str(), TENANT_TOTAL] {
        for unit in Unit::ALL {
            rows.push(UsageRow {
                tenant: u.tenant.clone(),
                subject: subject.to_string(),
                unit,
                start: unit.floor(at),
                counts,
            });
        }
    }
    rows
}

type BucketKey = (String, String, Unit, i64);

/// Buckets summed in memory: a batch's before its upsert (one row per
/// bucket, as an upsert needs), and the whole table for a rebuild or a check.
#[derive(Debug, Default)]
pub struct UsageFold {
    buckets: HashMap<BucketKey, Counts>,
}

impl UsageFold {
    pub fn apply(&mut self, e: &RecordedEvent) {
        for row in rows_of(e) {
            self.buckets
                .entry((row.tenant, row.subject, row.unit, row.start))
                .or_default()
                .add(&row.counts);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The rows, without those `retention` has dropped at `now_ms`, in key
    /// order.
    pub fn into_rows(self, retention: &Retention, now_ms: i64) -> Vec<UsageRow> {
        let mut rows: Vec<UsageRow> = self
            .buckets
            .into_iter()
            .map(|((tenant, subject, unit, start), counts)| UsageRow {
                tenant,
                subject,
                unit,
                start,
                counts,
            })
            .filter(|r| retention.keeps(r, now_ms))
            .collect();
        rows.sort_by(|a, b| order(a).cmp(&order(b)));
        rows
    }
}

fn order(r: &UsageRow) -> (&str, &str, &str, i64) {
    (&r.tenant, &r.subject, r.unit.as_str(), r.start)
}

/// The differences between the folded buckets and the live ones that
/// `retention` still keeps at `now_ms`.
pub fn diff_usage(
    expected: Vec<UsageRow>,
    live: Vec<UsageRow>,
    retention: &Retention,
    now_ms: i64,
) -> Vec<String> {
    let mut want: HashMap<BucketKey, Counts> = expected
        .into_iter()
        .map(|r| ((r.tenant, r.subject, r.unit, r.start), r.counts))
        .collect();
    let mut diffs = Vec::new();
    for r in live.into_iter().filter(|r| retention.keeps(r, now_ms)) {
        let name = format!(
            "usage_buckets: {}/{}/{}/{}",
            r.tenant,
            if r.subject.is_empty() {
                "(tenant)"
            } else {
                &r.subject
            },
            r.unit.as_str(),
            r.start
        );
        match want.remove(&(r.tenant, r.subject, r.unit, r.start)) {
            None => diffs.push(format!("{name} should not exist")),
            Some(c) if c != r.counts => diffs.push(format!(
                "{name} differs: expected {c:?}, found {:?}",
                r.counts
            )),
            Some(_) => {}
        }
    }
    let mut missing: Vec<_> = want.into_keys().collect();
    missing.sort();
    diffs.extend(missing.into_iter().map(|(t, s, u, start)| {
        format!("usage_buckets: {t}/{s}/{}/{start} is missing", u.as_str())
    }));
    diffs
}

/// ` + disabled + expired + …`: the refused columns, summed in SQL.
pub(crate) fn refused_sum() -> String {
    Outcomes::NAMES.iter().map(|n| format!(" + {n}")).collect()
}

/// One of the top keys of a range, with its name while the key exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotal {
    pub key_id: String,
    pub name: Option<String>,
    pub total: i64,
    pub valid: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_floored_to_their_unit() {
        let t = 1_765_000_123_456; // some time in December 2025
        assert_eq!(Unit::Minute.floor(t) % 60_000, 0);
        assert!(t - Unit::Minute.floor(t) < 60_000);
        assert_eq!(Unit::Day.floor(t) % 86_400_000, 0);
        assert_eq!(Unit::Hour.floor(-1), -3_600_000, "before 1970 too");
    }

    #[test]
    fn retention_drops_old_minutes_and_keeps_days() {
        let r = Retention::default();
        let now = 100 * 86_400_000;
        let row = |unit, start| UsageRow {
            tenant: "t".into(),
            subject: "k".into(),
            unit,
            start,
            counts: Counts::default(),
        };
        assert!(!r.keeps(&row(Unit::Minute, now - 3 * 86_400_000), now));
        assert!(r.keeps(&row(Unit::Minute, now - 86_400_000), now));
        assert!(!r.keeps(&row(Unit::Hour, now - 91 * 86_400_000), now));
        assert!(r.keeps(&row(Unit::Day, 0), now), "days are kept for ever");
    }
}
