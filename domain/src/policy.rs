//! A tenant's policy, in a stream of its own (aggregate type `TenantPolicy`):
//! what happens to a key reported as leaked, and the rules every key the
//! tenant creates, changes or rotates must keep (longest lifetime, required
//! expiry, allowed permissions and environments). Each event carries the whole
//! policy, so its newest event is the policy.
//!
//! The rules judge commands, not keys already issued: a key that breaks a
//! policy set after it was made stays as it is until a command changes the
//! field a rule is about.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::key::Environment;
use crate::permissions::problem_with;

/// Most entries of `allowed_permissions`.
pub const MAX_POLICY_PERMISSIONS: usize = 100;

/// Longest `max_lifetime_seconds`: 100 years of 365.25 days.
pub const MAX_LIFETIME_LIMIT_SECONDS: u64 = 100 * 31_557_600;

/// Aggregate type of policy streams. Persisted: never change it.
pub const POLICY_AGGREGATE_TYPE: &str = "TenantPolicy";
pub const POLICY_EVENT_VERSION: &str = "1.0";

/// The stream id of a tenant's policy: `pol_` and 32 hex digits of
/// SHA-256(length of tenant, tenant).
pub fn policy_stream_id(tenant: &str) -> String {
    crate::ids::digest_id(
        "pol_",
        &[&(tenant.len() as u64).to_be_bytes(), tenant.as_bytes()],
    )
}

/// What a leak report of one of the tenant's keys leads to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Deactivated with the reason "leaked" (the default).
    #[default]
    Deactivate,
    Delete,
    /// Recorded (and sent to webhooks) only.
    Notify,
}

impl LeakAction {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        match text {
            "deactivate" => Ok(Self::Deactivate),
            "delete" => Ok(Self::Delete),
            "notify" => Ok(Self::Notify),
            _ => Err(DomainError::validation(
                "on_leak",
                "must be deactivate, delete or notify",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deactivate => "deactivate",
            Self::Delete => "delete",
            Self::Notify => "notify",
        }
    }
}

/// A tenant's policy. Every field has a default, so events written before a
/// field existed read as they were meant: that rule was not set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub on_leak: LeakAction,
    /// Longest lifetime of a key, from its create or change on; `None`: any.
    pub max_lifetime_seconds: Option<u64>,
    /// Every key must have an expiry.
    pub require_expiry: bool,
    /// The only permissions a key may carry (compared as strings: a wildcard
    /// such as `orders:*` is allowed only if listed itself); `None`: any.
    /// Sorted and deduplicated.
    pub allowed_permissions: Option<Vec<String>>,
    /// The environments keys may be made in; `None`: any.
    pub allowed_environments: Option<Vec<Environment>>,
}

impl Policy {
    /// A policy from client input, checked field by field (errors are
    /// validation errors naming the field).
    pub fn parse(
        on_leak: &str,
        max_lifetime_seconds: Option<u64>,
        require_expiry: bool,
        allowed_permissions: Option<Vec<String>>,
        allowed_environments: Option<Vec<String>>,
    ) -> Result<Self, DomainError> {
        let on_leak = LeakAction::parse(on_leak)?;
        if let Some(max) = max_lifetime_seconds {
            if !(1..=MAX_LIFETIME_LIMIT_SECONDS).contains(&max) {
                return Err(DomainError::validation(
                    "max_lifetime_seconds",
                    format!(
                        "must be between 1 and {MAX_LIFETIME_LIMIT_SECONDS} (100 years), or null"
                    ),
                ));
            }
        }
        let allowed_permissions = allowed_permissions.map(catalogue).transpose()?;
        let allowed_environments = allowed_environments.map(environments).transpose()?;
        Ok(Self {
            on_leak,
            max_lifetime_seconds,
            require_expiry,
            allowed_permissions,
            allowed_environments,
        })
    }

