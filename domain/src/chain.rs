//! Tamper evidence: every event records, in its metadata, the hash of the previous
//! event of its stream (`prev_hash`), so the events of each key form a SHA-256
//! chain. Editing a stored event changes its hash and breaks the link its
//! successor recorded; the audit log also records each event's own hash, which
//! covers the last event of a chain.
//!
//! The hash covers the stored form: stream, sequence, type, version, payload and
//! metadata (which holds `prev_hash`), as JSON re-serialised from what the store
//! returns, so it is the same whoever computes it.

use std::fmt::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Metadata key of the link. Persisted: never rename.
pub const PREV_HASH: &str = "prev_hash";

/// The `prev_hash` of the first event of a stream.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The stored fields of one event that its hash covers, its JSON held as `J`:
/// parsed (`StoredFields`) or as the text `Value::to_string` writes
/// (`StoredText`, what a writer that binds text already holds).
#[derive(Debug)]
pub struct Stored<'a, J: ?Sized> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a J,
    pub metadata: &'a J,
}

// Not derived: the derive would ask `J: Copy`, which `str` is not.
impl<J: ?Sized> Clone for Stored<'_, J> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<J: ?Sized> Copy for Stored<'_, J> {}

/// An event's stored fields with its JSON parsed.
pub type StoredFields<'a> = Stored<'a, Value>;

/// An event's stored fields with its JSON as text.
pub type StoredText<'a> = Stored<'a, str>;

/// Lowercase hex SHA-256 of an event's stored fields.
pub fn event_hash(e: StoredFields<'_>) -> String {
    event_hash_text(StoredText {
        aggregate_type: e.aggregate_type,
        aggregate_id: e.aggregate_id,
        sequence: e.sequence,
        event_type: e.event_type,
        event_version: e.event_version,
        payload: &e.payload.to_string(),
        metadata: &e.metadata.to_string(),
    })
}

/// `event_hash` of fields whose JSON is already text.
pub fn event_hash_text(e: StoredText<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        e.aggregate_type,
        e.aggregate_id,
        &e.sequence.to_string(),
        e.event_type,
        e.event_version,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(e.payload.as_bytes());
    h.update([0u8]);
    h.update(e.metadata.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The `prev_hash` recorded in an event's metadata, if any.
pub fn recorded_prev_hash(metadata: &Value) -> Option<&str> {
    metadata.get(PREV_HASH).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// The hash covers JSON re-serialised from what the store returns, and
        /// the writer hashes the text it stored: a number in a key's metadata
        /// must read back to the very same text, or nodes would disagree on
        /// the chain (serde_json's `float_roundtrip`, set in Cargo.toml).
        #[test]
        fn a_number_in_stored_json_reads_back_to_the_same_text(
            x in any::<f64>().prop_filter("JSON has no NaN or infinity", |x| x.is_finite()),
        ) {
            let text = json!({"n": x}).to_string();
            let back: Value = serde_json::from_str(&text).expect("json");
            prop_assert_eq!(back.to_string(), text);
        }
    }

    fn fields<'a>(payload: &'a Value, metadata: &'a Value) -> StoredFields<'a> {
        StoredFields {
            aggregate_type: "ApiKey",
            aggregate_id: "key_1",
            sequence: 1,
            event_type: "KeyCreated",
            event_version: "2.0",
            payload,
            metadata,
        }
    }

    #[test]
    fn any_change_to_payload_or_link_changes_the_hash() {
        let payload = json!({"KeyCreated": {"name": "a"}});
        let meta = json!({"prev_hash": GENESIS});
        let base = event_hash(fields(&payload, &meta));
        let edited = json!({"KeyCreated": {"name": "b"}});
        assert_ne!(base, event_hash(fields(&edited, &meta)));
        let relinked = json!({"prev_hash": "ff"});
        assert_ne!(base, event_hash(fields(&payload, &relinked)));
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn the_hash_does_not_depend_on_whitespace_of_the_stored_json() {
        let a: Value = serde_json::from_str(r#"{"KeyCreated":{"name":"a"}}"#).expect("json");
        let b: Value =
            serde_json::from_str("{ \"KeyCreated\" : { \"name\" : \"a\" } }").expect("json");
        let meta = json!({});
        assert_eq!(event_hash(fields(&a, &meta)), event_hash(fields(&b, &meta)));
    }

    #[test]
    fn the_hash_is_the_documented_digest_and_the_same_from_text() {
        let payload = json!({"KeyCreated": {"name": "a"}});
        let meta = json!({"prev_hash": GENESIS});
        let hash = event_hash(fields(&payload, &meta));
        // SHA-256 of the NUL-separated fields, computed outside Rust.
        assert_eq!(
            hash,
            "41123eda4f86caa7835e864f014c6af0b5f3b19610031f64e4c946b07c9156ed"
        );
        let text = StoredText {
            aggregate_type: "ApiKey",
            aggregate_id: "key_1",
            sequence: 1,
            event_type: "KeyCreated",
            event_version: "2.0",
            payload: &payload.to_string(),
            metadata: &meta.to_string(),
        };
        assert_eq!(event_hash_text(text), hash);
    }
}
