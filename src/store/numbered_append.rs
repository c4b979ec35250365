//! Group commit's append on PostgreSQL: a batch of events, numbered under the
//! numbering lock, with the rows of the projection the store was given
//! ([`InlineProjection`]: the key list's and the audit log's, described by
//! the projections, never named here), in **one statement** that runs as its
//! own transaction (no `BEGIN`, no `COMMIT`: one round trip).
//!
//! Every giver of positions holds the numbering lock until it commits
//! (migrations/postgres/0008), so the lock's hold time bounds how many batches
//! commit per second. Each round trip under the lock is one the other worker
//! waits for; the earlier version sent seven (reserve, insert events, lock the
//! checkpoints, insert key-list rows, insert audit rows, move the checkpoints,
//! commit) and decoded the batch in between. Here everything that does not need
//! the positions (decoding, building the projection rows) happens before the
//! statement, with positions counted from 1; the statement adds the base it
//! reserved. The statement text never changes with the batch size, so it is
//! prepared once per connection (the arrays carry the rows).
//!
//! Each projection's rows are written only when its checkpoint stands exactly
//! at the reserved base (the `moved` step): otherwise other events are still
//! to be applied to it first, and the tailer applies this batch after them.
//! The two are decided apart because they can stand apart (a rebuild of one
//! of them swaps it in at the head it started from): a batch that moved one
//! checkpoint must write that projection's rows, or they would be skipped for
//! good. `projected` (all written) is what lets this node's index take the
//! batch from memory.
//! That test sits in the `SET`, not the `WHERE`: the statement's snapshot is
//! older than the lock it waits for, and under READ COMMITTED a `WHERE` on a
//! row another batch has moved meanwhile is judged on the old version (and
//! fails), while `SET` is computed on the newest version.

use keyledger_sql::{InlineProjection, InlineTable, SqlType, Value};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgConnection};

use crate::error::Error;
use crate::store::backend::{Appended, NewEvent};
use crate::store::feed::store_error;

/// The statement for a projection's tables (none: events only), with its
/// parameters' layout. Its text never changes with the batch size, so it is
/// prepared once per connection (the arrays carry the rows).
pub struct Statement {
    sql: String,
    tables: Vec<InlineTable>,
}

/// `$1..$7` are the events' columns, `$8` the number of events; then, per
/// table, its checkpoint's name and one array per column. Positions in the
/// arrays count from 1 and get the reserved base added here.
impl Statement {
    pub fn new(inline: Option<&dyn InlineProjection>) -> Self {
        let tables = inline.map(|p| p.tables()).unwrap_or_default();
        // `$1..$8` are the events' and the count; the tables' follow.
        let mut params = 8..;
        let mut next = move || params.next().map_or(0, |n| n + 1);
        let mut checkpoints = Vec::new();
        let mut writes = Vec::new();
        for (t, table) in tables.iter().enumerate() {
            let checkpoint = next();
            checkpoints.push(format!("${checkpoint}"));
            let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
            let arrays: Vec<String> = table
                .columns
                .iter()
                .map(|(_, ty)| {
                    let n = next();
                    match ty {
                        SqlType::Text => format!("${n}::text[]"),
                        SqlType::Int => format!("${n}::int8[]"),
                    }
                })
                .collect();
            let select: Vec<String> = names
                .iter()
                .map(|c| {
                    if *c == table.position {
                        format!("b.after + r.{c}")
                    } else {
                        format!("r.{c}")
                    }
                })
                .collect();
            writes.push(format!(
                "t{t} AS ( \
                    INSERT INTO {name} ({columns}) \
                    SELECT {select} FROM base b, UNNEST({arrays}) AS r({columns}) \
                     WHERE EXISTS (SELECT 1 FROM moved m WHERE m.name = ${checkpoint} AND m.ok) \
                    ON CONFLICT ({key}) DO NOTHING), ",
                name = table.name,
                columns = names.join(", "),
                select = select.join(", "),
                arrays = arrays.join(", "),
                key = table.key,
            ));
        }
        let projected = if tables.is_empty() {
            "SELECT false AS yes".to_string()
        } else {
            format!(
                "SELECT count(*) FILTER (WHERE ok) = {} AS yes FROM moved",
                tables.len()
            )
        };
        let moved = if tables.is_empty() {
            String::new()
        } else {
            format!(
                "moved AS ( \
                    UPDATE projection_checkpoints c \
                       SET position = CASE WHEN c.position = b.after THEN b.after + $8 \
                                           ELSE c.position END \
                      FROM base b \
                     WHERE c.name IN ({}) \
                    RETURNING c.name, c.position = b.after + $8 AS ok), ",
                checkpoints.join(", ")
            )
        };
        let sql = format!(
            "WITH base AS MATERIALIZED (SELECT keyledger_reserve_positions($8) AS after), \
             appended AS ( \
                INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                                    event_version, payload, metadata, global_position) \
                SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                       e.event_version, e.payload::json, e.metadata::json, b.after + e.n \
                  FROM base b, UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], \
                                      $5::text[], $6::text[], $7::text[]) WITH ORDINALITY \
                       AS e(aggregate_type, aggregate_id, sequence, event_type, \
                            event_version, payload, metadata, n)), \
             {moved}{writes}projected AS ({projected}) \
             SELECT b.after, p.yes FROM base b, projected p",
            writes = writes.concat(),
        );
        Self { sql, tables }
    }

