//! The SQL projections (key list, audit log, their checkpoints) on either
//! engine: one implementation generic over [`keyledger_sql::Engine`]. Only
//! `$n` parameters and TEXT/64-bit integer columns are used, so each
//! statement's text is the same on both, but for the one place JSON arrays are
//! read in SQL (the key list's `breaks_policy` filter), which asks the engine
//! for its spelling ([`keyledger_sql::Engine::json_strings`]); the tables'
//! columns come from their definitions ([`crate::key_list::TABLE`],
//! [`crate::audit::TABLE`]).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyledger_domain::{ApiKeyEvent, KeyUsageEvent, TenantId};
use keyledger_sql::{Engine, SqlPool};
use sqlx::database::HasStatementCache;
use sqlx::{Database, Pool, Transaction};

use crate::audit::{self, AuditEntry, AuditFilter, AuditPage, Order};
use crate::checkpoint::{self, Checkpoints};
use crate::db::{ProjectionTables, Rebuilt};
use crate::error::ProjectionError;
use crate::event::{KeyledgerEvent, RecordedEvent};
use crate::index_load::IndexSource;
use crate::key_list::{self, KeyPage, KeyRow, ListFilter, STATUS_ACTIVE, STATUS_INACTIVE};
use crate::replay::{audit_entry, created_row};
use crate::schema::{read_values, strings_json, Record, Table, Value};
use crate::usage::{self, KeyTotal, Retention, Unit, UsageFold, UsageRow};
use crate::verification::VerificationIndex;

/// The projection tables in the database behind `pool`: the one place the
/// engine is chosen; everything after is generic over it.
pub(crate) fn tables(pool: SqlPool) -> Arc<dyn ProjectionTables> {
    match pool {
        SqlPool::Sqlite(p) => Arc::new(SqlTables::new(p)),
        SqlPool::Postgres(p) => Arc::new(SqlTables::new(p)),
    }
}

/// Checkpoint row whose value counts rebuilds of the key list: every node reloads
/// its verification index when it changes.
pub(crate) const VERIFICATION_RELOAD: &str = "verification_reload";

/// Events are applied at least once: a row already there was applied before.
fn replayed<const N: usize>(table: &Table<N>) -> String {
    format!(" ON CONFLICT ({}) DO NOTHING", table.primary_key)
}

