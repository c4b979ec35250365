#!/usr/bin/env bash
# Projection rebuild throughput: `keyledger projections rebuild --projection all`
# over E events (default 1,000,000) of K keys (default 100,000), on SQLite and
# on PostgreSQL, then `projections check` (the script fails if it finds drift).
# Each engine is seeded once (`keyledger-bench seed`), rebuilt once uncounted,
# then REPS times; events/s = events / wall-clock seconds of the process.
# Every timed run holds /tmp/bench.lock (LOCK) so measurements never overlap.
# ALT=path/to/another/keyledger times that binary too, alternating with this
# build's, on the same data, and prints the ratio of the medians (after/before).
# Usage: bench/rebuild.sh [events] [keys]
#   env: REPS (3), ENGINES ("sqlite postgres"), ALT, CARGO_TARGET_DIR (./target),
#        PGURL (postgres://postgres@127.0.0.1:5432), LOCK (/tmp/bench.lock),
#        BIN_DIR (binaries already built: skips the build), DB (kl_rebuild_bench:
#        dropped and created, then dropped at the end, like WORK)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
events=${1:-1000000}
keys=${2:-100000}
REPS=${REPS:-3}
ENGINES=${ENGINES:-sqlite postgres}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
LOCK=${LOCK:-/tmp/bench.lock}
target=${CARGO_TARGET_DIR:-./target}
work=${WORK:-/tmp/keyledger-bench/rebuild-$events}
db=${DB:-kl_rebuild_bench}
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -q -p keyledger -p keyledger-bench
    BIN_DIR=$target/release
fi
bin=$BIN_DIR/keyledger
unset DATABASE_URL
export RUST_LOG=${RUST_LOG:-error}
trap 'rm -rf "$work"; psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT

seed() {  # engine -> seeds $work/$engine (and the PostgreSQL database)
    rm -rf "${work:?}/$1"; mkdir -p "$work/$1"
    if [ "$1" = postgres ]; then
        psql -q "$PGURL/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
        export DATABASE_URL=$PGURL/$db
    else
        unset DATABASE_URL
    fi
    "$BIN_DIR/keyledger-bench" --data-dir "$work/$1/data" seed --keys "$keys" \
        --events "$events" >/dev/null
}

timed() {  # binary engine -> wall-clock seconds of one full rebuild
    local started ended
    started=$(date +%s%N)
    flock "$LOCK" "$1" --data-dir "$work/$2/data" projections rebuild --projection all >/dev/null
    ended=$(date +%s%N)
    echo "scale=3; ($ended - $started) / 1000000000" | bc
}

for engine in $ENGINES; do
    seed "$engine"
    "$bin" --data-dir "$work/$engine/data" projections rebuild --projection all >/dev/null
    s=(); a=()
    for i in $(seq "$REPS"); do
        s+=("$(timed "$bin" "$engine")")
        line="$engine run $i: ${s[-1]} s"
        if [ -n "${ALT:-}" ]; then
            a+=("$(timed "$ALT" "$engine")")
            line="$line (ALT ${a[-1]} s)"
        fi
        echo "$line"
    done
    ms=$(median "${s[@]}")
    result="$engine events=$events seconds_median=$ms events_per_s=$(echo "$events / $ms" | bc)"
    if [ -n "${ALT:-}" ]; then
        ma=$(median "${a[@]}")
        result="$result alt_seconds_median=$ma alt_events_per_s=$(echo "$events / $ma" | bc)"
        result="$result ratio=$(echo "scale=2; $ma / $ms" | bc)"
    fi
    echo "$result"
    "$bin" --data-dir "$work/$engine/data" projections check
done
