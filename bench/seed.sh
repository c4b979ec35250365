#!/usr/bin/env bash
# Seeds an embedded (SQLite) store with N keys once, for the other bench scripts:
# `keyledger-bench seed` writes N KeyCreated events straight into the store and
# the raw keys to keys.txt, then `projections rebuild` fills the projections, so
# a server started on it is a restarted node with N keys.
# Usage: bench/seed.sh [keys]   -> /tmp/keyledger-bench/<keys>/{data,keys.txt}
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-1000000}
work=${WORK:-/tmp/keyledger-bench/$keys}
[ -s "$work/keys.txt" ] && exit 0
unset DATABASE_URL
cargo build --release -q --workspace --bins
rm -rf "$work"; mkdir -p "$work"
./target/release/keyledger-bench --data-dir "$work/data" seed --keys "$keys" --events "$keys" \
    --keys-out "$work/keys.tmp"
./target/release/keyledger --data-dir "$work/data" projections rebuild
mv "$work/keys.tmp" "$work/keys.txt"
