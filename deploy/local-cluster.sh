#!/usr/bin/env bash
# A local distributed Lara Chat on loopback, to try scale-out on one machine: one NATS server
# and one Cassandra 5.0 node (via deploy/nats.sh and deploy/cassandra.sh), `larachat migrate`,
# one `larachat control-plane` and N `larachat gateway` processes.
#
#   deploy/local-cluster.sh start [N]  start NATS and Cassandra (or reuse running ones), build
#                                      the binary if missing, migrate the keyspace, then start
#                                      the control plane and N gateways (default: the number
#                                      already running, else 2) and wait until every /ready
#                                      is ok. Processes already running are kept, missing ones
#                                      started, extra gateways stopped: run it again with
#                                      another N to scale. Prints, on stdout,
#                                        ADMIN_URL=http://127.0.0.1:PORT
#                                        GATEWAY_URLS='http://127.0.0.1:P1 http://127.0.0.1:P2'
#                                        GATEWAY_1_URL=…  GATEWAY_2_URL=…
#                                        NATS_URL=…  CASSANDRA_CONTACT_POINT=…
#                                        CLUSTER_CONFIG=<the cluster's TOML file>
#                                      so `eval "$(deploy/local-cluster.sh start 2)"` sets them
#   deploy/local-cluster.sh status     each process, its pid, URL and /ready answer (exit 0 if
#                                      all are ready, 1 if one is not, 3 if nothing runs)
#   deploy/local-cluster.sh env        print the assignments of `start` again (exit 1 if the
#                                      cluster is not running)
#   deploy/local-cluster.sh stop       stop the gateways and the control plane, then NATS and
#                                      Cassandra if this script started them (which deletes
#                                      their data); a NATS or Cassandra that was already
#                                      running is left running
#
# Every command is idempotent. Diagnostics go to stderr. State, logs and the generated TOML
# file are in $RUN_DIR/cluster (<repo>/.cache/run/cluster, ignored by git):
# control-plane.log, gateway-<i>.log, migrate.log, cluster.toml, and secrets.env (mode 600:
# the jwt_secret and key_pepper shared by every process, generated once and kept by `stop`;
# delete it to rotate them, which invalidates every API key).
#
# Environment:
#   LARACHAT_ADMIN_EMAIL, LARACHAT_ADMIN_PASSWORD   if both set, `start` makes sure this
#                             platform admin exists (the control plane bootstraps it; the
#                             password needs at least 10 characters) and checks it can log in
#   LARACHAT_BIN              the larachat binary (default: target/release/larachat, built
#                             with `cargo build --release -p larachat` when missing or too old
#                             to have the distributed subcommands)
#   LARACHAT_CLUSTER_KEYSPACE keyspace (default: larachat_cluster)
#   LARACHAT_CLUSTER_PORT_BASE fixed ports: control plane on BASE, gateway i on BASE+i
#                             (default: free ports chosen by the kernel, printed by `start`)
#   LARACHAT_CLUSTER_START_TIMEOUT  seconds to wait for each process's /ready (default: 90)
#   LARACHAT_RUN_DIR          run directory shared with deploy/nats.sh and deploy/cassandra.sh
#                             (default: <repo>/.cache/run); set it to another directory to get
#                             a NATS and a Cassandra of the cluster's own
#   Other LARACHAT_* configuration variables (e.g. LARACHAT_LOG=debug) reach every process
#   and override the generated cluster.toml, as documented in docs/configuration.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${LARACHAT_RUN_DIR:-$REPO/.cache/run}"
CLUSTER_DIR="$RUN_DIR/cluster"
CONFIG_FILE="$CLUSTER_DIR/cluster.toml"
SECRETS_FILE="$CLUSTER_DIR/secrets.env"
COUNT_FILE="$CLUSTER_DIR/gateways"
KEYSPACE="${LARACHAT_CLUSTER_KEYSPACE:-larachat_cluster}"
PORT_BASE="${LARACHAT_CLUSTER_PORT_BASE:-}"
START_TIMEOUT_S="${LARACHAT_CLUSTER_START_TIMEOUT:-90}"
DEFAULT_GATEWAYS=2
MAX_GATEWAYS=32

