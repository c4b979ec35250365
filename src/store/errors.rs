//! Telling "the database is not there right now" apart from real bugs, whatever
//! layer wrapped the sqlx (or KurrentDB client) error; and the cqrs-es
//! errors of loads and appends as keyledger's.

use cqrs_es::persist::PersistenceError;
use cqrs_es::AggregateError;
use keyledger_domain::DomainError;

use crate::error::Error;

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

/// Classifies a sqlx error (see `keyledger_sql::is_unavailable`).
pub fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    keyledger_sql::is_unavailable(e)
}

/// The store's answer to an append, as keyledger's error.
pub(crate) fn persistence_error(e: PersistenceError) -> Error {
    match e {
        PersistenceError::OptimisticLockError => Error::Conflict,
        PersistenceError::ConnectionError(cause) => Error::StoreUnavailable(cause),
        PersistenceError::DeserializationError(cause) => {
            Error::internal_from("a stored event cannot be read", cause)
        }
        PersistenceError::UnknownError(cause) => {
            if is_unavailable(cause.as_ref()) {
                Error::StoreUnavailable(cause)
            } else {
                Error::internal_from("event store", cause)
            }
        }
    }
}

pub(crate) fn map_aggregate_error(e: AggregateError<DomainError>) -> Error {
    match e {
        AggregateError::UserError(d) => Error::Domain(d),
        AggregateError::AggregateConflict => Error::Conflict,
        AggregateError::DatabaseConnectionError(cause) => Error::StoreUnavailable(cause),
        AggregateError::DeserializationError(cause) => {
            Error::internal_from("a stored event cannot be read", cause)
        }
        AggregateError::UnexpectedError(cause) => {
            if is_unavailable(cause.as_ref()) {
                Error::StoreUnavailable(cause)
            } else {
                Error::internal_from("event store", cause)
            }
        }
    }
}
