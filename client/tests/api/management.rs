//! Every management and verification route through the client.

use chrono::{Duration as Span, Utc};
use keyledger_client::{
    AuditFilter, Client, CreateKey, CreateWebhook, Credits, CreditsChange, DeliveryFilter,
    Environment, Error, ErrorCode, Granularity, ImportItem, KeyStatus, LeakReport, ListKeys,
    OnLeak, Policy, RateLimit, RotateKey, Secret, UpdateKey, UpdateWebhook, UsageQuery,
    VerificationCode, VerifyRequest, WebhookStatus,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::{self, IMPORT_PREFIX, TENANT};

fn api_code(result: Result<impl std::fmt::Debug, Error>) -> (u16, ErrorCode, Error) {
    let e = result.expect_err("an error");
    match &e {
        Error::Api { status, code, .. } => (status.as_u16(), code.clone(), e),
        other => panic!("not an API error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_goes_through_its_whole_life() {
    let server = harness::start().await;
    let client = server.client();

    // Create.
    let created = client
        .create_key(&CreateKey {
            description: Some("for the billing service".into()),
            permissions: Some(vec!["invoices:read".into(), "invoices:write".into()]),
            metadata: Some(json!({"team": "billing"})),
            ..CreateKey::new("billing")
        })
        .await
        .expect("create");
    assert!(created.id.starts_with("key_"));
    assert_eq!(created.status, KeyStatus::Active);
    assert_eq!(created.environment, Environment::Live);
    assert!(created.key.expose().starts_with(&created.prefix));
    assert!(
        !format!("{created:?}").contains(created.key.expose()),
        "the raw key is not in Debug output"
    );
    let other = client
        .create_key(&CreateKey::new("other"))
        .await
        .expect("create");

    // List: one page of one, then all of them by cursor.
    let page = client
        .list_keys(&ListKeys {
            limit: Some(1),
            ..ListKeys::default()
        })
        .await
        .expect("list");
    assert_eq!(page.keys.len(), 1);
    assert_eq!(page.keys[0].id, other.id, "newest first");
    assert!(page.next_cursor.is_some());
    let all = client
        .list_all_keys(&ListKeys {
            limit: Some(1),
            ..ListKeys::default()
        })
        .await
        .expect("list all");
    let ids: Vec<&str> = all.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [other.id.as_str(), created.id.as_str()]);
    let never_used = client
        .list_keys(&ListKeys {
            never_used: Some(true),
            status: Some(KeyStatus::Active),
            ..ListKeys::default()
        })
        .await
        .expect("filtered list");
    assert_eq!(never_used.keys.len(), 2);

    // Get, by id and by display prefix.
    let got = client.get_key(&created.id).await.expect("get");
    assert_eq!(got, created.view);
    let by_prefix = client.get_key(&created.prefix).await.expect("by prefix");
    assert_eq!(by_prefix.id, created.id);

    // Update.
    let updated = client
        .update_key(
            &created.id,
            &UpdateKey {
                name: Some("billing (eu)".into()),
                description: Some(None),
                ratelimits: Some(vec![RateLimit::new("per-minute", 1000, 60_000)]),
                ..UpdateKey::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.name, "billing (eu)");
    assert_eq!(updated.description, None);
    assert_eq!(updated.ratelimits[0].limit, 1000);

    // Verify.
    let valid = client
        .verify(&VerifyRequest::new(created.key.clone()).permissions(["invoices:read"]))
        .await
        .expect("verify");
    assert!(valid.valid);
    assert_eq!(valid.code, VerificationCode::Valid);
    assert_eq!(valid.key_id.as_deref(), Some(created.id.as_str()));
    assert_eq!(valid.tenant.as_deref(), Some(TENANT));
    assert_eq!(valid.ratelimits[0].name, "per-minute");
    let lacking = client
        .verify(&VerifyRequest::new(created.key.clone()).permissions(["orders:read"]))
        .await
        .expect("verify");
    assert_eq!(lacking.code, VerificationCode::InsufficientPermissions);
    let wrong_env = client
        .verify(&VerifyRequest::new(created.key.clone()).environment(Environment::Test))
        .await
        .expect("verify");
    assert_eq!(wrong_env.code, VerificationCode::WrongEnvironment);
    let unknown = client
        .verify(&VerifyRequest::new("kl_live_not_a_key"))
        .await
        .expect("verify");
    assert_eq!(unknown.code, VerificationCode::NotFound);
    assert_eq!(unknown.key_id, None);

    // GET /v1/auth.
    let who = client
        .auth(created.key.expose(), &["invoices:read"])
        .await
        .expect("authorized");
    assert_eq!(
        (who.key_id.as_str(), who.tenant.as_str()),
        (created.id.as_str(), TENANT)
    );
    assert_eq!(who.permissions, ["invoices:read", "invoices:write"]);
    assert!(who.rate_limit.is_some());
    let (status, code, e) = api_code(client.auth(created.key.expose(), &["orders:read"]).await);
    assert_eq!((status, code), (403, ErrorCode::InsufficientPermissions));
    assert_eq!(
        e.verification_code(),
        Some(VerificationCode::InsufficientPermissions)
    );

    // Deactivate, then verify.
    let inactive = client
        .deactivate_key(&created.id, Some("rotating credentials"))
        .await
        .expect("deactivate");
    assert_eq!(inactive.status, KeyStatus::Inactive);
    let disabled = client
        .verify(&VerifyRequest::new(created.key.clone()))
        .await
        .expect("verify");
    assert_eq!(disabled.code, VerificationCode::Disabled);
    assert!(!disabled.valid);
    let (status, code, e) = api_code(client.auth(created.key.expose(), &[]).await);
    assert_eq!((status, code), (401, ErrorCode::Unauthorized));
    assert_eq!(e.verification_code(), Some(VerificationCode::Disabled));
    let active = client
        .reactivate_key(&created.id)
        .await
        .expect("reactivate");
    assert_eq!(active.status, KeyStatus::Active);

    // Rotate, twice with one Idempotency-Key: one successor.
    let rotation = RotateKey {
        grace_period_seconds: Some(60),
        idempotency_key: Some("rotate-billing-1".into()),
    };
    let successor = client
        .rotate_key(&created.id, &rotation)
        .await
        .expect("rotate");
    let again = client
        .rotate_key(&created.id, &rotation)
        .await
        .expect("rotate again");
    assert_eq!(again.id, successor.id);
    assert_eq!(again.key, successor.key);
    assert_eq!(successor.rotated_from.as_deref(), Some(created.id.as_str()));
    assert_eq!(successor.permissions, created.permissions);
    let (status, code, _) = api_code(client.rotate_key(&created.id, &RotateKey::default()).await);
    assert_eq!((status, code), (409, ErrorCode::Conflict), "rotates once");
    let old = client.get_key(&created.id).await.expect("old key");
    assert_eq!(old.rotated_to.as_deref(), Some(successor.id.as_str()));

    // Delete: gone, but its history stays.
    client.delete_key(&created.id).await.expect("delete");
    let (status, code, _) = api_code(client.get_key(&created.id).await);
    assert_eq!((status, code), (404, ErrorCode::KeyNotFound));
    let history = client.key_events_all(&created.id).await.expect("history");
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"KeyCreated"));
    assert_eq!(types.last(), Some(&"KeyDeleted"));
    assert!(types.contains(&"KeyDeactivated"));
    let deactivated = history
        .iter()
        .find(|e| e.event_type == "KeyDeactivated")
        .expect("deactivation");
    assert_eq!(deactivated.actor.as_deref(), Some("alice"));
    let audit = client
        .audit_all(&AuditFilter {
            event_type: Some("KeyDeleted".into()),
            limit: Some(1),
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].key_id, created.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_errors_with_the_api_codes() {
    let mut server = harness::start().await;
    let client = server.client();

    let (status, code, e) = api_code(client.get_key("key_0190a0a0a0a0a0a0a0a0a0a0a0a0a0a0").await);
    assert_eq!((status, code), (404, ErrorCode::KeyNotFound));
    assert!(matches!(
        &e,
        Error::Api {
            request_id: Some(_),
            ..
        }
    ));
    assert!(!e.is_retryable());

    let (status, code, e) = api_code(client.create_key(&CreateKey::new("")).await);
    assert_eq!((status, code), (422, ErrorCode::ValidationFailed));
    assert_eq!(e.field(), Some("name"));
    assert_eq!(e.details(), Some(&json!({"field": "name"})));

    let (status, code, e) = api_code(
        client
            .list_keys(&ListKeys {
                unused_for: Some("a while".into()),
                ..ListKeys::default()
            })
            .await,
    );
    assert_eq!((status, code), (422, ErrorCode::ValidationFailed));
    assert_eq!(e.field(), Some("unused_for"));

    let key = client
        .create_key(&CreateKey::new("no credits"))
        .await
        .expect("create");
    let (_, code, e) = api_code(
        client
            .change_credits(&key.id, &CreditsChange::decrement(1))
            .await,
    );
    assert_eq!(code, ErrorCode::ValidationFailed);
    assert_eq!(e.field(), Some("op"));

    let stranger = Client::new(&server.url)
        .expect("client")
        .with_token("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.forged");
    let (status, code, e) = api_code(stranger.list_keys(&ListKeys::default()).await);
    assert_eq!((status, code), (401, ErrorCode::Unauthorized));
    assert!(!e.to_string().contains("forged"));
    let other_tenant = Client::new(&server.url)
        .expect("client")
        .with_token(harness::token("globex", "bob"));
    let (status, code, _) = api_code(other_tenant.get_key(&key.id).await);
    assert_eq!((status, code), (404, ErrorCode::KeyNotFound), "never 403");

    let (status, code, _) = api_code(
        client
            .get_webhook("wh_00000000000000000000000000000000")
            .await,
    );
    assert_eq!((status, code), (404, ErrorCode::WebhookNotFound));

    // The same Idempotency-Key with another body.
    let first = CreateKey {
        idempotency_key: Some("create-1".into()),
        ..CreateKey::new("first")
    };
    client.create_key(&first).await.expect("create");
    let (_, code, _) = api_code(
        client
            .create_key(&CreateKey {
                idempotency_key: Some("create-1".into()),
                ..CreateKey::new("second")
            })
            .await,
    );
    assert_eq!(code, ErrorCode::IdempotencyKeyReused);

    // No server at all: a transport error, worth retrying.
    server.stop().await;
    let e = client.health().await.expect_err("stopped");
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_another_system_are_imported_by_their_hash() {
    let server = harness::start().await;
    let client = server.client();
    let raw: Vec<String> = (0..2)
        .map(|i| format!("{IMPORT_PREFIX}legacyKey{i}0123456789abcdef"))
        .collect();
    let item = |i: usize| ImportItem {
        hash: Sha256::digest(raw[i].as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        prefix: raw[i][..12].to_string(),
        name: format!("legacy {i}"),
        permissions: Some(vec!["orders:read".into()]),
        created_at: Some(Utc::now() - Span::days(30)),
        ..ImportItem::default()
    };
    let bad = ImportItem {
        hash: "nothex".into(),
        prefix: "sk_live_x".into(),
        name: "bad".into(),
        ..ImportItem::default()
    };
    let items = [item(0), item(1), bad];
    let answer = client.import_keys(&items).await.expect("import");
    assert_eq!(answer.imported.len(), 2);
    assert_eq!(answer.errors.len(), 1);
    assert_eq!(answer.errors[0].index, 2);
    assert_eq!(answer.errors[0].error.code, ErrorCode::ValidationFailed);
    assert_eq!(answer.errors[0].error.field(), Some("hash"));

    // Idempotent: the same ids again.
    let again = client.import_keys(&items[..2]).await.expect("import again");
    assert_eq!(again.imported, answer.imported);

    // Items as plain JSON work too.
    let raw_items = [json!({"hash": items[0].hash, "prefix": items[0].prefix, "name": "legacy 0"})];
    let as_json = client.import_keys(&raw_items).await.expect("import JSON");
    assert_eq!(as_json.imported[0].id, answer.imported[0].id);

    let id = &answer.imported[0].id;
    let key = client.get_key(id).await.expect("get");
    assert!(key.imported);
    assert_eq!(key.prefix, items[0].prefix);
    let verified = client
        .verify(&VerifyRequest::new(raw[0].clone()).permissions(["orders:read"]))
        .await
        .expect("verify");
    assert_eq!(verified.code, VerificationCode::Valid);
    assert_eq!(verified.key_id.as_deref(), Some(id.as_str()));

    // Another tenant cannot take the hash.
    let other = Client::new(&server.url)
        .expect("client")
        .with_token(harness::token("globex", "bob"));
    let refused = other.import_keys(&items[..1]).await.expect("answered");
    assert_eq!(refused.errors[0].error.code, ErrorCode::ImportConflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_policy_is_read_replaced_and_enforced() {
    let server = harness::start().await;
    let client = server.client();
    let before = client
        .create_key(&CreateKey::new("made before"))
        .await
        .expect("create");

    assert_eq!(
        client.get_policy().await.expect("policy"),
        Policy::default()
    );
    let wanted = Policy {
        on_leak: OnLeak::Notify,
        require_expiry: true,
        allowed_environments: Some(vec![Environment::Live]),
        ..Policy::default()
    };
    let stored = client.set_policy(&wanted).await.expect("set policy");
    assert_eq!(stored, wanted);
    assert_eq!(client.get_policy().await.expect("policy"), wanted);

    let (status, code, e) = api_code(client.create_key(&CreateKey::new("no expiry")).await);
    assert_eq!((status, code), (422, ErrorCode::PolicyViolation));
    assert_eq!(
        e.details().and_then(|d| d["rule"].as_str()),
        Some("require_expiry")
    );
    let allowed = client
        .create_key(&CreateKey {
            expires_at: Some(Utc::now() + Span::days(30)),
            ..CreateKey::new("expiring")
        })
        .await
        .expect("create");
    let breaking = client
        .list_keys(&ListKeys {
            breaks_policy: Some(true),
            ..ListKeys::default()
        })
        .await
        .expect("list");
    let ids: Vec<&str> = breaking.keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [before.id.as_str()]);
    assert_ne!(allowed.id, before.id);

    let (_, code, e) = api_code(
        client
            .set_policy(&Policy {
                max_lifetime_seconds: Some(0),
                ..Policy::default()
            })
            .await,
    );
    assert_eq!(code, ErrorCode::ValidationFailed);
    assert_eq!(e.field(), Some("max_lifetime_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_usage_webhooks_leaks_and_the_service_routes() {
    let server = harness::start().await;
    let client = server.client();

    // Owners and credits.
    let owner = client
        .set_owner_ratelimits("customer/42", &[RateLimit::new("daily", 500, 86_400_000)])
        .await
        .expect("owner limits");
    assert_eq!(owner.owner, "customer/42");
    let key = client
        .create_key(&CreateKey {
            owner: Some("customer/42".into()),
            credits: Some(Credits {
                remaining: 3,
                refill: None,
            }),
            ..CreateKey::new("metered")
        })
        .await
        .expect("create");
    let shown = client.get_owner("customer/42").await.expect("owner");
    assert_eq!(shown.key_ids, [key.id.as_str()]);
    assert_eq!(shown.ratelimits[0].name, "daily");
    let topped = client
        .change_credits(&key.id, &CreditsChange::increment(7).reason("goodwill"))
        .await
        .expect("credits");
    assert_eq!(topped.credits.map(|c| c.remaining), Some(10));
    let spent = client
        .verify(&VerifyRequest::new(key.key.clone()).cost(10))
        .await
        .expect("verify");
    assert_eq!(spent.code, VerificationCode::Valid);
    assert!(spent.credits.is_some());
    let empty = client
        .verify(&VerifyRequest::new(key.key.clone()))
        .await
        .expect("verify");
    assert_eq!(empty.code, VerificationCode::UsageExceeded);

    // Usage over time.
    let usage = client
        .key_usage(
            &key.id,
            &UsageQuery {
                granularity: Some(Granularity::Minute),
                ..UsageQuery::default()
            },
        )
        .await
        .expect("key usage");
    assert_eq!(usage.key_id, key.id);
    assert_eq!(usage.granularity, Granularity::Minute);
    assert!(!usage.buckets.is_empty());
    let tenant = client
        .tenant_usage(&UsageQuery::default())
        .await
        .expect("tenant usage");
    assert_eq!(tenant.granularity, Granularity::Hour);

    // Webhooks.
    let hook = client
        .create_webhook(&CreateWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["key.created".into(), "key.deleted".into()],
            description: Some("audit sink".into()),
        })
        .await
        .expect("create webhook");
    assert!(hook.id.starts_with("wh_"));
    assert!(hook.secret.expose().starts_with("whsec_"));
    assert!(!format!("{hook:?}").contains(hook.secret.expose()));
    let listed = client.list_webhooks().await.expect("list webhooks");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], hook.webhook);
    let updated = client
        .update_webhook(
            &hook.id,
            &UpdateWebhook {
                description: Some(None),
                status: Some(WebhookStatus::Disabled),
                ..UpdateWebhook::default()
            },
        )
        .await
        .expect("update webhook");
    assert_eq!(updated.status, WebhookStatus::Disabled);
    assert_eq!(updated.description, None);
    assert_eq!(
        client.get_webhook(&hook.id).await.expect("get webhook"),
        updated
    );
    let rotated = client
        .rotate_webhook_secret(&hook.id)
        .await
        .expect("rotate secret");
    assert_ne!(rotated.secret, hook.secret);
    let deliveries = client
        .webhook_deliveries(&hook.id, &DeliveryFilter::default())
        .await
        .expect("deliveries");
    assert!(deliveries.next_cursor.is_none());
    let (status, code, _) = api_code(
        client
            .retry_delivery(&hook.id, "msg_00000000000000000000000000000000")
            .await,
    );
    assert_eq!((status, code), (404, ErrorCode::DeliveryNotFound));
    client
        .delete_webhook(&hook.id)
        .await
        .expect("delete webhook");
    let (_, code, _) = api_code(client.get_webhook(&hook.id).await);
    assert_eq!(code, ErrorCode::WebhookNotFound);

    // A public leak report says nothing about the strings.
    let receipt = client
        .report_leaks(&LeakReport {
            keys: vec![Secret::new("kl_live_whatever"), Secret::new("not a key")],
            url: Some("https://paste.example/1".into()),
        })
        .await
        .expect("leak report");
    assert_eq!(receipt.received, 2);

    // Service routes need no token.
    let anonymous = Client::new(&server.url).expect("client");
    assert_eq!(anonymous.health().await.expect("health").status, "ok");
    let ready = anonymous.ready().await.expect("ready");
    assert!(ready.ready && ready.store_reachable);
    let document = anonymous.openapi().await.expect("openapi");
    assert!(document["paths"]["/v1/keys/verify"].is_object());
    let metrics = anonymous.metrics().await.expect("metrics");
    // This test's verifications were counted (the counters are per process,
    // so other tests may have added to them).
    let valid: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keyledger_verifications_total{code=\"VALID\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no VALID counter in {metrics:.300}"));
    assert!(valid >= 1, "{valid} VALID verifications counted");
}