    /// Judges a key about to be made (a create, or a rotation's successor)
    /// at `now`, and answers the expiry it gets: its own, or, with none and a
    /// `max_lifetime_seconds`, `now` plus that.
    pub fn check_new_key(
        &self,
        environment: Environment,
        permissions: &[String],
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, DomainError> {
        self.check_environment(environment)?;
        self.check_permissions(permissions)?;
        let expires_at = expires_at.or_else(|| self.latest_expiry(now));
        self.check_expiry(expires_at, now)?;
        Ok(expires_at)
    }

    /// Judges a change of a key at `now`: only the fields it changes
    /// (`None`: unchanged; `Some(None)`: an expiry cleared), so a key made
    /// before the policy can still be renamed.
    pub fn check_change(
        &self,
        permissions: Option<&[String]>,
        expires_at: Option<Option<DateTime<Utc>>>,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        if let Some(permissions) = permissions {
            self.check_permissions(permissions)?;
        }
        match expires_at {
            Some(expires_at) => self.check_expiry(expires_at, now),
            None => Ok(()),
        }
    }

    /// The environment must be allowed.
    pub fn check_environment(&self, environment: Environment) -> Result<(), DomainError> {
        match &self.allowed_environments {
            Some(allowed) if !allowed.contains(&environment) => Err(violation(
                "allowed_environments",
                format!("keys of environment {environment} are not allowed"),
            )),
            _ => Ok(()),
        }
    }

    /// Every permission must be in the catalogue, exactly.
    pub fn check_permissions(&self, permissions: &[String]) -> Result<(), DomainError> {
        let Some(allowed) = &self.allowed_permissions else {
            return Ok(());
        };
        match permissions
            .iter()
            .find(|p| allowed.binary_search(p).is_err())
        {
            Some(p) => Err(violation(
                "allowed_permissions",
                format!("permission {p} is not in the allowed permissions"),
            )),
            None => Ok(()),
        }
    }

    /// An expiry (`None`: none) must exist when required, and be no later than
    /// `now` plus the longest lifetime.
    pub fn check_expiry(
        &self,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let latest = self.latest_expiry(now);
        match (expires_at, latest) {
            (None, Some(_)) => Err(violation(
                "max_lifetime_seconds",
                format!(
                    "keys must expire within {} seconds; no expiry is not allowed",
                    self.max_lifetime_seconds.unwrap_or_default()
                ),
            )),
            (Some(at), Some(latest)) if at > latest => Err(violation(
                "max_lifetime_seconds",
                format!(
                    "keys must expire within {} seconds, at {} at the latest",
                    self.max_lifetime_seconds.unwrap_or_default(),
                    latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )),
            (None, None) if self.require_expiry => {
                Err(violation("require_expiry", "keys must have an expires_at"))
            }
            _ => Ok(()),
        }
    }

    /// `now` plus the longest lifetime, if there is one.
    fn latest_expiry(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let max = self.max_lifetime_seconds?;
        let seconds = i64::try_from(max.min(MAX_LIFETIME_LIMIT_SECONDS)).ok()?;
        now.checked_add_signed(chrono::Duration::seconds(seconds))
    }
}

fn violation(rule: &'static str, message: impl Into<String>) -> DomainError {
    DomainError::PolicyViolation {
        rule,
        message: message.into(),
    }
}

/// `allowed_permissions`: at most [`MAX_POLICY_PERMISSIONS`] entries, each a
/// valid permission; sorted and deduplicated.
fn catalogue(mut list: Vec<String>) -> Result<Vec<String>, DomainError> {
    const FIELD: &str = "allowed_permissions";
    if list.len() > MAX_POLICY_PERMISSIONS {
        return Err(DomainError::validation(
            FIELD,
            format!("at most {MAX_POLICY_PERMISSIONS} permissions are allowed"),
        ));
    }
    for (index, permission) in list.iter().enumerate() {
        if let Some(problem) = problem_with(permission) {
            return Err(DomainError::validation(
                FIELD,
                format!("entry {index} {problem}"),
            ));
        }
    }
    list.sort_unstable();
    list.dedup();
    Ok(list)
}

/// `allowed_environments`: one or both of `live` and `test`.
fn environments(list: Vec<String>) -> Result<Vec<Environment>, DomainError> {
    const FIELD: &str = "allowed_environments";
    if list.is_empty() || list.len() > 2 {
        return Err(DomainError::validation(
            FIELD,
            "must list live, test or both (null allows any)",
        ));
    }
    let mut parsed = Vec::with_capacity(list.len());
    for (index, text) in list.iter().enumerate() {
        let environment = text.parse::<Environment>().map_err(|_| {
            DomainError::validation(FIELD, format!("entry {index} must be live or test"))
        })?;
        if !parsed.contains(&environment) {
            parsed.push(environment);
        }
    }
    parsed.sort_by_key(|e| e.as_str());
    Ok(parsed)
}

#[derive(Debug, Clone, PartialEq)]
pub struct SetPolicy {
    pub tenant: String,
    pub policy: Policy,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PolicyEvent {
    TenantPolicySet(TenantPolicySet),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantPolicySet {
    pub tenant: String,
    pub policy: Policy,
    pub at: DateTime<Utc>,
}

impl PolicyEvent {
    pub fn type_name(&self) -> &'static str {
        "TenantPolicySet"
    }

    pub fn time(&self) -> DateTime<Utc> {
        let Self::TenantPolicySet(e) = self;
        e.at
    }

    pub fn policy(&self) -> &Policy {
        let Self::TenantPolicySet(e) = self;
        &e.policy
    }
}

impl DomainEvent for PolicyEvent {
    fn event_type(&self) -> String {
        self.type_name().to_string()
    }

    fn event_version(&self) -> String {
        POLICY_EVENT_VERSION.to_string()
    }
}

/// A tenant's policy as its rules see it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TenantPolicy {
    policy: Policy,
}

impl TenantPolicy {
    pub fn set(command: SetPolicy) -> PolicyEvent {
        PolicyEvent::TenantPolicySet(TenantPolicySet {
            tenant: command.tenant,
            policy: command.policy,
            at: command.at,
        })
    }
}

impl Aggregate for TenantPolicy {
    const TYPE: &'static str = POLICY_AGGREGATE_TYPE;
    type Command = SetPolicy;
    type Event = PolicyEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        sink.write(Self::set(command), self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.policy = event.policy().clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_per_tenant_and_actions_parse() {
        assert_ne!(policy_stream_id("a"), policy_stream_id("b"));
        assert!(policy_stream_id("acme").starts_with("pol_"));
        assert_eq!(LeakAction::parse("notify"), Ok(LeakAction::Notify));
        assert!(LeakAction::parse("ignore").is_err());
        assert_eq!(Policy::default().on_leak, LeakAction::Deactivate);
    }

    fn now() -> DateTime<Utc> {
        "2030-01-01T00:00:00Z".parse().expect("a time")
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn rule(result: Result<impl std::fmt::Debug, DomainError>) -> &'static str {
        match result {
            Err(DomainError::PolicyViolation { rule, .. }) => rule,
            other => panic!("expected a policy violation, got {other:?}"),
        }
    }

    fn field(result: Result<Policy, DomainError>) -> &'static str {
        match result {
            Err(DomainError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn policy(
        max: Option<u64>,
        require_expiry: bool,
        permissions: Option<&[&str]>,
        environments: Option<&[&str]>,
    ) -> Policy {
        Policy::parse(
            "deactivate",
            max,
            require_expiry,
            permissions.map(strings),
            environments.map(strings),
        )
        .expect("a valid policy")
    }

    #[test]
    fn an_event_written_before_the_key_rules_reads_as_no_rules() {
        let old: Policy = serde_json::from_str(r#"{"on_leak":"notify"}"#).expect("old shape");
        assert_eq!(
            old,
            Policy {
                on_leak: LeakAction::Notify,
                ..Policy::default()
            }
        );
        let event: PolicyEvent = serde_json::from_str(
            r#"{"TenantPolicySet":{"tenant":"acme","policy":{"on_leak":"delete"},"at":"2030-01-01T00:00:00Z"}}"#,
        )
        .expect("old event");
        assert_eq!(event.policy().on_leak, LeakAction::Delete);
        assert_eq!(event.policy().max_lifetime_seconds, None);
        assert!(!event.policy().require_expiry);
    }

    #[test]
    fn the_default_policy_allows_any_key() {
        let p = Policy::default();
        let granted = strings(&["*", "orders:*"]);
        assert_eq!(
            p.check_new_key(Environment::Test, &granted, None, now()),
            Ok(None)
        );
        assert_eq!(p.check_change(Some(&granted), Some(None), now()), Ok(()));
    }

    #[test]
    fn a_new_key_without_expiry_gets_now_plus_the_max_lifetime() {
        let p = policy(Some(3600), false, None, None);
        let expected = now() + chrono::Duration::seconds(3600);
        assert_eq!(
            p.check_new_key(Environment::Live, &[], None, now()),
            Ok(Some(expected))
        );
        let sooner = now() + chrono::Duration::seconds(60);
        assert_eq!(
            p.check_new_key(Environment::Live, &[], Some(sooner), now()),
            Ok(Some(sooner))
        );
    }

    #[test]
    fn a_new_key_expiring_after_the_max_lifetime_is_refused() {
        let p = policy(Some(3600), false, None, None);
        let later = now() + chrono::Duration::seconds(3601);
        assert_eq!(
            rule(p.check_new_key(Environment::Live, &[], Some(later), now())),
            "max_lifetime_seconds"
        );
    }

    #[test]
    fn a_change_beyond_the_max_lifetime_or_clearing_the_expiry_is_refused() {
        let p = policy(Some(3600), false, None, None);
        let later = now() + chrono::Duration::seconds(3601);
        let sooner = now() + chrono::Duration::seconds(3600);
        assert_eq!(
            rule(p.check_change(None, Some(Some(later)), now())),
            "max_lifetime_seconds"
        );
        assert_eq!(
            rule(p.check_change(None, Some(None), now())),
            "max_lifetime_seconds"
        );
        assert_eq!(p.check_change(None, Some(Some(sooner)), now()), Ok(()));
        assert_eq!(
            p.check_change(None, None, now()),
            Ok(()),
            "expiry unchanged"
        );
    }

    #[test]
    fn required_expiry_refuses_keys_without_one() {
        let p = policy(None, true, None, None);
        assert_eq!(
            rule(p.check_new_key(Environment::Live, &[], None, now())),
            "require_expiry"
        );
        assert_eq!(
            rule(p.check_change(None, Some(None), now())),
            "require_expiry"
        );
        let at = now() + chrono::Duration::days(3650);
        assert_eq!(
            p.check_new_key(Environment::Live, &[], Some(at), now()),
            Ok(Some(at))
        );
        // With a max lifetime, the default expiry comes first.
        let both = policy(Some(60), true, None, None);
        assert!(both
            .check_new_key(Environment::Live, &[], None, now())
            .is_ok_and(|at| at.is_some()));
    }

    #[test]
    fn permissions_outside_the_catalogue_are_refused_exactly() {
        let p = policy(None, false, Some(&["read", "orders:*"]), None);
        let ok = strings(&["orders:*", "read"]);
        assert!(p.check_new_key(Environment::Live, &ok, None, now()).is_ok());
        for bad in [
            &["update-data"][..],
            &["orders:read"],
            &["*"],
            &["read", "re*"],
        ] {
            assert_eq!(
                rule(p.check_new_key(Environment::Live, &strings(bad), None, now())),
                "allowed_permissions",
                "{bad:?}"
            );
            assert_eq!(
                rule(p.check_change(Some(&strings(bad)), None, now())),
                "allowed_permissions"
            );
        }
        let none = policy(None, false, Some(&[]), None);
        assert!(none
            .check_new_key(Environment::Live, &[], None, now())
            .is_ok());
    }

    #[test]
    fn environments_not_listed_are_refused() {
        let p = policy(None, false, None, Some(&["test"]));
        assert!(p.check_new_key(Environment::Test, &[], None, now()).is_ok());
        assert_eq!(
            rule(p.check_new_key(Environment::Live, &[], None, now())),
            "allowed_environments"
        );
    }

    #[test]
    fn policies_out_of_bounds_are_refused_naming_the_field() {
        let parse = |max, perms: Option<Vec<String>>, envs: Option<&[&str]>| {
            Policy::parse("notify", max, false, perms, envs.map(strings))
        };
        assert_eq!(field(parse(Some(0), None, None)), "max_lifetime_seconds");
        assert_eq!(
            field(parse(Some(MAX_LIFETIME_LIMIT_SECONDS + 1), None, None)),
            "max_lifetime_seconds"
        );
        assert!(parse(Some(MAX_LIFETIME_LIMIT_SECONDS), None, None).is_ok());
        assert!(parse(Some(1), None, None).is_ok());
        let hundred: Vec<String> = (0..MAX_POLICY_PERMISSIONS)
            .map(|i| format!("p{i}"))
            .collect();
        assert!(parse(None, Some(hundred.clone()), None).is_ok());
        let mut too_many = hundred;
        too_many.push("one-more".into());
        assert_eq!(
            field(parse(None, Some(too_many), None)),
            "allowed_permissions"
        );
        assert_eq!(
            field(parse(None, Some(strings(&["read", "Bad Name"])), None)),
            "allowed_permissions"
        );
        assert_eq!(
            field(parse(None, None, Some(&["prod"]))),
            "allowed_environments"
        );
        assert_eq!(field(parse(None, None, Some(&[]))), "allowed_environments");
        assert_eq!(
            field(parse(None, None, Some(&["live", "test", "live"]))),
            "allowed_environments"
        );
        assert_eq!(
            field(Policy::parse("ignore", None, false, None, None)),
            "on_leak"
        );
        let p = parse(
            None,
            Some(strings(&["b", "a", "b"])),
            Some(&["test", "live"]),
        )
        .expect("valid");
        assert_eq!(p.allowed_permissions, Some(strings(&["a", "b"])));
        assert_eq!(
            p.allowed_environments,
            Some(vec![Environment::Live, Environment::Test])
        );
    }
}
