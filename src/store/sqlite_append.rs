//! Group commit's append on the embedded store: a batch of creates and the
//! rows of the projection the store was given ([`InlineProjection`]: the key
//! list's and the audit log's, described by the projections, never named
//! here) in **one transaction**, so one WAL flush serves the whole batch.
//!
//! SQLite has one writer at a time, and `BEGIN IMMEDIATE` takes the write
//! lock at once, so the positions the events get (the insert trigger,
//! migrations/sqlite/0001) follow the head read at the start with nothing in
//! between. A projection's rows are written only when its checkpoint stands
//! exactly at that head (otherwise other events are still to be applied to
//! it first, and the tailer applies this batch after them), as on PostgreSQL
//! (`numbered_append`).
//!
//! The whole transaction runs on one blocking thread, through rusqlite and
//! statements prepared once per connection. Through sqlx, each of its dozen
//! statements was a round trip to the connection's worker thread and back to
//! a task that two busy cores had to wake: a batch of 8 creates took 3.2 ms
//! (median), where one durable single-row insert commits in 0.4 ms, and the
//! machine sat half idle (BENCHMARKS.md, "Writes, rebuilds and 10,000,000
//! keys").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use keyledger_sql::{InlineProjection, InlineTable, Value};
use rusqlite::{ffi, Connection, TransactionBehavior};

use crate::error::Error;
use crate::store::backend::{Appended, NewEvent};

/// The events table's single-row INSERT; the trigger gives the position.
const INSERT_EVENT: &str = "INSERT INTO events \
     (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const HEAD: &str = "SELECT COALESCE(MAX(global_position), 0) FROM events";
const MOVE_CHECKPOINT: &str =
    "UPDATE projection_checkpoints SET position = ?1 WHERE name = ?2 AND position = ?3";

/// The projection's tables, written with their creates, each with its
/// single-row INSERT.
pub struct Tables {
    tables: Vec<(InlineTable, String)>,
}

impl Tables {
    pub fn new(inline: Option<&dyn InlineProjection>) -> Self {
        let tables = inline.map(|p| p.tables()).unwrap_or_default();
        Self {
            tables: tables
                .into_iter()
                .map(|table| {
                    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
                    let sql = format!(
                        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO NOTHING",
                        table.name,
                        names.join(", "),
                        vec!["?"; names.len()].join(", "),
                        table.key
                    );
                    (table, sql)
                })
                .collect(),
        }
    }
}

/// Group commit's connection: opened on the first batch, kept from one batch
/// to the next (its statements stay prepared), and dropped after a failure
/// other than a conflict, so that the next batch opens a fresh one.
///
/// It never checkpoints the WAL itself: a checkpoint copies the pages of
/// about a thousand frames into the database file and syncs it, and done by
/// the commit that crossed the limit (SQLite's default) it held up a batch of
/// creates every few dozen. A thread of the writer's own checkpoints every
/// [`CHECKPOINT_EVERY`] instead (`PASSIVE`: it never waits for, or blocks, a
/// writer or a reader); the other connections keep SQLite's default.
pub struct Writer {
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
    checkpoints: Arc<Checkpoints>,
}

/// How often the checkpoint thread copies the WAL into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The checkpoint thread's stop signal.
#[derive(Default)]
struct Checkpoints {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Checkpoints {
    /// Checkpoints `path` every [`CHECKPOINT_EVERY`] until stopped. A failed
    /// checkpoint is tried again at the next tick: until one succeeds the
    /// WAL only grows, and the data in it is as durable as in the file.
    fn run(&self, path: &Path) {
        let mut conn = None;
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            stopped = self
                .wake
                .wait_timeout(stopped, CHECKPOINT_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if *stopped {
                break;
            }
            drop(stopped);
            if conn.is_none() {
                conn = open(path).ok();
            }
            if let Some(c) = &conn {
                if let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "WAL checkpoint failed; trying again");
                    conn = None;
                }
            }
            stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }
}

/// What a batch's transaction needs of one event, owned, to cross to the
/// blocking thread.
struct Row {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    rows: Option<Vec<Vec<Value>>>,
}

