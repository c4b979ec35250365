//! Counters and histograms for what every request records, sharded by thread.
//!
//! The Prometheus exporter keeps one atomic (a counter) or one lock-free
//! bucket list (a histogram) per label set, written by every request: on the
//! verification path all requests of both cores wrote the same cache lines,
//! which then moved between the cores on every request (about 3 % of the
//! throughput of `POST /v1/keys/verify`, BENCHMARKS.md). Here each thread
//! writes its own shard, and a scrape adds the shards up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// More shards than threads that record on a 2-core node; threads beyond
/// that share shards, which only costs speed.
const SHARDS: usize = 16;

/// The shard of the current thread, given out round-robin at its first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One shard of a counter, on a cache line pair of its own (the adjacent-line
/// prefetcher pulls lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct CounterShard(AtomicU64);

/// A monotonic counter.
#[derive(Debug)]
pub struct Counter {
    shards: [CounterShard; SHARDS],
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| CounterShard::default()),
        }
    }
}

impl Counter {
    pub fn increment(&self) {
        self.shards[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn value(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// One shard of a histogram: a count per bucket (not cumulative) and the
/// samples' sum in nanoseconds.
#[derive(Debug)]
#[repr(align(128))]
struct HistogramShard {
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// A latency histogram with fixed upper bounds (seconds) plus `+Inf`.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    shards: Vec<HistogramShard>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let shards = (0..SHARDS)
            .map(|_| HistogramShard {
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_nanos: AtomicU64::new(0),
            })
            .collect();
        Self { bounds, shards }
    }

    pub fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        // Prometheus buckets are `le`: a sample on a bound counts in it.
        let bucket = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        let shard = &self.shards[shard()];
        if let Some(b) = shard.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends `name_bucket`, `name_sum` and `name_count` lines for `labels`
    /// (`k="v",…`, already escaped), in the text exposition format.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut per_bucket = vec![0u64; self.bounds.len() + 1];
        let mut sum_nanos = 0u64;
        for shard in &self.shards {
            for (total, b) in per_bucket.iter_mut().zip(&shard.buckets) {
                *total += b.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.saturating_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let mut cumulative = 0u64;
        for (i, n) in per_bucket.iter().enumerate() {
            cumulative += n;
            let _ = match self.bounds.get(i) {
                Some(le) => writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}"),
                None => writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"),
            };
        }
        // The count is the `+Inf` bucket, so the two always agree even while
        // requests go on during the scrape.
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_nanos as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_adds_up_its_shards() {
        let counter = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = counter.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.increment()))
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(counter.value(), 4000);
    }

    #[test]
    fn a_histogram_renders_cumulative_le_buckets() {
        static BOUNDS: &[f64] = &[0.001, 0.01];
        let h = Histogram::new(BOUNDS);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1)); // on the bound: counts in it
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "lat", "route=\"/x\"");
        assert_eq!(
            out,
            "lat_bucket{route=\"/x\",le=\"0.001\"} 2\n\
             lat_bucket{route=\"/x\",le=\"0.01\"} 3\n\
             lat_bucket{route=\"/x\",le=\"+Inf\"} 4\n\
             lat_sum{route=\"/x\"} 1.0065\n\
             lat_count{route=\"/x\"} 4\n"
        );
    }
}
