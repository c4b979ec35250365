//! [`Secret`]: raw API keys, webhook secrets and tokens, never shown by
//! `Debug`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string: a raw API key, a webhook signing secret or a management
/// token. Its `Debug` output is `Secret(..)` and it has no `Display`, so it
/// does not end up in logs by accident; [`Secret::expose`] is the one way to
/// the text. It reads from and writes as a plain JSON string.
///
/// ```
/// use keyledger_client::Secret;
///
/// let key = Secret::new("kl_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEF");
/// assert_eq!(format!("{key:?}"), "Secret(..)");
/// assert!(key.expose().starts_with("kl_live_"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret's text, owned.
    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_string())
    }
}
