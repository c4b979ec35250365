//! Which database holds the projection tables. The SQL is the same text on both
//! engines (`$n` parameters, BIGINT/TEXT columns only), so each query is written
//! once and compiled for both pool types (see `sql.rs`).

use sqlx::{PgPool, SqlitePool};

/// The pool of the database that holds the projection tables.
#[derive(Clone, Debug)]
pub enum ProjectionDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}
