//! Keys as the management API shows them, and the requests that change them.

use std::ops::Deref;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codes::{CreditOp, Environment, KeyStatus, RefillInterval};
use crate::secret::Secret;

/// A key as the management API shows it: never its hash, never the raw key.
/// Fields this version does not know are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    /// `key_` + 32 hex digits.
    pub id: String,
    /// Display prefix, e.g. `kl_live_AbCdEfGh` (for imported keys, the
    /// prefix they were imported with).
    pub prefix: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub environment: Environment,
    #[serde(default)]
    pub permissions: Vec<String>,
    pub status: KeyStatus,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// As of the last usage flush.
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub usage_count: i64,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// The key this one replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
    /// The key that replaced this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
    /// The customer's own id for whoever holds the key.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub ratelimits: Vec<RateLimit>,
    /// `None`: no credit limit.
    #[serde(default)]
    pub credits: Option<Credits>,
    /// When the key was first reported leaked.
    #[serde(default)]
    pub leaked_at: Option<DateTime<Utc>>,
    /// CIDRs the key may be used from; empty: any address.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Issued by another system and imported by its hash.
    #[serde(default)]
    pub imported: bool,
}

/// The answer to a create or a rotation: the key and, this once, its raw
/// value. Derefs to the [`KeyView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyCreated {
    #[serde(flatten)]
    pub view: KeyView,
    /// The raw API key: not stored by keyledger, never shown again.
    pub key: Secret,
}

impl Deref for KeyCreated {
    type Target = KeyView;

    fn deref(&self) -> &KeyView {
        &self.view
    }
}

/// At most `limit` verifications per window of `window_ms` milliseconds
/// (windows aligned to the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// `[a-z0-9_-]{1,32}`, unique per key.
    pub name: String,
    /// 1 to 10^9.
    pub limit: u64,
    /// 1000 to 2592000000.
    pub window_ms: u64,
}

impl RateLimit {
    /// `limit` verifications per `window_ms`.
    pub fn new(name: impl Into<String>, limit: u64, window_ms: u64) -> Self {
        Self {
            name: name.into(),
            limit,
            window_ms,
        }
    }
}

/// A key's credits: its balance and how it refills (in a view, the balance as
/// of the last usage flush of every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credits {
    /// 0 to 10^15.
    pub remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

/// At each interval start (UTC) the balance becomes `amount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refill {
    pub amount: u64,
    pub interval: RefillInterval,
    /// Monthly refills only: 1-28 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day_of_month: Option<u8>,
}

/// `POST /v1/keys`. Absent fields take the server's defaults; build one with
/// [`CreateKey::new`] and struct update syntax.
///
/// ```
/// use keyledger_client::{CreateKey, Environment};
///
/// let request = CreateKey {
///     permissions: Some(vec!["invoices:read".into()]),
///     environment: Some(Environment::Test),
///     idempotency_key: Some("create-billing-1".into()),
///     ..CreateKey::new("billing")
/// };
/// # let _ = request;
/// ```
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateKey {
    /// 1-100 characters.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `live` by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Must be in the future.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// A JSON object of at most 4 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimits: Option<Vec<RateLimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<Credits>,
    /// CIDRs or addresses the key may be used from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<String>>,
    /// Sent as the `Idempotency-Key` header: a retry with the same one (and
    /// the same body) answers the first key instead of making a second.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

impl CreateKey {
    /// A key named `name`, everything else default.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// `PATCH /v1/keys/{id}`: `None` leaves a field as it is; `Some(None)`
/// clears a nullable one.
///
/// ```
/// use keyledger_client::UpdateKey;
///
/// let patch = UpdateKey {
///     name: Some("billing (old)".into()),
///     description: Some(None), // cleared
///     ..UpdateKey::default()
/// };
/// # let _ = patch;
/// ```
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Option<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Option<String>>,
    /// Replaces the key's rate limits (`[]` removes them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimits: Option<Vec<RateLimit>>,
    /// Sets balance and refill; `Some(None)` removes the credit limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<Option<Credits>>,
    /// Replaces the allow-list (`[]`: any address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<String>>,
}

/// `POST /v1/keys/{id}/rotate`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RotateKey {
    /// How long the old key stays valid: 0-2592000 s, default 86400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    /// Sent as the `Idempotency-Key` header.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// `POST /v1/keys/{id}/credits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditsChange {
    pub op: CreditOp,
    pub amount: u64,
    /// Recorded in the audit log (at most 500 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl CreditsChange {
    /// Makes the balance `amount`.
    pub fn set(amount: u64) -> Self {
        Self::of(CreditOp::Set, amount)
    }

    /// Adds `amount`.
    pub fn increment(amount: u64) -> Self {
        Self::of(CreditOp::Increment, amount)
    }

    /// Takes `amount` away (not below zero).
    pub fn decrement(amount: u64) -> Self {
        Self::of(CreditOp::Decrement, amount)
    }

    /// With a reason for the audit log.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    fn of(op: CreditOp, amount: u64) -> Self {
        Self {
            op,
            amount,
            reason: None,
        }
    }
}

