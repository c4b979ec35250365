//! `Projections`: the read side of one node. It applies batches of the global feed
//! to the SQL projections and to the in-memory verification index, and answers
//! queries. Callers serialise `apply` (the tailer holds a lock); applying the same
//! event twice is harmless.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyledger_domain::TenantId;

use crate::audit::AuditEntry;
use crate::audit::{AuditFilter, AuditPage};
use crate::checkpoint::Checkpoints;
use crate::db::ProjectionTables;
use crate::db::Rebuilt;
use crate::error::ProjectionError;
use crate::event::KeyledgerEvent;
use crate::event::RecordedEvent;
use crate::key_list::{KeyPage, KeyRow, ListFilter};
use crate::policies::PolicyCache;
use crate::sql;
use crate::usage::{KeyTotal, Retention, Unit, UsageRow};
use crate::verification::VerificationIndex;
use keyledger_sql::SqlPool;

/// The projections of one node.
#[derive(Debug)]
pub struct Projections {
    db: Arc<dyn ProjectionTables>,
    index: Arc<VerificationIndex>,
    /// How long usage buckets are kept (the pruner, rebuilds and checks).
    retention: Retention,
    /// Tenants' policies as the feed last set them.
    policies: PolicyCache,
}

impl Projections {
    /// Opens the projections and fills the verification index from the key list.
    pub async fn open(pool: SqlPool) -> Result<Self, ProjectionError> {
        let db = sql::tables(pool);
        let index = Arc::new(db.load_index().await?);
        Ok(Self {
            db,
            index,
            retention: Retention::default(),
            policies: PolicyCache::default(),
        })
    }

    /// Opens the SQL projections only, with an empty index: for tools that read
    /// the views (the `audit` command) and never verify.
    pub fn unloaded(pool: SqlPool) -> Self {
        Self {
            db: sql::tables(pool),
            index: Arc::new(VerificationIndex::new()),
            retention: Retention::default(),
            policies: PolicyCache::default(),
        }
    }

    /// These projections with usage buckets kept as `retention` says.
    pub fn with_usage_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub fn usage_retention(&self) -> &Retention {
        &self.retention
    }

    /// Tenants' policies as this node last saw them.
    pub fn policies(&self) -> &PolicyCache {
        &self.policies
    }

    pub fn index(&self) -> &Arc<VerificationIndex> {
        &self.index
    }

    /// Checkpoints of the SQL projections as stored.
    pub async fn checkpoints(&self) -> Result<Checkpoints, ProjectionError> {
        self.db.checkpoints().await
    }

    /// Where the feed must be read from so that no projection misses an event.
    pub async fn resume_position(&self) -> Result<i64, ProjectionError> {
        let stored = self.checkpoints().await?;
        Ok(stored.min().min(self.index.checkpoint()))
    }

    /// Applies a batch read from the feed up to position `through` (which may lie
    /// beyond the last decoded event when the batch ended with foreign rows).
    pub async fn apply(
        &self,
        events: &[RecordedEvent],
        through: i64,
    ) -> Result<(), ProjectionError> {
        self.db.apply_batch(events, through).await?;
        for e in events {
            self.index.apply(e);
            if let KeyledgerEvent::Policy(p) = &e.event {
                self.policies.apply(p);
            }
        }
        self.index.advance_to(through);
        Ok(())
    }

    /// One page of a tenant's keys, newest first.
    pub async fn list_keys(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        now: DateTime<Utc>,
    ) -> Result<KeyPage, ProjectionError> {
        self.db.list_keys(tenant, filter, now).await
    }

    /// One key of a tenant, by id or by its display prefix when that is unique.
    pub async fn get_key(
        &self,
        tenant: &TenantId,
        id_or_prefix: &str,
    ) -> Result<Option<KeyRow>, ProjectionError> {
        self.db.get_key(tenant, id_or_prefix).await
    }

