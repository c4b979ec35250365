//! Resident bytes per key of the verification index: fills an index with N keys
//! the way start-up does (one `IndexedKey` per key-list row) and reads the
//! process's resident set size before and after.
//!
//! `cargo run --release -p keyledger-projections --example index_memory -- 1000000`

use std::time::Instant;

use keyledger_domain::{Environment, KeyHash, Permissions};
use keyledger_projections::{IndexedKey, VerificationIndex};

// The server's allocator, so the figure is the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident set size of this process, in bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let permissions = Permissions::parse(vec!["invoices:read".into(), "invoices:write".into()])
        .expect("valid permissions");
    let before = rss_bytes();
    let started = Instant::now();
    let index = VerificationIndex::with_capacity(n);
    for i in 0..n {
        let key_id = format!(
            "key_{:032x}",
            0x0190_0000_0000_7000_8000_0000_0000_0000u128 + i as u128
        );
        let hash = KeyHash::of(&key_id);
        index.insert(
            hash,
            IndexedKey::new(
                &key_id,
                // A display body as random as an issued key's.
                &format!("kl_live_{}", &hash.to_hex()[..8]),
                &format!("tenant-{}", i % 100),
                &format!("seed-{i}"),
                Environment::Live,
                permissions.clone(),
                None,
                true,
            ),
        );
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    println!(
        "keys={n} load_s={:.2} rss_before={before} rss_after={after} bytes_per_key={:.0}",
        elapsed.as_secs_f64(),
        (after.saturating_sub(before)) as f64 / n as f64
    );
    assert_eq!(index.len(), n);
}
