#!/usr/bin/env bash
# A client generated from GET /openapi.json runs the key lifecycle. The served
# document is saved, openapi-python-client (a widely used generator, pinned
# below) turns it into the package `keyledger_client`, and
# python_client_lifecycle.py beside this script drives a running server through
# that package only: create, list, get, update, verify, deactivate, reactivate,
# rotate, delete, history, import. Each answer must parse into the generated
# models and match their declared types, so a document that does not describe
# what the server sends fails here.
#
# The generator's complaints fail the run too: it prints only its "Generating
# <dir>" line for a document it fully understands, and any other line (a
# "Warning(s) encountered while generating" block, "Unable to parse this part of
# your OpenAPI document", an endpoint or model it skipped) is a failure unless
# listed, by its exact text, in `allowed` below, which is for legitimate
# OpenAPI the generator does not support (none today).
#
# Runs in tests/contract_python_client.rs (part of `cargo test`).
# Usage: tests/contract/python_client.sh [keyledger binary]
#        (python3 -m pip install openapi-python-client==<the version below>)
set -euo pipefail
cd "$(dirname "$0")/../.."

# The generator's version: .ci/run installs this one, and the generated names
# (e.g. `hash_`, `type_`) the lifecycle program uses are this version's.
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
# Generator output lines allowed besides "Generating <dir>", each by its exact
# text, each with the reason it is right (none today).
allowed=()

bin=${1:-target/debug/keyledger}
python=${PYTHON:-python3}
found=$("$python" -c 'import importlib.metadata as m; print(m.version("openapi-python-client"))' 2>/dev/null || true)
if [ "$found" != "$OPENAPI_PYTHON_CLIENT_VERSION" ]; then
    echo "python_client.sh: needs openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION, found '${found:-none}'" \
        "(python3 -m pip install openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION)" >&2
    exit 2
fi

port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
unset DATABASE_URL KEYLEDGER_EVENT_STORE KEYLEDGER_IMPORT_PREFIXES
export KEYLEDGER_JWT_SECRET="python-client-$(date +%s%N)-0123456789abcdef0123456789abcdef"
export RUST_LOG=warn
# `ext_`: the prefix of the foreign key the lifecycle imports and verifies.
"$bin" --data-dir "$work/data" serve --listen "127.0.0.1:$port" --import-prefix ext_ >"$work/serve.log" 2>&1 &
pid=$!
base="http://127.0.0.1:$port"
# Ready (within 10 s, while the server lives), then the document as served.
if ! "$python" - "$base" "$pid" "$work/openapi.json" <<'PY'
import os, sys, time, urllib.request

base, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 10
while True:
    try:
        urllib.request.urlopen(base + "/readyz", timeout=2).read()
        break
    except Exception as e:  # not listening yet, or not ready
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit("the server exited")
        if time.monotonic() > deadline:
            sys.exit(f"not ready after 10 s: {e}")
        time.sleep(0.1)
with urllib.request.urlopen(base + "/openapi.json", timeout=10) as r, open(out, "wb") as f:
    f.write(r.read())
PY
then
    echo "python_client.sh: no /openapi.json from the server on $base; its log:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
token=$("$bin" --data-dir "$work/data" token --tenant contract --subject python-client --ttl 1h)

# No post hooks: they only format the generated code with ruff, and a ruff not on
# PATH would be a warning about this machine, not about the document.
echo '{"post_hooks": []}' >"$work/generator.json"
status=0
"$python" -m openapi_python_client generate --path "$work/openapi.json" --config "$work/generator.json" \
    --output-path "$work/client/keyledger_client" --meta none >"$work/generate.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
    echo "python_client.sh: openapi-python-client failed (exit $status):" >&2
    cat "$work/generate.log" >&2
    exit 1
fi
complaints=$(grep -v -x -F -e '' -e "Generating $work/client/keyledger_client" \
    ${allowed[@]+"${allowed[@]/#/-e}"} "$work/generate.log" || true)
if [ -n "$complaints" ]; then
    echo "python_client.sh: openapi-python-client did not take all of /openapi.json:" >&2
    cat "$work/generate.log" >&2
    exit 1
fi
echo "openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION generated keyledger_client with no warning (${#allowed[@]} allowed)"

PYTHONPATH="$work/client${PYTHONPATH:+:$PYTHONPATH}" "$python" tests/contract/python_client_lifecycle.py "$base" "$token"
