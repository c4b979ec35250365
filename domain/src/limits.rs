//! Usage limits of a key: rate limits (`limit` verifications per fixed window)
//! and credits (a balance that `VALID` answers spend, optionally refilled at
//! each UTC day or month). The values and their rules; the ledger that keeps
//! the balance exact across nodes is [`crate::ledger`].

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

pub const MAX_RATELIMITS: usize = 5;
pub const MAX_RATELIMIT: u64 = 1_000_000_000;
pub const MIN_WINDOW_MS: u64 = 1_000;
pub const MAX_WINDOW_MS: u64 = 2_592_000_000;
pub const MAX_CREDITS: u64 = 1_000_000_000_000_000;
pub const MAX_OWNER_CHARS: usize = 128;
pub const MAX_RATELIMIT_NAME: usize = 32;
/// The most credits one verification may spend.
pub const MAX_COST: u64 = 1_000;

/// At most `limit` verifications in each window of `window_ms`, windows
/// aligned to the Unix epoch (window `k` is `[k * window_ms, (k + 1) * window_ms)`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    pub window_ms: u64,
}

impl RateLimit {
    /// The window holding `at_ms`.
    pub fn window_of(&self, at_ms: i64) -> i64 {
        window_of(self.window_ms, at_ms)
    }

    /// When window `window` ends, in milliseconds since the epoch.
    pub fn window_end_ms(&self, window: i64) -> i64 {
        window_end_ms(self.window_ms, window)
    }
}

/// The window of `window_ms` holding `at_ms` (windows are aligned to the
/// epoch).
pub fn window_of(window_ms: u64, at_ms: i64) -> i64 {
    at_ms.div_euclid(i64::try_from(window_ms).unwrap_or(i64::MAX).max(1))
}

/// When window `window` of `window_ms` ends, in milliseconds since the epoch.
pub fn window_end_ms(window_ms: u64, window: i64) -> i64 {
    window
        .saturating_add(1)
        .saturating_mul(i64::try_from(window_ms).unwrap_or(i64::MAX))
}

/// How often a key's credits are refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefillInterval {
    Daily,
    Monthly,
}

/// At each interval start (UTC) the balance becomes `amount`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    pub amount: u64,
    pub interval: RefillInterval,
    /// Monthly refills: the day of the month they happen on (1-28, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day_of_month: Option<u8>,
}

impl Refill {
    /// The start of the refill period holding `at`.
    pub fn period_start(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let date = at.date_naive();
        let start = match self.interval {
            RefillInterval::Daily => date,
            RefillInterval::Monthly => {
                let day = u32::from(self.day_of_month.unwrap_or(1).clamp(1, 28));
                let this_month = NaiveDate::from_ymd_opt(date.year(), date.month(), day);
                match this_month {
                    Some(d) if d <= date => d,
                    Some(d) => d.checked_sub_months(Months::new(1)).unwrap_or(d),
                    None => date,
                }
            }
        };
        midnight(start)
    }

    /// The start of the period after the one starting at `start`.
    pub fn period_end(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        let date = start.date_naive();
        let next = match self.interval {
            RefillInterval::Daily => date.succ_opt(),
            RefillInterval::Monthly => date.checked_add_months(Months::new(1)),
        };
        next.map_or(DateTime::<Utc>::MAX_UTC, midnight)
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
}

/// Credits a key starts with (or is given by PATCH): the balance and its refill.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credits {
    pub remaining: u64,
    #[serde(default)]
    pub refill: Option<Refill>,
}

