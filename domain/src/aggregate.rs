//! The `ApiKey` aggregate: the rules of a key's life. It holds only what the rules
//! need; everything shown to users comes from the projections.

use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use crate::commands::{CreateKey, KeyCommand, KeyCommandKind, UpdateKey};
use crate::error::DomainError;
use crate::events::{
    ApiKeyEvent, ExpiryNotice, KeyCreated, KeyDeactivated, KeyDeleted, KeyExpiryNoticed,
    KeyExpirySet, KeyLeakReported, KeyReactivated, KeyUpdated, API_KEY_AGGREGATE_TYPE,
};
use crate::permissions::Permissions;
use crate::{limits, validate};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyLifecycle {
    /// No event yet: the id names no key.
    #[default]
    Absent,
    Active,
    Inactive,
    Deleted,
}

/// State of one API key as far as its rules care.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ApiKey {
    lifecycle: KeyLifecycle,
    tenant: String,
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    rotated_to: Option<String>,
    /// Expiry notices given, for the expiry they were about.
    #[serde(default)]
    noticed: Vec<(ExpiryNotice, DateTime<Utc>)>,
    /// Leak reports recorded: reporter and URL (a retry records nothing).
    #[serde(default)]
    leaks: Vec<(String, Option<String>)>,
}

/// The most leak reports one key keeps apart; beyond them every report is
/// recorded (a key reported this often is revoked by then anyway).
const MAX_LEAK_REPORTS: usize = 64;

impl ApiKey {
    pub fn lifecycle(&self) -> KeyLifecycle {
        self.lifecycle
    }

    /// Rejects commands to keys that do not exist for this tenant, or no longer exist.
    fn ensure_live_for(&self, tenant: &str) -> Result<(), DomainError> {
        match self.lifecycle {
            KeyLifecycle::Absent => Err(DomainError::NotFound),
            // Another tenant's key must be indistinguishable from no key at all.
            _ if self.tenant != tenant => Err(DomainError::NotFound),
            KeyLifecycle::Deleted => Err(DomainError::AlreadyDeleted),
            KeyLifecycle::Active | KeyLifecycle::Inactive => Ok(()),
        }
    }

    fn create(
        &self,
        c: CreateKey,
        tenant: String,
        actor: String,
        at: DateTime<Utc>,
    ) -> Result<ApiKeyEvent, DomainError> {
        if self.lifecycle != KeyLifecycle::Absent {
            return Err(DomainError::AlreadyExists);
        }
        validate::name(&c.name)?;
        if let Some(d) = &c.description {
            validate::description(d)?;
        }
        let permissions = Permissions::parse(c.permissions)?;
        if let Some(exp) = c.expires_at {
            validate::expires_at(exp, at)?;
        }
        if let Some(m) = &c.metadata {
            validate::metadata(m)?;
        }
        if let Some(o) = &c.owner {
            limits::owner(o)?;
        }
        limits::ratelimits(&c.ratelimits)?;
        if let Some(credits) = &c.credits {
            limits::credits(credits)?;
        }
        // An imported key may have been issued before now, never after.
        let created_at = match c.imported.as_ref().and_then(|i| i.created_at) {
            Some(issued) if issued > at => {
                return Err(DomainError::validation(
                    "created_at",
                    "must not be in the future",
                ))
            }
            Some(issued) => issued,
            None => at,
        };
        Ok(ApiKeyEvent::KeyCreated(KeyCreated {
            tenant,
            key_hash: c.key_hash,
            display_prefix: c.display_prefix,
            name: c.name,
            description: c.description,
            environment: c.environment,
            permissions,
            expires_at: c.expires_at,
            metadata: c.metadata,
            created_by: actor,
            created_at,
            rotated_from: c.rotated_from,
            owner: c.owner,
            ratelimits: c.ratelimits,
            credits: c.credits,
            allowed_ips: c.allowed_ips,
            imported: c.imported.is_some(),
        }))
    }

