#!/usr/bin/env bash
# Start-up to ready, and resident memory per key, with N keys (default 1,000,000)
# in the embedded store. A node is "ready" when GET /readyz answers 200: the
# verification index is loaded and the projections have caught up.
# Bytes per key = (RSS with N keys - RSS with an empty store) / N, both read
# right after ready. Usage: bench/startup.sh [keys]   env: REPS (5)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
keys=${1:-1000000}
REPS=${REPS:-5}
work=${WORK:-/tmp/keyledger-bench/$keys}
unset DATABASE_URL
export RUST_LOG=warn KEYLEDGER_JWT_SECRET="bench-secret-0123456789abcdef0123456789abcdef"
bench/seed.sh "$keys"
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT

measure() {  # data-dir -> "seconds rss_kib"
    local started pid ms
    started=$(date +%s%N)
    "$REL"/keyledger --data-dir "$1" serve --listen 127.0.0.1:18095 \
        --usage-flush-secs 3600 >/dev/null 2>&1 &
    pid=$!
    until curl -sf -o /dev/null http://127.0.0.1:18095/readyz; do
        kill -0 "$pid" 2>/dev/null || { echo "server died" >&2; exit 1; }
        sleep 0.01
    done
    ms=$(( ($(date +%s%N) - started) / 1000000 ))
    echo "$ms $(rss_kib "$pid")"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

measure "$empty" >/dev/null   # creates the empty store and its secret
t=(); r=(); e=()
for i in $(seq "$REPS"); do
    read -r ms kib < <(measure "$work/data"); t+=("$ms"); r+=("$kib")
    read -r _ ekib < <(measure "$empty"); e+=("$ekib")
    echo "run $i: ready in $ms ms, RSS $kib KiB (empty store: $ekib KiB)"
done
mt=$(median "${t[@]}"); mr=$(median "${r[@]}"); me=$(median "${e[@]}")
printf 'keys=%s ready_ms_median=%s rss_kib=%s empty_rss_kib=%s bytes_per_key=%.0f\n' \
    "$keys" "$mt" "$mr" "$me" "$(echo "($mr - $me) * 1024 / $keys" | bc -l)"