SCRIPT_NAME="local-cluster.sh"
PID_FILE="" # set per process before calling pid_running (deploy/lib.sh)
# shellcheck source=deploy/lib.sh
source "$REPO/deploy/lib.sh"

# --- processes -------------------------------------------------------------------------------

# Process names: "control-plane", "gateway-1", "gateway-2", … Each has <name>.pid, .log, .url.
role_of() { [[ "$1" == control-plane ]] && echo control-plane || echo gateway; }

# The pid of process $1 if it runs (see pid_running in deploy/lib.sh), else nothing.
proc_pid() {
    PID_FILE="$CLUSTER_DIR/$1.pid"
    pid_running "$(role_of "$1")"
}

proc_url() { cat "$CLUSTER_DIR/$1.url" 2>/dev/null || true; }

# Gateway names with a pid file, in numeric order.
known_gateways() {
    local f
    for f in "$CLUSTER_DIR"/gateway-*.pid; do
        [[ -e "$f" ]] || continue
        f="${f##*/}"
        echo "${f%.pid}"
    done | sort -t- -k2 -n
}

recorded_count() {
    local n
    n="$(cat "$COUNT_FILE" 2>/dev/null || true)"
    [[ "$n" =~ ^[0-9]+$ ]] && echo "$n"
    return 0
}

stop_proc() {
    local name=$1 pid
    pid="$(proc_pid "$name")"
    # Gateways drain for up to server.shutdown_grace_secs (10 s by default).
    [[ -z "$pid" ]] || stop_pid "$pid" "$name" 20
    rm -f "$CLUSTER_DIR/$name.pid" "$CLUSTER_DIR/$name.url"
}

# --- binary, secrets, configuration ----------------------------------------------------------

BIN=""
find_binary() {
    if [[ -n "${LARACHAT_BIN:-}" ]]; then
        [[ -x "$LARACHAT_BIN" ]] || die "LARACHAT_BIN=$LARACHAT_BIN is not an executable"
        BIN="$LARACHAT_BIN"
        return 0
    fi
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/larachat"
    # A binary from before the distributed mode has no control-plane subcommand.
    if [[ ! -x "$BIN" ]] || ! "$BIN" control-plane --help >/dev/null 2>&1; then
        command -v cargo >/dev/null || die "cargo is required to build larachat (https://rustup.rs)"
        log "building larachat (cargo build --release -p larachat; a few minutes the first time)"
        (cd "$REPO" && cargo build --release -p larachat) >&2 || die "cargo build failed"
        [[ -x "$BIN" ]] || die "cargo build did not produce $BIN (set LARACHAT_BIN)"
        return 0
    fi
    local newer
    newer="$(find "$REPO"/src "$REPO"/core "$REPO"/store "$REPO"/broker "$REPO"/gateway \
        "$REPO"/control-plane "$REPO"/Cargo.toml "$REPO"/Cargo.lock -newer "$BIN" \
        \( -name '*.rs' -o -name 'Cargo.*' \) -print -quit 2>/dev/null || true)"
    if [[ -n "$newer" ]]; then
        log "note: $BIN is older than ${newer#"$REPO"/}; run \`cargo build --release -p larachat\` to use the current sources"
    fi
}

random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

ensure_secrets() {
    if [[ ! -s "$SECRETS_FILE" ]]; then
        (
            umask 077
            {
                echo "# Shared by every process of the local cluster. Keep it secret."
                echo "LARACHAT_SECURITY__JWT_SECRET=$(random_hex)"
                echo "LARACHAT_SECURITY__KEY_PEPPER=$(random_hex)"
            } >"$SECRETS_FILE.tmp"
            mv "$SECRETS_FILE.tmp" "$SECRETS_FILE"
        )
        log "generated $SECRETS_FILE"
    fi
    chmod 600 "$SECRETS_FILE"
}

