#!/usr/bin/env bash
# A local NATS server (JetStream enabled) for development and for the NATS bus tests.
#
#   deploy/nats.sh install   build nats-server $NATS_VERSION once (cached in $BIN_DIR)
#   deploy/nats.sh start     start it on a free loopback port unless running; prints
#                            NATS_URL=nats://127.0.0.1:PORT and LARACHAT_NATS_SERVER_BIN=…,
#                            so `eval "$(deploy/nats.sh start)"` sets both
#   deploy/nats.sh stop      stop it (SIGTERM, then SIGKILL) and delete its JetStream state
#   deploy/nats.sh url       print the URL if running (exit 1 otherwise)
#   deploy/nats.sh bin       print the path of the server binary
#
# Every command is idempotent. Diagnostics go to stderr; stdout carries only what the command
# documents, so it can be eval'ed or captured.
#
# Environment:
#   LARACHAT_RUN_DIR   pid, log, url and JetStream state (default: <repo>/.cache/run)
#   LARACHAT_BIN_DIR   where the built binary is cached (default: ~/.cache/larachat/bin)
set -euo pipefail

NATS_VERSION="v2.10.27"
NATS_MODULE="github.com/nats-io/nats-server/v2"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${LARACHAT_BIN_DIR:-$HOME/.cache/larachat/bin}"
BIN="$BIN_DIR/nats-server"
RUN_DIR="${LARACHAT_RUN_DIR:-$REPO/.cache/run}"
PID_FILE="$RUN_DIR/nats.pid"
LOG_FILE="$RUN_DIR/nats.log"
URL_FILE="$RUN_DIR/nats.url"
STATE_DIR="$RUN_DIR/nats-state"

SCRIPT_NAME="nats.sh"
# shellcheck source=deploy/lib.sh
source "$REPO/deploy/lib.sh"

installed_version() {
    [[ -x "$BIN" ]] || return 0
    # Prints e.g. "nats-server: v2.10.27".
    "$BIN" --version 2>/dev/null | awk '{print $NF}'
}

cmd_install() {
    if [[ "$(installed_version)" == "$NATS_VERSION" ]]; then
        return 0
    fi
    command -v go >/dev/null || die "go is required to build nats-server (https://go.dev/dl/)"
    log "building nats-server $NATS_VERSION into $BIN_DIR (once; takes a minute or two)"
    mkdir -p "$BIN_DIR"
    # CGO off: a static binary that does not depend on the machine's C toolchain.
    GOBIN="$BIN_DIR" CGO_ENABLED=0 go install "$NATS_MODULE@$NATS_VERSION" >&2
    local got
    got="$(installed_version)"
    [[ "$got" == "$NATS_VERSION" ]] || die "built nats-server reports '$got', expected $NATS_VERSION"
}

running_pid() { pid_running nats-server; }


print_env() {
    echo "NATS_URL=$(cat "$URL_FILE")"
    echo "LARACHAT_NATS_SERVER_BIN=$BIN"
}

# Waits until the server with pid $1 answers its JetStream health check on monitor port $2.
wait_healthy() {
    local pid="$1" monitor="$2" i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$monitor/healthz?js-enabled-only=true" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

cmd_start() {
    if [[ -n "$(running_pid)" ]]; then
        if [[ -f "$URL_FILE" ]]; then
            print_env
            return 0
        fi
        # Running but its URL is lost: restart rather than leave an unreachable server behind.
        cmd_stop
    fi
    cmd_install
    mkdir -p "$RUN_DIR"
    rm -f "$PID_FILE" "$URL_FILE"
    local attempt port monitor pid
    # The ports are free when chosen but could be taken before the server binds them: retry.
    for attempt in 1 2 3; do
        port="$(free_port)"
        monitor="$(free_port)"
        [[ "$port" != "$monitor" ]] || continue
        rm -rf "$STATE_DIR"
        mkdir -p "$STATE_DIR"
        # Own session and no inherited stdout: the server outlives this script and does not
        # hold open the pipe of a `$(deploy/nats.sh start)` capture.
        setsid "$BIN" -a 127.0.0.1 -p "$port" -m "$monitor" -js -sd "$STATE_DIR" \
            -n "larachat-dev" </dev/null >"$LOG_FILE" 2>&1 &
        pid=$!
        if wait_healthy "$pid" "$monitor"; then
            echo "$pid" >"$PID_FILE"
            echo "nats://127.0.0.1:$port" >"$URL_FILE"
            log "nats-server $NATS_VERSION running (pid $pid, log $LOG_FILE)"
            print_env
            return 0
        fi
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        log "start attempt $attempt failed; log:"
        tail -n 20 "$LOG_FILE" >&2 || true
    done
    die "nats-server did not become healthy"
}

cmd_stop() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        stop_pid "$pid" nats-server 5
    fi
    rm -f "$PID_FILE" "$URL_FILE"
    rm -rf "$STATE_DIR"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
url) cmd_url ;;
bin) echo "$BIN" ;;
*)
    echo "usage: $0 install|start|stop|url|bin" >&2
    exit 2
    ;;
esac
