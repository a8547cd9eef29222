#!/usr/bin/env bash
# Builds release binaries, then for sqlite_synchronous=full and =normal starts a fresh
# single-node server (temp data dir, port 0, loopback), runs the standard scenarios against it,
# stops it, and prints one markdown table. Results (JSON lines) and server logs stay in the
# work directory it prints. Takes about 3-4 minutes on a 2-core machine once built.
#
#   loadtest/run-benchmarks.sh            # everything
#   QUICK=1 loadtest/run-benchmarks.sh    # shorter runs (smoke test of the script)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER=$TARGET_DIR/release/larachat
LOADTEST=$TARGET_DIR/release/larachat-loadtest

if [[ -z "${SKIP_BUILD:-}" ]]; then
  echo "building release binaries..." >&2
  cargo build --release -p larachat -p larachat-loadtest >&2
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
else
  DUR=10; LAT_DUR=20; FAN_K=500; FAN_N=400
fi

export LARACHAT_ADMIN_EMAIL=admin@example.com
export LARACHAT_ADMIN_PASSWORD=change-me-please

for SYNC in full normal; do
  DATA=$WORK/data-$SYNC
  LOG=$WORK/server-$SYNC.log
  mkdir -p "$DATA"
  echo "== sqlite_synchronous=$SYNC: starting the server" >&2
  LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000 LARACHAT_LIMITS__ENABLED=false \
  LARACHAT_STORAGE__SQLITE_SYNCHRONOUS=$SYNC \
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
    if ! out=$(LOADTEST_KEY=$KEY "$LOADTEST" "$@" --url "$URL" --label "$SYNC" --json); then
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

echo
echo "Lara Chat single node, $(nproc) cores, $(uname -sr); load generator on the same machine;"
echo "load average before the runs: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
"$LOADTEST" report "$RESULTS"
echo
echo "raw results and server logs: $WORK" >&2