# Writes the cluster's TOML for NATS URL $1 and contact point $2 to stdout.
render_config() {
    cat <<TOML
# Generated by deploy/local-cluster.sh; rewritten on every start. The secrets are not here:
# they come from secrets.env as LARACHAT_SECURITY__* variables.
[storage]
backend = "scylla"

[storage.scylla]
contact_points = ["$2"]
keyspace = "$KEYSPACE"

[bus]
backend = "nats"

[bus.nats]
url = "$1"
TOML
}

# Runs the binary with the cluster's configuration and secrets in its environment.
run_larachat() {
    (
        set -a
        # shellcheck source=/dev/null
        source "$SECRETS_FILE"
        set +a
        exec "$BIN" --config "$CONFIG_FILE" "$@"
    )
}

# --- services --------------------------------------------------------------------------------

NATS_URL=""
CASSANDRA_CONTACT_POINT=""

# Starts service $1 (nats or cassandra) with its deploy/ script unless it already runs, and
# remembers (file started-$1) when this script started it, so that `stop` stops only those.
# Sets NATS_URL / CASSANDRA_CONTACT_POINT from what the script prints.
start_service() {
    local svc=$1 out line ours=""
    if "$REPO/deploy/$svc.sh" url >/dev/null 2>&1; then
        [[ -f "$CLUSTER_DIR/started-$svc" ]] ||
            log "reusing the running $svc (not started here: \`stop\` will leave it running)"
    else
        log "starting $svc (deploy/$svc.sh start)"
        ours=1
    fi
    # Idempotent: prints the address of the running one, or starts one. fd 9 (our lock) must
    # not leak into the long-lived server.
    out="$("$REPO/deploy/$svc.sh" start 9>&-)" || die "deploy/$svc.sh start failed"
    [[ -z "$ours" ]] || touch "$CLUSTER_DIR/started-$svc"
    while IFS= read -r line; do
        case "$line" in
        NATS_URL=*) NATS_URL="${line#NATS_URL=}" ;;
        CASSANDRA_CONTACT_POINT=*) CASSANDRA_CONTACT_POINT="${line#CASSANDRA_CONTACT_POINT=}" ;;
        esac
    done <<<"$out"
}

services_up() {
    start_service nats
    start_service cassandra
    [[ -n "$NATS_URL" ]] || die "deploy/nats.sh start printed no NATS_URL"
    [[ -n "$CASSANDRA_CONTACT_POINT" ]] || die "deploy/cassandra.sh start printed no CASSANDRA_CONTACT_POINT"
}

# --- start -----------------------------------------------------------------------------------

# Starts process $1 in the background (own session, stdin closed, stdout and stderr in its
# log). It binds port $2 (0: a free one, printed on stdout when ready).
launch() {
    local name=$1 port=$2 role log
    role="$(role_of "$name")"
    log="$CLUSTER_DIR/$name.log"
    [[ ! -f "$log" ]] || mv -f "$log" "$log.1"
    rm -f "$CLUSTER_DIR/$name.url"
    local -a unset_admin=()
    # Only the control plane bootstraps the admin; gateways need not see the password.
    [[ "$role" == control-plane ]] || unset_admin=(-u LARACHAT_ADMIN_EMAIL -u LARACHAT_ADMIN_PASSWORD)
    (
        set -a
        # shellcheck source=/dev/null
        source "$SECRETS_FILE"
        set +a
        exec setsid env "${unset_admin[@]}" NO_COLOR=1 "$BIN" --config "$CONFIG_FILE" "$role" \
            --listen "127.0.0.1:$port" </dev/null >"$log" 2>&1 9>&-
    ) &
    echo "$!" >"$CLUSTER_DIR/$name.pid"
}

