//! Event schema evolution: upcasters that lift stored events written by older builds
//! to the current shape before they are deserialised.
//!
//! Every stored event carries its `event_version` (see
//! [`DomainEvent::event_version`](cqrs_es::DomainEvent::event_version)). When the
//! shape of an event changes, its version is bumped and an upcaster is appended to
//! [`upcasters`]; the chain is applied in order, so an event several versions old
//! passes through every step. Event stores take the chain through
//! `PersistedEventStore::with_upcasters` / `QueryReplay::with_upcasters`; code that
//! reads [`SerializedEvent`]s itself (the projections) calls [`upcast`] before
//! deserialising.
//!
//! Upcasters work on JSON and never validate: stored events were validated when they
//! were recorded and must replay as they were.

use std::sync::LazyLock;

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster, SerializedEvent};
use serde_json::{Map, Value};

use crate::events::KEY_CREATED_VERSION;

/// Event type name of `KeyCreated`, as stored.
const KEY_CREATED: &str = "KeyCreated";

/// The chain, built once for [`upcast`].
static UPCASTERS: LazyLock<Vec<Box<dyn EventUpcaster>>> = LazyLock::new(upcasters);

/// The upcaster chain for `ApiKey` events, in the order it must be applied.
///
/// - `KeyCreated` below "2.0" → [`KEY_CREATED_VERSION`] ("2.0", stamped `"2.0.0"`
///   on the event): see [`KEY_CREATED_VERSION`] for what changed.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        KEY_CREATED,
        KEY_CREATED_VERSION,
        Box::new(key_created_v1_to_v2),
    ))]
}

/// Applies the [`upcasters`] chain, in order, to one stored event. Events already at
/// their current version, and events of types no upcaster knows, come back unchanged.
///
/// An upcast event's `event_version` is the target written out in full by cqrs-es
/// (`"2.0.0"` for [`KEY_CREATED_VERSION`] `"2.0"`). The two are the same semantic
/// version, so compare versions semantically, never as strings.
pub fn upcast(event: SerializedEvent) -> SerializedEvent {
    UPCASTERS.iter().fold(event, |e, u| {
        if u.can_upcast(&e.event_type, &e.event_version) {
            u.upcast(e)
        } else {
            e
        }
    })
}

/// `KeyCreated` "1.0" → "2.0", on the externally tagged payload `{"KeyCreated": {..}}`.
///
/// - `permissions` given as one space-separated string (the prototype format) becomes
///   an array of its whitespace-separated words, sorted and deduplicated like
///   [`Permissions`](crate::permissions::Permissions) keeps them (`""` becomes `[]`);
///   an array is left as it is.
/// - A missing `environment` becomes `"live"`, the only environment v1 knew.
/// - Missing `metadata`, `description` and `expires_at` become `null`.
///
/// Fields that are present are never touched, so a payload that already has the v2
/// shape (earlier builds wrote those labelled "1.0") comes out unchanged. A payload
/// that is not an object wrapping a `KeyCreated` object is returned as it is and
/// left for deserialisation to reject.
fn key_created_v1_to_v2(mut payload: Value) -> Value {
    let Some(fields) = payload.get_mut(KEY_CREATED).and_then(Value::as_object_mut) else {
        return payload;
    };
    if let Some(Value::String(scopes)) = fields.get("permissions") {
        let mut list: Vec<&str> = scopes.split_whitespace().collect();
        list.sort_unstable();
        list.dedup();
        let list = Value::Array(list.into_iter().map(Value::from).collect());
        fields.insert("permissions".to_owned(), list);
    }
    default_field(fields, "environment", Value::from("live"));
    default_field(fields, "metadata", Value::Null);
    default_field(fields, "description", Value::Null);
    default_field(fields, "expires_at", Value::Null);
    payload
}

