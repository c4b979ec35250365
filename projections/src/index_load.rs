//! Loading the verification index from the key list at start-up (and after a
//! rebuild), at a million rows: each row's text is borrowed, and a tenant or a
//! permission set is built once and shared by every key that has it.
//!
//! On SQLite the rows are read with rusqlite on a blocking thread: sqlx's
//! SQLite driver hands every row from its worker thread to the async task,
//! which made a million-row read take 5 to 10 s on 2 cores (thread wake-ups
//! and a copy of every value, BENCHMARKS.md); read in place it takes well
//! under a second. PostgreSQL rows arrive in bulk over the wire and stay on
//! sqlx.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::DateTime;
use keyledger_domain::{KeyHash, Permissions};
use sqlx::{PgPool, Row, SqlitePool};

use crate::checkpoint;
use crate::error::ProjectionError;
use crate::key_list::STATUS_ACTIVE;
use crate::verification::{IndexedKey, VerificationIndex};

/// Columns the index needs, in the order [`IndexFields`] lists them.
pub(crate) const INDEX_COLUMNS: &str =
    "id, tenant, key_hash, name, environment, permissions, status, expires_at, prefix";

/// One key-list row, borrowed from the database row.
pub(crate) struct IndexFields<'r> {
    pub id: &'r str,
    pub tenant: &'r str,
    pub key_hash: &'r str,
    pub name: &'r str,
    pub environment: &'r str,
    pub permissions: &'r str,
    pub status: &'r str,
    pub expires_at: Option<i64>,
    pub prefix: &'r str,
}

#[derive(Default)]
pub(crate) struct IndexLoader {
    tenants: HashMap<String, Arc<str>>,
    permissions: HashMap<String, Arc<Permissions>>,
}

impl IndexLoader {
    /// Adds the row's key to `index`; an unreadable row is skipped with a warning.
    pub(crate) fn add(&mut self, index: &VerificationIndex, row: IndexFields<'_>) {
        match self.entry(row) {
            Some((hash, key)) => index.load_row(hash, key),
            None => tracing::warn!("skipping an unreadable key_list row"),
        }
    }

    fn entry(&mut self, row: IndexFields<'_>) -> Option<(KeyHash, IndexedKey)> {
        let hash = KeyHash::from_hex(row.key_hash).ok()?;
        let environment = row.environment.parse().ok()?;
        let tenant = match self.tenants.get(row.tenant) {
            Some(t) => t.clone(),
            None => self
                .tenants
                .entry(row.tenant.to_owned())
                .or_insert_with(|| row.tenant.into())
                .clone(),
        };
        let permissions = match self.permissions.get(row.permissions) {
            Some(p) => p.clone(),
            None => {
                let parsed = serde_json::from_str(row.permissions)
                    .ok()
                    .and_then(|list| Permissions::parse(list).ok())?;
                self.permissions
                    .entry(row.permissions.to_owned())
                    .or_insert_with(|| Arc::new(parsed))
                    .clone()
            }
        };
        let key = IndexedKey::from_shared(
            row.id,
            row.prefix,
            tenant,
            row.name,
            environment,
            permissions,
            row.expires_at
                .map(|ms| DateTime::from_timestamp_millis(ms).unwrap_or_default()),
            row.status == STATUS_ACTIVE,
        );
        Some((hash, key))
    }
}

/// Builds the index from the PostgreSQL key list, rows and checkpoint from
/// one snapshot; rows are streamed into a map sized for them.
pub(crate) async fn load_postgres(pool: &PgPool) -> Result<VerificationIndex, ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let cp: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
            .bind(checkpoint::KEY_LIST)
            .fetch_optional(&mut *tx)
            .await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_list")
        .fetch_one(&mut *tx)
        .await?;
    let index = VerificationIndex::with_capacity(usize::try_from(n).unwrap_or(0));
    {
        let sql = format!("SELECT {INDEX_COLUMNS} FROM key_list");
        let mut rows = sqlx::query(&sql).fetch(&mut *tx);
        let mut loader = IndexLoader::default();
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
            let fields = IndexFields {
                id: row.try_get(0)?,
                tenant: row.try_get(1)?,
                key_hash: row.try_get(2)?,
                name: row.try_get(3)?,
                environment: row.try_get(4)?,
                permissions: row.try_get(5)?,
                status: row.try_get(6)?,
                expires_at: row.try_get(7)?,
                prefix: row.try_get(8)?,
            };
            loader.add(&index, fields);
        }
    }
    tx.commit().await?;
    index.set_checkpoint(cp.unwrap_or(0));
    Ok(index)
}

/// Builds the index from the SQLite key list, rows and checkpoint from one
/// snapshot (a read transaction over the WAL).
pub(crate) async fn load_sqlite(pool: &SqlitePool) -> Result<VerificationIndex, ProjectionError> {
    let path = pool.connect_options().get_filename().to_path_buf();
    tokio::task::spawn_blocking(move || read_sqlite(&path))
        .await
        .map_err(|e| ProjectionError::Load(e.to_string()))?
        .map_err(|e| ProjectionError::Load(e.to_string()))
}

fn read_sqlite(path: &Path) -> Result<VerificationIndex, rusqlite::Error> {
    use rusqlite::{OpenFlags, OptionalExtension};
    let mut conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let tx = conn.transaction()?;
    let cp: Option<i64> = tx
        .query_row(
            "SELECT position FROM projection_checkpoints WHERE name = ?1",
            [checkpoint::KEY_LIST],
            |r| r.get(0),
        )
        .optional()?;
    let n: i64 = tx.query_row("SELECT COUNT(*) FROM key_list", [], |r| r.get(0))?;
    let index = VerificationIndex::with_capacity(usize::try_from(n).unwrap_or(0));
    {
        let mut stmt = tx.prepare(&format!("SELECT {INDEX_COLUMNS} FROM key_list"))?;
        let mut rows = stmt.query([])?;
        let mut loader = IndexLoader::default();
        while let Some(row) = rows.next()? {
            let text = |i: usize| -> Result<&str, rusqlite::Error> {
                row.get_ref(i)?.as_str().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            };
            loader.add(
                &index,
                IndexFields {
                    id: text(0)?,
                    tenant: text(1)?,
                    key_hash: text(2)?,
                    name: text(3)?,
                    environment: text(4)?,
                    permissions: text(5)?,
                    status: text(6)?,
                    expires_at: row.get(7)?,
                    prefix: text(8)?,
                },
            );
        }
    }
    tx.commit()?;
    index.set_checkpoint(cp.unwrap_or(0));
    Ok(index)
}