/// `INSERT INTO table (columns) VALUES ($1, …), …` for `rows` rows, then `tail`.
pub(crate) fn insert_statement<DB: Engine, const N: usize>(
    table: &str,
    def: &Table<N>,
    rows: usize,
    tail: &str,
) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", def.column_list());
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..N {
            n += 1;
            if column > 0 {
                sql.push_str(", ");
            }
            DB::push_param(&mut sql, n);
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// Bulk loads of a rebuild's rows: multi-row INSERTs, or what the engine has
/// that is faster (PostgreSQL's `COPY`, see `copy.rs`).
#[async_trait]
pub(crate) trait BulkLoad: Engine {
    async fn load<const N: usize, R: Record<N> + Sync>(
        pool: &Pool<Self>,
        table: &str,
        rows: &[R],
    ) -> Result<(), ProjectionError>;
}

/// The SQL projections in one database.
#[derive(Debug)]
pub(crate) struct SqlTables<DB: Database> {
    pool: Pool<DB>,
}

impl<DB: Database> SqlTables<DB> {
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

fn to_checkpoints(rows: &[(String, i64)]) -> Checkpoints {
    let mut cps = Checkpoints::default();
    for (name, pos) in rows {
        match name.as_str() {
            checkpoint::KEY_LIST => cps.key_list = *pos,
            checkpoint::AUDIT_LOG => cps.audit_log = *pos,
            checkpoint::USAGE => cps.usage = *pos,
            _ => {}
        }
    }
    cps
}

#[async_trait]
impl<DB> ProjectionTables for SqlTables<DB>
where
    DB: Engine + BulkLoad + IndexSource + HasStatementCache,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    str: sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB>,
    String: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB>,
    (String, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
    (i64, Option<String>): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn checkpoints(&self) -> Result<Checkpoints, ProjectionError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, position FROM projection_checkpoints")
                .fetch_all(&self.pool)
                .await?;
        Ok(to_checkpoints(&rows))
    }

    async fn apply_batch(
        &self,
        events: &[RecordedEvent],
        through: i64,
    ) -> Result<Checkpoints, ProjectionError> {
        let mut tx = match DB::BEGIN_RELAXED {
            Some(begin) => self.pool.begin_with(begin).await?,
            None => self.pool.begin().await?,
        };
        // Write first: it takes the write lock (SQLite) or the row locks
        // (PostgreSQL) before reading, so two appliers never both apply the
        // same events, and SQLite never has to upgrade a stale read snapshot.
        let locked: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE projection_checkpoints SET position = position \
             WHERE name IN ($1, $2, $3) RETURNING name, position",
        )
        .bind(checkpoint::KEY_LIST)
        .bind(checkpoint::AUDIT_LOG)
        .bind(checkpoint::USAGE)
        .fetch_all(&mut *tx)
        .await?;
        let current = to_checkpoints(&locked);
        let next = Self::apply_locked(&mut tx, events, current, through).await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn list_keys(
        &self,
        tenant: &TenantId,
        filter: &ListFilter,
        now: DateTime<Utc>,
    ) -> Result<KeyPage, ProjectionError> {
        let limit = i64::from(filter.limit.max(1));
        // Keys that break the tenant's policy ($11 = 1), by any rule: an
        // environment not listed ($12), a permission not in the catalogue
        // ($13, exact strings), no expiry where one is required ($14), a
        // lifetime longer than the longest ($15, milliseconds). The lists are
        // bound as JSON arrays; unset rules are NULL or 0, so with none set
        // no key breaks them. Only the JSON-array reading differs by engine.
        let breaks = filter.breaks.as_ref();
        let allowed_environments = breaks
            .and_then(|b| b.allowed_environments.as_deref())
            .map(strings_json);
        let allowed_permissions = breaks
            .and_then(|b| b.allowed_permissions.as_deref())
            .map(strings_json);
        let sql = format!(
            "WHERE tenant = $1 AND created_position < $2 \
             AND ($3 IS NULL OR environment = $3) \
             AND ($4 IS NULL \
               OR ($4 = 'active' AND status = 'active' AND (expires_at IS NULL OR expires_at > $5)) \
               OR ($4 = 'inactive' AND status = 'inactive') \
               OR ($4 = 'expired' AND status = 'active' AND expires_at IS NOT NULL AND expires_at <= $5)) \
             AND ($7 IS NULL OR COALESCE(last_used_at, created_at) < $7) \
             AND ($8 = 0 OR last_used_at IS NULL) \
             AND ($9 IS NULL OR (expires_at > $5 AND expires_at <= $9)) \
             AND ($10 = 0 OR expires_at IS NULL) \
             AND ($11 = 0 \
               OR ($12 IS NOT NULL AND environment NOT IN \
                 (SELECT allowed_environment.value FROM {allowed_environments})) \
               OR ($13 IS NOT NULL AND EXISTS (SELECT 1 FROM {granted} \
                 WHERE granted.value NOT IN (SELECT allowed.value FROM {allowed}))) \
               OR ($14 = 1 AND expires_at IS NULL) \
               OR ($15 IS NOT NULL AND expires_at - created_at > $15)) \
             ORDER BY created_position DESC LIMIT $6",
            allowed_environments = DB::json_strings("$12", "allowed_environment"),
            granted = DB::json_strings("key_list.permissions", "granted"),
            allowed = DB::json_strings("$13", "allowed"),
        );
        let mut keys: Vec<KeyRow> = Self::select(&self.pool, &sql, |q| {
            // The flags are bound as integers: a boolean parameter is
            // typed differently by SQLite and PostgreSQL.
            q.bind(tenant.to_string())
                .bind(filter.before_position.unwrap_or(i64::MAX))
                .bind(filter.environment.clone())
                .bind(filter.status.map(|s| s.as_str().to_string()))
                .bind(now.timestamp_millis())
                .bind(limit + 1)
                .bind(filter.unused_since_ms)
                .bind(i64::from(filter.never_used))
                .bind(filter.expires_by_ms)
                .bind(i64::from(filter.no_expiry))
                .bind(i64::from(breaks.is_some()))
                .bind(allowed_environments)
                .bind(allowed_permissions)
                .bind(i64::from(breaks.is_some_and(|b| b.expiry_required)))
                .bind(breaks.and_then(|b| b.max_lifetime_ms))
        })
        .await?;
        let more = keys.len() as i64 > limit;
        keys.truncate(limit as usize);
        let next_before = if more {
            keys.last().map(|k| k.created_position)
        } else {
            None
        };
        Ok(KeyPage { keys, next_before })
    }

    async fn get_key(
        &self,
        tenant: &TenantId,
        id_or_prefix: &str,
    ) -> Result<Option<KeyRow>, ProjectionError> {
        // By id alone, so the plan is always the primary key (with the
        // tenant in the condition, a young table's statistics can make
        // PostgreSQL walk the tenant index instead); the tenant is checked
        // here.
        let by_id: Vec<KeyRow> = Self::select(&self.pool, "WHERE id = $1", |q| {
            q.bind(id_or_prefix.to_string())
        })
        .await?;
        if let Some(row) = by_id.into_iter().next() {
            return Ok((row.tenant == tenant.as_str()).then_some(row));
        }
        let by_prefix: Vec<KeyRow> = Self::select(
            &self.pool,
            "WHERE tenant = $1 AND prefix = $2 LIMIT 2",
            |q| q.bind(tenant.to_string()).bind(id_or_prefix.to_string()),
        )
        .await?;
        // A display prefix names a key only when it is unique in the tenant.
        match <[KeyRow; 1]>::try_from(by_prefix) {
            Ok([one]) => Ok(Some(one)),
            Err(_) => Ok(None),
        }
    }

    async fn keys_of_owner(
        &self,
        tenant: &TenantId,
        owner: &str,
    ) -> Result<Vec<String>, ProjectionError> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM key_list WHERE tenant = $1 AND owner = $2 \
             ORDER BY created_position LIMIT 1000",
        )
        .bind(tenant.to_string())
        .bind(owner.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn keys_expiring(
        &self,
        after_ms: i64,
        after_id: &str,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, String, i64)>, ProjectionError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, tenant, expires_at FROM key_list \
             WHERE (expires_at > $1 OR (expires_at = $1 AND id > $2)) AND expires_at <= $3 \
             ORDER BY expires_at, id LIMIT $4",
        )
        .bind(after_ms)
        .bind(after_id.to_string())
        .bind(until_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn key_list_snapshot(&self) -> Result<(i64, Vec<KeyRow>), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        if let Some(sql) = DB::SNAPSHOT {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        let cp: Option<(String, i64)> =
            sqlx::query_as("SELECT name, position FROM projection_checkpoints WHERE name = $1")
                .bind(checkpoint::KEY_LIST)
                .fetch_optional(&mut *tx)
                .await?;
        let rows: Vec<KeyRow> = Self::select(&mut *tx, "", |q| q).await?;
        tx.commit().await?;
        Ok((cp.map_or(0, |(_, p)| p), rows))
    }

    async fn prepare_scratch(&self, table: Rebuilt, suffix: &str) -> Result<(), ProjectionError> {
        sqlx::query(&format!("DROP TABLE IF EXISTS {}", table.scratch()))
            .execute(&self.pool)
            .await?;
        sqlx::query(&table.create::<DB>(suffix))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn load_scratch_keys(&self, rows: &[KeyRow]) -> Result<(), ProjectionError> {
        DB::load(&self.pool, Rebuilt::KeyList.scratch(), rows).await
    }

    async fn load_scratch_audit(&self, rows: &[AuditEntry]) -> Result<(), ProjectionError> {
        DB::load(&self.pool, Rebuilt::AuditLog.scratch(), rows).await
    }

    async fn load_scratch_usage(&self, rows: &[UsageRow]) -> Result<(), ProjectionError> {
        DB::load(&self.pool, Rebuilt::Usage.scratch(), rows).await
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        subject: &str,
        unit: Unit,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<UsageRow>, ProjectionError> {
        Self::select(
            &self.pool,
            "WHERE tenant = $1 AND subject = $2 AND unit = $3 \
             AND start_ms >= $4 AND start_ms < $5 ORDER BY start_ms",
            |q| {
                q.bind(tenant.to_string())
                    .bind(subject.to_string())
                    .bind(unit.as_str())
                    .bind(since_ms)
                    .bind(until_ms)
            },
        )
        .await
    }

    async fn top_keys(
        &self,
        tenant: &TenantId,
        unit: Unit,
        since_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<KeyTotal>, ProjectionError> {
        let refused = usage::refused_sum();
        // The names in the same statement: a deleted key has none.
        let rows: Vec<(String, i64, i64, Option<String>)> = sqlx::query_as(&format!(
            "SELECT t.subject, t.total, t.valid, k.name FROM \
             (SELECT subject, CAST(SUM(valid{refused}) AS BIGINT) AS total, \
              CAST(SUM(valid) AS BIGINT) AS valid FROM usage_buckets \
              WHERE tenant = $1 AND unit = $2 AND start_ms >= $3 AND start_ms < $4 \
              AND subject <> $5 GROUP BY subject ORDER BY total DESC, subject LIMIT $6) t \
             LEFT JOIN key_list k ON k.id = t.subject AND k.tenant = $1 \
             ORDER BY t.total DESC, t.subject"
        ))
        .bind(tenant.to_string())
        .bind(unit.as_str())
        .bind(since_ms)
        .bind(until_ms)
        .bind(usage::TENANT_TOTAL)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key_id, total, valid, name)| KeyTotal {
                key_id,
                name,
                total,
                valid,
            })
            .collect())
    }

    async fn usage_snapshot(&self) -> Result<(i64, Vec<UsageRow>), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        if let Some(sql) = DB::SNAPSHOT {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        let cp: Option<(String, i64)> =
            sqlx::query_as("SELECT name, position FROM projection_checkpoints WHERE name = $1")
                .bind(checkpoint::USAGE)
                .fetch_optional(&mut *tx)
                .await?;
        let rows: Vec<UsageRow> = Self::select(&mut *tx, "", |q| q).await?;
        tx.commit().await?;
        Ok((cp.map_or(0, |(_, p)| p), rows))
    }

    async fn prune_usage(&self, retention: &Retention, now_ms: i64) -> Result<(), ProjectionError> {
        for unit in Unit::ALL {
            let Some(cut) = retention.cutoff(unit, now_ms) else {
                continue;
            };
            sqlx::query("DELETE FROM usage_buckets WHERE unit = $1 AND start_ms < $2")
                .bind(unit.as_str())
                .bind(cut)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn swap_in(
        &self,
        table: Rebuilt,
        position: i64,
        suffix: &str,
    ) -> Result<(), ProjectionError> {
        for ddl in table.create_indexes(suffix) {
            sqlx::query(&ddl).execute(&self.pool).await?;
        }
        let mut tx = self.pool.begin().await?;
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
        if table == Rebuilt::KeyList {
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

    async fn reload_generation(&self) -> Result<i64, ProjectionError> {
        let g: Option<(String, i64)> =
            sqlx::query_as("SELECT name, position FROM projection_checkpoints WHERE name = $1")
                .bind(VERIFICATION_RELOAD)
                .fetch_optional(&self.pool)
                .await?;
        Ok(g.map_or(0, |(_, p)| p))
    }

    async fn audit_hashes(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>, ProjectionError> {
        Ok(sqlx::query_as(
            "SELECT position, event_hash FROM audit_log WHERE position > $1 \
             ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, ProjectionError> {
        let limit = i64::from(filter.limit.max(1));
        let (cmp, dir, start) = match filter.order {
            Order::Asc => (">", "ASC", i64::MIN),
            Order::Desc => ("<", "DESC", i64::MAX),
        };
        let mut events: Vec<AuditEntry> = Self::select(
            &self.pool,
            &format!(
                "WHERE ($1 IS NULL OR tenant = $1) AND position {cmp} $2 \
                 AND ($3 IS NULL OR key_id = $3) AND ($4 IS NULL OR actor = $4) \
                 AND ($5 IS NULL OR event_type = $5) \
                 AND ($6 IS NULL OR occurred_at >= $6) AND ($7 IS NULL OR occurred_at < $7) \
                 ORDER BY position {dir} LIMIT $8"
            ),
            |q| {
                q.bind(filter.tenant.clone())
                    .bind(filter.after_position.unwrap_or(start))
                    .bind(filter.key_id.clone())
                    .bind(filter.actor.clone())
                    .bind(filter.event_type.clone())
                    .bind(filter.since.map(|t| t.timestamp_millis()))
                    .bind(filter.until.map(|t| t.timestamp_millis()))
                    .bind(limit + 1)
            },
        )
        .await?;
        let more = events.len() as i64 > limit;
        events.truncate(limit as usize);
        let next_position = if more {
            events.last().map(|e| e.position)
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_position,
        })
    }

    async fn load_index(&self) -> Result<VerificationIndex, ProjectionError> {
        DB::load_index(&self.pool).await
    }
}

/// The statements behind [`ProjectionTables`], on any engine.
impl<DB> SqlTables<DB>
where
    DB: Engine + BulkLoad + IndexSource + HasStatementCache,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    str: sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB>,
    String: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB>,
    (String, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
    (i64, Option<String>): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    /// Inserts rows into `table`, `per_statement` at a time; `tail` ends each
    /// statement (a conflict rule, or nothing). The caller commits.
    pub(crate) async fn insert_rows<const N: usize, R: Record<N>>(
        tx: &mut DB::Connection,
        table: &str,
        rows: &[R],
        tail: &str,
    ) -> Result<(), ProjectionError> {
        // Parameters per statement stay well under SQLite's 32,766.
        let per_statement = (12_000 / N).clamp(1, 1000);
        for chunk in rows.chunks(per_statement) {
            let sql = insert_statement::<DB, N>(table, R::TABLE, chunk.len(), tail);
            let mut q = sqlx::query(&sql);
            for r in chunk {
                for v in r.values() {
                    q = match v {
                        Value::Text(t) => q.bind(t),
                        Value::Int(i) => q.bind(i),
                    };
                }
            }
            // Row counts vary, so each text is used once: not worth a cached
            // prepared statement per size.
            q.persistent(false).execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Reads rows of `R`'s table: `rest` follows `SELECT <columns> FROM <table>`,
    /// `bind` binds its parameters.
    async fn select<'e, const N: usize, R: Record<N>, E: sqlx::Executor<'e, Database = DB>>(
        executor: E,
        rest: &str,
        bind: impl for<'q> FnOnce(
            sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
        ) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
    ) -> Result<Vec<R>, ProjectionError> {
        let sql = format!(
            "SELECT {} FROM {} {rest}",
            R::TABLE.column_list(),
            R::TABLE.name
        );
        let rows = bind(sqlx::query(&sql)).fetch_all(executor).await?;
        rows.iter()
            .map(|row| R::from_values(read_values(R::TABLE, row)?))
            .collect()
    }

    /// Applies what each projection has not applied yet and moves both
    /// checkpoints to `through`; the checkpoints are locked.
    async fn apply_locked(
        tx: &mut Transaction<'_, DB>,
        events: &[RecordedEvent],
        current: Checkpoints,
        through: i64,
    ) -> Result<Checkpoints, ProjectionError> {
        // Statements, not events, are what a batch costs: each run of creates is
        // one multi-row INSERT, the audit rows are one; other events take a
        // statement each, in order.
        let keys_replayed = replayed(&key_list::TABLE);
        let mut created: Vec<KeyRow> = Vec::new();
        for e in events.iter().filter(|e| e.position > current.key_list) {
            if let KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) = &e.event {
                created.push(created_row(e, c));
            } else {
                Self::insert_rows(&mut **tx, key_list::TABLE.name, &created, &keys_replayed)
                    .await?;
                created.clear();
                Self::apply_key_list(tx, e).await?;
            }
        }
        Self::insert_rows(&mut **tx, key_list::TABLE.name, &created, &keys_replayed).await?;
        let audited: Vec<AuditEntry> = events
            .iter()
            .filter(|e| e.position > current.audit_log)
            .map(audit_entry)
            .collect();
        Self::insert_rows(
            &mut **tx,
            audit::TABLE.name,
            &audited,
            &replayed(&audit::TABLE),
        )
        .await?;
        let mut buckets = UsageFold::default();
        events
            .iter()
            .filter(|e| e.position > current.usage)
            .for_each(|e| buckets.apply(e));
        if !buckets.is_empty() {
            // Retention is the pruner's business; here every bucket counts.
            let rows = buckets.into_rows(&Retention::KEEP_ALL, 0);
            Self::insert_rows(&mut **tx, usage::TABLE.name, &rows, &usage::upsert_tail()).await?;
        }
        let next = Checkpoints {
            key_list: current.key_list.max(through),
            audit_log: current.audit_log.max(through),
            usage: current.usage.max(through),
        };
        sqlx::query(
            "UPDATE projection_checkpoints SET position = \
             CASE WHEN name = $1 THEN $2 WHEN name = $3 THEN $4 ELSE $5 END \
             WHERE name IN ($1, $3, $6)",
        )
        .bind(checkpoint::KEY_LIST)
        .bind(next.key_list)
        .bind(checkpoint::AUDIT_LOG)
        .bind(next.audit_log)
        .bind(next.usage)
        .bind(checkpoint::USAGE)
        .execute(&mut **tx)
        .await?;
        Ok(next)
    }

    /// Applies one event other than a create to the key list.
    async fn apply_key_list(
        tx: &mut Transaction<'_, DB>,
        e: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let at = e.event.time().timestamp_millis();
        let id = e.key_id.as_str();
        match &e.event {
            KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) => {
                let row = [created_row(e, c)];
                Self::insert_rows(
                    &mut **tx,
                    key_list::TABLE.name,
                    &row,
                    &replayed(&key_list::TABLE),
                )
                .await?;
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyUpdated(u)) => {
                let mut sets: Vec<(&str, Option<String>)> = Vec::new();
                if let Some(n) = &u.name {
                    sets.push(("name", Some(n.clone())));
                }
                if let Some(d) = &u.description {
                    sets.push(("description", d.clone()));
                }
                if let Some(p) = &u.permissions {
                    sets.push(("permissions", Some(strings_json(p.as_slice()))));
                }
                if let Some(m) = &u.metadata {
                    sets.push(("metadata", m.as_ref().map(|m| m.to_string())));
                }
                if let Some(o) = &u.owner {
                    sets.push(("owner", o.clone()));
                }
                if let Some(r) = &u.ratelimits {
                    sets.push(("ratelimits", Some(key_list::ratelimits_json(r))));
                }
                if let Some(ips) = &u.allowed_ips {
                    sets.push(("allowed_ips", Some(strings_json(&ips.to_strings()))));
                }
                for (column, text) in sets {
                    sqlx::query(&format!("UPDATE key_list SET {column} = $1 WHERE id = $2"))
                        .bind(text)
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                }
                if let Some(exp) = u.expires_at {
                    sqlx::query("UPDATE key_list SET expires_at = $1 WHERE id = $2")
                        .bind(exp.map(|t| t.timestamp_millis()))
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                }
                sqlx::query("UPDATE key_list SET updated_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeactivated(_)) => {
                Self::set_status(tx, id, STATUS_INACTIVE, at).await?;
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyReactivated(_)) => {
                Self::set_status(tx, id, STATUS_ACTIVE, at).await?;
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpirySet(x)) => {
                sqlx::query(
                    "UPDATE key_list SET expires_at = $1, \
                     rotated_to = COALESCE($2, rotated_to), updated_at = $3 WHERE id = $4",
                )
                .bind(x.expires_at.timestamp_millis())
                .bind(x.rotated_to.clone())
                .bind(at)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(_)) => {
                sqlx::query("DELETE FROM key_list WHERE id = $1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
            KeyledgerEvent::Usage(usage) => {
                if let KeyUsageEvent::KeyUsageRecorded(u) = usage {
                    sqlx::query(
                        "UPDATE key_list SET usage_count = usage_count + $1, \
                         last_used_at = CASE WHEN $1 > 0 AND (last_used_at IS NULL OR last_used_at < $2) \
                         THEN $2 ELSE last_used_at END WHERE id = $3",
                    )
                    .bind(i64::try_from(u.count).unwrap_or(i64::MAX))
                    .bind(u.last_used_at.timestamp_millis())
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                }
                // The ledger as the event states it; the replay recomputes it.
                if let Some(ledger) = usage.ledger() {
                    sqlx::query("UPDATE key_list SET credits = $1 WHERE id = $2")
                        .bind(key_list::ledger_json(ledger))
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyLeakReported(l)) => {
                // The first report marks the key; later ones keep its time.
                sqlx::query(
                    "UPDATE key_list SET leaked_at = COALESCE(leaked_at, $1) WHERE id = $2",
                )
                .bind(l.at.timestamp_millis())
                .bind(id)
                .execute(&mut **tx)
                .await?;
            }
            // A notice changes nothing the key list shows.
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpiryNoticed(_))
            | KeyledgerEvent::Owner(_)
            | KeyledgerEvent::Webhook(_)
            | KeyledgerEvent::Policy(_) => {}
        }
        Ok(())
    }

    async fn set_status(
        tx: &mut Transaction<'_, DB>,
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
}