/// Sets `name` to `value` when the field is absent; a present field (even `null`) stays.
fn default_field(fields: &mut Map<String, Value>, name: &str, value: Value) {
    fields.entry(name).or_insert(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{ApiKey, KeyLifecycle};
    use crate::events::{
        ApiKeyEvent, KeyCreated, KeyDeactivated, API_KEY_AGGREGATE_TYPE, EVENT_VERSION,
    };
    use crate::key::{Environment, KeyHash};
    use crate::permissions::Permissions;
    use chrono::{DateTime, TimeZone, Utc};
    use cqrs_es::{Aggregate, DomainEvent, EventEnvelope};
    use serde_json::json;

    /// What cqrs-es stamps on an event upcast to [`KEY_CREATED_VERSION`].
    const UPCAST_KEY_CREATED_VERSION: &str = "2.0.0";

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 14, 9, 26, 53)
            .single()
            .expect("valid time")
    }

    fn stored(event_type: &str, version: &str, payload: Value) -> SerializedEvent {
        SerializedEvent::new(
            "key-1".to_owned(),
            1,
            API_KEY_AGGREGATE_TYPE.to_owned(),
            event_type.to_owned(),
            version.to_owned(),
            payload,
            json!({}),
        )
    }

    /// A KeyCreated as the prototype wrote it: scope-style permissions string, no
    /// environment, metadata, description or expires_at.
    fn prototype_v1_payload() -> Value {
        json!({
            "KeyCreated": {
                "tenant": "acme",
                "key_hash": KeyHash::of("kl_live_prototype"),
                "display_prefix": "kl_live_AbCdEfGh",
                "name": "ci",
                "permissions": "keys:write  keys:read keys:write\taudit:*",
                "created_by": "alice",
                "created_at": t0(),
            }
        })
    }

    fn current_key_created() -> ApiKeyEvent {
        ApiKeyEvent::KeyCreated(KeyCreated {
            tenant: "acme".to_owned(),
            key_hash: KeyHash::of("kl_test_current"),
            display_prefix: "kl_test_AbCdEfGh".to_owned(),
            name: "deploy".to_owned(),
            description: Some("the deploy bot".to_owned()),
            environment: Environment::Test,
            permissions: Permissions::parse(vec!["keys:read".to_owned()])
                .expect("valid permissions"),
            expires_at: Some(t0()),
            metadata: Some(json!({"team": "infra"})),
            created_by: "alice".to_owned(),
            created_at: t0(),
            rotated_from: None,
            owner: None,
            ratelimits: Vec::new(),
            credits: None,
            allowed_ips: Default::default(),
            imported: Default::default(),
        })
    }

    #[test]
    fn key_created_is_version_two_and_other_events_version_one() {
        assert_eq!(current_key_created().event_version(), "2.0");
        let other = ApiKeyEvent::KeyDeactivated(KeyDeactivated {
            reason: None,
            at: t0(),
        });
        assert_eq!(other.event_version(), "1.0");
        assert_eq!(EVENT_VERSION, "1.0");
        assert_eq!(KEY_CREATED_VERSION, "2.0");
    }

    #[test]
    fn a_prototype_v1_key_created_upcasts_and_deserialises() {
        let upcasted = upcast(stored(KEY_CREATED, "1.0", prototype_v1_payload()));
        assert_eq!(upcasted.event_version, UPCAST_KEY_CREATED_VERSION);
        // Upcasting is idempotent: "2.0.0" is current, as "2.0" is.
        assert_eq!(upcast(upcasted.clone()), upcasted);
        assert_eq!(upcasted.event_type, KEY_CREATED);
        assert_eq!(upcasted.aggregate_id, "key-1");
        assert_eq!(upcasted.sequence, 1);

        let event: ApiKeyEvent =
            serde_json::from_value(upcasted.payload).expect("an upcast v1 event deserialises");
        let expected_permissions = Permissions::parse(
            ["keys:write", "keys:read", "keys:write", "audit:*"]
                .map(str::to_owned)
                .to_vec(),
        )
        .expect("valid permissions");
        let expected = ApiKeyEvent::KeyCreated(KeyCreated {
            tenant: "acme".to_owned(),
            key_hash: KeyHash::of("kl_live_prototype"),
            display_prefix: "kl_live_AbCdEfGh".to_owned(),
            name: "ci".to_owned(),
            description: None,
            environment: Environment::Live,
            permissions: expected_permissions,
            expires_at: None,
            metadata: None,
            created_by: "alice".to_owned(),
            created_at: t0(),
            rotated_from: None,
            owner: None,
            ratelimits: Vec::new(),
            credits: None,
            allowed_ips: Default::default(),
            imported: Default::default(),
        });
        assert_eq!(event, expected);
        // Permissions deserialise unvalidated, so the upcaster itself must have
        // produced the sorted, deduplicated list.
        let ApiKeyEvent::KeyCreated(created) = event else {
            panic!("expected KeyCreated");
        };
        assert_eq!(
            created.permissions.as_slice(),
            ["audit:*", "keys:read", "keys:write"]
        );
    }

    #[test]
    fn an_empty_permissions_string_becomes_no_permissions() {
        let mut payload = prototype_v1_payload();
        payload["KeyCreated"]["permissions"] = json!("  ");
        let upcasted = upcast(stored(KEY_CREATED, "1.0", payload));
        assert_eq!(upcasted.payload["KeyCreated"]["permissions"], json!([]));
        let payload = json!({"KeyCreated": {"permissions": ""}});
        let upcasted = upcast(stored(KEY_CREATED, "1.0", payload));
        assert_eq!(upcasted.payload["KeyCreated"]["permissions"], json!([]));
    }

    #[test]
    fn a_v1_labelled_event_in_the_v2_shape_is_unchanged_apart_from_its_version() {
        let payload = serde_json::to_value(current_key_created()).expect("serialise");
        let upcasted = upcast(stored(KEY_CREATED, "1.0", payload.clone()));
        assert_eq!(upcasted.payload, payload);
        let expected = stored(KEY_CREATED, UPCAST_KEY_CREATED_VERSION, payload);
        assert_eq!(upcasted, expected);

        // Present nulls stay nulls, and a stored "test" environment is kept.
        let event: ApiKeyEvent = serde_json::from_value(upcasted.payload).expect("deserialise");
        assert_eq!(event, current_key_created());
    }

    #[test]
    fn a_current_key_created_is_not_touched() {
        let event = current_key_created();
        let current = stored(
            &event.event_type(),
            &event.event_version(),
            serde_json::to_value(&event).expect("serialise"),
        );
        for u in upcasters() {
            assert!(!u.can_upcast(&current.event_type, &current.event_version));
        }
        assert_eq!(upcast(current.clone()), current);

        // Even one that would otherwise be upcast: version "2.0" is final.
        let prototype_shaped = stored(KEY_CREATED, "2.0", prototype_v1_payload());
        assert_eq!(upcast(prototype_shaped.clone()), prototype_shaped);
    }

    #[test]
    fn other_event_types_are_not_touched() {
        let event = ApiKeyEvent::KeyDeactivated(KeyDeactivated {
            reason: Some("rotated".to_owned()),
            at: t0(),
        });
        let serialized = stored(
            "KeyDeactivated",
            "1.0",
            serde_json::to_value(&event).expect("serialise"),
        );
        for u in upcasters() {
            assert!(!u.can_upcast("KeyDeactivated", "1.0"));
        }
        assert_eq!(upcast(serialized.clone()), serialized);
    }

    #[test]
    fn unexpected_payloads_are_left_for_deserialisation_to_reject() {
        for payload in [json!("KeyCreated"), json!({"KeyCreated": []}), json!({})] {
            let upcasted = upcast(stored(KEY_CREATED, "1.0", payload.clone()));
            assert_eq!(upcasted.payload, payload);
            assert!(serde_json::from_value::<ApiKeyEvent>(upcasted.payload).is_err());
        }
    }

    #[test]
    fn an_upcast_v1_event_loads_as_an_envelope_and_applies() {
        let envelope = EventEnvelope::<ApiKey>::try_from(upcast(stored(
            KEY_CREATED,
            "1.0",
            prototype_v1_payload(),
        )))
        .expect("the upcast event converts to an envelope");
        assert_eq!(envelope.aggregate_id, "key-1");
        assert_eq!(envelope.sequence, 1);

        let mut key = ApiKey::default();
        assert_eq!(key.lifecycle(), KeyLifecycle::Absent);
        key.apply(envelope.payload);
        assert_eq!(key.lifecycle(), KeyLifecycle::Active);
    }

    #[test]
    fn without_the_upcaster_a_prototype_event_does_not_load() {
        let raw = stored(KEY_CREATED, "1.0", prototype_v1_payload());
        assert!(EventEnvelope::<ApiKey>::try_from(raw).is_err());
    }
}
