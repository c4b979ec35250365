//! The one error type of the binary crate. `http/error.rs` maps it to status codes
//! and JSON bodies in one place; the CLI prints it.

use keyledger_domain::DomainError;
use keyledger_projections::ProjectionError;
use thiserror::Error;

impl Error {
    /// This failure as one that came after a commit (`Committed`), which
    /// an answer must not report as nothing having changed.
    pub fn after_commit(self) -> Error {
        match self {
            e @ Error::Committed(_) => e,
            e => Error::Committed(Box::new(e)),
        }
    }
}

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
    /// No such webhook endpoint for this tenant.
    #[error("webhook endpoint not found")]
    WebhookNotFound,
    /// No such message of the endpoint.
    #[error("no message with this id was sent to this endpoint")]
    DeliveryNotFound,
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
    /// An imported key's hash is held by another key that cannot be it (of
    /// another tenant, or deleted).
    #[error("{0}")]
    ImportRefused(String),
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
    /// Anything else: what was being done, and the error that stopped it
    /// (none where a rule of this program was broken). Logged with its
    /// cause, never sent to a client.
    // The cause is in the text too, as before causes were kept: a log line
    // or a CLI message reads whole (and the `cause` field holds the chain).
    #[error("internal error: {context}{}", cause_suffix(.source))]
    Internal {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

fn cause_suffix(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

/// An error of any kind, kept as the source of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Error {
    /// Whether a command that failed with this error may have been committed
    /// all the same (the store or the connection failed around the commit).
    /// Every other error is a refusal: nothing was written.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::StoreUnavailable(_)
                | Self::Internal { .. }
                | Self::Projection(_)
                | Self::UnreadableEvent { .. }
                | Self::Committed(_)
        )
    }

    /// The store could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::StoreUnavailable(_))
    }

    /// A broken rule of this program, with no other error behind it.
    pub fn internal(context: impl Into<String>) -> Self {
        Self::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// `source` stopped what `context` says was being done.
    pub fn internal_from(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error and its causes, `a: b: c`, for a person to read (the CLI).
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        // thiserror's `#[error(transparent)]` and wrappers that print their
        // source already hold it.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
