//! Replaying the feed from position 0 in memory: what the SQL projections must
//! contain after applying every event up to some position. Used to rebuild them
//! (then bulk-loaded into fresh tables) and to check them (compared with the live
//! tables). The SQL applier and this fold are two implementations of the same
//! rules on purpose: `projections check` makes any divergence visible.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_domain::{ApiKeyEvent, KeyCreated, KeyUsageEvent, Ledger};

use crate::audit::AuditEntry;
use crate::event::{KeyledgerEvent, RecordedEvent};
use crate::key_list::{KeyRow, STATUS_ACTIVE, STATUS_INACTIVE};

/// Times as the projections keep them: whole milliseconds.
pub fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or_default()
}

/// The audit-log row of an event.
pub fn audit_entry(e: &RecordedEvent) -> AuditEntry {
    AuditEntry {
        position: e.position,
        tenant: e.meta.tenant.clone(),
        key_id: e.key_id.clone(),
        sequence: e.sequence,
        event_type: e.type_name().to_string(),
        occurred_at: ms(e.meta.occurred_at),
        actor: e.meta.actor.clone(),
        request_id: e.meta.request_id.clone(),
        data: e.audit_data(),
        client_addr: e.meta.client_addr.clone(),
        user_agent: e.meta.user_agent.clone(),
        event_hash: Some(e.hash.clone()),
    }
}

/// The key-list row a `KeyCreated` event starts.
pub fn created_row(e: &RecordedEvent, c: &KeyCreated) -> KeyRow {
    KeyRow {
        id: e.key_id.clone(),
        tenant: c.tenant.clone(),
        key_hash: c.key_hash.to_hex(),
        prefix: c.display_prefix.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        environment: c.environment.as_str().to_string(),
        permissions: c.permissions.as_slice().to_vec(),
        status: STATUS_ACTIVE.to_string(),
        created_at: ms(c.created_at),
        created_by: c.created_by.clone(),
        updated_at: ms(e.event.time()),
        expires_at: c.expires_at.map(ms),
        last_used_at: None,
        usage_count: 0,
        metadata: c.metadata.clone(),
        created_position: e.position,
        rotated_from: c.rotated_from.clone(),
        rotated_to: None,
        owner: c.owner.clone(),
        ratelimits: c.ratelimits.clone(),
        credits: c
            .credits
            .as_ref()
            .map(|credits| Ledger::opening(credits, c.created_at)),
        leaked_at: None,
        allowed_ips: c.allowed_ips.clone(),
        imported: c.imported,
    }
}

/// The key list, folded from events.
#[derive(Debug, Default)]
pub struct KeyListFold {
    rows: HashMap<String, KeyRow>,
}

