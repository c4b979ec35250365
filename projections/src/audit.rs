//! The audit log: every event of every key, per tenant, in global order, with who
//! did it and the event's fields (never the key hash).

use chrono::{DateTime, Utc};

use crate::error::ProjectionError;
use crate::schema::{Column, Fields, Index, Record, Table, Value, ValueOf};

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
    pub data: serde_json::Value,
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

/// The audit log's table.
pub static TABLE: Table<12> = Table {
    name: "audit_log",
    scratch: "audit_log_rebuild",
    checkpoint: crate::checkpoint::AUDIT_LOG,
    columns: [
        Column::int("position"),
        Column::text("tenant"),
        Column::text("key_id"),
        Column::int("sequence"),
        Column::text("event_type"),
        Column::int("occurred_at"),
        Column::text("actor").nullable(),
        Column::text("request_id").nullable(),
        Column::text("data"),
        Column::text("client_addr").nullable(),
        Column::text("user_agent").nullable(),
        Column::text("event_hash").nullable(),
    ],
    primary_key: "position",
    indexes: &[
        Index {
            name: "audit_log_by_tenant",
            columns: "tenant, position",
        },
        Index {
            name: "audit_log_by_key",
            columns: "key_id, position",
        },
    ],
};

impl Record<12> for AuditEntry {
    const TABLE: &'static Table<12> = &TABLE;

    fn values(&self) -> [Value; 12] {
        [
            Value::Int(Some(self.position)),
            Value::text(&self.tenant),
            Value::text(&self.key_id),
            Value::Int(Some(self.sequence)),
            Value::text(&self.event_type),
            Value::time(self.occurred_at),
            Value::Text(self.actor.clone()),
            Value::Text(self.request_id.clone()),
            Value::text(self.data.to_string()),
            Value::Text(self.client_addr.clone()),
            Value::Text(self.user_agent.clone()),
            Value::Text(self.event_hash.clone()),
        ]
    }

    fn from_values(values: [Value; 12]) -> Result<Self, ProjectionError> {
        let mut f = Fields::new(&TABLE, values, 0);
        Ok(Self {
            position: f.int()?,
            tenant: f.text()?,
            key_id: f.text()?,
            sequence: f.int()?,
            event_type: f.text()?,
            occurred_at: f.time()?,
            actor: f.opt_text()?,
            request_id: f.opt_text()?,
            data: f.json()?,
            client_addr: f.opt_text()?,
            user_agent: f.opt_text()?,
            event_hash: f.opt_text()?,
        })
    }
}
