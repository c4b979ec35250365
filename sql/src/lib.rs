//! The SQL engines keyledger keeps its data in: embedded SQLite and PostgreSQL.
//!
//! Everything that writes SQL (the event store's feed and claims in the
//! server, the projections' tables) is generic over [`Engine`], a
//! `sqlx::Database` with the few places the two dialects differ named once
//! here. [`SqlPool`] is the handle one layer gives another (the event store
//! gives its database to the projections) without either naming an engine.

mod rusqlite_io;
pub use rusqlite_io::{open_sqlite, SQLITE_BUSY_TIMEOUT};

use sqlx::{PgPool, Pool, Postgres, Sqlite, SqlitePool};

/// A `sqlx` database with what keyledger's SQL needs to know of its dialect.
/// Queries use `$n` parameters and only `TEXT` and 64-bit integer columns, so
/// their text is the same on both engines.
pub trait Engine: sqlx::Database {
    /// The 64-bit integer column type in DDL.
    const INT: &'static str;
    /// What ends a `CREATE TABLE` (SQLite's `STRICT` refuses values of the
    /// wrong type instead of storing them).
    const TABLE_OPTIONS: &'static str;
    /// The statement that makes a transaction read from one snapshot, where a
    /// transaction does not already (SQLite's read transactions do).
    const SNAPSHOT: Option<&'static str>;
    /// How a projection write begins where it may skip waiting for its log
    /// flush (see the PostgreSQL implementation), or `None` for `BEGIN`.
    const BEGIN_RELAXED: Option<&'static str>;

    /// Appends the placeholder of parameter `n` (from 1) to `sql`, for
    /// statements generated with many parameters (multi-row INSERTs).
    fn push_param(sql: &mut String, n: usize);

    /// A table of the strings of the JSON array held as text in `array` (a
    /// TEXT column or parameter), in a column `value`, named `alias`: what
    /// follows `FROM` in a subquery (`SELECT 1 FROM {this} WHERE
    /// {alias}.value = ...`). A NULL `array` is an empty table.
    fn json_strings(array: &str, alias: &str) -> String;
}

impl Engine for Sqlite {
    const INT: &'static str = "INTEGER";
    const TABLE_OPTIONS: &'static str = " STRICT";
    const SNAPSHOT: Option<&'static str> = None;
    const BEGIN_RELAXED: Option<&'static str> = None;

    /// `?`: each parameter in order. Named ones (`$n`) cost SQLite a linear
    /// search per parameter when binding, quadratic in a 10,000-parameter
    /// INSERT (a rebuild's bulk load took five times as long).
    fn push_param(sql: &mut String, _n: usize) {
        sql.push('?');
    }

    fn json_strings(array: &str, alias: &str) -> String {
        format!("json_each({array}) AS {alias}")
    }
}

impl Engine for Postgres {
    const INT: &'static str = "BIGINT";
    const TABLE_OPTIONS: &'static str = "";
    const SNAPSHOT: Option<&'static str> = Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ");
    // A projection write need not wait for its WAL flush: if PostgreSQL loses
    // it in a crash, the checkpoint written with it is lost too, and the
    // tailer applies those events again from the (durable) event store. This
    // takes one fsync off every command's path. (Sent with BEGIN: one round
    // trip for both.)
    const BEGIN_RELAXED: Option<&'static str> = Some("BEGIN; SET LOCAL synchronous_commit = off");

    fn push_param(sql: &mut String, n: usize) {
        use std::fmt::Write as _;
        let _ = write!(sql, "${n}");
    }

    fn json_strings(array: &str, alias: &str) -> String {
        format!("jsonb_array_elements_text(CAST({array} AS jsonb)) AS {alias}(value)")
    }
}

/// The pool of the database that holds a node's SQL tables (projections,
/// checkpoints, idempotency claims): the event store's own, or for KurrentDB
/// the one beside it.
#[derive(Clone, Debug)]
pub enum SqlPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl From<Pool<Sqlite>> for SqlPool {
    fn from(pool: Pool<Sqlite>) -> Self {
        Self::Sqlite(pool)
    }
}

impl From<Pool<Postgres>> for SqlPool {
    fn from(pool: Pool<Postgres>) -> Self {
        Self::Postgres(pool)
    }
}

/// True when a sqlx error means the database is unreachable or overloaded
/// (retryable, answered 503), as opposed to a bug.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        // A peer that answers garbage (a dying proxy or pooler) is as good as gone.
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6) after the busy timeout.
            // PostgreSQL: class 08 (connection), 57P (shutdown), 53 (resources).
            let code = db.code().unwrap_or_default();
            matches!(code.as_ref(), "5" | "6" | "517" | "262")
                || code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
        }
        _ => false,
    }
}

/// The two column types keyledger's tables use (times are epoch
/// milliseconds, JSON is text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Text,
    Int,
}

/// One value of a row, in its column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Value {
    /// The value as text, `None` for NULL (`COPY`'s text format, arrays).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Self::Text(t) => t.clone(),
            Self::Int(i) => i.map(|i| i.to_string()),
        }
    }
}

/// A table a projection writes in the same statement that appends the
/// events it is built from (PostgreSQL group commit), described so that the
/// statement can be composed without knowing the projection.
#[derive(Debug, Clone)]
pub struct InlineTable {
    pub name: &'static str,
    /// The projection's checkpoint: its rows are written only when it
    /// stands right before the batch.
    pub checkpoint: &'static str,
    /// The primary key: a row already there was written before.
    pub key: &'static str,
    pub columns: Vec<(&'static str, SqlType)>,
    /// The column holding the event's global position, given counted from 1
    /// within the batch (the statement adds the position it reserved).
    pub position: &'static str,
}

/// One created key's event, as group commit is about to append it: what a
/// projection builds its rows from.
#[derive(Debug, Clone, Copy)]
pub struct InlineEvent<'a> {
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event: &'a keyledger_domain::ApiKeyEvent,
    pub metadata: &'a serde_json::Value,
    /// The event's chain hash.
    pub hash: &'a str,
}

/// The interface the projections provide for writing their rows together
/// with the events (inversion: the store composes the statement from it and
/// never knows the projections' tables).
pub trait InlineProjection: Send + Sync {
    /// The tables written, in the order `rows` gives their rows.
    fn tables(&self) -> Vec<InlineTable>;

    /// One row per table for a created key, each in its table's column order.
    fn rows(&self, event: InlineEvent<'_>) -> Result<Vec<Vec<Value>>, InlineError>;
}

/// Why a projection cannot build its rows for an event.
#[derive(Debug)]
pub struct InlineError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for InlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "building a projection's rows: {}", self.0)
    }
}

impl std::error::Error for InlineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}
