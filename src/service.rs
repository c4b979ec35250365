//! The key service: what the HTTP API and the CLI can do with keys, in terms of
//! commands, the tailer and the projections. A command returns only after this
//! node's projections include its events, so a key can be verified (and listed)
//! the moment its create call returns.

use std::sync::Arc;

use keyledger_domain::{
    CreateKey, DomainError, Environment, KeyCommand, KeyCommandKind, KeyPrefix, RawKey, UpdateKey,
};
use keyledger_projections::audit::{AuditFilter, AuditPage};
use keyledger_projections::event::meta_keys;
use keyledger_projections::key_list::{KeyPage, KeyRow, ListFilter};
use keyledger_projections::{Projections, Verification, VerifyRequest};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::Error;
use crate::group_commit::CreateQueue;
use crate::store::{EventMetadata, EventStore, NewKeyCommand};
use crate::tailer::Tailer;

/// Who is asking: from the management token and the request.
#[derive(Debug, Clone)]
pub struct Actor {
    pub tenant: String,
    pub subject: String,
    pub request_id: String,
    /// Address of the client that sent the request.
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
}

/// A new key: its view and the raw key, which exists only in this value.
#[derive(Debug)]
pub struct IssuedKey {
    pub view: KeyRow,
    pub raw: RawKey,
}

/// What a create request asks for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub description: Option<String>,
    pub environment: Environment,
    pub permissions: Vec<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub metadata: Option<serde_json::Value>,
}

pub struct KeyService {
    store: Arc<EventStore>,
    projections: Arc<Projections>,
    tailer: Arc<Tailer>,
    clock: Clock,
    prefix: KeyPrefix,
    max_keys: u64,
    /// Creates are written in groups on the SQL stores (see `group_commit`);
    /// KurrentDB appends each stream on its own anyway.
    creates: Option<CreateQueue>,
}

impl KeyService {
    pub fn new(
        store: Arc<EventStore>,
        projections: Arc<Projections>,
        tailer: Arc<Tailer>,
        clock: Clock,
        prefix: KeyPrefix,
    ) -> Self {
        let creates = store
            .groups_commits()
            .then(|| CreateQueue::start(store.clone(), tailer.clone()));
        Self {
            store,
            projections,
            tailer,
            clock,
            prefix,
            max_keys: u64::MAX,
            creates,
        }
    }

