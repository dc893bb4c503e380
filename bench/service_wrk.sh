#!/usr/bin/env bash
# The service under wrk (Debian package `wrk`): requests/s, latency and server CPU per request of
# `kpb serve` (insecure dev mode: wrk cannot sign; HMAC verification is not where the CPU goes,
# see RESULTS.md) for /healthz (calibration) and /v1/claims with the acme alice request.
#
#   bench/service_wrk.sh                 # the table of RESULTS.md "Service, second pass"
#   bench/service_wrk.sh "--workers 2 --worker-class sync" 8 10 /v1/claims [LOG_DIR]
#
# Server CPU per request = (utime + stime of the gunicorn master and workers, from /proc) over
# the run divided by the requests wrk completed. wrk shares the machine's CPUs with the server.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 2; }
KPB=.venv/bin/kpb
WORK="$(mktemp -d)"
SERVER=""
stop_server() {  # the gunicorn master this script started, by PID (it stops its own workers)
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null && while kill -0 "$SERVER" 2>/dev/null; do sleep 0.1; done
    SERVER=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# A fresh copy of the acme export (the acme policy denies exports older than 72 h).
.venv/bin/python -c 'import sys, pathlib; from keycloak_policy_bridge.cli.serve import restamped_copy; restamped_copy(pathlib.Path("examples/acme/entitlements"), pathlib.Path(sys.argv[1]))' "$WORK/entitlements"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$(pwd)/examples/acme/requests/alice-login.json", "rb"); wrk.body = f:read("*a"); f:close()
LUA

run() {  # $1 serve args, $2 connections, $3 seconds, $4 path, $5 decision-log directory
    local logdir="${5:-$WORK}"
    rm -f "$logdir"/bench.db*
    KPB_DECISION_LOG="$logdir/bench.db" $KPB serve --insecure-dev --bind 127.0.0.1:8799 --policy examples/acme/policy.json --entitlements "$WORK/entitlements" $1 \
        > "$WORK/serve.log" 2>&1 &
    SERVER=$!  # kpb serve runs the gunicorn master in its own process: this PID is the master
    for _ in $(seq 50); do curl -sf http://127.0.0.1:8799/readyz >/dev/null 2>&1 && break; sleep 0.2; done
    local pids; pids="$SERVER $(pgrep -P "$SERVER" | tr '\n' ' ')"
    cpu() { local t=0 p; for p in $pids; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
    local c0 c1 out
    c0="$(cpu)"
    if [[ "$4" == /healthz ]]; then out="$(wrk -t1 -c"$2" -d"$3"s http://127.0.0.1:8799/healthz)"
    else out="$(wrk -t1 -c"$2" -d"$3"s -s "$WORK/post.lua" http://127.0.0.1:8799/v1/claims)"; fi
    c1="$(cpu)"
    local rps reqs lat ticks
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"; reqs="$(awk '/requests in/ {print $1}' <<<"$out")"
    lat="$(awk '/Latency/ {print $2 " / " $4}' <<<"$out")"; ticks="$(getconf CLK_TCK)"
    echo "kpb serve $1, $4, c=$2, log in $logdir: $rps req/s, latency avg/max $lat, server CPU per request" \
         "$(.venv/bin/python -c "print(round(($c1 - $c0) / $ticks / $reqs * 1000, 3))") ms"
    stop_server
}

if [[ $# -gt 0 ]]; then run "$@"; exit 0; fi
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
run "--workers 2 --worker-class sync" 8 10 /healthz
run "--workers 1 --worker-class sync" 1 8 /v1/claims
[[ -d /dev/shm ]] && { mkdir -p /dev/shm/kpb-bench; run "--workers 1 --worker-class sync" 1 8 /v1/claims /dev/shm/kpb-bench; }
run "--workers 2 --worker-class sync" 8 10 /v1/claims
run "--workers 4 --worker-class sync" 8 10 /v1/claims
run "--workers 2 --worker-class gthread --threads 8" 16 10 /v1/claims
