//! Prometheus metrics: one recorder per process (the `metrics` facade is global),
//! rendered by `GET /metrics` (`http::metrics`). Handlers record through the
//! helpers here so that metric and label names live in one place.
//!
//! Tests run many applications in one process: they all share this recorder, so
//! counters and histograms add up across them. Gauges that describe one node
//! (projection lag, index size) are not kept here but computed at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::SharedString;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Verifications answered, by `code` (`VALID`, `NOT_FOUND`, ...).
pub const VERIFICATIONS_TOTAL: &str = "keyledger_verifications_total";
/// Key commands, by `command` (create, update, ...) and `outcome` (ok, rejected, error).
pub const COMMANDS_TOTAL: &str = "keyledger_commands_total";
/// HTTP request latency, by `method`, `route` and `status`.
pub const HTTP_REQUEST_DURATION: &str = "keyledger_http_request_duration_seconds";
/// Events committed but not yet applied, by `projection` (computed at scrape time).
pub const PROJECTION_LAG: &str = "keyledger_projection_lag_events";
/// Keys in this node's in-memory verification index (computed at scrape time).
pub const INDEX_KEYS: &str = "keyledger_verification_index_keys";

/// Latency buckets in seconds: 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// How often histogram samples are folded into their buckets between scrapes
/// (bounds memory on a node nobody scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The verification codes, so that the hot path records without allocating.
const CODES: &[&str] = &[
    "VALID",
    "NOT_FOUND",
    "DISABLED",
    "EXPIRED",
    "WRONG_ENVIRONMENT",
    "INSUFFICIENT_PERMISSIONS",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installing the recorder on first use.
pub fn handle() -> PrometheusHandle {
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = match PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.into()), LATENCY_BUCKETS)
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "latency buckets rejected; histograms become summaries");
            PrometheusBuilder::new()
        }
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = ::metrics::set_global_recorder(recorder) {
        // Someone else (an embedding program) installed a recorder first: our
        // scrape then shows only the scrape-time gauges.
        tracing::warn!(error = %e, "a metrics recorder is already installed");
    }
    ::metrics::describe_counter!(
        VERIFICATIONS_TOTAL,
        "Key verifications answered, by result code."
    );
    ::metrics::describe_counter!(
        COMMANDS_TOTAL,
        "Key management commands, by command and outcome (ok, rejected, error)."
    );
    ::metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        ::metrics::Unit::Seconds,
        "HTTP request latency, by method, route and status."
    );
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
    }
    handle
}

/// Counts one verification answer by its code (`VALID`, `NOT_FOUND`, ...).
pub fn verification(code: &str) {
    let label: SharedString = match CODES.iter().find(|c| **c == code) {
        Some(c) => SharedString::const_str(c),
        None => SharedString::from_owned(code.to_owned()),
    };
    ::metrics::counter!(VERIFICATIONS_TOTAL, "code" => label).increment(1);
}

/// Counts one key command (`create`, `update`, ...) with its outcome
/// (`ok`, `rejected`, `error`).
pub fn command(command: &'static str, outcome: &'static str) {
    ::metrics::counter!(COMMANDS_TOTAL, "command" => command, "outcome" => outcome).increment(1);
}

/// Records one HTTP request's latency.
pub fn request(method: &'static str, route: String, status: u16, elapsed: Duration) {
    ::metrics::histogram!(
        HTTP_REQUEST_DURATION,
        "method" => method,
        "route" => route,
        "status" => status_label(status),
    )
    .record(elapsed.as_secs_f64());
}

/// The status label, without an allocation for the statuses keyledger answers.
fn status_label(status: u16) -> SharedString {
    const KNOWN: [(u16, &str); 17] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
        (504, "504"),
    ];
    match KNOWN.iter().find(|(code, _)| *code == status) {
        Some((_, label)) => SharedString::const_str(label),
        None => SharedString::from_owned(status.to_string()),
    }
}
