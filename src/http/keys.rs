//! Key management: create, list, get, update, deactivate, reactivate, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use keyledger_domain::events::present;
use keyledger_domain::policy::{Policy, MAX_LIFETIME_LIMIT_SECONDS};
use keyledger_domain::{AllowedIps, Credits, Environment, UpdateKey};
use keyledger_projections::key_list::{KeyRow, KeyStatus, ListFilter, PolicyBreaks};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::Error;
use crate::http::error::ErrorBody;
use crate::http::extract::{
    ApiJson, ApiQuery, IdempotencyKey, JsonBytes, KeyPath, OptionalJson, OptionalJsonBytes,
};
use crate::http::limit_views::{self as limits, CreditsBody, CreditsView, RateLimitBody};
use crate::http::management::Management;
use crate::http::state::AppState;
use crate::idempotency::{request_hash, Claim, Idempotency, Settled};
use crate::service::Actor;
use crate::service::{NewKey, PreparedKey, PreparedRotation, Proof};

/// A key as users see it: never the hash, never the raw key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// `key_` + UUIDv7.
    pub id: String,
    /// Display prefix, e.g. `kl_live_AbCdEfGh`.
    pub prefix: String,
    pub name: String,
    pub description: Option<String>,
    /// `live` or `test`.
    pub environment: String,
    pub permissions: Vec<String>,
    /// `active`, `inactive` or `expired`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub usage_count: i64,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The key this one replaced (rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
    /// The key that replaced this one (rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
    /// The customer's own id for whoever holds the key; keys with the same
    /// owner share the owner's rate limits.
    pub owner: Option<String>,
    pub ratelimits: Vec<RateLimitBody>,
    /// The balance as of the last usage flush of every node; null when the
    /// key has no credit limit.
    pub credits: Option<CreditsView>,
    /// When the key was first reported leaked (`POST /v1/leaks/...`); null
    /// when it never was. A leaked key stays marked after reactivation.
    pub leaked_at: Option<DateTime<Utc>>,
    /// The client addresses that may use the key (CIDRs, IPv4 or IPv6);
    /// empty: any address.
    #[schema(value_type = Vec<String>)]
    pub allowed_ips: AllowedIps,
    /// The key was issued by another system and imported by its hash
    /// (`POST /v1/keys/import`).
    pub imported: bool,
}

impl KeyView {
    pub fn from_row(row: KeyRow, now: DateTime<Utc>) -> Self {
        let status = row.status_at(now).as_str().to_string();
        Self {
            id: row.id,
            prefix: row.prefix,
            name: row.name,
            description: row.description,
            environment: row.environment,
            permissions: row.permissions,
            status,
            created_at: row.created_at,
            created_by: row.created_by,
            updated_at: row.updated_at,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            usage_count: row.usage_count,
            metadata: row.metadata,
            rotated_from: row.rotated_from,
            rotated_to: row.rotated_to,
            owner: row.owner,
            ratelimits: row
                .ratelimits
                .into_iter()
                .map(RateLimitBody::from)
                .collect(),
            credits: row.credits.as_ref().and_then(CreditsView::of),
            leaked_at: row.leaked_at,
            allowed_ips: row.allowed_ips,
            imported: row.imported,
        }
    }
}

/// The answer to a create: the key view plus the raw key, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyCreatedView {
    #[serde(flatten)]
    pub view: KeyView,
    /// The raw API key. It is not stored and cannot be shown again.
    pub key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// 1-100 characters.
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// At most 500 characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// `live` (default) or `test`.
    #[schema(pattern = "^(live|test)$")]
    pub environment: Option<String>,
    /// At most 50, each 1-64 of `[a-z0-9:._*-]`.
    #[schema(max_items = 50, value_type = Option<Vec<PermissionName>>)]
    pub permissions: Option<Vec<String>>,
    /// Must be in the future.
    pub expires_at: Option<DateTime<Utc>>,
    /// A JSON object of at most 4 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The customer's own id for whoever holds the key (1-128 characters).
    #[schema(min_length = 1, max_length = 128)]
    pub owner: Option<String>,
    /// At most 5, names unique.
    #[schema(max_items = 5)]
    pub ratelimits: Option<Vec<RateLimitBody>>,
    pub credits: Option<CreditsBody>,
    /// At most 50 CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or addresses; the
    /// key then verifies only for clients inside them. Empty or absent: any.
    #[schema(max_items = 50, value_type = Option<Vec<String>>)]
    pub allowed_ips: Option<Vec<String>>,
}

