//! Usage over time: `GET /v1/keys/{id}/usage` and `GET /v1/usage`, answered
//! from the usage buckets (`keyledger_projections::usage`). Every bucket of
//! the range is in the answer, oldest first, those that counted nothing as
//! zeros, so a chart needs no gap-filling of its own.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use keyledger_projections::usage::{Counts, Unit, UsageRow, TENANT_TOTAL};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiQuery, KeyPath};
use crate::http::management::Management;
use crate::http::state::AppState;

/// Most buckets one answer holds (two days of minutes is 2,880).
pub const MAX_BUCKETS: i64 = 3_000;
/// Keys in `top_keys`.
const TOP_KEYS: i64 = 10;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// `minute`, `hour` (default) or `day` (`/v1/usage`: `hour` or `day`).
    #[param(pattern = "^(minute|hour|day)$")]
    pub granularity: Option<String>,
    /// Start of the range (RFC 3339), rounded down to its bucket; default
    /// `until` minus 1 hour (minute), 48 hours (hour) or 30 days (day).
    pub since: Option<DateTime<Utc>>,
    /// End of the range (RFC 3339, exclusive); default now.
    pub until: Option<DateTime<Utc>>,
}

/// One bucket: verifications by outcome. `total` is their sum.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageBucket {
    pub start: DateTime<Utc>,
    pub total: i64,
    pub valid: i64,
    pub disabled: i64,
    pub expired: i64,
    pub wrong_environment: i64,
    pub insufficient_permissions: i64,
    pub rate_limited: i64,
    pub usage_exceeded: i64,
    pub ip_not_allowed: i64,
}

impl UsageBucket {
    fn of(start: i64, c: &Counts) -> Self {
        let [disabled, expired, wrong_environment, insufficient_permissions, rate_limited, usage_exceeded, ip_not_allowed] =
            c.refused;
        Self {
            start: DateTime::from_timestamp_millis(start).unwrap_or_default(),
            total: c.total(),
            valid: c.valid,
            disabled,
            expired,
            wrong_environment,
            insufficient_permissions,
            rate_limited,
            usage_exceeded,
            ip_not_allowed,
        }
    }
}

/// A key's usage over a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    pub granularity: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub buckets: Vec<UsageBucket>,
}

/// One of the most verified keys of a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopKey {
    pub key_id: String,
    /// Null once the key is deleted (its usage stays counted).
    pub name: Option<String>,
    pub total: i64,
    pub valid: i64,
}

/// A tenant's usage over a range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantUsage {
    pub granularity: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub buckets: Vec<UsageBucket>,
    /// At most 10, most verifications first.
    pub top_keys: Vec<TopKey>,
}

/// A query's range, checked: whole buckets, at most [`MAX_BUCKETS`].
struct Range {
    unit: Unit,
    since_ms: i64,
    until_ms: i64,
}

impl Range {
    fn of(params: &UsageParams, now: DateTime<Utc>, units: &[Unit]) -> Result<Self, Error> {
        let unit = match params.granularity.as_deref() {
            None => Unit::Hour,
            Some(g) => Unit::parse(g)
                .filter(|u| units.contains(u))
                .ok_or_else(|| {
                    let names: Vec<&str> = units.iter().map(|u| u.as_str()).collect();
                    Error::validation("granularity", format!("must be {}", names.join(", ")))
                })?,
        };
        let until = params.until.unwrap_or(now);
        let default_span = match unit {
            Unit::Minute => Duration::hours(1),
            Unit::Hour => Duration::hours(48),
            Unit::Day => Duration::days(30),
        };
        let since = match params.since {
            Some(since) => since,
            // Near the start of time there is no span before `until`.
            None => until
                .checked_sub_signed(default_span)
                .ok_or_else(|| Error::validation("until", "is too early"))?,
        };
        if since >= until {
            return Err(Error::validation("since", "must be before until"));
        }
        let since_ms = unit.floor(since.timestamp_millis());
        let until_ms = until.timestamp_millis();
        let buckets = (until_ms - since_ms + unit.millis() - 1) / unit.millis();
        if buckets > MAX_BUCKETS {
            return Err(Error::validation(
                "since",
                format!("the range holds {buckets} buckets; at most {MAX_BUCKETS}"),
            ));
        }
        Ok(Self {
            unit,
            since_ms,
            until_ms,
        })
    }

    /// Every bucket of the range, the stored ones where there are some.
    fn fill(&self, rows: &[UsageRow]) -> Vec<UsageBucket> {
        let mut stored = rows.iter().peekable();
        let mut out = Vec::new();
        let mut start = self.since_ms;
        while start < self.until_ms {
            let counts = match stored.peek() {
                Some(r) if r.start == start => stored.next().map(|r| r.counts),
                _ => None,
            };
            out.push(UsageBucket::of(start, &counts.unwrap_or_default()));
            start += self.unit.millis();
        }
        out
    }

