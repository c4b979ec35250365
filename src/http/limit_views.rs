//! The shapes of rate limits and credits in requests and views, and their
//! conversions to the domain's (checked by its rules).

use keyledger_domain::{Credits, Ledger, RateLimit, Refill, RefillInterval};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;

/// At most `limit` verifications per window of `window_ms` (windows aligned
/// to the Unix epoch).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1000000000)]
    pub limit: u64,
    #[schema(minimum = 1000, maximum = 2592000000_u64)]
    pub window_ms: u64,
}

impl From<RateLimitBody> for RateLimit {
    fn from(b: RateLimitBody) -> Self {
        Self {
            name: b.name,
            limit: b.limit,
            window_ms: b.window_ms,
        }
    }
}

impl From<RateLimit> for RateLimitBody {
    fn from(r: RateLimit) -> Self {
        Self {
            name: r.name,
            limit: r.limit,
            window_ms: r.window_ms,
        }
    }
}

/// At each interval start (UTC) the balance becomes `amount`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefillBody {
    #[schema(minimum = 1, maximum = 1000000000000000_u64)]
    pub amount: u64,
    /// `daily` or `monthly`.
    #[schema(pattern = "^(daily|monthly)$")]
    pub interval: String,
    /// Monthly refills only: 1-28 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 28)]
    pub day_of_month: Option<u8>,
}

/// A key's credits in a create or a PATCH.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsBody {
    #[schema(minimum = 0, maximum = 1000000000000000_u64)]
    pub remaining: u64,
    pub refill: Option<RefillBody>,
}

impl TryFrom<CreditsBody> for Credits {
    type Error = Error;

    fn try_from(b: CreditsBody) -> Result<Self, Error> {
        let refill = b
            .refill
            .map(|r| {
                let interval = match r.interval.as_str() {
                    "daily" => RefillInterval::Daily,
                    "monthly" => RefillInterval::Monthly,
                    _ => {
                        return Err(Error::validation(
                            "credits",
                            "refill.interval must be daily or monthly",
                        ))
                    }
                };
                Ok(Refill {
                    amount: r.amount,
                    interval,
                    day_of_month: r.day_of_month,
                })
            })
            .transpose()?;
        let credits = Credits {
            remaining: b.remaining,
            refill,
        };
        keyledger_domain::limits::credits(&credits)?;
        Ok(credits)
    }
}

/// A key's credits as shown: the balance as of the last usage flush of every
/// node (what nodes hold but have not spent included).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreditsView {
    pub remaining: u64,
    pub refill: Option<RefillBody>,
}

impl CreditsView {
    pub fn of(ledger: &Ledger) -> Option<Self> {
        ledger.limited.then(|| Self {
            remaining: ledger.remaining(),
            refill: ledger.refill.clone().map(|r| RefillBody {
                amount: r.amount,
                interval: match r.interval {
                    RefillInterval::Daily => "daily",
                    RefillInterval::Monthly => "monthly",
                }
                .to_string(),
                day_of_month: r.day_of_month,
            }),
        })
    }
}

/// Rate limits of a request, checked.
pub fn ratelimits(list: Vec<RateLimitBody>) -> Result<Vec<RateLimit>, Error> {
    let list: Vec<RateLimit> = list.into_iter().map(RateLimit::from).collect();
    keyledger_domain::limits::ratelimits(&list)?;
    Ok(list)
}
