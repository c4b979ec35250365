//! Usage limits over HTTP: `POST /v1/keys/{id}/credits`, and an owner's
//! shared limits (`/v1/owners/{owner}`).

use axum::extract::State;
use axum::Json;
use keyledger_domain::CreditChange;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiJson, KeyPath, OwnerPath};
use crate::http::keys::KeyView;
use crate::http::limit_views::{ratelimits, RateLimitBody};
use crate::http::management::Management;
use crate::http::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsRequest {
    /// `set`, `increment` or `decrement`.
    #[schema(pattern = "^(set|increment|decrement)$")]
    pub op: String,
    #[schema(minimum = 0, maximum = 1000000000000000_u64)]
    pub amount: u64,
    /// Why; recorded in the audit log. At most 500 characters.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// POST /v1/keys/{id}/credits
#[utoipa::path(post, path = "/v1/keys/{id}/credits", tag = "keys", operation_id = "changeCredits", request_body = CreditsRequest,
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn credits(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
    ApiJson(body): ApiJson<CreditsRequest>,
) -> Result<Json<KeyView>, Error> {
    let min = if body.op == "set" { 0 } else { 1 };
    keyledger_domain::limits::amount("amount", body.amount, min)?;
    let change = match body.op.as_str() {
        "set" => CreditChange::Set {
            amount: body.amount,
        },
        "increment" => CreditChange::Increment {
            amount: body.amount,
        },
        "decrement" => CreditChange::Decrement {
            amount: body.amount,
        },
        _ => {
            return Err(Error::validation(
                "op",
                "must be set, increment or decrement",
            ))
        }
    };
    let row = state
        .service
        .change_credits(&actor, &id, change, body.reason)
        .await?;
    Ok(Json(KeyView::from_row(row, state.service.clock().now())))
}

/// An owner's shared rate limits.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OwnerLimitsView {
    pub owner: String,
    pub ratelimits: Vec<RateLimitBody>,
}

/// An owner: its rate limits and the tenant's keys that name it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OwnerView {
    pub owner: String,
    pub ratelimits: Vec<RateLimitBody>,
    pub key_ids: Vec<String>,
}

/// PUT /v1/owners/{owner}/ratelimits
#[utoipa::path(put, path = "/v1/owners/{owner}/ratelimits", tag = "keys", operation_id = "setOwnerRateLimits",
    request_body(content = Vec<RateLimitBody>, description = "at most 5, names unique"),
    params(("owner" = String, Path, description = "the customer's own id (1-128 characters)")),
    responses((status = 200, body = OwnerLimitsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_owner_limits(
    State(state): State<AppState>,
    Management(actor): Management,
    OwnerPath(owner): OwnerPath,
    ApiJson(body): ApiJson<Vec<RateLimitBody>>,
) -> Result<Json<OwnerLimitsView>, Error> {
    let limits = ratelimits(body)?;
    state
        .service
        .set_owner_limits(&actor, &owner, limits.clone())
        .await?;
    Ok(Json(OwnerLimitsView {
        owner,
        ratelimits: limits.into_iter().map(RateLimitBody::from).collect(),
    }))
}

/// GET /v1/owners/{owner}
#[utoipa::path(get, path = "/v1/owners/{owner}", tag = "keys", operation_id = "getOwner",
    params(("owner" = String, Path, description = "the customer's own id (1-128 characters)")),
    responses((status = 200, body = OwnerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn owner(
    State(state): State<AppState>,
    Management(actor): Management,
    OwnerPath(owner): OwnerPath,
) -> Result<Json<OwnerView>, Error> {
    let (limits, key_ids) = state.service.owner(&actor, &owner).await?;
    Ok(Json(OwnerView {
        owner,
        ratelimits: limits.into_iter().map(RateLimitBody::from).collect(),
        key_ids,
    }))
}
