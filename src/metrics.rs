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

// Handles of the per-request metrics, resolved once. The recorder keeps its
// metrics in a sharded map behind `RwLock`s: looking a metric up by name and
// labels on every request put a lock shared by all requests on the
// verification path (BENCHMARKS.md). A handle records with atomics only.

/// One counter per verification code, in the order of `CODES`.
static VERIFICATION_COUNTERS: OnceLock<Vec<::metrics::Counter>> = OnceLock::new();

/// Latency histograms by method, route and status.
static REQUEST_HISTOGRAMS: OnceLock<papaya::HashMap<RouteKey, ::metrics::Histogram>> =
    OnceLock::new();

#[derive(Hash, PartialEq, Eq)]
struct RouteKey {
    method: &'static str,
    route: Box<str>,
    status: u16,
}

/// A borrowed [`RouteKey`], for looking one up without allocating; hashes the
/// same (same fields in the same order, `str` either way).
#[derive(Hash)]
struct RouteKeyRef<'a> {
    method: &'static str,
    route: &'a str,
    status: u16,
}

impl papaya::Equivalent<RouteKey> for RouteKeyRef<'_> {
    fn equivalent(&self, key: &RouteKey) -> bool {
        self.method == key.method && self.route == &*key.route && self.status == key.status
    }
}

/// Counts one verification answer by its code (`VALID`, `NOT_FOUND`, ...).
pub fn verification(code: &str) {
    match CODES.iter().position(|c| *c == code) {
        Some(i) => {
            let counters = VERIFICATION_COUNTERS.get_or_init(|| {
                // The recorder must exist before handles are taken from it.
                let _ = handle();
                CODES
                    .iter()
                    .map(|c| ::metrics::counter!(VERIFICATIONS_TOTAL, "code" => *c))
                    .collect()
            });
            if let Some(counter) = counters.get(i) {
                counter.increment(1);
            }
        }
        None => ::metrics::counter!(VERIFICATIONS_TOTAL, "code" => code.to_owned()).increment(1),
    }
}

/// Counts one key command (`create`, `update`, ...) with its outcome
/// (`ok`, `rejected`, `error`).
pub fn command(command: &'static str, outcome: &'static str) {
    ::metrics::counter!(COMMANDS_TOTAL, "command" => command, "outcome" => outcome).increment(1);
}

/// Records one HTTP request's latency.
pub fn request(method: &'static str, route: &str, status: u16, elapsed: Duration) {
    let histograms = REQUEST_HISTOGRAMS.get_or_init(|| {
        let _ = handle();
        papaya::HashMap::new()
    });
    let histograms = histograms.pin();
    let key = RouteKeyRef {
        method,
        route,
        status,
    };
    if let Some(h) = histograms.get(&key) {
        h.record(elapsed.as_secs_f64());
        return;
    }
    // First request of this kind: the label set is bounded (methods, the
    // router's routes, statuses), so the map stays small.
    let histogram = ::metrics::histogram!(
        HTTP_REQUEST_DURATION,
        "method" => method,
        "route" => route.to_owned(),
        "status" => status_label(status),
    );
    histogram.record(elapsed.as_secs_f64());
    histograms.insert(
        RouteKey {
            method,
            route: route.into(),
            status,
        },
        histogram,
    );
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
