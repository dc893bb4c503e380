#!/usr/bin/env bash
# Run a real Keycloak (no Docker) for keycloak-policy-bridge development and integration tests.
#
#   scripts/keycloak.sh fetch    download keycloak-quarkus-dist via Maven into var/keycloak/ (idempotent)
#   scripts/keycloak.sh start    install the mapper jar (if built), import realm-config/*.json, start, wait for ready
#   scripts/keycloak.sh stop     stop the instance started by `start` (pid file), kill after a grace period
#   scripts/keycloak.sh status   print whether it is up (exit 0 when ready, 1 otherwise)
#   scripts/keycloak.sh restart  stop + start
#   scripts/keycloak.sh logs     tail the log
#
# Environment (all optional):
#   KC_PORT (8080)  KC_MGMT_PORT (9000)  KC_START_TIMEOUT (240 s)  KC_STOP_TIMEOUT (30 s)
#   KC_PROVIDER_JAR      mapper jar to install (default keycloak-spi/target/kpb-keycloak-mapper.jar; skipped if absent)
#   KC_KEEP_DATA=1       keep var/keycloak/.../data/h2 (default: wiped on every start -> fresh realm import)
#   KC_JAVA_HOME         JDK to run Keycloak with (default: auto-detect Temurin 25, then JAVA_HOME, then 17)
#   JAVA_OPTS_KC_HEAP    heap options passed through to kc.sh (default here: -Xms64m -Xmx512m)
#   KC_EXTRA_ARGS        extra kc.sh arguments, e.g. SPI options:
#                        --spi-protocol-mapper--kpb-policy-bridge-mapper--bridge-url=http://127.0.0.1:8787
#   KC_BOOTSTRAP_ADMIN_USERNAME / KC_BOOTSTRAP_ADMIN_PASSWORD  master-realm admin (DEMO defaults admin/admin)
#   KC_DB, KC_DB_URL, KC_DB_USERNAME, KC_DB_PASSWORD  Keycloak's own database, read by kc.sh itself (default:
#                        the dev-file H2 database under data/h2). `scripts/stack.py up --ha` sets postgres; start-dev
#                        then re-augments the server for the changed database before starting (slower once).
#   KPB_BRIDGE_URL, KPB_HMAC_SECRET, KPB_HMAC_KEY_ID  read by the mapper from the environment; this script
#                        only passes the environment through and never writes them to a file.
set -euo pipefail

KC_VERSION="26.7.3"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KC_BASE="${ROOT}/var/keycloak"
KC_HOME="${KC_BASE}/keycloak-${KC_VERSION}"
KC_LOG="${KC_BASE}/keycloak.log"
KC_PID_FILE="${KC_BASE}/keycloak.pid"
KC_PORT="${KC_PORT:-8080}"
KC_MGMT_PORT="${KC_MGMT_PORT:-9000}"
KC_START_TIMEOUT="${KC_START_TIMEOUT:-240}"
KC_STOP_TIMEOUT="${KC_STOP_TIMEOUT:-30}"
KC_HOST="127.0.0.1"
READY_URL="http://${KC_HOST}:${KC_MGMT_PORT}/health/ready"
PROVIDER_JAR="${KC_PROVIDER_JAR:-${ROOT}/keycloak-spi/target/kpb-keycloak-mapper.jar}"
REALM_DIR="${ROOT}/realm-config"

