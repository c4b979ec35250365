//! The key list view: one row per live key of each tenant, newest first. Deleted
//! keys leave the view (and so answer 404); their history stays in the audit log.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Status of a key as stored (expiry is derived at read time).
pub const STATUS_ACTIVE: &str = "active";
pub const STATUS_INACTIVE: &str = "inactive";

/// A key as the list view holds it. Never holds the raw key; the hash is kept for
/// filling the verification index and never leaves this crate's callers' storage layer.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    pub id: String,
    pub tenant: String,
    /// Lowercase hex SHA-256 of the key; never shown to API clients.
    pub key_hash: String,
    pub prefix: String,
    pub name: String,
    pub description: Option<String>,
    pub environment: String,
    pub permissions: Vec<String>,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub usage_count: i64,
    pub metadata: Option<Value>,
    pub created_position: i64,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
}

/// What a reader sees: `inactive` wins over `expired`, matching verification
/// (which answers `DISABLED` before `EXPIRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Inactive,
    Expired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "inactive" => Some(Self::Inactive),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

impl KeyRow {
    /// The status at `now`.
    pub fn status_at(&self, now: DateTime<Utc>) -> KeyStatus {
        if self.status == STATUS_INACTIVE {
            KeyStatus::Inactive
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// Filters and page of a list query.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<KeyStatus>,
    pub environment: Option<String>,
    /// Only keys created before this position (the cursor of the previous page).
    pub before_position: Option<i64>,
    pub limit: u32,
}

/// One page of keys, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPage {
    pub keys: Vec<KeyRow>,
    /// The `created_position` to continue from, when more keys may follow.
    pub next_before: Option<i64>,
}
