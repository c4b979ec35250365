//! `keyledger-bench webhooks`: delivery throughput and lag. A receiver in
//! this process (answers 204 at once, notes when each message arrived) is an
//! endpoint of a running node; keys are created through the node, and each
//! message's lag is its arrival less its event's `occurred_at` (same machine,
//! same clock).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keyledger::Error;
use keyledger_client::{Client, CreateKey, CreateWebhook};
use serde_json::Value;

#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    /// Lag of each first arrival, in ms.
    lags_ms: Vec<f64>,
    last: Option<Instant>,
}

/// One phase's figures.
pub struct Figures {
    pub messages: usize,
    pub seconds: f64,
    pub lags_ms: Vec<f64>,
}

async fn receive(seen: Arc<Mutex<Seen>>, body: axum::body::Bytes) -> axum::http::StatusCode {
    let arrived = Utc::now();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = value["data"]["event"]["position"].to_string();
    let occurred = value["data"]["event"]["occurred_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    let mut s = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if s.ids.insert(id) {
        if let Some(o) = occurred {
            s.lags_ms.push(
                (arrived - o.with_timezone(&Utc))
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1e3,
            );
        }
        s.last = Some(Instant::now());
    }
    axum::http::StatusCode::NO_CONTENT
}

fn client_error(e: keyledger_client::Error) -> Error {
    Error::internal_from("bench request", e)
}

/// Runs both phases against `url` with `token`: a burst of `burst` creates
/// from `clients` clients, then `paced` creates at `rate` a second.
pub async fn run(
    url: &str,
    token: &str,
    burst: usize,
    clients: usize,
    paced: usize,
    rate: f64,
) -> Result<(Figures, Figures), Error> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |body| receive(seen.clone(), body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::internal_from("receiver", e))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::internal_from("receiver", e))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::new(url).map_err(client_error)?.with_token(token);
    client
        .create_webhook(&CreateWebhook {
            url: format!("http://{address}/hook"),
            events: vec!["key.created".into()],
            description: None,
        })
        .await
        .map_err(|e| Error::internal(format!("endpoint not created: {e}")))?;

    // Burst: as fast as the node creates keys.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let client = client.clone();
        let n = burst / clients + usize::from(c < burst % clients);
        tasks.spawn(async move {
            for i in 0..n {
                client
                    .create_key(&CreateKey::new(format!("burst-{c}-{i}")))
                    .await
                    .map_err(client_error)?;
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::internal_from("bench client", e))??;
    }
    let burst_figures = wait_for(&seen, burst, started).await?;

    // Paced: one create at a time, `rate` a second.
    let gap = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    for i in 0..paced {
        client
            .create_key(&CreateKey::new(format!("paced-{i}")))
            .await
            .map_err(client_error)?;
        tokio::time::sleep(gap).await;
    }
    let paced_figures = wait_for(&seen, burst + paced, started).await?;
    let lags = paced_figures.lags_ms[burst..].to_vec();
    Ok((
        burst_figures,
        Figures {
            messages: paced,
            seconds: paced_figures.seconds,
            lags_ms: lags,
        },
    ))
}

async fn wait_for(seen: &Mutex<Seen>, n: usize, started: Instant) -> Result<Figures, Error> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        {
            let s = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if s.ids.len() >= n {
                let last = s.last.unwrap_or_else(Instant::now);
                return Ok(Figures {
                    messages: n,
                    seconds: last.duration_since(started).as_secs_f64(),
                    lags_ms: s.lags_ms.clone(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::internal(format!(
                    "{} of {n} messages arrived in 300 s",
                    s.ids.len()
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `p` quantile (0..=1) of `values`.
pub fn quantile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}
