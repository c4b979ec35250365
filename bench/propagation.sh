#!/usr/bin/env bash
# Cross-node revocation propagation: two real `keyledger serve` processes over one
# PostgreSQL database; deactivate through A, time until B answers DISABLED.
# Usage: bench/propagation.sh [count]   (needs PostgreSQL on 127.0.0.1:5432, trust auth)
# env LOAD=N: meanwhile N clients per node create keys at full speed on both
# nodes (`keyledger-bench create`), so the delay is measured under write load;
# each node's create rate is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
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
load=${LOAD:-0}
for node in a:18181 b:18182; do
    "$REL"/keyledger serve --listen "127.0.0.1:${node#*:}" --verify-failure-limit 0 \
        --max-keys-per-tenant 100000000 --data-dir "$work/${node%:*}" & pids+=($!)
done
for port in 18181 18182; do
    for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
loaders=()
if [ "$load" -gt 0 ]; then
    for port in 18181 18182; do
        # SIGINT ends the load early and still prints its rate.
        "$REL"/keyledger-bench create --url "http://127.0.0.1:$port" \
            --clients "$load" --duration 3600s >"$work/load-$port.txt" 2>&1 & loaders+=($!)
    done
    sleep 3   # full speed before the first measured key
fi
"$REL"/keyledger-bench propagation --node-a http://127.0.0.1:18181 \
    --node-b http://127.0.0.1:18182 --count "$count"
if [ "$load" -gt 0 ]; then
    kill -INT "${loaders[@]}"; wait "${loaders[@]}" 2>/dev/null || true
    for port in 18181 18182; do echo "load on :$port: $(grep commands_per_s "$work/load-$port.txt" || tail -1 "$work/load-$port.txt")"; done
fi
