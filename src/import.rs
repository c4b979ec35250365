//! Keys issued by another system, brought in by their SHA-256 (`POST
//! /v1/keys/import`, `keyledger import`): existing customers keep their keys.
//!
//! An imported key is an ordinary key from then on (deactivate, rotate into a
//! keyledger key, delete, usage, limits), created by the same command as any
//! other and judged by the tenant's policy. Two things set it apart: its event
//! says `imported`, so the verification index places it by its hash (it has
//! no display body), and verification only looks strings up that carry a
//! configured import prefix (`serve --import-prefix`).
//!
//! Importing is idempotent on the hash, across nodes and retries: before
//! anything is created, each hash is claimed in the `import_claims` table,
//! where the first claim wins and names the key's id. A retry (or another
//! node importing the same hash) reads that claim and answers the same id; a
//! claim whose create never happened (its node died in between) is completed
//! by the next import of the hash. A hash belongs to one tenant, and a key
//! deleted once cannot come back by being imported again.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_domain::{
    AllowedIps, CreateKey, DomainError, Environment, Imported, KeyCommandKind, KeyHash, Permissions,
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::Error;
use crate::service::{metadata, Actor, KeyService};
use crate::store::imports::ImportClaim;
use crate::store::NewKeyCommand;

/// Most keys in one import request.
pub const MAX_IMPORT_KEYS: usize = 1000;
/// Longest display prefix of an imported key.
pub const MAX_IMPORT_PREFIX_LEN: usize = 32;

/// One key issued elsewhere, as the import request names it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportItem {
    /// The SHA-256 of the raw key, 64 hexadecimal characters.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub hash: String,
    /// The non-secret start of the key shown in lists (1-32 visible ASCII
    /// characters), e.g. `sk_live_4eC3`.
    #[schema(min_length = 1, max_length = 32, pattern = "^[!-~]+$")]
    pub prefix: String,
    /// 1-100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// `live` (default) or `test`.
    #[schema(pattern = "^(live|test)$")]
    pub environment: Option<String>,
    #[schema(max_items = 50)]
    pub permissions: Option<Vec<String>>,
    /// Must be in the future.
    pub expires_at: Option<DateTime<Utc>>,
    /// A JSON object of at most 4 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// When the other system issued the key; not in the future. Default: now.
    pub created_at: Option<DateTime<Utc>>,
    /// At most 50 CIDRs or addresses the key may be used from.
    #[schema(max_items = 50)]
    pub allowed_ips: Option<Vec<String>>,
}

/// What became of an import: each item's key id or error, by its index.
#[derive(Debug, Default)]
pub struct ImportOutcome {
    pub imported: Vec<(usize, String)>,
    pub errors: Vec<(usize, Error)>,
}

/// An item that passed its own checks, on its way to a create.
struct Candidate {
    index: usize,
    hash: KeyHash,
    create: CreateKey,
}

/// What the claim of a candidate's hash says to do.
enum Claimed {
    /// A fresh claim (or one left by an import that died before its
    /// create): create the key under this id.
    Create(String),
    /// The hash is this tenant's key already.
    Existing(String),
}

