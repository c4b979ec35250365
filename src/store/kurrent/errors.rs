//! The one place KurrentDB client errors become ours: a wrong expected revision
//! is an optimistic-concurrency conflict, an unreachable or overloaded server is
//! "store unavailable" (503, retryable), anything else is internal.

use cqrs_es::persist::PersistenceError;
use kurrentdb::Error as KurrentError;

use crate::error::Error;

/// True when the server is unreachable, shutting down, not the leader, or too
/// slow: nothing was (knowingly) written and the request may be retried.
pub fn is_unavailable(e: &KurrentError) -> bool {
    use tonic::Code;
    match e {
        KurrentError::ConnectionClosed
        | KurrentError::GrpcConnectionError(_)
        | KurrentError::DeadlineExceeded
        | KurrentError::NotLeaderException(_)
        // Unavailable, Internal, DataLoss and Unknown statuses all land here.
        | KurrentError::ServerError(_) => true,
        KurrentError::Grpc { code, .. } => matches!(
            code,
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled
        ),
        _ => false,
    }
}

/// A client error as our error.
pub fn to_error(e: KurrentError) -> Error {
    match e {
        KurrentError::WrongExpectedVersion { .. } => Error::Conflict,
        e if is_unavailable(&e) => Error::StoreUnavailable(Box::new(e)),
        KurrentError::AccessDenied => {
            Error::internal("KurrentDB denied access: check the user and password in --event-store")
        }
        e => Error::internal_from("kurrentdb", e),
    }
}

/// A client error as cqrs-es's persistence error (for the repository).
pub fn to_persistence(e: KurrentError) -> PersistenceError {
    match e {
        KurrentError::WrongExpectedVersion { .. } => PersistenceError::OptimisticLockError,
        e if is_unavailable(&e) => PersistenceError::ConnectionError(Box::new(e)),
        e => PersistenceError::UnknownError(Box::new(e)),
    }
}

/// One of our errors as cqrs-es's persistence error.
pub fn error_to_persistence(e: Error) -> PersistenceError {
    match e {
        Error::Conflict => PersistenceError::OptimisticLockError,
        Error::StoreUnavailable(cause) => PersistenceError::ConnectionError(cause),
        e => PersistenceError::UnknownError(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kurrentdb::{CurrentRevision, GrpcConnectionError, StreamState};

    fn wrong_version() -> KurrentError {
        KurrentError::WrongExpectedVersion {
            expected: StreamState::StreamRevision(3),
            current: CurrentRevision::Current(4),
        }
    }

    #[test]
    fn a_wrong_expected_version_is_a_conflict() {
        assert!(matches!(to_error(wrong_version()), Error::Conflict));
        assert!(matches!(
            to_persistence(wrong_version()),
            PersistenceError::OptimisticLockError
        ));
        let no_stream = KurrentError::WrongExpectedVersion {
            expected: StreamState::NoStream,
            current: CurrentRevision::Current(0),
        };
        assert!(matches!(to_error(no_stream), Error::Conflict));
    }

    #[test]
    fn an_unreachable_server_is_store_unavailable() {
        for e in [
            KurrentError::GrpcConnectionError(GrpcConnectionError::Grpc(
                "client error (Connect)".into(),
            )),
            KurrentError::GrpcConnectionError(GrpcConnectionError::MaxDiscoveryAttemptReached(10)),
            KurrentError::ConnectionClosed,
            KurrentError::DeadlineExceeded,
            KurrentError::ServerError("status: Unavailable".into()),
            KurrentError::Grpc {
                code: tonic::Code::Unavailable,
                message: "down".into(),
            },
        ] {
            assert!(is_unavailable(&e), "{e}");
            assert!(
                matches!(
                    to_persistence(e.clone()),
                    PersistenceError::ConnectionError(_)
                ),
                "{e}"
            );
            assert!(matches!(to_error(e), Error::StoreUnavailable(_)));
        }
    }

    #[test]
    fn the_unavailable_cause_is_recognised_through_cqrs_es_wrapping() {
        let wrapped = to_persistence(KurrentError::ConnectionClosed);
        let PersistenceError::ConnectionError(cause) = wrapped else {
            panic!("not a connection error");
        };
        assert!(crate::store::is_unavailable(cause.as_ref()));
    }

    #[test]
    fn other_errors_are_internal() {
        for e in [
            KurrentError::AccessDenied,
            KurrentError::InternalParsingError("bad".into()),
            KurrentError::Grpc {
                code: tonic::Code::InvalidArgument,
                message: "bad position".into(),
            },
        ] {
            assert!(!is_unavailable(&e), "{e}");
            assert!(matches!(to_error(e.clone()), Error::Internal { .. }), "{e}");
            assert!(matches!(
                to_persistence(e),
                PersistenceError::UnknownError(_)
            ));
        }
    }

    #[test]
    fn our_errors_map_back_to_persistence_errors() {
        assert!(matches!(
            error_to_persistence(Error::Conflict),
            PersistenceError::OptimisticLockError
        ));
        assert!(matches!(
            error_to_persistence(to_error(KurrentError::ConnectionClosed)),
            PersistenceError::ConnectionError(_)
        ));
        assert!(matches!(
            error_to_persistence(Error::internal("x")),
            PersistenceError::UnknownError(_)
        ));
    }
}
