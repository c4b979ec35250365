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