impl KeyService {
    /// Imports `items` for the actor's tenant. Each item succeeds or fails
    /// on its own (`Err` items are answered with their error); an error of
    /// the whole call is the store's.
    pub async fn import(
        &self,
        actor: &Actor,
        items: Vec<Result<ImportItem, Error>>,
    ) -> Result<ImportOutcome, Error> {
        let at = self.clock().now();
        let policy = self.tenant_policy(&actor.tenant).await?;
        let mut outcome = ImportOutcome::default();
        let mut candidates = Vec::with_capacity(items.len());
        // The first item of each hash speaks for it; later ones get its answer.
        let mut first_of: HashMap<KeyHash, usize> = HashMap::new();
        let mut echoes: Vec<(usize, usize)> = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match item.and_then(|item| candidate(index, item, &policy, at)) {
                Ok(c) => match first_of.get(&c.hash) {
                    Some(&first) => echoes.push((index, first)),
                    None => {
                        first_of.insert(c.hash, index);
                        candidates.push(c);
                    }
                },
                Err(e) => outcome.errors.push((index, e)),
            }
        }
        let claims = self.claim(actor, &candidates, at).await?;
        // Keys claimed before are looked up in the key list, caught up once.
        if claims.iter().any(|c| matches!(c, Ok(Claimed::Existing(_)))) {
            let head = self.store().head().await?;
            self.tailer().catch_up_to(head).await?;
        }
        // Only new keys count against the tenant's cap (a re-import makes
        // none). A claim left by an item refused here is completed by the
        // next import of its hash.
        let held = self.projections().index().tenant_keys(&actor.tenant);
        let mut room = self.max_keys().saturating_sub(held);
        let mut creates = Vec::new();
        let mut created = Vec::new();
        for (c, claimed) in candidates.into_iter().zip(claims) {
            let id = match claimed {
                Ok(Claimed::Existing(id)) => match self.existing(actor, &id).await {
                    Ok(true) => {
                        outcome.imported.push((c.index, id));
                        continue;
                    }
                    Ok(false) => id,
                    Err(e) => {
                        outcome.errors.push((c.index, e));
                        continue;
                    }
                },
                Ok(Claimed::Create(id)) => id,
                Err(e) => {
                    outcome.errors.push((c.index, e));
                    continue;
                }
            };
            if room == 0 {
                let limit = self.max_keys();
                outcome
                    .errors
                    .push((c.index, Error::KeyLimitReached { limit }));
                continue;
            }
            room -= 1;
            let command = self.key_command(actor, KeyCommandKind::CreateKey(c.create), at);
            creates.push(NewKeyCommand {
                key_id: id.clone().into(),
                metadata: metadata(actor, at),
                command,
            });
            created.push((c.index, id));
        }
        let written = self.store().execute_new(&creates).await;
        for ((index, id), result) in created.into_iter().zip(written.outcomes) {
            match result {
                // Another import of the same hash (a retry on another node)
                // created it first: the same key, under the claimed id.
                Ok(()) | Err(Error::Domain(DomainError::AlreadyExists)) => {
                    outcome.imported.push((index, id))
                }
                Err(e) => outcome.errors.push((index, e)),
            }
        }
        // Read-your-writes: the keys are listed and verify once answered.
        if !creates.is_empty() {
            let head = self.store().head().await?;
            self.tailer().catch_up_to(head).await?;
        }
        let ids: HashMap<usize, String> = outcome.imported.iter().cloned().collect();
        for (index, first) in echoes {
            match ids.get(&first) {
                Some(id) => outcome.imported.push((index, id.clone())),
                None => outcome.errors.push((
                    index,
                    Error::validation("hash", format!("repeats item {first}, which failed")),
                )),
            }
        }
        outcome.imported.sort_by_key(|(i, _)| *i);
        outcome.errors.sort_by_key(|(i, _)| *i);
        Ok(outcome)
    }

    /// Claims every candidate's hash for the tenant (one statement for all)
    /// and says, for each, what to do.
    async fn claim(
        &self,
        actor: &Actor,
        candidates: &[Candidate],
        at: DateTime<Utc>,
    ) -> Result<Vec<Result<Claimed, Error>>, Error> {
        let fresh: Vec<(String, String)> = candidates
            .iter()
            .map(|c| (c.hash.to_hex(), format!("key_{}", Uuid::now_v7().simple())))
            .collect();
        let claims: Vec<ImportClaim<'_>> = fresh
            .iter()
            .map(|(hash, id)| ImportClaim {
                key_hash: hash,
                tenant: actor.tenant.as_str(),
                key_id: id,
                at_ms: at.timestamp_millis(),
            })
            .collect();
        let holders = if claims.is_empty() {
            Vec::new()
        } else {
            self.store().imports().claim_many(&claims).await?
        };
        if holders.len() != fresh.len() {
            return Err(Error::internal(
                "import claims answered another number of holders",
            ));
        }
        Ok(fresh
            .into_iter()
            .zip(holders)
            .map(|((_, id), holder)| {
                if holder.tenant != actor.tenant.as_str() {
                    // Said without naming the other tenant or its key.
                    Err(Error::ImportRefused(
                        "a key with this hash is already held elsewhere".into(),
                    ))
                } else if holder.key_id == id {
                    Ok(Claimed::Create(id))
                } else {
                    Ok(Claimed::Existing(holder.key_id))
                }
            })
            .collect())
    }

    /// Whether the key a claim names exists (true), was never created
    /// (false: its import died before the create; create it now), or was
    /// deleted (an error: a revoked key does not come back by being
    /// imported). The key list is read first (the projections are caught
    /// up), the store only for a key the list does not hold.
    async fn existing(&self, actor: &Actor, id: &str) -> Result<bool, Error> {
        match self.get(actor, id).await {
            Ok(_) => Ok(true),
            Err(Error::Domain(DomainError::NotFound) | Error::KeyNotFound) => {
                if !self.store().exists(&id.into()).await? {
                    return Ok(false);
                }
                // Another node may have created it after this one caught
                // up: catch up past its create and look again; only a key
                // still absent then was deleted.
                let head = self.store().head().await?;
                self.tailer().catch_up_to(head).await?;
                match self.get(actor, id).await {
                    Ok(_) => Ok(true),
                    Err(Error::Domain(DomainError::NotFound) | Error::KeyNotFound) => {
                        Err(Error::ImportRefused(
                            "the key with this hash was deleted; it cannot be imported again"
                                .into(),
                        ))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Checks an item on its own (the aggregate checks the rest as it does for
/// every create) and judges it by the tenant's policy.
fn candidate(
    index: usize,
    item: ImportItem,
    policy: &keyledger_domain::policy::Policy,
    at: DateTime<Utc>,
) -> Result<Candidate, Error> {
    // Either case: the hash is kept as bytes, so `AB..` and `ab..` are one key.
    let hash = KeyHash::from_hex(&item.hash)
        .map_err(|_| Error::validation("hash", "must be 64 hexadecimal characters"))?;
    let prefix_ok = (1..=MAX_IMPORT_PREFIX_LEN).contains(&item.prefix.len())
        && item.prefix.bytes().all(|b| b.is_ascii_graphic());
    if !prefix_ok {
        return Err(Error::validation(
            "prefix",
            "must be 1-32 visible ASCII characters",
        ));
    }
    let environment = match item.environment.as_deref() {
        Some(e) => e.parse::<Environment>()?,
        None => Environment::Live,
    };
    let permissions = item.permissions.unwrap_or_default();
    let parsed = Permissions::parse(permissions.clone())?;
    let expires_at = policy.check_new_key(environment, parsed.as_slice(), item.expires_at, at)?;
    let allowed_ips = AllowedIps::parse(item.allowed_ips.unwrap_or_default())?;
    Ok(Candidate {
        index,
        hash,
        create: CreateKey {
            key_hash: hash,
            display_prefix: item.prefix,
            name: item.name,
            description: item.description,
            environment,
            permissions,
            expires_at,
            metadata: item.metadata,
            rotated_from: None,
            owner: None,
            ratelimits: Vec::new(),
            credits: None,
            allowed_ips,
            imported: Some(Imported {
                created_at: item.created_at,
            }),
        },
    })
}
