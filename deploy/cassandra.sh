#!/usr/bin/env bash
# A local single-node Apache Cassandra 5.0 (the CQL peer of ScyllaDB) for development and for
# the ScyllaStore tests. Cassandra runs from its Maven Central jars (no tarball download).
#
#   deploy/cassandra.sh install   resolve cassandra-all $CASSANDRA_VERSION and its runtime
#                                 dependencies into $CACHE_DIR/cassandra-<ver>/lib (once)
#   deploy/cassandra.sh start     start it on free loopback ports unless running; waits until
#                                 it accepts CQL clients and prints
#                                 CASSANDRA_CONTACT_POINT=127.0.0.1:PORT and
#                                 LARACHAT_TEST_CASSANDRA=127.0.0.1:PORT,
#                                 so `eval "$(deploy/cassandra.sh start)"` sets both
#   deploy/cassandra.sh stop      stop it (SIGTERM, then SIGKILL) and delete its data
#   deploy/cassandra.sh restart   start it again on the data and ports of the last `start`,
#                                 e.g. after a crash or `kill -9` (prints the same variables)
#   deploy/cassandra.sh url       print the contact point if running (exit 1 otherwise)
#
# Every command is idempotent. Diagnostics go to stderr; stdout carries only what the command
# documents, so it can be eval'ed or captured. A cold start takes one to three minutes on two
# cores.
#
# Environment:
#   LARACHAT_RUN_DIR        pid, log, contact point and data (default: <repo>/.cache/run)
#   LARACHAT_CACHE_DIR      where the jars are cached (default: ~/.cache/larachat)
#   LARACHAT_CASSANDRA_JAVA a Java 17 `java` binary (default: the first /usr/lib/jvm/*17*)
#   LARACHAT_CASSANDRA_COMMITLOG_SYNC  batch (default: every write is in the synced commit log
#                           before it is acknowledged), group (synced every 15 ms, writes wait
#                           for it) or periodic (synced every 10 s, NOT waited for: an
#                           acknowledged write can be lost when the node dies); for measurements
#   LARACHAT_CASSANDRA_PAXOS_VARIANT  v2 (default: two round trips per lightweight transaction)
#                           or v1 (Cassandra's legacy default, four); for measurements
set -euo pipefail

CASSANDRA_VERSION="5.0.9"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATE_DIR="$REPO/deploy/cassandra"
CACHE_DIR="${LARACHAT_CACHE_DIR:-$HOME/.cache/larachat}"
HOME_DIR="$CACHE_DIR/cassandra-$CASSANDRA_VERSION"
LIB_DIR="$HOME_DIR/lib"
RUN_DIR="${LARACHAT_RUN_DIR:-$REPO/.cache/run}"
BASE_DIR="$RUN_DIR/cassandra"
DATA_DIR="$BASE_DIR/data"
CONF_DIR="$BASE_DIR/conf"
PID_FILE="$BASE_DIR/cassandra.pid"
LOG_FILE="$BASE_DIR/cassandra.log"
URL_FILE="$BASE_DIR/contact-point"
# Generous: a cold JVM start on a busy 2-core machine.
START_TIMEOUT_S="${LARACHAT_CASSANDRA_START_TIMEOUT:-300}"

SCRIPT_NAME="cassandra.sh"
# shellcheck source=deploy/lib.sh
source "$REPO/deploy/lib.sh"

java_bin() {
    if [[ -n "${LARACHAT_CASSANDRA_JAVA:-}" ]]; then
        echo "$LARACHAT_CASSANDRA_JAVA"
        return 0
    fi
    local j
    # Cassandra 5.0 supports Java 11 and 17 only; a newer default JDK would fail at start.
    for j in /usr/lib/jvm/*17*/bin/java; do
        if [[ -x "$j" ]]; then
            echo "$j"
            return 0
        fi
    done
    die "a Java 17 JDK is required (apt-get install openjdk-17-jdk-headless)"
}

installed() {
    [[ -f "$LIB_DIR/.complete" ]] && compgen -G "$LIB_DIR/cassandra-all-$CASSANDRA_VERSION.jar" >/dev/null
}

