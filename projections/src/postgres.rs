//! What the projections do differently on PostgreSQL: bulk loads go through
//! `COPY … FROM STDIN` (several times faster than multi-row INSERTs for
//! rebuilds), and the verification index streams the key list from one
//! snapshot.

use std::fmt::Write as _;

use async_trait::async_trait;
use sqlx::{Pool, Postgres, Row};

use crate::checkpoint;
use crate::error::ProjectionError;
use crate::index_load::{IndexFields, IndexLoader, IndexSource, INDEX_COLUMNS};
use crate::schema::{Record, Value};
use crate::sql::BulkLoad;
use crate::verification::VerificationIndex;

/// Appends one field in COPY text format. Most text has nothing to escape and
/// is copied whole.
fn field(out: &mut String, value: &Value) {
    match value {
        Value::Text(None) | Value::Int(None) => out.push_str("\\N"),
        Value::Int(Some(n)) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "{n}");
        }
        Value::Text(Some(v)) if !v.contains(['\\', '\t', '\n', '\r']) => out.push_str(v),
        Value::Text(Some(v)) => {
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

#[async_trait]
impl BulkLoad for Postgres {
    async fn load<const N: usize, R: Record<N> + Sync>(
        pool: &Pool<Self>,
        table: &str,
        rows: &[R],
    ) -> Result<(), ProjectionError> {
        let mut data = String::with_capacity(rows.len() * 400);
        for r in rows {
            for (i, v) in r.values().iter().enumerate() {
                if i > 0 {
                    data.push('\t');
                }
                field(&mut data, v);
            }
            data.push('\n');
        }
        let mut conn = pool.acquire().await?;
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY {table} ({}) FROM STDIN",
                R::TABLE.column_list()
            ))
            .await?;
        copy.send(data.into_bytes()).await?;
        copy.finish().await?;
        Ok(())
    }
}

#[async_trait]
impl IndexSource for Postgres {
    /// Rows and checkpoint from one snapshot; rows are streamed into a map
    /// sized for them.
    async fn load_index(pool: &Pool<Self>) -> Result<VerificationIndex, ProjectionError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        let cp: Option<i64> =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(checkpoint::KEY_LIST)
                .fetch_optional(&mut *tx)
                .await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_list")
            .fetch_one(&mut *tx)
            .await?;
        let index = VerificationIndex::with_capacity(usize::try_from(n).unwrap_or(0));
        {
            let sql = format!("SELECT {INDEX_COLUMNS} FROM key_list");
            let mut rows = sqlx::query(&sql).fetch(&mut *tx);
            let mut loader = IndexLoader::default();
            while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
                let fields = IndexFields {
                    id: row.try_get(0)?,
                    tenant: row.try_get(1)?,
                    key_hash: row.try_get(2)?,
                    name: row.try_get(3)?,
                    environment: row.try_get(4)?,
                    permissions: row.try_get(5)?,
                    status: row.try_get(6)?,
                    expires_at: row.try_get(7)?,
                    prefix: row.try_get(8)?,
                    owner: row.try_get(9)?,
                    ratelimits: row.try_get(10)?,
                    credits: row.try_get(11)?,
                    allowed_ips: row.try_get(12)?,
                    imported: row.try_get(13)?,
                };
                loader.add(&index, fields)?;
            }
        }
        tx.commit().await?;
        index.set_checkpoint(cp.unwrap_or(0));
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copied(value: Value) -> String {
        let mut out = String::new();
        field(&mut out, &value);
        out
    }

    #[test]
    fn copy_fields_escape_what_the_text_format_reads_specially() {
        assert_eq!(copied(Value::Text(None)), "\\N");
        assert_eq!(copied(Value::Int(None)), "\\N");
        assert_eq!(copied(Value::Int(Some(-42))), "-42");
        assert_eq!(
            copied(Value::Text(Some("plain \u{e9} \"x\"".into()))),
            "plain \u{e9} \"x\""
        );
        assert_eq!(
            copied(Value::Text(Some("a\tb\\c\nd\re \u{e9}".into()))),
            "a\\tb\\\\c\\nd\\re \u{e9}"
        );
    }
}
