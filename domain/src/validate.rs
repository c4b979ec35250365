//! Field rules of the contract (docs/API.md), shared by create and update.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::DomainError;
use crate::json;

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_DESCRIPTION_CHARS: usize = 500;
pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_METADATA_BYTES: usize = 4096;

/// A name is 1-100 characters, not only whitespace, with no control
/// character (it is shown on terminals and in headers; NUL cannot be stored).
pub fn name(name: &str) -> Result<(), DomainError> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        return Err(DomainError::validation("name", "must not be empty"));
    }
    no_controls("name", name, &[])?;
    if chars > MAX_NAME_CHARS {
        return Err(DomainError::validation(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters, got {chars}"),
        ));
    }
    Ok(())
}

/// Control characters a multi-line text may hold (CR for CRLF line ends).
const LINE_BREAKS_AND_TABS: [char; 3] = ['\n', '\r', '\t'];

/// A description is at most 500 characters; line breaks and tabs are its only
/// control characters.
pub fn description(description: &str) -> Result<(), DomainError> {
    no_controls("description", description, &LINE_BREAKS_AND_TABS)?;
    bounded("description", description, MAX_DESCRIPTION_CHARS)
}

/// A deactivation reason is at most 500 characters; line breaks and tabs are
/// its only control characters.
pub fn reason(reason: &str) -> Result<(), DomainError> {
    no_controls("reason", reason, &LINE_BREAKS_AND_TABS)?;
    bounded("reason", reason, MAX_REASON_CHARS)
}

/// Refuses NUL and every other control character (Unicode category Cc: C0,
/// DEL and C1) but those in `allowed`. NUL cannot be stored in PostgreSQL
/// text, and the others rewrite terminals and break header values.
fn no_controls(field: &'static str, value: &str, allowed: &[char]) -> Result<(), DomainError> {
    match value
        .chars()
        .find(|c| c.is_control() && !allowed.contains(c))
    {
        Some(c) => Err(DomainError::validation(
            field,
            format!(
                "must not contain control characters, found U+{:04X}",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
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

/// Metadata is a JSON object of at most 4 KiB once serialised, nested at most
/// `json::MAX_METADATA_DEPTH` levels, with no NUL in any string or key.
pub fn metadata(metadata: &Value) -> Result<(), DomainError> {
    if !metadata.is_object() {
        return Err(DomainError::validation("metadata", "must be a JSON object"));
    }
    // Depth first: it is bounded by the request's size, and it keeps what is
    // serialised below (recursively) shallow.
    let depth = json::depth(metadata);
    if depth > json::MAX_METADATA_DEPTH {
        return Err(DomainError::validation(
            "metadata",
            format!(
                "must be nested at most {} levels deep, got {depth}",
                json::MAX_METADATA_DEPTH
            ),
        ));
    }
    if json::contains_nul(metadata) {
        return Err(DomainError::validation(
            "metadata",
            "must not contain NUL characters",
        ));
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
    fn metadata_is_nested_at_most_thirty_two_levels() {
        let nest = |levels: usize| -> Value {
            let inner = format!("{}{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
            serde_json::from_str(&format!("{{\"a\":{inner}}}")).expect("json")
        };
        assert!(metadata(&nest(32)).is_ok());
        let err = metadata(&nest(33)).expect_err("too deep");
        assert!(err.to_string().contains("33"), "{err}");
        assert!(metadata(&nest(125)).is_err(), "the issue's reproduction");
    }

    #[test]
    fn metadata_refuses_nul_in_strings_and_keys() {
        assert!(metadata(&json!({"a": "x\u{0}"})).is_err());
        assert!(metadata(&json!({"a\u{0}": 1})).is_err());
        assert!(metadata(&json!({"a": "line\nbreak\u{1b}"})).is_ok());
    }

    #[test]
    fn text_fields_refuse_control_characters() {
        for bad in [
            "a\u{0}b",
            "a\rb",
            "\u{1b}[2J",
            "a\u{7f}",
            "a\u{9b}b",
            "a\nb",
        ] {
            assert!(name(bad).is_err(), "name {bad:?}");
        }
        for bad in ["a\u{0}b", "a\u{8}b", "\u{1b}[2J", "a\u{85}"] {
            assert!(description(bad).is_err(), "description {bad:?}");
            assert!(reason(bad).is_err(), "reason {bad:?}");
        }
        assert!(description("two\r\nlines\twith a tab").is_ok());
        assert!(reason("rotated:\nsee ticket").is_ok());
        assert!(name("emoji \u{1F511} and \u{10FFFD}").is_ok());
    }

    #[test]
    fn expiry_must_be_in_the_future() {
        let now = Utc::now();
        assert!(expires_at(now + chrono::Duration::seconds(1), now).is_ok());
        assert!(expires_at(now, now).is_err());
    }
}
