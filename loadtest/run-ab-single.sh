#!/usr/bin/env bash
# Single-node throughput of two server builds, alternating: ROUNDS times (default 5) each build
# gets a fresh `larachat serve` (sqlite_synchronous=full, temp data dir, loopback) and runs
#   throughput --connections 1  --window 1 --duration-secs DUR   (default 8)
#   throughput --connections 50 --window 1 --duration-secs DUR
# then prints, per build and scenario, every run's msg/s and the medians of msg/s and p99.
# Alternating rounds spread the load of a shared machine over both builds.
#
#   loadtest/run-ab-single.sh /path/to/before/larachat target/release/larachat
#
# Uses target/release/larachat-loadtest (build it first). Rate limits are turned off on builds
# that have them (`[limits]`); older builds have none.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: $0 BEFORE_BIN AFTER_BIN" >&2; exit 2; }
LOADTEST=${CARGO_TARGET_DIR:-target}/release/larachat-loadtest
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-8}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-ab.XXXXXX")
OUT=$WORK/results.jsonl
: >"$OUT"
export LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please
PID=""
trap '[[ -n "$PID" ]] && kill -TERM "$PID" 2>/dev/null; true' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for label in before after; do
    if [[ $label == before ]]; then bin=$1; else bin=$2; fi
    extra=()
    if LARACHAT_LIMITS__ENABLED=false "$bin" check-config >/dev/null 2>&1; then
      extra=(LARACHAT_LIMITS__ENABLED=false)
    fi
    dir=$WORK/$label-$round
    mkdir -p "$dir"
    : >"$dir/log"
    env "${extra[@]}" LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000 \
      "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/log" 2>&1 &
    PID=$!
    url=""
    for _ in $(seq 1 300); do
      url=$(sed -n 's/^larachat.* listening on \(http:\/\/[0-9.:]*\).*$/\1/p' "$dir/log" | head -n1)
      [[ -n "$url" ]] && break
      sleep 0.1
    done
    [[ -n "$url" ]] || { echo "$bin did not start:" >&2; cat "$dir/log" >&2; exit 1; }
    echo "== round $round: $label ($bin) on $url" >&2
    for c in 1 50; do
      env -u LOADTEST_KEY "$LOADTEST" throughput --connections "$c" --window 1 \
        --duration-secs "$DUR" --url "$url" --label "$label" --out "$WORK/out" --no-progress --json | tail -n1 >>"$OUT"
    done
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
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
