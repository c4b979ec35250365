//! The API's closed sets of words (error codes, verification codes, statuses,
//! environments...) as enums. Each has an `Other` variant that keeps a word
//! this client does not know yet, so a newer server never breaks it.

/// An enum of the API's words, with `Other(String)` for the rest; it reads
/// from and writes as the word itself.
macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name { $($(#[$vm])* $variant,)* /// A word this version does not know.
            Other(String) }
        impl $name {
            /// The word as the API writes it.
            pub fn as_str(&self) -> &str { match self { $(Self::$variant => $text,)* Self::Other(s) => s } }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self { match s.as_str() { $($text => Self::$variant,)* _ => Self::Other(s) } }
        }
        impl From<&str> for $name { fn from(s: &str) -> Self { Self::from(s.to_string()) } }
        impl From<$name> for String { fn from(w: $name) -> String { w.as_str().to_string() } }
        impl std::fmt::Display for $name { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) } }
    };
}

words! {
    /// The `code` of an error answer (`{"error":{"code","message","details"?}}`).
    ErrorCode {
        /// 400: the body is not JSON, or a required body is empty.
        MalformedRequest = "malformed_request",
        /// 401: the management token is missing or refused; `/v1/auth`: no valid key.
        Unauthorized = "unauthorized",
        /// 403: an API key presented as a management credential.
        ApiKeyNotAllowed = "api_key_not_allowed",
        /// 403 (`/v1/auth`): a required permission is missing.
        InsufficientPermissions = "insufficient_permissions",
        /// 403 (`/v1/auth`): the client's address is outside the key's `allowed_ips`.
        IpNotAllowed = "ip_not_allowed",
        /// 404: no such key in the caller's tenant, or deleted.
        KeyNotFound = "key_not_found",
        /// 404: no such webhook endpoint.
        WebhookNotFound = "webhook_not_found",
        /// 404: no such webhook message.
        DeliveryNotFound = "delivery_not_found",
        /// 404: no such route.
        NotFound = "not_found",
        /// 405: the route exists, the method does not.
        MethodNotAllowed = "method_not_allowed",
        /// 408: the body did not arrive in time.
        RequestTimeout = "request_timeout",
        /// 409: the key was already rotated, or concurrent changes kept conflicting.
        Conflict = "conflict",
        /// 409: rotating an expired key.
        KeyExpired = "key_expired",
        /// An import item whose hash another tenant imported (or that was deleted).
        ImportConflict = "import_conflict",
        /// 413: the body is too large.
        PayloadTooLarge = "payload_too_large",
        /// 422: a field, query parameter or header breaks its rule (`details.field`).
        ValidationFailed = "validation_failed",
        /// 422: the same `Idempotency-Key` with another body.
        IdempotencyKeyReused = "idempotency_key_reused",
        /// 422: the tenant holds as many live keys as it may.
        KeyLimitReached = "key_limit_reached",
        /// 422: the tenant policy refuses this (`details.rule`).
        PolicyViolation = "policy_violation",
        /// 429: too many unknown keys from one address; `/v1/auth`: the key's rate limit.
        RateLimited = "rate_limited",
        /// 429 (`/v1/auth`): the key has no credits left.
        UsageExceeded = "usage_exceeded",
        /// 500: an unexpected failure.
        Internal = "internal",
        /// 503: committed, but this node cannot show its effect yet.
        CommittedNotVisible = "committed_not_visible",
        /// 503: the event store is unreachable.
        StoreUnavailable = "store_unavailable",
    }
}

words! {
    /// The `code` of a verification.
    VerificationCode {
        /// The key is valid for this request.
        Valid = "VALID",
        /// Unknown, deleted or malformed key.
        NotFound = "NOT_FOUND",
        /// Deactivated.
        Disabled = "DISABLED",
        /// Past its `expires_at`.
        Expired = "EXPIRED",
        /// The client address is outside the key's `allowed_ips`.
        IpNotAllowed = "IP_NOT_ALLOWED",
        /// The key is of another environment than the one required.
        WrongEnvironment = "WRONG_ENVIRONMENT",
        /// A required permission is not granted.
        InsufficientPermissions = "INSUFFICIENT_PERMISSIONS",
        /// A rate limit of the key (or its owner) is reached.
        RateLimited = "RATE_LIMITED",
        /// No credits left.
        UsageExceeded = "USAGE_EXCEEDED",
    }
}

words! {
    /// A key's `status`.
    KeyStatus {
        Active = "active",
        Inactive = "inactive",
        Expired = "expired",
    }
}

words! {
    /// A key's environment.
    Environment {
        Live = "live",
        Test = "test",
    }
}

words! {
    /// What a leak report leads to (tenant policy `on_leak`; by default
    /// `deactivate`).
    #[derive(Default)]
    OnLeak {
        #[default]
        Deactivate = "deactivate",
        Delete = "delete",
        Notify = "notify",
    }
}

words! {
    /// How often credits refill.
    RefillInterval {
        Daily = "daily",
        Monthly = "monthly",
    }
}

words! {
    /// A change of a key's credits (`POST /v1/keys/{id}/credits`).
    CreditOp {
        Set = "set",
        Increment = "increment",
        Decrement = "decrement",
    }
}

words! {
    /// A webhook endpoint's status.
    WebhookStatus {
        Enabled = "enabled",
        Disabled = "disabled",
    }
}

words! {
    /// The bucket size of usage over time.
    Granularity {
        Minute = "minute",
        Hour = "hour",
        Day = "day",
    }
}

words! {
    /// The order of audit events.
    Order {
        Asc = "asc",
        Desc = "desc",
    }
}

words! {
    /// Where a webhook message stands (`pending` and `failed` list the same:
    /// messages not delivered yet).
    DeliveryStatus {
        Pending = "pending",
        Delivered = "delivered",
        Failed = "failed",
    }
}

impl VerificationCode {
    /// True for [`VerificationCode::Valid`].
    pub fn is_valid(&self) -> bool {
        *self == Self::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_words_read_as_variants_and_others_are_kept() {
        let code: ErrorCode = serde_json::from_str("\"key_not_found\"").expect("code");
        assert_eq!(code, ErrorCode::KeyNotFound);
        let code: ErrorCode = serde_json::from_str("\"brand_new\"").expect("code");
        assert_eq!(code, ErrorCode::Other("brand_new".into()));
        assert_eq!(serde_json::to_string(&code).expect("json"), "\"brand_new\"");
        let v: VerificationCode = "USAGE_EXCEEDED".into();
        assert_eq!(v, VerificationCode::UsageExceeded);
        assert_eq!(v.to_string(), "USAGE_EXCEEDED");
        assert_eq!(
            serde_json::to_string(&Environment::Test).expect("json"),
            "\"test\""
        );
    }
}
