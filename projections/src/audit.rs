//! The audit log: every event of every key, per tenant, in global order, with who
//! did it and the event's fields (never the key hash).

use chrono::{DateTime, Utc};
use serde_json::Value;

/// One audit entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub position: i64,
    pub tenant: String,
    pub key_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub actor: Option<String>,
    pub request_id: Option<String>,
    pub data: Value,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    /// Chain hash of the event when it was projected (None for rows projected
    /// by builds before tamper evidence).
    pub event_hash: Option<String>,
}

/// Reading direction of the audit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// Filters and page of an audit query. `tenant: None` reads every tenant (CLI only).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub actor: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Continue after (asc) or before (desc) this position.
    pub after_position: Option<i64>,
    pub order: Order,
    pub limit: u32,
}

/// One page of audit entries.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub events: Vec<AuditEntry>,
    pub next_position: Option<i64>,
}
