#!/usr/bin/env bash
# Distributed-mode throughput on one machine, per Cassandra commit-log mode and per build.
#
# For each mode in $MODES it starts a Cassandra node of its own (deploy/cassandra.sh in a
# temporary run directory, LARACHAT_CASSANDRA_COMMITLOG_SYNC=<mode>) and a nats-server of its
# own; then for each build in $BINS (label=path) it migrates a fresh keyspace with that build,
# starts its control plane and one gateway, and runs:
#   throughput --connections 1  --window 1   (one sender, one message in flight)
#   throughput --connections 50 --window 1   (50 senders, 50 conversations)
#   throughput --connections 50 --window 1 --shared-conversation   (50 senders, one conversation)
# then stops them. Before the first build of a mode it runs WARMUP seconds (default 20) of
# unrecorded load, so that the JVM's warm-up does not favour whichever build runs second; with
# ROUNDS=n (default 2) the builds take turns n times. Prints one markdown table (loadtest
# report); JSON lines and logs stay in the work directory it prints. About 1 minute per mode,
# build and round after the node starts.
#
#   loadtest/run-cluster-benchmarks.sh
#   MODES="batch periodic" BINS="before=/tmp/larachat-old after=target/release/larachat" \
#     DUR=10 loadtest/run-cluster-benchmarks.sh
#
# Builds the release binaries first unless SKIP_BUILD is set.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOADTEST=$TARGET_DIR/release/larachat-loadtest
MODES=${MODES:-batch group periodic}
BINS=${BINS:-current=$TARGET_DIR/release/larachat}
DUR=${DUR:-10}
WARMUP=${WARMUP:-20}
ROUNDS=${ROUNDS:-2}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  echo "building release binaries..." >&2
  cargo build --release -p larachat -p larachat-loadtest >&2
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-cluster-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=()

stop_processes() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
stop_services() {
  LARACHAT_RUN_DIR=$WORK/run deploy/cassandra.sh stop >/dev/null 2>&1 || true
  LARACHAT_RUN_DIR=$WORK/run deploy/nats.sh stop >/dev/null 2>&1 || true
}
trap 'stop_processes; stop_services' EXIT

# Starts `larachat <role>` with the cluster environment and sets URL once it listens (not in a
# subshell: its pid must reach PIDS).
start_process() {
  local bin=$1 role=$2 log=$3
  : >"$log" # exists before the background process opens it, so the polling can read it
  "$bin" "$role" --listen 127.0.0.1:0 >"$log" 2>&1 &
  PIDS+=($!)
  URL=""
  for _ in $(seq 1 600); do
    URL=$(sed -n 's/^larachat.* listening on \(http:\/\/[0-9.:]*\).*$/\1/p' "$log" | head -n1)
    [[ -n "$URL" ]] && break
    sleep 0.1
  done
  [[ -n "$URL" ]] || { echo "$role did not start:" >&2; cat "$log" >&2; exit 1; }
}

export LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please
export LARACHAT_BUS__BACKEND=nats LARACHAT_STORAGE__BACKEND=scylla
export LARACHAT_SECURITY__JWT_SECRET=bench-jwt-secret-0123456789abcdef0123456789
export LARACHAT_SECURITY__KEY_PEPPER=bench-key-pepper-0123456789abcdef0123456789
export LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000 LARACHAT_LOG=warn

for MODE in $MODES; do
  stop_services
  echo "== commitlog_sync=$MODE: starting Cassandra and NATS" >&2
  eval "$(LARACHAT_RUN_DIR=$WORK/run LARACHAT_CASSANDRA_COMMITLOG_SYNC=$MODE deploy/cassandra.sh start)"
  eval "$(LARACHAT_RUN_DIR=$WORK/run deploy/nats.sh start)"
  export LARACHAT_BUS__NATS__URL=$NATS_URL
  export LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS=$CASSANDRA_CONTACT_POINT
  WARM=$WARMUP
  for ROUND in $(seq 1 "$ROUNDS"); do
  for ENTRY in $BINS; do
    LABEL=${ENTRY%%=*}
    BIN=${ENTRY#*=}
    export LARACHAT_STORAGE__SCYLLA__KEYSPACE="bench_${LABEL//[^a-z0-9]/_}_$MODE"
    echo "== $MODE / $LABEL ($BIN), round $ROUND" >&2
    # The writers send far above the per-sender message limit; builds from before `[limits]`
    # refuse the key.
    if LARACHAT_LIMITS__ENABLED=false "$BIN" check-config >/dev/null 2>&1; then
      export LARACHAT_LIMITS__ENABLED=false
    else
      unset LARACHAT_LIMITS__ENABLED
    fi
    "$BIN" migrate >"$WORK/migrate-$MODE-$LABEL.log" 2>&1
    start_process "$BIN" control-plane "$WORK/control-$MODE-$LABEL-$ROUND.log"
    ADMIN_URL=$URL
    start_process "$BIN" gateway "$WORK/gateway-$MODE-$LABEL-$ROUND.log"
    GATEWAY_URL=$URL
    run() {
      echo "-- $*" >&2
      local out
      if ! out=$(env -u LOADTEST_KEY "$LOADTEST" "$@" --url "$GATEWAY_URL" --admin-url "$ADMIN_URL" \
        --label "$MODE/$LABEL" --out "$WORK/out" --no-progress --json); then
        echo "$out" >&2
        echo "!! scenario failed: $*" >&2
        return 0
      fi
      echo "$out" | sed '$d' | sed 's/^/   /' >&2
      echo "$out" | tail -n1 >>"$RESULTS"
    }
    if [[ "$WARM" -gt 0 ]]; then
      echo "-- warm-up, $WARM s (not recorded)" >&2
      env -u LOADTEST_KEY "$LOADTEST" throughput --connections 50 --window 1 --duration-secs "$WARM" \
        --url "$GATEWAY_URL" --admin-url "$ADMIN_URL" --out "$WORK/out" >/dev/null 2>&1 || true
      WARM=0
    fi
    run throughput --connections 1 --window 1 --duration-secs "$DUR"
    run throughput --connections 50 --window 1 --duration-secs "$DUR"
    run throughput --connections 50 --window 1 --duration-secs "$DUR" --shared-conversation
    stop_processes
  done
  done
done
stop_services

echo
echo "Lara Chat distributed mode: one control plane and one gateway per build, a nats-server and"
echo "a Cassandra 5.0 node, all on this $(nproc)-core machine with the load generator;"
echo "load average before the runs: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
"$LOADTEST" report "$RESULTS"
echo
echo "raw results and logs: $WORK" >&2
