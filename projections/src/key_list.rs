//! The key list view: one row per live key of each tenant, newest first. Deleted
//! keys leave the view (and so answer 404); their history stays in the audit log.

use chrono::{DateTime, Utc};

use keyledger_domain::{AllowedIps, Ledger, RateLimit};

use crate::error::ProjectionError;
use crate::schema::{strings_json, Column, Fields, Index, Record, Table, Value, ValueOf};

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
    pub metadata: Option<serde_json::Value>,
    pub created_position: i64,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    pub owner: Option<String>,
    pub ratelimits: Vec<RateLimit>,
    /// The credit ledger as its newest event left it (as of the last flush).
    pub credits: Option<Ledger>,
    /// When the key was first reported leaked (`KeyLeakReported`), if ever.
    pub leaked_at: Option<DateTime<Utc>>,
    /// The addresses that may use the key (empty: any).
    pub allowed_ips: AllowedIps,
    /// Issued by another system and imported by its hash.
    pub imported: bool,
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
    /// Only keys not used since this time (Unix milliseconds): last used
    /// before it, or never used and created before it.
    pub unused_since_ms: Option<i64>,
    /// Only keys never used (`last_used_at` unset); `false` filters nothing.
    pub never_used: bool,
    /// Only keys that expire after the list's `now` and at or before this
    /// time (Unix milliseconds); keys already expired are not "expiring".
    pub expires_by_ms: Option<i64>,
    /// Only keys without an expiry; `false` filters nothing.
    pub no_expiry: bool,
    /// Only keys that break one of these rules (a tenant's current policy);
    /// `None` filters nothing, and rules that are all unset list no key.
    pub breaks: Option<PolicyBreaks>,
    pub limit: u32,
}

/// The key rules of a tenant's policy, as the list judges keys already
/// issued by them (`keyledger_domain::policy::Policy`): a key breaks them
/// when any one says so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyBreaks {
    /// The environments keys may be in (`live`, `test`); `None`: any.
    pub allowed_environments: Option<Vec<String>>,
    /// The permissions keys may carry, compared as exact strings (a
    /// wildcard only matches itself); `None`: any.
    pub allowed_permissions: Option<Vec<String>>,
    /// Keys must have an expiry (`require_expiry`, or a longest lifetime).
    pub expiry_required: bool,
    /// Longest lifetime, `expires_at` minus `created_at`, in milliseconds;
    /// `None`: any.
    pub max_lifetime_ms: Option<i64>,
}

/// One page of keys, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPage {
    pub keys: Vec<KeyRow>,
    /// The `created_position` to continue from, when more keys may follow.
    pub next_before: Option<i64>,
}

/// The key list's table.
pub static TABLE: Table<25> = Table {
    name: "key_list",
    scratch: "key_list_rebuild",
    checkpoint: crate::checkpoint::KEY_LIST,
    columns: [
        Column::text("id"),
        Column::text("tenant"),
        Column::text("key_hash"),
        Column::text("prefix"),
        Column::text("name"),
        Column::text("description").nullable(),
        Column::text("environment"),
        Column::text("permissions"),
        Column::text("status"),
        Column::int("created_at"),
        Column::text("created_by"),
        Column::int("updated_at"),
        Column::int("expires_at").nullable(),
        Column::int("last_used_at").nullable(),
        Column::int("usage_count"),
        Column::text("metadata").nullable(),
        Column::int("created_position"),
        Column::text("rotated_from").nullable(),
        Column::text("rotated_to").nullable(),
        Column::text("owner").nullable(),
        Column::text("ratelimits"),
        Column::text("credits").nullable(),
        Column::int("leaked_at").nullable(),
        Column::text("allowed_ips"),
        Column::int("imported"),
    ],
    primary_key: "id",
    indexes: &[
        Index {
            name: "key_list_by_tenant",
            columns: "tenant, created_position",
        },
        Index {
            name: "key_list_by_prefix",
            columns: "tenant, prefix",
        },
        Index {
            name: "key_list_by_expiry",
            columns: "expires_at, id",
        },
    ],
};

impl Record<25> for KeyRow {
    const TABLE: &'static Table<25> = &TABLE;

    fn values(&self) -> [Value; 25] {
        [
            Value::text(&self.id),
            Value::text(&self.tenant),
            Value::text(&self.key_hash),
            Value::text(&self.prefix),
            Value::text(&self.name),
            Value::Text(self.description.clone()),
            Value::text(&self.environment),
            Value::text(strings_json(&self.permissions)),
            Value::text(&self.status),
            Value::time(self.created_at),
            Value::text(&self.created_by),
            Value::time(self.updated_at),
            Value::opt_time(self.expires_at),
            Value::opt_time(self.last_used_at),
            Value::Int(Some(self.usage_count)),
            Value::Text(self.metadata.as_ref().map(|m| m.to_string())),
            Value::Int(Some(self.created_position)),
            Value::Text(self.rotated_from.clone()),
            Value::Text(self.rotated_to.clone()),
            Value::Text(self.owner.clone()),
            Value::text(ratelimits_json(&self.ratelimits)),
            Value::Text(self.credits.as_ref().map(ledger_json)),
            Value::opt_time(self.leaked_at),
            Value::text(strings_json(&self.allowed_ips.to_strings())),
            Value::Int(Some(i64::from(self.imported))),
        ]
    }

    fn from_values(values: [Value; 25]) -> Result<Self, ProjectionError> {
        let mut f = Fields::new(&TABLE, values, 0);
        Ok(Self {
            id: f.text()?,
            tenant: f.text()?,
            key_hash: f.text()?,
            prefix: f.text()?,
            name: f.text()?,
            description: f.opt_text()?,
            environment: f.text()?,
            permissions: f.json_as()?,
            status: f.text()?,
            created_at: f.time()?,
            created_by: f.text()?,
            updated_at: f.time()?,
            expires_at: f.opt_time()?,
            last_used_at: f.opt_time()?,
            usage_count: f.int()?,
            metadata: f.opt_json()?,
            created_position: f.int()?,
            rotated_from: f.opt_text()?,
            rotated_to: f.opt_text()?,
            owner: f.opt_text()?,
            ratelimits: f.json_as()?,
            credits: f.opt_json_as()?,
            leaked_at: f.opt_time()?,
            allowed_ips: f.json_as()?,
            imported: f.int()? != 0,
        })
    }
}

/// The stored text of a key's rate limits.
pub fn ratelimits_json(limits: &[RateLimit]) -> String {
    serde_json::to_string(limits).unwrap_or_else(|_| "[]".into())
}

/// The stored text of a credit ledger.
pub fn ledger_json(ledger: &Ledger) -> String {
    // Plain numbers, strings and an optional time: serialising cannot fail.
    serde_json::to_string(ledger).unwrap_or_default()
}