impl KeyListFold {
    pub fn apply(&mut self, e: &RecordedEvent) {
        let at = ms(e.event.time());
        match &e.event {
            KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) => {
                self.rows
                    .entry(e.key_id.clone())
                    .or_insert_with(|| created_row(e, c));
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyUpdated(u)) => {
                if let Some(row) = self.rows.get_mut(&e.key_id) {
                    if let Some(n) = &u.name {
                        row.name = n.clone();
                    }
                    if let Some(d) = &u.description {
                        row.description = d.clone();
                    }
                    if let Some(p) = &u.permissions {
                        row.permissions = p.as_slice().to_vec();
                    }
                    if let Some(m) = &u.metadata {
                        row.metadata = m.clone();
                    }
                    if let Some(exp) = u.expires_at {
                        row.expires_at = exp.map(ms);
                    }
                    if let Some(o) = &u.owner {
                        row.owner = o.clone();
                    }
                    if let Some(r) = &u.ratelimits {
                        row.ratelimits = r.clone();
                    }
                    if let Some(ips) = &u.allowed_ips {
                        row.allowed_ips = ips.clone();
                    }
                    row.updated_at = at;
                }
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeactivated(_)) => {
                self.set_status(e, STATUS_INACTIVE, at)
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyReactivated(_)) => {
                self.set_status(e, STATUS_ACTIVE, at)
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpirySet(x)) => {
                if let Some(row) = self.rows.get_mut(&e.key_id) {
                    row.expires_at = Some(ms(x.expires_at));
                    if x.rotated_to.is_some() {
                        row.rotated_to = x.rotated_to.clone();
                    }
                    row.updated_at = at;
                }
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(_)) => {
                self.rows.remove(&e.key_id);
            }
            KeyledgerEvent::Usage(usage) => {
                if let Some(row) = self.rows.get_mut(&e.key_id) {
                    if let KeyUsageEvent::KeyUsageRecorded(u) = usage {
                        row.usage_count = row
                            .usage_count
                            .saturating_add(i64::try_from(u.count).unwrap_or(i64::MAX));
                        // A flush of refusals or credits only is no use.
                        let used = ms(u.last_used_at);
                        if u.count > 0 && row.last_used_at.is_none_or(|l| l < used) {
                            row.last_used_at = Some(used);
                        }
                    }
                    // Recomputed from each event's change, not copied from
                    // the ledger it carries: `projections check` compares
                    // this with the live row, which the SQL applier copies.
                    if usage.ledger().is_some() {
                        row.credits = usage.apply_to(row.credits.as_ref());
                    }
                }
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyLeakReported(l)) => {
                // The first report marks the key; later ones keep its time.
                if let Some(row) = self.rows.get_mut(&e.key_id) {
                    row.leaked_at.get_or_insert(ms(l.at));
                }
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpiryNoticed(_))
            | KeyledgerEvent::Owner(_)
            | KeyledgerEvent::Webhook(_)
            | KeyledgerEvent::Policy(_) => {}
        }
    }

    fn set_status(&mut self, e: &RecordedEvent, status: &str, at: DateTime<Utc>) {
        if let Some(row) = self.rows.get_mut(&e.key_id) {
            row.status = status.to_string();
            row.updated_at = at;
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows, oldest key first.
    pub fn into_rows(self) -> Vec<KeyRow> {
        let mut rows: Vec<KeyRow> = self.rows.into_values().collect();
        rows.sort_by_key(|r| r.created_position);
        rows
    }
}

/// Human-readable differences between the expected key list and the live one.
pub fn diff_key_lists(expected: Vec<KeyRow>, live: Vec<KeyRow>) -> Vec<String> {
    let mut live: HashMap<String, KeyRow> = live.into_iter().map(|r| (r.id.clone(), r)).collect();
    let mut out = Vec::new();
    for want in expected {
        match live.remove(&want.id) {
            None => out.push(format!("key_list: {} is missing", want.id)),
            Some(got) if got != want => {
                out.push(format!(
                    "key_list: {} differs: {}",
                    want.id,
                    row_fields_diff(&want, &got)
                ));
            }
            Some(_) => {}
        }
    }
    let mut extra: Vec<String> = live.into_keys().collect();
    extra.sort();
    out.extend(
        extra
            .into_iter()
            .map(|id| format!("key_list: {id} should not exist")),
    );
    out
}

fn row_fields_diff(want: &KeyRow, got: &KeyRow) -> String {
    let mut parts = Vec::new();
    macro_rules! field {
        ($f:ident) => {
            if want.$f != got.$f {
                parts.push(format!(
                    "{} expected {:?}, found {:?}",
                    stringify!($f),
                    want.$f,
                    got.$f
                ));
            }
        };
    }
    field!(tenant);
    field!(key_hash);
    field!(prefix);
    field!(name);
    field!(description);
    field!(environment);
    field!(permissions);
    field!(status);
    field!(created_at);
    field!(created_by);
    field!(updated_at);
    field!(expires_at);
    field!(last_used_at);
    field!(usage_count);
    field!(metadata);
    field!(created_position);
    field!(rotated_from);
    field!(rotated_to);
    field!(owner);
    field!(ratelimits);
    field!(credits);
    field!(leaked_at);
    field!(allowed_ips);
    field!(imported);
    parts.join("; ")
}

/// The difference between an expected audit row and the live one, if any.
pub fn diff_audit(want: &AuditEntry, got: Option<&AuditEntry>) -> Option<String> {
    match got {
        None => Some(format!("audit_log: position {} is missing", want.position)),
        Some(got) if got != want => Some(format!(
            "audit_log: position {} differs: expected {} {} by {:?}, found {} {} by {:?}{}",
            want.position,
            want.event_type,
            want.key_id,
            want.actor,
            got.event_type,
            got.key_id,
            got.actor,
            if want.data != got.data {
                " (data differs)"
            } else {
                ""
            }
        )),
        Some(_) => None,
    }
}
