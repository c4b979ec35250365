#!/usr/bin/env bash
# Seeds an embedded (SQLite) store with N keys once, for the other bench scripts:
# `keyledger-bench seed` writes N KeyCreated events straight into the store and
# the raw keys to keys.txt, then `projections rebuild` fills the projections, so
# a server started on it is a restarted node with N keys.
# Prints (and keeps in seed-time.txt) how long each step took.
# Usage: bench/seed.sh [keys]   -> /tmp/keyledger-bench/<keys>/{data,keys.txt}
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
keys=${1:-1000000}
work=${WORK:-/tmp/keyledger-bench/$keys}
[ -s "$work/keys.txt" ] && exit 0
unset DATABASE_URL
cargo build --release -q --workspace --bins
rm -rf "$work"; mkdir -p "$work"
started=$(date +%s)
"$REL"/keyledger-bench --data-dir "$work/data" seed --keys "$keys" --events "$keys" \
    --keys-out "$work/keys.tmp"
seeded=$(date +%s)
"$REL"/keyledger --data-dir "$work/data" projections rebuild
mv "$work/keys.tmp" "$work/keys.txt"
done_at=$(date +%s)
echo "keys=$keys seed_s=$((seeded - started)) rebuild_s=$((done_at - seeded)) total_s=$((done_at - started))" \
    | tee "$work/seed-time.txt"
