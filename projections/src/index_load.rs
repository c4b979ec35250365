//! Loading the verification index from the key list at start-up (and after a
//! rebuild), at a million rows: each row's text is borrowed, and a tenant or a
//! permission set is built once and shared by every key that has it.
//!
//! On SQLite the rows are read with rusqlite on a blocking thread: sqlx's
//! SQLite driver hands every row from its worker thread to the async task,
//! which made a million-row read take 5 to 10 s on 2 cores (thread wake-ups
//! and a copy of every value, BENCHMARKS.md); read in place it takes well
//! under a second. PostgreSQL rows arrive in bulk over the wire and stay on
//! sqlx. Each engine's reader is its own implementation of [`IndexSource`]
//! (`sqlite.rs`, `postgres.rs`); the rows become index entries here.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::DateTime;
use keyledger_domain::{KeyHash, Ledger, Permissions, RateLimit};

use crate::error::ProjectionError;
use crate::key_list::STATUS_ACTIVE;
use crate::verification::{IndexedKey, LimitSpec, VerificationIndex};

/// Reads the key list into a verification index.
#[async_trait]
pub(crate) trait IndexSource: keyledger_sql::Engine {
    async fn load_index(pool: &sqlx::Pool<Self>) -> Result<VerificationIndex, ProjectionError>;
}

/// Columns the index needs, in the order [`IndexFields`] lists them.
pub(crate) const INDEX_COLUMNS: &str = "id, tenant, key_hash, name, environment, permissions, \
     status, expires_at, prefix, owner, ratelimits, credits, allowed_ips, imported";

/// One key-list row, borrowed from the database row.
pub(crate) struct IndexFields<'r> {
    pub id: &'r str,
    pub tenant: &'r str,
    pub key_hash: &'r str,
    pub name: &'r str,
    pub environment: &'r str,
    pub permissions: &'r str,
    pub status: &'r str,
    pub expires_at: Option<i64>,
    pub prefix: &'r str,
    pub owner: Option<&'r str>,
    pub ratelimits: &'r str,
    pub credits: Option<&'r str>,
    pub allowed_ips: &'r str,
    pub imported: i64,
}

/// Rows parsed into one batch before it goes to the inserting thread: large
/// enough that the channel costs nothing per row, small enough to stay in the
/// CPU caches between the threads.
const BATCH_ROWS: usize = 1024;

/// Batches in flight between the two threads: the reader runs this far ahead
/// of the inserter, and no further, so memory stays bounded.
const BATCHES_IN_FLIGHT: usize = 8;

/// Fills `index` on two threads: `read` reads and parses rows on the calling
/// thread and hands each to the [`ParallelLoad`] it is given, while a second
/// thread inserts the parsed keys. The index has a single writer, so the
/// insert stays on one thread; at 10,000,000 rows reading and parsing took
/// as long again as inserting, and the two now overlap on the machine's
/// cores.
pub(crate) fn load_in_parallel(
    index: &VerificationIndex,
    read: impl FnOnce(&mut ParallelLoad) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    let (sender, receiver) =
        std::sync::mpsc::sync_channel::<Vec<(KeyHash, IndexedKey)>>(BATCHES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let inserter = scope.spawn(move || {
            for batch in receiver {
                for (hash, key) in batch {
                    index.load_row(hash, key);
                }
            }
        });
        let mut load = ParallelLoad {
            loader: IndexLoader::default(),
            batch: Vec::with_capacity(BATCH_ROWS),
            sender,
        };
        let read = read(&mut load).and_then(|()| load.flush());
        // Closing the channel ends the inserter's loop once it has the rest.
        drop(load);
        let inserted = inserter
            .join()
            .map_err(|_| ProjectionError::Load("the index's inserting thread panicked".into()));
        read.and(inserted)
    })
}

/// The reading side of [`load_in_parallel`].
pub(crate) struct ParallelLoad {
    loader: IndexLoader,
    batch: Vec<(KeyHash, IndexedKey)>,
    sender: std::sync::mpsc::SyncSender<Vec<(KeyHash, IndexedKey)>>,
}

impl ParallelLoad {
    /// Parses the row (an error names it, as [`IndexLoader::add`] does) and
    /// queues its key for the inserter.
    pub(crate) fn add(&mut self, row: IndexFields<'_>) -> Result<(), ProjectionError> {
        self.batch.push(self.loader.entry(row)?);
        if self.batch.len() == BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ProjectionError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ROWS));
        self.sender
            .send(full)
            .map_err(|_| ProjectionError::Load("the index's inserting thread stopped".into()))
    }
}

#[derive(Default)]
pub(crate) struct IndexLoader {
    tenants: HashMap<String, Arc<str>>,
    permissions: HashMap<String, Arc<Permissions>>,
}

impl IndexLoader {
    /// Adds the row's key to `index`. An unreadable row is an error naming
    /// it: a key skipped here would answer NOT_FOUND while it exists, and a
    /// revoked one could not be told from a missing one.
    pub(crate) fn add(
        &mut self,
        index: &VerificationIndex,
        row: IndexFields<'_>,
    ) -> Result<(), ProjectionError> {
        let (hash, key) = self.entry(row)?;
        index.load_row(hash, key);
        Ok(())
    }

