#!/usr/bin/env bash
# Create throughput: `keyledger-bench create` (16 clients, each its own tenant,
# POST /v1/keys in a loop) against a node on the embedded store and against a
# node on PostgreSQL, beside the durable single-row INSERT rate that pgbench
# reaches on the same PostgreSQL in the same run (the reference harness's
# insert1.sql, 8 clients as in the harness, and 16 like ours), and beside
# SQLite's own durable single-row INSERT rate with keyledger's PRAGMAs
# (`keyledger-bench sqlite-insert`, 16 clients), all alternating in one run.
# Usage: bench/create.sh     env: REPS (3), DURATION (15s), CLIENTS (16)
# Needs PostgreSQL on 127.0.0.1:5432 with trust auth, and pgbench.
# Needs the reference harness at ../shared/bench/limits (set LIMITS=path); it
# ships beside the project in CI, not in this repository. Without it the script
# stops at once, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
REPS=${REPS:-3}; DURATION=${DURATION:-15s}; CLIENTS=${CLIENTS:-16}
require_limits
admin="postgres://postgres@127.0.0.1:5432/postgres"
db="kl_bench_create_$$"
work=$(mktemp -d)
export RUST_LOG=warn KEYLEDGER_JWT_SECRET="bench-secret-0123456789abcdef0123456789abcdef"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP DATABASE IF EXISTS ${db}_pgbench WITH (FORCE)" || true
    rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q --workspace --bins
psql -q "$admin" -c "CREATE DATABASE $db" -c "CREATE DATABASE ${db}_pgbench"
psql -q "postgres://postgres@127.0.0.1:5432/${db}_pgbench" -f "$LIMITS/sql/key_events.sql" >/dev/null 2>&1

serve() {  # store-url (empty = embedded) -> starts the node on :18097
    if [ -n "$1" ]; then export DATABASE_URL=$1; else unset DATABASE_URL; fi
    "$REL"/keyledger --data-dir "$work/data" serve --listen 127.0.0.1:18097 \
        --max-keys-per-tenant 100000000 >>"$work/serve.log" 2>&1 &
    pid=$!
    wait_up http://127.0.0.1:18097/readyz
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
drive() {
    "$REL"/keyledger-bench --data-dir "$work/data" create \
        --url http://127.0.0.1:18097 --clients "$CLIENTS" --duration "$DURATION" \
        | sed -n 's/.*commands_per_s=\([0-9]*\).*/\1/p'
}
sqref() {  # SQLite's own durable single-row inserts, in the same directory's file system
    rm -f "$work/reference.db"*
    # Its writers wait on SQLite's lock by design: no slow-statement warnings.
    RUST_LOG=error "$REL"/keyledger-bench sqlite-insert --path "$work/reference.db" \
        --clients "$CLIENTS" --duration "$DURATION" | sed -n 's/.*inserts_per_s=\([0-9]*\).*/\1/p'
}
pgb() {  # clients
    psql -q "postgres://postgres@127.0.0.1:5432/${db}_pgbench" -c "TRUNCATE key_events"
    pgbench -h 127.0.0.1 -U postgres -n -M prepared -c "$1" -j 2 -T "${DURATION%s}" \
        -f "$LIMITS/sql/insert1.sql" "${db}_pgbench" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
declare -a sq pg b8 b16 ref
for r in $(seq "$REPS"); do
    serve ""; sq+=("$(drive)"); stop
    ref+=("$(sqref)")
    serve "postgres://postgres@127.0.0.1:5432/$db"; pg+=("$(drive)"); stop
    b8+=("$(pgb 8)"); b16+=("$(pgb 16)")
    echo "round $r: sqlite ${sq[-1]}/s  sqlite-insert ${ref[-1]}/s  postgres ${pg[-1]}/s  pgbench c8 ${b8[-1]} tps  c16 ${b16[-1]} tps"
done
mref=$(median "${ref[@]}"); msq=$(median "${sq[@]}"); mpg=$(median "${pg[@]}"); m8=$(median "${b8[@]}"); m16=$(median "${b16[@]}")
echo
echo "| what | median of $REPS (per s) | vs its reference |"
echo "|---|---|---|"
printf '| keyledger create, SQLite, %s clients | %.0f | %.2fx sqlite-insert |\n' "$CLIENTS" "$msq" "$(echo "$msq / $mref" | bc -l)"
printf '| sqlite-insert (keyledger PRAGMAs), %s clients | %.0f | 1.00x |\n' "$CLIENTS" "$mref"
printf '| keyledger create, PostgreSQL, %s clients | %.0f | %.2fx pgbench c8 |\n' "$CLIENTS" "$mpg" "$(echo "$mpg / $m8" | bc -l)"
printf '| pgbench insert1, 8 clients | %.0f | 1.00x |\n' "$m8"
printf '| pgbench insert1, 16 clients | %.0f | %.2fx |\n' "$m16" "$(echo "$m16 / $m8" | bc -l)"