cmd_install() {
    installed && return 0
    command -v mvn >/dev/null || die "maven (mvn) is required to fetch Cassandra's jars (apt-get install maven)"
    log "resolving cassandra-all $CASSANDRA_VERSION and its dependencies into $LIB_DIR (once; a few minutes)"
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>larachat.dev</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
    rm -rf "$LIB_DIR"
    mkdir -p "$LIB_DIR"
    (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$LIB_DIR") >&2 || die "maven could not resolve cassandra-all $CASSANDRA_VERSION"
    compgen -G "$LIB_DIR/jamm-*.jar" >/dev/null || die "jamm (the -javaagent Cassandra needs) is missing from $LIB_DIR"
    touch "$LIB_DIR/.complete"
    log "installed $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

running_pid() { pid_running CassandraDaemon; }


print_env() {
    echo "CASSANDRA_CONTACT_POINT=$(cat "$URL_FILE")"
    echo "LARACHAT_TEST_CASSANDRA=$(cat "$URL_FILE")"
}

# The JVM flags of Cassandra's own conf/jvm17-server.options (module access its internals
# need), plus a modest heap: 3 GiB holds the keyspaces of a test run (a dozen or so, each of
# ~50 tables, whose schema and memtables live on the heap); 2 GiB ran out once several test
# runs shared one node. A node that runs out anyway exits instead of limping on unanswered.
jvm_flags() {
    local jamm
    jamm="$(compgen -G "$LIB_DIR/jamm-*.jar" | head -n 1)"
    local flags=(
        -Xms512m -Xmx3g -Xss512k
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxGCPauseMillis=300
        -XX:+ExitOnOutOfMemoryError -XX:+PerfDisableSharedMem
        -Djava.net.preferIPv4Stack=true
        -Djdk.attach.allowAttachSelf=true
        "-javaagent:$jamm"
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
        --add-exports java.base/sun.nio.ch=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.nio=ALL-UNNAMED
        --add-opens java.base/java.util.concurrent=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.math=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens java.base/java.net=ALL-UNNAMED
        "-Dcassandra.config=file://$CONF_DIR/cassandra.yaml"
        "-Dlogback.configurationFile=$CONF_DIR/logback.xml"
        "-Dcassandra.storagedir=$DATA_DIR"
        "-Dcassandra.logdir=$BASE_DIR"
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.ring_delay_ms=1000
        -Dcassandra.initial_token_allocation_delay_ms=0
        -Dcassandra.superuser_setup_delay_ms=0
        -Dcassandra-foreground=yes
    )
    printf '%s\n' "${flags[@]}"
}

# The commit-log settings for $LARACHAT_CASSANDRA_COMMITLOG_SYNC (cassandra.yaml lines).
commitlog_settings() {
    case "${LARACHAT_CASSANDRA_COMMITLOG_SYNC:-batch}" in
    batch) printf '%s\n' "commitlog_sync: batch" ;;
    group) printf '%s\n' "commitlog_sync: group" "commitlog_sync_group_window: 15ms" ;;
    periodic) printf '%s\n' "commitlog_sync: periodic" "commitlog_sync_period: 10000ms" ;;
    *) die "LARACHAT_CASSANDRA_COMMITLOG_SYNC must be batch, group or periodic" ;;
    esac
}

# Writes cassandra.yaml for the given native and storage ports.
write_config() {
    local native="$1" storage="$2" commitlog paxos="${LARACHAT_CASSANDRA_PAXOS_VARIANT:-v2}"
    [[ "$paxos" == v1 || "$paxos" == v2 ]] || die "LARACHAT_CASSANDRA_PAXOS_VARIANT must be v1 or v2"
    commitlog="$(commitlog_settings)"
    mkdir -p "$CONF_DIR" "$DATA_DIR"
    sed -e "s|@DATA_DIR@|$DATA_DIR|g" -e "s|@NATIVE_PORT@|$native|g" \
        -e "s|@STORAGE_PORT@|$storage|g" -e "s|@PAXOS_VARIANT@|$paxos|g" \
        "$TEMPLATE_DIR/cassandra.yaml.template" |
        awk -v commitlog="$commitlog" '$0 == "@COMMITLOG@" { print commitlog; next } { print }' \
            >"$CONF_DIR/cassandra.yaml"
    cp "$TEMPLATE_DIR/logback.xml" "$CONF_DIR/logback.xml"
}

