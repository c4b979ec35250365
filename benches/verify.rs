//! In-process verification at 1,000,000 keys: parse + checksum + SHA-256 + index
//! lookup + status and permission checks + usage count, exactly what
//! `POST /v1/keys/verify` does before it writes the JSON answer.
//!
//! `cargo bench --bench verify` (set `KEYLEDGER_BENCH_KEYS` for another size).
//! Keys are presented in a random order so the lookups miss the CPU caches the
//! way a real population of callers would.

use std::hint::black_box;
use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::net::IpAddr;

use keyledger_domain::{
    AllowedIps, Credits, Environment, KeyPrefix, Ledger, Permissions, RateLimit, RawKey,
};
use keyledger_projections::{
    IndexedKey, LimitSpec, Need, VerificationCode, VerificationIndex, VerifyRequest,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

// The server's allocator, so memory layout and page size match the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn population() -> usize {
    std::env::var("KEYLEDGER_BENCH_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// An index of `n` keys, as start-up builds it, and the raw keys in random
/// order. `limited` keys have a rate limit and credits, as `keyledger-bench
/// seed --limited` gives them.
fn loaded_index(n: usize, limited: bool) -> (VerificationIndex, Vec<String>) {
    let (index, keys) = loaded_index_with(n, limited, false);
    (index, keys.into_iter().map(|(k, _)| k).collect())
}

/// A tenant's handful of allowed ranges (five, IPv4 and IPv6; each tenant
/// its own), and an address inside the last one checked: the worst case of
/// the scan.
fn tenant_ranges(tenant: usize) -> (AllowedIps, IpAddr) {
    let t = tenant % 100;
    let ranges = vec![
        format!("10.{t}.0.0/16"),
        format!("192.168.{t}.0/24"),
        format!("2001:db8:{t:x}::/48"),
        format!("172.16.{t}.0/24"),
        format!("203.0.{t}.0/24"),
    ];
    let allowed = AllowedIps::parse(ranges).expect("valid ranges");
    // Canonical order puts IPv6 last: an address in it is checked against
    // every range.
    let ip = format!("2001:db8:{t:x}::7").parse().expect("address");
    (allowed, ip)
}

/// As [`loaded_index`]; with `restricted`, every key has its tenant's
/// allowed ranges and is presented with an address inside them.
fn loaded_index_with(
    n: usize,
    limited: bool,
    restricted: bool,
) -> (VerificationIndex, Vec<(String, Option<IpAddr>)>) {
    let mut rng = StdRng::seed_from_u64(7);
    let prefix = KeyPrefix::default();
    let permissions = Permissions::parse(vec!["invoices:read".into(), "invoices:write".into()])
        .expect("valid permissions");
    let index = VerificationIndex::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let env = if i % 4 == 0 {
            Environment::Test
        } else {
            Environment::Live
        };
        let raw = RawKey::generate(&prefix, env, &mut rng);
        let key_id = format!(
            "key_{:032x}",
            i as u128 | (0x0190_0000_0000_7000_8000_0000_0000_0000)
        );
        let key = IndexedKey::new(
            &key_id,
            &raw.parsed().display_prefix(),
            &format!("tenant-{}", i % 100),
            &format!("service {i}"),
            env,
            permissions.clone(),
            None,
            true,
        );
        let (key, ip) = if restricted {
            let (allowed, ip) = tenant_ranges(i);
            (key.with_allowed_ips(allowed), Some(ip))
        } else {
            (key, None)
        };
        let key = if limited {
            key.with_limits(LimitSpec {
                owner: None,
                ratelimits: vec![RateLimit {
                    name: "per-minute".into(),
                    limit: 1_000_000_000,
                    window_ms: 60_000,
                }],
                ledger: Some(Ledger::opening(
                    &Credits {
                        remaining: keyledger_domain::limits::MAX_CREDITS,
                        refill: None,
                    },
                    Utc::now(),
                )),
            })
        } else {
            key
        };
        index.insert(raw.hash(), key);
        keys.push((raw.into_exposed(), ip));
    }
    keys.shuffle(&mut rng);
    (index, keys)
}

/// Gives every limited key a window share and a credit block that outlast
/// the run, as a node holds them between reservations: what is measured is
/// the check from memory, not the store's round trip.
fn reserve_ahead(index: &VerificationIndex, keys: &[String], now: chrono::DateTime<Utc>) {
    const PLENTY: u64 = 1_000_000_000_000;
    for key in keys {
        let request = VerifyRequest {
            key,
            environment: None,
            permissions: &[],
            cost: 0,
            ip: None,
        };
        loop {
            match index.verify(request, now, |a| a.code) {
                Ok(code) => {
                    assert_eq!(code, VerificationCode::Valid);
                    break;
                }
                Err(Need::Window(w)) => index.grant_window(&w, PLENTY, PLENTY),
                Err(Need::Credits { key_id, .. }) => {
                    let k = index.limited_key(&key_id).expect("limited");
                    let mut ledger = k.opening().expect("credits");
                    ledger.reserve(PLENTY);
                    index.grant_credits(&key_id, PLENTY, ledger, 1);
                }
                Err(other) => panic!("unexpected need {other:?}"),
            }
        }
    }
}

/// One valid key with a required permission per iteration: the keys come
/// from `next_key`, fresh copies per batch (setup, not timed).
fn valid_with_permission(
    b: &mut criterion::Bencher<'_>,
    index: &VerificationIndex,
    next_key: &mut impl FnMut() -> String,
    required: &[String],
    now: chrono::DateTime<Utc>,
) {
    b.iter_batched_ref(
        next_key,
        |key| {
            let code = index.verify(
                VerifyRequest {
                    key: black_box(key.as_str()),
                    environment: None,
                    permissions: required,
                    cost: 1,
                    ip: None,
                },
                now,
                |a| a.code,
            );
            debug_assert_eq!(code, Ok(VerificationCode::Valid));
            black_box(code)
        },
        BatchSize::NumIterations(256),
    )
}

fn verify(c: &mut Criterion) {
    let n = population();
    let (index, keys) = loaded_index(n, false);
    let required = vec!["invoices:read".to_string()];
    let first = keys[0].clone();
    let now = Utc::now();

    let mut group = c.benchmark_group(format!("verify_{n}_keys"));
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));

    // The presented key arrives in a request buffer that was just written, so
    // it is hot in the CPU cache; the index entries are not. Each batch of
    // routine calls gets fresh copies of the next keys (setup, not timed).
    let mut next = 0usize;
    let mut batch = move || {
        next = (next + 1) % keys.len();
        keys[next].clone()
    };
    group.bench_function("valid_with_permission", |b| {
        valid_with_permission(b, &index, &mut batch, &required, now)
    });
    // The same, also reading the answer's fields as the HTTP handler does to
    // build its response (the name is one more memory access per key).
    group.bench_function("valid_and_read_answer", |b| {
        b.iter_batched_ref(
            &mut batch,
            |key| {
                black_box(index.verify(
                    VerifyRequest {
                        key: black_box(key.as_str()),
                        environment: None,
                        permissions: &required,
                        cost: 1,
                        ip: None,
                    },
                    now,
                    |a| {
                        a.key.map_or(0, |k| {
                            k.name().len() + k.tenant().len() + k.permissions().as_slice().len()
                        })
                    },
                ))
            },
            BatchSize::NumIterations(256),
        )
    });

    // A key of the index refused for a permission it lacks: a refusal is
    // counted by outcome for the usage buckets (`refusals.rs`).
    let missing = vec!["invoices:delete-everything".to_string()];
    group.bench_function("refused_insufficient_permissions", |b| {
        b.iter_batched_ref(
            &mut batch,
            |key| {
                let code = index.verify(
                    VerifyRequest {
                        key: black_box(key.as_str()),
                        environment: None,
                        permissions: &missing,
                        cost: 1,
                        ip: None,
                    },
                    now,
                    |a| a.code,
                );
                debug_assert_eq!(code, Ok(VerificationCode::InsufficientPermissions));
                black_box(code)
            },
            BatchSize::NumIterations(256),
        )
    });

    // A well-formed key that is not in the index: the full hash and a lookup miss.
    let mut rng = StdRng::seed_from_u64(99);
    let unknown: Vec<String> = (0..10_000)
        .map(|_| {
            RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rng).into_exposed()
        })
        .collect();
    let mut j = 0usize;
    group.bench_function("unknown_key", |b| {
        b.iter(|| {
            j = (j + 1) % unknown.len();
            black_box(index.verify(
                VerifyRequest {
                    key: black_box(&unknown[j]),
                    environment: None,
                    permissions: &[],
                    cost: 1,
                    ip: None,
                },
                now,
                |a| a.code,
            ))
        })
    });

    // Garbage is refused by the checksum before any hashing.
    group.bench_function("garbage", |b| {
        b.iter(|| {
            black_box(index.verify(
                VerifyRequest {
                    key: black_box("kl_live_not-a-key-at-all"),
                    environment: None,
                    permissions: &[],
                    cost: 1,
                    ip: None,
                },
                now,
                |a| a.code,
            ))
        })
    });
    group.finish();

    // The same population with a rate limit and credits on every key, in its
    // own index (built once the plain one's runs are done).
    let (limited, limited_keys) = loaded_index(n, true);
    reserve_ahead(&limited, &limited_keys, now);
    let mut group = c.benchmark_group(format!("verify_{n}_limited_keys"));
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    let mut next = 0usize;
    let mut batch = move || {
        next = (next + 1) % limited_keys.len();
        limited_keys[next].clone()
    };
    group.bench_function("valid_with_permission", |b| {
        valid_with_permission(b, &limited, &mut batch, &required, now)
    });
    // The same, also reading the limits part of the answer as the HTTP
    // handler does (the limiter's memory, which the verdict did not need).
    group.bench_function("valid_and_read_limits", |b| {
        b.iter_batched_ref(
            &mut batch,
            |key| {
                black_box(limited.verify(
                    VerifyRequest {
                        key: black_box(key.as_str()),
                        environment: None,
                        permissions: &required,
                        cost: 1,
                        ip: None,
                    },
                    now,
                    |a| {
                        a.limits.map_or(0, |l| {
                            let r = l.report();
                            r.credits.unwrap_or(0) + r.ratelimits.len() as u64
                        })
                    },
                ))
            },
            BatchSize::NumIterations(256),
        )
    });
    group.finish();

    // The same population with every key pinned to its tenant's handful of
    // address ranges, presented from the last range checked; against the
    // plain group's `valid_with_permission` of the same run, this is what
    // the IP check costs.
    let (restricted, restricted_keys) = loaded_index_with(n, false, true);
    let mut group = c.benchmark_group(format!("verify_{n}_restricted_keys"));
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    let mut next = 0usize;
    let mut batch = move || {
        next = (next + 1) % restricted_keys.len();
        restricted_keys[next].clone()
    };
    group.bench_function("valid_with_permission", |b| {
        b.iter_batched_ref(
            &mut batch,
            |(key, ip)| {
                let code = restricted.verify(
                    VerifyRequest {
                        key: black_box(key.as_str()),
                        environment: None,
                        permissions: &required,
                        cost: 1,
                        ip: black_box(*ip),
                    },
                    now,
                    |a| a.code,
                );
                debug_assert_eq!(code, Ok(VerificationCode::Valid));
                black_box(code)
            },
            BatchSize::NumIterations(256),
        )
    });
    group.finish();

    // Sanity outside the timing: every presented key was found and counted.
    let code = index.verify(
        VerifyRequest {
            key: &first,
            environment: None,
            permissions: &required,
            cost: 1,
            ip: None,
        },
        now,
        |a| a.code,
    );
    assert_eq!(code, Ok(VerificationCode::Valid));
    // And a restricted key from outside its ranges is refused.
    let (outside, keys) = loaded_index_with(1, false, true);
    let code = outside.verify(
        VerifyRequest {
            key: &keys[0].0,
            environment: None,
            permissions: &required,
            cost: 1,
            ip: Some("198.51.100.1".parse().expect("address")),
        },
        now,
        |a| a.code,
    );
    assert_eq!(code, Ok(VerificationCode::IpNotAllowed));
}

criterion_group!(benches, verify);
criterion_main!(benches);