/// A permission: 1-64 characters of `[a-z0-9:._*-]`.
#[derive(ToSchema)]
#[schema(pattern = "^[a-z0-9:._*-]{1,64}$")]
pub struct PermissionName(#[allow(dead_code)] String);

/// Fields to change; absent fields stay, `null` clears the nullable ones.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 500)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Vec<PermissionName>, required = false, max_items = 50)]
    pub permissions: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<Value>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 128)]
    pub owner: Option<Option<String>>,
    /// Replaces the key's rate limits (`[]` removes them).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Vec<RateLimitBody>, required = false, max_items = 5)]
    pub ratelimits: Option<Option<Vec<RateLimitBody>>>,
    /// Sets the balance and refill; `null` removes the credit limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CreditsBody>)]
    pub credits: Option<Option<CreditsBody>>,
    /// Replaces the key's address allow-list (`[]`: any address).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Vec<String>, required = false, max_items = 50)]
    pub allowed_ips: Option<Option<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivateRequest {
    /// Why; recorded in the audit log. At most 500 characters.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

/// Longest grace period of a rotation: 30 days.
pub const MAX_GRACE_SECONDS: i64 = 2_592_000;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key stays valid: 0-2592000, default 86400.
    #[schema(minimum = 0, maximum = 2592000)]
    pub grace_period_seconds: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `active`, `inactive` or `expired`.
    #[param(pattern = "^(active|inactive|expired)$")]
    pub status: Option<String>,
    /// `live` or `test`.
    #[param(pattern = "^(live|test)$")]
    pub environment: Option<String>,
    /// 1-100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
    /// Only keys unused for longer than this, e.g. `30d`, `12h`, `90m` (at
    /// most 100 years): last used before now minus it, or never used and
    /// created before then.
    #[param(min_length = 1, example = "30d")]
    pub unused_for: Option<String>,
    /// `true`: only keys never used. `false` (default): no filter.
    pub never_used: Option<bool>,
    /// Only keys that expire within this long from now, e.g. `14d` (at most
    /// 100 years); keys already expired are not expiring.
    #[param(min_length = 1, example = "14d")]
    pub expires_within: Option<String>,
    /// `true`: only keys without an expiry. `false` (default): no filter.
    pub no_expiry: Option<bool>,
    /// `true`: only keys that break the tenant's current policy (see
    /// `GET /v1/policy`): an environment or a permission it does not allow,
    /// no expiry where it requires one, or a lifetime (`expires_at` minus
    /// `created_at`) longer than its `max_lifetime_seconds`. A policy
    /// without key rules lists none. `false` (default): no filter.
    pub breaks_policy: Option<bool>,
}

/// A key list as asked for, unchecked: the query of `GET /v1/keys` and the
/// flags of `keyledger keys list` both come down to this, and
/// [`ListQuery::filter`] is the one place that checks it.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    /// `active`, `inactive` or `expired`.
    pub status: Option<&'a str>,
    /// `live` or `test`.
    pub environment: Option<&'a str>,
    /// A duration (`30d`): keys unused for longer than that.
    pub unused_for: Option<&'a str>,
    pub never_used: bool,
    /// A duration (`14d`): keys that expire within that long.
    pub expires_within: Option<&'a str>,
    pub no_expiry: bool,
    /// The tenant's current policy: only keys that break it. `None`: no
    /// such filter.
    pub breaks_policy: Option<&'a Policy>,
    /// A `next_cursor` handed out before.
    pub cursor: Option<&'a str>,
    /// Keys per page, 1-100.
    pub limit: u32,
}

/// Longest duration a list filter takes: 100 years (of 365.25 days, as
/// `humantime` counts them, so `100y` is accepted).
const MAX_FILTER_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 31_557_600);

