#!/usr/bin/env bash
# CPU profile of `larachat serve` during the fan-out run of issue 10 (1 conversation × 1,000
# subscribers, as fast as possible): starts a fresh release server (SQLite, durable acks), attaches
# `perf record --call-graph dwarf` to it for the length of the run, and prints the top symbols
# (self time) and the top call chains. perf.data, the reports and the run's JSON stay in the work
# directory it prints. Installs perf (Debian linux-perf) if missing.
#
#   loadtest/profile-fanout.sh                      # K=1000, N=600, as fast as possible
#   K=1000 N=1000 RATE=100 loadtest/profile-fanout.sh   # the paced variant
#   SKIP_BUILD=1 ...                                # use target/release as it is
#   LARACHAT_BIN=path/to/larachat SKIP_BUILD=1 ...  # profile another server build
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER=${LARACHAT_BIN:-$TARGET_DIR/release/larachat}
LOADTEST=$TARGET_DIR/release/larachat-loadtest
K=${K:-1000}
N=${N:-600}
RATE=${RATE:-0}

if ! command -v perf >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null
fi
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p larachat -p larachat-loadtest >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-profile.XXXXXX")
export LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please
LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000 LARACHAT_STORAGE__SQLITE_SYNCHRONOUS=full \
LARACHAT_LIMITS__ENABLED=false LARACHAT_SERVER__MAX_CONNECTIONS_PER_IP=0 \
LARACHAT_DEMO__ENABLED=false LARACHAT_LOG=warn \
  "$SERVER" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PERF_PID=""
cleanup() {
  [[ -n "$PERF_PID" ]] && kill -INT "$PERF_PID" 2>/dev/null || true
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}
trap cleanup EXIT
URL=""
for _ in $(seq 1 300); do
  URL=$(sed -n 's/^larachat listening on \(http:\/\/[0-9.:]*\).*$/\1/p' "$WORK/server.log" | head -n1)
  [[ -n "$URL" ]] && break
  sleep 0.1
done
[[ -n "$URL" ]] || { cat "$WORK/server.log" >&2; exit 1; }
KEY=$("$LOADTEST" setup --url "$URL" --json | tail -n1 | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# The subscribers connect first (not profiled), then perf attaches for the sending phase only:
# the load tester prints nothing between, so attach once the connections are open.
LOADTEST_KEY=$KEY "$LOADTEST" fanout --url "$URL" --subscribers "$K" --messages "$N" \
  --rate "$RATE" --server-pid "$SERVER_PID" --out "$WORK" --json --no-progress >"$WORK/run.txt" &
RUN_PID=$!
for _ in $(seq 1 600); do
  OPEN=$(ls /proc/"$SERVER_PID"/fd 2>/dev/null | wc -l)
  [[ "$OPEN" -ge "$K" ]] && break
  sleep 0.05
done
perf record -F 999 --call-graph dwarf,16384 -p "$SERVER_PID" -o "$WORK/perf.data" 2>"$WORK/perf-record.log" &
PERF_PID=$!
wait "$RUN_PID"
kill -INT "$PERF_PID" 2>/dev/null || true
wait "$PERF_PID" 2>/dev/null || true
PERF_PID=""
sed '$d' "$WORK/run.txt"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== top symbols (self time)"
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none \
  >"$WORK/self.txt" 2>/dev/null || true
# Symbol and share only (perf pads the lines with empty IPC columns).
grep -v '^#' "$WORK/self.txt" | grep -v '^$' | sed 's/  *- *- *$//; s/ *$//' \
  | head -n 30 >"$WORK/top-symbols.txt" || true
cat "$WORK/top-symbols.txt"
echo
echo "== inclusive time of the hot paths"
perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none \
  >"$WORK/children.txt" 2>/dev/null || true
grep -E 'Connection::serve|read_frame|BytesMut::resize|__sys_sendto|tcp_sendmsg |sqlite3_step|protocol::encode' \
  "$WORK/children.txt" | awk '{print $1, $4, $5, $6}' || true
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g caller,0.5,callee \
  >"$WORK/call-graph.txt" 2>/dev/null || true
echo
echo "perf.data, top-symbols.txt, children.txt, call-graph.txt and the run's JSON in $WORK" >&2
