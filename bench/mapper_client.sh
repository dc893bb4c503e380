#!/usr/bin/env bash
# The mapper's HTTP call to a real bridge, per Java HTTP client (keycloak-spi ClientBench): p50/p99
# latency and the JVM's CPU per call, 1 and 8 calling threads, interleaved rounds (issue 13).
#
#   bench/mapper_client.sh [calls per run] [rounds]      # default 2000 3; make bench-client
#
# Starts `kpb serve` (HMAC on, gthread, durable decision log in a temporary directory) on
# 127.0.0.1:${KPB_BENCH_PORT:-8911} with a throwaway secret, runs the bench, and stops the server
# it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${KPB_BENCH_PORT:-8911}"
WORK="$(mktemp -d)"
SERVER=""
stop_server() {  # the gunicorn master this script started, by PID (it stops its own workers)
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null && while kill -0 "$SERVER" 2>/dev/null; do sleep 0.1; done
    SERVER=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# A fresh copy of the acme export (the acme policy denies exports older than 72 h).
.venv/bin/python -c 'import sys, pathlib; from keycloak_policy_bridge.cli.serve import restamped_copy; restamped_copy(pathlib.Path("examples/acme/entitlements"), pathlib.Path(sys.argv[1]))' "$WORK/entitlements"
SECRET="$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(32))')"
KPB_HMAC_SECRETS="kpb-bench=$SECRET" KPB_DECISION_LOG="$WORK/bench.db" .venv/bin/kpb serve --bind "127.0.0.1:$PORT" \
    --policy examples/acme/policy.json --entitlements "$WORK/entitlements" > "$WORK/serve.log" 2>&1 &
SERVER=$!  # kpb serve runs the gunicorn master in its own process: this PID is the master
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "the bridge did not become ready:" >&2; tail -20 "$WORK/serve.log" >&2; exit 1; }
KPB_BENCH_HMAC_SECRET="$SECRET" mvn -B -q -f keycloak-spi/pom.xml test-compile exec:java \
    -Dexec.mainClass=org.keycloakpolicybridge.mapper.bench.ClientBench -Dexec.classpathScope=test \
    -Dexec.args="http://127.0.0.1:$PORT ${1:-2000} ${2:-3}"
