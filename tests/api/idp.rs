//! Management tokens from an identity provider: RS256/ES256 tokens verified with
//! configured public keys (`tests/fixtures/`), with issuer, audience and claim
//! names checked as configured, next to the HS256 tokens of the server secret.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use keyledger::config::IdpConfig;
use keyledger::{Application, Error};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{start, token, Backend, Reply, TestApp, TestStore, ACTOR, SECRET, TENANT};

backend_tests!(
    an_rs256_token_with_custom_claim_names_is_accepted,
    an_es256_token_with_custom_claim_names_is_accepted,
    an_hs256_token_of_the_server_secret_still_works_alongside,
);

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "keyledger";
const ORG: &str = "org-42";
const EMAIL: &str = "bob@example.com";

const RSA_PUBLIC: &str = "idp-rsa-public.pem";
const EC_PUBLIC: &str = "idp-ec-public.pem";
const OTHER_RSA_PUBLIC: &str = "other-rsa-public.pem";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Issuer and audience checked, tenant in `org_id`, actor in `email`.
fn idp_config(keys: &[&str]) -> IdpConfig {
    let mut idp = IdpConfig::new(keys.iter().map(|k| fixture(k)).collect());
    idp.issuer = Some(ISSUER.into());
    idp.audience = Some(AUDIENCE.into());
    idp.tenant_claim = "org_id".into();
    idp.actor_claim = "email".into();
    idp
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims as the identity provider issues them; `sub` is deliberately not the actor.
fn idp_claims() -> Value {
    let now = now_secs();
    json!({
        "iss": ISSUER,
        "aud": ["account", AUDIENCE],
        "sub": "idp|0123456789",
        "org_id": ORG,
        "email": EMAIL,
        "iat": now,
        "exp": now + 600,
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    if let Some(map) = claims.as_object_mut() {
        map.remove(name);
    }
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).expect("sign token")
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("idp-rsa-private.pem")).expect("rsa private key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    sign(Algorithm::RS256, &key, claims)
}

fn es256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("idp-ec-private.pem")).expect("ec private key");
    let key = EncodingKey::from_ec_pem(&pem).expect("ec key");
    sign(Algorithm::ES256, &key, claims)
}

async fn start_with(backend: Backend, idp: Option<IdpConfig>) -> Option<TestApp> {
    let store = TestStore::new(backend).await?;
    Some(start(store, |c| c.idp = idp).await)
}

/// For behaviours decided by the token alone: run once, on SQLite, not once
/// per backend.
async fn start_sqlite(idp: Option<IdpConfig>) -> TestApp {
    start_with(Backend::Sqlite, idp)
        .await
        .expect("SQLite is always available")
}

async fn list(app: &TestApp, token: &str) -> Reply {
    app.send_as(token, Method::GET, "/v1/keys", None).await
}

async fn create_as(app: &TestApp, token: &str, name: &str) -> Reply {
    app.send_as(token, Method::POST, "/v1/keys", Some(json!({"name": name})))
        .await
}

fn assert_unauthorized(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
    assert_eq!(r.code(), "unauthorized", "{what}: {}", r.text);
}

/// A key created with `token` is recorded with the actor claim and lands in the
/// tenant of the tenant claim.
async fn assert_accepted(app: &TestApp, token: &str) {
    let created = create_as(app, token, "from-idp").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["created_by"], EMAIL, "{}", created.text);
    let id = created.body["id"].as_str().expect("id");

    let listed = list(app, token).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.body["keys"][0]["id"], id, "{}", listed.text);
    // The same tenant through an HS256 token sees it; another tenant does not.
    let same_tenant = list(app, &crate::helpers::token(ORG, "carol")).await;
    assert_eq!(
        same_tenant.body["keys"][0]["id"], id,
        "{}",
        same_tenant.text
    );
    let other_tenant = list(app, &app.token).await;
    assert_eq!(
        other_tenant.body["keys"],
        json!([]),
        "{}",
        other_tenant.text
    );
}

