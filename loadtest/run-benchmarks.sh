#!/usr/bin/env bash
# Builds release binaries, then
#  1. the standard runs: for sqlite_synchronous=full and =normal, a fresh single-node server
#     (temp data dir, port 0, loopback) under the throughput, latency and fan-out scenarios;
#  2. the Centrifugo comparison (issue 10's table): `larachat-loadtest compare` runs each
#     scenario against a fresh `larachat serve` (durable acks) and a fresh Centrifugo v6.9.1
#     (memory engine, and with history + recovery), ROUNDS rounds, servers alternating;
# and prints two markdown tables. JSON results, plots (SVG) and server logs stay in the work
# directory it prints. Installs Centrifugo with `go install` on first use (cached in
# ~/.cache/larachat/bin). About 25 minutes on a 2-core machine once built.
#
#   loadtest/run-benchmarks.sh            # everything
#   QUICK=1 loadtest/run-benchmarks.sh    # shorter runs, 1 round (smoke test of the script)
#   SKIP_BUILD=1 ...                      # use the binaries already in target/release
#   SKIP_STANDARD=1 / SKIP_COMPARE=1      # only one of the two parts
#   ROUNDS=5 ...                          # comparison rounds (default 3)
#   IDLE_BIG=1 ...                        # also 19,900 idle connections (4 worker processes)
#   ENCODING=msgpack ...                  # Lara Chat frames in MessagePack for the comparison
#   BASE_BIN=/path/to/old/larachat ...    # also that build (server `lara-base`) in every round:
#                                         # before/after ratios within a round
#   SERVERS=lara,centrifugo ...           # the servers compared (default below)
#   SCENARIOS="idle fanout-max" ...       # a subset of: idle fanout-rate fanout-max latency chat
#   SKIP_ECHO=1                           # no echo-server reference (the 1:1 latency floor)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER=$TARGET_DIR/release/larachat
LOADTEST=$TARGET_DIR/release/larachat-loadtest

if [[ -z "${SKIP_BUILD:-}" ]]; then
  echo "building release binaries..." >&2
  # One invocation: the same feature set for every target (no rebuild between them).
  cargo build --release -p larachat -p larachat-loadtest --bins --example echo_server >&2
fi
ECHO_SERVER=$TARGET_DIR/release/examples/echo_server
SERVERS=${SERVERS:-lara,centrifugo,centrifugo-history}
SCENARIOS=${SCENARIOS:-idle fanout-rate fanout-max latency chat}
BASE_ARGS=()
if [[ -n "${BASE_BIN:-}" ]]; then
  SERVERS="$SERVERS,lara-base"
  BASE_ARGS=(--larachat-base-bin "$BASE_BIN")
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
SERVER_PID=""

stop_server() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT

if [[ -n "${QUICK:-}" ]]; then
  DUR=3; LAT_DUR=5; FAN_K=100; FAN_N=50
  ROUNDS=${ROUNDS:-1}
  IDLE_N=1000; IDLE_CYCLES=${IDLE_CYCLES:-2}; CFAN_K=200; CFAN_RATE_N=200; CFAN_MAX_N=100; CLAT_DUR=5; CHAT_DUR=10
else
  DUR=10; LAT_DUR=20; FAN_K=500; FAN_N=400
  ROUNDS=${ROUNDS:-3}
  IDLE_N=5000; IDLE_CYCLES=${IDLE_CYCLES:-4}; CFAN_K=1000; CFAN_RATE_N=1000; CFAN_MAX_N=600; CLAT_DUR=20; CHAT_DUR=30
fi

