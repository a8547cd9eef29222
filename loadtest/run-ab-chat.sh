#!/usr/bin/env bash
# A/B of the chat scenario (100 1:1 conversations x 5 msg/s, 10 s; 200 end-user connections) (1:1 conversations of end users: feeds' unread + presence on every
# connection) on two serve builds, alternating rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: $0 BEFORE_BIN AFTER_BIN" >&2; exit 2; }
BEFORE=$1; AFTER=$2; LOADTEST=${LOADTEST:-${CARGO_TARGET_DIR:-target}/release/larachat-loadtest}; ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-abchat.XXXXXX"); OUT=$WORK/results.jsonl; : >"$OUT"
export LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please
for round in $(seq 1 "$ROUNDS"); do
  for label in before after; do
    if [[ $label == before ]]; then bin=$BEFORE; else bin=$AFTER; fi
    dir=$WORK/$label-$round; mkdir -p "$dir"
    LARACHAT_LIMITS__ENABLED=false LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000 \
      "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/log" 2>&1 &
    PID=$!
    url=""
    for _ in $(seq 1 300); do
      url=$(sed -n 's/^larachat.* listening on \(http:\/\/[0-9.:]*\).*$/\1/p' "$dir/log" | head -n1)
      [[ -n "$url" ]] && break; sleep 0.1
    done
    env -u LOADTEST_KEY "$LOADTEST" chat --pairs 100 --groups 0 --pair-rate 5 --duration-secs 10 --drain-secs 3 \
      --url "$url" --label "$label" --out "$WORK/out" --no-progress --json | tail -n1 >>"$OUT"
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line); rows.setdefault(r["label"], []).append(r)
print("| build | setup s (200 users: create, conversation, connect) | msg/s | send→ack p50 / p99 ms | send→receive p50 / p99 ms |")
print("|---|---|---|---|---|")
for label in ("before", "after"):
    for r in rows.get(label, []):
        a, d = r["ack_latency"], r["delivery_latency"]
        print(f"| {label} | {r['setup_s']:.2f} | {r['msgs_per_sec']} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} |")
PY
echo "raw: $WORK" >&2