impl ListQuery<'_> {
    /// The filter this asks for at `now`; a bad value is a validation error
    /// naming it (as the query parameter is named).
    pub fn filter(&self, now: DateTime<Utc>) -> Result<ListFilter, Error> {
        let status = self
            .status
            .map(|s| {
                KeyStatus::parse(s).ok_or_else(|| {
                    Error::validation("status", "must be active, inactive or expired")
                })
            })
            .transpose()?;
        let env = environment(self.environment)?;
        if !(1..=100).contains(&self.limit) {
            return Err(Error::validation("limit", "must be between 1 and 100"));
        }
        let before_position = cursor(self.cursor)?;
        let unused_since = self
            .unused_for
            .map(|d| {
                filter_duration("unused_for", d).and_then(|d| {
                    now.checked_sub_signed(d)
                        .ok_or_else(|| Error::validation("unused_for", "reaches before year 0"))
                })
            })
            .transpose()?;
        let expires_by = self
            .expires_within
            .map(|d| {
                filter_duration("expires_within", d).and_then(|d| {
                    now.checked_add_signed(d).ok_or_else(|| {
                        Error::validation(
                            "expires_within",
                            "reaches past the last representable time",
                        )
                    })
                })
            })
            .transpose()?;
        Ok(ListFilter {
            status,
            environment: env.map(|e| e.as_str().to_string()),
            before_position,
            unused_since_ms: unused_since.map(|t| t.timestamp_millis()),
            never_used: self.never_used,
            expires_by_ms: expires_by.map(|t| t.timestamp_millis()),
            no_expiry: self.no_expiry,
            breaks: self.breaks_policy.map(policy_breaks),
            limit: self.limit,
        })
    }
}

/// The key rules of `policy` as the list judges keys by them: a longest
/// lifetime requires an expiry too, as it does of new keys.
fn policy_breaks(policy: &Policy) -> PolicyBreaks {
    let max_lifetime_ms = policy.max_lifetime_seconds.map(|seconds| {
        // At most 100 years (as `Policy::parse` allows): fits in i64 ms.
        i64::try_from(seconds.min(MAX_LIFETIME_LIMIT_SECONDS)).unwrap_or(i64::MAX / 1000) * 1000
    });
    PolicyBreaks {
        allowed_environments: policy
            .allowed_environments
            .as_ref()
            .map(|list| list.iter().map(|e| e.as_str().to_string()).collect()),
        allowed_permissions: policy.allowed_permissions.clone(),
        expiry_required: policy.require_expiry || max_lifetime_ms.is_some(),
        max_lifetime_ms,
    }
}

/// A filter's duration (`30d`, `12h`, `90m`, `1h 30m`), at most
/// [`MAX_FILTER_DURATION`]. The message does not echo the value: it is the
/// client's text, and could be anything.
fn filter_duration(field: &str, value: &str) -> Result<chrono::Duration, Error> {
    const SHAPE: &str = "must be a duration such as 30d, 12h or 90m, at most 100 years";
    let parsed = humantime::parse_duration(value)
        .ok()
        .filter(|d| *d <= MAX_FILTER_DURATION)
        .ok_or_else(|| Error::validation(field, SHAPE))?;
    chrono::Duration::from_std(parsed).map_err(|_| Error::validation(field, SHAPE))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    pub next_cursor: Option<String>,
}

fn environment(value: Option<&str>) -> Result<Option<Environment>, Error> {
    value.map(|v| Ok(v.parse::<Environment>()?)).transpose()
}

/// Parses a page cursor (a position we handed out).
pub fn cursor(value: Option<&str>) -> Result<Option<i64>, Error> {
    value
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Error::validation("cursor", "not a cursor returned by this API"))
        })
        .transpose()
}

