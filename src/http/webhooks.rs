//! Webhook endpoints over HTTP: `/v1/webhooks` and `/v1/webhooks/{id}`.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use keyledger_domain::webhook::WebhookStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiJson, OptionalJson};
use crate::http::management::Management;
use crate::http::state::AppState;
use crate::webhooks::{Endpoint, EndpointChange};

/// The `{id}` of a webhook route: an endpoint id's shape, or 404 before any
/// store sees it.
pub struct WebhookPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for WebhookPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| Error::WebhookNotFound)?;
        if !keyledger_domain::webhook::is_webhook_id(&id) {
            return Err(Error::WebhookNotFound);
        }
        Ok(WebhookPath(id))
    }
}

/// A webhook endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    #[schema(example = "wh_0f1e2d3c4b5a69788796a5b4c3d2e1f0")]
    pub id: String,
    pub url: String,
    /// Message types it takes; empty: all.
    pub events: Vec<String>,
    pub description: Option<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Endpoint> for WebhookView {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id,
            url: e.endpoint.url,
            events: e.endpoint.events,
            description: e.endpoint.description,
            status: e.endpoint.status.as_str().to_string(),
            created_at: e.endpoint.created_at,
            updated_at: e.endpoint.updated_at,
        }
    }
}

/// A webhook endpoint with its signing secret (in this response only).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecretView {
    #[serde(flatten)]
    pub endpoint: WebhookView,
    /// `whsec_` and the base64 of 32 bytes: verify messages with it.
    pub secret: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// http or https; at most 2,048 bytes.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Message types to send (`key.created`, …); absent or empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    #[schema(max_length = 256)]
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "keyledger_domain::events::present")]
    #[schema(value_type = Option<String>, max_length = 256)]
    pub description: Option<Option<String>>,
    /// `enabled` or `disabled`.
    #[schema(pattern = "^(enabled|disabled)$")]
    pub status: Option<String>,
}

/// POST /v1/webhooks
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", operation_id = "createWebhook", request_body = CreateWebhookRequest,
    responses((status = 201, body = WebhookSecretView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Management(actor): Management,
    ApiJson(body): ApiJson<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<WebhookSecretView>), Error> {
    let endpoint = state
        .webhooks
        .create(&actor, body.url, body.events, body.description)
        .await?;
    let secret = state
        .webhooks
        .secret_text(&endpoint.id, endpoint.endpoint.generation);
    Ok((
        StatusCode::CREATED,
        Json(WebhookSecretView {
            endpoint: endpoint.into(),
            secret,
        }),
    ))
}

/// GET /v1/webhooks
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", operation_id = "listWebhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Management(actor): Management,
) -> Result<Json<WebhookList>, Error> {
    let webhooks = state.webhooks.list(&actor).await?;
    Ok(Json(WebhookList {
        webhooks: webhooks.into_iter().map(WebhookView::from).collect(),
    }))
}

/// GET /v1/webhooks/{id}
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "getWebhook",
    params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = WebhookView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Management(actor): Management,
    WebhookPath(id): WebhookPath,
) -> Result<Json<WebhookView>, Error> {
    Ok(Json(state.webhooks.get(&actor, &id).await?.into()))
}

/// PATCH /v1/webhooks/{id}
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "updateWebhook", request_body = UpdateWebhookRequest,
    params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = WebhookView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Management(actor): Management,
    WebhookPath(id): WebhookPath,
    ApiJson(body): ApiJson<UpdateWebhookRequest>,
) -> Result<Json<WebhookView>, Error> {
    let status = match body.status.as_deref() {
        None => None,
        Some("enabled") => Some(WebhookStatus::Enabled),
        Some("disabled") => Some(WebhookStatus::Disabled),
        Some(_) => return Err(Error::validation("status", "must be enabled or disabled")),
    };
    let change = EndpointChange {
        url: body.url,
        events: body.events,
        description: body.description,
        status,
    };
    Ok(Json(
        state.webhooks.update(&actor, &id, change).await?.into(),
    ))
}

