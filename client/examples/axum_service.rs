//! An axum service whose routes only answer requests with a valid keyledger
//! API key: `KeyAuthLayer` verifies the key (from `X-Api-Key` or
//! `Authorization: Bearer`), and the handlers read who called from the
//! `VerifiedKey` it leaves in the request's extensions.
//!
//! ```text
//! keyledger serve &                                  # on 127.0.0.1:8080
//! KEYLEDGER_URL=http://127.0.0.1:8080 cargo run -p keyledger-client --example axum_service
//! curl -H "X-Api-Key: kl_live_..." http://127.0.0.1:3000/whoami
//! ```
//!
//! `KEYLEDGER_URL` is keyledger's address and `LISTEN` this service's
//! (default `127.0.0.1:3000`). Requests without a key get 401, keys lacking
//! `invoices:read` get 403 on `/invoices`, rate-limited keys 429, and every
//! request gets 503 while keyledger cannot be reached.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::{Extension, Json, Router};
use keyledger_client::{Client, KeyAuthLayer, VerifiedKey};
use serde_json::{json, Value};

/// The routes, each behind its own check: any valid key for `/whoami`, a
/// key granting `invoices:read` for `/invoices`.
pub fn app(keyledger: Client) -> Router {
    let any_key = KeyAuthLayer::new(keyledger.clone())
        .header("x-api-key")
        // Keys with `allowed_ips` are checked against the caller's address.
        .client_ip(|parts| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip())
        });
    let invoice_readers = KeyAuthLayer::new(keyledger)
        .header("x-api-key")
        .require_permissions(["invoices:read"]);
    Router::new()
        .route("/whoami", get(whoami).layer(any_key))
        .route("/invoices", get(invoices).layer(invoice_readers))
}

async fn whoami(Extension(key): Extension<VerifiedKey>) -> Json<Value> {
    Json(json!({
        "key_id": key.key_id,
        "tenant": key.tenant,
        "name": key.name,
        "permissions": key.permissions,
    }))
}

async fn invoices(Extension(key): Extension<VerifiedKey>) -> Json<Value> {
    Json(json!({ "tenant": key.tenant, "invoices": [] }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keyledger_url =
        std::env::var("KEYLEDGER_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let keyledger = Client::new(keyledger_url)?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app(keyledger).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
