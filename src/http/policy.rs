//! A tenant's policy over HTTP: `GET` and `PUT /v1/policy`.

use axum::extract::State;
use axum::Json;
use keyledger_domain::policy::{LeakAction, Policy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::ApiJson;
use crate::http::management::Management;
use crate::http::state::AppState;

/// What the tenant's rules are.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    /// What a leak report of one of the tenant's keys leads to:
    /// `deactivate` (the default, reason "leaked"), `delete` or `notify`.
    #[schema(pattern = "^(deactivate|delete|notify)$")]
    pub on_leak: String,
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> Self {
        Self {
            on_leak: p.on_leak.as_str().to_string(),
        }
    }
}

/// GET /v1/policy
#[utoipa::path(get, path = "/v1/policy", tag = "policy", operation_id = "getPolicy",
    responses((status = 200, body = PolicyView), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Management(actor): Management,
) -> Result<Json<PolicyView>, Error> {
    Ok(Json(state.service.policy(&actor).await?.into()))
}

/// PUT /v1/policy
#[utoipa::path(put, path = "/v1/policy", tag = "policy", operation_id = "setPolicy", request_body = PolicyView,
    responses((status = 200, body = PolicyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set(
    State(state): State<AppState>,
    Management(actor): Management,
    ApiJson(body): ApiJson<PolicyView>,
) -> Result<Json<PolicyView>, Error> {
    let policy = Policy {
        on_leak: LeakAction::parse(&body.on_leak)?,
    };
    state.service.set_policy(&actor, policy.clone()).await?;
    Ok(Json(policy.into()))
}