/// DELETE /v1/webhooks/{id}
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "deleteWebhook",
    params(("id" = String, Path, description = "endpoint id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Management(actor): Management,
    WebhookPath(id): WebhookPath,
) -> Result<StatusCode, Error> {
    state.webhooks.delete(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/webhooks/{id}/rotate-secret
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", operation_id = "rotateWebhookSecret",
    params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = WebhookSecretView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Management(actor): Management,
    WebhookPath(id): WebhookPath,
    OptionalJson(_body): OptionalJson<crate::http::keys::EmptyRequest>,
) -> Result<Json<WebhookSecretView>, Error> {
    let endpoint = state.webhooks.rotate_secret(&actor, &id).await?;
    let secret = state
        .webhooks
        .secret_text(&endpoint.id, endpoint.endpoint.generation);
    Ok(Json(WebhookSecretView {
        endpoint: endpoint.into(),
        secret,
    }))
}

/// A message of an endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The message id (`webhook-id`), the same on every attempt.
    pub id: String,
    #[serde(rename = "type")]
    pub message_type: String,
    /// The feed position of the event it is about.
    pub position: i64,
    pub key_id: String,
    pub attempts: i64,
    /// `delivered` or `failed` (failed ones are tried again).
    pub status: String,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's status code at the last attempt, if it answered.
    pub response_status: Option<i64>,
}

impl From<crate::store::webhooks::DeliveryRow> for DeliveryView {
    fn from(d: crate::store::webhooks::DeliveryRow) -> Self {
        let time = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
        Self {
            id: d.msg_id,
            message_type: d.message_type,
            position: d.position,
            key_id: d.key_id,
            attempts: d.attempts,
            status: d.status,
            last_attempt_at: time(d.last_attempt_at),
            next_attempt_at: time(d.next_attempt_at),
            response_status: d.response_status,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// `pending` (not delivered yet: failed and to be tried again),
    /// `delivered` or `failed`.
    #[param(pattern = "^(pending|delivered|failed)$")]
    pub status: Option<String>,
    /// 1-100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
}

/// GET /v1/webhooks/{id}/deliveries
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "listWebhookDeliveries",
    params(("id" = String, Path, description = "endpoint id"), DeliveryParams),
    responses((status = 200, body = DeliveryList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    Management(actor): Management,
    WebhookPath(id): WebhookPath,
    crate::http::extract::ApiQuery(params): crate::http::extract::ApiQuery<DeliveryParams>,
) -> Result<Json<DeliveryList>, Error> {
    let status = match params.status.as_deref() {
        None => None,
        // Not delivered yet: the failed ones are tried again.
        Some("pending") | Some("failed") => Some(crate::store::webhooks::FAILED),
        Some("delivered") => Some(crate::store::webhooks::DELIVERED),
        Some(_) => {
            return Err(Error::validation(
                "status",
                "must be pending, delivered or failed",
            ))
        }
    };
    let limit = params.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(Error::validation("limit", "must be between 1 and 100"));
    }
    let before = match params.cursor.as_deref() {
        None => i64::MAX,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::validation("cursor", "must be a next_cursor of this list"))?,
    };
    let rows = state
        .webhooks
        .deliveries(&actor, &id, status, before, i64::from(limit))
        .await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|d| d.position.to_string()))
        .flatten();
    Ok(Json(DeliveryList {
        deliveries: rows.into_iter().map(DeliveryView::from).collect(),
        next_cursor,
    }))
}

/// POST /v1/webhooks/{id}/deliveries/{msg_id}/retry
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{msg_id}/retry", tag = "webhooks", operation_id = "retryWebhookDelivery",
    params(("id" = String, Path, description = "endpoint id"), ("msg_id" = String, Path, description = "message id")),
    responses((status = 202), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    Management(actor): Management,
    path: Result<axum::extract::Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, Error> {
    let axum::extract::Path((id, msg_id)) = path.map_err(|_| Error::WebhookNotFound)?;
    if !keyledger_domain::webhook::is_webhook_id(&id) {
        return Err(Error::WebhookNotFound);
    }
    if msg_id.len() != 36 || !msg_id.starts_with("msg_") {
        return Err(Error::DeliveryNotFound);
    }
    state.webhooks.retry(&actor, &id, &msg_id).await?;
    Ok(StatusCode::ACCEPTED)
}