if [[ -z "${SKIP_STANDARD:-}" ]]; then
  export LARACHAT_ADMIN_EMAIL=admin@example.com
  export LARACHAT_ADMIN_PASSWORD=change-me-please
  for SYNC in full normal; do
    DATA=$WORK/data-$SYNC
    LOG=$WORK/server-$SYNC.log
    mkdir -p "$DATA"
    echo "== sqlite_synchronous=$SYNC: starting the server" >&2
    LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000 LARACHAT_LIMITS__ENABLED=false \
    LARACHAT_SERVER__MAX_CONNECTIONS_PER_IP=0 LARACHAT_STORAGE__SQLITE_SYNCHRONOUS=$SYNC \
      "$SERVER" serve --listen 127.0.0.1:0 --data-dir "$DATA" >"$LOG" 2>&1 &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1 300); do
      URL=$(sed -n 's/^larachat listening on \(http:\/\/[0-9.:]*\).*$/\1/p' "$LOG" | head -n1)
      [[ -n "$URL" ]] && break
      kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:" >&2; cat "$LOG" >&2; exit 1; }
      sleep 0.1
    done
    [[ -n "$URL" ]] || { echo "server did not print its address" >&2; cat "$LOG" >&2; exit 1; }
    echo "   listening on $URL" >&2

    KEY=$(env -u LOADTEST_KEY "$LOADTEST" setup --url "$URL" --json | tail -n1 | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
    [[ -n "$KEY" ]] || { echo "setup failed" >&2; exit 1; }

    run() {
      echo "-- $*" >&2
      local out
      # The key goes through the environment (not argv); the server never sees it, and it must
      # not be a LARACHAT_* variable: the server rejects unknown ones.
      if ! out=$(LOADTEST_KEY=$KEY "$LOADTEST" "$@" --url "$URL" --label "$SYNC" --json \
          --server-pid "$SERVER_PID" --out "$WORK/standard" --no-progress); then
        echo "$out" >&2
        echo "!! scenario failed: $*" >&2
        return 0
      fi
      echo "$out" | sed '$d' | sed 's/^/   /' >&2
      echo "$out" | tail -n1 >>"$RESULTS"
    }
    run throughput --connections 1 --window 1 --duration-secs "$DUR"
    run throughput --connections 1 --window 32 --duration-secs "$DUR"
    run throughput --connections 50 --window 1 --duration-secs "$DUR"
    run latency --pairs 10 --rate 20 --duration-secs "$LAT_DUR"
    run fanout --subscribers "$FAN_K" --messages "$FAN_N"

    stop_server
    if grep -qiE "panic|ERROR" "$LOG"; then
      echo "!! the server logged errors (see $LOG):" >&2
      grep -iE "panic|ERROR" "$LOG" | head -n 5 >&2
    fi
  done
fi

COMPARE_DIR=$WORK/compare
SUMMARIES=()
if [[ -z "${SKIP_COMPARE:-}" ]]; then
  compare() {
    local name=$1; shift
    echo "== compare: $*" >&2
    [[ " $SCENARIOS " == *" $name "* ]] || return 0
    if ! "$LOADTEST" compare --rounds "$ROUNDS" --servers "$SERVERS" "${BASE_ARGS[@]}" \
        --larachat-bin "$SERVER" --encoding "${ENCODING:-json}" --out "$COMPARE_DIR/$name" \
        --no-progress "$@" | sed -u 's/^/   /' >&2; then
      echo "!! comparison failed: $*" >&2
      return 0
    fi
    SUMMARIES+=("$COMPARE_DIR/$name/compare-$1.json")
  }
  # 15 s after closing: the server's allocator (jemalloc) returns freed pages after its 10 s
  # decay time, Centrifugo's Go runtime after its own.
  compare idle idle --connections "$IDLE_N" --cycles "$IDLE_CYCLES" --hold-secs 3 \
    --settle-secs "${IDLE_SETTLE:-15}"
  compare fanout-rate fanout --subscribers "$CFAN_K" --messages "$CFAN_RATE_N" --rate 100
  compare fanout-max fanout --subscribers "$CFAN_K" --messages "$CFAN_MAX_N"
  compare latency latency --pairs 10 --rate 20 --duration-secs "$CLAT_DUR"
  compare chat chat --duration-secs "$CHAT_DUR"
  if [[ -n "${IDLE_BIG:-}" ]]; then
    SCENARIOS="$SCENARIOS idle-big" compare idle-big idle --connections 19900 --cycles 1 \
      --hold-secs 5 --settle-secs 15
  fi
fi

# The 1:1 latency floor: the same schedule against a trivial WebSocket echo server.
ECHO_TABLE=""
if [[ -z "${SKIP_ECHO:-}" && -x "$ECHO_SERVER" ]]; then
  for round in $(seq 1 "$ROUNDS"); do
    : >"$WORK/echo.log"
    "$ECHO_SERVER" 127.0.0.1:0 >"$WORK/echo.log" 2>&1 &
    ECHO_PID=$!
    ECHO_ADDR=""
    for _ in $(seq 1 100); do
      ECHO_ADDR=$(sed -n 's/^listening on //p' "$WORK/echo.log" || true)
      [[ -n "$ECHO_ADDR" ]] && break
      sleep 0.1
    done
    echo "== echo server (round $round, load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$LOADTEST" echo --url "http://$ECHO_ADDR" --pairs 10 --rate 20 --duration-secs "$CLAT_DUR" \
      --server-pid "$ECHO_PID" --out "$WORK/echo" --json | tail -n1 >>"$WORK/echo.jsonl" || true
    kill "$ECHO_PID" 2>/dev/null || true
    wait "$ECHO_PID" 2>/dev/null || true
  done
  ECHO_TABLE=$("$LOADTEST" report "$WORK/echo.jsonl" || true)
fi

echo
echo "Lara Chat single node, $(nproc) cores, $(uname -sr); load generator on the same machine;"
echo "load average before the runs: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)."
if [[ -z "${SKIP_STANDARD:-}" ]]; then
  echo
  "$LOADTEST" report "$RESULTS"
fi
if [[ ${#SUMMARIES[@]} -gt 0 ]]; then
  echo
  echo "Lara Chat (serve, SQLite, sqlite_synchronous=full) vs Centrifugo v6.9.1 (memory engine;"
  echo "-history: history_size 100, history_ttl 300s, force_recovery), $ROUNDS round(s), ranges over"
  echo "rounds, ratios within a round:"
  echo
  "$LOADTEST" report --compare "${SUMMARIES[@]}"
fi
if [[ -n "$ECHO_TABLE" ]]; then
  echo
  echo "Trivial WebSocket echo server (examples/echo_server.rs), 10 connections × 20 frames/s:"
  echo
  echo "$ECHO_TABLE"
fi
echo
echo "raw results, plots and server logs: $WORK" >&2