impl Writer {
    pub fn new(path: &Path) -> Self {
        let checkpoints = Arc::new(Checkpoints::default());
        let (thread, file) = (checkpoints.clone(), path.to_path_buf());
        // Detached: `close` (or dropping the writer) stops it within a tick.
        let spawned = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || thread.run(&file));
        if let Err(e) = spawned {
            // Without it the WAL grows until another connection's commit
            // checkpoints it (they keep SQLite's default).
            tracing::warn!(error = %e, "no WAL checkpoint thread");
        }
        Self {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(None)),
            checkpoints,
        }
    }

    /// Appends creates, numbered in batch order, and their projection rows
    /// where the projection stands right before them, in one transaction.
    /// A row whose stream already has that sequence fails the whole append
    /// with `Conflict`, and nothing of it is written.
    pub async fn append(
        &self,
        tables: Arc<Tables>,
        batch: &[&NewEvent],
    ) -> Result<Appended, Error> {
        let rows = batch
            .iter()
            .map(|e| {
                Ok(Row {
                    aggregate_type: e.stored.aggregate_type.clone(),
                    aggregate_id: e.stored.aggregate_id.clone(),
                    sequence: i64::try_from(e.stored.sequence)
                        .map_err(|e| Error::internal_from("a sequence beyond i64", e))?,
                    event_type: e.stored.event_type.clone(),
                    event_version: e.stored.event_version.clone(),
                    payload: e.payload.clone(),
                    metadata: e.metadata.clone(),
                    rows: e.rows.clone(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let (slot, path) = (self.conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let conn = match slot.as_mut() {
                Some(conn) => conn,
                None => slot.insert(open_writer(&path).map_err(sqlite_error)?),
            };
            let appended = write(conn, &tables, &rows);
            if matches!(&appended, Err(e) if !matches!(e, Error::Conflict)) {
                *slot = None;
            }
            appended
        })
        .await
        .map_err(|e| Error::internal_from("group commit's writer thread", e))?
    }

    /// Closes the connection, if open, and stops the checkpoint thread.
    pub fn close(&self) {
        self.checkpoints.stop();
        drop(
            self.conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// A read-write connection with the store's settings, as every rusqlite
/// connection to the file is opened.
fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    keyledger_sql::open_sqlite(path, false)
}

/// The writer's connection: [`open`], leaving checkpoints to the thread.
fn open_writer(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = open(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

fn write(conn: &mut Connection, tables: &Tables, batch: &[Row]) -> Result<Appended, Error> {
    let count =
        i64::try_from(batch.len()).map_err(|e| Error::internal_from("a batch beyond i64", e))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    let after: i64 = tx
        .prepare_cached(HEAD)
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(sqlite_error)?;
    {
        let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(sqlite_error)?;
        for e in batch {
            insert
                .execute(rusqlite::params![
                    e.aggregate_type,
                    e.aggregate_id,
                    e.sequence,
                    e.event_type,
                    e.event_version,
                    e.payload,
                    e.metadata,
                ])
                .map_err(append_error)?;
        }
    }
    let through: i64 = tx
        .prepare_cached("SELECT MAX(global_position) FROM events")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(sqlite_error)?;
    if through != after + count {
        // The trigger numbers each row as it is inserted; anything else
        // would give the projections wrong positions. Rolled back.
        return Err(Error::internal(format!(
            "a batch of {count} after position {after} ended at {through}"
        )));
    }
    let mut projected = !tables.tables.is_empty();
    for (t, (table, sql)) in tables.tables.iter().enumerate() {
        let moved = tx
            .prepare_cached(MOVE_CHECKPOINT)
            .and_then(|mut s| s.execute(rusqlite::params![through, table.checkpoint, after]))
            .map_err(sqlite_error)?;
        if moved == 1 {
            insert_rows(&tx, table, sql, t, after, batch)?;
        } else {
            projected = false;
        }
    }
    tx.commit().map_err(sqlite_error)?;
    Ok(Appended {
        after,
        through,
        numbered: true,
        projected,
    })
}

/// Table `t`'s rows of the batch, the position column counted on from `after`.
fn insert_rows(
    tx: &rusqlite::Transaction<'_>,
    table: &InlineTable,
    sql: &str,
    t: usize,
    after: i64,
    batch: &[Row],
) -> Result<(), Error> {
    let mut insert = tx.prepare_cached(sql).map_err(sqlite_error)?;
    for (n, e) in batch.iter().enumerate() {
        let values = e
            .rows
            .as_ref()
            .and_then(|rows| rows.get(t))
            .ok_or_else(|| Error::internal("a create was prepared without its projection rows"))?;
        if values.len() != table.columns.len() {
            return Err(Error::internal(format!(
                "{}: the projection gave {} values for {} columns",
                table.name,
                values.len(),
                table.columns.len()
            )));
        }
        for (i, ((name, _), value)) in table.columns.iter().zip(values).enumerate() {
            let bound = if *name == table.position {
                let position = after
                    + i64::try_from(n + 1).map_err(|e| Error::internal_from("a position", e))?;
                insert.raw_bind_parameter(i + 1, position)
            } else {
                insert.raw_bind_parameter(i + 1, value)
            };
            bound.map_err(sqlite_error)?;
        }
        insert.raw_execute().map_err(sqlite_error)?;
    }
    Ok(())
}

/// A failure of the embedded store: unavailable (busy or locked past the
/// timeout, I/O, a full disk, a file that cannot be opened) or internal.
fn sqlite_error(e: rusqlite::Error) -> Error {
    use ffi::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(
            DatabaseBusy
            | DatabaseLocked
            | SystemIoFailure
            | DiskFull
            | CannotOpen
            | FileLockingProtocolFailed,
        ) => Error::StoreUnavailable(Box::new(e)),
        _ => Error::internal_from("event store", e),
    }
}

/// SQLITE_CONSTRAINT_PRIMARYKEY: a stream already has that sequence.
fn append_error(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            Error::Conflict
        }
        _ => sqlite_error(e),
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.checkpoints.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows written with checkpoints off stay in the WAL; the thread copies
    /// them into the database file, and stops when told.
    #[test]
    fn the_checkpoint_thread_copies_the_wal_into_the_file_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        drop(Connection::open(&path).expect("create"));
        let conn = open_writer(&path).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("WAL");
        conn.execute_batch("CREATE TABLE t (v TEXT)")
            .expect("table");
        let file_size = || std::fs::metadata(&path).expect("file").len();
        let before = file_size();
        for n in 0..500 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("{n:01000}")])
                .expect("insert");
        }
        assert_eq!(
            file_size(),
            before,
            "nothing checkpointed without the thread"
        );

        let checkpoints = Arc::new(Checkpoints::default());
        let thread = {
            let (c, p) = (checkpoints.clone(), path.clone());
            std::thread::spawn(move || c.run(&p))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file_size() <= before + 400 * 1000 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 10 s: {} bytes",
                file_size()
            );
            std::thread::sleep(CHECKPOINT_EVERY / 2);
        }
        checkpoints.stop();
        thread.join().expect("the thread stops");
        let rows: i64 = open(&path)
            .expect("reopen")
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 500);
    }
}
