#!/usr/bin/env bash
# HTTP verification of keys with usage limits against plain keys, in one node
# holding N keys (default 1,000,000): half plain, half with a rate limit (10^9 a
# minute) and credits (10^15), limits that never refuse, so what is measured is
# what checking them costs. Beside the reference harness's in-memory verify
# (`memverify`), in the same run.
#
# Each target draws from a hot set of HOT keys (default 10,000) of its half:
# a limited key reserves a window share and a credit block from the store the
# first time a node verifies it (then every minute, and every 1,000 credits),
# so a random draw over half a million keys would measure first touches. The
# warm-up (5 s; 30 s for limited keys: two reservations for each of HOT keys)
# makes those reservations; COLD=1 adds a run over the whole half.
#
# Usage: bench/limits.sh [keys]   env: REPS (3), DURATION (15s), CONNS (64), HOT
# Needs wrk and the reference harness at ../shared/bench/limits (set LIMITS).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
keys=${1:-1000000}
REPS=${REPS:-3}; DURATION=${DURATION:-15s}; CONNS=${CONNS:-64}; HOT=${HOT:-10000}
require_limits
half=$((keys / 2))
work=${WORK:-/tmp/keyledger-bench/limits-$keys}
out="$work/run-$(date +%Y%m%dT%H%M%S)"
unset DATABASE_URL
export RUST_LOG=warn KEYLEDGER_JWT_SECRET="bench-secret-0123456789abcdef0123456789abcdef"
kl="$REL"/keyledger

cargo build --release -q --workspace --bins
(cd "$LIMITS" && cargo build --release -q)
if [ ! -s "$work/limited.txt" ]; then
    rm -rf "$work"; mkdir -p "$work"
    "$REL"/keyledger-bench --data-dir "$work/data" seed --keys "$half" --events "$half" \
        --keys-out "$work/plain.txt"
    "$REL"/keyledger-bench --data-dir "$work/data" seed --keys "$half" --events "$half" \
        --limited --keys-out "$work/limited.tmp"
    "$REL"/keyledger --data-dir "$work/data" projections rebuild
    mv "$work/limited.tmp" "$work/limited.txt"
fi
mkdir -p "$out"
head -n "$HOT" "$work/plain.txt" >"$out/plain-hot.txt"
head -n "$HOT" "$work/limited.txt" >"$out/limited-hot.txt"
[ -s /tmp/limits-keys.tsv ] || "$LIMITS_BIN" genkeys --n 100000 --out /tmp/limits-keys.tsv

pids=()
# Killed outright: a graceful stop would flush usage into the seeded store.
trap 'kill -KILL "${pids[1]:-}" 2>/dev/null; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$LIMITS_BIN" memverify --port 18081 --keys /tmp/limits-keys.tsv >"$out/memverify.log" 2>&1 & pids+=($!)
$kl --data-dir "$work/data" serve --listen 127.0.0.1:18090 --usage-flush-secs 3600 >"$out/keyledger.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:18090/readyz

key=$(head -1 "$work/limited.txt")
curl -sf -X POST 127.0.0.1:18090/v1/keys/verify -d "{\"key\":\"$key\"}" | grep -q '"credits"' \
    || { echo "sanity: a limited key does not answer with its credits" >&2; exit 1; }

targets=(memverify plain limited)
[ "${COLD:-0}" = 1 ] && targets+=(limited_cold)
declare -A url=([memverify]=http://127.0.0.1:18081/v1/verify [plain]=http://127.0.0.1:18090
                [limited]=http://127.0.0.1:18090 [limited_cold]=http://127.0.0.1:18090)
declare -A file=([memverify]=/tmp/limits-keys.tsv [plain]="$out/plain-hot.txt"
                 [limited]="$out/limited-hot.txt" [limited_cold]="$work/limited.txt")
script() { if [ "$1" = memverify ]; then echo "-s $LIMITS/scripts/keys.lua"; else echo "-s bench/verify.lua"; fi; }
declare -A warm=([memverify]=5s [plain]=5s [limited]=30s)
for t in memverify plain limited; do   # warm-up, not reported: limited keys reserve here
    MODE=verify KEYS_FILE=${file[$t]} wrk -t1 -c"$CONNS" -d"${warm[$t]}" $(script "$t") "${url[$t]}" >/dev/null 2>&1 || true
done
declare -A rps p50 p99
for r in $(seq "$REPS"); do
    for t in "${targets[@]}"; do
        read -r a b c < <(MODE=verify KEYS_FILE=${file[$t]} \
            wrk -t1 -c"$CONNS" -d"$DURATION" --latency $(script "$t") "${url[$t]}" \
            | tee "$out/${t}_r$r.txt" | wrk_summary /dev/stdin)
        if [ "$t" != memverify ] && grep -q "Non-2xx" "$out/${t}_r$r.txt"; then
            echo "$t answered errors: $(grep Non-2xx "$out/${t}_r$r.txt")" >&2; exit 1
        fi
        echo "round $r $t: $a req/s p50 $b ms p99 $c ms"
        rps[$t]+="$a "; p50[$t]+="$b "; p99[$t]+="$c "
    done
done
echo
echo "| target | req/s (median of $REPS) | p50 ms | p99 ms | vs plain | vs memverify |"
echo "|---|---|---|---|---|---|"
plain=$(median ${rps[plain]}); mem=$(median ${rps[memverify]})
for t in "${targets[@]}"; do
    m=$(median ${rps[$t]})
    printf '| %s | %s | %s | %s | %.2fx | %.2fx |\n' "$t" "$m" "$(median ${p50[$t]})" \
        "$(median ${p99[$t]})" "$(echo "$m / $plain" | bc -l)" "$(echo "$m / $mem" | bc -l)"
done
echo "raw output: $out"
