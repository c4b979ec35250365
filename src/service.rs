//! The key service: what the HTTP API and the CLI can do with keys, in terms of
//! commands, the tailer and the projections. A command returns only after this
//! node's projections include its events, so a key can be verified (and listed)
//! the moment its create call returns.

use std::sync::Arc;

use keyledger_domain::{
    owner_stream_id, AllowedIps, ApiKeyEvent, CreateKey, CreditChange, Credits, DomainError,
    Environment, KeyCommand, KeyCommandKind, KeyCreditsChanged, KeyId, KeyPrefix, KeyUsageEvent,
    Ledger, OwnerLimits, Permissions, RateLimit, RawKey, SetOwnerLimits, TenantId, UpdateKey,
};
use keyledger_projections::audit::{AuditFilter, AuditPage};
use keyledger_projections::event::meta_keys;
use keyledger_projections::inline::InlineCreates;
use keyledger_projections::key_list::{KeyPage, KeyRow, ListFilter};
use keyledger_projections::replay::created_row;
use keyledger_projections::{
    KeyledgerEvent, Projections, RecordedEvent, Verification, VerifyRequest,
};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::Error;
pub use crate::fault::{AfterCommit, Stage};
use crate::group_commit::CreateQueue;
use crate::idempotency::{Idempotency, Sealer};
use crate::limits::Reservations;
use crate::store::{EventMetadata, EventStore, NewKeyCommand};
use crate::tailer::Tailer;

/// Who is asking: from the management token and the request.
#[derive(Debug, Clone)]
pub struct Actor {
    pub tenant: TenantId,
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
    pub owner: Option<String>,
    pub ratelimits: Vec<RateLimit>,
    pub credits: Option<Credits>,
    pub allowed_ips: AllowedIps,
}

