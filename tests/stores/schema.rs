//! Each projection's table is defined once (`key_list::TABLE`,
//! `audit::TABLE`); the migrations restate its DDL. The tables a migrated
//! database holds, and the ones a rebuild creates from the definitions, must
//! be exactly what the definitions say: names, order, types, nullability and
//! primary key, on both engines.

use keyledger::rebuild::{rebuild, Which};
use keyledger_projections::schema::{Column, SqlType, Table};
use keyledger_projections::{audit, key_list, usage, Projections, SqlPool};

use crate::helpers::{Backend, TestStore};

/// A column as the database describes it.
#[derive(Debug, PartialEq, Eq)]
struct Described {
    name: String,
    ty: SqlType,
    nullable: bool,
    primary_key: bool,
}

fn wanted<const N: usize>(table: &Table<N>) -> Vec<Described> {
    table
        .columns
        .iter()
        .map(|c: &Column| Described {
            name: c.name.to_string(),
            ty: c.ty,
            nullable: c.nullable,
            // A composite key is `a, b, c`.
            primary_key: table.primary_key.split(", ").any(|k| k == c.name),
        })
        .collect()
}

fn sql_type(declared: &str) -> SqlType {
    match declared.to_ascii_lowercase().as_str() {
        "text" => SqlType::Text,
        "integer" | "bigint" => SqlType::Int,
        other => panic!("a projection column of type {other}"),
    }
}

async fn described(pool: &SqlPool, table: &str) -> Vec<Described> {
    match pool {
        SqlPool::Sqlite(p) => {
            let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(&format!(
                "SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}') ORDER BY cid"
            ))
            .fetch_all(p)
            .await
            .expect("table_info");
            rows.into_iter()
                .map(|(name, ty, not_null, pk)| Described {
                    name,
                    ty: sql_type(&ty),
                    // SQLite reports a PRIMARY KEY column NOT NULL only when said.
                    nullable: not_null == 0 && pk == 0,
                    primary_key: pk > 0,
                })
                .collect()
        }
        SqlPool::Postgres(p) => {
            let rows: Vec<(String, String, String, bool)> = sqlx::query_as(
                "SELECT c.column_name::text, c.data_type::text, c.is_nullable::text, \
                        EXISTS (SELECT 1 FROM information_schema.key_column_usage k \
                                JOIN information_schema.table_constraints t \
                                  ON t.constraint_name = k.constraint_name \
                                 AND t.table_name = k.table_name \
                                WHERE t.constraint_type = 'PRIMARY KEY' \
                                  AND k.table_name = c.table_name \
                                  AND k.column_name = c.column_name) \
                   FROM information_schema.columns c \
                  WHERE c.table_schema = current_schema() AND c.table_name = $1 \
                  ORDER BY c.ordinal_position",
            )
            .bind(table)
            .fetch_all(p)
            .await
            .expect("columns");
            rows.into_iter()
                .map(|(name, ty, nullable, pk)| Described {
                    name,
                    ty: sql_type(&ty),
                    nullable: nullable == "YES",
                    primary_key: pk,
                })
                .collect()
        }
    }
}

async fn check(pool: &SqlPool, when: &str) {
    assert_eq!(
        described(pool, key_list::TABLE.name).await,
        wanted(&key_list::TABLE),
        "key_list {when}"
    );
    assert_eq!(
        described(pool, audit::TABLE.name).await,
        wanted(&audit::TABLE),
        "audit_log {when}"
    );
    assert_eq!(
        described(pool, usage::TABLE.name).await,
        wanted(&usage::TABLE),
        "usage_buckets {when}"
    );
}

async fn migrated_and_rebuilt_tables_are_what_the_projections_define(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open");
    let pool = events.projection_db();
    check(&pool, "as migrated").await;
    let projections = Projections::unloaded(pool.clone());
    rebuild(&events, &projections, Which::All, &|_, _| {})
        .await
        .expect("rebuild");
    check(&pool, "as rebuilt").await;
    events.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tables_are_what_the_projections_define() {
    migrated_and_rebuilt_tables_are_what_the_projections_define(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tables_are_what_the_projections_define() {
    migrated_and_rebuilt_tables_are_what_the_projections_define(Backend::Postgres).await;
}
