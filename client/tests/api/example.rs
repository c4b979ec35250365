//! `examples/axum_service.rs`, the service the crate's docs point to, served
//! on a random port in front of a real server: what its routes answer with
//! and without a key, and with a key lacking the permission.

use std::net::SocketAddr;

use keyledger_client::{Client, CreateKey};
use reqwest::StatusCode;
use serde_json::Value;

use crate::axum_service;
use crate::harness::{self, TENANT};

/// Serves the example's app on a random port; its base URL.
async fn serve_example(keyledger: Client) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum_service::app(keyledger).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    url
}

/// `GET path` with `key` in `X-Api-Key`; the status and the JSON body.
async fn get(url: &str, path: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(format!("{url}{path}"));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_answers_only_keys_that_may_call_each_route() {
    let mut server = harness::start().await;
    let client = server.client();
    let reader = client
        .create_key(&CreateKey {
            permissions: Some(vec!["invoices:read".into()]),
            ..CreateKey::new("invoice reader")
        })
        .await
        .expect("create");
    let other = client
        .create_key(&CreateKey {
            permissions: Some(vec!["orders:read".into()]),
            ..CreateKey::new("order reader")
        })
        .await
        .expect("create");
    let url = serve_example(Client::new(&server.url).expect("client")).await;

    let (status, body) = get(&url, "/whoami", Some(reader.key.expose())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["key_id"], reader.id.as_str());
    assert_eq!(body["tenant"], TENANT);
    assert_eq!(body["name"], "invoice reader");
    assert_eq!(body["permissions"], serde_json::json!(["invoices:read"]));

    let (status, body) = get(&url, "/invoices", Some(reader.key.expose())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tenant"], TENANT);

    // Any valid key may ask who it is; only invoice readers see invoices.
    let (status, body) = get(&url, "/whoami", Some(other.key.expose())).await;
    assert_eq!(
        (status, &body["key_id"]),
        (StatusCode::OK, &Value::from(other.id.as_str()))
    );
    let (status, body) = get(&url, "/invoices", Some(other.key.expose())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, _) = get(&url, "/whoami", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    client
        .deactivate_key(&reader.id, None)
        .await
        .expect("deactivate");
    let (status, _) = get(&url, "/invoices", Some(reader.key.expose())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a deactivated key");

    // keyledger gone: the service refuses rather than letting anyone in.
    server.stop().await;
    let (status, _) = get(&url, "/whoami", Some(other.key.expose())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
