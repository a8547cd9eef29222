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

log() { echo "nats.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

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

# The pid of our running server, or nothing. A stale pid file (process gone, or the pid reused
# by something else) counts as not running.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    grep -qa nats-server "/proc/$pid/cmdline" 2>/dev/null || return 0
    echo "$pid"
}

# A port the kernel considers free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

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
    local pid i
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "nats-server (pid $pid) ignored SIGTERM for 5 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "nats-server (pid $pid) stopped"
    fi
    rm -f "$PID_FILE" "$URL_FILE"
    rm -rf "$STATE_DIR"
}

cmd_url() {
    if [[ -n "$(running_pid)" && -f "$URL_FILE" ]]; then
        cat "$URL_FILE"
    else
        log "not running (start it with: deploy/nats.sh start)"
        return 1
    fi
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