    /// Caps the live (not deleted) keys of each tenant. Every new key counts,
    /// a create's or a rotation's successor alike (see `issue`). Checked
    /// against this node's index, so concurrent creates and rotations (or
    /// other nodes') can overshoot by a few: a guard against runaway scripts,
    /// not a quota.
    pub fn with_key_limit(mut self, max_keys: u64) -> Self {
        self.max_keys = max_keys;
        self
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn projections(&self) -> &Arc<Projections> {
        &self.projections
    }

    pub fn store(&self) -> &Arc<EventStore> {
        &self.store
    }

    /// This node's tailer (its health decides readiness).
    pub fn tailer(&self) -> &Arc<Tailer> {
        &self.tailer
    }

    /// Issues a key. The raw key is generated here (CSPRNG), hashed, and only the
    /// hash and display prefix enter the command.
    pub async fn create(&self, actor: &Actor, new: NewKey) -> Result<IssuedKey, Error> {
        self.issue(actor, new, None, self.clock.now()).await
    }

    /// Makes a key, the one way keys are made: the tenant's key cap is checked
    /// here, before anything is written.
    async fn issue(
        &self,
        actor: &Actor,
        new: NewKey,
        rotated_from: Option<String>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<IssuedKey, Error> {
        let held = self.projections.index().tenant_keys(&actor.tenant);
        if held >= self.max_keys {
            return Err(Error::KeyLimitReached {
                limit: self.max_keys,
            });
        }
        let raw = RawKey::generate(&self.prefix, new.environment, &mut rand::rng());
        let parsed = raw.parsed();
        let key_id = format!("key_{}", Uuid::now_v7().simple());
        let kind = KeyCommandKind::CreateKey(CreateKey {
            key_hash: parsed.hash(),
            display_prefix: parsed.display_prefix(),
            name: new.name,
            description: new.description,
            environment: new.environment,
            permissions: new.permissions,
            expires_at: new.expires_at,
            metadata: new.metadata,
            rotated_from,
        });
        let view = match &self.creates {
            Some(queue) => {
                let command = self.key_command(actor, kind, at);
                let create = NewKeyCommand {
                    key_id: key_id.clone(),
                    metadata: metadata(actor, command.at),
                    command,
                };
                queue.create(create).await?
            }
            None => {
                self.command_at(actor, &key_id, kind, at).await?;
                None
            }
        };
        let view = match view {
            Some(view) => view,
            None => self.get(actor, &key_id).await?,
        };
        Ok(IssuedKey { view, raw })
    }

    /// Rotates a key: issues its successor (same name, description, permissions,
    /// environment and metadata), then lets the old key expire after `grace`
    /// (never later than it already would). An expired key is refused (its
    /// successor would bring back access that has ended), and the successor
    /// counts against the tenant's key cap like any new key; both are checked
    /// before anything is written. The successor is created first so a
    /// failure never leaves the old key pointing at a key nobody received; if the
    /// old key refuses (deleted, already rotated or expired, e.g. after a
    /// concurrent command), the successor is deleted again.
    pub async fn rotate(
        &self,
        actor: &Actor,
        id: &str,
        grace: chrono::Duration,
    ) -> Result<IssuedKey, Error> {
        // One reading of the clock for the whole rotation: the expiry checked
        // here is the one the aggregate checks, so a key live now is not
        // refused there a moment later (leaving a successor to delete).
        let at = self.clock.now();
        let old = self.get(actor, id).await?;
        if old.rotated_to.is_some() {
            return Err(Error::Domain(DomainError::AlreadyRotated));
        }
        if old.expires_at.is_some_and(|exp| exp <= at) {
            return Err(Error::Domain(DomainError::Expired));
        }
        let new = NewKey {
            name: old.name,
            description: old.description,
            environment: old.environment.parse::<Environment>()?,
            permissions: old.permissions,
            expires_at: None,
            metadata: old.metadata,
        };
        let issued = self.issue(actor, new, Some(old.id.clone()), at).await?;
        let rotate = KeyCommandKind::RotateKey {
            successor: issued.view.id.clone(),
            grace,
        };
        if let Err(e) = self.command_at(actor, &old.id, rotate, at).await {
            if let Err(undo) = self
                .command(actor, &issued.view.id, KeyCommandKind::DeleteKey)
                .await
            {
                tracing::error!(error = %undo, key_id = %issued.view.id, "could not delete the successor of a failed rotation");
            }
            return Err(e);
        }
        Ok(issued)
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: &str,
        update: UpdateKey,
    ) -> Result<KeyRow, Error> {
        let key_id = self.resolve(actor, id).await?;
        self.command(actor, &key_id, KeyCommandKind::UpdateKey(update))
            .await?;
        self.get(actor, &key_id).await
    }

    pub async fn deactivate(
        &self,
        actor: &Actor,
        id: &str,
        reason: Option<String>,
    ) -> Result<KeyRow, Error> {
        let key_id = self.resolve(actor, id).await?;
        self.command(actor, &key_id, KeyCommandKind::DeactivateKey { reason })
            .await?;
        self.get(actor, &key_id).await
    }

    pub async fn reactivate(&self, actor: &Actor, id: &str) -> Result<KeyRow, Error> {
        let key_id = self.resolve(actor, id).await?;
        self.command(actor, &key_id, KeyCommandKind::ReactivateKey)
            .await?;
        self.get(actor, &key_id).await
    }

    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<(), Error> {
        let key_id = self.resolve(actor, id).await?;
        self.command(actor, &key_id, KeyCommandKind::DeleteKey)
            .await
    }

    /// One key of the caller's tenant, by id or unique display prefix.
    pub async fn get(&self, actor: &Actor, id: &str) -> Result<KeyRow, Error> {
        self.projections
            .get_key(&actor.tenant, id)
            .await?
            .ok_or(Error::KeyNotFound)
    }

    pub async fn list(&self, actor: &Actor, filter: &ListFilter) -> Result<KeyPage, Error> {
        Ok(self
            .projections
            .list_keys(&actor.tenant, filter, self.clock.now())
            .await?)
    }

    /// Audit entries of the caller's tenant.
    pub async fn audit(&self, actor: &Actor, mut filter: AuditFilter) -> Result<AuditPage, Error> {
        filter.tenant = Some(actor.tenant.clone());
        Ok(self.projections.audit(&filter).await?)
    }

    /// Verification from the in-memory index at time `now` (the caller's
    /// one reading of the clock for the request); never touches a store.
    pub fn verify<R>(
        &self,
        request: VerifyRequest<'_>,
        now: chrono::DateTime<chrono::Utc>,
        answer: impl FnOnce(Verification<'_>) -> R,
    ) -> R {
        self.projections.index().verify(request, now, answer)
    }

    /// Maps an id or display prefix to the key id, within the caller's tenant.
    async fn resolve(&self, actor: &Actor, id: &str) -> Result<String, Error> {
        Ok(self.get(actor, id).await?.id)
    }

    async fn command(
        &self,
        actor: &Actor,
        key_id: &str,
        kind: KeyCommandKind,
    ) -> Result<(), Error> {
        self.command_at(actor, key_id, kind, self.clock.now()).await
    }

    /// A command issued at `at` (the time its rules judge and its events carry).
    async fn command_at(
        &self,
        actor: &Actor,
        key_id: &str,
        kind: KeyCommandKind,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Error> {
        let command = self.key_command(actor, kind, at);
        let metadata = metadata(actor, command.at);
        let result = self.store.execute(key_id, command, metadata).await;
        match result {
            // A deleted key answers 404 everywhere, commands included.
            Err(Error::Domain(keyledger_domain::DomainError::AlreadyDeleted))
            | Err(Error::Domain(keyledger_domain::DomainError::NotFound)) => {
                Err(Error::KeyNotFound)
            }
            Err(e) => Err(e),
            // Read-your-writes: answer once this node's projections hold
            // everything up to the head, which includes this command's events.
            Ok(()) => {
                let head = self.store.head().await?;
                self.tailer.catch_up_to(head).await
            }
        }
    }

    fn key_command(
        &self,
        actor: &Actor,
        kind: KeyCommandKind,
        at: chrono::DateTime<chrono::Utc>,
    ) -> KeyCommand {
        KeyCommand {
            tenant: actor.tenant.clone(),
            actor: actor.subject.clone(),
            at,
            kind,
        }
    }
}

/// What every event records about its request.
fn metadata(actor: &Actor, at: chrono::DateTime<chrono::Utc>) -> EventMetadata {
    let mut metadata = EventMetadata::from([
        (meta_keys::ACTOR.to_string(), actor.subject.clone()),
        (meta_keys::TENANT.to_string(), actor.tenant.clone()),
        (meta_keys::REQUEST_ID.to_string(), actor.request_id.clone()),
        (meta_keys::OCCURRED_AT.to_string(), at.to_rfc3339()),
    ]);
    if let Some(addr) = &actor.client_addr {
        metadata.insert(meta_keys::CLIENT_ADDR.to_string(), addr.clone());
    }
    if let Some(agent) = &actor.user_agent {
        metadata.insert(meta_keys::USER_AGENT.to_string(), agent.clone());
    }
    metadata
}
