#!/usr/bin/env bash
# Webhook delivery: throughput of a burst of creates (16 clients) and the lag
# from a command's event to its message's arrival at paced creates (20/s),
# to a receiver in `keyledger-bench` on this machine; on the embedded store,
# then on PostgreSQL.
# Usage: bench/webhooks.sh     env: BURST (5000), PACED (500), RATE (20)
# Needs PostgreSQL on 127.0.0.1:5432 with trust auth for the second run.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BURST=${BURST:-5000}; PACED=${PACED:-500}; RATE=${RATE:-20}
admin="postgres://postgres@127.0.0.1:5432/postgres"
db="kl_bench_webhooks_$$"
work=$(mktemp -d)
export RUST_LOG=warn KEYLEDGER_JWT_SECRET="bench-secret-0123456789abcdef0123456789abcdef"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q --workspace --bins
for store in sqlite postgres; do
    if [ "$store" = postgres ]; then
        psql -q "$admin" -c "CREATE DATABASE $db"
        export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
    else
        unset DATABASE_URL
    fi
    "$REL"/keyledger --data-dir "$work/$store" serve --listen 127.0.0.1:18098 \
        --webhook-allow-private --max-keys-per-tenant 100000000 >>"$work/serve.log" 2>&1 &
    pid=$!
    wait_up http://127.0.0.1:18098/readyz
    echo "== $store"
    "$REL"/keyledger-bench --data-dir "$work/$store" webhooks --url http://127.0.0.1:18098 \
        --burst "$BURST" --paced "$PACED" --rate "$RATE"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