/// Most reservations one verification may need: an owner read, a share of
/// each of ten windows (five the key's, five its owner's), a credit block,
/// and room for races lost to other nodes.
const MAX_RESERVATIONS: usize = 24;

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
    /// Tests only: a failure injected right after commits.
    after_commit: Option<AfterCommit>,
    /// What verifications of limited keys reserve from the store.
    reservations: Arc<Reservations>,
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
        let node = format!("{}", Uuid::now_v7().simple());
        let reservations = Arc::new(Reservations::new(
            store.clone(),
            projections.index().clone(),
            node,
        ));
        Self {
            reservations,
            store,
            projections,
            tailer,
            clock,
            prefix,
            max_keys: u64::MAX,
            creates,
            after_commit: None,
        }
    }

    /// Tests only: fails what follows each commit as `hook` says.
    pub fn with_after_commit(mut self, hook: Option<AfterCommit>) -> Self {
        self.after_commit = hook;
        self
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

    /// The most live keys a tenant may hold (`with_key_limit`).
    pub fn max_keys(&self) -> u64 {
        self.max_keys
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Reservations for usage limits (its `reserve_ahead` task runs beside
    /// the server).
    pub fn reservations(&self) -> &Arc<Reservations> {
        &self.reservations
    }

    pub fn projections(&self) -> &Arc<Projections> {
        &self.projections
    }

    pub fn store(&self) -> &Arc<EventStore> {
        &self.store
    }

    /// The position of the newest committed event (0 when empty).
    pub async fn head(&self) -> Result<i64, Error> {
        self.store.head().await
    }

    /// The idempotency claims of requests, sealing raw keys with `sealer`.
    pub fn idempotency<'a>(&'a self, sealer: &'a Sealer) -> Idempotency<'a> {
        Idempotency {
            store: &self.store,
            sealer,
            clock: &self.clock,
        }
    }

    /// This node's tailer (its health decides readiness).
    pub fn tailer(&self) -> &Arc<Tailer> {
        &self.tailer
    }

    /// Issues a key. The raw key is generated here (CSPRNG), hashed, and only the
    /// hash and display prefix enter the command.
    pub async fn create(&self, actor: &Actor, new: NewKey) -> Result<IssuedKey, Error> {
        let prepared = self.prepare_create(actor, new).await?;
        self.issue(actor, prepared).await
    }

    /// Decides everything about a new key (its id, raw key, event and view)
    /// and writes nothing: the caller may record the answer first
    /// (`Idempotency-Key`), so a commit can never lose it.
    pub async fn prepare_create(&self, actor: &Actor, new: NewKey) -> Result<PreparedKey, Error> {
        self.prepare_key(actor, new, None, self.clock.now()).await
    }

    /// The tenant's key cap and policy are checked here, before anything is
    /// written: the one way keys are made.
    async fn prepare_key(
        &self,
        actor: &Actor,
        new: NewKey,
        rotated_from: Option<String>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<PreparedKey, Error> {
        let held = self.projections.index().tenant_keys(&actor.tenant);
        if held >= self.max_keys {
            return Err(Error::KeyLimitReached {
                limit: self.max_keys,
            });
        }
        // The permissions' own rules first (a malformed one is a validation
        // error, not a policy's), then the tenant's policy, which may give
        // the key its expiry.
        let permissions = Permissions::parse(new.permissions.clone())?;
        let expires_at = self.tenant_policy(&actor.tenant).await?.check_new_key(
            new.environment,
            permissions.as_slice(),
            new.expires_at,
            at,
        )?;
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
            expires_at,
            metadata: new.metadata,
            rotated_from,
            owner: new.owner,
            ratelimits: new.ratelimits,
            credits: new.credits,
            allowed_ips: new.allowed_ips,
            imported: None,
        });
        let command = self.key_command(actor, kind, at);
        let create = self
            .store
            .prepare_new(NewKeyCommand {
                key_id: key_id.into(),
                metadata: metadata(actor, command.at),
                command,
            })
            .await?;
        let event = InlineCreates::recorded(create.inline_event()?, 0)
            .map_err(|e| Error::internal_from("a create's event", e))?;
        let view = match &event.event {
            KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) => created_row(&event, c),
            _ => return Err(Error::internal("a create's event is not KeyCreated")),
        };
        Ok(PreparedKey {
            create,
            event,
            raw,
            view,
        })
    }

    /// Commits a prepared key. Once its event is durable the answer is the
    /// key: if this node's projections cannot show it yet, it is answered
    /// from its own event (the view the key list will hold).
    pub async fn issue(&self, actor: &Actor, prepared: PreparedKey) -> Result<IssuedKey, Error> {
        let PreparedKey {
            create,
            event,
            raw,
            view,
        } = prepared;
        let key_id = create.command.key_id.clone();
        let written = async {
            let fresh = match &self.creates {
                Some(queue) => queue.create(create, event).await?,
                None => {
                    let c = create.command;
                    self.store.execute(&c.key_id, c.command, c.metadata).await?;
                    None
                }
            };
            self.committed(Stage::Created)?;
            Ok::<_, Error>(fresh)
        };
        let fresh = match written.await {
            Ok(fresh) => fresh,
            // The commit's answer may have been lost (a connection cut after
            // COMMIT): the key's existence decides. Its id is fresh, so if it
            // exists, this create wrote it.
            Err(e) if e.outcome_unknown() => match self.store.exists(&key_id).await {
                Ok(true) => {
                    tracing::warn!(error = %e, %key_id, "create committed, but its commit answered an error");
                    None
                }
                Ok(false) | Err(_) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let view = match fresh {
            Some(fresh) => fresh,
            None => match self.visible(actor, &key_id).await {
                Ok(fresh) => fresh,
                Err(e) => {
                    tracing::warn!(error = %e, %key_id, "created, but not visible on this node yet; answered from its event");
                    view
                }
            },
        };
        Ok(IssuedKey { view, raw })
    }

    /// Read-your-writes: the key once this node's projections hold everything
    /// up to the head.
    async fn visible(&self, actor: &Actor, key_id: &str) -> Result<KeyRow, Error> {
        let head = self.store.head().await?;
        self.tailer.catch_up_to(head).await?;
        self.get(actor, key_id).await
    }

    /// Rotates a key: issues its successor (same name, description, permissions,
    /// environment and metadata), then lets the old key expire after `grace`
    /// (never later than it already would). See `prepare_rotation`.
    pub async fn rotate(
        &self,
        actor: &Actor,
        id: &str,
        grace: chrono::Duration,
    ) -> Result<IssuedKey, Error> {
        let prepared = self.prepare_rotation(actor, id, grace).await?;
        self.rotate_prepared(actor, prepared).await
    }

    /// Decides a rotation and writes nothing. An expired key is refused (its
    /// successor would bring back access that has ended), and the successor
    /// counts against the tenant's key cap like any new key.
    pub async fn prepare_rotation(
        &self,
        actor: &Actor,
        id: &str,
        grace: chrono::Duration,
    ) -> Result<PreparedRotation, Error> {
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
        // The successor has the old key's owner and rate limits. Its credits
        // start at zero with the old key's refill: the old key's balance
        // stays with it (nodes may be spending it during the grace period),
        // so carrying it over would grant it twice; and no credits at all
        // would let the successor spend without limit.
        let credits = old.credits.as_ref().filter(|l| l.limited).map(|l| Credits {
            remaining: 0,
            refill: l.refill.clone(),
        });
        let new = NewKey {
            name: old.name,
            description: old.description,
            environment: old.environment.parse::<Environment>()?,
            permissions: old.permissions,
            expires_at: None,
            metadata: old.metadata,
            owner: old.owner,
            ratelimits: old.ratelimits,
            credits,
            allowed_ips: old.allowed_ips,
        };
        let successor = self
            .prepare_key(actor, new, Some(old.id.clone()), at)
            .await?;
        Ok(PreparedRotation {
            old_id: old.id.into(),
            successor,
            grace,
            at,
        })
    }

    /// Commits a prepared rotation. The successor is created first so a
    /// failure never leaves the old key pointing at a key nobody received; if
    /// the old key refuses (deleted, already rotated or expired, e.g. after a
    /// concurrent command), the successor is deleted again.
    pub async fn rotate_prepared(
        &self,
        actor: &Actor,
        prepared: PreparedRotation,
    ) -> Result<IssuedKey, Error> {
        let PreparedRotation {
            old_id,
            successor,
            grace,
            at,
        } = prepared;
        let issued = self.issue(actor, successor).await?;
        let successor = KeyId::from(issued.view.id.as_str());
        self.retire(actor, &old_id, &successor, grace, at).await?;
        Ok(issued)
    }

    /// Points the old key of a rotation at its committed successor; if the old
    /// key refuses, deletes the successor again.
    async fn retire(
        &self,
        actor: &Actor,
        old_id: &KeyId,
        successor: &KeyId,
        grace: chrono::Duration,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Error> {
        let rotate = KeyCommandKind::RotateKey {
            successor: successor.to_string(),
            grace,
        };
        match self.command_at(actor, old_id, rotate, at).await {
            Ok(()) | Err(Error::Committed(_)) => Ok(()),
            Err(e) => {
                if let Err(undo) = self
                    .command(actor, successor, KeyCommandKind::DeleteKey)
                    .await
                {
                    tracing::error!(error = %undo, key_id = %successor, "could not delete the successor of a failed rotation");
                }
                Err(e)
            }
        }
    }

    /// Whether what a request recorded before its commit (`Proof`) was
    /// committed, finishing a rotation whose successor was committed but whose
    /// old key was not yet pointed at it. Used when the request died or lost
    /// its answer: `Ok(true)` means its recorded answer is the answer.
    pub async fn settle(&self, actor: &Actor, proof: &Proof) -> Result<bool, Error> {
        match proof {
            Proof::Created { key_id } => self.store.exists(key_id).await,
            Proof::Rotated {
                old_id,
                successor,
                grace_ms,
            } => {
                if !self.store.exists(successor).await? {
                    return Ok(false);
                }
                let old = self.projections.get_key(&actor.tenant, old_id).await?;
                if old.as_ref().and_then(|o| o.rotated_to.as_deref()) == Some(successor.as_str()) {
                    return Ok(true);
                }
                let grace = chrono::Duration::milliseconds(*grace_ms);
                self.retire(actor, old_id, successor, grace, self.clock.now())
                    .await?;
                Ok(true)
            }
        }
    }

    /// Test hook: a failure injected right after a commit.
    fn committed(&self, stage: Stage) -> Result<(), Error> {
        match &self.after_commit {
            Some(hook) => hook.call(stage),
            None => Ok(()),
        }
    }

    /// Updates a key's fields, if the tenant's policy allows the permissions
    /// and expiry it sets; `credits` (if given) sets its balance and
    /// refill (`Some(None)` removes its credit limit) as an event of its
    /// ledger, after the key's own fields are written.
    pub async fn update(
        &self,
        actor: &Actor,
        id: &str,
        update: UpdateKey,
        credits: Option<Option<Credits>>,
    ) -> Result<KeyRow, Error> {
        if let Some(Some(c)) = &credits {
            keyledger_domain::limits::credits(c)?;
        }
        let key_id = self.resolve(actor, id).await?;
        if update.permissions.is_some() || update.expires_at.is_some() {
            let permissions = update
                .permissions
                .clone()
                .map(Permissions::parse)
                .transpose()?;
            self.tenant_policy(&actor.tenant).await?.check_change(
                permissions.as_ref().map(Permissions::as_slice),
                update.expires_at,
                self.clock.now(),
            )?;
        }
        self.command(actor, &key_id, KeyCommandKind::UpdateKey(update))
            .await?;
        if let Some(credits) = credits {
            let row = self.get(actor, &key_id).await?;
            let change = match credits {
                Some(credits) => CreditChange::Configure { credits },
                None => CreditChange::Remove,
            };
            self.write_ledger(actor, &row, change, None).await?;
        }
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
        filter.tenant = Some(actor.tenant.to_string());
        Ok(self.projections.audit(&filter).await?)
    }

    /// Verification from the in-memory index at time `now` (the caller's
    /// one reading of the clock for the request). A plain key never touches
    /// a store; a key with usage limits does when this node's share of a
    /// window or block of credits is used up (one round trip, then memory
    /// again). `answer` runs once, on the final answer.
    pub async fn verify<R>(
        &self,
        request: VerifyRequest<'_>,
        now: chrono::DateTime<chrono::Utc>,
        mut answer: impl FnMut(Verification<'_>) -> R,
    ) -> Result<R, Error> {
        for _ in 0..MAX_RESERVATIONS {
            match self.projections.index().verify(request, now, &mut answer) {
                Ok(r) => return Ok(r),
                Err(need) => self.reservations.provide(need, now).await?,
            }
        }
        Err(Error::Conflict)
    }

    /// Changes a key's credits (set, increment, decrement): an event of its
    /// ledger, with the actor and the reason.
    pub async fn change_credits(
        &self,
        actor: &Actor,
        id: &str,
        change: CreditChange,
        reason: Option<String>,
    ) -> Result<KeyRow, Error> {
        if let Some(r) = &reason {
            keyledger_domain::validate::reason(r)?;
        }
        let row = self.get(actor, id).await?;
        let limited = row.credits.as_ref().is_some_and(|l| l.limited);
        if !limited && !matches!(change, CreditChange::Set { .. }) {
            return Err(Error::validation(
                "op",
                "the key has no credits: set them first (op \"set\")",
            ));
        }
        self.write_ledger(actor, &row, change, reason).await?;
        self.get(actor, &row.id).await
    }

    /// Appends one change to the key's ledger, then waits until this node
    /// shows it.
    async fn write_ledger(
        &self,
        actor: &Actor,
        row: &KeyRow,
        change: CreditChange,
        reason: Option<String>,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        // The key list holds the create's opening ledger until a ledger
        // event exists; once one does, the store's newest event decides.
        let opening = row.credits.clone();
        let tenant = actor.tenant.to_string();
        self.store
            .append_ledger(
                &KeyId::from(row.id.as_str()),
                opening.as_ref(),
                &metadata(actor, now),
                |before| {
                    let ledger = Ledger::change(before, &change, now);
                    Ok(vec![KeyUsageEvent::KeyCreditsChanged(KeyCreditsChanged {
                        tenant: tenant.clone(),
                        change: change.clone(),
                        reason: reason.clone(),
                        at: now,
                        ledger,
                    })])
                },
            )
            .await?;
        self.show_committed().await
    }

    /// Replaces an owner's rate limits.
    pub async fn set_owner_limits(
        &self,
        actor: &Actor,
        owner: &str,
        ratelimits: Vec<RateLimit>,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let event = OwnerLimits::set(SetOwnerLimits {
            tenant: actor.tenant.to_string(),
            owner: owner.to_string(),
            ratelimits,
            at: now,
        })?;
        self.store
            .set_owner_limits(event, &metadata(actor, now))
            .await?;
        self.show_committed().await
    }

    /// An owner's rate limits (as its newest event set them) and the ids of
    /// the tenant's keys that name it.
    pub async fn owner(
        &self,
        actor: &Actor,
        owner: &str,
    ) -> Result<(Vec<RateLimit>, Vec<String>), Error> {
        keyledger_domain::limits::owner(owner)?;
        let id = owner_stream_id(&actor.tenant, owner);
        let (_, ratelimits) = self.store.owner_limits(&id).await?;
        let keys = self.projections.keys_of_owner(&actor.tenant, owner).await?;
        Ok((ratelimits, keys))
    }

    /// Runs a command on a key as `actor` (for the server's own actors:
    /// leak reports, expiry notices), answering once it is shown.
    pub(crate) async fn run_command(
        &self,
        actor: &Actor,
        key_id: &KeyId,
        kind: KeyCommandKind,
    ) -> Result<(), Error> {
        self.command(actor, key_id, kind).await
    }

    /// Notices a key's expiry (see `expiry`): the command decides whether
    /// the notice is due and not given yet, so any number of nodes may ask.
    /// A key deleted meanwhile is no error.
    pub async fn notice_expiry(
        &self,
        node: &str,
        key_id: &str,
        tenant: &str,
        notice: keyledger_domain::ExpiryNotice,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Error> {
        let actor = Actor {
            tenant: TenantId::from(tenant),
            subject: format!("{}:{node}", crate::limits::NODE_ACTOR),
            request_id: Uuid::now_v7().to_string(),
            client_addr: None,
            user_agent: None,
        };
        let kind = KeyCommandKind::NoticeExpiry { notice, expires_at };
        match self.command(&actor, &KeyId::from(key_id), kind).await {
            Err(Error::KeyNotFound) => Ok(()),
            other => other,
        }
    }

    /// The caller's tenant's policy.
    pub async fn policy(&self, actor: &Actor) -> Result<keyledger_domain::policy::Policy, Error> {
        self.tenant_policy(&actor.tenant).await
    }

    /// A tenant's policy, from memory when this node has seen it (kept
    /// current by the feed), else from its stream.
    pub async fn tenant_policy(
        &self,
        tenant: &str,
    ) -> Result<keyledger_domain::policy::Policy, Error> {
        use keyledger_projections::policies::Cached;
        let cache = self.projections.policies();
        match cache.get(tenant) {
            Cached::Hit(policy) => Ok(policy),
            Cached::Miss { generation } => {
                let policy = self.store.policy(tenant).await?;
                cache.fill(tenant, policy.clone(), generation);
                Ok(policy)
            }
        }
    }

    /// Replaces the caller's tenant's policy (an event, in the audit log).
    pub async fn set_policy(
        &self,
        actor: &Actor,
        policy: keyledger_domain::policy::Policy,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let event =
            keyledger_domain::policy::TenantPolicy::set(keyledger_domain::policy::SetPolicy {
                tenant: actor.tenant.to_string(),
                policy,
                at: now,
            });
        self.store.set_policy(&event, &metadata(actor, now)).await?;
        self.show_committed().await
    }

    /// Maps an id or display prefix to the key id, within the caller's tenant.
    async fn resolve(&self, actor: &Actor, id: &str) -> Result<KeyId, Error> {
        Ok(self.get(actor, id).await?.id.into())
    }

    async fn command(
        &self,
        actor: &Actor,
        key_id: &KeyId,
        kind: KeyCommandKind,
    ) -> Result<(), Error> {
        self.command_at(actor, key_id, kind, self.clock.now()).await
    }

    /// A command issued at `at` (the time its rules judge and its events carry).
    async fn command_at(
        &self,
        actor: &Actor,
        key_id: &KeyId,
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
            // The command is committed whatever fails now, and the answer
            // says so (`Error::Committed`), never that nothing changed.
            Ok(()) => {
                self.committed(Stage::Command)
                    .map_err(Error::after_commit)?;
                self.show_committed().await
            }
        }
    }

    /// Read-your-writes after a commit: waits until this node's projections
    /// hold everything up to the head. A failure here is reported as
    /// committed (`Error::Committed`), never as nothing having changed.
    async fn show_committed(&self) -> Result<(), Error> {
        self.tailer.show_committed().await
    }

    pub(crate) fn key_command(
        &self,
        actor: &Actor,
        kind: KeyCommandKind,
        at: chrono::DateTime<chrono::Utc>,
    ) -> KeyCommand {
        KeyCommand {
            tenant: actor.tenant.to_string(),
            actor: actor.subject.clone(),
            at,
            kind,
        }
    }
}

/// A key about to be issued: decided, not written (`KeyService::prepare_create`).
pub struct PreparedKey {
    create: crate::store::PreparedCreate,
    /// Its event as the projections will see it (position 0: not written).
    event: RecordedEvent,
    raw: RawKey,
    view: KeyRow,
}

impl PreparedKey {
    pub fn key_id(&self) -> &KeyId {
        &self.create.command.key_id
    }

    /// The key as it will be listed once committed.
    pub fn view(&self) -> &KeyRow {
        &self.view
    }

    pub fn raw(&self) -> &RawKey {
        &self.raw
    }
}

/// A rotation about to happen: decided, not written.
pub struct PreparedRotation {
    old_id: KeyId,
    successor: PreparedKey,
    grace: chrono::Duration,
    at: chrono::DateTime<chrono::Utc>,
}

impl PreparedRotation {
    pub fn successor(&self) -> &PreparedKey {
        &self.successor
    }

    /// What tells, later, whether this rotation was committed.
    pub fn proof(&self) -> Proof {
        Proof::Rotated {
            old_id: self.old_id.clone(),
            successor: self.successor.key_id().clone(),
            grace_ms: self.grace.num_milliseconds(),
        }
    }
}

/// What shows whether a recorded answer's command was committed: kept with
/// an `Idempotency-Key` claim before the commit (see `KeyService::settle`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Proof {
    /// A create: committed if the key exists.
    Created { key_id: KeyId },
    /// A rotation: committed if the successor exists (its old key is then
    /// pointed at it, if that had not happened yet).
    Rotated {
        old_id: KeyId,
        successor: KeyId,
        grace_ms: i64,
    },
}

/// What every event records about its request.
pub(crate) fn metadata(actor: &Actor, at: chrono::DateTime<chrono::Utc>) -> EventMetadata {
    let mut metadata = EventMetadata::from([
        (meta_keys::ACTOR.to_string(), actor.subject.clone()),
        (meta_keys::TENANT.to_string(), actor.tenant.to_string()),
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
