//! POST /v1/keys/import: keys issued by another system, by their SHA-256
//! (see `crate::import`). Each item succeeds or fails on its own, so an
//! item is parsed on its own too: one malformed item fails alone.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::Error;
use crate::http::error::{detail, ErrorBody, ErrorDetail};
use crate::http::extract::{body_up_to, parse_json};
use crate::http::management::Management;
use crate::http::state::AppState;
use crate::import::{ImportItem, MAX_IMPORT_KEYS};

/// Largest import body: a thousand items with their metadata (4 KiB each at
/// most) and the rest of their fields.
const MAX_IMPORT_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// 1-1000 keys, each an object with the fields of `ImportItem`. Each
    /// object is judged on its own: one with a bad field fails alone, in
    /// `errors`; an item that is not an object fails the request.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<Object>)]
    pub keys: Vec<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResponse {
    /// The items imported (or imported before: the same hash answers the
    /// same id), by their index in the request.
    pub imported: Vec<ImportedKey>,
    /// The items that failed, each with the error it would have had alone.
    pub errors: Vec<ImportError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedKey {
    pub index: usize,
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportError {
    pub index: usize,
    pub error: ErrorDetail,
}

/// POST /v1/keys/import
#[utoipa::path(post, path = "/v1/keys/import", tag = "keys", operation_id = "importKeys", request_body = ImportRequest,
    responses((status = 200, body = ImportResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn import(
    State(state): State<AppState>,
    Management(actor): Management,
    request: axum::extract::Request,
) -> Result<Json<ImportResponse>, Error> {
    let body = body_up_to(request, &state, MAX_IMPORT_BODY).await?;
    let request: ImportRequest = parse_json(&body)?;
    if !(1..=MAX_IMPORT_KEYS).contains(&request.keys.len()) {
        return Err(Error::validation(
            "keys",
            format!("must hold 1-{MAX_IMPORT_KEYS} keys"),
        ));
    }
    if let Some(i) = request.keys.iter().position(|item| !item.is_object()) {
        return Err(Error::validation(
            "keys",
            format!("item {i} is not an object"),
        ));
    }
    let items = request
        .keys
        .into_iter()
        .map(|item| {
            // Named by the field's path alone: serde's message may quote the
            // client's value.
            serde_path_to_error::deserialize::<_, ImportItem>(item).map_err(|e| {
                Error::validation(
                    "keys",
                    format!("{}: missing, unknown or of the wrong type", e.path()),
                )
            })
        })
        .collect();
    let outcome = state.service.import(&actor, items).await?;
    Ok(Json(ImportResponse {
        imported: outcome
            .imported
            .into_iter()
            .map(|(index, id)| ImportedKey { index, id })
            .collect(),
        errors: outcome
            .errors
            .into_iter()
            .map(|(index, e)| ImportError {
                index,
                error: detail(&e),
            })
            .collect(),
    }))
}