    fn since(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.since_ms).unwrap_or_default()
    }

    fn until(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.until_ms).unwrap_or_default()
    }
}

/// GET /v1/keys/{id}/usage
#[utoipa::path(get, path = "/v1/keys/{id}/usage", tag = "usage", operation_id = "getKeyUsage",
    params(("id" = String, Path, description = "key id"), UsageParams),
    responses((status = 200, body = KeyUsage), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn key_usage(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<KeyUsage>, Error> {
    let range = Range::of(
        &params,
        state.service.clock().now(),
        &[Unit::Minute, Unit::Hour, Unit::Day],
    )?;
    let key = state.service.get(&actor, &id).await?;
    let rows = state
        .service
        .projections()
        .usage(
            &actor.tenant,
            &key.id,
            range.unit,
            range.since_ms,
            range.until_ms,
        )
        .await?;
    Ok(Json(KeyUsage {
        key_id: key.id,
        granularity: range.unit.as_str().to_string(),
        since: range.since(),
        until: range.until(),
        buckets: range.fill(&rows),
    }))
}

/// GET /v1/usage
#[utoipa::path(get, path = "/v1/usage", tag = "usage", operation_id = "getTenantUsage",
    params(UsageParams),
    responses((status = 200, body = TenantUsage), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn tenant_usage(
    State(state): State<AppState>,
    Management(actor): Management,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<TenantUsage>, Error> {
    let range = Range::of(
        &params,
        state.service.clock().now(),
        &[Unit::Hour, Unit::Day],
    )?;
    let projections = state.service.projections();
    let rows = projections
        .usage(
            &actor.tenant,
            TENANT_TOTAL,
            range.unit,
            range.since_ms,
            range.until_ms,
        )
        .await?;
    let top = projections
        .top_keys(
            &actor.tenant,
            range.unit,
            range.since_ms,
            range.until_ms,
            TOP_KEYS,
        )
        .await?;
    let top_keys = top
        .into_iter()
        .map(|t| TopKey {
            key_id: t.key_id,
            name: t.name,
            total: t.total,
            valid: t.valid,
        })
        .collect();
    Ok(Json(TenantUsage {
        granularity: range.unit.as_str().to_string(),
        since: range.since(),
        until: range.until(),
        buckets: range.fill(&rows),
        top_keys,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(g: &str, since: &str, until: &str) -> UsageParams {
        UsageParams {
            granularity: Some(g.into()),
            since: Some(since.parse().expect("since")),
            until: Some(until.parse().expect("until")),
        }
    }

    #[test]
    fn a_range_is_whole_buckets_and_filled_with_zeros() {
        let now = Utc::now();
        let p = params("hour", "2026-01-01T10:30:00Z", "2026-01-01T13:00:00Z");
        let r = Range::of(&p, now, &Unit::ALL).expect("range");
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("t").timestamp_millis();
        assert_eq!(r.since_ms, at("2026-01-01T10:00:00Z"), "rounded down");
        let stored = [UsageRow {
            tenant: "t".into(),
            subject: "k".into(),
            unit: Unit::Hour,
            start: at("2026-01-01T11:00:00Z"),
            counts: Counts {
                valid: 3,
                refused: [1, 0, 0, 0, 2, 0, 0],
            },
        }];
        let b = r.fill(&stored);
        assert_eq!(b.len(), 3);
        assert_eq!(
            (
                b[0].total,
                b[1].total,
                b[1].valid,
                b[1].rate_limited,
                b[2].total
            ),
            (0, 6, 3, 2, 0)
        );
    }

    #[test]
    fn the_edges_of_time_are_refused_not_panicked_on() {
        let now = Utc::now();
        let early = UsageParams {
            granularity: Some("day".into()),
            since: None,
            until: Some(DateTime::<Utc>::MIN_UTC),
        };
        assert!(Range::of(&early, now, &Unit::ALL).is_err());
        let wide = params("day", "-200000-01-01T00:00:00Z", "+200000-01-01T00:00:00Z");
        assert!(Range::of(&wide, now, &Unit::ALL).is_err());
    }

    #[test]
    fn a_year_of_days_fits_and_a_year_of_minutes_does_not() {
        let now = Utc::now();
        let year = params("day", "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        assert!(Range::of(&year, now, &Unit::ALL).is_ok());
        let minutes = params("minute", "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        assert!(Range::of(&minutes, now, &Unit::ALL).is_err());
        let backwards = params("day", "2026-01-01T00:00:00Z", "2025-01-01T00:00:00Z");
        assert!(Range::of(&backwards, now, &Unit::ALL).is_err());
        let minute = params("minute", "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z");
        assert!(
            Range::of(&minute, now, &[Unit::Hour, Unit::Day]).is_err(),
            "a tenant's usage has no minutes"
        );
    }
}
