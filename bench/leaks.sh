#!/usr/bin/env bash
# Leak reports: the answer time of a signed secret-scanning report
# (`POST /v1/leaks/bench`, GitHub's partner format) of 1,000 tokens, 500 of
# them keys of a node with N seeded keys (default 5,000) and 500 well-formed
# strings it never issued; 20 reports, each at a URL of its own, the next
# sent once the node has acted on the one before. `keyledger-bench leaks` is
# the partner: it serves its public key and signs each report.
# Usage: bench/leaks.sh [keys]   env: ROUNDS (20), TOKENS (1000), OURS (500),
#                                     OVERLAP=1 (send without waiting)
# Fails on a wrong answer, and on a report answered true_positive that the
# audit log never shows recorded.
# The run deactivates the reported keys, so it runs on a copy of the seeded
# store (bench/seed.sh), which the other scripts share.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
keys=${1:-5000}
ROUNDS=${ROUNDS:-20}; TOKENS=${TOKENS:-1000}; OURS=${OURS:-500}; OVERLAP=${OVERLAP:-}
seeded=${WORK:-/tmp/keyledger-bench/$keys}
node=127.0.0.1:18094 partner=127.0.0.1:18093
unset DATABASE_URL
export RUST_LOG=warn KEYLEDGER_JWT_SECRET="bench-secret-0123456789abcdef0123456789abcdef"
work=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q --workspace --bins
WORK=$seeded bench/seed.sh "$keys"
cp -r "$seeded/data" "$work/data"
# The node fetches the partner's key on the first report, when
# keyledger-bench is serving it.
"$REL"/keyledger --data-dir "$work/data" serve --listen "$node" \
    --leak-reporter "bench=http://$partner/keys" >"$work/serve.log" 2>&1 &
pid=$!
wait_up "http://$node/readyz"
echo "== $keys keys"
"$REL"/keyledger-bench --data-dir "$work/data" leaks --url "http://$node" \
    --keys-file "$seeded/keys.txt" --keys-listen "$partner" \
    --tokens "$TOKENS" --ours "$OURS" --rounds "$ROUNDS" ${OVERLAP:+--overlap} \
    || { tail -20 "$work/serve.log" >&2; exit 1; }
