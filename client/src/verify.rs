//! Verification: `POST /v1/keys/verify` and `GET /v1/auth`.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codes::{Environment, VerificationCode};
use crate::secret::Secret;

/// `POST /v1/keys/verify`: the presented key and what it must allow.
///
/// ```
/// use keyledger_client::VerifyRequest;
///
/// let request = VerifyRequest::new("kl_live_...")
///     .permissions(["invoices:read"])
///     .ip("203.0.113.7".parse().unwrap());
/// assert!(!format!("{request:?}").contains("kl_live_"));
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct VerifyRequest {
    /// The presented key.
    pub key: Secret,
    /// Required environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Permissions that must all be granted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Credits a `VALID` answer spends: 0-1000, default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<u64>,
    /// The caller's client address, checked against the key's `allowed_ips`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

impl VerifyRequest {
    /// Verifies `key`, asking for nothing more.
    pub fn new(key: impl Into<Secret>) -> Self {
        Self {
            key: key.into(),
            environment: None,
            permissions: Vec::new(),
            cost: None,
            ip: None,
        }
    }

    /// Permissions that must all be granted.
    pub fn permissions<I, P>(mut self, permissions: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.permissions = permissions.into_iter().map(Into::into).collect();
        self
    }

    /// The environment the key must be of.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// Credits a `VALID` answer spends (0 checks that some are left).
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// The client address the key is used from.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }
}

/// The answer of `POST /v1/keys/verify`. Key fields are present when the key
/// exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub valid: bool,
    pub code: VerificationCode,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub environment: Option<Environment>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's and its owner's rate limits, for a limited key that got as
    /// far as them.
    #[serde(default)]
    pub ratelimits: Vec<RateLimitState>,
    /// For a key with credits that got as far as them.
    #[serde(default)]
    pub credits: Option<CreditsLeft>,
}

impl Verification {
    /// How long until a `RATE_LIMITED` key may be used again, from `now`:
    /// until the windows of its used-up limits end (at least a second).
    /// `None` for other answers, or when the answer names no limit.
    pub fn retry_after(&self, now: DateTime<Utc>) -> Option<Duration> {
        if self.code != VerificationCode::RateLimited {
            return None;
        }
        let used_up = self.ratelimits.iter().filter(|r| r.remaining == 0);
        let reset = used_up
            .map(|r| r.reset_at)
            .max()
            .or_else(|| self.ratelimits.iter().map(|r| r.reset_at).min())?;
        let ms = (reset - now).num_milliseconds().max(0);
        let seconds = u64::try_from(ms).unwrap_or(0).div_ceil(1000).max(1);
        Some(Duration::from_secs(seconds))
    }
}

/// A rate limit in a verification answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitState {
    pub name: String,
    pub limit: u64,
    /// Left in the current window, as far as the answering node knows.
    pub remaining: u64,
    /// When the window ends.
    pub reset_at: DateTime<Utc>,
}

/// Credits in a verification answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsLeft {
    pub remaining: u64,
}

/// The identity `GET /v1/auth` answers a valid key with (its `X-Key-*`
/// headers, percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub key_id: String,
    pub tenant: String,
    pub permissions: Vec<String>,
    /// `RateLimit-*` headers: the tightest of the key's limits.
    pub rate_limit: Option<RateLimitHeaders>,
}

/// The `RateLimit-Limit`, `-Remaining` and `-Reset` headers of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rate_limited_answer_says_when_to_come_back() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let answer: Verification = serde_json::from_value(json!({
            "valid": false, "code": "RATE_LIMITED", "key_id": "key_1", "tenant": "t",
            "name": "n", "environment": "live", "permissions": [], "expires_at": null,
            "ratelimits": [
                {"name": "second", "limit": 5, "remaining": 3, "reset_at": "2026-01-01T00:00:00.400Z"},
                {"name": "minute", "limit": 10, "remaining": 0, "reset_at": "2026-01-01T00:00:41.200Z"}
            ]
        }))
        .expect("verification");
        assert_eq!(answer.retry_after(now), Some(Duration::from_secs(42)));
        let valid: Verification =
            serde_json::from_value(json!({"valid": true, "code": "VALID"})).expect("valid");
        assert_eq!(valid.retry_after(now), None);
        let request = VerifyRequest::new("kl_test_x").cost(0);
        assert_eq!(
            serde_json::to_value(&request).expect("json"),
            json!({"key": "kl_test_x", "cost": 0})
        );
    }
}