# Waits until process $1 has printed its address and answers /ready with status ok.
wait_ready() {
    local name=$1 pid log url="" deadline=$((SECONDS + START_TIMEOUT_S))
    pid="$(cat "$CLUSTER_DIR/$name.pid")"
    log="$CLUSTER_DIR/$name.log"
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited; last lines of $log:"
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        if [[ -z "$url" ]]; then
            url="$(sed -n 's|^larachat [a-z-]* listening on \(http://[0-9.:]*\)$|\1|p' "$log" 2>/dev/null | head -n 1)"
        fi
        if [[ -n "$url" ]] && curl -fsS -m 2 "$url/ready" 2>/dev/null | grep -q '"status":"ok"'; then
            echo "$url" >"$CLUSTER_DIR/$name.url"
            return 0
        fi
        sleep 0.1
    done
    log "$name not ready after ${START_TIMEOUT_S}s (log: $log); last lines:"
    tail -n 20 "$log" >&2 || true
    return 1
}

port_for() {
    local index=$1 # 0: control plane, i: gateway i
    if [[ -n "$PORT_BASE" ]]; then
        echo $((PORT_BASE + index))
    else
        echo 0
    fi
}

json_credentials() {
    python3 -c 'import json, os
print(json.dumps({"email": os.environ["LARACHAT_ADMIN_EMAIL"], "password": os.environ["LARACHAT_ADMIN_PASSWORD"]}))'
}

# Makes sure the admin of LARACHAT_ADMIN_EMAIL exists and can log in on the control plane.
# $1: "bootstrapped" when the control plane was just started with the variables (it created
# the admin itself), anything else to create it with `larachat admin create-user`.
ensure_admin() {
    local how=$1 admin_url
    [[ -n "${LARACHAT_ADMIN_EMAIL:-}" && -n "${LARACHAT_ADMIN_PASSWORD:-}" ]] || return 0
    if [[ "$how" != bootstrapped ]]; then
        # Idempotent: prints Created(…) or AlreadyExists(…).
        if ! LARACHAT_NEW_ADMIN_PASSWORD="$LARACHAT_ADMIN_PASSWORD" NO_COLOR=1 \
            run_larachat admin create-user --email "$LARACHAT_ADMIN_EMAIL" >"$CLUSTER_DIR/admin.log" 2>&1; then
            tail -n 5 "$CLUSTER_DIR/admin.log" >&2 || true
            die "could not create the admin $LARACHAT_ADMIN_EMAIL (log: $CLUSTER_DIR/admin.log)"
        fi
    fi
    admin_url="$(proc_url control-plane)"
    if json_credentials | curl -fs -m 10 -o /dev/null "$admin_url/api/admin/login" \
        -H 'content-type: application/json' --data-binary @-; then
        log "admin $LARACHAT_ADMIN_EMAIL can log in at $admin_url/api/admin/login"
    else
        die "admin $LARACHAT_ADMIN_EMAIL cannot log in (an admin with this email but another password exists?); see $CLUSTER_DIR/control-plane.log"
    fi
}

print_env() {
    local i n urls="" url
    n="$(recorded_count)"
    echo "ADMIN_URL=$(proc_url control-plane)"
    for ((i = 1; i <= n; i++)); do
        url="$(proc_url "gateway-$i")"
        urls="${urls:+$urls }$url"
    done
    echo "GATEWAY_URLS='$urls'"
    for ((i = 1; i <= n; i++)); do
        echo "GATEWAY_${i}_URL=$(proc_url "gateway-$i")"
    done
    echo "NATS_URL=$("$REPO/deploy/nats.sh" url 2>/dev/null || true)"
    echo "CASSANDRA_CONTACT_POINT=$("$REPO/deploy/cassandra.sh" url 2>/dev/null || true)"
    echo "CLUSTER_CONFIG=$CONFIG_FILE"
}

