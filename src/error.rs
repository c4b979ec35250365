//! The one error type of the binary crate. `http/error.rs` maps it to status codes
//! and JSON bodies in one place; the CLI prints it.

use keyledger_domain::DomainError;
use keyledger_projections::ProjectionError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A rule of the domain rejected the command.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The request is not JSON, or not the JSON we can read.
    #[error("{0}")]
    MalformedRequest(String),
    /// A field of the request is invalid; `field` names it.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Missing, malformed, badly signed or expired management credential.
    #[error("{0}")]
    Unauthorized(String),
    /// An API key was presented where a management token is required.
    #[error("API keys cannot manage keys: use a management token")]
    ApiKeyNotAllowed,
    /// No such key for this tenant.
    #[error("key not found")]
    KeyNotFound,
    /// No such route.
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// An `Idempotency-Key` was reused with a different request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// The tenant holds as many keys as it may.
    #[error("this tenant already holds {limit} keys, the most it may; delete some first")]
    KeyLimitReached { limit: u64 },
    /// Too many failed verifications from one client address.
    #[error("too many failed verifications from this address; retry in a minute")]
    RateLimited,
    /// The client did not send its body in time.
    #[error("the request body was not received in time")]
    RequestTimeout,
    /// Concurrent commands on one key kept colliding.
    #[error("the key was changed concurrently; retry the request")]
    Conflict,
    /// The event store cannot be reached; nothing was written.
    #[error("event store unavailable")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// A stored event's JSON does not parse: the row is corrupt.
    #[error("stored event {aggregate_id}#{sequence}: its {column} is not JSON")]
    UnreadableEvent {
        aggregate_id: String,
        sequence: i64,
        column: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The command's events are committed, but what follows (this node's
    /// projections catching up, reading the result) failed: the answer must
    /// say the change happened.
    #[error("committed, but its effect cannot be shown yet: {0}")]
    Committed(#[source] Box<Error>),
    #[error("configuration: {0}")]
    Config(String),
    /// Anything else; the cause is logged, never sent to a client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether a command that failed with this error may have been committed
    /// all the same (the store or the connection failed around the commit).
    /// Every other error is a refusal: nothing was written.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::StoreUnavailable(_)
                | Self::Internal(_)
                | Self::Projection(_)
                | Self::UnreadableEvent { .. }
                | Self::Committed(_)
        )
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }
}