    /// Once rotated, a key's expiry can only move earlier: the rotation gave it
    /// its last moment (its successor carries on), so clearing the expiry or
    /// moving it later would keep a retired key alive. Each accepted change
    /// lowers the bound, so a grace cut short cannot grow back either.
    fn ensure_retirement_kept(&self, expiry: Option<DateTime<Utc>>) -> Result<(), DomainError> {
        if self.rotated_to.is_none() {
            return Ok(());
        }
        match (expiry, self.expires_at) {
            (None, _) => Err(DomainError::validation(
                "expires_at",
                "cannot be cleared on a rotated key",
            )),
            (Some(exp), Some(end)) if exp > end => Err(DomainError::validation(
                "expires_at",
                format!(
                    "must not be later than {} on a rotated key",
                    end.to_rfc3339_opts(SecondsFormat::Millis, true)
                ),
            )),
            // Earlier (or the same), or a key whose expiry an older version let
            // a PATCH clear after rotation: any expiry shortens its life.
            (Some(_), _) => Ok(()),
        }
    }

    fn update(&self, u: UpdateKey, at: DateTime<Utc>) -> Result<KeyUpdated, DomainError> {
        if let Some(n) = &u.name {
            validate::name(n)?;
        }
        if let Some(Some(d)) = &u.description {
            validate::description(d)?;
        }
        let permissions = u.permissions.map(Permissions::parse).transpose()?;
        if let Some(expiry) = u.expires_at {
            if let Some(exp) = expiry {
                validate::expires_at(exp, at)?;
            }
            self.ensure_retirement_kept(expiry)?;
        }
        if let Some(Some(m)) = &u.metadata {
            validate::metadata(m)?;
        }
        if let Some(Some(o)) = &u.owner {
            limits::owner(o)?;
        }
        if let Some(r) = &u.ratelimits {
            limits::ratelimits(r)?;
        }
        Ok(KeyUpdated {
            name: u.name,
            description: u.description,
            permissions,
            expires_at: u.expires_at,
            metadata: u.metadata,
            owner: u.owner,
            ratelimits: u.ratelimits,
            allowed_ips: u.allowed_ips,
            updated_at: at,
        })
    }
}