async fn an_rs256_token_with_custom_claim_names_is_accepted(backend: Backend) {
    // The matching key is not the first configured one: every RSA key is tried.
    let idp = idp_config(&[OTHER_RSA_PUBLIC, EC_PUBLIC, RSA_PUBLIC]);
    let Some(app) = start_with(backend, Some(idp)).await else {
        return;
    };
    assert_accepted(&app, &rs256(&idp_claims())).await;
    // A single-string `aud` is fine too.
    let single_aud = with(idp_claims(), "aud", json!(AUDIENCE));
    let r = list(&app, &rs256(&single_aud)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.stop().await;
}

async fn an_es256_token_with_custom_claim_names_is_accepted(backend: Backend) {
    let idp = idp_config(&[RSA_PUBLIC, EC_PUBLIC]);
    let Some(app) = start_with(backend, Some(idp)).await else {
        return;
    };
    assert_accepted(&app, &es256(&idp_claims())).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_issuer_is_a_401() {
    let app = start_sqlite(Some(idp_config(&[RSA_PUBLIC, EC_PUBLIC]))).await;
    let other = with(idp_claims(), "iss", json!("https://evil.example.com/"));
    assert_unauthorized(&list(&app, &rs256(&other)).await, "RS256, other iss");
    assert_unauthorized(&list(&app, &es256(&other)).await, "ES256, other iss");
    let missing = without(idp_claims(), "iss");
    assert_unauthorized(&list(&app, &rs256(&missing)).await, "no iss");
    assert_unauthorized(&create_as(&app, &rs256(&other), "x").await, "create");
    assert_eq!(
        list(&app, &rs256(&idp_claims())).await.body["keys"],
        json!([])
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_a_401() {
    let app = start_sqlite(Some(idp_config(&[RSA_PUBLIC, EC_PUBLIC]))).await;
    let other = with(idp_claims(), "aud", json!(["account", "billing"]));
    assert_unauthorized(&list(&app, &rs256(&other)).await, "RS256, other aud");
    assert_unauthorized(&list(&app, &es256(&other)).await, "ES256, other aud");
    let missing = without(idp_claims(), "aud");
    assert_unauthorized(&list(&app, &rs256(&missing)).await, "no aud");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_a_key_that_is_not_configured_is_a_401() {
    // Only an unrelated RSA key and no EC key at all.
    let app = start_sqlite(Some(idp_config(&[OTHER_RSA_PUBLIC]))).await;
    assert_unauthorized(&list(&app, &rs256(&idp_claims())).await, "RS256");
    assert_unauthorized(&list(&app, &es256(&idp_claims())).await, "ES256");
    assert_unauthorized(&create_as(&app, &rs256(&idp_claims()), "x").await, "create");
    // A tampered payload under a genuine signature is refused as well.
    let genuine = rs256(&idp_claims());
    let app2_config = idp_config(&[RSA_PUBLIC]);
    let store = app.stop().await;
    let app = start(store, |c| c.idp = Some(app2_config)).await;
    assert_eq!(list(&app, &genuine).await.status, StatusCode::OK);
    let forged = rs256(&with(idp_claims(), "org_id", json!("org-other")));
    let forged_payload = forged.split('.').nth(1).expect("payload");
    let mut parts: Vec<&str> = genuine.split('.').collect();
    parts[1] = forged_payload;
    assert_unauthorized(&list(&app, &parts.join(".")).await, "tampered payload");
    app.stop().await;
}

async fn an_hs256_token_of_the_server_secret_still_works_alongside(backend: Backend) {
    let Some(app) = start_with(backend, Some(idp_config(&[RSA_PUBLIC, EC_PUBLIC]))).await else {
        return;
    };
    // HS256 tokens keep `sub`/`tenant` and need neither iss nor aud.
    let (id, _) = app.create_key("from-secret").await;
    let r = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["created_by"], ACTOR, "{}", r.text);
    // And an IdP token works on the same node.
    let r = list(&app, &rs256(&idp_claims())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["keys"], json!([]), "other tenant: {}", r.text);
    let r = list(&app, &token(TENANT, "dave")).await;
    assert_eq!(r.body["keys"][0]["id"], id, "{}", r.text);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaccepted_algorithms_are_a_401() {
    let app = start_sqlite(Some(idp_config(&[RSA_PUBLIC, EC_PUBLIC]))).await;
    // `alg: none`: a genuine payload under an unsigned header.
    let genuine = rs256(&idp_claims());
    let payload = genuine.split('.').nth(1).expect("payload");
    // base64url of {"alg":"none","typ":"JWT"}
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    for unsigned in [
        format!("{none_header}.{payload}."),
        format!("{none_header}.{payload}"),
    ] {
        assert_unauthorized(&list(&app, &unsigned).await, "alg none");
    }
    // HS384/HS512 with the server secret are not accepted, only HS256.
    let hs_claims = json!({"sub": ACTOR, "tenant": TENANT, "exp": now_secs() + 600});
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        assert_unauthorized(
            &list(&app, &sign(alg, &secret, &hs_claims)).await,
            "HS384/512",
        );
    }
    // Algorithm confusion: HS256 keyed with the provider's public key PEM.
    let public_pem = std::fs::read(fixture(RSA_PUBLIC)).expect("public key");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        &idp_claims(),
    );
    assert_unauthorized(
        &list(&app, &confused).await,
        "HS256 keyed with a public key",
    );
    // RS384 with the configured RSA key: right key, unaccepted algorithm.
    let pem = std::fs::read(fixture("idp-rsa-private.pem")).expect("rsa private key");
    let rs384 = sign(
        Algorithm::RS384,
        &EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
        &idp_claims(),
    );
    assert_unauthorized(&list(&app, &rs384).await, "RS384");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_token_without_configured_public_keys_is_a_401() {
    let app = start_sqlite(None).await;
    // Claims that would satisfy an HS256 token, signed RS256.
    let claims = json!({"sub": ACTOR, "tenant": TENANT, "exp": now_secs() + 600});
    assert_unauthorized(&list(&app, &rs256(&claims)).await, "RS256");
    assert_unauthorized(&list(&app, &es256(&claims)).await, "ES256");
    assert_eq!(list(&app, &app.token).await.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_token_without_the_configured_claims_or_expired_is_a_401() {
    let app = start_sqlite(Some(idp_config(&[RSA_PUBLIC, EC_PUBLIC]))).await;
    for (what, claims) in [
        ("no tenant claim", without(idp_claims(), "org_id")),
        ("no actor claim", without(idp_claims(), "email")),
        (
            "empty tenant claim",
            with(idp_claims(), "org_id", json!(" ")),
        ),
        ("numeric actor claim", with(idp_claims(), "email", json!(7))),
        ("no exp", without(idp_claims(), "exp")),
        (
            "expired",
            with(idp_claims(), "exp", json!(now_secs() - 3600)),
        ),
        (
            "not yet valid",
            with(idp_claims(), "nbf", json!(now_secs() + 3600)),
        ),
        // `tenant` is not the configured tenant claim here.
        (
            "default claim names",
            with(without(idp_claims(), "org_id"), "tenant", json!(ORG)),
        ),
    ] {
        assert_unauthorized(&list(&app, &rs256(&claims)).await, what);
        assert_unauthorized(&list(&app, &es256(&claims)).await, what);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_public_key_stops_the_start_with_a_config_error() {
    let store = TestStore::new(Backend::Sqlite).await.expect("sqlite store");
    let garbage = store.data_dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    )
    .expect("write");
    let missing = store.data_dir.path().join("missing.pem");
    for path in [missing, garbage] {
        let mut config = store.config();
        config.idp = Some(IdpConfig::new(vec![fixture(RSA_PUBLIC), path.clone()]));
        match Application::build(config).await {
            Err(Error::Config(message)) => assert!(
                message.contains(&path.display().to_string()),
                "the message names the file: {message}"
            ),
            Err(other) => panic!(
                "{}: expected a configuration error, got {other}",
                path.display()
            ),
            Ok(_) => panic!("{}: the server started", path.display()),
        }
    }
}