/// POST /v1/keys
#[utoipa::path(post, path = "/v1/keys", tag = "keys", operation_id = "createKey", request_body = CreateKeyRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "a retry with the same key and body returns the first response (same raw key) for 24 h")),
    responses((status = 201, body = KeyCreatedView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Management(actor): Management,
    IdempotencyKey(idem): IdempotencyKey,
    JsonBytes(body, raw): JsonBytes<CreateKeyRequest>,
) -> Result<Response, Error> {
    let new = NewKey {
        name: body.name,
        description: body.description,
        environment: environment(body.environment.as_deref())?.unwrap_or(Environment::Live),
        permissions: body.permissions.unwrap_or_default(),
        expires_at: body.expires_at,
        metadata: body.metadata,
        owner: body.owner,
        ratelimits: limits::ratelimits(body.ratelimits.unwrap_or_default())?,
        credits: body.credits.map(Credits::try_from).transpose()?,
        allowed_ips: AllowedIps::parse(body.allowed_ips.unwrap_or_default())?,
    };
    let service = state.service.clone();
    let run_actor = actor.clone();
    idempotent(&state, &actor, idem, "POST /v1/keys", &raw, async move {
        Ok(Issue::Create(
            service.prepare_create(&run_actor, new).await?,
        ))
    })
    .await
}

/// A key-issuing command, decided and not yet written: a create or a
/// rotation. Split so that its answer can be recorded before its commit.
enum Issue {
    Create(PreparedKey),
    Rotate(PreparedRotation),
}

impl Issue {
    fn key(&self) -> &PreparedKey {
        match self {
            Self::Create(k) => k,
            Self::Rotate(r) => r.successor(),
        }
    }

    fn proof(&self) -> Proof {
        match self {
            Self::Create(k) => Proof::Created {
                key_id: k.key_id().clone(),
            },
            Self::Rotate(r) => r.proof(),
        }
    }

    /// The answer it will give once committed.
    fn answer(&self, now: DateTime<Utc>) -> KeyCreatedView {
        let key = self.key();
        KeyCreatedView {
            view: KeyView::from_row(key.view().clone(), now),
            key: key.raw().expose().to_string(),
        }
    }

    async fn commit(
        self,
        service: &crate::service::KeyService,
        actor: &Actor,
    ) -> Result<crate::service::IssuedKey, Error> {
        match self {
            Self::Create(k) => service.issue(actor, k).await,
            Self::Rotate(r) => service.rotate_prepared(actor, r).await,
        }
    }
}

fn created_view(issued: crate::service::IssuedKey, now: chrono::DateTime<Utc>) -> KeyCreatedView {
    KeyCreatedView {
        view: KeyView::from_row(issued.view, now),
        key: issued.raw.into_exposed(),
    }
}

/// Runs a key-issuing command once per `Idempotency-Key`: the first request
/// runs and its answer is kept; retries get that answer back.
///
/// The answer is recorded with the claim before the command is written
/// (`Idempotency::record`), with what proves the command committed. So once
/// the events are durable the answer cannot be lost: if the commit itself
/// reports an error that leaves its outcome unknown, the proof decides at
/// once; if that cannot be read either, the claim keeps the recorded answer
/// and the retry that takes it over after its lease settles it.
async fn idempotent(
    state: &AppState,
    actor: &Actor,
    key: Option<String>,
    route: &str,
    body: &[u8],
    prepare: impl std::future::Future<Output = Result<Issue, Error>>,
) -> Result<Response, Error> {
    let service = state.service.as_ref();
    let Some(key) = key else {
        let issued = prepare.await?.commit(service, actor).await?;
        return Ok(created(created_view(issued, service.clock().now())));
    };
    let store = service.idempotency(state.sealer.as_ref());
    let lease = match store
        .claim(&actor.tenant, &key, &request_hash(route, body))
        .await?
    {
        Claim::Replay(first) => return Ok((StatusCode::CREATED, Json(first)).into_response()),
        Claim::Owned(lease) => lease,
        Claim::Unsettled {
            lease,
            recorded,
            proof,
        } => {
            let proof: Proof = serde_json::from_value(proof)
                .map_err(|e| Error::internal_from("stored proof unreadable", e))?;
            // Dropping the lease on an error leaves the claim to lapse again:
            // the next retry settles it.
            if service.settle(actor, &proof).await? {
                let owner = lease.into_owner();
                store
                    .complete(&actor.tenant, &key, &owner, recorded.clone())
                    .await?;
                return Ok((StatusCode::CREATED, Json(recorded)).into_response());
            }
            lease
        }
    };
    let owner = lease.owner().to_string();
    let issue = match prepare.await {
        Ok(issue) => issue,
        Err(e) => return Err(give_up(&store, actor, &key, lease, e).await),
    };
    let proof = serde_json::to_value(issue.proof())
        .map_err(|e| Error::internal_from("serialising a proof of commit", e))?;
    let answer = to_json(&issue.answer(service.clock().now()))?;
    match store
        .record(&actor.tenant, &key, &owner, answer.clone(), &proof)
        .await
    {
        Ok(Settled::Done) => {}
        // Taken over already (this request stalled past its lease): nothing
        // is written, the new owner runs it.
        Ok(Settled::Lost) => return Err(Error::Conflict),
        Err(e) => return Err(give_up(&store, actor, &key, lease, e).await),
    }
    let proof = issue.proof();
    let outcome = issue.commit(service, actor).await;
    let outcome = match outcome {
        Err(e) if e.outcome_unknown() => match service.settle(actor, &proof).await {
            // Committed: the recorded answer is the answer.
            Ok(true) => Ok(None),
            Ok(false) => Err(e),
            Err(unknown) => {
                // The store cannot say: the claim keeps the recorded answer
                // for the retry that takes it over.
                drop(lease);
                tracing::warn!(error = %unknown, "a create's outcome is unknown; its claim keeps its recorded answer");
                return Err(e);
            }
        },
        other => other.map(Some),
    };
    match outcome {
        Ok(issued) => {
            let value = match issued {
                Some(issued) => to_json(&created_view(issued, service.clock().now()))?,
                None => answer,
            };
            let owner = lease.into_owner();
            let settled = store
                .complete(&actor.tenant, &key, &owner, value.clone())
                .await;
            match settled {
                Ok(Settled::Done) => {}
                // Taken over after this request stalled past its lease: the new
                // owner settles it from the recorded answer and proof. This
                // key was issued all the same, and this response carries it.
                Ok(Settled::Lost) => tracing::warn!(
                    tenant = %actor.tenant,
                    "idempotency claim lost while the request ran; its answer was not stored"
                ),
                // The recorded answer stays with the claim; a retry after the
                // lease settles it from the proof.
                Err(e) => tracing::warn!(error = %e, "could not complete an idempotency claim"),
            }
            Ok((StatusCode::CREATED, Json(value)).into_response())
        }
        Err(e) => Err(give_up(&store, actor, &key, lease, e).await),
    }
}

/// Gives up the claim of a request that failed and wrote nothing, so its
/// retry runs again (only our own claim; a failure releasing it just leaves
/// it to lapse with its lease). Returns the request's error.
async fn give_up(
    store: &Idempotency<'_>,
    actor: &Actor,
    key: &str,
    lease: crate::idempotency::Lease,
    error: Error,
) -> Error {
    let owner = lease.into_owner();
    if let Err(re) = store.release(&actor.tenant, key, &owner).await {
        tracing::warn!(error = %re, "could not release an idempotency claim; it lapses by itself");
    }
    error
}

fn to_json(view: &KeyCreatedView) -> Result<Value, Error> {
    serde_json::to_value(view).map_err(|e| Error::internal_from("serialising a key", e))
}

fn created(view: KeyCreatedView) -> Response {
    (StatusCode::CREATED, Json(view)).into_response()
}

/// GET /v1/keys
#[utoipa::path(get, path = "/v1/keys", tag = "keys", operation_id = "listKeys", params(ListParams),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Management(actor): Management,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<KeyList>, Error> {
    // Read only when asked for: the policy as this node last saw it.
    let policy = match params.breaks_policy {
        Some(true) => Some(state.service.tenant_policy(&actor.tenant).await?),
        _ => None,
    };
    let filter = ListQuery {
        status: params.status.as_deref(),
        environment: params.environment.as_deref(),
        unused_for: params.unused_for.as_deref(),
        never_used: params.never_used.unwrap_or(false),
        expires_within: params.expires_within.as_deref(),
        no_expiry: params.no_expiry.unwrap_or(false),
        breaks_policy: policy.as_ref(),
        cursor: params.cursor.as_deref(),
        limit: params.limit.unwrap_or(50),
    }
    .filter(state.service.clock().now())?;
    let page = state.service.list(&actor, &filter).await?;
    let now = state.service.clock().now();
    Ok(Json(KeyList {
        keys: page
            .keys
            .into_iter()
            .map(|k| KeyView::from_row(k, now))
            .collect(),
        next_cursor: page.next_before.map(|p| p.to_string()),
    }))
}