# Starts the JVM on the configuration in $CONF_DIR (native port $1) and waits until it is
# ready; returns 1 (after killing it) if it never is.
launch() {
    local native="$1" java pid
    java="$(java_bin)"
    "$java" -version 2>&1 | grep -q '"17\.' || die "$java is not Java 17"
    local -a flags
    mapfile -t flags < <(jvm_flags)
    log "starting Cassandra $CASSANDRA_VERSION (native port $native, log $LOG_FILE)"
    # Own session and no inherited stdout: Cassandra outlives this script and does not hold
    # open the pipe of a `$(deploy/cassandra.sh start)` capture.
    setsid "$java" "${flags[@]}" -cp "$CONF_DIR:$LIB_DIR/*" \
        org.apache.cassandra.service.CassandraDaemon </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    if wait_ready "$pid" "$native"; then
        echo "127.0.0.1:$native" >"$URL_FILE"
        log "Cassandra running (pid $pid)"
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
    return 1
}

# Waits until the Cassandra with pid $1 says it listens for CQL clients and port $2 accepts a
# TCP connection.
wait_ready() {
    local pid="$1" port="$2" deadline=$((SECONDS + START_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if grep -q "Starting listening for CQL clients" "$LOG_FILE" 2>/dev/null &&
            python3 -c 'import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$port" 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    log "not ready after ${START_TIMEOUT_S}s"
    return 1
}

cmd_start() {
    if [[ -n "$(running_pid)" ]]; then
        if [[ -f "$URL_FILE" ]]; then
            print_env
            return 0
        fi
        # Running but its address is lost: restart rather than leave it behind.
        cmd_stop
    fi
    cmd_install
    mkdir -p "$BASE_DIR"
    rm -f "$PID_FILE" "$URL_FILE"
    local attempt native storage started=$SECONDS
    # The ports are free when chosen but could be taken before Cassandra binds them: retry.
    for attempt in 1 2; do
        native="$(free_port)"
        storage="$(free_port)"
        [[ "$native" != "$storage" ]] || continue
        rm -rf "$DATA_DIR"
        : >"$LOG_FILE"
        write_config "$native" "$storage"
        if launch "$native"; then
            log "ready after $((SECONDS - started)) s"
            print_env
            return 0
        fi
        log "start attempt $attempt failed; log:"
        grep -E "ERROR|Exception" "$LOG_FILE" | head -n 20 >&2 || true
        tail -n 20 "$LOG_FILE" >&2 || true
    done
    die "Cassandra did not become ready"
}

cmd_restart() {
    if [[ -n "$(running_pid)" && -f "$URL_FILE" ]]; then
        print_env
        return 0
    fi
    [[ -f "$CONF_DIR/cassandra.yaml" && -d "$DATA_DIR" ]] ||
        die "nothing to restart in $BASE_DIR (use start)"
    local native started=$SECONDS
    native="$(sed -n 's/^native_transport_port: //p' "$CONF_DIR/cassandra.yaml")"
    rm -f "$PID_FILE" "$URL_FILE"
    local attempt
    # The ports must stay the same (clients know them); one may be held for a moment by a
    # connection that got it as its ephemeral port: try again.
    for attempt in 1 2 3; do
        # A fresh log: readiness is read from it.
        [[ -f "$LOG_FILE" ]] && mv "$LOG_FILE" "$LOG_FILE.$attempt"
        log "restarting on the data in $DATA_DIR (commit log replay)"
        if launch "$native"; then
            log "ready after $((SECONDS - started)) s"
            print_env
            return 0
        fi
        log "restart attempt $attempt failed; log:"
        grep -E "ERROR|Exception" "$LOG_FILE" | tail -n 20 >&2 || true
        sleep 2
    done
    die "Cassandra did not become ready again"
}

cmd_stop() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        stop_pid "$pid" Cassandra 30
    fi
    rm -f "$PID_FILE" "$URL_FILE"
    rm -rf "$DATA_DIR" "$CONF_DIR"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
restart) cmd_restart ;;
stop) cmd_stop ;;
url) cmd_url ;;
*)
    echo "usage: $0 install|start|restart|stop|url" >&2
    exit 2
    ;;
esac
