//! Usage over time: `GET /v1/keys/{id}/usage` and `GET /v1/usage`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codes::Granularity;

/// The range and bucket size asked for; absent parts take the server's
/// defaults (hourly buckets over the last 48 hours).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<Granularity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// Verifications in one bucket, by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBucket {
    pub start: DateTime<Utc>,
    #[serde(default)]
    pub total: i64,
    #[serde(default)]
    pub valid: i64,
    #[serde(default)]
    pub disabled: i64,
    #[serde(default)]
    pub expired: i64,
    #[serde(default)]
    pub wrong_environment: i64,
    #[serde(default)]
    pub insufficient_permissions: i64,
    #[serde(default)]
    pub rate_limited: i64,
    #[serde(default)]
    pub usage_exceeded: i64,
    #[serde(default)]
    pub ip_not_allowed: i64,
}

/// One key's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsage {
    pub key_id: String,
    pub granularity: Granularity,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub buckets: Vec<UsageBucket>,
}

/// The tenant's usage, and its busiest keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantUsage {
    pub granularity: Granularity,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub buckets: Vec<UsageBucket>,
    #[serde(default)]
    pub top_keys: Vec<TopKey>,
}

/// A key among the ten with the most verifications in the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopKey {
    pub key_id: String,
    /// `None` once deleted.
    #[serde(default)]
    pub name: Option<String>,
    pub total: i64,
    pub valid: i64,
}