    /// Appends creates with their global positions, and their projection
    /// rows when the projection stands right before them, in one statement.
    /// A row whose stream already has that sequence fails the whole append
    /// with `Conflict`.
    pub async fn append(
        &self,
        conn: &mut PgConnection,
        batch: &[&NewEvent],
    ) -> Result<Appended, Error> {
        let count = i64::try_from(batch.len())
            .map_err(|e| Error::internal_from("a batch beyond i64", e))?;
        let ordinals: Vec<i64> = (1..=count).collect();
        let mut args = PgArguments::default();
        let add = |r: Result<(), Box<dyn std::error::Error + Send + Sync>>| {
            r.map_err(|e| Error::internal_from("binding group commit's arrays", e))
        };
        let texts = |f: fn(&NewEvent) -> &str| batch.iter().map(|e| f(e)).collect::<Vec<_>>();
        add(args.add(texts(|e| &e.stored.aggregate_type)))?;
        add(args.add(texts(|e| &e.stored.aggregate_id)))?;
        let sequences = batch
            .iter()
            .map(|e| i64::try_from(e.stored.sequence))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::internal_from("a sequence beyond i64", e))?;
        add(args.add(sequences))?;
        add(args.add(texts(|e| &e.stored.event_type)))?;
        add(args.add(texts(|e| &e.stored.event_version)))?;
        add(args.add(texts(|e| &e.payload)))?;
        add(args.add(texts(|e| &e.metadata)))?;
        add(args.add(count))?;
        for (t, table) in self.tables.iter().enumerate() {
            add(args.add(table.checkpoint))?;
            for (c, (name, ty)) in table.columns.iter().enumerate() {
                if *name == table.position {
                    add(args.add(&ordinals))?;
                    continue;
                }
                let value = |e| row_value(e, t, c);
                match ty {
                    SqlType::Text => {
                        let mut column: Vec<Option<&str>> = Vec::with_capacity(batch.len());
                        for e in batch {
                            column.push(match value(e)? {
                                Some(Value::Text(t)) => t.as_deref(),
                                other => return Err(mismatch(table, name, other)),
                            });
                        }
                        add(args.add(column))?;
                    }
                    SqlType::Int => {
                        let mut column: Vec<Option<i64>> = Vec::with_capacity(batch.len());
                        for e in batch {
                            column.push(match value(e)? {
                                Some(Value::Int(i)) => *i,
                                other => return Err(mismatch(table, name, other)),
                            });
                        }
                        add(args.add(column))?;
                    }
                }
            }
        }
        let (after, projected) = sqlx::query_as_with::<_, (i64, bool), _>(&self.sql, args)
            .fetch_one(conn)
            .await
            .map_err(append_error)?;
        Ok(Appended {
            after,
            through: after + count,
            numbered: true,
            projected,
        })
    }
}

/// Value `c` of a create's row for table `t`.
fn row_value(e: &NewEvent, t: usize, c: usize) -> Result<Option<&Value>, Error> {
    let rows = e
        .rows
        .as_ref()
        .ok_or_else(|| Error::internal("a create was prepared without its projection rows"))?;
    Ok(rows.get(t).and_then(|row| row.get(c)))
}

/// A projection row whose value does not have its column's type: a bug in
/// the projection, refused before anything is written.
fn mismatch(table: &InlineTable, column: &str, value: Option<&Value>) -> Error {
    Error::internal(format!(
        "{}.{column}: the projection gave {value:?} for it",
        table.name
    ))
}

fn append_error(e: sqlx::Error) -> Error {
    match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "23505" => Error::Conflict,
        _ => store_error(e),
    }
}
