//! POST /v1/keys/verify: the hot path. Answers from the in-memory index only.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use keyledger_domain::limits::MAX_COST;
use keyledger_domain::Environment;
use keyledger_projections::{KeyIdText, LimitReport, VerificationCode, VerifyRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiJson, ClientAddr};
use crate::http::state::AppState;

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
    /// Credits a `VALID` answer spends: 0-1000, default 1 (0 checks that
    /// credits are left without spending).
    #[schema(minimum = 0, maximum = 1000)]
    pub cost: Option<u64>,
    /// The caller's client address (IPv4 or IPv6), checked against the key's
    /// `allowed_ips`: a key with any answers `IP_NOT_ALLOWED` when it is
    /// outside them or not given.
    #[schema(value_type = Option<String>, example = "203.0.113.7")]
    pub ip: Option<std::net::IpAddr>,
}

/// The verification answer. Key fields are present when the key exists. Its
/// text is borrowed from the index entry: the answer is serialised while the
/// index holds the entry, into one buffer, instead of copying every field.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView<'a> {
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `DISABLED`, `EXPIRED`, `WRONG_ENVIRONMENT`,
    /// `INSUFFICIENT_PERMISSIONS`, `RATE_LIMITED`, `USAGE_EXCEEDED`,
    /// `IP_NOT_ALLOWED`.
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
    /// For a key with rate limits (its own and its owner's) that got as far
    /// as them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RateLimitState>>)]
    pub ratelimits: Option<Vec<RateLimitState>>,
    /// For a key with credits that got as far as them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsLeft>,
}

/// A rate limit in a verification answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitState {
    pub name: String,
    pub limit: u64,
    /// What is left of the current window as far as the answering node
    /// knows (its own share, and what no node had taken at its last
    /// reservation).
    pub remaining: u64,
    /// When the window ends.
    pub reset_at: DateTime<Utc>,
}

/// Credits in a verification answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsLeft {
    /// Left after this verification, as far as the answering node knows.
    pub remaining: u64,
}

impl RateLimitState {
    pub fn from_report(report: &LimitReport) -> Vec<Self> {
        report
            .ratelimits
            .iter()
            .map(|w| Self {
                name: w.name.as_str().to_string(),
                limit: w.limit,
                remaining: w.remaining,
                reset_at: DateTime::from_timestamp_millis(w.reset_ms).unwrap_or_default(),
            })
            .collect()
    }
}

