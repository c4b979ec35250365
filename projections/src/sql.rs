//! SQL of the projection tables, written once and compiled for SQLite and
//! PostgreSQL (`backend!` below). Only `$n` parameters and BIGINT/TEXT columns are
//! used, so the text is valid on both engines. Times are epoch milliseconds.

use chrono::{DateTime, Utc};
use keyledger_domain::{ApiKeyEvent, KeyUsageEvent};
use serde_json::Value;

use crate::audit::{AuditEntry, AuditFilter, AuditPage, Order};
use crate::checkpoint::{self, Checkpoints};
use crate::error::ProjectionError;
use crate::event::{KeyledgerEvent, RecordedEvent};
use crate::key_list::{KeyPage, KeyRow, ListFilter, STATUS_ACTIVE, STATUS_INACTIVE};
use crate::replay::{audit_entry, created_row};

const KEY_COLUMNS: &str = "id, tenant, key_hash, prefix, name, description, environment, \
    permissions, status, created_at, created_by, updated_at, expires_at, last_used_at, \
    usage_count, metadata, created_position, rotated_from, rotated_to";

const AUDIT_COLUMNS: &str = "position, tenant, key_id, sequence, event_type, occurred_at, \
    actor, request_id, data, client_addr, user_agent, event_hash";

/// Events are applied at least once: a row already there was applied before.
const KEY_REPLAYED: &str = " ON CONFLICT (id) DO NOTHING";
const AUDIT_REPLAYED: &str = " ON CONFLICT (position) DO NOTHING";

#[derive(sqlx::FromRow)]
struct KeyRecord {
    id: String,
    tenant: String,
    key_hash: String,
    prefix: String,
    name: String,
    description: Option<String>,
    environment: String,
    permissions: String,
    status: String,
    created_at: i64,
    created_by: String,
    updated_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    usage_count: i64,
    metadata: Option<String>,
    created_position: i64,
    rotated_from: Option<String>,
    rotated_to: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AuditRecord {
    position: i64,
    tenant: String,
    key_id: String,
    sequence: i64,
    event_type: String,
    occurred_at: i64,
    actor: Option<String>,
    request_id: Option<String>,
    data: String,
    client_addr: Option<String>,
    user_agent: Option<String>,
    event_hash: Option<String>,
}

/// A row that does not read back as what the projection wrote is an error
/// naming it, never a silent default.
fn corrupt(
    table: &'static str,
    id: &str,
    column: &'static str,
    why: impl ToString,
) -> ProjectionError {
    ProjectionError::CorruptRow {
        table,
        id: id.to_string(),
        column,
        message: why.to_string(),
    }
}

fn time(
    table: &'static str,
    id: &str,
    column: &'static str,
    ms: i64,
) -> Result<DateTime<Utc>, ProjectionError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| corrupt(table, id, column, format!("{ms} is not a time")))
}

