//! A tenant's policy over HTTP: `GET` and `PUT /v1/policy`. A PUT replaces
//! the whole policy: a field left out takes its default.

use axum::extract::State;
use axum::Json;
use keyledger_domain::policy::{LeakAction, Policy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::ApiJson;
use crate::http::keys::PermissionName;
use crate::http::management::Management;
use crate::http::state::AppState;

/// What the tenant's rules are. In a PUT, a field left out takes its default
/// (the PUT replaces the whole policy). The key rules judge creates, PATCHes
/// and rotations (422 `policy_violation`); keys made before stay as they are.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    /// What a leak report of one of the tenant's keys leads to:
    /// `deactivate` (the default, reason "leaked"), `delete` or `notify`.
    #[serde(default = "default_on_leak")]
    #[schema(pattern = "^(deactivate|delete|notify)$", required = false)]
    pub on_leak: String,
    /// Longest lifetime of a key in seconds (1 to 3155760000, 100 years);
    /// a create without `expires_at` gets now plus this, a later one is
    /// refused. `null` (the default): no limit.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3155760000_u64)]
    pub max_lifetime_seconds: Option<u64>,
    /// Keys must have an `expires_at` (default false).
    #[serde(default)]
    #[schema(required = false)]
    pub require_expiry: bool,
    /// The only permissions keys may carry, compared exactly (a wildcard
    /// such as `orders:*` only if listed itself); at most 100. `null` (the
    /// default): any.
    #[serde(default)]
    #[schema(max_items = 100, value_type = Option<Vec<PermissionName>>)]
    pub allowed_permissions: Option<Vec<String>>,
    /// The environments keys may be made in: `live`, `test` or both.
    /// `null` (the default): any.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 2, value_type = Option<Vec<EnvironmentName>>)]
    pub allowed_environments: Option<Vec<String>>,
}

/// A key environment: `live` or `test`.
#[derive(ToSchema)]
#[schema(pattern = "^(live|test)$")]
pub struct EnvironmentName(#[allow(dead_code)] String);

fn default_on_leak() -> String {
    LeakAction::default().as_str().to_string()
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> Self {
        Self {
            on_leak: p.on_leak.as_str().to_string(),
            max_lifetime_seconds: p.max_lifetime_seconds,
            require_expiry: p.require_expiry,
            allowed_permissions: p.allowed_permissions,
            allowed_environments: p
                .allowed_environments
                .map(|list| list.iter().map(|e| e.as_str().to_string()).collect()),
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
    let policy = Policy::parse(
        &body.on_leak,
        body.max_lifetime_seconds,
        body.require_expiry,
        body.allowed_permissions,
        body.allowed_environments,
    )?;
    state.service.set_policy(&actor, policy.clone()).await?;
    Ok(Json(policy.into()))
}
