//! Group commit's append on the embedded store: a batch of creates and the
//! rows of the projection the store was given ([`InlineProjection`]: the key
//! list's and the audit log's, described by the projections, never named
//! here) in **one transaction**, so one WAL flush serves the whole batch.
//!
//! Before, a batch was two durable transactions (the events, then the
//! tailer's projection write) and a read of the feed in between; on SQLite,
//! where every commit waits for its fsync, the second flush and the read-back
//! were most of a create's cost. SQLite has one writer at a time, and
//! `BEGIN IMMEDIATE` takes the write lock at once, so the positions the
//! events get (the insert trigger, migrations/sqlite/0001) follow the head
//! read at the start with nothing in between.
//!
//! A projection's rows are written only when its checkpoint stands exactly at
//! that head (otherwise other events are still to be applied to it first, and
//! the tailer applies this batch after them), as on PostgreSQL
//! (`numbered_append`).

use keyledger_sql::{InlineProjection, InlineTable, Value};
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, Connection, SqliteConnection};

use crate::error::Error;
use crate::store::backend::{Appended, NewEvent};
use crate::store::feed::store_error;

/// The columns of an event row, in the order they are bound.
const EVENT_COLUMNS: &str =
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata";

/// The projection's tables, written with their creates.
pub struct Tables {
    tables: Vec<InlineTable>,
}

impl Tables {
    pub fn new(inline: Option<&dyn InlineProjection>) -> Self {
        Self {
            tables: inline.map(|p| p.tables()).unwrap_or_default(),
        }
    }

    /// Appends creates, numbered in batch order, and their projection rows
    /// where the projection stands right before them, in one transaction.
    /// A row whose stream already has that sequence fails the whole append
    /// with `Conflict`, and nothing of it is written.
    pub async fn append(
        &self,
        conn: &mut SqliteConnection,
        batch: &[&NewEvent],
    ) -> Result<Appended, Error> {
        let count = i64::try_from(batch.len())
            .map_err(|e| Error::internal_from("a batch beyond i64", e))?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)?;
        let after: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        insert_events(&mut tx, batch).await?;
        let through: i64 = sqlx::query_scalar("SELECT MAX(global_position) FROM events")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        if through != after + count {
            // The trigger numbers each row as it is inserted; anything else
            // would give the projections wrong positions. Rolled back.
            return Err(Error::internal(format!(
                "a batch of {count} after position {after} ended at {through}"
            )));
        }
        let mut projected = !self.tables.is_empty();
        for (t, table) in self.tables.iter().enumerate() {
            let moved = sqlx::query(
                "UPDATE projection_checkpoints SET position = ? WHERE name = ? AND position = ?",
            )
            .bind(through)
            .bind(table.checkpoint)
            .bind(after)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected();
            if moved == 1 {
                insert_rows(&mut tx, table, t, after, batch).await?;
            } else {
                projected = false;
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(Appended {
            after,
            through,
            numbered: true,
            projected,
        })
    }
}

async fn insert_events(conn: &mut SqliteConnection, batch: &[&NewEvent]) -> Result<(), Error> {
    let mut sql = format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES ");
    let mut args = SqliteArguments::default();
    for (i, e) in batch.iter().enumerate() {
        sql.push_str(if i == 0 {
            "(?, ?, ?, ?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?, ?, ?, ?)"
        });
        let sequence = i64::try_from(e.stored.sequence)
            .map_err(|e| Error::internal_from("a sequence beyond i64", e))?;
        bind(&mut args, e.stored.aggregate_type.as_str())?;
        bind(&mut args, e.stored.aggregate_id.as_str())?;
        bind(&mut args, sequence)?;
        bind(&mut args, e.stored.event_type.as_str())?;
        bind(&mut args, e.stored.event_version.as_str())?;
        bind(&mut args, e.payload.as_str())?;
        bind(&mut args, e.metadata.as_str())?;
    }
    sqlx::query_with(&sql, args)
        .execute(conn)
        .await
        .map_err(append_error)?;
    Ok(())
}

/// Table `t`'s rows of the batch, the position column counted on from `after`.
async fn insert_rows(
    conn: &mut SqliteConnection,
    table: &InlineTable,
    t: usize,
    after: i64,
    batch: &[&NewEvent],
) -> Result<(), Error> {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let row = format!("({})", vec!["?"; names.len()].join(", "));
    let mut sql = format!("INSERT INTO {} ({}) VALUES ", table.name, names.join(", "));
    let mut args = SqliteArguments::default();
    for (n, e) in batch.iter().enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&row);
        let values = e
            .rows
            .as_ref()
            .and_then(|rows| rows.get(t))
            .ok_or_else(|| Error::internal("a create was prepared without its projection rows"))?;
        if values.len() != names.len() {
            return Err(Error::internal(format!(
                "{}: the projection gave {} values for {} columns",
                table.name,
                values.len(),
                names.len()
            )));
        }
        for (name, value) in names.iter().zip(values) {
            if *name == table.position {
                let position = after
                    + i64::try_from(n + 1).map_err(|e| Error::internal_from("a position", e))?;
                bind(&mut args, position)?;
                continue;
            }
            match value {
                Value::Text(text) => bind(&mut args, text.as_deref())?,
                Value::Int(int) => bind(&mut args, *int)?,
            }
        }
    }
    sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", table.key));
    sqlx::query_with(&sql, args)
        .execute(conn)
        .await
        .map_err(store_error)?;
    Ok(())
}

fn bind<'q, T>(args: &mut SqliteArguments<'q>, value: T) -> Result<(), Error>
where
    T: 'q + sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    args.add(value)
        .map_err(|e| Error::internal_from("binding group commit's rows", e))
}

/// SQLITE_CONSTRAINT_PRIMARYKEY (1555): a stream already has that sequence.
fn append_error(e: sqlx::Error) -> Error {
    match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "1555" => Error::Conflict,
        _ => store_error(e),
    }
}
