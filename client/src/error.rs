//! [`Error`]: what a call can fail with, the API's error codes included.

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codes::{ErrorCode, VerificationCode};

/// The `{"code","message","details"?}` of an error: a whole answer's (inside
/// `{"error": ...}`) or one import item's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation (generic for 5xx).
    #[serde(default)]
    pub message: String,
    /// For `validation_failed`: `{"field": <name>}`; for `policy_violation`:
    /// `{"rule": <policy field>}`; for `/v1/auth` refusals:
    /// `{"verification": <code>}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ApiErrorDetail {
    /// `details.field`: the field, parameter or header a `validation_failed`
    /// names.
    pub fn field(&self) -> Option<&str> {
        self.details.as_ref()?.get("field")?.as_str()
    }

    /// `details.rule`: the policy field a `policy_violation` names.
    pub fn rule(&self) -> Option<&str> {
        self.details.as_ref()?.get("rule")?.as_str()
    }
}

/// An answer that could not be read as what the call expects.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct DecodeError {
    /// The answer's status.
    pub status: StatusCode,
    /// What was wrong with it (never the body itself).
    pub reason: String,
    /// The answer was larger than the client reads
    /// ([`ClientBuilder::max_response_bytes`](crate::ClientBuilder::max_response_bytes)).
    pub too_large: bool,
}

/// What a call of [`Client`](crate::Client) fails with.
///
/// ```
/// use keyledger_client::{Error, ErrorCode};
///
/// fn describe(e: &Error) -> &'static str {
///     match e {
///         Error::Api { code: ErrorCode::KeyNotFound, .. } => "no such key",
///         Error::Api { code: ErrorCode::ValidationFailed, .. } => "bad request",
///         e if e.is_retryable() => "try again later",
///         _ => "failed",
///     }
/// }
/// # let _ = describe;
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// keyledger refused the request with one of its error codes.
    #[error("{status}: {code}: {message}")]
    Api {
        status: StatusCode,
        code: ErrorCode,
        message: String,
        /// `details` of the error body, e.g. `{"field": "name"}`.
        details: Option<Value>,
        /// `Retry-After` of the answer (429 and some 503), in seconds.
        retry_after: Option<Duration>,
        /// `X-Request-Id` of the answer: the server logs it.
        request_id: Option<String>,
    },
    /// An error status without keyledger's error body: something between the
    /// client and keyledger answered (a proxy's 502), or not keyledger.
    #[error("{status}")]
    UnexpectedStatus {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// No answer: the connection failed, timed out or broke off.
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// An answer that is not what the call expects (or larger than allowed).
    #[error("unreadable answer: {0}")]
    Decode(#[from] DecodeError),
    /// The client is set up wrong (a base URL that is not http(s), ...).
    #[error("client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The answer's status, when there was an answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } | Self::UnexpectedStatus { status, .. } => Some(*status),
            Self::Decode(d) => Some(d.status),
            Self::Transport(e) => e.status(),
            Self::Config(_) => None,
        }
    }

    /// The API's error code.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The `details` of the API's error body.
    pub fn details(&self) -> Option<&Value> {
        match self {
            Self::Api { details, .. } => details.as_ref(),
            _ => None,
        }
    }

    /// `details.field` of a `validation_failed`: the field, parameter or
    /// header at fault.
    pub fn field(&self) -> Option<&str> {
        self.details()?.get("field")?.as_str()
    }

    /// `details.verification` of a `GET /v1/auth` refusal: why the key was
    /// refused.
    pub fn verification_code(&self) -> Option<VerificationCode> {
        Some(self.details()?.get("verification")?.as_str()?.into())
    }

    /// How long the server asked to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } | Self::UnexpectedStatus { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether the same request may succeed later: no answer at all, 429,
    /// `store_unavailable`, and a proxy's 502, 503 or 504. A command that got
    /// no answer may have been committed: retry creates and rotations with an
    /// `Idempotency-Key`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, code, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || *code == ErrorCode::StoreUnavailable
            }
            Self::UnexpectedStatus { status, .. } => {
                matches!(status.as_u16(), 429 | 502 | 503 | 504)
            }
            Self::Decode(_) | Self::Config(_) => false,
        }
    }

    /// The error an answer with an error `status` stands for.
    pub(crate) fn from_answer(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Body {
            error: ApiErrorDetail,
        }
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match serde_json::from_slice::<Body>(body) {
            Ok(Body { error }) => Self::Api {
                status,
                code: error.code,
                message: error.message,
                details: error.details,
                retry_after,
                request_id: headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            },
            Err(_) => Self::UnexpectedStatus {
                status,
                retry_after,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_becomes_an_api_error_and_anything_else_a_status() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "60".parse().expect("value"));
        headers.insert("x-request-id", "req-1".parse().expect("value"));
        let e = Error::from_answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            &headers,
            br#"{"error":{"code":"validation_failed","message":"name: too long","details":{"field":"name"},"new":1}}"#,
        );
        assert_eq!(e.code(), Some(&ErrorCode::ValidationFailed));
        assert_eq!(e.field(), Some("name"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));
        assert!(matches!(&e, Error::Api { request_id: Some(r), .. } if r == "req-1"));
        assert_eq!(
            e.to_string(),
            "422 Unprocessable Entity: validation_failed: name: too long"
        );

        let e = Error::from_answer(StatusCode::BAD_GATEWAY, &http::HeaderMap::new(), b"<html>");
        assert!(matches!(e, Error::UnexpectedStatus { .. }));
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "502 Bad Gateway");
    }
}
