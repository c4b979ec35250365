//! Field rules of the contract (../shared/API.md), shared by create and update.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::DomainError;

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_DESCRIPTION_CHARS: usize = 500;
pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_METADATA_BYTES: usize = 4096;

/// A name is 1-100 characters and not only whitespace.
pub fn name(name: &str) -> Result<(), DomainError> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        return Err(DomainError::validation("name", "must not be empty"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(DomainError::validation(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters, got {chars}"),
        ));
    }
    Ok(())
}

/// A description is at most 500 characters.
pub fn description(description: &str) -> Result<(), DomainError> {
    bounded("description", description, MAX_DESCRIPTION_CHARS)
}

/// A deactivation reason is at most 500 characters.
pub fn reason(reason: &str) -> Result<(), DomainError> {
    bounded("reason", reason, MAX_REASON_CHARS)
}

fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), DomainError> {
    let chars = value.chars().count();
    if chars > max {
        return Err(DomainError::validation(
            field,
            format!("must be at most {max} characters, got {chars}"),
        ));
    }
    Ok(())
}

/// An expiry must lie in the future of the command.
pub fn expires_at(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), DomainError> {
    if expires_at <= now {
        return Err(DomainError::validation(
            "expires_at",
            "must be in the future",
        ));
    }
    Ok(())
}

/// Metadata is a JSON object of at most 4 KiB once serialised.
pub fn metadata(metadata: &Value) -> Result<(), DomainError> {
    if !metadata.is_object() {
        return Err(DomainError::validation("metadata", "must be a JSON object"));
    }
    let size = serde_json::to_vec(metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(DomainError::validation(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes serialised, got {size}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_must_be_one_to_a_hundred_visible_characters() {
        assert!(name("a").is_ok());
        assert!(name(&"é".repeat(100)).is_ok());
        assert!(name(&"a".repeat(101)).is_err());
        assert!(name("").is_err());
        assert!(name("   ").is_err());
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert!(metadata(&json!({"team": "billing"})).is_ok());
        assert!(metadata(&json!([1, 2])).is_err());
        assert!(metadata(&json!({"x": "a".repeat(5000)})).is_err());
    }

    #[test]
    fn expiry_must_be_in_the_future() {
        let now = Utc::now();
        assert!(expires_at(now + chrono::Duration::seconds(1), now).is_ok());
        assert!(expires_at(now, now).is_err());
    }
}
