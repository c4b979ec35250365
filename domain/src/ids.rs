//! The ids that cross module boundaries: a key's id and a tenant's name.
//! Distinct types, so a function taking both (or an idempotency key beside a
//! tenant) cannot be called with them swapped. Both read as `str` where text
//! is wanted (queries, logs, JSON), and (de)serialise as plain strings.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// Text naming one kind of thing; `Kind` tells which.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id<Kind> {
    text: String,
    #[serde(skip)]
    kind: PhantomData<Kind>,
}

/// Ids of keys (`key_` + 32 hex digits for keys keyledger issued).
#[derive(Debug)]
pub enum Key {}

/// Names of tenants.
#[derive(Debug)]
pub enum Tenant {}

/// A key's id, as commands, events, the store and the projections name it.
pub type KeyId = Id<Key>;

/// The tenant a key and a management token belong to.
pub type TenantId = Id<Tenant>;

impl<K> Id<K> {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            kind: PhantomData,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

// By hand rather than derived: a derive would ask the same of `Kind`, an
// uninhabited marker.
impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        Self::new(self.text.clone())
    }
}

impl<K> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<K> Eq for Id<K> {}

impl<K> std::hash::Hash for Id<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl<K> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<K> Deref for Id<K> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl<K> AsRef<str> for Id<K> {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl<K> Borrow<str> for Id<K> {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl<K> From<String> for Id<K> {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl<K> From<&str> for Id<K> {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl<K> From<Id<K>> for String {
    fn from(id: Id<K>) -> Self {
        id.text
    }
}

impl<K> PartialEq<str> for Id<K> {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl<K> PartialEq<&str> for Id<K> {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

/// `prefix` and 32 hex digits of the SHA-256 of `parts`, hashed in order:
/// ids derived from other text (an owner's stream, a tenant's policy, a
/// webhook message) that are fixed-length plain text whatever that text is.
pub fn digest_id(prefix: &str, parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    id.push_str(&hex(&digest[..16]));
    id
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialise_as_plain_strings_and_read_as_text() {
        let id = KeyId::new("key_0123");
        assert_eq!(serde_json::to_string(&id).expect("json"), "\"key_0123\"");
        let back: KeyId = serde_json::from_str("\"key_0123\"").expect("parse");
        assert_eq!(back, id);
        assert_eq!(&*id, "key_0123");
        let tenant = TenantId::from("acme");
        assert_eq!(tenant.to_string(), "acme");
        assert!(tenant == "acme");
    }
}
