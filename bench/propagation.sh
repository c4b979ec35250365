#!/usr/bin/env bash
# Cross-node revocation propagation: two real `keyledger serve` processes over one
# PostgreSQL database; deactivate through A, time until B answers DISABLED.
# Usage: bench/propagation.sh [count]   (needs PostgreSQL on 127.0.0.1:5432, trust auth)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000}
db="kl_bench_propagation_$$"
admin="postgres://postgres@127.0.0.1:5432/postgres"
psql "$admin" -qc "CREATE DATABASE $db"
work=$(mktemp -d)
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
    rm -rf "$work"
}
pids=()
trap cleanup EXIT
cargo build --release -q --workspace --bins
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export KEYLEDGER_JWT_SECRET="bench-secret-$(date +%s%N)-0123456789abcdef"
export RUST_LOG=warn
# The failure limiter is off: the bench verifies from one address in a tight
# loop, and every DISABLED answer is a failed verification (429 after 100).
./target/release/keyledger serve --listen 127.0.0.1:18181 --verify-failure-limit 0 --data-dir "$work/a" & pids+=($!)
./target/release/keyledger serve --listen 127.0.0.1:18182 --verify-failure-limit 0 --data-dir "$work/b" & pids+=($!)
for port in 18181 18182; do
    for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
./target/release/keyledger-bench propagation --node-a http://127.0.0.1:18181 \
    --node-b http://127.0.0.1:18182 --count "$count"
