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
    use super::INDEX_COLUMNS;
    use crate::key_list::TABLE;

    /// The index reads a few of the key list's columns: each must be one.
    #[test]
    fn the_index_reads_columns_of_the_key_list() {
        for column in INDEX_COLUMNS.split(", ") {
            assert!(TABLE.index_of(column).is_some(), "key_list has no {column}");
        }
    }
}
