//! How a projection's table is described, once: its columns (name, type,
//! nullability), primary key and indexes, and how its row type turns into
//! values and back. DDL, column lists, inserts, `COPY` and group commit's
//! arrays are all derived from a [`Table`] and its [`Record`] type; the
//! migrations restate the DDL, and `tests/stores` checks that the migrated
//! tables are what the definitions say, on both engines.
//!
//! A row's values are a `[Value; N]` with `N` the table's column count, so a
//! column added to the table and not to its row type (or the other way round)
//! does not compile.

use chrono::{DateTime, Utc};
use keyledger_sql::Engine;
pub use keyledger_sql::{SqlType, Value};

use crate::error::ProjectionError;

/// One column of a projection table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: SqlType,
    pub nullable: bool,
}

impl Column {
    pub const fn text(name: &'static str) -> Self {
        Self {
            name,
            ty: SqlType::Text,
            nullable: false,
        }
    }

    pub const fn int(name: &'static str) -> Self {
        Self {
            name,
            ty: SqlType::Int,
            nullable: false,
        }
    }

    pub const fn nullable(self) -> Self {
        Self {
            nullable: true,
            ..self
        }
    }
}

/// A secondary index: name prefix and column list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Index {
    pub name: &'static str,
    pub columns: &'static str,
}

/// A projection table with `N` columns.
#[derive(Debug)]
pub struct Table<const N: usize> {
    /// The live table's name.
    pub name: &'static str,
    /// The table a rebuild loads before swapping it in.
    pub scratch: &'static str,
    /// The checkpoint row of this projection.
    pub checkpoint: &'static str,
    pub columns: [Column; N],
    pub primary_key: &'static str,
    pub indexes: &'static [Index],
}

impl<const N: usize> Table<N> {
    /// `a, b, c`: every column, in order.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `CREATE TABLE` for `table` (the live or the scratch name). Constraint
    /// names carry `suffix` because PostgreSQL's are global and a rebuilt
    /// table is renamed after loading.
    pub fn create<DB: Engine>(&self, table: &str, suffix: &str) -> String {
        let columns = self
            .columns
            .iter()
            .map(|c| {
                let ty = match c.ty {
                    SqlType::Text => "TEXT",
                    SqlType::Int => DB::INT,
                };
                let null = if c.nullable { "" } else { " NOT NULL" };
                format!("{} {ty}{null}", c.name)
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "CREATE TABLE {table} ({columns}, CONSTRAINT {}_pk_{suffix} PRIMARY KEY ({})){}",
            self.name,
            self.primary_key,
            DB::TABLE_OPTIONS
        )
    }

    /// `CREATE INDEX` statements for `table`, built after a bulk load.
    pub fn create_indexes(&self, table: &str, suffix: &str) -> Vec<String> {
        self.indexes
            .iter()
            .map(|i| {
                format!(
                    "CREATE INDEX {}_{suffix} ON {table} ({})",
                    i.name, i.columns
                )
            })
            .collect()
    }

    /// The position of a column, by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// Constructors of the values of projection rows.
pub trait ValueOf {
    fn text(s: impl Into<String>) -> Self;
    fn time(t: DateTime<Utc>) -> Self;
    fn opt_time(t: Option<DateTime<Utc>>) -> Self;
}

impl ValueOf for Value {
    fn text(s: impl Into<String>) -> Self {
        Self::Text(Some(s.into()))
    }

    fn time(t: DateTime<Utc>) -> Self {
        Self::Int(Some(t.timestamp_millis()))
    }

    fn opt_time(t: Option<DateTime<Utc>>) -> Self {
        Self::Int(t.map(|t| t.timestamp_millis()))
    }
}

/// A projection's row type: what it writes to its table and reads back.
pub trait Record<const N: usize>: Sized {
    /// The table the rows live in.
    const TABLE: &'static Table<N>;

    /// This row's values, one per column, in the table's order.
    fn values(&self) -> [Value; N];

    /// The row from its values as read back; a value that is not what
    /// `values` would have written is [`ProjectionError::CorruptRow`].
    fn from_values(values: [Value; N]) -> Result<Self, ProjectionError>;
}

/// Reads a row's values in the table's order, by type: what [`Record`]'s
/// `from_values` takes. Rows of any engine read the same way.
pub(crate) fn read_values<const N: usize, R>(
    table: &Table<N>,
    row: &R,
) -> Result<[Value; N], ProjectionError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut values = Vec::with_capacity(N);
    for (i, column) in table.columns.iter().enumerate() {
        values.push(match column.ty {
            SqlType::Text => Value::Text(row.try_get(i)?),
            SqlType::Int => Value::Int(row.try_get(i)?),
        });
    }
    values
        .try_into()
        .map_err(|_| ProjectionError::Internal("a row's values do not match its table"))
}

/// Takes a row's values apart again, naming the row and column in every
/// error: the counterpart of [`Record::values`].
pub struct Fields<const N: usize> {
    table: &'static str,
    id: String,
    values: std::array::IntoIter<Value, N>,
    columns: std::slice::Iter<'static, Column>,
}

impl<const N: usize> Fields<N> {
    /// The fields of a row whose value number `id_at` identifies it in errors.
    pub fn new(table: &'static Table<N>, values: [Value; N], id_at: usize) -> Self {
        let id = match values.get(id_at) {
            Some(Value::Text(Some(t))) => t.clone(),
            Some(Value::Int(Some(i))) => i.to_string(),
            _ => "?".to_string(),
        };
        Self {
            table: table.name,
            id,
            values: values.into_iter(),
            columns: table.columns.iter(),
        }
    }