    fn entry(&mut self, row: IndexFields<'_>) -> Result<(KeyHash, IndexedKey), ProjectionError> {
        let corrupt = |column: &'static str, message: String| ProjectionError::CorruptRow {
            table: "key_list",
            id: row.id.to_string(),
            column,
            message,
        };
        let hash = KeyHash::from_hex(row.key_hash)
            .map_err(|e| corrupt("key_hash", format!("not a SHA-256 in hex: {e}")))?;
        let environment = row
            .environment
            .parse()
            .map_err(|_| corrupt("environment", format!("unknown {:?}", row.environment)))?;
        let tenant = match self.tenants.get(row.tenant) {
            Some(t) => t.clone(),
            None => self
                .tenants
                .entry(row.tenant.to_owned())
                .or_insert_with(|| row.tenant.into())
                .clone(),
        };
        let permissions = match self.permissions.get(row.permissions) {
            Some(p) => p.clone(),
            None => {
                let list: Vec<String> = serde_json::from_str(row.permissions)
                    .map_err(|e| corrupt("permissions", e.to_string()))?;
                let parsed =
                    Permissions::parse(list).map_err(|e| corrupt("permissions", e.to_string()))?;
                self.permissions
                    .entry(row.permissions.to_owned())
                    .or_insert_with(|| Arc::new(parsed))
                    .clone()
            }
        };
        let key = IndexedKey::from_shared(
            row.id,
            row.prefix,
            tenant,
            row.name,
            environment,
            permissions,
            row.expires_at
                .map(|ms| {
                    DateTime::from_timestamp_millis(ms)
                        .ok_or_else(|| corrupt("expires_at", format!("{ms} is not a time")))
                })
                .transpose()?,
            row.status == STATUS_ACTIVE,
        );
        // Nearly every key may be used from anywhere: "[]" is not parsed.
        let key = if row.allowed_ips == "[]" {
            key
        } else {
            key.with_allowed_ips(
                serde_json::from_str(row.allowed_ips)
                    .map_err(|e| corrupt("allowed_ips", e.to_string()))?,
            )
        };
        let key = match row.imported {
            0 => key,
            1 => key.placed_by_hash(&hash),
            n => return Err(corrupt("imported", format!("{n} is not 0 or 1"))),
        };
        // Nearly every key has no limits: "[]" and NULL are not parsed.
        let ratelimits: Vec<RateLimit> = if row.ratelimits == "[]" {
            Vec::new()
        } else {
            serde_json::from_str(row.ratelimits)
                .map_err(|e| corrupt("ratelimits", e.to_string()))?
        };
        let ledger: Option<Ledger> = row
            .credits
            .map(|c| serde_json::from_str(c).map_err(|e| corrupt("credits", e.to_string())))
            .transpose()?;
        let key = if row.owner.is_some() || !ratelimits.is_empty() || ledger.is_some() {
            key.with_limits(LimitSpec {
                owner: row.owner.map(str::to_owned),
                ratelimits,
                ledger,
            })
        } else {
            key
        };
        Ok((hash, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_list::TABLE;
    use keyledger_domain::{Environment, KeyPrefix, RawKey};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn row<'r>(id: &'r str, hash: &'r str, prefix: &'r str) -> IndexFields<'r> {
        IndexFields {
            id,
            tenant: "acme",
            key_hash: hash,
            name: "k",
            environment: "live",
            permissions: r#"["a:read"]"#,
            status: STATUS_ACTIVE,
            expires_at: None,
            prefix,
            owner: None,
            ratelimits: "[]",
            credits: None,
            allowed_ips: "[]",
            imported: 0,
        }
    }

    /// Rows of `n` keys: (id, hash in hex, display prefix).
    fn rows(n: u64) -> Vec<(String, String, String)> {
        let mut rng = StdRng::seed_from_u64(3);
        (0..n)
            .map(|i| {
                let raw = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rng);
                let parsed = raw.parsed();
                (
                    format!("key_{i:032x}"),
                    parsed.hash().to_hex(),
                    parsed.display_prefix(),
                )
            })
            .collect()
    }

    #[test]
    fn every_row_read_on_one_thread_is_inserted_on_the_other() {
        // More rows than a batch, and not a multiple of one.
        let n = BATCH_ROWS as u64 * 3 + 17;
        let rows = rows(n);
        let index = VerificationIndex::with_capacity(rows.len());
        load_in_parallel(&index, |load| {
            for (id, hash, prefix) in &rows {
                load.add(row(id, hash, prefix))?;
            }
            Ok(())
        })
        .expect("loaded");
        assert_eq!(index.len(), rows.len());
        assert_eq!(index.tenant_keys("acme"), n);
    }

    #[test]
    fn an_unreadable_row_fails_the_load_naming_it() {
        let rows = rows(5);
        let index = VerificationIndex::with_capacity(rows.len());
        let result = load_in_parallel(&index, |load| {
            for (id, hash, prefix) in &rows {
                load.add(row(id, hash, prefix))?;
            }
            load.add(row("key_bad", "not hex", &rows[0].2))
        });
        match result {
            Err(ProjectionError::CorruptRow { id, column, .. }) => {
                assert_eq!((id.as_str(), column), ("key_bad", "key_hash"));
            }
            other => panic!("expected a corrupt row, got {other:?}"),
        }
    }

    /// The index reads a few of the key list's columns: each must be one.
    #[test]
    fn the_index_reads_columns_of_the_key_list() {
        for column in INDEX_COLUMNS.split(", ") {
            assert!(TABLE.index_of(column).is_some(), "key_list has no {column}");
        }
    }
}
