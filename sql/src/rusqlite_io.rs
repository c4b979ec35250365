//! The embedded store's file opened with rusqlite, for the paths where sqlx's
//! worker thread cost too much (group commit's writer, rebuild bulk loads,
//! the verification index's start-up read): one way to open it and one way
//! to bind a [`Value`], shared by the crates that do.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSql, ToSqlOutput};
use rusqlite::{Connection, OpenFlags};

use crate::Value;

/// How long a connection waits for another's write lock before it reports
/// SQLITE_BUSY: the same for sqlx's connections (`store::sqlite::connect_options`)
/// and rusqlite's.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An existing database file, read-write (durable commits: `synchronous =
/// FULL`, and foreign keys on, as the store's own connections) or read-only.
/// WAL is the file's own setting, made when the store first opened it.
pub fn open_sqlite(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let mode = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    if !read_only {
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
    }
    Ok(conn)
}

/// A value binds as its column's type, NULL for `None`.
impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Value::Text(text) => text.to_sql(),
            Value::Int(int) => int.to_sql(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_connections_are_opened_as_the_store_opens_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        drop(Connection::open(&path).expect("create"));
        let conn = open_sqlite(&path, false).expect("read-write");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("synchronous");
        assert_eq!(sync, 2, "FULL");
        conn.execute_batch("CREATE TABLE t (s TEXT, n INTEGER)")
            .expect("table");
        let mut insert = conn
            .prepare("INSERT INTO t (s, n) VALUES (?1, ?2)")
            .expect("prepare");
        for (s, n) in [(Some("a"), Some(7)), (None, None)] {
            insert
                .execute([Value::Text(s.map(str::to_owned)), Value::Int(n)])
                .expect("insert");
        }
        drop(insert);
        let reader = open_sqlite(&path, true).expect("read-only");
        let rows: Vec<(Option<String>, Option<i64>)> = reader
            .prepare("SELECT s, n FROM t ORDER BY rowid")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(rows, vec![(Some("a".to_owned()), Some(7)), (None, None)]);
        assert!(reader.execute("DELETE FROM t", []).is_err(), "read-only");
    }
}