log() { printf '[keycloak.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------- JDK
java_major() {  # $1 = JAVA_HOME; prints the feature version (17, 25, ...) or nothing
    local v
    v="$("$1/bin/java" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')" || return 0
    printf '%s\n' "${v%%.*}"
}

pick_java_home() {
    if [[ -n "${KC_JAVA_HOME:-}" ]]; then
        [[ -x "${KC_JAVA_HOME}/bin/java" ]] || die "KC_JAVA_HOME=${KC_JAVA_HOME} has no bin/java"
        printf '%s\n' "${KC_JAVA_HOME}"; return
    fi
    # Keycloak 26.7 supports OpenJDK 21 and 25 (17 still works but is deprecated): prefer 25, then 21, then 17.
    local candidate major
    for want in 25 21; do
        for candidate in ${JAVA_HOME:-} /usr/lib/jvm/*; do
            [[ -x "${candidate}/bin/java" ]] || continue
            major="$(java_major "${candidate}")"
            if [[ "${major}" == "${want}" ]]; then printf '%s\n' "${candidate}"; return; fi
        done
    done
    for candidate in ${JAVA_HOME:-} /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/*; do
        [[ -x "${candidate}/bin/java" ]] || continue
        major="$(java_major "${candidate}")"
        if [[ -n "${major}" && "${major}" -ge 17 ]]; then printf '%s\n' "${candidate}"; return; fi
    done
    die "no JDK >= 17 found (set KC_JAVA_HOME)"
}

# ---------------------------------------------------------------------------------------------- fetch
cmd_fetch() {
    if [[ -x "${KC_HOME}/bin/kc.sh" ]]; then
        log "Keycloak ${KC_VERSION} already unpacked in ${KC_HOME#"${ROOT}/"}"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    mkdir -p "${KC_BASE}/download"
    local artifact="org.keycloak:keycloak-quarkus-dist:${KC_VERSION}:tar.gz"
    local tarball="${KC_BASE}/download/keycloak-quarkus-dist-${KC_VERSION}.tar.gz"
    if [[ ! -s "${tarball}" ]]; then
        log "fetching ${artifact} with Maven (~200 MB; cached in ~/.m2 afterwards)"
        mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
            -Dartifact="${artifact}" -DoutputDirectory="${KC_BASE}/download" -Dmdep.overWriteReleases=false \
            || die "Maven could not fetch ${artifact}"
    fi
    log "unpacking into ${KC_HOME#"${ROOT}/"}"
    local tmp="${KC_BASE}/.unpack.$$"
    rm -rf "${tmp}"; mkdir -p "${tmp}"
    tar -xzf "${tarball}" -C "${tmp}"
    [[ -x "${tmp}/keycloak-${KC_VERSION}/bin/kc.sh" ]] || die "unexpected tarball layout: $(ls "${tmp}")"
    mv "${tmp}/keycloak-${KC_VERSION}" "${KC_HOME}"
    rmdir "${tmp}"
    rm -f "${tarball}"   # the copy in ~/.m2 stays; no need for a second one here
    log "Keycloak ${KC_VERSION} ready in ${KC_HOME#"${ROOT}/"}"
}

# ---------------------------------------------------------------------------------------------- status helpers
is_ready() { curl -fsS -m 3 "${READY_URL}" >/dev/null 2>&1; }

running_pid() {  # prints the pid from the pid file when that process is alive
    [[ -f "${KC_PID_FILE}" ]] || return 1
    local pid; pid="$(cat "${KC_PID_FILE}")"
    [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null || return 1
    printf '%s\n' "${pid}"
}

port_in_use() { (exec 3<>"/dev/tcp/${KC_HOST}/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------- start
cmd_start() {
    if running_pid >/dev/null && is_ready; then
        log "already running and ready (pid $(running_pid)) -> nothing to do"
        return 0
    fi
    if pid="$(running_pid)"; then
        log "pid ${pid} is alive but not ready; waiting for it"
        wait_ready "${pid}"; return
    fi
    for p in "${KC_PORT}" "${KC_MGMT_PORT}"; do
        port_in_use "${p}" && die "port ${p} on ${KC_HOST} is already in use by another process"
    done
    [[ -x "${KC_HOME}/bin/kc.sh" ]] || cmd_fetch

    # provider jar (built by keycloak-spi/)
    rm -f "${KC_HOME}/providers/kpb-keycloak-mapper.jar"
    if [[ -f "${PROVIDER_JAR}" ]]; then
        cp "${PROVIDER_JAR}" "${KC_HOME}/providers/kpb-keycloak-mapper.jar"
        log "installed provider ${PROVIDER_JAR#"${ROOT}/"} -> providers/kpb-keycloak-mapper.jar"
    else
        log "NOTE: ${PROVIDER_JAR#"${ROOT}/"} not built -> starting WITHOUT the policy-bridge mapper"
    fi

    # realm import
    mkdir -p "${KC_HOME}/data/import"
    rm -f "${KC_HOME}/data/import/"*.json
    shopt -s nullglob
    local realms=("${REALM_DIR}"/*.json)
    shopt -u nullglob
    ((${#realms[@]})) || log "no realm-config/*.json to import"
    for f in "${realms[@]}"; do cp "${f}" "${KC_HOME}/data/import/"; done

    if [[ "${KC_KEEP_DATA:-0}" != "1" ]]; then
        rm -rf "${KC_HOME}/data/h2"
        log "wiped data/h2 (fresh state; set KC_KEEP_DATA=1 to keep it)"
    fi

    log "database: ${KC_DB:-dev-file}"  # the kind only: a JDBC URL may carry credentials
    local java_home; java_home="$(pick_java_home)"
    log "JDK ${java_home} (Java $(java_major "${java_home}"))"

    # DEMO-ONLY defaults: the bootstrap admin of the master realm on a loopback-only dev instance.
    export KC_BOOTSTRAP_ADMIN_USERNAME="${KC_BOOTSTRAP_ADMIN_USERNAME:-admin}"
    export KC_BOOTSTRAP_ADMIN_PASSWORD="${KC_BOOTSTRAP_ADMIN_PASSWORD:-admin}"
    export JAVA_HOME="${java_home}"
    export JAVA_OPTS_KC_HEAP="${JAVA_OPTS_KC_HEAP:--Xms64m -Xmx512m}"

    local -a args=(start-dev --import-realm
        --http-host="${KC_HOST}" --http-port="${KC_PORT}"
        --health-enabled=true --http-management-host="${KC_HOST}" --http-management-port="${KC_MGMT_PORT}")
    # shellcheck disable=SC2206  # intentional word splitting of the extra args
    [[ -n "${KC_EXTRA_ARGS:-}" ]] && args+=(${KC_EXTRA_ARGS})

    mkdir -p "${KC_BASE}"
    : >"${KC_LOG}"
    log "starting: kc.sh ${args[*]} (log: ${KC_LOG#"${ROOT}/"})"
    # setsid: own process group, so `stop` can signal kc.sh's java child too.
    setsid "${KC_HOME}/bin/kc.sh" "${args[@]}" >>"${KC_LOG}" 2>&1 </dev/null &
    local pid=$!
    echo "${pid}" >"${KC_PID_FILE}"
    wait_ready "${pid}"
}

wait_ready() {
    local pid=$1 start=${SECONDS}
    while ((SECONDS - start < KC_START_TIMEOUT)); do
        if is_ready; then
            log "ready after $((SECONDS - start)) s: http://${KC_HOST}:${KC_PORT} (health ${READY_URL})"
            return 0
        fi
        if ! kill -0 "${pid}" 2>/dev/null; then
            log "Keycloak exited before becoming ready; last 50 log lines:"
            tail -n 50 "${KC_LOG}" >&2 || true
            rm -f "${KC_PID_FILE}"
            return 1
        fi
        sleep 1
    done
    log "not ready after ${KC_START_TIMEOUT} s; last 50 log lines:"
    tail -n 50 "${KC_LOG}" >&2 || true
    log "stopping the instance that did not come up (raise KC_START_TIMEOUT if the machine is just slow)"
    cmd_stop
    return 1
}

# ---------------------------------------------------------------------------------------------- stop / status
cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        log "not running"; rm -f "${KC_PID_FILE}"; return 0
    fi
    log "stopping pid ${pid} (process group)"
    kill -TERM -- "-${pid}" 2>/dev/null || kill -TERM "${pid}" 2>/dev/null || true
    local start=${SECONDS}
    while kill -0 "${pid}" 2>/dev/null || pgrp_alive "${pid}"; do
        if ((SECONDS - start >= KC_STOP_TIMEOUT)); then
            log "still alive after ${KC_STOP_TIMEOUT} s -> SIGKILL"
            kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "${pid}" 2>/dev/null || true
            sleep 1; break
        fi
        sleep 1
    done
    rm -f "${KC_PID_FILE}"
    log "stopped after $((SECONDS - start)) s"
}

pgrp_alive() { pgrep -g "$1" >/dev/null 2>&1; }

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        if is_ready; then
            local rss; rss="$(pgrep -g "${pid}" | xargs -r ps -o rss= -p | awk '{s+=$1} END {printf "%d", s/1024}')"
            echo "keycloak ${KC_VERSION}: UP (pid ${pid}, RSS ${rss} MiB) http://${KC_HOST}:${KC_PORT}"
            return 0
        fi
        echo "keycloak ${KC_VERSION}: STARTING/UNHEALTHY (pid ${pid}; ${READY_URL} not ready)"
        return 1
    fi
    if is_ready; then
        echo "keycloak: something not started by this script answers on ${READY_URL}"
        return 1
    fi
    echo "keycloak ${KC_VERSION}: DOWN"
    return 1
}

case "${1:-}" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    logs) tail -n "${2:-100}" -f "${KC_LOG}" ;;
    *) echo "usage: $0 {fetch|start|stop|restart|status|logs [N]}" >&2; exit 2 ;;
esac
