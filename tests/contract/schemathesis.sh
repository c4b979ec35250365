#!/usr/bin/env bash
# Contract fuzzing: schemathesis generates requests from GET /openapi.json of a
# running server (with a valid management token) and checks every answer
# against the document: no 5xx, status codes, content types, headers and bodies
# as documented, invalid data refused. Which checks run, and the one exception
# for a single operation, are in schemathesis.toml beside this script. Warnings
# are off: the only one is that GET /v1/auth refused every generated API key,
# which is right (it takes API keys, and no generated string is one). One worker:
# two threads hit a CPython 3.11 race inside hypothesis (RELIABILITY.md).
# Usage: tests/contract/schemathesis.sh [keyledger binary]   (pip install schemathesis)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/keyledger}
port=${PORT:-18299}
work=$(mktemp -d)
unset DATABASE_URL
export KEYLEDGER_JWT_SECRET="contract-$(date +%s%N)-0123456789abcdef0123456789abcdef"
export RUST_LOG=warn
"$bin" --data-dir "$work" serve --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf -o /dev/null "127.0.0.1:$port/readyz" && break; sleep 0.1; done
token=$("$bin" --data-dir "$work" token --tenant contract --subject schemathesis --ttl 1h)
schemathesis --config-file tests/contract/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    -H "Authorization: Bearer $token" \
    --max-examples "${MAX_EXAMPLES:-25}" --seed "${SEED:-20261123}" --workers 1 --warnings off