/// GET /v1/keys/{id}
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", operation_id = "getKey",
    params(("id" = String, Path, description = "key id, or its display prefix when unique")),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
) -> Result<Json<KeyView>, Error> {
    let row = state.service.get(&actor, &id).await?;
    Ok(Json(KeyView::from_row(row, state.service.clock().now())))
}

/// PATCH /v1/keys/{id}
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", operation_id = "updateKey", request_body = UpdateKeyRequest,
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
    ApiJson(body): ApiJson<UpdateKeyRequest>,
) -> Result<Json<KeyView>, Error> {
    let update = UpdateKey {
        name: body
            .name
            .map(|n| n.ok_or_else(|| Error::validation("name", "cannot be null")))
            .transpose()?,
        description: body.description,
        permissions: body
            .permissions
            .map(|p| p.ok_or_else(|| Error::validation("permissions", "cannot be null; use []")))
            .transpose()?,
        expires_at: body.expires_at,
        metadata: body.metadata,
        owner: body.owner,
        ratelimits: body
            .ratelimits
            .map(|r| {
                r.ok_or_else(|| Error::validation("ratelimits", "cannot be null; use []"))
                    .and_then(limits::ratelimits)
            })
            .transpose()?,
        allowed_ips: body
            .allowed_ips
            .map(|ips| {
                ips.ok_or_else(|| Error::validation("allowed_ips", "cannot be null; use []"))
                    .and_then(|ips| Ok(AllowedIps::parse(ips)?))
            })
            .transpose()?,
    };
    let credits = body
        .credits
        .map(|c| c.map(Credits::try_from).transpose())
        .transpose()?;
    let row = state.service.update(&actor, &id, update, credits).await?;
    Ok(Json(KeyView::from_row(row, state.service.clock().now())))
}

