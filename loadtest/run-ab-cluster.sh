#!/usr/bin/env bash
# Send throughput through one gateway in distributed mode, two server builds alternating (the
# cost of a change on the distributed write path, e.g. the CQL event outbox): ROUNDS times
# (default 3) each build gets a fresh keyspace (`larachat migrate` by that build), a control
# plane and a gateway on the NATS and Cassandra given by NATS_URL and LARACHAT_TEST_CASSANDRA
# (`deploy/nats.sh start`, `deploy/cassandra.sh start`), and runs
#   throughput --connections 1  --window 1 --duration-secs DUR   (default 8)
#   throughput --connections 50 --window 1 --duration-secs DUR
# against the gateway, then prints per build and scenario every run's msg/s and the medians.
#
#   loadtest/run-ab-cluster.sh /path/to/before/larachat target/release/larachat
#
# Uses target/release/larachat-loadtest (build it first).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: $0 BEFORE_BIN AFTER_BIN" >&2; exit 2; }
: "${NATS_URL:?start deploy/nats.sh}" "${LARACHAT_TEST_CASSANDRA:?start deploy/cassandra.sh}"
LOADTEST=${CARGO_TARGET_DIR:-target}/release/larachat-loadtest
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-8}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-ab-cluster.XXXXXX")
OUT=$WORK/results.jsonl
: >"$OUT"
export LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please
export LARACHAT_BUS__BACKEND=nats LARACHAT_BUS__NATS__URL=$NATS_URL
export LARACHAT_STORAGE__BACKEND=scylla LARACHAT_STORAGE__SCYLLA__CONTACT_POINTS=$LARACHAT_TEST_CASSANDRA
export LARACHAT_SECURITY__JWT_SECRET=$(printf 'j%.0s' {1..40}) LARACHAT_SECURITY__KEY_PEPPER=$(printf 'p%.0s' {1..40})
export LARACHAT_LIMITS__ENABLED=false LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000
export LARACHAT_SERVER__MAX_CONNECTIONS_PER_IP=0 LARACHAT_LOG=warn,async_nats=error,scylla=error
PIDS=()
stop() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap stop EXIT

url_of() { # log file -> the URL of its listening line
  local u=""
  for _ in $(seq 1 600); do
    u=$(sed -n 's/^larachat.* listening on \(http:\/\/[0-9.:]*\).*$/\1/p' "$1" | head -n1)
    [[ -n "$u" ]] && { echo "$u"; return; }
    sleep 0.1
  done
  echo "no listening line in $1:" >&2; cat "$1" >&2; exit 1
}

for round in $(seq 1 "$ROUNDS"); do
  for label in before after; do
    if [[ $label == before ]]; then bin=$1; else bin=$2; fi
    dir=$WORK/$label-$round
    mkdir -p "$dir"
    export LARACHAT_STORAGE__SCYLLA__KEYSPACE="lc_ab_${label}_${round}_$$"
    "$bin" migrate >"$dir/migrate.log" 2>&1
    "$bin" control-plane --listen 127.0.0.1:0 >"$dir/cp.log" 2>&1 &
    PIDS+=($!)
    "$bin" gateway --listen 127.0.0.1:0 >"$dir/gw.log" 2>&1 &
    PIDS+=($!)
    cp=$(url_of "$dir/cp.log"); gw=$(url_of "$dir/gw.log")
    echo "== round $round: $label ($bin) gateway $gw; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    for c in 1 50; do
      env -u LOADTEST_KEY "$LOADTEST" throughput --connections "$c" --window 1 \
        --duration-secs "$DUR" --url "$gw" --admin-url "$cp" --label "$label" \
        --out "$WORK/out" --no-progress --json | tail -n1 >>"$OUT"
    done
    stop
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault((r["label"], r["connections"]), []).append(r)
print("| build | connections | msg/s per round | median msg/s | median p99 send→ack ms |")
print("|---|---:|---|---:|---:|")
for (label, c), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0] != "before")):
    rates = [r["msgs_per_sec"] for r in rs]
    p99 = statistics.median(r["ack_latency"]["p99_ms"] for r in rs)
    print(f"| {label} | {c} | {', '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(rates):,.0f} | {p99:.2f} |")
PY
echo "raw results and logs: $WORK" >&2