print_summary() {
    local i n
    n="$(recorded_count)"
    log "cluster ready (state and logs in $CLUSTER_DIR):"
    log "  control plane (Admin API)  $(proc_url control-plane)"
    for ((i = 1; i <= n; i++)); do
        log "  gateway $i (Client API, Widget API, realtime)  $(proc_url "gateway-$i")"
    done
    if [[ -z "${LARACHAT_ADMIN_EMAIL:-}" || -z "${LARACHAT_ADMIN_PASSWORD:-}" ]]; then
        log "to create a platform admin (LARACHAT_ADMIN_EMAIL/PASSWORD were not set), run either"
        log "  LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please $0 start"
        log "  LARACHAT_NEW_ADMIN_PASSWORD=change-me-please $BIN --config $CONFIG_FILE admin create-user --email admin@example.com"
    fi
}

cmd_start() {
    local want="${1:-}"
    if [[ -n "$want" ]]; then
        if ! [[ "$want" =~ ^[1-9][0-9]*$ ]] || ((want < 1 || want > MAX_GATEWAYS)); then
            die "the number of gateways must be between 1 and $MAX_GATEWAYS, got '$want'"
        fi
    else
        want="$(recorded_count)"
        want="${want:-$DEFAULT_GATEWAYS}"
        ((want >= 1)) || want=$DEFAULT_GATEWAYS
    fi
    if [[ -n "$PORT_BASE" ]]; then
        if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || ((PORT_BASE < 1024 || PORT_BASE + want > 65535)); then
            die "LARACHAT_CLUSTER_PORT_BASE must be a port (1024…) leaving room for $want gateways, got '$PORT_BASE'"
        fi
    fi
    mkdir -p "$CLUSTER_DIR"
    local started=$SECONDS

    find_binary
    services_up
    ensure_secrets

    # A NATS or Cassandra restarted since the last start listens on other ports: processes
    # still configured with the old ones are restarted.
    local new_config
    new_config="$(render_config "$NATS_URL" "$CASSANDRA_CONTACT_POINT")"
    if [[ -f "$CONFIG_FILE" && "$(cat "$CONFIG_FILE")" != "$new_config" ]]; then
        local name
        for name in control-plane $(known_gateways); do
            if [[ -n "$(proc_pid "$name")" ]]; then
                log "$name was configured for other NATS/Cassandra addresses; restarting it"
                stop_proc "$name"
            fi
        done
    fi
    echo "$new_config" >"$CONFIG_FILE"

    # Gateways beyond the requested number are stopped (scale in).
    local name i
    for name in $(known_gateways); do
        i="${name#gateway-}"
        if ((i > want)); then
            stop_proc "$name"
            rm -f "$CLUSTER_DIR/$name.log.1"
        fi
    done
    echo "$want" >"$COUNT_FILE"

    local -a missing=()
    for name in control-plane $(for ((i = 1; i <= want; i++)); do echo "gateway-$i"; done); do
        [[ -n "$(proc_pid "$name")" && -s "$CLUSTER_DIR/$name.url" ]] || missing+=("$name")
    done

    local cp_started=""
    if ((${#missing[@]} == 0)); then
        log "already running: the control plane and $want gateway(s)"
    else
        log "migrating keyspace $KEYSPACE (larachat migrate)"
        if ! NO_COLOR=1 run_larachat migrate >"$CLUSTER_DIR/migrate.log" 2>&1; then
            tail -n 20 "$CLUSTER_DIR/migrate.log" >&2 || true
            die "larachat migrate failed (log: $CLUSTER_DIR/migrate.log)"
        fi
        for name in "${missing[@]}"; do
            stop_proc "$name" # a stale or half-started one
            if [[ "$name" == control-plane ]]; then
                launch "$name" "$(port_for 0)"
                cp_started=1
            else
                launch "$name" "$(port_for "${name#gateway-}")"
            fi
        done
        local failed=""
        for name in "${missing[@]}"; do
            wait_ready "$name" || failed=1
        done
        [[ -z "$failed" ]] || die "the cluster did not start (logs in $CLUSTER_DIR; stop it with: $0 stop)"
        log "started ${missing[*]} in $((SECONDS - started)) s"
    fi
    if [[ -n "$cp_started" ]]; then
        ensure_admin bootstrapped
    else
        ensure_admin create
    fi
    print_summary
    print_env
}

# --- stop, status ----------------------------------------------------------------------------

cmd_stop() {
    local name
    if [[ -d "$CLUSTER_DIR" ]]; then
        # Gateways drain in parallel, then the control plane.
        for name in $(known_gateways); do
            stop_proc "$name" &
        done
        wait
        stop_proc control-plane
        rm -f "$COUNT_FILE"
    fi
    local svc
    for svc in nats cassandra; do
        if [[ -f "$CLUSTER_DIR/started-$svc" ]]; then
            "$REPO/deploy/$svc.sh" stop 9>&-
            rm -f "$CLUSTER_DIR/started-$svc"
        elif "$REPO/deploy/$svc.sh" url >/dev/null 2>&1; then
            log "$svc was not started by this script; left running (deploy/$svc.sh stop stops it)"
        fi
    done
}

# Prints one status line for process $1; returns 1 unless it runs and is ready.
status_line() {
    local name=$1 pid url ready
    pid="$(proc_pid "$name")"
    url="$(proc_url "$name")"
    if [[ -z "$pid" ]]; then
        printf '%-14s %-8s %-28s %s\n' "$name" "-" "${url:--}" "not running"
        return 1
    fi
    ready="$(curl -sS -m 3 "$url/ready" 2>&1 || true)"
    printf '%-14s %-8s %-28s %s\n' "$name" "$pid" "${url:--}" "/ready ${ready:-no answer}"
    [[ "$ready" == *'"status":"ok"'* ]]
}

cmd_status() {
    local n name ok=0 any=""
    n="$(recorded_count)"
    if [[ -z "$n" && -z "$(known_gateways)" && ! -f "$CLUSTER_DIR/control-plane.pid" ]]; then
        echo "not running (start it with: $0 start)"
        return 3
    fi
    printf '%-14s %-8s %-28s %s\n' PROCESS PID URL STATE
    for name in control-plane $(known_gateways); do
        [[ -n "$(proc_pid "$name")" ]] && any=1
        status_line "$name" || ok=1
    done
    local svc addr
    for svc in nats cassandra; do
        addr="$("$REPO/deploy/$svc.sh" url 2>/dev/null || true)"
        printf '%-14s %-8s %-28s %s\n' "$svc" "" "${addr:--}" \
            "$([[ -n "$addr" ]] && echo running || echo 'not running')$([[ -f "$CLUSTER_DIR/started-$svc" ]] && echo ' (started by this script)')"
        [[ -n "$addr" ]] || ok=1
    done
    [[ -n "$any" ]] || return 3
    return "$ok"
}

cmd_env() {
    [[ -n "$(proc_pid control-plane)" && -s "$CLUSTER_DIR/control-plane.url" ]] || {
        log "not running (start it with: $0 start)"
        return 1
    }
    print_env
}

# --- main ------------------------------------------------------------------------------------

case "${1:-}" in
start | stop)
    mkdir -p "$CLUSTER_DIR"
    # One start or stop at a time. fd 9 is closed in every process started from here, so the
    # lock ends with this script.
    exec 9>"$CLUSTER_DIR/.lock"
    flock -w 600 9 || die "another start or stop holds $CLUSTER_DIR/.lock"
    ;;
esac
case "${1:-}" in
start) cmd_start "${2:-}" ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    echo "usage: $0 start [N]|stop|status|env" >&2
    exit 2
    ;;
esac
