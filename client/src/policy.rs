//! The tenant policy (`GET /v1/policy`, `PUT /v1/policy`).

use serde::{Deserialize, Serialize};

use crate::codes::{Environment, OnLeak};

/// A tenant's policy. A `PUT` replaces the whole policy: fields left at their
/// default take the server's default. `Policy::default()` is the policy of a
/// tenant that never set one.
///
/// ```
/// use keyledger_client::{Environment, Policy};
///
/// let policy = Policy {
///     require_expiry: true,
///     allowed_environments: Some(vec![Environment::Live]),
///     ..Policy::default()
/// };
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// What a leak report leads to.
    pub on_leak: OnLeak,
    /// Longest lifetime of a key, 1 s to 100 years; `None`: no limit.
    pub max_lifetime_seconds: Option<u64>,
    /// Keys must have an `expires_at`.
    pub require_expiry: bool,
    /// Every permission of a key must be one of these; `None`: any.
    pub allowed_permissions: Option<Vec<String>>,
    /// A key's environment must be one of these; `None`: any.
    pub allowed_environments: Option<Vec<Environment>>,
}
