#!/usr/bin/env bash
# Every figure of a node holding N keys (default 10,000,000), one after another:
#   seeding   bench/seed.sh N          (seed and rebuild times; skipped when seeded)
#   index     index_memory N           (bytes per key of the index alone)
#   start-up  bench/startup.sh N       (ready time, resident bytes per key)
#   in-process cargo bench --bench verify, KEYLEDGER_BENCH_KEYS=N
#   HTTP      bench/verify.sh N        (req/s beside memverify, same run)
# Each step runs under `flock $BENCH_LOCK` when BENCH_LOCK is set, so that
# measurements of processes sharing the machine never overlap; builds run
# outside it. A step's own script is the command that rebuilds its figure.
#
# Usage: bench/scale.sh [keys]   env: BENCH_LOCK, STEPS ("seed index startup
# inprocess http"), plus what each script takes (REPS, DURATION, LIMITS, ...).
# Needs wrk and the reference harness (see verify.sh). The seeded store takes
# about 1 KiB a key on disk (11 GB at 10,000,000): remove
# /tmp/keyledger-bench/<keys> when done.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
keys=${1:-10000000}
STEPS=${STEPS:-seed index startup inprocess http}
unset DATABASE_URL

measured() {
    if [ -n "${BENCH_LOCK:-}" ]; then flock "$BENCH_LOCK" "$@"; else "$@"; fi
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

cargo build --release -q --workspace --bins
if wants index; then
    cargo build --release -q -p keyledger-projections --example index_memory
fi
if wants inprocess; then
    cargo bench -q --bench verify --no-run
fi

if wants seed; then
    echo "== seeding $keys keys"
    measured bench/seed.sh "$keys"
    cat "${WORK:-/tmp/keyledger-bench/$keys}/seed-time.txt"
fi
if wants index; then
    echo "== index alone"
    measured "$REL"/examples/index_memory "$keys"
fi
if wants startup; then
    echo "== start-up"
    REPS=${REPS:-3} measured bench/startup.sh "$keys" | tail -1
fi
if wants inprocess; then
    echo "== in-process verification"
    KEYLEDGER_BENCH_KEYS=$keys measured cargo bench -q --bench verify -- \
        "verify_${keys}_keys/valid_with_permission" 2>&1 | grep -A2 "valid_with_permission"
fi
if wants http; then
    echo "== HTTP verification"
    measured bench/verify.sh "$keys" | tail -8
fi
