//! `Error` -> HTTP status and the contract's JSON body
//! `{"error":{"code","message","details"?}}`. The message of a 5xx is generic;
//! the cause goes to the log, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyledger_domain::DomainError;
use keyledger_projections::ProjectionError;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::error::Error;

/// The error body of every failed request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `validation_failed`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// For `validation_failed`: `{"field": <name>}`; for `policy_violation`:
    /// `{"rule": <the tenant policy's field>}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

struct Parts {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

fn parts(error: &Error) -> Parts {
    let p = |status, code, message: String| Parts {
        status,
        code,
        message,
        details: None,
    };
    match error {
        Error::Domain(DomainError::Validation { field, message }) => Parts {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: format!("{field}: {message}"),
            details: Some(json!({ "field": field })),
        },
        Error::Validation { field, message } => Parts {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: format!("{field}: {message}"),
            details: Some(json!({ "field": field })),
        },
        Error::Domain(DomainError::PolicyViolation { rule, message }) => Parts {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "policy_violation",
            message: format!("the tenant policy's {rule} rule refuses this: {message}"),
            details: Some(json!({ "rule": rule })),
        },
        Error::Projection(ProjectionError::InvalidQuery { field, message }) => Parts {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            message: format!("{field}: {message}"),
            details: Some(json!({ "field": field })),
        },
        Error::Domain(DomainError::NotFound | DomainError::AlreadyDeleted) | Error::KeyNotFound => {
            p(
                StatusCode::NOT_FOUND,
                "key_not_found",
                "key not found".into(),
            )
        }
        Error::Domain(DomainError::AlreadyRotated) => p(
            StatusCode::CONFLICT,
            "conflict",
            "key was already rotated; rotate its successor instead".into(),
        ),
        // A state of the key, like a rotation already done: 409, with a code of
        // its own so a client can tell that retrying will not help.
        Error::Domain(DomainError::Expired) => p(
            StatusCode::CONFLICT,
            "key_expired",
            "key has expired and cannot be rotated; create a new key instead".into(),
        ),
        Error::Domain(DomainError::AlreadyExists) => p(
            StatusCode::CONFLICT,
            "conflict",
            "key already exists".into(),
        ),
        Error::KeyLimitReached { .. } => Parts {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "key_limit_reached",
            message: error.to_string(),
            details: Some(json!({ "field": "tenant" })),
        },
        Error::RateLimited => p(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            error.to_string(),
        ),
        Error::RequestTimeout => p(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            error.to_string(),
        ),
        Error::IdempotencyKeyReused => p(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            error.to_string(),
        ),
        Error::Conflict => p(StatusCode::CONFLICT, "conflict", error.to_string()),
        Error::ImportRefused(message) => {
            p(StatusCode::CONFLICT, "import_conflict", message.clone())
        }
        Error::MalformedRequest(m) => p(StatusCode::BAD_REQUEST, "malformed_request", m.clone()),
        Error::PayloadTooLarge { .. } => p(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            error.to_string(),
        ),
        Error::Unauthorized(m) => p(StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
        Error::ApiKeyNotAllowed => p(
            StatusCode::FORBIDDEN,
            "api_key_not_allowed",
            error.to_string(),
        ),
        Error::RouteNotFound => p(StatusCode::NOT_FOUND, "not_found", error.to_string()),
        Error::DeliveryNotFound => p(
            StatusCode::NOT_FOUND,
            "delivery_not_found",
            error.to_string(),
        ),
        Error::WebhookNotFound => p(
            StatusCode::NOT_FOUND,
            "webhook_not_found",
            error.to_string(),
        ),
        Error::MethodNotAllowed => p(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            error.to_string(),
        ),
        Error::Committed(_) => Parts {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "committed_not_visible",
            message: "the change was committed, but this node cannot show its effect yet; \
                      read the key to see it"
                .into(),
            details: None,
        },
        Error::StoreUnavailable(_) => unavailable(),
        Error::Projection(e) if e.is_unavailable() => unavailable(),
        Error::Domain(DomainError::MalformedKey { .. } | DomainError::InvalidKeyPrefix)
        | Error::Projection(_)
        | Error::UnreadableEvent { .. }
        | Error::Config(_)
        | Error::Internal { .. } => p(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log".into(),
        ),
    }
}

fn unavailable() -> Parts {
    Parts {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "store_unavailable",
        // Not "nothing was changed": a store that failed around a commit
        // cannot say. A create or rotation retried with the same
        // Idempotency-Key never makes a second key.
        message: "the event store is unavailable; retry later".into(),
        details: None,
    }
}

/// The `{"code","message","details"?}` of an error that is answered inside a
/// successful response (an item of a batch), logged as a response's would be.
pub fn detail(error: &Error) -> ErrorDetail {
    let parts = parts(error);
    if parts.status.is_server_error() {
        tracing::error!(error = %error, cause = ?std::error::Error::source(error), "item failed");
    }
    ErrorDetail {
        code: parts.code.to_string(),
        message: parts.message,
        details: parts.details,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let parts = parts(&self);
        if parts.status.is_server_error() {
            tracing::error!(error = %self, cause = ?std::error::Error::source(&self), "request failed");
        } else {
            tracing::debug!(code = parts.code, "request rejected");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: parts.code.to_string(),
                message: parts.message,
                details: parts.details,
            },
        };
        let mut response = (parts.status, Json(body)).into_response();
        if parts.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        if parts.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
