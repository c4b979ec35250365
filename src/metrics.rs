//! Prometheus metrics: one recorder per process (the `metrics` facade is global),
//! rendered by `GET /metrics` (`http::metrics`). Handlers record through the
//! helpers here so that metric and label names live in one place.
//!
//! Tests run many applications in one process: they all share this recorder, so
//! counters and histograms add up across them. Gauges that describe one node
//! (projection lag, index size) are not kept here but computed at scrape time.

mod sharded;

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use keyledger_projections::VerificationCode;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
/// Webhook delivery attempts, by `outcome` (delivered, failed).
pub const WEBHOOK_ATTEMPTS_TOTAL: &str = "keyledger_webhook_attempts_total";
/// Seconds from an event to the delivery of its message.
pub const WEBHOOK_LAG: &str = "keyledger_webhook_delivery_lag_seconds";
/// Webhook endpoints disabled after failing for 3 days.
pub const WEBHOOK_DISABLED_TOTAL: &str = "keyledger_webhook_endpoints_disabled_total";

/// Delivery-lag buckets in seconds: 10 ms to 1 day (retries included).
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3_600.0, 21_600.0,
    86_400.0,
];

/// Latency buckets in seconds: 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// How often histogram samples are folded into their buckets between scrapes
/// (bounds memory on a node nobody scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The verification codes, in the order of the counters.
const CODES: [VerificationCode; 8] = [
    VerificationCode::Valid,
    VerificationCode::NotFound,
    VerificationCode::Disabled,
    VerificationCode::Expired,
    VerificationCode::WrongEnvironment,
    VerificationCode::InsufficientPermissions,
    VerificationCode::RateLimited,
    VerificationCode::UsageExceeded,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installing the recorder on first use.
pub fn handle() -> PrometheusHandle {
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(WEBHOOK_LAG.to_string()),
            LAG_BUCKETS,
        )
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = ::metrics::set_global_recorder(recorder) {
        // Someone else (an embedding program) installed a recorder first: our
        // scrape then shows only the scrape-time gauges.
        tracing::warn!(error = %e, "a metrics recorder is already installed");
    }
    ::metrics::describe_counter!(
        COMMANDS_TOTAL,
        "Key management commands, by command and outcome (ok, rejected, error)."
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

// What every request records (verification answers, request latency) is
// kept outside the exporter, in counters and histograms sharded by thread
// (`sharded`), and rendered beside the exporter's text at scrape time. Looking
// a metric up in the exporter's registry takes its `RwLock`s, and its handles
// are one set of atomics that every request of every core writes.

/// One counter per verification code, in the order of `CODES`.
static VERIFICATION_COUNTERS: OnceLock<[sharded::Counter; 8]> = OnceLock::new();

/// Latency histograms by method, route and status. Never removed (the label
/// set is bounded: methods, the router's routes, statuses), so each is leaked
/// once and recorded into without holding the map's guard.
static REQUEST_HISTOGRAMS: OnceLock<papaya::HashMap<RouteKey, &'static sharded::Histogram>> =
    OnceLock::new();

fn verification_counters() -> &'static [sharded::Counter; 8] {
    VERIFICATION_COUNTERS.get_or_init(Default::default)
}

fn request_histograms() -> &'static papaya::HashMap<RouteKey, &'static sharded::Histogram> {
    REQUEST_HISTOGRAMS.get_or_init(papaya::HashMap::new)
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct RouteKey {
    method: &'static str,
    route: &'static str,
    status: u16,
}

impl RouteKey {
    /// Same static strings, so surely the same key (a cache hit needs no
    /// string hashing); different pointers prove nothing and go to the map.
    fn same(&self, other: &RouteKey) -> bool {
        std::ptr::eq(self.method, other.method)
            && std::ptr::eq(self.route, other.route)
            && self.status == other.status
    }
}

/// Histograms this thread recorded into last: a request finds its own
/// without hashing its labels.
const CACHED: usize = 4;

thread_local! {
    static RECENT: std::cell::RefCell<Vec<(RouteKey, &'static sharded::Histogram)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Counts one verification answer by its code.
pub fn verification(code: VerificationCode) {
    if let Some(i) = CODES.iter().position(|c| *c == code) {
        verification_counters()[i].increment();
    }
}

/// Records one HTTP request's latency.
pub fn request(method: &'static str, route: &'static str, status: u16, elapsed: Duration) {
    let key = RouteKey {
        method,
        route,
        status,
    };
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if let Some((_, h)) = recent.iter().find(|(k, _)| k.same(&key)) {
            h.record(elapsed);
            return;
        }
        let histograms = request_histograms().pin();
        let h: &'static sharded::Histogram = histograms.get_or_insert_with(key, || {
            Box::leak(Box::new(sharded::Histogram::new(LATENCY_BUCKETS)))
        });
        h.record(elapsed);
        if recent.len() == CACHED {
            recent.remove(0);
        }
        recent.push((key, h));
    });
}

/// Appends the sharded metrics to a scrape, in the text exposition format.
pub fn render_sharded(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP {VERIFICATIONS_TOTAL} Key verifications answered, by result code.\n\
         # TYPE {VERIFICATIONS_TOTAL} counter"
    );
    for (code, counter) in CODES.iter().zip(verification_counters()) {
        let _ = writeln!(
            out,
            "{VERIFICATIONS_TOTAL}{{code=\"{}\"}} {}",
            code.as_str(),
            counter.value()
        );
    }
    let _ = writeln!(
        out,
        "# HELP {HTTP_REQUEST_DURATION} HTTP request latency, by method, route and status.\n\
         # TYPE {HTTP_REQUEST_DURATION} histogram"
    );
    let histograms = request_histograms().pin();
    let mut keyed: Vec<_> = histograms.iter().collect();
    keyed.sort_by_key(|(k, _)| (k.route, k.method, k.status));
    for (k, h) in keyed {
        // Methods, routes and statuses are our own labels: nothing to escape.
        let labels = format!(
            "method=\"{}\",route=\"{}\",status=\"{}\"",
            k.method, k.route, k.status
        );
        h.render(out, HTTP_REQUEST_DURATION, &labels);
    }
}

/// Counts one key command (`create`, `update`, ...) with its outcome
/// (`ok`, `rejected`, `error`).
/// One webhook delivery attempt; `lag` is from the event to a delivery.
pub fn webhook_attempt(delivered: bool, lag: Option<Duration>) {
    let outcome = if delivered { "delivered" } else { "failed" };
    ::metrics::counter!(WEBHOOK_ATTEMPTS_TOTAL, "outcome" => outcome).increment(1);
    if let Some(lag) = lag {
        ::metrics::histogram!(WEBHOOK_LAG).record(lag.as_secs_f64());
    }
}

/// A webhook endpoint disabled after failing for 3 days.
pub fn webhook_disabled() {
    ::metrics::counter!(WEBHOOK_DISABLED_TOTAL).increment(1);
}

pub fn command(command: &'static str, outcome: &'static str) {
    ::metrics::counter!(COMMANDS_TOTAL, "command" => command, "outcome" => outcome).increment(1);
}
