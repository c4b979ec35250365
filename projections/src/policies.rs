//! Tenants' policies as this node last saw them, so that a create, rotate
//! or PATCH checks the policy from memory instead of reading its stream.
//!
//! Filled on a miss from the store (by the caller) and kept current by the
//! feed: every `TenantPolicySet` this node applies replaces its tenant's
//! entry. A fill races the feed: a read of the store that began before an
//! event was applied could put the older policy back after it. Each apply
//! moves a generation, and a fill is kept only if the generation has not
//! moved since the caller looked, so an entry is never older than the
//! newest event applied.

use std::collections::HashMap;
use std::sync::Mutex;

use keyledger_domain::policy::{Policy, PolicyEvent};

use crate::sync::lock;

#[derive(Debug, Default)]
pub struct PolicyCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    by_tenant: HashMap<String, Policy>,
}

/// What a lookup found: the policy, or the generation to fill it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Hit(Policy),
    Miss { generation: u64 },
}

impl PolicyCache {
    pub fn get(&self, tenant: &str) -> Cached {
        let inner = lock(&self.inner);
        match inner.by_tenant.get(tenant) {
            Some(p) => Cached::Hit(p.clone()),
            None => Cached::Miss {
                generation: inner.generation,
            },
        }
    }

    /// Keeps `policy`, read from the store after a miss at `generation`,
    /// unless an event was applied meanwhile.
    pub fn fill(&self, tenant: &str, policy: Policy, generation: u64) {
        let mut inner = lock(&self.inner);
        if inner.generation == generation {
            inner.by_tenant.insert(tenant.to_string(), policy);
        }
    }

    /// The feed's newest word on a tenant's policy.
    pub fn apply(&self, event: &PolicyEvent) {
        let PolicyEvent::TenantPolicySet(set) = event;
        let mut inner = lock(&self.inner);
        inner.generation += 1;
        inner
            .by_tenant
            .insert(set.tenant.clone(), set.policy.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::policy::{LeakAction, TenantPolicySet};

    fn set(tenant: &str, on_leak: LeakAction) -> PolicyEvent {
        PolicyEvent::TenantPolicySet(TenantPolicySet {
            tenant: tenant.into(),
            policy: Policy {
                on_leak,
                ..Policy::default()
            },
            at: chrono::Utc::now(),
        })
    }

    #[test]
    fn a_fill_that_raced_an_event_is_dropped_and_the_event_wins() {
        let cache = PolicyCache::default();
        let Cached::Miss { generation } = cache.get("acme") else {
            panic!("empty cache hit");
        };
        // The feed applies a newer policy while the store read is under way.
        cache.apply(&set("acme", LeakAction::Delete));
        cache.fill("acme", Policy::default(), generation);
        let Cached::Hit(p) = cache.get("acme") else {
            panic!("the event's policy is cached");
        };
        assert_eq!(p.on_leak, LeakAction::Delete);
    }

    #[test]
    fn a_fill_is_kept_and_later_events_replace_it() {
        let cache = PolicyCache::default();
        let Cached::Miss { generation } = cache.get("acme") else {
            panic!("empty cache hit");
        };
        cache.fill("acme", Policy::default(), generation);
        assert_eq!(cache.get("acme"), Cached::Hit(Policy::default()));
        cache.apply(&set("acme", LeakAction::Notify));
        let Cached::Hit(p) = cache.get("acme") else {
            panic!("hit");
        };
        assert_eq!(p.on_leak, LeakAction::Notify);
        assert!(matches!(cache.get("other"), Cached::Miss { .. }));
    }
}