impl VerificationView<'_> {
    /// Writes the answer as `serde_json` would (the `Serialize` impl is the
    /// reference, and a test holds the two equal), but each string is copied
    /// whole when it needs no escaping, which is every id, code and
    /// environment and nearly every name: `serde_json` looks every byte up in
    /// its escape table, which was the answer's largest cost in the profile.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(if self.valid {
            b"{\"valid\":true,\"code\":"
        } else {
            b"{\"valid\":false,\"code\":"
        });
        write_str(out, self.code)?;
        for (name, value) in [
            ("key_id", self.key_id),
            ("tenant", self.tenant),
            ("name", self.name),
            ("environment", self.environment),
        ] {
            if let Some(value) = value {
                field(out, name);
                write_str(out, value)?;
            }
        }
        if let Some(permissions) = self.permissions {
            field(out, "permissions");
            out.push(b'[');
            for (i, p) in permissions.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, p)?;
            }
            out.push(b']');
        }
        if let Some(expires_at) = self.expires_at {
            field(out, "expires_at");
            serde_json::to_writer(&mut *out, &expires_at)?;
        }
        // Only limited keys have these: serde_json writes them.
        if let Some(r) = &self.ratelimits {
            field(out, "ratelimits");
            serde_json::to_writer(&mut *out, r)?;
        }
        if let Some(c) = &self.credits {
            field(out, "credits");
            serde_json::to_writer(&mut *out, c)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// `,"name":`
fn field(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string: copied between quotes when nothing in it needs escaping
/// (what `serde_json` escapes: `"`, `\\` and control characters), else
/// written by `serde_json`.
fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// POST /v1/keys/verify
#[utoipa::path(post, path = "/v1/keys/verify", tag = "verification", operation_id = "verifyKey", request_body = VerifyBody,
    responses((status = 200, body = VerificationView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a limited key's reservations kept losing races to other nodes"),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "a limited key's share or block is used up and the store cannot be reached")))]
pub async fn verify(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<VerifyBody>,
) -> Result<Response, Error> {
    let at = state.service.clock().now();
    let environment = body
        .environment
        .as_deref()
        .map(str::parse::<Environment>)
        .transpose()?;
    let permissions = body.permissions.unwrap_or_default();
    let cost = body.cost.unwrap_or(1);
    if cost > MAX_COST {
        return Err(Error::validation("cost", format!("must be 0-{MAX_COST}")));
    }
    let request = VerifyRequest {
        key: &body.key,
        environment,
        permissions: &permissions,
        cost,
        ip: body.ip,
    };
    let (code, body) = state
        .service
        .verify(request, at, |answer| {
            let key = answer.key.as_ref();
            let limits = answer.limits.map(|l| l.report());
            let mut id_text = KeyIdText::default();
            let view = VerificationView {
                valid: answer.valid(),
                code: answer.code.as_str(),
                key_id: key.map(|k| k.key_id(&mut id_text)),
                tenant: key.map(|k| k.tenant()),
                name: key.map(|k| k.name()),
                environment: key.map(|k| k.environment().as_str()),
                permissions: key.map(|k| k.permissions().as_slice()),
                expires_at: key.map(|k| k.expires_at()),
                ratelimits: limits
                    .as_deref()
                    .filter(|r| !r.ratelimits.is_empty())
                    .map(RateLimitState::from_report),
                credits: limits
                    .as_deref()
                    .and_then(|r| r.credits)
                    .map(|remaining| CreditsLeft { remaining }),
            };
            // Sized for a full answer, so the buffer never grows while writing.
            let mut body = Vec::with_capacity(512);
            (answer.code, view.write_json(&mut body).map(|()| body))
        })
        .await?;
    // Only a malformed or unknown key is a guess, counted and, once its address
    // used up its guesses, refused; a key that exists always gets its answer.
    if code == VerificationCode::NotFound
        && client.is_some_and(|ip| state.failures.refuse_guess(ip, at.timestamp()))
    {
        return Err(Error::RateLimited);
    }
    let body = body.map_err(|e| Error::internal_from("verification answer", e))?;
    crate::metrics::verification(code);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(view: &VerificationView<'_>) -> (String, String) {
        let mut fast = Vec::new();
        view.write_json(&mut fast).expect("written");
        let reference = serde_json::to_string(view).expect("serialised");
        (String::from_utf8(fast).expect("utf-8"), reference)
    }

    #[test]
    fn the_answer_is_written_as_serde_json_writes_it() {
        let permissions = vec![
            "invoices:read".to_string(),
            "quote\"back\\slash\u{1}ctl\u{7f}é".to_string(),
        ];
        let expires = DateTime::parse_from_rfc3339("2026-12-01T19:19:58.123Z")
            .expect("time")
            .with_timezone(&Utc);
        let views = [
            VerificationView {
                valid: false,
                code: "NOT_FOUND",
                key_id: None,
                tenant: None,
                name: None,
                environment: None,
                permissions: None,
                expires_at: None,
                ratelimits: None,
                credits: None,
            },
            VerificationView {
                valid: true,
                code: "VALID",
                key_id: Some("key_019a4f3c2b7e7c1d8e9f0a1b2c3d4e5f"),
                tenant: Some("acme"),
                name: Some("billing \"prod\"\n\ttab"),
                environment: Some("live"),
                permissions: Some(&permissions),
                expires_at: Some(None),
                ratelimits: Some(vec![RateLimitState {
                    name: "per-second".into(),
                    limit: 10,
                    remaining: 3,
                    reset_at: expires,
                }]),
                credits: Some(CreditsLeft { remaining: 42 }),
            },
            VerificationView {
                valid: false,
                code: "EXPIRED",
                key_id: Some("key_x"),
                tenant: Some("t\\"),
                name: Some(""),
                environment: Some("test"),
                permissions: Some(&[]),
                expires_at: Some(Some(expires)),
                ratelimits: None,
                credits: None,
            },
        ];
        for view in &views {
            let (fast, reference) = both(view);
            assert_eq!(fast, reference);
        }
    }
}
