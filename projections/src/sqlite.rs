//! What the projections do differently on SQLite: bulk loads and the
//! verification index go through rusqlite (see `index_load`), on blocking
//! threads; the index's rows are parsed on one thread and inserted on another.

use std::path::Path;

use async_trait::async_trait;
use sqlx::{Pool, Sqlite};

use crate::checkpoint;
use crate::error::ProjectionError;
use crate::index_load::{load_in_parallel, IndexFields, IndexSource, INDEX_COLUMNS};
use crate::schema::{Record, Value};
use crate::sql::{insert_statement, BulkLoad};
use crate::verification::VerificationIndex;

#[async_trait]
impl BulkLoad for Sqlite {
    /// One prepared single-row INSERT, run for each row in one transaction,
    /// with rusqlite on a blocking thread. sqlx re-prepared each multi-row
    /// statement and moved every parameter through its own argument buffer
    /// to its worker thread: most of a SQLite rebuild went there.
    async fn load<const N: usize, R: Record<N> + Sync>(
        pool: &Pool<Self>,
        table: &str,
        rows: &[R],
    ) -> Result<(), ProjectionError> {
        let path = pool.connect_options().get_filename().to_path_buf();
        let sql = insert_statement::<Sqlite, N>(table, R::TABLE, 1, "");
        let values: Vec<[Value; N]> = rows.iter().map(Record::values).collect();
        let loaded = tokio::task::spawn_blocking(move || insert_each(&path, &sql, &values)).await;
        let source: Box<dyn std::error::Error + Send + Sync> = match loaded {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => Box::new(e),
            // It panicked, or the runtime is shutting down.
            Err(e) => Box::new(e),
        };
        Err(ProjectionError::BulkLoad {
            table: table.to_owned(),
            source,
        })
    }
}

/// Runs `sql` (one row's INSERT) for each row, in one transaction.
fn insert_each<const N: usize>(
    path: &Path,
    sql: &str,
    rows: &[[Value; N]],
) -> Result<(), rusqlite::Error> {
    let mut conn = keyledger_sql::open_sqlite(path, false)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare(sql)?;
        for row in rows {
            for (i, v) in row.iter().enumerate() {
                insert.raw_bind_parameter(i + 1, v)?;
            }
            insert.raw_execute()?;
        }
    }
    tx.commit()
}

#[async_trait]
impl IndexSource for Sqlite {
    /// Rows and checkpoint from one snapshot (a read transaction over the
    /// WAL), on a blocking thread.
    async fn load_index(pool: &Pool<Self>) -> Result<VerificationIndex, ProjectionError> {
        let path = pool.connect_options().get_filename().to_path_buf();
        tokio::task::spawn_blocking(move || read(&path))
            .await
            .map_err(|e| ProjectionError::Load(Box::new(e)))?
    }
}

fn read(path: &Path) -> Result<VerificationIndex, ProjectionError> {
    use rusqlite::OptionalExtension;
    let load = |e: rusqlite::Error| ProjectionError::Load(Box::new(e));
    let mut conn = keyledger_sql::open_sqlite(path, true).map_err(load)?;
    let tx = conn.transaction().map_err(load)?;
    let cp: Option<i64> = tx
        .query_row(
            "SELECT position FROM projection_checkpoints WHERE name = ?1",
            [checkpoint::KEY_LIST],
            |r| r.get(0),
        )
        .optional()
        .map_err(load)?;
    let n: i64 = tx
        .query_row("SELECT COUNT(*) FROM key_list", [], |r| r.get(0))
        .map_err(load)?;
    let index = VerificationIndex::with_capacity(usize::try_from(n).unwrap_or(0));
    load_in_parallel(&index, |parallel| {
        let mut stmt = tx
            .prepare(&format!("SELECT {INDEX_COLUMNS} FROM key_list"))
            .map_err(load)?;
        let mut rows = stmt.query([]).map_err(load)?;
        while let Some(row) = rows.next().map_err(load)? {
            let text = |i: usize| -> Result<&str, rusqlite::Error> {
                row.get_ref(i)?.as_str().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })
            };
            let fields = IndexFields {
                id: text(0).map_err(load)?,
                tenant: text(1).map_err(load)?,
                key_hash: text(2).map_err(load)?,
                name: text(3).map_err(load)?,
                environment: text(4).map_err(load)?,
                permissions: text(5).map_err(load)?,
                status: text(6).map_err(load)?,
                expires_at: row.get(7).map_err(load)?,
                prefix: text(8).map_err(load)?,
                owner: row
                    .get_ref(9)
                    .map_err(load)?
                    .as_str_or_null()
                    .map_err(|e| {
                        load(rusqlite::Error::FromSqlConversionFailure(
                            9,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        ))
                    })?,
                ratelimits: text(10).map_err(load)?,
                credits: row
                    .get_ref(11)
                    .map_err(load)?
                    .as_str_or_null()
                    .map_err(|e| {
                        load(rusqlite::Error::FromSqlConversionFailure(
                            11,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        ))
                    })?,
                allowed_ips: text(12).map_err(load)?,
                imported: row.get(13).map_err(load)?,
            };
            parallel.add(fields)?;
        }
        Ok(())
    })?;
    tx.commit().map_err(load)?;
    index.set_checkpoint(cp.unwrap_or(0));
    Ok(index)
}