/// An owner is the customer's own id for whoever holds a key: 1-128
/// characters, no control character.
pub fn owner(owner: &str) -> Result<(), DomainError> {
    let chars = owner.chars().count();
    if chars == 0 || chars > MAX_OWNER_CHARS {
        return Err(DomainError::validation(
            "owner",
            format!("must be 1-{MAX_OWNER_CHARS} characters, got {chars}"),
        ));
    }
    if owner.chars().any(char::is_control) {
        return Err(DomainError::validation(
            "owner",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// At most five rate limits, names `[a-z0-9_-]{1,32}` and unique, `limit`
/// 1..10^9, `window_ms` 1000..2592000000.
pub fn ratelimits(limits: &[RateLimit]) -> Result<(), DomainError> {
    if limits.len() > MAX_RATELIMITS {
        return Err(DomainError::validation(
            "ratelimits",
            format!("at most {MAX_RATELIMITS} rate limits, got {}", limits.len()),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        let name_ok = (1..=MAX_RATELIMIT_NAME).contains(&l.name.len())
            && l.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(DomainError::validation(
                "ratelimits",
                format!("ratelimits[{i}].name must match [a-z0-9_-]{{1,32}}"),
            ));
        }
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(DomainError::validation(
                "ratelimits",
                format!("ratelimits[{i}].name {:?} is used twice", l.name),
            ));
        }
        if !(1..=MAX_RATELIMIT).contains(&l.limit) {
            return Err(DomainError::validation(
                "ratelimits",
                format!("ratelimits[{i}].limit must be 1-{MAX_RATELIMIT}"),
            ));
        }
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&l.window_ms) {
            return Err(DomainError::validation(
                "ratelimits",
                format!("ratelimits[{i}].window_ms must be {MIN_WINDOW_MS}-{MAX_WINDOW_MS}"),
            ));
        }
    }
    Ok(())
}

/// `remaining` 0..10^15; a refill of 1..10^15, `day_of_month` 1-28 and only
/// for monthly refills.
pub fn credits(credits: &Credits) -> Result<(), DomainError> {
    amount("credits", credits.remaining, 0)?;
    if let Some(r) = &credits.refill {
        refill(r)?;
    }
    Ok(())
}

pub fn refill(r: &Refill) -> Result<(), DomainError> {
    amount("credits", r.amount, 1)?;
    match (r.interval, r.day_of_month) {
        (_, None) => Ok(()),
        (RefillInterval::Monthly, Some(d)) if (1..=28).contains(&d) => Ok(()),
        (RefillInterval::Monthly, Some(_)) => Err(DomainError::validation(
            "credits",
            "refill.day_of_month must be 1-28",
        )),
        (RefillInterval::Daily, Some(_)) => Err(DomainError::validation(
            "credits",
            "refill.day_of_month applies to monthly refills only",
        )),
    }
}

/// An amount of credits within `min..=10^15`.
pub fn amount(field: &'static str, n: u64, min: u64) -> Result<(), DomainError> {
    if n < min || n > MAX_CREDITS {
        return Err(DomainError::validation(
            field,
            format!("must be {min}-{MAX_CREDITS}, got {n}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn limit(name: &str, limit: u64, window_ms: u64) -> RateLimit {
        RateLimit {
            name: name.into(),
            limit,
            window_ms,
        }
    }

    #[test]
    fn rate_limits_are_checked_field_by_field() {
        assert!(ratelimits(&[limit("per-second_1", 1, 1000)]).is_ok());
        assert!(ratelimits(&[limit("a", MAX_RATELIMIT, MAX_WINDOW_MS)]).is_ok());
        for bad in [
            limit("", 1, 1000),
            limit("Upper", 1, 1000),
            limit(&"a".repeat(33), 1, 1000),
            limit("a", 0, 1000),
            limit("a", MAX_RATELIMIT + 1, 1000),
            limit("a", 1, 999),
            limit("a", 1, MAX_WINDOW_MS + 1),
        ] {
            assert!(ratelimits(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert!(ratelimits(&[limit("a", 1, 1000), limit("a", 2, 2000)]).is_err());
        let six: Vec<RateLimit> = (0..6).map(|i| limit(&format!("l{i}"), 1, 1000)).collect();
        assert!(ratelimits(&six).is_err());
    }

    #[test]
    fn credits_and_refills_are_bounded() {
        let ok = Credits {
            remaining: MAX_CREDITS,
            refill: Some(Refill {
                amount: 1,
                interval: RefillInterval::Monthly,
                day_of_month: Some(28),
            }),
        };
        assert!(credits(&ok).is_ok());
        let mut over = ok.clone();
        over.remaining = MAX_CREDITS + 1;
        assert!(credits(&over).is_err());
        let mut day = ok.clone();
        day.refill = Some(Refill {
            amount: 1,
            interval: RefillInterval::Daily,
            day_of_month: Some(3),
        });
        assert!(credits(&day).is_err());
        let mut zero = ok;
        zero.refill = Some(Refill {
            amount: 0,
            interval: RefillInterval::Daily,
            day_of_month: None,
        });
        assert!(credits(&zero).is_err());
    }

    #[test]
    fn owners_are_one_to_128_visible_characters() {
        assert!(owner("cus_123").is_ok());
        assert!(owner(&"é".repeat(128)).is_ok());
        assert!(owner("").is_err());
        assert!(owner(&"a".repeat(129)).is_err());
        assert!(owner("a\nb").is_err());
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let l = limit("a", 10, 1000);
        assert_eq!(l.window_of(0), 0);
        assert_eq!(l.window_of(999), 0);
        assert_eq!(l.window_of(1000), 1);
        assert_eq!(l.window_end_ms(1), 2000);
        assert_eq!(l.window_of(-1), -1);
    }

    #[test]
    fn daily_periods_start_at_utc_midnight() {
        let r = Refill {
            amount: 5,
            interval: RefillInterval::Daily,
            day_of_month: None,
        };
        let start = r.period_start(at("2026-12-07T23:59:59.999Z"));
        assert_eq!(start, at("2026-12-07T00:00:00Z"));
        assert_eq!(r.period_end(start), at("2026-12-08T00:00:00Z"));
        assert_eq!(
            r.period_start(at("2026-12-08T00:00:00Z")),
            at("2026-12-08T00:00:00Z")
        );
    }

    #[test]
    fn monthly_periods_start_on_their_day() {
        let r = Refill {
            amount: 5,
            interval: RefillInterval::Monthly,
            day_of_month: Some(15),
        };
        assert_eq!(
            r.period_start(at("2026-12-14T23:59:59Z")),
            at("2026-11-15T00:00:00Z")
        );
        assert_eq!(
            r.period_start(at("2026-12-15T00:00:00Z")),
            at("2026-12-15T00:00:00Z")
        );
        assert_eq!(
            r.period_end(at("2026-12-15T00:00:00Z")),
            at("2027-01-15T00:00:00Z")
        );
        let first = Refill {
            day_of_month: None,
            ..r
        };
        assert_eq!(
            first.period_start(at("2027-01-01T00:00:00Z")),
            at("2027-01-01T00:00:00Z")
        );
    }
}
