# Shared helpers of the bench scripts (sourced).

# Release binaries go where cargo puts them: CARGO_TARGET_DIR when set (made
# absolute, since the reference harness is built from its own directory),
# else ./target. REL is this workspace's release directory.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    mkdir -p "$CARGO_TARGET_DIR"
    CARGO_TARGET_DIR=$(cd "$CARGO_TARGET_DIR" && pwd)
    export CARGO_TARGET_DIR
fi
REL=${CARGO_TARGET_DIR:-$PWD/target}/release

# Median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# wrk output -> "rps p50_ms p99_ms"
wrk_summary() {
    awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }' "$1"
}

# Waits until URL answers 2xx (up to ~60 s).
wait_up() {
    for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "not up: $1" >&2; return 1
}

# Resident set size of a process, in KiB.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# The reference harness (`limits`) that verify.sh and create.sh measure beside.
# It is not in this repository: it ships beside the project in CI, at
# ../shared/bench/limits. Sets LIMITS to its absolute path, or stops the script
# saying where to get it. Called before anything is built or started.
require_limits() {
    local dir=${LIMITS:-../shared/bench/limits}
    if [ ! -f "$dir/Cargo.toml" ]; then
        echo "$(basename "$0"): needs the reference harness at ../shared/bench/limits (set LIMITS=path);" \
            "it ships beside the project in CI, not in this repository (not found: $dir)" >&2
        exit 2
    fi
    LIMITS=$(cd "$dir" && pwd)
    LIMITS_BIN=${CARGO_TARGET_DIR:-$LIMITS/target}/release/limits
}
