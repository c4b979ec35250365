#!/usr/bin/env bash
# HTTP verification with N keys loaded (default 1,000,000), beside the reference
# harness (../shared/bench/limits) measured in the same run: its constant-answer
# axum handler (`hello`) and its in-memory SHA-256 + HashMap verify (`memverify`).
#
# Usage: bench/verify.sh [keys]        env: REPS (3), DURATION (15s), CONNS (64),
#                                      SAMPLE (1000000)
# wrk formats every request of its key file up front, in memory: beyond SAMPLE
# keys it draws from a uniform random sample of SAMPLE of them, which still
# lands on slots spread over the whole index (10,000,000 formatted requests
# would take gigabytes and most of a minute per wrk run).
# Needs wrk (apt-get install wrk). Servers run side by side and are driven one at
# a time by `wrk -t1 -c$CONNS --latency`, each after a 5 s warm-up, REPS rounds.
# Needs the reference harness at ../shared/bench/limits (set LIMITS=path); it
# ships beside the project in CI, not in this repository. Without it the script
# stops at once, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
keys=${1:-1000000}
REPS=${REPS:-3}; DURATION=${DURATION:-15s}; CONNS=${CONNS:-64}; SAMPLE=${SAMPLE:-1000000}
require_limits
work=${WORK:-/tmp/keyledger-bench/$keys}
out="$work/verify-$(date +%Y%m%dT%H%M%S)"
unset DATABASE_URL
export RUST_LOG=warn KEYLEDGER_JWT_SECRET="bench-secret-0123456789abcdef0123456789abcdef"
kl="$REL"/keyledger

cargo build --release -q
(cd "$LIMITS" && cargo build --release -q)
bench/seed.sh "$keys"
mkdir -p "$out"
kl_keys=$work/keys.txt
if [ "$keys" -gt "$SAMPLE" ]; then
    kl_keys=$out/keys-sample.txt
    shuf -n "$SAMPLE" --random-source=<(yes) "$work/keys.txt" >"$kl_keys"
fi
[ -s /tmp/limits-keys.tsv ] || "$LIMITS_BIN" genkeys --n 100000 --out /tmp/limits-keys.tsv

pids=()
# keyledger is killed outright: a graceful stop would flush the counted uses
# (hundreds of thousands of keys) into the seeded store and change it.
trap 'kill -KILL "${pids[2]:-}" 2>/dev/null; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$LIMITS_BIN" hello --port 18080 >"$out/hello.log" 2>&1 & pids+=($!)
"$LIMITS_BIN" memverify --port 18081 --keys /tmp/limits-keys.tsv >"$out/memverify.log" 2>&1 & pids+=($!)
# Usage flushes are deferred past the run: they write one event per used key and
# would compete with the load for the 2 cores (see BENCHMARKS.md).
$kl --data-dir "$work/data" serve --listen 127.0.0.1:18090 --usage-flush-secs 3600 >"$out/keyledger.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:18080/v1/verify || true
wait_up http://127.0.0.1:18090/readyz

key=$(head -1 "$work/keys.txt")
curl -sf -X POST 127.0.0.1:18090/v1/keys/verify -d "{\"key\":\"$key\"}" | grep -q '"VALID"' \
    || { echo "sanity: seeded key does not verify" >&2; exit 1; }

targets=(hello memverify kl_verify kl_auth)
declare -A url=([hello]=http://127.0.0.1:18080/v1/verify [memverify]=http://127.0.0.1:18081/v1/verify
                [kl_verify]=http://127.0.0.1:18090 [kl_auth]=http://127.0.0.1:18090)
declare -A env=([hello]=limits [memverify]=limits [kl_verify]=verify [kl_auth]=auth)
script() {
    case ${env[$1]} in
        limits) echo "-s $LIMITS/scripts/keys.lua" ;;
        *) echo "-s bench/verify.lua" ;;
    esac
}
keys_file() { if [ "${env[$1]}" = limits ]; then echo /tmp/limits-keys.tsv; else echo "$kl_keys"; fi; }
for t in "${targets[@]}"; do   # warm-up, not reported
    MODE=${env[$t]} KEYS_FILE=$(keys_file "$t") wrk -t1 -c"$CONNS" -d5s $(script "$t") "${url[$t]}" >/dev/null 2>&1 || true
done
declare -A rps p50 p99
for r in $(seq "$REPS"); do
    for t in "${targets[@]}"; do
        read -r a b c < <(MODE=${env[$t]} KEYS_FILE=$(keys_file "$t") \
            wrk -t1 -c"$CONNS" -d"$DURATION" --latency $(script "$t") "${url[$t]}" \
            | tee "$out/${t}_r$r.txt" | wrk_summary /dev/stdin)
        # Every key is valid: an error answer (a 429 from the failure limiter,
        # say) would make the figure meaningless.
        if [ "${env[$t]}" != limits ] && grep -q "Non-2xx" "$out/${t}_r$r.txt"; then
            echo "$t answered errors: $(grep Non-2xx "$out/${t}_r$r.txt")" >&2; exit 1
        fi
        echo "round $r $t: $a req/s p50 $b ms p99 $c ms"
        rps[$t]+="$a "; p50[$t]+="$b "; p99[$t]+="$c "
    done
done
echo
echo "| server | req/s (median of $REPS) | p50 ms | p99 ms | vs memverify |"
echo "|---|---|---|---|---|"
mem=$(median ${rps[memverify]})
for t in "${targets[@]}"; do
    m=$(median ${rps[$t]})
    printf '| %s | %s | %s | %s | %.2fx |\n' "$t" "$m" "$(median ${p50[$t]})" "$(median ${p99[$t]})" \
        "$(echo "$m / $mem" | bc -l)"
done | tee "$out/summary.md"
echo "keyledger RSS: $(rss_kib "${pids[2]}") KiB; raw output in $out"
