//! The one error type of the projections crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProjectionError {
    /// The projection database failed or is unreachable.
    #[error("projection database error")]
    Database(#[from] sqlx::Error),
    /// The key list could not be read into the verification index.
    #[error("loading the verification index")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Rows could not be bulk-loaded into a rebuild's scratch table.
    #[error("bulk-loading {table}")]
    BulkLoad {
        table: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A rule of this crate was broken (a bug, never input).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A stored event could not be read as any known event. The projection stops
    /// before it rather than skip it: skipping would make the view silently wrong.
    #[error("event at position {position} cannot be decoded: {message}")]
    Decode {
        position: i64,
        message: String,
        /// The parser's error, where one said no.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// A projection row does not read back as what was written.
    #[error("{table} row {id}: {column} is corrupt: {message}")]
    CorruptRow {
        table: &'static str,
        id: String,
        column: &'static str,
        message: String,
    },
    /// A query parameter (cursor, filter) is not valid.
    #[error("{field}: {message}")]
    InvalidQuery {
        field: &'static str,
        message: String,
    },
}

impl ProjectionError {
    /// Whether the projection database is unreachable or overloaded (a
    /// retry may succeed), rather than something being wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Database(e) if keyledger_sql::is_unavailable(e))
    }
}