/// Parses JSON text a projection stored (no depth limit: see
/// `keyledger_domain::json::parse_stored`).
fn stored_json(
    table: &'static str,
    id: &str,
    column: &'static str,
    text: &str,
) -> Result<Value, ProjectionError> {
    keyledger_domain::json::parse_stored(text).map_err(|e| corrupt(table, id, column, e))
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

impl KeyRecord {
    fn into_row(self) -> Result<KeyRow, ProjectionError> {
        const T: &str = "key_list";
        let id = self.id;
        let permissions = serde_json::from_str(&self.permissions)
            .map_err(|e| corrupt(T, &id, "permissions", e))?;
        let metadata = self
            .metadata
            .map(|m| stored_json(T, &id, "metadata", &m))
            .transpose()?;
        Ok(KeyRow {
            tenant: self.tenant,
            key_hash: self.key_hash,
            prefix: self.prefix,
            name: self.name,
            description: self.description,
            environment: self.environment,
            permissions,
            status: self.status,
            created_at: time(T, &id, "created_at", self.created_at)?,
            created_by: self.created_by,
            updated_at: time(T, &id, "updated_at", self.updated_at)?,
            expires_at: self
                .expires_at
                .map(|t| time(T, &id, "expires_at", t))
                .transpose()?,
            last_used_at: self
                .last_used_at
                .map(|t| time(T, &id, "last_used_at", t))
                .transpose()?,
            usage_count: self.usage_count,
            metadata,
            created_position: self.created_position,
            rotated_from: self.rotated_from,
            rotated_to: self.rotated_to,
            id,
        })
    }
}

impl AuditRecord {
    fn into_entry(self) -> Result<AuditEntry, ProjectionError> {
        const T: &str = "audit_log";
        let at = self.position.to_string();
        Ok(AuditEntry {
            occurred_at: time(T, &at, "occurred_at", self.occurred_at)?,
            data: stored_json(T, &at, "data", &self.data)?,
            position: self.position,
            tenant: self.tenant,
            key_id: self.key_id,
            sequence: self.sequence,
            event_type: self.event_type,
            actor: self.actor,
            request_id: self.request_id,
            client_addr: self.client_addr,
            user_agent: self.user_agent,
            event_hash: self.event_hash,
        })
    }
}

/// Generates the same functions for one sqlx database type.
/// Checkpoint row whose value counts rebuilds of the key list: every node reloads
/// its verification index when it changes.
pub(crate) const VERIFICATION_RELOAD: &str = "verification_reload";

/// Which SQL projection a rebuild targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    KeyList,
    AuditLog,
}

impl Table {
    pub fn live(self) -> &'static str {
        match self {
            Self::KeyList => "key_list",
            Self::AuditLog => "audit_log",
        }
    }

    fn scratch(self) -> &'static str {
        match self {
            Self::KeyList => "key_list_rebuild",
            Self::AuditLog => "audit_log_rebuild",
        }
    }

    fn checkpoint(self) -> &'static str {
        match self {
            Self::KeyList => checkpoint::KEY_LIST,
            Self::AuditLog => checkpoint::AUDIT_LOG,
        }
    }

    /// DDL of a fresh table; constraint and index names carry `suffix` because
    /// PostgreSQL index names are global and the table is renamed after loading.
    fn ddl(self, table: &str, int: &str, strict: &str, suffix: &str) -> Vec<String> {
        match self {
            Self::KeyList => vec![
                format!(
                    "CREATE TABLE {table} (id TEXT NOT NULL, tenant TEXT NOT NULL, key_hash TEXT NOT NULL, \
                     prefix TEXT NOT NULL, name TEXT NOT NULL, description TEXT, environment TEXT NOT NULL, \
                     permissions TEXT NOT NULL, status TEXT NOT NULL, created_at {int} NOT NULL, \
                     created_by TEXT NOT NULL, updated_at {int} NOT NULL, expires_at {int}, \
                     last_used_at {int}, usage_count {int} NOT NULL DEFAULT 0, metadata TEXT, \
                     created_position {int} NOT NULL, rotated_from TEXT, rotated_to TEXT, \
                     CONSTRAINT key_list_pk_{suffix} PRIMARY KEY (id)){strict}"
                ),
            ],
            Self::AuditLog => vec![format!(
                "CREATE TABLE {table} (position {int} NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL, \
                 sequence {int} NOT NULL, event_type TEXT NOT NULL, occurred_at {int} NOT NULL, actor TEXT, \
                 request_id TEXT, data TEXT NOT NULL, client_addr TEXT, user_agent TEXT, event_hash TEXT, \
                 CONSTRAINT audit_log_pk_{suffix} PRIMARY KEY (position)){strict}"
            )],
        }
    }

    /// Secondary indexes, built after the bulk load.
    fn indexes(self, table: &str, suffix: &str) -> Vec<String> {
        match self {
            Self::KeyList => vec![
                format!("CREATE INDEX key_list_by_tenant_{suffix} ON {table} (tenant, created_position)"),
                format!("CREATE INDEX key_list_by_prefix_{suffix} ON {table} (tenant, prefix)"),
            ],
            Self::AuditLog => vec![
                format!("CREATE INDEX audit_log_by_tenant_{suffix} ON {table} (tenant, position)"),
                format!("CREATE INDEX audit_log_by_key_{suffix} ON {table} (key_id, position)"),
            ],
        }
    }
}

