//! Telling "the database is not there right now" apart from real bugs, whatever
//! layer wrapped the sqlx (or KurrentDB client) error.

/// True when the error means the store is unreachable or overloaded (retryable,
/// answered 503), as opposed to a bug.
pub fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(sqlx_err) = err.downcast_ref::<sqlx::Error>() {
            return sqlx_unavailable(sqlx_err);
        }
        #[cfg(feature = "kurrentdb")]
        if let Some(kurrent_err) = err.downcast_ref::<kurrentdb::Error>() {
            return crate::store::kurrent::errors::is_unavailable(kurrent_err);
        }
        current = err.source();
    }
    false
}

/// Classifies a sqlx error.
pub fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        // A peer that answers garbage (a dying proxy or pooler) is as good as gone.
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6) after the busy timeout.
            // PostgreSQL: class 08 (connection), 57P (shutdown), 53 (resources).
            let code = db.code().unwrap_or_default();
            matches!(code.as_ref(), "5" | "6" | "517" | "262")
                || code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
        }
        _ => false,
    }
}
