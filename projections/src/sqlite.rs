//! What the projections do differently on SQLite: bulk loads are multi-row
//! INSERTs, and the verification index is read with rusqlite (see
//! `index_load`), parsed on this thread and inserted on another.

use std::path::Path;

use async_trait::async_trait;
use sqlx::{Pool, Sqlite};

use crate::checkpoint;
use crate::error::ProjectionError;
use crate::index_load::{load_in_parallel, IndexFields, IndexSource, INDEX_COLUMNS};
use crate::schema::Record;
use crate::sql::{BulkLoad, SqlTables};
use crate::verification::VerificationIndex;

#[async_trait]
impl BulkLoad for Sqlite {
    async fn load<const N: usize, R: Record<N> + Sync>(
        pool: &Pool<Self>,
        table: &str,
        rows: &[R],
    ) -> Result<(), ProjectionError> {
        let mut tx = pool.begin().await?;
        SqlTables::<Sqlite>::insert_rows(&mut *tx, table, rows, "").await?;
        tx.commit().await?;
        Ok(())
    }
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
    use rusqlite::{OpenFlags, OptionalExtension};
    let load = |e: rusqlite::Error| ProjectionError::Load(Box::new(e));
    let mut conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(load)?;
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
