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
use crate::event::RecordedEvent;
use crate::key_list::{KeyPage, KeyRow, ListFilter};
use crate::sql;
use crate::verification::VerificationIndex;
use keyledger_sql::SqlPool;

/// The projections of one node.
#[derive(Debug)]
pub struct Projections {
    db: Arc<dyn ProjectionTables>,
    index: Arc<VerificationIndex>,
}

impl Projections {
    /// Opens the projections and fills the verification index from the key list.
    pub async fn open(pool: SqlPool) -> Result<Self, ProjectionError> {
        let db = sql::tables(pool);
        let index = Arc::new(db.load_index().await?);
        Ok(Self { db, index })
    }

    /// Opens the SQL projections only, with an empty index: for tools that read
    /// the views (the `audit` command) and never verify.
    pub fn unloaded(pool: SqlPool) -> Self {
        Self {
            db: sql::tables(pool),
            index: Arc::new(VerificationIndex::new()),
        }
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
}
