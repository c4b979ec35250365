//! Leak reports over HTTP: `POST /v1/leaks/report`, open to anyone.

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiJson, ClientAddr};
use crate::http::state::AppState;
use crate::leaks::{Found, MAX_REPORTED_KEYS};

/// The longest string a report may call a key (keys are at most 68 bytes).
const MAX_REPORTED_KEY_BYTES: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakReport {
    /// Strings believed to be leaked keyledger keys (at most 100).
    #[schema(max_items = 100)]
    pub keys: Vec<String>,
    /// Where they were found, if known.
    #[schema(max_length = 2048)]
    pub url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LeakReceipt {
    /// How many strings were received; nothing is said about them.
    pub received: usize,
}

/// POST /v1/leaks/report
#[utoipa::path(post, path = "/v1/leaks/report", tag = "leaks", operation_id = "reportLeakedKeys", request_body = LeakReport,
    responses((status = 202, body = LeakReceipt), (status = 400, body = ErrorBody), (status = 408, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<LeakReport>,
) -> Result<(StatusCode, Json<LeakReceipt>), Error> {
    let now = state.service.clock().now().timestamp();
    let from = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if state.leak_reports.refuse_guess(from, now) {
        return Err(Error::RateLimited);
    }
    if body.keys.len() > MAX_REPORTED_KEYS {
        return Err(Error::validation(
            "keys",
            format!("at most {MAX_REPORTED_KEYS} per report"),
        ));
    }
    if body.url.as_ref().is_some_and(|u| u.chars().count() > 2048) {
        return Err(Error::validation("url", "at most 2048 characters"));
    }
    if body.keys.iter().any(|k| k.len() > MAX_REPORTED_KEY_BYTES) {
        return Err(Error::validation(
            "keys",
            format!("each at most {MAX_REPORTED_KEY_BYTES} bytes"),
        ));
    }
    let ours = state.leaks.ours(body.keys.iter().map(String::as_str));
    state.leaks.act(
        "public",
        ours,
        Found {
            source: None,
            url: body.url,
        },
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(LeakReceipt {
            received: body.keys.len(),
        }),
    ))
}

/// The largest report a partner may send (a thousand tokens fit easily).
const MAX_PARTNER_BODY: usize = 2 << 20;
/// The most tokens one partner report may carry.
const MAX_PARTNER_TOKENS: usize = 10_000;

/// One token a secret scanner found (GitHub's format).
#[derive(Debug, Deserialize, ToSchema)]
pub struct PartnerToken {
    pub token: String,
    #[serde(rename = "type")]
    pub token_type: String,
    pub url: Option<String>,
    pub source: Option<String>,
}

/// The answer for one token: ours (`true_positive`, with the token) or not
/// (`false_positive`, with its SHA-256 only).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartnerAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    pub token_type: String,
    pub label: String,
}

/// POST /v1/leaks/{reporter}
#[utoipa::path(post, path = "/v1/leaks/{reporter}", tag = "leaks", operation_id = "partnerLeakReport",
    request_body = Vec<PartnerToken>,
    params(("reporter" = String, Path, description = "a configured reporter (`--leak-reporter`), e.g. github"),
        ("github-public-key-identifier" = Option<String>, Header, description = "`<Reporter>-Public-Key-Identifier`"),
        ("github-public-key-signature" = Option<String>, Header, description = "`<Reporter>-Public-Key-Signature`: base64 DER ECDSA P-256 over the body")),
    responses((status = 200, body = Vec<PartnerAnswer>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn partner(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    request: axum::extract::Request,
) -> Result<Json<Vec<PartnerAnswer>>, Error> {
    let reporter = state
        .leaks
        .reporter(&name)
        .cloned()
        .ok_or(Error::RouteNotFound)?;
    let header = |h: String| -> Option<String> {
        let v = headers.get(h.as_str())?;
        v.to_str().ok().map(str::to_string)
    };
    let identifier = header(reporter.config.identifier_header());
    let signature = header(reporter.config.signature_header());
    let body = crate::http::extract::body_up_to(request, &state, MAX_PARTNER_BODY).await?;
    reporter
        .verify(identifier.as_deref(), signature.as_deref(), &body)
        .await?;
    let tokens: Vec<PartnerToken> = serde_json::from_slice(&body)
        .map_err(|e| Error::validation("body", format!("not a list of tokens: {e}")))?;
    if tokens.len() > MAX_PARTNER_TOKENS {
        return Err(Error::validation(
            "body",
            format!("at most {MAX_PARTNER_TOKENS} tokens per report"),
        ));
    }
    let mut answers = Vec::with_capacity(tokens.len());
    for t in tokens {
        match state.leaks.ours([t.token.as_str()]).pop() {
            Some(key) => {
                state.leaks.act(
                    &reporter.config.name,
                    vec![key],
                    Found {
                        source: t.source,
                        url: t.url,
                    },
                );
                answers.push(PartnerAnswer {
                    token_raw: Some(t.token),
                    token_hash: None,
                    token_type: t.token_type,
                    label: "true_positive".into(),
                });
            }
            None => answers.push(PartnerAnswer {
                token_raw: None,
                token_hash: Some(keyledger_domain::KeyHash::of(&t.token).to_hex()),
                token_type: t.token_type,
                label: "false_positive".into(),
            }),
        }
    }
    Ok(Json(answers))
}
