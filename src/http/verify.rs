//! POST /v1/keys/verify: the hot path. Answers from the in-memory index only.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use keyledger_domain::Environment;
use keyledger_projections::{KeyIdText, VerificationCode, VerifyRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiJson, ClientAddr};
use crate::http::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// The presented API key.
    pub key: String,
    /// Required environment (`live` or `test`), if any.
    #[schema(pattern = "^(live|test)$")]
    pub environment: Option<String>,
    /// Permissions that must all be granted.
    pub permissions: Option<Vec<String>>,
}

/// The verification answer. Key fields are present when the key exists. Its
/// text is borrowed from the index entry: the answer is serialised while the
/// index holds the entry, into one buffer, instead of copying every field.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView<'a> {
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `DISABLED`, `EXPIRED`, `WRONG_ENVIRONMENT`, `INSUFFICIENT_PERMISSIONS`.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<&'a [String]>,
    /// Present (possibly null) when the key exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

/// The contract's name of a verification code.
pub fn code_name(code: VerificationCode) -> &'static str {
    match code {
        VerificationCode::Valid => "VALID",
        VerificationCode::NotFound => "NOT_FOUND",
        VerificationCode::Disabled => "DISABLED",
        VerificationCode::Expired => "EXPIRED",
        VerificationCode::WrongEnvironment => "WRONG_ENVIRONMENT",
        VerificationCode::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
    }
}

/// POST /v1/keys/verify
#[utoipa::path(post, path = "/v1/keys/verify", tag = "verification", request_body = VerifyBody,
    responses((status = 200, body = VerificationView), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<VerifyBody>,
) -> Result<Response, Error> {
    let at = state.service.clock().now();
    let now = at.timestamp();
    if client.is_some_and(|ip| state.failures.blocked(ip, now)) {
        return Err(Error::RateLimited);
    }
    let environment = body
        .environment
        .as_deref()
        .map(str::parse::<Environment>)
        .transpose()?;
    let permissions = body.permissions.unwrap_or_default();
    let request = VerifyRequest {
        key: &body.key,
        environment,
        permissions: &permissions,
    };
    let (code, body) = state.service.verify(request, at, |answer| {
        let key = answer.key;
        let mut id_text = KeyIdText::default();
        let view = VerificationView {
            valid: answer.valid(),
            code: code_name(answer.code),
            key_id: key.map(|k| k.key_id().as_str(&mut id_text)),
            tenant: key.map(|k| k.tenant()),
            name: key.map(|k| k.name()),
            environment: key.map(|k| k.environment().as_str()),
            permissions: key.map(|k| k.permissions().as_slice()),
            expires_at: key.map(|k| k.expires_at()),
        };
        // Sized for a full answer, so the buffer never grows while writing.
        let mut body = Vec::with_capacity(512);
        (
            answer.code,
            serde_json::to_writer(&mut body, &view).map(|()| body),
        )
    });
    let body = body.map_err(|e| Error::Internal(format!("verification answer: {e}")))?;
    crate::metrics::verification(code_name(code));
    if let (false, Some(ip)) = (code == VerificationCode::Valid, client) {
        state.failures.record_failure(ip, now);
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