impl Aggregate for ApiKey {
    const TYPE: &'static str = API_KEY_AGGREGATE_TYPE;
    type Command = KeyCommand;
    type Event = ApiKeyEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let KeyCommand {
            tenant,
            actor,
            at,
            kind,
        } = command;
        let event = match kind {
            KeyCommandKind::CreateKey(c) => self.create(c, tenant, actor, at)?,
            KeyCommandKind::UpdateKey(u) => {
                self.ensure_live_for(&tenant)?;
                let updated = self.update(u, at)?;
                if updated.is_empty() {
                    return Ok(());
                }
                ApiKeyEvent::KeyUpdated(updated)
            }
            KeyCommandKind::DeactivateKey { reason } => {
                self.ensure_live_for(&tenant)?;
                if let Some(r) = &reason {
                    validate::reason(r)?;
                }
                if self.lifecycle == KeyLifecycle::Inactive {
                    return Ok(());
                }
                ApiKeyEvent::KeyDeactivated(KeyDeactivated { reason, at })
            }
            KeyCommandKind::ReactivateKey => {
                self.ensure_live_for(&tenant)?;
                if self.lifecycle == KeyLifecycle::Active {
                    return Ok(());
                }
                ApiKeyEvent::KeyReactivated(KeyReactivated { at })
            }
            KeyCommandKind::DeleteKey => {
                self.ensure_live_for(&tenant)?;
                ApiKeyEvent::KeyDeleted(KeyDeleted { at })
            }
            KeyCommandKind::RotateKey { successor, grace } => {
                self.ensure_live_for(&tenant)?;
                if self.rotated_to.is_some() {
                    return Err(DomainError::AlreadyRotated);
                }
                // An expired key verifies as EXPIRED from `expires_at` on; a
                // successor would bring that access back. Judged at the
                // command's time, as verification judges at its own.
                if self.expires_at.is_some_and(|exp| exp <= at) {
                    return Err(DomainError::Expired);
                }
                if grace < chrono::Duration::zero() {
                    return Err(DomainError::validation(
                        "grace_period_seconds",
                        "must not be negative",
                    ));
                }
                // Rotation never extends a key's life.
                let end = at + grace;
                let expires_at = self.expires_at.map_or(end, |own| own.min(end));
                ApiKeyEvent::KeyExpirySet(KeyExpirySet {
                    expires_at,
                    rotated_to: Some(successor),
                    at,
                })
            }
            KeyCommandKind::NoticeExpiry { notice, expires_at } => {
                self.ensure_live_for(&tenant)?;
                let given = self.noticed.contains(&(notice, expires_at));
                if self.expires_at != Some(expires_at) || given || !notice.due(expires_at, at) {
                    return Ok(());
                }
                ApiKeyEvent::KeyExpiryNoticed(KeyExpiryNoticed {
                    notice,
                    expires_at,
                    at,
                })
            }
            KeyCommandKind::ReportLeak {
                reporter,
                source,
                url,
            } => {
                self.ensure_live_for(&tenant)?;
                if self.leaks.contains(&(reporter.clone(), url.clone())) {
                    return Ok(());
                }
                ApiKeyEvent::KeyLeakReported(KeyLeakReported {
                    reporter,
                    source,
                    url,
                    at,
                })
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ApiKeyEvent::KeyCreated(e) => {
                self.lifecycle = KeyLifecycle::Active;
                self.tenant = e.tenant;
                self.expires_at = e.expires_at;
            }
            ApiKeyEvent::KeyUpdated(e) => {
                if let Some(exp) = e.expires_at {
                    self.expires_at = exp;
                }
            }
            ApiKeyEvent::KeyDeactivated(_) => self.lifecycle = KeyLifecycle::Inactive,
            ApiKeyEvent::KeyReactivated(_) => self.lifecycle = KeyLifecycle::Active,
            ApiKeyEvent::KeyDeleted(_) => self.lifecycle = KeyLifecycle::Deleted,
            ApiKeyEvent::KeyExpirySet(e) => {
                self.expires_at = Some(e.expires_at);
                if e.rotated_to.is_some() {
                    self.rotated_to = e.rotated_to;
                }
            }
            ApiKeyEvent::KeyExpiryNoticed(e) => {
                // Only notices about the current expiry matter.
                self.noticed.retain(|(_, exp)| *exp == e.expires_at);
                self.noticed.push((e.notice, e.expires_at));
            }
            ApiKeyEvent::KeyLeakReported(e) => {
                if self.leaks.len() < MAX_LEAK_REPORTS {
                    self.leaks.push((e.reporter, e.url));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Environment, KeyHash};
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    type Given = TestFramework<ApiKey>;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    fn command(kind: KeyCommandKind) -> KeyCommand {
        KeyCommand {
            tenant: "acme".into(),
            actor: "alice".into(),
            at: t0(),
            kind,
        }
    }

    fn create_cmd() -> CreateKey {
        CreateKey {
            key_hash: KeyHash::of("kl_live_example"),
            display_prefix: "kl_live_exampleX".into(),
            name: "billing".into(),
            description: None,
            environment: Environment::Live,
            permissions: vec!["keys:read".into()],
            expires_at: None,
            metadata: None,
            rotated_from: None,
            owner: None,
            ratelimits: Vec::new(),
            credits: None,
            allowed_ips: Default::default(),
            imported: Default::default(),
        }
    }

    fn created() -> ApiKeyEvent {
        ApiKeyEvent::KeyCreated(KeyCreated {
            tenant: "acme".into(),
            key_hash: KeyHash::of("kl_live_example"),
            display_prefix: "kl_live_exampleX".into(),
            name: "billing".into(),
            description: None,
            environment: Environment::Live,
            permissions: Permissions::parse(vec!["keys:read".into()]).expect("valid"),
            expires_at: None,
            metadata: None,
            created_by: "alice".into(),
            created_at: t0(),
            rotated_from: None,
            owner: None,
            ratelimits: Vec::new(),
            credits: None,
            allowed_ips: Default::default(),
            imported: Default::default(),
        })
    }

    fn deactivated() -> ApiKeyEvent {
        ApiKeyEvent::KeyDeactivated(KeyDeactivated {
            reason: None,
            at: t0(),
        })
    }

    fn deleted() -> ApiKeyEvent {
        ApiKeyEvent::KeyDeleted(KeyDeleted { at: t0() })
    }

    #[test]
    fn creating_a_key_records_key_created_with_the_actor() {
        Given::with(())
            .given_no_previous_events()
            .when(command(KeyCommandKind::CreateKey(create_cmd())))
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn creating_over_an_existing_key_is_rejected() {
        Given::with(())
            .given(vec![created()])
            .when(command(KeyCommandKind::CreateKey(create_cmd())))
            .then_expect_error(DomainError::AlreadyExists);
    }

    #[test]
    fn creating_with_an_empty_name_fails_validation_on_name() {
        let mut c = create_cmd();
        c.name = String::new();
        let result = Given::with(())
            .given_no_previous_events()
            .when(command(KeyCommandKind::CreateKey(c)))
            .inspect_result();
        assert!(matches!(
            result,
            Err(DomainError::Validation { field: "name", .. })
        ));
    }

    #[test]
    fn creating_with_a_past_expiry_fails_validation() {
        let mut c = create_cmd();
        c.expires_at = Some(t0() - chrono::Duration::seconds(1));
        let result = Given::with(())
            .given_no_previous_events()
            .when(command(KeyCommandKind::CreateKey(c)))
            .inspect_result();
        assert!(matches!(
            result,
            Err(DomainError::Validation {
                field: "expires_at",
                ..
            })
        ));
    }

    #[test]
    fn creating_with_a_bad_permission_fails_validation() {
        let mut c = create_cmd();
        c.permissions = vec!["Keys Read".into()];
        let result = Given::with(())
            .given_no_previous_events()
            .when(command(KeyCommandKind::CreateKey(c)))
            .inspect_result();
        assert!(matches!(
            result,
            Err(DomainError::Validation {
                field: "permissions",
                ..
            })
        ));
    }

    #[test]
    fn deactivating_an_active_key_records_key_deactivated() {
        Given::with(())
            .given(vec![created()])
            .when(command(KeyCommandKind::DeactivateKey { reason: None }))
            .then_expect_events(vec![deactivated()]);
    }

    #[test]
    fn deactivating_an_inactive_key_records_nothing() {
        Given::with(())
            .given(vec![created(), deactivated()])
            .when(command(KeyCommandKind::DeactivateKey { reason: None }))
            .then_expect_events(vec![]);
    }

    #[test]
    fn reactivating_an_inactive_key_records_key_reactivated() {
        Given::with(())
            .given(vec![created(), deactivated()])
            .when(command(KeyCommandKind::ReactivateKey))
            .then_expect_events(vec![ApiKeyEvent::KeyReactivated(KeyReactivated {
                at: t0(),
            })]);
    }

    #[test]
    fn reactivating_an_active_key_records_nothing() {
        Given::with(())
            .given(vec![created()])
            .when(command(KeyCommandKind::ReactivateKey))
            .then_expect_events(vec![]);
    }

    #[test]
    fn deleting_a_key_records_key_deleted() {
        Given::with(())
            .given(vec![created(), deactivated()])
            .when(command(KeyCommandKind::DeleteKey))
            .then_expect_events(vec![deleted()]);
    }

    #[test]
    fn a_deleted_key_accepts_no_command() {
        for kind in [
            KeyCommandKind::DeleteKey,
            KeyCommandKind::ReactivateKey,
            KeyCommandKind::DeactivateKey { reason: None },
            KeyCommandKind::UpdateKey(UpdateKey {
                name: Some("x".into()),
                ..UpdateKey::default()
            }),
        ] {
            Given::with(())
                .given(vec![created(), deleted()])
                .when(command(kind))
                .then_expect_error(DomainError::AlreadyDeleted);
        }
    }

    #[test]
    fn commands_to_an_unknown_key_are_not_found() {
        Given::with(())
            .given_no_previous_events()
            .when(command(KeyCommandKind::ReactivateKey))
            .then_expect_error(DomainError::NotFound);
    }

    #[test]
    fn another_tenants_key_looks_absent() {
        let mut c = command(KeyCommandKind::DeleteKey);
        c.tenant = "globex".into();
        Given::with(())
            .given(vec![created()])
            .when(c)
            .then_expect_error(DomainError::NotFound);
    }

    #[test]
    fn updating_records_only_the_given_fields() {
        let update = UpdateKey {
            name: Some("renamed".into()),
            description: Some(None),
            ..UpdateKey::default()
        };
        Given::with(())
            .given(vec![created()])
            .when(command(KeyCommandKind::UpdateKey(update)))
            .then_expect_events(vec![ApiKeyEvent::KeyUpdated(KeyUpdated {
                name: Some("renamed".into()),
                description: Some(None),
                updated_at: t0(),
                ..KeyUpdated::default()
            })]);
    }

    fn rotate(hours: i64) -> KeyCommandKind {
        KeyCommandKind::RotateKey {
            successor: "key_next".into(),
            grace: chrono::Duration::hours(hours),
        }
    }

    #[test]
    fn rotating_sets_expiry_after_the_grace_period_and_links_the_successor() {
        Given::with(())
            .given(vec![created()])
            .when(command(rotate(24)))
            .then_expect_events(vec![ApiKeyEvent::KeyExpirySet(KeyExpirySet {
                expires_at: t0() + chrono::Duration::hours(24),
                rotated_to: Some("key_next".into()),
                at: t0(),
            })]);
    }

    #[test]
    fn rotation_never_extends_a_keys_life() {
        let soon = t0() + chrono::Duration::hours(1);
        let mut update = KeyUpdated {
            expires_at: Some(Some(soon)),
            updated_at: t0(),
            ..KeyUpdated::default()
        };
        update.name = None;
        Given::with(())
            .given(vec![created(), ApiKeyEvent::KeyUpdated(update)])
            .when(command(rotate(24)))
            .then_expect_events(vec![ApiKeyEvent::KeyExpirySet(KeyExpirySet {
                expires_at: soon,
                rotated_to: Some("key_next".into()),
                at: t0(),
            })]);
    }

    #[test]
    fn a_rotated_key_cannot_be_rotated_again() {
        Given::with(())
            .given(vec![
                created(),
                ApiKeyEvent::KeyExpirySet(KeyExpirySet {
                    expires_at: t0(),
                    rotated_to: Some("key_next".into()),
                    at: t0(),
                }),
            ])
            .when(command(rotate(1)))
            .then_expect_error(DomainError::AlreadyRotated);
    }

    #[test]
    fn a_deleted_key_cannot_be_rotated() {
        Given::with(())
            .given(vec![created(), deleted()])
            .when(command(rotate(1)))
            .then_expect_error(DomainError::AlreadyDeleted);
    }

    #[test]
    fn an_empty_update_records_nothing() {
        Given::with(())
            .given(vec![created()])
            .when(command(KeyCommandKind::UpdateKey(UpdateKey::default())))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_overlong_deactivation_reason_fails_validation() {
        let result = Given::with(())
            .given(vec![created()])
            .when(command(KeyCommandKind::DeactivateKey {
                reason: Some("x".repeat(501)),
            }))
            .inspect_result();
        assert!(matches!(
            result,
            Err(DomainError::Validation {
                field: "reason",
                ..
            })
        ));
    }

    fn hours(h: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::hours(h)
    }

    /// A key created an hour before `t0` that expires at `expires_at`.
    fn created_expiring(expires_at: DateTime<Utc>) -> ApiKeyEvent {
        let ApiKeyEvent::KeyCreated(mut c) = created() else {
            unreachable!("created() is a KeyCreated");
        };
        c.created_at = hours(-1);
        c.expires_at = Some(expires_at);
        ApiKeyEvent::KeyCreated(c)
    }

    /// The old key's half of a rotation: it now expires at `expires_at`.
    fn rotated_until(expires_at: DateTime<Utc>) -> ApiKeyEvent {
        ApiKeyEvent::KeyExpirySet(KeyExpirySet {
            expires_at,
            rotated_to: Some("key_next".into()),
            at: t0(),
        })
    }

    fn set_expiry(expires_at: Option<DateTime<Utc>>) -> KeyCommandKind {
        KeyCommandKind::UpdateKey(UpdateKey {
            expires_at: Some(expires_at),
            ..UpdateKey::default()
        })
    }

    fn expiry_updated(expires_at: Option<DateTime<Utc>>) -> ApiKeyEvent {
        ApiKeyEvent::KeyUpdated(KeyUpdated {
            expires_at: Some(expires_at),
            updated_at: t0(),
            ..KeyUpdated::default()
        })
    }

    fn fails_on_expires_at(result: Result<Vec<ApiKeyEvent>, DomainError>) {
        assert!(
            matches!(
                result,
                Err(DomainError::Validation {
                    field: "expires_at",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn a_rotated_keys_expiry_cannot_be_cleared() {
        let result = Given::with(())
            .given(vec![created(), rotated_until(hours(1))])
            .when(command(set_expiry(None)))
            .inspect_result();
        fails_on_expires_at(result);
    }

    #[test]
    fn a_rotated_keys_expiry_cannot_move_later() {
        let result = Given::with(())
            .given(vec![created(), rotated_until(hours(1))])
            .when(command(set_expiry(Some(hours(2)))))
            .inspect_result();
        fails_on_expires_at(result);
    }

    #[test]
    fn a_rotated_keys_expiry_may_move_earlier_or_stay() {
        for at in [t0() + chrono::Duration::minutes(30), hours(1)] {
            Given::with(())
                .given(vec![created(), rotated_until(hours(1))])
                .when(command(set_expiry(Some(at))))
                .then_expect_events(vec![expiry_updated(Some(at))]);
        }
    }

    #[test]
    fn a_shortened_grace_cannot_grow_back() {
        let result = Given::with(())
            .given(vec![
                created(),
                rotated_until(hours(2)),
                expiry_updated(Some(hours(1))),
            ])
            .when(command(set_expiry(Some(hours(2)))))
            .inspect_result();
        fails_on_expires_at(result);
    }

    #[test]
    fn a_rotated_key_still_takes_other_updates() {
        let update = UpdateKey {
            name: Some("renamed".into()),
            ..UpdateKey::default()
        };
        Given::with(())
            .given(vec![created(), rotated_until(hours(1))])
            .when(command(KeyCommandKind::UpdateKey(update)))
            .then_expect_events(vec![ApiKeyEvent::KeyUpdated(KeyUpdated {
                name: Some("renamed".into()),
                updated_at: t0(),
                ..KeyUpdated::default()
            })]);
    }

    #[test]
    fn a_key_never_rotated_may_still_clear_or_extend_its_expiry() {
        for expiry in [None, Some(hours(48))] {
            Given::with(())
                .given(vec![created_expiring(hours(1))])
                .when(command(set_expiry(expiry)))
                .then_expect_events(vec![expiry_updated(expiry)]);
        }
    }

    #[test]
    fn an_expired_key_cannot_be_rotated() {
        // Expired a second ago, and expiring at the very time of the command
        // (verification answers EXPIRED from `expires_at` on).
        for expired in [t0() - chrono::Duration::seconds(1), t0()] {
            for grace in [0, 24] {
                Given::with(())
                    .given(vec![created_expiring(expired)])
                    .when(command(rotate(grace)))
                    .then_expect_error(DomainError::Expired);
            }
        }
    }

    #[test]
    fn expiry_is_judged_at_the_time_of_the_command() {
        let expires = t0() + chrono::Duration::milliseconds(1);
        Given::with(())
            .given(vec![created_expiring(expires)])
            .when(command(rotate(24)))
            .then_expect_events(vec![rotated_until(expires)]);
        let mut later = command(rotate(24));
        later.at = expires;
        Given::with(())
            .given(vec![created_expiring(expires)])
            .when(later)
            .then_expect_error(DomainError::Expired);
    }

    #[test]
    fn a_deactivated_key_can_be_rotated_and_stays_inactive() {
        let mut key = ApiKey::default();
        for e in [created(), deactivated(), rotated_until(hours(24))] {
            key.apply(e);
        }
        assert_eq!(key.lifecycle(), KeyLifecycle::Inactive);
        Given::with(())
            .given(vec![created(), deactivated()])
            .when(command(rotate(24)))
            .then_expect_events(vec![rotated_until(hours(24))]);
    }
}
