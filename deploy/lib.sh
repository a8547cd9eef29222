# Helpers shared by the service scripts in deploy/ (sourced, not run). The sourcing script sets
# SCRIPT_NAME (for messages) and PID_FILE before calling them.

log() { echo "$SCRIPT_NAME: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# The pid in $PID_FILE if that process is alive and its command line contains $1, else
# nothing. A stale pid file (process gone, or the pid reused by something else) counts as not
# running.
pid_running() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    grep -qa "$1" "/proc/$pid/cmdline" 2>/dev/null || return 0
    echo "$pid"
}

# A port the kernel considers free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# stop_pid PID NAME SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL.
stop_pid() {
    local pid=$1 name=$2 secs=$3 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for $secs s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name (pid $pid) stopped"
}

# `url` command of a service script: prints $URL_FILE while the service runs (the script
# defines running_pid and URL_FILE).
cmd_url() {
    if [[ -n "$(running_pid)" && -f "$URL_FILE" ]]; then
        cat "$URL_FILE"
    else
        log "not running (start it with: deploy/$SCRIPT_NAME start)"
        return 1
    fi
}