macro_rules! backend {
    ($module:ident, $db:ty, snapshot = $snapshot:expr, begin_relaxed = $relaxed:expr, int = $int:expr, strict = $strict:expr) => {
        pub(crate) mod $module {
            use super::*;
            use sqlx::{Pool, Transaction};

            type Db = $db;

            pub(crate) async fn checkpoints(pool: &Pool<Db>) -> Result<Checkpoints, ProjectionError> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT name, position FROM projection_checkpoints")
                        .fetch_all(pool)
                        .await?;
                Ok(to_checkpoints(&rows))
            }

            /// Applies a batch to the key list and the audit log in one transaction,
            /// skipping what each has applied already, and moves both checkpoints to
            /// `through`. Returns the checkpoints now stored.
            pub(crate) async fn apply_batch(
                pool: &Pool<Db>,
                events: &[RecordedEvent],
                through: i64,
            ) -> Result<Checkpoints, ProjectionError> {
                let mut tx = match $relaxed {
                    Some(begin) => pool.begin_with(begin).await?,
                    None => pool.begin().await?,
                };
                let current = lock_checkpoints(&mut tx).await?;
                let next = apply_locked(&mut tx, events, current, through).await?;
                tx.commit().await?;
                Ok(next)
            }

            /// Locks and reads both checkpoints. Write first: it takes the write
            /// lock (SQLite) or the row locks (PostgreSQL) before reading, so two
            /// appliers never both apply the same events, and SQLite never has
            /// to upgrade a stale read snapshot.
            async fn lock_checkpoints(
                tx: &mut Transaction<'_, Db>,
            ) -> Result<Checkpoints, ProjectionError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "UPDATE projection_checkpoints SET position = position \
                     WHERE name IN ($1, $2) RETURNING name, position",
                )
                .bind(checkpoint::KEY_LIST)
                .bind(checkpoint::AUDIT_LOG)
                .fetch_all(&mut **tx)
                .await?;
                Ok(to_checkpoints(&rows))
            }

            /// Applies what each projection has not applied yet and moves both
            /// checkpoints to `through`; the checkpoints are locked.
            async fn apply_locked(
                tx: &mut Transaction<'_, Db>,
                events: &[RecordedEvent],
                current: Checkpoints,
                through: i64,
            ) -> Result<Checkpoints, ProjectionError> {
                // Statements, not events, are what a batch costs: each run of
                // creates is one multi-row INSERT, the audit rows are one; other
                // events take a statement each, in order.
                let mut created: Vec<KeyRow> = Vec::new();
                for e in events.iter().filter(|e| e.position > current.key_list) {
                    if let KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) = &e.event {
                        created.push(created_row(e, c));
                    } else {
                        insert_key_rows(tx, "key_list", &created, KEY_REPLAYED).await?;
                        created.clear();
                        apply_key_list(tx, e).await?;
                    }
                }
                insert_key_rows(tx, "key_list", &created, KEY_REPLAYED).await?;
                let audited: Vec<AuditEntry> = events
                    .iter()
                    .filter(|e| e.position > current.audit_log)
                    .map(audit_entry)
                    .collect();
                insert_audit_rows(tx, "audit_log", &audited, AUDIT_REPLAYED).await?;
                let next = Checkpoints {
                    key_list: current.key_list.max(through),
                    audit_log: current.audit_log.max(through),
                };
                sqlx::query(
                    "UPDATE projection_checkpoints SET position = \
                     CASE WHEN name = $1 THEN $2 ELSE $3 END WHERE name IN ($1, $4)",
                )
                .bind(checkpoint::KEY_LIST)
                .bind(next.key_list)
                .bind(next.audit_log)
                .bind(checkpoint::AUDIT_LOG)
                .execute(&mut **tx)
                .await?;
                Ok(next)
            }

            /// Inserts key-list rows into `table`, 500 per statement; `tail`
            /// ends each statement (a conflict rule, or nothing).
            async fn insert_key_rows(
                tx: &mut Transaction<'_, Db>,
                table: &str,
                rows: &[KeyRow],
                tail: &str,
            ) -> Result<(), ProjectionError> {
                for chunk in rows.chunks(500) {
                    let mut q =
                        sqlx::QueryBuilder::<Db>::new(format!("INSERT INTO {table} ({KEY_COLUMNS}) "));
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(r.id.clone())
                            .push_bind(r.tenant.clone())
                            .push_bind(r.key_hash.clone())
                            .push_bind(r.prefix.clone())
                            .push_bind(r.name.clone())
                            .push_bind(r.description.clone())
                            .push_bind(r.environment.clone())
                            .push_bind(json_text(&r.permissions))
                            .push_bind(r.status.clone())
                            .push_bind(r.created_at.timestamp_millis())
                            .push_bind(r.created_by.clone())
                            .push_bind(r.updated_at.timestamp_millis())
                            .push_bind(r.expires_at.map(|t| t.timestamp_millis()))
                            .push_bind(r.last_used_at.map(|t| t.timestamp_millis()))
                            .push_bind(r.usage_count)
                            .push_bind(r.metadata.as_ref().map(json_text))
                            .push_bind(r.created_position)
                            .push_bind(r.rotated_from.clone())
                            .push_bind(r.rotated_to.clone());
                    });
                    q.push(tail);
                    // Row counts vary, so each text is used once: not worth a
                    // cached prepared statement per size.
                    q.build().persistent(false).execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Inserts audit rows into `table`, 1,000 per statement; `tail` as above.
            async fn insert_audit_rows(
                tx: &mut Transaction<'_, Db>,
                table: &str,
                rows: &[AuditEntry],
                tail: &str,
            ) -> Result<(), ProjectionError> {
                for chunk in rows.chunks(1000) {
                    let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                        "INSERT INTO {table} ({AUDIT_COLUMNS}) "
                    ));
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(r.position)
                            .push_bind(r.tenant.clone())
                            .push_bind(r.key_id.clone())
                            .push_bind(r.sequence)
                            .push_bind(r.event_type.clone())
                            .push_bind(r.occurred_at.timestamp_millis())
                            .push_bind(r.actor.clone())
                            .push_bind(r.request_id.clone())
                            .push_bind(json_text(&r.data))
                            .push_bind(r.client_addr.clone())
                            .push_bind(r.user_agent.clone())
                            .push_bind(r.event_hash.clone());
                    });
                    q.push(tail);
                    q.build().persistent(false).execute(&mut **tx).await?;
                }
                Ok(())
            }

            async fn apply_key_list(
                tx: &mut Transaction<'_, Db>,
                e: &RecordedEvent,
            ) -> Result<(), ProjectionError> {
                let at = e.event.time().timestamp_millis();
                match &e.event {
                    KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) => {
                        insert_key_rows(tx, "key_list", &[created_row(e, c)], KEY_REPLAYED).await?;
                    }
                    KeyledgerEvent::Key(ApiKeyEvent::KeyUpdated(u)) => {
                        let mut sets: Vec<(&str, Option<String>, Option<i64>)> = Vec::new();
                        if let Some(n) = &u.name {
                            sets.push(("name", Some(n.clone()), None));
                        }
                        if let Some(d) = &u.description {
                            sets.push(("description", d.clone(), None));
                        }
                        if let Some(p) = &u.permissions {
                            sets.push(("permissions", Some(json_text(p)), None));
                        }
                        if let Some(m) = &u.metadata {
                            sets.push(("metadata", m.as_ref().map(json_text), None));
                        }
                        for (column, text, _) in sets {
                            sqlx::query(&format!(
                                "UPDATE key_list SET {column} = $1 WHERE id = $2"
                            ))
                            .bind(text)
                            .bind(&e.key_id)
                            .execute(&mut **tx)
                            .await?;
                        }
                        if let Some(exp) = u.expires_at {
                            sqlx::query("UPDATE key_list SET expires_at = $1 WHERE id = $2")
                                .bind(exp.map(|t| t.timestamp_millis()))
                                .bind(&e.key_id)
                                .execute(&mut **tx)
                                .await?;
                        }
                        set_updated(tx, &e.key_id, at).await?;
                    }
                    KeyledgerEvent::Key(ApiKeyEvent::KeyDeactivated(_)) => {
                        set_status(tx, &e.key_id, STATUS_INACTIVE, at).await?;
                    }
                    KeyledgerEvent::Key(ApiKeyEvent::KeyReactivated(_)) => {
                        set_status(tx, &e.key_id, STATUS_ACTIVE, at).await?;
                    }
                    KeyledgerEvent::Key(ApiKeyEvent::KeyExpirySet(x)) => {
                        sqlx::query(
                            "UPDATE key_list SET expires_at = $1, \
                             rotated_to = COALESCE($2, rotated_to), updated_at = $3 WHERE id = $4",
                        )
                        .bind(x.expires_at.timestamp_millis())
                        .bind(&x.rotated_to)
                        .bind(at)
                        .bind(&e.key_id)
                        .execute(&mut **tx)
                        .await?;
                    }
                    KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(_)) => {
                        sqlx::query("DELETE FROM key_list WHERE id = $1")
                            .bind(&e.key_id)
                            .execute(&mut **tx)
                            .await?;
                    }
                    KeyledgerEvent::Usage(KeyUsageEvent::KeyUsageRecorded(u)) => {
                        sqlx::query(
                            "UPDATE key_list SET usage_count = usage_count + $1, \
                             last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 \
                             THEN $2 ELSE last_used_at END WHERE id = $3",
                        )
                        .bind(i64::try_from(u.count).unwrap_or(i64::MAX))
                        .bind(u.last_used_at.timestamp_millis())
                        .bind(&e.key_id)
                        .execute(&mut **tx)
                        .await?;
                    }
                }
                Ok(())
            }

            async fn set_status(
                tx: &mut Transaction<'_, Db>,
                key_id: &str,
                status: &str,
                at: i64,
            ) -> Result<(), ProjectionError> {
                sqlx::query("UPDATE key_list SET status = $1, updated_at = $2 WHERE id = $3")
                    .bind(status)
                    .bind(at)
                    .bind(key_id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn set_updated(
                tx: &mut Transaction<'_, Db>,
                key_id: &str,
                at: i64,
            ) -> Result<(), ProjectionError> {
                sqlx::query("UPDATE key_list SET updated_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(key_id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            pub(crate) async fn list_keys(
                pool: &Pool<Db>,
                tenant: &str,
                filter: &ListFilter,
                now: DateTime<Utc>,
            ) -> Result<KeyPage, ProjectionError> {
                let limit = i64::from(filter.limit.max(1));
                let records: Vec<KeyRecord> = sqlx::query_as(&format!(
                    "SELECT {KEY_COLUMNS} FROM key_list \
                     WHERE tenant = $1 AND created_position < $2 \
                     AND ($3 IS NULL OR environment = $3) \
                     AND ($4 IS NULL \
                       OR ($4 = 'active' AND status = 'active' AND (expires_at IS NULL OR expires_at > $5)) \
                       OR ($4 = 'inactive' AND status = 'inactive') \
                       OR ($4 = 'expired' AND status = 'active' AND expires_at IS NOT NULL AND expires_at <= $5)) \
                     ORDER BY created_position DESC LIMIT $6"
                ))
                .bind(tenant)
                .bind(filter.before_position.unwrap_or(i64::MAX))
                .bind(&filter.environment)
                .bind(filter.status.map(|s| s.as_str()))
                .bind(now.timestamp_millis())
                .bind(limit + 1)
                .fetch_all(pool)
                .await?;
                let mut keys = records
                    .into_iter()
                    .map(KeyRecord::into_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let more = keys.len() as i64 > limit;
                keys.truncate(limit as usize);
                let next_before = if more {
                    keys.last().map(|k| k.created_position)
                } else {
                    None
                };
                Ok(KeyPage { keys, next_before })
            }

            pub(crate) async fn get_key(
                pool: &Pool<Db>,
                tenant: &str,
                id_or_prefix: &str,
            ) -> Result<Option<KeyRow>, ProjectionError> {
                // By id alone, so the plan is always the primary key (with the
                // tenant in the condition, a young table's statistics can make
                // PostgreSQL walk the tenant index instead); the tenant is
                // checked here.
                let by_id: Option<KeyRecord> = sqlx::query_as(&format!(
                    "SELECT {KEY_COLUMNS} FROM key_list WHERE id = $1"
                ))
                .bind(id_or_prefix)
                .fetch_optional(pool)
                .await?;
                if let Some(r) = by_id {
                    return (r.tenant == tenant).then(|| r.into_row()).transpose();
                }
                let by_prefix: Vec<KeyRecord> = sqlx::query_as(&format!(
                    "SELECT {KEY_COLUMNS} FROM key_list WHERE tenant = $1 AND prefix = $2 LIMIT 2"
                ))
                .bind(tenant)
                .bind(id_or_prefix)
                .fetch_all(pool)
                .await?;
                // A display prefix names a key only when it is unique in the tenant.
                match <[KeyRecord; 1]>::try_from(by_prefix) {
                    Ok([one]) => one.into_row().map(Some),
                    Err(_) => Ok(None),
                }
            }

            /// The key list and its checkpoint, read from one snapshot.
            pub(crate) async fn key_list_snapshot(
                pool: &Pool<Db>,
            ) -> Result<(i64, Vec<KeyRow>), ProjectionError> {
                let mut tx = pool.begin().await?;
                if let Some(sql) = $snapshot {
                    sqlx::query(sql).execute(&mut *tx).await?;
                }
                let cp: Option<i64> = sqlx::query_scalar(
                    "SELECT position FROM projection_checkpoints WHERE name = $1",
                )
                .bind(checkpoint::KEY_LIST)
                .fetch_optional(&mut *tx)
                .await?;
                let records: Vec<KeyRecord> =
                    sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM key_list"))
                        .fetch_all(&mut *tx)
                        .await?;
                tx.commit().await?;
                let rows = records
                    .into_iter()
                    .map(KeyRecord::into_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((cp.unwrap_or(0), rows))
            }

            /// Drops any leftover scratch table and creates an empty one.
            pub(crate) async fn prepare_scratch(
                pool: &Pool<Db>,
                table: Table,
                suffix: &str,
            ) -> Result<(), ProjectionError> {
                sqlx::query(&format!("DROP TABLE IF EXISTS {}", table.scratch()))
                    .execute(pool)
                    .await?;
                for ddl in table.ddl(table.scratch(), $int, $strict, suffix) {
                    sqlx::query(&ddl).execute(pool).await?;
                }
                Ok(())
            }

            /// Bulk-loads key rows into the scratch key list (PostgreSQL uses COPY).
            #[allow(dead_code)]
            pub(crate) async fn load_scratch_keys(
                pool: &Pool<Db>,
                rows: &[KeyRow],
            ) -> Result<(), ProjectionError> {
                let mut tx = pool.begin().await?;
                insert_key_rows(&mut tx, Table::KeyList.scratch(), rows, "").await?;
                tx.commit().await?;
                Ok(())
            }

            /// Bulk-loads audit rows into the scratch audit log (PostgreSQL uses COPY).
            #[allow(dead_code)]
            pub(crate) async fn load_scratch_audit(
                pool: &Pool<Db>,
                rows: &[AuditEntry],
            ) -> Result<(), ProjectionError> {
                let mut tx = pool.begin().await?;
                insert_audit_rows(&mut tx, Table::AuditLog.scratch(), rows, "").await?;
                tx.commit().await?;
                Ok(())
            }

            /// Indexes the scratch table and swaps it in for the live one in one
            /// transaction, setting the projection's checkpoint to `position`.
            /// Events after `position` are then applied by the normal tailer.
            pub(crate) async fn swap_in(
                pool: &Pool<Db>,
                table: Table,
                position: i64,
                suffix: &str,
            ) -> Result<(), ProjectionError> {
                for ddl in table.indexes(table.scratch(), suffix) {
                    sqlx::query(&ddl).execute(pool).await?;
                }
                let mut tx = pool.begin().await?;
                // Take the appliers' lock first (see apply_batch).
                sqlx::query("UPDATE projection_checkpoints SET position = position")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&format!("DROP TABLE {}", table.live()))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&format!(
                    "ALTER TABLE {} RENAME TO {}",
                    table.scratch(),
                    table.live()
                ))
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE projection_checkpoints SET position = $1 WHERE name = $2")
                    .bind(position)
                    .bind(table.checkpoint())
                    .execute(&mut *tx)
                    .await?;
                if table == Table::KeyList {
                    sqlx::query(
                        "INSERT INTO projection_checkpoints (name, position) VALUES ($1, 1) \
                         ON CONFLICT (name) DO UPDATE SET position = projection_checkpoints.position + 1",
                    )
                    .bind(VERIFICATION_RELOAD)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            /// The rebuild counter of the key list (see `VERIFICATION_RELOAD`).
            pub(crate) async fn reload_generation(pool: &Pool<Db>) -> Result<i64, ProjectionError> {
                let g: Option<i64> = sqlx::query_scalar(
                    "SELECT position FROM projection_checkpoints WHERE name = $1",
                )
                .bind(VERIFICATION_RELOAD)
                .fetch_optional(pool)
                .await?;
                Ok(g.unwrap_or(0))
            }

            /// (position, event_hash) of audit rows after `after`, in order.
            pub(crate) async fn audit_hashes(
                pool: &Pool<Db>,
                after: i64,
                limit: i64,
            ) -> Result<Vec<(i64, Option<String>)>, ProjectionError> {
                Ok(sqlx::query_as(
                    "SELECT position, event_hash FROM audit_log WHERE position > $1 \
                     ORDER BY position LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?)
            }

            pub(crate) async fn audit(
                pool: &Pool<Db>,
                filter: &AuditFilter,
            ) -> Result<AuditPage, ProjectionError> {
                let limit = i64::from(filter.limit.max(1));
                let (cmp, dir, start) = match filter.order {
                    Order::Asc => (">", "ASC", i64::MIN),
                    Order::Desc => ("<", "DESC", i64::MAX),
                };
                let records: Vec<AuditRecord> = sqlx::query_as(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log \
                     WHERE ($1 IS NULL OR tenant = $1) AND position {cmp} $2 \
                     AND ($3 IS NULL OR key_id = $3) AND ($4 IS NULL OR actor = $4) \
                     AND ($5 IS NULL OR event_type = $5) \
                     AND ($6 IS NULL OR occurred_at >= $6) AND ($7 IS NULL OR occurred_at < $7) \
                     ORDER BY position {dir} LIMIT $8"
                ))
                .bind(&filter.tenant)
                .bind(filter.after_position.unwrap_or(start))
                .bind(&filter.key_id)
                .bind(&filter.actor)
                .bind(&filter.event_type)
                .bind(filter.since.map(|t| t.timestamp_millis()))
                .bind(filter.until.map(|t| t.timestamp_millis()))
                .bind(limit + 1)
                .fetch_all(pool)
                .await?;
                let mut events = records
                    .into_iter()
                    .map(AuditRecord::into_entry)
                    .collect::<Result<Vec<_>, _>>()?;
                let more = events.len() as i64 > limit;
                events.truncate(limit as usize);
                let next_position = if more { events.last().map(|e| e.position) } else { None };
                Ok(AuditPage { events, next_position })
            }
        }
    };
}

fn to_checkpoints(rows: &[(String, i64)]) -> Checkpoints {
    let mut cps = Checkpoints::default();
    for (name, pos) in rows {
        match name.as_str() {
            checkpoint::KEY_LIST => cps.key_list = *pos,
            checkpoint::AUDIT_LOG => cps.audit_log = *pos,
            _ => {}
        }
    }
    cps
}

backend!(
    sqlite,
    sqlx::Sqlite,
    snapshot = None::<&str>,
    begin_relaxed = None::<&str>,
    int = "INTEGER",
    strict = " STRICT"
);
backend!(
    postgres,
    sqlx::Postgres,
    snapshot = Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
    // A projection write need not wait for its WAL flush: if PostgreSQL loses
    // it in a crash, the checkpoint written with it is lost too, and the
    // tailer applies those events again from the (durable) event store. This
    // takes one fsync off every command's path. (Sent with BEGIN: one round
    // trip for both.)
    begin_relaxed = Some("BEGIN; SET LOCAL synchronous_commit = off"),
    int = "BIGINT",
    strict = ""
);

/// Bulk loads through `COPY … FROM STDIN` (PostgreSQL only): several times faster
/// than multi-row INSERTs for rebuilds.
pub(crate) mod copy {
    use super::*;
    use sqlx::PgPool;

    /// Appends one field in COPY text format.
    fn field(out: &mut String, value: Option<&str>) {
        match value {
            None => out.push_str("\\N"),
            Some(v) => {
                for c in v.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
        }
    }

    fn row(out: &mut String, fields: &[Option<&str>]) {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            field(out, *f);
        }
        out.push('\n');
    }

    async fn copy(
        pool: &PgPool,
        table: &str,
        columns: &str,
        data: String,
    ) -> Result<(), ProjectionError> {
        let mut conn = pool.acquire().await?;
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await?;
        copy.send(data.into_bytes()).await?;
        copy.finish().await?;
        Ok(())
    }

    pub(crate) async fn load_scratch_audit(
        pool: &PgPool,
        rows: &[AuditEntry],
    ) -> Result<(), ProjectionError> {
        let mut data = String::with_capacity(rows.len() * 400);
        for r in rows {
            let (position, sequence, occurred) = (
                r.position.to_string(),
                r.sequence.to_string(),
                r.occurred_at.timestamp_millis().to_string(),
            );
            let json = json_text(&r.data);
            row(
                &mut data,
                &[
                    Some(&position),
                    Some(&r.tenant),
                    Some(&r.key_id),
                    Some(&sequence),
                    Some(&r.event_type),
                    Some(&occurred),
                    r.actor.as_deref(),
                    r.request_id.as_deref(),
                    Some(&json),
                    r.client_addr.as_deref(),
                    r.user_agent.as_deref(),
                    r.event_hash.as_deref(),
                ],
            );
        }
        copy(pool, Table::AuditLog.scratch(), AUDIT_COLUMNS, data).await
    }

    pub(crate) async fn load_scratch_keys(
        pool: &PgPool,
        rows: &[KeyRow],
    ) -> Result<(), ProjectionError> {
        let mut data = String::with_capacity(rows.len() * 400);
        for r in rows {
            let permissions = json_text(&r.permissions);
            let created = r.created_at.timestamp_millis().to_string();
            let updated = r.updated_at.timestamp_millis().to_string();
            let expires = r.expires_at.map(|t| t.timestamp_millis().to_string());
            let used = r.last_used_at.map(|t| t.timestamp_millis().to_string());
            let count = r.usage_count.to_string();
            let metadata = r.metadata.as_ref().map(json_text);
            let position = r.created_position.to_string();
            row(
                &mut data,
                &[
                    Some(&r.id),
                    Some(&r.tenant),
                    Some(&r.key_hash),
                    Some(&r.prefix),
                    Some(&r.name),
                    r.description.as_deref(),
                    Some(&r.environment),
                    Some(&permissions),
                    Some(&r.status),
                    Some(&created),
                    Some(&r.created_by),
                    Some(&updated),
                    expires.as_deref(),
                    used.as_deref(),
                    Some(&count),
                    metadata.as_deref(),
                    Some(&position),
                    r.rotated_from.as_deref(),
                    r.rotated_to.as_deref(),
                ],
            );
        }
        copy(pool, Table::KeyList.scratch(), KEY_COLUMNS, data).await
    }
}
