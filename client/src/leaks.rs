//! Leak reports: the public `POST /v1/leaks/report`, and a secret-scanning
//! partner's signed `POST /v1/leaks/{reporter}`.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// `POST /v1/leaks/report`: strings that may be keys, found somewhere.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeakReport {
    /// At most 100, each at most 256 bytes.
    pub keys: Vec<Secret>,
    /// Where they were found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The answer to a public report: it says nothing about the strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakReceipt {
    pub received: usize,
}

/// A partner's report as signed: the raw body and its signature headers
/// (`<Reporter>-Public-Key-Identifier`, `<Reporter>-Public-Key-Signature`).
#[derive(Debug, Clone)]
pub struct PartnerReport {
    /// The reporter's name, as configured with `--leak-reporter`.
    pub reporter: String,
    /// The JSON body, exactly as signed: `[{"token","type","url","source"}]`.
    pub body: Vec<u8>,
    /// The public key's identifier.
    pub key_identifier: String,
    /// Base64 DER ECDSA P-256 / SHA-256 over `body`.
    pub signature: String,
}

/// The answer for one reported token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerAnswer {
    /// The token, for keyledger's keys (`true_positive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_raw: Option<Secret>,
    /// The token's hex SHA-256, for the rest (`false_positive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    pub token_type: String,
    /// `true_positive` or `false_positive`.
    pub label: String,
}
