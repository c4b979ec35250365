#!/usr/bin/env bash
# Import: `keyledger import` of N keys issued elsewhere (default 1,000,000),
# from a CSV of their SHA-256 hashes, into a fresh node (SQLite, or
# PostgreSQL with DB=postgres://...), then a second run of the same file
# (idempotent: nothing new), then a sample of the raw keys verified through
# `--import-prefix`.
# Usage: bench/import.sh [keys]   env: DB (unset: SQLite), SAMPLE (200)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
keys=${1:-1000000}
SAMPLE=${SAMPLE:-200}
node=127.0.0.1:18095
unset DATABASE_URL
export RUST_LOG=warn KEYLEDGER_JWT_SECRET="bench-secret-0123456789abcdef0123456789abcdef"
work=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q --bin keyledger
bin=${CARGO_TARGET_DIR:-target}/release/keyledger
db_args=()
if [ -n "${DB:-}" ]; then
    psql -q "$DB" -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public;' >/dev/null
    db_args=(--database-url "$DB")
fi
# The other system's keys: raw keys kept aside for the sample, hashes in the CSV.
python3 - "$keys" "$work" "$SAMPLE" <<'EOF'
import hashlib, os, sys
n, work, sample = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with open(f"{work}/keys.csv", "w") as csv, open(f"{work}/raw.txt", "w") as raw:
    csv.write("hash,prefix,name,permissions\n")
    for i in range(n):
        key = "sk_live_" + os.urandom(18).hex()
        csv.write(f"{hashlib.sha256(key.encode()).hexdigest()},{key[:12]},legacy {i},orders:read\n")
        if i % max(1, n // sample) == 0:
            raw.write(key + "\n")
EOF
"$bin" --data-dir "$work/data" "${db_args[@]}" serve --listen "$node" \
    --import-prefix sk_live_ --max-keys-per-tenant $((keys + 1)) >"$work/serve.log" 2>&1 &
pid=$!
wait_up "http://$node/readyz"
token=$("$bin" --data-dir "$work/data" token --tenant bench --subject importer --ttl 2h)
run() {
    local started ended
    started=$(date +%s.%N)
    KEYLEDGER_TOKEN=$token "$bin" import "$work/keys.csv" \
        --url "http://$node" --quiet
    ended=$(date +%s.%N)
    awk -v s="$started" -v e="$ended" -v n="$keys" \
        'BEGIN {printf "%s keys in %.1f s: %.0f keys/s\n", n, e - s, n / (e - s)}'
}
store=SQLite; [ -n "${DB:-}" ] && store=PostgreSQL
echo "== import of $keys keys ($store)"
run
echo "== the same file again"
run
valid=0
while read -r key; do
    code=$(curl -s "http://$node/v1/keys/verify" -H 'content-type: application/json' \
        -d "{\"key\":\"$key\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])')
    [ "$code" = VALID ] && valid=$((valid + 1))
done <"$work/raw.txt"
total=$(wc -l <"$work/raw.txt")
echo "sample verified: $valid of $total VALID"
[ "$valid" = "$total" ] || { tail -20 "$work/serve.log" >&2; exit 1; }
