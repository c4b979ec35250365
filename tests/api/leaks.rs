//! Public leak reports: anyone may report; the answer says nothing about the
//! keys; a key of ours gets `KeyLeakReported` and is deactivated ("leaked"),
//! once per reporter and URL; the endpoint is limited per client address.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{reply, spawn_app, spawn_sqlite_app, token, Backend, Reply, TestApp};

backend_tests!(
    a_reported_key_is_recorded_once_and_deactivated_whatever_its_tenant,
    the_tenant_policy_decides_what_a_leak_leads_to,
    overlapping_reports_of_the_same_keys_are_all_recorded,
);

/// Reports answered at once while earlier ones are still being acted on:
/// every one of them is recorded on every key, none lost to the races
/// between them.
async fn overlapping_reports_of_the_same_keys_are_all_recorded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut keys = Vec::new();
    for i in 0..100 {
        keys.push(app.create_key(&format!("pasted-{i}")).await.1);
    }
    let reports = 19;
    let sent = futures::future::join_all((0..reports).map(|r| {
        report(
            &app,
            json!({"keys": keys, "url": format!("https://paste.example/{r}")}),
        )
    }))
    .await;
    assert!(sent.iter().all(|r| r.status == StatusCode::ACCEPTED));
    let want = reports * keys.len();
    let started = Instant::now();
    let (mut seen, mut progressed) = (0, started);
    loop {
        // Every page of the audit log's leak records.
        let mut n = 0;
        let mut cursor = String::new();
        loop {
            let r = app
                .get(&format!(
                    "/v1/audit?type=KeyLeakReported&limit=1000{cursor}"
                ))
                .await;
            n += r.body["events"].as_array().map_or(0, Vec::len);
            match r.body["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        if n == want {
            break;
        }
        // A loaded machine records slowly; a lost record stops the count.
        // So the test fails when no record arrives for 60 s, not after a
        // fixed time.
        if n > seen {
            (seen, progressed) = (n, Instant::now());
        }
        assert!(
            progressed.elapsed() < Duration::from_secs(60),
            "{n} of {want} leak records after {:?}, none for 60 s",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn report(app: &TestApp, body: Value) -> Reply {
    // No credential: anyone may report.
    reply(
        app.client
            .post(app.url("/v1/leaks/report"))
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn events(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    app.send_as(token, Method::GET, &format!("/v1/keys/{id}/events"), None)
        .await
        .body["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn a_reported_key_is_recorded_once_and_deactivated_whatever_its_tenant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("leaked").await;
    let (kept_id, _) = app.create_key("not reported").await;
    let other = token("other-tenant", "bob");
    let theirs = app
        .send_as(
            &other,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "theirs"})),
        )
        .await;
    let (their_id, their_key) = (
        theirs.body["id"].as_str().expect("id").to_string(),
        theirs.body["key"].as_str().expect("key").to_string(),
    );
    let body = json!({
        "keys": [key, "not a key", their_key, "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr"],
        "url": "https://paste.example/abc",
    });
    let r = report(&app, body.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"received": 4}),
        "nothing said about the keys"
    );

    // Acted on after the answer: deactivated, with the report before it.
    let started = Instant::now();
    while app.verify_code(&key).await != "DISABLED"
        || app.verify_code(&their_key).await != "DISABLED"
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not deactivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = events(&app, &app.token, &id).await;
    let types: Vec<&str> = history.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["KeyCreated", "KeyLeakReported", "KeyDeactivated"]);
    assert_eq!(history[1]["actor"], "keyledger:leaks:public");
    assert_eq!(history[1]["data"]["url"], "https://paste.example/abc");
    assert_eq!(history[2]["data"]["reason"], "leaked");
    // The other tenant's key was acted on too, in its own tenant's log.
    let theirs = events(&app, &other, &their_id).await;
    assert_eq!(theirs.len(), 3, "{theirs:?}");
    let kept = app.get(&format!("/v1/keys/{kept_id}")).await;
    assert_eq!(
        kept.body["status"], "active",
        "an unreported key is untouched"
    );

    // The key list marks the key from its first report on.
    let leaked_at = app.get(&format!("/v1/keys/{id}")).await.body["leaked_at"].clone();
    assert!(leaked_at.is_string(), "{leaked_at}");
    assert!(kept.body["leaked_at"].is_null(), "{}", kept.text);

    // The same report again records nothing more.
    let r = report(&app, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events(&app, &app.token, &id).await.len(), 3);

    // A report from elsewhere is recorded, and the mark keeps its first time.
    let r = report(
        &app,
        json!({"keys": [key], "url": "https://paste.example/def"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let started = Instant::now();
    while events(&app, &app.token, &id).await.len() < 4 {
        assert!(started.elapsed() < Duration::from_secs(10), "second report");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["leaked_at"], leaked_at, "{}", view.text);
    // The live key list and a fold of the events agree on the mark.
    let (store, projections) = app.open_tools().await;
    assert_eq!(
        keyledger::rebuild::check(&store, &projections)
            .await
            .expect("check"),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_bounded_and_limited_per_address() {
    let app = spawn_sqlite_app().await;
    let many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let r = report(&app, json!({"keys": many})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["error"]["details"]["field"], "keys");
    let r = report(&app, json!({"keys": ["x".repeat(300)]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = report(&app, json!({"keys": [], "url": "u".repeat(2049)})).await;
    assert_eq!(r.body["error"]["details"]["field"], "url", "{}", r.text);
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(report(&app, json!({"keys": ["nothing"]})).await.status);
    }
    assert!(
        statuses[..17].iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
}

/// A secret-scanning partner: its published keys (changeable, to rotate),
/// and how often they were fetched.
struct KeyServer {
    url: String,
    keys: std::sync::Arc<std::sync::Mutex<Vec<(String, p256::ecdsa::SigningKey)>>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl KeyServer {
    async fn start(keys: Vec<(String, p256::ecdsa::SigningKey)>) -> Self {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let keys = std::sync::Arc::new(std::sync::Mutex::new(keys));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let list: Vec<Value> = k
                        .lock()
                        .expect("keys")
                        .iter()
                        .map(|(id, sk)| {
                            json!({"key_identifier": id, "is_current": true,
                                "key": sk.verifying_key().to_public_key_pem(LineEnding::LF).expect("pem")})
                        })
                        .collect();
                    axum::Json(json!({"public_keys": list}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/keys", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, keys, fetches }
    }
}

fn signing_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).expect("a valid scalar")
}

fn sign(key: &p256::ecdsa::SigningKey, body: &[u8]) -> String {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let signature: p256::ecdsa::Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

async fn partner_report(
    app: &TestApp,
    identifier: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut request = app
        .client
        .post(app.url("/v1/leaks/github"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(i) = identifier {
        request = request.header("Github-Public-Key-Identifier", i);
    }
    if let Some(s) = signature {
        request = request.header("Github-Public-Key-Signature", s);
    }
    reply(request.send().await.expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_partner_report_is_answered_and_acted_on_and_a_bad_one_is_refused() {
    let server = KeyServer::start(vec![("k1".into(), signing_key(7))]).await;
    let store = crate::helpers::TestStore::new(Backend::Sqlite)
        .await
        .expect("sqlite");
    let reporter =
        keyledger::leaks::reporters::ReporterConfig::parse(&format!("github={}", server.url))
            .expect("reporter");
    let app = crate::helpers::start(store, move |c| c.leak_reporters = vec![reporter]).await;
    let (id, key) = app.create_key("found on github").await;
    let (_, safe) = app.create_key("not in the report").await;
    let body = serde_json::to_vec(&json!([
        {"token": key, "type": "keyledger_api_key", "url": "https://github.com/o/r/blob/x/.env", "source": "content"},
        {"token": "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr", "type": "keyledger_api_key", "url": "https://github.com/o/r", "source": "commit"},
    ]))
    .expect("json");

    // Unsigned, badly signed, or with an unknown key: 401, nothing done.
    assert_eq!(
        partner_report(&app, None, None, &body).await.status,
        StatusCode::UNAUTHORIZED
    );
    let tampered = sign(&signing_key(7), b"[]");
    let r = partner_report(&app, Some("k1"), Some(&tampered), &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = partner_report(&app, Some("k9"), Some(&sign(&signing_key(9), &body)), &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.verify_code(&key).await, "VALID");

    // Signed: ours is a true positive (the token echoed), the other a false
    // positive with its hash only.
    let signature = sign(&signing_key(7), &body);
    let r = partner_report(&app, Some("k1"), Some(&signature), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[0]["label"], "true_positive");
    assert_eq!(r.body[0]["token_raw"], key.as_str());
    assert_eq!(r.body[1]["label"], "false_positive");
    assert_eq!(
        r.body[1]["token_hash"],
        keyledger_domain::KeyHash::of("kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr")
            .to_hex()
    );
    assert!(r.body[1].get("token_raw").is_none());
    let started = Instant::now();
    while app.verify_code(&key).await != "DISABLED" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not deactivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.verify_code(&safe).await, "VALID");
    let history = events(&app, &app.token, &id).await;
    assert_eq!(history[1]["type"], "KeyLeakReported");
    assert_eq!(history[1]["data"]["reporter"], "github");
    assert_eq!(history[1]["data"]["source"], "content");

    // GitHub retries: nothing more is recorded.
    let r = partner_report(&app, Some("k1"), Some(&signature), &body).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events(&app, &app.token, &id).await.len(), 3);

    // The reporter rotates its key: a new identifier is fetched at once
    // (once a second at most: the made-up identifier above fetched just now).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = server.fetches.load(std::sync::atomic::Ordering::SeqCst);
    server
        .keys
        .lock()
        .expect("keys")
        .push(("k2".into(), signing_key(8)));
    let r = partner_report(&app, Some("k2"), Some(&sign(&signing_key(8), &body)), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(server.fetches.load(std::sync::atomic::Ordering::SeqCst) > before);

    // A thousand tokens in one report.
    let many: Vec<Value> = (0..1000)
        .map(|i| json!({"token": format!("not-a-key-{i}"), "type": "keyledger_api_key", "url": null, "source": "content"}))
        .collect();
    let big = serde_json::to_vec(&many).expect("json");
    let started = Instant::now();
    let r = partner_report(&app, Some("k1"), Some(&sign(&signing_key(7), &big)), &big).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body.as_array().map(Vec::len), Some(1000));
    println!("1,000 tokens answered in {:?}", started.elapsed());
    // An unknown reporter is no route.
    let r = reply(
        app.client
            .post(app.url("/v1/leaks/gitlab"))
            .body("[]")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn the_tenant_policy_decides_what_a_leak_leads_to(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let got = app.get("/v1/policy").await;
    assert_eq!(got.body["on_leak"], "deactivate", "{}", got.text);

    // Notify only: recorded, and the key keeps working.
    let r = app
        .send(
            Method::PUT,
            "/v1/policy",
            Some(json!({"on_leak": "notify"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.get("/v1/policy").await.body["on_leak"], "notify");
    let (noted, noted_key) = app.create_key("noted").await;
    report(&app, json!({"keys": [noted_key]})).await;
    let started = Instant::now();
    while events(&app, &app.token, &noted).await.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.verify_code(&noted_key).await, "VALID");
    assert_eq!(events(&app, &app.token, &noted).await.len(), 2);

    // Delete: the key is gone.
    let r = app
        .send(
            Method::PUT,
            "/v1/policy",
            Some(json!({"on_leak": "delete"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (gone, gone_key) = app.create_key("gone").await;
    report(&app, json!({"keys": [gone_key]})).await;
    let started = Instant::now();
    while app.verify_code(&gone_key).await != "NOT_FOUND" {
        assert!(started.elapsed() < Duration::from_secs(10), "not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = app.get(&format!("/v1/audit?key_id={gone}")).await;
    let types: Vec<&str> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        ["KeyCreated", "KeyLeakReported", "KeyDeleted"],
        "{}",
        audit.text
    );

    // Refused: an unknown action, an unknown field. Changes are audited.
    let r = app
        .send(
            Method::PUT,
            "/v1/policy",
            Some(json!({"on_leak": "ignore"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["details"]["field"], "on_leak");
    let r = app
        .send(
            Method::PUT,
            "/v1/policy",
            Some(json!({"on_leak": "delete", "extra": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let audit = app.get("/v1/audit?type=TenantPolicySet").await;
    assert_eq!(
        audit.body["events"].as_array().map(Vec::len),
        Some(2),
        "{}",
        audit.text
    );
    assert_eq!(audit.body["events"][0]["actor"], "alice");
    // Another tenant keeps the default.
    let other = token("other-tenant", "bob");
    let theirs = app.send_as(&other, Method::GET, "/v1/policy", None).await;
    assert_eq!(theirs.body["on_leak"], "deactivate");
}
