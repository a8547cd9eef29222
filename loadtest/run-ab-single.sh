#!/usr/bin/env bash
# Single-node A/B of two server builds, alternating: ROUNDS times (default 5) each build gets a
# fresh `larachat serve` (sqlite_synchronous=full, temp data dir, loopback) and runs SCENARIOS
# (default "throughput"; "throughput latency" for both):
#   throughput: --connections 1 and --connections 50, --window 1 --duration-secs DUR (default 8)
#   latency:    --pairs 10 --rate 20 --duration-secs LAT_DUR (default 12), the 1:1 row
# then prints, per build and scenario, every run's figures and their medians (throughput: msg/s
# and p99 send→ack; latency: send→receive and send→ack percentiles, server CPU and KiB written
# to storage per message). Alternating rounds spread the load of a shared machine over both.
#
#   loadtest/run-ab-single.sh /path/to/before/larachat target/release/larachat
#   SCENARIOS=latency ROUNDS=10 loadtest/run-ab-single.sh BEFORE AFTER
#
# Uses target/release/larachat-loadtest (build it first). Rate limits are turned off on builds
# that have them (`[limits]`); older builds have none.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: $0 BEFORE_BIN AFTER_BIN" >&2; exit 2; }
LOADTEST=${CARGO_TARGET_DIR:-target}/release/larachat-loadtest
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-8}
LAT_DUR=${LAT_DUR:-12}
SCENARIOS=${SCENARIOS:-throughput}
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
    common=(--url "$url" --label "$label" --out "$WORK/out" --no-progress --json)
    for scenario in $SCENARIOS; do
      case $scenario in
        throughput)
          for c in 1 50; do
            env -u LOADTEST_KEY "$LOADTEST" throughput --connections "$c" --window 1 \
              --duration-secs "$DUR" "${common[@]}" | tail -n1 >>"$OUT"
          done ;;
        latency)
          env -u LOADTEST_KEY "$LOADTEST" latency --pairs 10 --rate 20 --duration-secs "$LAT_DUR" \
            --server-pid "$PID" "${common[@]}" | tail -n1 >>"$OUT" ;;
        *) echo "unknown scenario $scenario (throughput, latency)" >&2; exit 2 ;;
      esac
    done
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows, lat = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["scenario"] == "latency":
        lat.setdefault(r["label"], []).append(r)
    else:
        rows.setdefault((r["label"], r["connections"]), []).append(r)
if rows:
    print("| build | connections | msg/s per round | median msg/s | median p99 send→ack ms |")
    print("|---|---:|---|---:|---:|")
for (label, c), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0] != "before")):
    rates = [r["msgs_per_sec"] for r in rs]
    p99 = statistics.median(r["ack_latency"]["p99_ms"] for r in rs)
    print(f"| {label} | {c} | {', '.join(f'{x:,.0f}' for x in rates)} | {statistics.median(rates):,.0f} | {p99:.2f} |")
if lat:
    cols = [("send→receive p50", "receive_latency", "p50_ms"), ("p90", "receive_latency", "p90_ms"),
            ("p99", "receive_latency", "p99_ms"), ("send→ack p50", "ack_latency", "p50_ms"),
            ("p99", "ack_latency", "p99_ms"), ("server CPU µs/msg", None, "server_cpu_us_per_delivery"),
            ("KiB written/msg", None, "server_written_kib_per_delivery")]
    print()
    print("1:1 latency, 10 pairs × 20 msg/s: each round's figure, median in bold (ms unless named)")
    print("| build | " + " | ".join(c[0] for c in cols) + " | missing, duplicates |")
    print("|---|" + "---|" * (len(cols) + 1))
    def get(r, group, key):
        v = r[group][key] if group else r.get(key)
        return v if isinstance(v, (int, float)) else None
    for label, rs in sorted(lat.items(), key=lambda kv: kv[0] != "before"):
        cells = []
        for _, group, key in cols:
            vs = [v for v in (get(r, group, key) for r in rs) if v is not None]
            cells.append(" / ".join(f"{v:.2f}" for v in vs) + (f" **{statistics.median(vs):.2f}**" if vs else "–"))
        lost = sum(r["missing"] for r in rs), sum(r["duplicate_deliveries"] for r in rs)
        print(f"| {label} | " + " | ".join(cells) + f" | {lost[0]}, {lost[1]} |")
PY
echo "raw results and logs: $WORK" >&2