/// POST /v1/keys/{id}/deactivate
#[utoipa::path(post, path = "/v1/keys/{id}/deactivate", tag = "keys", operation_id = "deactivateKey", request_body(content = DeactivateRequest, description = "optional"),
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deactivate(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
    OptionalJson(body): OptionalJson<DeactivateRequest>,
) -> Result<Json<KeyView>, Error> {
    let row = state.service.deactivate(&actor, &id, body.reason).await?;
    Ok(Json(KeyView::from_row(row, state.service.clock().now())))
}

/// POST /v1/keys/{id}/reactivate
#[utoipa::path(post, path = "/v1/keys/{id}/reactivate", tag = "keys", operation_id = "reactivateKey",
    params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reactivate(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
    OptionalJson(_body): OptionalJson<EmptyRequest>,
) -> Result<Json<KeyView>, Error> {
    let row = state.service.reactivate(&actor, &id).await?;
    Ok(Json(KeyView::from_row(row, state.service.clock().now())))
}

/// DELETE /v1/keys/{id}
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", operation_id = "deleteKey",
    params(("id" = String, Path, description = "key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
) -> Result<StatusCode, Error> {
    state.service.delete(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/keys/{id}/rotate
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", operation_id = "rotateKey", request_body(content = RotateRequest, description = "optional"),
    params(("id" = String, Path, description = "key id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "a retry with the same key and body returns the first response for 24 h")),
    responses((status = 201, body = KeyCreatedView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Management(actor): Management,
    KeyPath(id): KeyPath,
    IdempotencyKey(idem): IdempotencyKey,
    OptionalJsonBytes(body, raw): OptionalJsonBytes<RotateRequest>,
) -> Result<Response, Error> {
    let grace = body.grace_period_seconds.unwrap_or(86_400);
    if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
        return Err(Error::validation(
            "grace_period_seconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS}"),
        ));
    }
    let service = state.service.clone();
    let run_actor = actor.clone();
    let route = format!("POST /v1/keys/{id}/rotate");
    idempotent(&state, &actor, idem, &route, &raw, async move {
        Ok(Issue::Rotate(
            service
                .prepare_rotation(&run_actor, &id, chrono::Duration::seconds(grace))
                .await?,
        ))
    })
    .await
}
