//! Importing keys issued by another system (`POST /v1/keys/import`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codes::Environment;
use crate::error::ApiErrorDetail;

/// A key issued elsewhere, by its SHA-256. [`Client::import_keys`] takes
/// these, or any other items that serialise to the same JSON.
///
/// [`Client::import_keys`]: crate::Client::import_keys
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportItem {
    /// The hex SHA-256 of the raw key string (64 characters).
    pub hash: String,
    /// 1-32 visible ASCII characters shown in lists: a non-secret start of
    /// the key.
    pub prefix: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// When the other system issued it (default: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<String>>,
}

/// What became of each item, by its index in the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportResponse {
    #[serde(default)]
    pub imported: Vec<ImportedKey>,
    #[serde(default)]
    pub errors: Vec<ImportFailure>,
}

/// An item imported (or imported before: the same id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedKey {
    pub index: usize,
    pub id: String,
}

/// An item refused, with the error it would have had alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportFailure {
    pub index: usize,
    pub error: ApiErrorDetail,
}
