//! The audit log of a tenant, and the full history of one key (both paged).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use keyledger_projections::audit::{AuditEntry, AuditFilter, Order};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{ApiQuery, KeyPath};
use crate::http::keys::cursor;
use crate::http::management::Management;
use crate::http::state::AppState;

/// Events per page of a key's history, by default and at most. A history has
/// no length bound (a used key gains a usage event every flush interval), so it
/// is paged; the default is the largest page, so that the whole history of
/// nearly every key is still one response.
const KEY_HISTORY_PAGE: u32 = 1000;

/// One event as the audit log shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Global position, increasing in commit order.
    pub position: i64,
    pub key_id: String,
    /// Position within the key's stream.
    pub sequence: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub actor: Option<String>,
    pub request_id: Option<String>,
    /// The event's fields; never a secret or hash.
    #[schema(value_type = Object)]
    pub data: Value,
    /// IP address of the client that sent the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl From<AuditEntry> for AuditEvent {
    fn from(e: AuditEntry) -> Self {
        Self {
            position: e.position,
            key_id: e.key_id,
            sequence: e.sequence,
            event_type: e.event_type,
            occurred_at: e.occurred_at,
            actor: e.actor,
            request_id: e.request_id,
            data: e.data,
            client_addr: e.client_addr,
            user_agent: e.user_agent,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub events: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

/// One page of a key's history, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyHistory {
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; `null` on the last page (always sent).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyHistoryParams {
    /// 1-1000, default 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub key_id: Option<String>,
    pub actor: Option<String>,
    /// Event type, e.g. `KeyDeactivated`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Inclusive lower bound (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
    /// `asc` (default) or `desc`.
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
}

/// GET /v1/audit
#[utoipa::path(get, path = "/v1/audit", tag = "audit", operation_id = "listAuditEvents", params(AuditParams),
    responses((status = 200, body = AuditList), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Management(actor): Management,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditList>, Error> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::validation("limit", "must be between 1 and 1000"));
    }
    let order = match params.order.as_deref() {
        None | Some("asc") => Order::Asc,
        Some("desc") => Order::Desc,
        Some(_) => return Err(Error::validation("order", "must be asc or desc")),
    };
    let filter = AuditFilter {
        tenant: None,
        key_id: params.key_id,
        actor: params.actor,
        event_type: params.event_type,
        since: params.since,
        until: params.until,
        after_position: cursor(params.cursor.as_deref())?,
        order,
        limit,
    };
    let page = state.service.audit(&actor, filter).await?;
    Ok(Json(AuditList {
        events: page.events.into_iter().map(AuditEvent::from).collect(),
        next_cursor: page.next_position.map(|p| p.to_string()),
    }))
}

/// GET /v1/keys/{id}/events
#[utoipa::path(get, path = "/v1/keys/{id}/events", tag = "audit", operation_id = "listKeyEvents",
    params(("id" = String, Path, description = "key id (also after deletion)"), KeyHistoryParams),
    responses((status = 200, body = KeyHistory), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn key_events(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
    ApiQuery(params): ApiQuery<KeyHistoryParams>,
) -> Result<Json<KeyHistory>, Error> {
    let limit = params.limit.unwrap_or(KEY_HISTORY_PAGE);
    if !(1..=KEY_HISTORY_PAGE).contains(&limit) {
        return Err(Error::validation(
            "limit",
            format!("must be between 1 and {KEY_HISTORY_PAGE}"),
        ));
    }
    let after = cursor(params.cursor.as_deref())?;
    // A live key may be named by its display prefix; a deleted one only by id.
    let key_id = match state.service.get(&actor, &id).await {
        Ok(row) => row.id,
        Err(Error::KeyNotFound) => id,
        Err(e) => return Err(e),
    };
    let filter = AuditFilter {
        key_id: Some(key_id.clone()),
        after_position: after,
        limit,
        ..AuditFilter::default()
    };
    let page = state.service.audit(&actor, filter).await?;
    if page.events.is_empty() {
        // No event (of this tenant) names the key: there is no such key. A
        // page past the end of a history that exists is empty, not a 404.
        let exists = after.is_some()
            && !state
                .service
                .audit(
                    &actor,
                    AuditFilter {
                        key_id: Some(key_id),
                        limit: 1,
                        ..AuditFilter::default()
                    },
                )
                .await?
                .events
                .is_empty();
        if !exists {
            return Err(Error::KeyNotFound);
        }
    }
    Ok(Json(KeyHistory {
        events: page.events.into_iter().map(AuditEvent::from).collect(),
        next_cursor: page.next_position.map(|p| p.to_string()),
    }))
}
