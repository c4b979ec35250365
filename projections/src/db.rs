//! The seam between the projections and the database that holds their
//! tables: [`ProjectionTables`], implemented once, generically, by
//! `sql::SqlTables` for each SQL engine (`sql::tables` picks it).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{AuditEntry, AuditFilter, AuditPage};
use crate::checkpoint::Checkpoints;
use crate::error::ProjectionError;
use crate::event::RecordedEvent;
use crate::key_list::{KeyPage, KeyRow, ListFilter};
use keyledger_domain::TenantId;
use keyledger_sql::Engine;

use crate::usage::{KeyTotal, Retention, Unit, UsageRow};
use crate::verification::VerificationIndex;
use crate::{audit, key_list, usage};

/// Which SQL projection a rebuild targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuilt {
    KeyList,
    AuditLog,
    Usage,
}

impl Rebuilt {
    pub fn live(self) -> &'static str {
        match self {
            Self::KeyList => key_list::TABLE.name,
            Self::AuditLog => audit::TABLE.name,
            Self::Usage => usage::TABLE.name,
        }
    }

    pub(crate) fn scratch(self) -> &'static str {
        match self {
            Self::KeyList => key_list::TABLE.scratch,
            Self::AuditLog => audit::TABLE.scratch,
            Self::Usage => usage::TABLE.scratch,
        }
    }

    pub(crate) fn checkpoint(self) -> &'static str {
        match self {
            Self::KeyList => key_list::TABLE.checkpoint,
            Self::AuditLog => audit::TABLE.checkpoint,
            Self::Usage => usage::TABLE.checkpoint,
        }
    }

    pub(crate) fn create<DB: Engine>(self, suffix: &str) -> String {
        match self {
            Self::KeyList => key_list::TABLE.create::<DB>(self.scratch(), suffix),
            Self::AuditLog => audit::TABLE.create::<DB>(self.scratch(), suffix),
            Self::Usage => usage::TABLE.create::<DB>(self.scratch(), suffix),
        }
    }

    pub(crate) fn create_indexes(self, suffix: &str) -> Vec<String> {
        match self {
            Self::KeyList => key_list::TABLE.create_indexes(self.scratch(), suffix),
            Self::AuditLog => audit::TABLE.create_indexes(self.scratch(), suffix),
            Self::Usage => usage::TABLE.create_indexes(self.scratch(), suffix),
        }
    }
}

/// The SQL projections' tables and checkpoints in one database.
#[async_trait]
pub trait ProjectionTables: Send + Sync + std::fmt::Debug {
    /// Checkpoints of the SQL projections as stored.
    async fn checkpoints(&self) -> Result<Checkpoints, ProjectionError>;

    /// Applies a batch to the key list and the audit log in one transaction,
    /// skipping what each has applied already, and moves both checkpoints to
    /// `through`. Returns the checkpoints now stored.
    async fn apply_batch(
        &self,
        events: &[RecordedEvent],
        through: i64,
    ) -> Result<Checkpoints, ProjectionError>;

    /// One page of a tenant's keys, newest first.
    async fn list_keys(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        now: DateTime<Utc>,
    ) -> Result<KeyPage, ProjectionError>;

    /// One key of a tenant, by id or by its display prefix when that is unique.
    async fn get_key(
        &self,
        tenant: &TenantId,
        id_or_prefix: &str,
    ) -> Result<Option<KeyRow>, ProjectionError>;

    /// Ids of a tenant's keys with `owner`, oldest first (at most 1,000).
    async fn keys_of_owner(
        &self,
        tenant: &TenantId,
        owner: &str,
    ) -> Result<Vec<String>, ProjectionError>;

    /// Keys expiring after (`after_ms`, `after_id`) and at or before
    /// `until_ms`, in (expiry, id) order, at most `limit`: (id, tenant, expiry ms).
    async fn keys_expiring(
        &self,
        after_ms: i64,
        after_id: &str,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, String, i64)>, ProjectionError>;

    /// The key list and its checkpoint, read from one snapshot.
    async fn key_list_snapshot(&self) -> Result<(i64, Vec<KeyRow>), ProjectionError>;

    /// Drops any leftover scratch table and creates an empty one.
    async fn prepare_scratch(&self, table: Rebuilt, suffix: &str) -> Result<(), ProjectionError>;

    /// Bulk-loads rows into the scratch key list.
    async fn load_scratch_keys(&self, rows: &[KeyRow]) -> Result<(), ProjectionError>;

    /// Bulk-loads rows into the scratch audit log.
    async fn load_scratch_audit(&self, rows: &[AuditEntry]) -> Result<(), ProjectionError>;

    /// Bulk-loads rows into the scratch usage buckets.
    async fn load_scratch_usage(&self, rows: &[UsageRow]) -> Result<(), ProjectionError>;

    /// Buckets of `unit` of one subject (a key id, or the tenant's total)
    /// starting in `[since_ms, until_ms)`, oldest first.
    async fn usage(
        &self,
        tenant: &TenantId,
        subject: &str,
        unit: Unit,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<UsageRow>, ProjectionError>;

    /// The tenant's keys with the most verifications in buckets of `unit`
    /// starting in `[since_ms, until_ms)`, most first, at most `limit`.
    async fn top_keys(
        &self,
        tenant: &TenantId,
        unit: Unit,
        since_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<KeyTotal>, ProjectionError>;

    /// Every bucket and the usage checkpoint, read from one snapshot.
    async fn usage_snapshot(&self) -> Result<(i64, Vec<UsageRow>), ProjectionError>;

    /// Deletes the buckets `retention` no longer keeps at `now_ms`.
    async fn prune_usage(&self, retention: &Retention, now_ms: i64) -> Result<(), ProjectionError>;

    /// Indexes the scratch table and swaps it in for the live one in one
    /// transaction, setting the projection's checkpoint to `position`.
    /// Events after `position` are then applied by the normal tailer.
    async fn swap_in(
        &self,
        table: Rebuilt,
        position: i64,
        suffix: &str,
    ) -> Result<(), ProjectionError>;

    /// The rebuild counter of the key list (see `sql::VERIFICATION_RELOAD`).
    async fn reload_generation(&self) -> Result<i64, ProjectionError>;

    /// (position, event_hash) of audit rows after `after`, in order.
    async fn audit_hashes(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, ProjectionError>;

    /// One page of the audit log.
    async fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, ProjectionError>;

    /// The verification index as the key list holds it, at the key list's
    /// checkpoint (rows and checkpoint from one snapshot).
    async fn load_index(&self) -> Result<VerificationIndex, ProjectionError>;
}