    fn next(&mut self) -> Result<(&'static str, Value), ProjectionError> {
        match (self.columns.next(), self.values.next()) {
            (Some(c), Some(v)) => Ok((c.name, v)),
            _ => Err(ProjectionError::Internal("read past a row's last column")),
        }
    }

    /// An error naming this row and `column`.
    pub fn corrupt(&self, column: &'static str, why: impl ToString) -> ProjectionError {
        ProjectionError::CorruptRow {
            table: self.table,
            id: self.id.clone(),
            column,
            message: why.to_string(),
        }
    }

    pub fn opt_text(&mut self) -> Result<Option<String>, ProjectionError> {
        match self.next()? {
            (_, Value::Text(t)) => Ok(t),
            (c, other) => Err(self.corrupt(c, format!("{other:?} is not text"))),
        }
    }

    pub fn text(&mut self) -> Result<String, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        self.opt_text()?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    pub fn opt_int(&mut self) -> Result<Option<i64>, ProjectionError> {
        match self.next()? {
            (_, Value::Int(i)) => Ok(i),
            (c, other) => Err(self.corrupt(c, format!("{other:?} is not an integer"))),
        }
    }

    pub fn int(&mut self) -> Result<i64, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        self.opt_int()?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    pub fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        self.opt_int()?
            .map(|ms| {
                DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| self.corrupt(column, format!("{ms} is not a time")))
            })
            .transpose()
    }

    pub fn time(&mut self) -> Result<DateTime<Utc>, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        self.opt_time()?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    /// JSON text as the projection stored it (no depth limit: see
    /// `keyledger_domain::json::parse_stored`).
    pub fn opt_json(&mut self) -> Result<Option<serde_json::Value>, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        self.opt_text()?
            .map(|t| keyledger_domain::json::parse_stored(&t).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    pub fn json(&mut self) -> Result<serde_json::Value, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        self.opt_json()?
            .ok_or_else(|| self.corrupt(column, "is NULL"))
    }

    /// JSON text that must read as `T`.
    pub fn json_as<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        let text = self.text()?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(column, e))
    }

    pub fn opt_json_as<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, ProjectionError> {
        let column = self.columns.clone().next().map_or("?", |c| c.name);
        self.opt_text()?
            .map(|t| serde_json::from_str(&t).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }
}

/// JSON text of a list of strings (permissions), as stored.
pub fn strings_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}
