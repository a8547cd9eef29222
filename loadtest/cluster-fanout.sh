#!/usr/bin/env bash
# Fan-out through two gateways over NATS and Cassandra (issue 10): one sender on gateway 1,
# K subscribers on gateway 2 (`fanout --receiver-url`). Gateway 1 stores each message in
# Cassandra and publishes it on NATS; gateway 2 receives it once and fans it out to its K
# local subscribers. Starts its own nats-server and Cassandra node (deploy/local-cluster.sh in
# a temporary run directory, so shared instances are neither used nor disturbed) and stops
# them at the end. Prints deliveries/s, latency and the CPU per delivery of every process
# (gateway 1, gateway 2, nats-server, Cassandra, control plane) over the measured stretch
# (`--watch-pid`, read from /proc).
#
#   loadtest/cluster-fanout.sh                      # K=1000, N=600, as fast as possible
#   K=1000 N=1000 RATE=100 loadtest/cluster-fanout.sh   # the paced variant
#   ROUNDS=3 ...                                    # repeat the run on the same cluster
#   SKIP_BUILD=1 / LARACHAT_BIN=path ...            # as in profile-fanout.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export LARACHAT_BIN=${LARACHAT_BIN:-$TARGET_DIR/release/larachat}
LOADTEST=$TARGET_DIR/release/larachat-loadtest
K=${K:-1000}
N=${N:-600}
RATE=${RATE:-0}
ROUNDS=${ROUNDS:-1}
ENCODING=${ENCODING:-json}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release -p larachat -p larachat-loadtest >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-cluster-fanout.XXXXXX")
export LARACHAT_RUN_DIR=$WORK/run
export LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please
export LARACHAT_REALTIME__MAX_FRAMES_PER_SEC=1000000 LARACHAT_LIMITS__ENABLED=false
export LARACHAT_SERVER__MAX_CONNECTIONS_PER_IP=0 LARACHAT_DEMO__ENABLED=false LARACHAT_LOG=warn
cleanup() { deploy/local-cluster.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
eval "$(deploy/local-cluster.sh start 2)"

pid_of() { cat "$LARACHAT_RUN_DIR/$1.pid"; }
WATCH=()
for p in cluster/gateway-1 cluster/gateway-2 cluster/control-plane nats cassandra/cassandra; do
  WATCH+=(--watch-pid "$(basename "$p")=$(pid_of "$p")")
done

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round: load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$LOADTEST" fanout --url "$GATEWAY_1_URL" --receiver-url "$GATEWAY_2_URL" \
    --admin-url "$ADMIN_URL" --subscribers "$K" --messages "$N" --rate "$RATE" \
    --encoding "$ENCODING" --server-pid "$(pid_of cluster/gateway-2)" "${WATCH[@]}" \
    --out "$WORK/results" --no-progress
done
echo "results in $WORK/results"
