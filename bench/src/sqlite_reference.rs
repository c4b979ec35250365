//! The SQLite reference for create throughput (`keyledger-bench sqlite-insert`):
//! what SQLite itself reaches with durable single-row INSERT transactions, on a
//! database opened with keyledger's own PRAGMAs
//! (`keyledger::store::sqlite::connect_options`: WAL, `synchronous = FULL`,
//! the same busy timeout). It mirrors the harness's pgbench `insert1.sql`: a
//! row of (uuid, name, SHA-256 of a fresh uuid, time), one autocommitted
//! INSERT per transaction, one connection per client.

use std::path::Path;
use std::time::{Duration, Instant};

use keyledger::Error;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqlitePoolOptions;

/// What the clients did together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inserted {
    pub rows: u64,
    pub seconds: f64,
}

impl Inserted {
    pub fn per_second(&self) -> f64 {
        self.rows as f64 / self.seconds.max(f64::EPSILON)
    }
}

/// Runs `clients` writers against a fresh table in the database at `path`
/// for `duration`; returns the rows committed (each its own transaction).
pub async fn run(path: &Path, clients: usize, duration: Duration) -> Result<Inserted, Error> {
    let clients = clients.max(1);
    let options = keyledger::store::sqlite::connect_options(path)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(u32::try_from(clients).unwrap_or(u32::MAX))
        .min_connections(u32::try_from(clients).unwrap_or(u32::MAX))
        .connect_with(options)
        .await
        .map_err(|e| Error::internal_from("opening the reference database", e))?;
    sqlx::query("DROP TABLE IF EXISTS key_events")
        .execute(&pool)
        .await
        .map_err(|e| Error::internal_from("dropping the reference table", e))?;
    sqlx::query(
        "CREATE TABLE key_events (id TEXT PRIMARY KEY, name TEXT NOT NULL, \
         hash BLOB NOT NULL, created_at TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .map_err(|e| Error::internal_from("creating the reference table", e))?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("key-{c}");
            let mut rows = 0u64;
            while Instant::now() < deadline {
                let hash = Sha256::digest(uuid::Uuid::new_v4().to_string().as_bytes());
                sqlx::query(
                    "INSERT INTO key_events (id, name, hash, created_at) VALUES (?, ?, ?, ?)",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&name)
                .bind(hash.to_vec())
                .bind(chrono::Utc::now().to_rfc3339())
                .execute(&pool)
                .await
                .map_err(|e| Error::internal_from("a reference insert", e))?;
                rows += 1;
            }
            Ok::<u64, Error>(rows)
        }));
    }
    let mut rows = 0;
    for task in tasks {
        rows += task
            .await
            .map_err(|e| Error::internal_from("a reference writer", e))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM key_events")
        .fetch_one(&pool)
        .await
        .map_err(|e| Error::internal_from("counting the reference rows", e))?;
    pool.close().await;
    // Every acknowledged insert is in the table: the figure counts commits.
    if u64::try_from(counted).ok() != Some(rows) {
        return Err(Error::internal(format!(
            "the reference table holds {counted} rows, the writers counted {rows}"
        )));
    }
    Ok(Inserted { rows, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_counted_insert_is_a_committed_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reference.db");
        let done = run(&path, 4, Duration::from_millis(300))
            .await
            .expect("runs");
        assert!(done.rows > 0, "no row was written");
        let pool = SqlitePoolOptions::new()
            .connect_with(keyledger::store::sqlite::connect_options(&path).expect("options"))
            .await
            .expect("reopens");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM key_events")
            .fetch_one(&pool)
            .await
            .expect("counts");
        assert_eq!(u64::try_from(rows).ok(), Some(done.rows));
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .expect("mode");
        assert_eq!(
            mode, "wal",
            "the reference must run with keyledger's PRAGMAs"
        );
    }
}
