//! `Projections`: the read side of one node. It applies batches of the global feed
//! to the SQL projections and to the in-memory verification index, and answers
//! queries. Callers serialise `apply` (the tailer holds a lock); applying the same
//! event twice is harmless.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::audit::AuditEntry;
use crate::audit::{AuditFilter, AuditPage};
use crate::checkpoint::Checkpoints;
use crate::db::ProjectionDb;
use crate::error::ProjectionError;
use crate::event::RecordedEvent;
use crate::key_list::{KeyPage, KeyRow, ListFilter};
use crate::sql::{self, Table};
use crate::verification::VerificationIndex;

/// Calls the same function of the SQLite or PostgreSQL SQL module.
macro_rules! dispatch {
    ($db:expr, $f:ident ( $($arg:expr),* )) => {
        match $db {
            ProjectionDb::Sqlite(p) => sql::sqlite::$f(p, $($arg),*).await,
            ProjectionDb::Postgres(p) => sql::postgres::$f(p, $($arg),*).await,
        }
    };
}

/// The verification index as the key list holds it.
async fn load_index(db: &ProjectionDb) -> Result<VerificationIndex, ProjectionError> {
    match db {
        ProjectionDb::Sqlite(p) => crate::index_load::load_sqlite(p).await,
        ProjectionDb::Postgres(p) => crate::index_load::load_postgres(p).await,
    }
}

/// The projections of one node.
#[derive(Debug)]
pub struct Projections {
    db: ProjectionDb,
    index: Arc<VerificationIndex>,
}

impl Projections {
    /// Opens the projections and fills the verification index from the key list.
    pub async fn open(db: ProjectionDb) -> Result<Self, ProjectionError> {
        let index = Arc::new(load_index(&db).await?);
        Ok(Self { db, index })
    }

    /// Opens the SQL projections only, with an empty index: for tools that read
    /// the views (the `audit` command) and never verify.
    pub fn unloaded(db: ProjectionDb) -> Self {
        Self {
            db,
            index: Arc::new(VerificationIndex::new()),
        }
    }

    pub fn index(&self) -> &Arc<VerificationIndex> {
        &self.index
    }

    /// Checkpoints of the SQL projections as stored.
    pub async fn checkpoints(&self) -> Result<Checkpoints, ProjectionError> {
        dispatch!(&self.db, checkpoints())
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
        dispatch!(&self.db, apply_batch(events, through))?;
        for e in events {
            self.index.apply(e);
        }
        self.index.advance_to(through);
        Ok(())
    }

    /// One page of a tenant's keys, newest first.
    pub async fn list_keys(
        &self,
        tenant: &str,
        filter: &ListFilter,
        now: DateTime<Utc>,
    ) -> Result<KeyPage, ProjectionError> {
        dispatch!(&self.db, list_keys(tenant, filter, now))
    }

    /// One key of a tenant, by id or by its display prefix when that is unique.
    pub async fn get_key(
        &self,
        tenant: &str,
        id_or_prefix: &str,
    ) -> Result<Option<KeyRow>, ProjectionError> {
        dispatch!(&self.db, get_key(tenant, id_or_prefix))
    }

    /// The key list and its checkpoint, read from one snapshot.
    pub async fn key_list_snapshot(&self) -> Result<(i64, Vec<KeyRow>), ProjectionError> {
        dispatch!(&self.db, key_list_snapshot())
    }

    /// Creates an empty scratch table for rebuilding `table`.
    pub async fn prepare_scratch(&self, table: Table, suffix: &str) -> Result<(), ProjectionError> {
        dispatch!(&self.db, prepare_scratch(table, suffix))
    }

    pub async fn load_scratch_keys(&self, rows: &[KeyRow]) -> Result<(), ProjectionError> {
        match &self.db {
            ProjectionDb::Sqlite(p) => sql::sqlite::load_scratch_keys(p, rows).await,
            ProjectionDb::Postgres(p) => sql::copy::load_scratch_keys(p, rows).await,
        }
    }

    pub async fn load_scratch_audit(&self, rows: &[AuditEntry]) -> Result<(), ProjectionError> {
        match &self.db {
            ProjectionDb::Sqlite(p) => sql::sqlite::load_scratch_audit(p, rows).await,
            ProjectionDb::Postgres(p) => sql::copy::load_scratch_audit(p, rows).await,
        }
    }

    /// Swaps a loaded scratch table in atomically, at checkpoint `position`.
    pub async fn swap_in(
        &self,
        table: Table,
        position: i64,
        suffix: &str,
    ) -> Result<(), ProjectionError> {
        dispatch!(&self.db, swap_in(table, position, suffix))
    }

    /// How many times the key list was rebuilt (nodes reload their index when it changes).
    pub async fn reload_generation(&self) -> Result<i64, ProjectionError> {
        dispatch!(&self.db, reload_generation())
    }

    /// Loads a fresh verification index from the key list and swaps it in; the
    /// caller must hold the tailer lock.
    pub async fn reload_index(&self) -> Result<(), ProjectionError> {
        let fresh = load_index(&self.db).await?;
        self.index.replace_with(fresh);
        Ok(())
    }

    /// Recorded chain hashes of the audit log, by position, after `after`.
    pub async fn audit_hashes(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, ProjectionError> {
        dispatch!(&self.db, audit_hashes(after, limit))
    }

    /// One page of the audit log.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, ProjectionError> {
        dispatch!(&self.db, audit(filter))
    }
}
