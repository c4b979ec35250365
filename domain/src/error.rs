//! The one error type of the domain crate. Variants name the state that made a
//! command or a parse fail; mapping them to HTTP lives in the binary crate.

use thiserror::Error;

/// Why a command was rejected or a value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// An input field breaks a rule of the contract; `field` names it.
    #[error("{field}: {message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    /// The key does not exist (or belongs to another tenant, which must look the same).
    #[error("key not found")]
    NotFound,
    /// The key was deleted; deleted keys accept no command.
    #[error("key was deleted")]
    AlreadyDeleted,
    /// The key was rotated already; it has a successor.
    #[error("key was already rotated")]
    AlreadyRotated,
    /// The key's expiry has passed at the time of the command, so it cannot be
    /// rotated: its successor would bring back access that has ended.
    #[error("key has expired")]
    Expired,
    /// A create command hit an id that already has events.
    #[error("key already exists")]
    AlreadyExists,
    /// A presented string is not an API key of the documented format. The reason
    /// never contains the presented string itself.
    #[error("malformed key: {reason}")]
    MalformedKey { reason: &'static str },
    /// The key a command would leave breaks a rule of its tenant's policy;
    /// `rule` names the policy field.
    #[error("tenant policy, {rule}: {message}")]
    PolicyViolation { rule: &'static str, message: String },
    /// A configured key prefix breaks `[a-z][a-z0-9]{0,15}`.
    #[error("invalid key prefix: must match [a-z][a-z0-9]{{0,15}}")]
    InvalidKeyPrefix,
}

impl DomainError {
    pub(crate) fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field,
            message: message.into(),
        }
    }
}