/// The query of `GET /v1/keys`: every filter is optional, and they combine.
///
/// ```
/// use keyledger_client::{KeyStatus, ListKeys};
///
/// let stale = ListKeys {
///     status: Some(KeyStatus::Active),
///     unused_for: Some("90d".into()),
///     ..ListKeys::default()
/// };
/// # let _ = stale;
/// ```
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<KeyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// 1-100, default 50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// A duration such as `30d`: keys unused for longer than that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unused_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub never_used: Option<bool>,
    /// A duration such as `14d`: keys that expire within it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_within: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_expiry: Option<bool>,
    /// Keys that break the tenant's current policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaks_policy: Option<bool>,
}

/// A page of keys, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    /// `None` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// An owner's shared rate limits, as set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerLimits {
    pub owner: String,
    #[serde(default)]
    pub ratelimits: Vec<RateLimit>,
}

/// An owner: its limits and the ids of the tenant's keys that name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub owner: String,
    #[serde(default)]
    pub ratelimits: Vec<RateLimit>,
    #[serde(default)]
    pub key_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_view_ignores_fields_it_does_not_know_and_a_created_key_hides_its_value() {
        let created: KeyCreated = serde_json::from_value(json!({
            "id": "key_0190", "prefix": "kl_live_AbCdEfGh", "name": "n", "description": null,
            "environment": "live", "permissions": ["a"], "status": "active",
            "created_at": "2026-01-01T00:00:00Z", "created_by": "alice",
            "updated_at": "2026-01-01T00:00:00Z", "expires_at": null, "last_used_at": null,
            "usage_count": 0, "metadata": null, "owner": null, "ratelimits": [],
            "credits": {"remaining": 5, "refill": null}, "leaked_at": null,
            "allowed_ips": ["10.0.0.0/8"], "imported": false, "a_field_of_tomorrow": {"x": 1},
            "key": "kl_live_AbCdEfGhsecretsecretsecret"
        }))
        .expect("created");
        assert_eq!(created.id, "key_0190");
        assert_eq!(created.status, KeyStatus::Active);
        assert_eq!(created.credits.as_ref().map(|c| c.remaining), Some(5));
        assert!(!format!("{created:?}").contains("secretsecret"));
        assert_eq!(created.key.expose(), "kl_live_AbCdEfGhsecretsecretsecret");
    }

    #[test]
    fn requests_send_only_what_is_set_and_null_to_clear() {
        let create = CreateKey {
            idempotency_key: Some("k".into()),
            ..CreateKey::new("n")
        };
        assert_eq!(
            serde_json::to_value(&create).expect("json"),
            json!({"name": "n"})
        );
        let patch = UpdateKey {
            owner: Some(None),
            permissions: Some(vec![]),
            ..UpdateKey::default()
        };
        assert_eq!(
            serde_json::to_value(&patch).expect("json"),
            json!({"owner": null, "permissions": []})
        );
        let filter = ListKeys {
            status: Some(KeyStatus::Inactive),
            never_used: Some(true),
            ..ListKeys::default()
        };
        assert_eq!(
            serde_json::to_value(&filter).expect("json"),
            json!({"status": "inactive", "never_used": true})
        );
    }
}