    /// Ids of a tenant's keys with `owner`, oldest first (at most 1,000).
    pub async fn keys_of_owner(
        &self,
        tenant: &TenantId,
        owner: &str,
    ) -> Result<Vec<String>, ProjectionError> {
        self.db.keys_of_owner(tenant, owner).await
    }

    /// Keys expiring in (`after`, `until_ms`], in (expiry, id) order:
    /// (id, tenant, expiry ms).
    pub async fn keys_expiring(
        &self,
        after: (i64, &str),
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, String, i64)>, ProjectionError> {
        self.db
            .keys_expiring(after.0, after.1, until_ms, limit)
            .await
    }

    /// The key list and its checkpoint, read from one snapshot.
    pub async fn key_list_snapshot(&self) -> Result<(i64, Vec<KeyRow>), ProjectionError> {
        self.db.key_list_snapshot().await
    }

    /// Creates an empty scratch table for rebuilding `table`.
    pub async fn prepare_scratch(
        &self,
        table: Rebuilt,
        suffix: &str,
    ) -> Result<(), ProjectionError> {
        self.db.prepare_scratch(table, suffix).await
    }

    pub async fn load_scratch_keys(&self, rows: &[KeyRow]) -> Result<(), ProjectionError> {
        self.db.load_scratch_keys(rows).await
    }

    pub async fn load_scratch_audit(&self, rows: &[AuditEntry]) -> Result<(), ProjectionError> {
        self.db.load_scratch_audit(rows).await
    }

    /// Swaps a loaded scratch table in atomically, at checkpoint `position`.
    pub async fn swap_in(
        &self,
        table: Rebuilt,
        position: i64,
        suffix: &str,
    ) -> Result<(), ProjectionError> {
        self.db.swap_in(table, position, suffix).await
    }

    /// How many times the key list was rebuilt (nodes reload their index when it changes).
    pub async fn reload_generation(&self) -> Result<i64, ProjectionError> {
        self.db.reload_generation().await
    }

    /// Loads a fresh verification index from the key list and swaps it in; the
    /// caller must hold the tailer lock.
    pub async fn reload_index(&self) -> Result<(), ProjectionError> {
        let fresh = self.db.load_index().await?;
        self.index.replace_with(fresh);
        Ok(())
    }

    /// Recorded chain hashes of the audit log, by position, after `after`.
    pub async fn audit_hashes(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, ProjectionError> {
        self.db.audit_hashes(after, limit).await
    }

    /// One page of the audit log.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, ProjectionError> {
        self.db.audit(filter).await
    }

    pub async fn load_scratch_usage(&self, rows: &[UsageRow]) -> Result<(), ProjectionError> {
        self.db.load_scratch_usage(rows).await
    }

    /// Buckets of one key (or of the tenant, [`crate::usage::TENANT_TOTAL`]) in
    /// `[since_ms, until_ms)`, oldest first; only the buckets that counted
    /// something are stored.
    pub async fn usage(
        &self,
        tenant: &TenantId,
        subject: &str,
        unit: Unit,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<UsageRow>, ProjectionError> {
        self.db
            .usage(tenant, subject, unit, since_ms, until_ms)
            .await
    }

    /// The tenant's most verified keys in `[since_ms, until_ms)`.
    pub async fn top_keys(
        &self,
        tenant: &TenantId,
        unit: Unit,
        since_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<KeyTotal>, ProjectionError> {
        self.db
            .top_keys(tenant, unit, since_ms, until_ms, limit)
            .await
    }

    /// Every usage bucket and the usage checkpoint, from one snapshot.
    pub async fn usage_snapshot(&self) -> Result<(i64, Vec<UsageRow>), ProjectionError> {
        self.db.usage_snapshot().await
    }

    /// Deletes the usage buckets the retention no longer keeps at `now_ms`.
    pub async fn prune_usage(&self, now_ms: i64) -> Result<(), ProjectionError> {
        self.db.prune_usage(&self.retention, now_ms).await
    }
}
