#!/usr/bin/env bash
# Runs every check and test of the repository. This is the README's test command and what
# .ci/run calls. It installs and starts what the tests need: curl and python3 (walkthrough),
# Debian's faketime (a gateway under a shifted clock in tests/faults.rs), the
# standardwebhooks PyPI package (webhook signatures checked by an independent implementation),
# a real nats-server (deploy/nats.sh, built once with `go install`), a real Cassandra 5.0
# node (deploy/cassandra.sh, jars from Maven Central, JDK 17), promtool (from Debian's
# prometheus package), Chromium and the widget's and dashboard's npm packages (scripts/browser-test.sh,
# scripts/dashboard-check.sh). Quick
# when those are already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need curl || ! need python3 || ! compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null; then
  # faketime: tests/faults.rs runs a gateway under a shifted clock (libfaketime).
  apt-get update -qq && apt-get install -y -qq curl python3 faketime >/dev/null
fi

echo "== services: nats-server, Cassandra 5.0"
deploy/nats.sh install
deploy/cassandra.sh install
trap 'deploy/nats.sh stop >/dev/null 2>&1 || true; deploy/cassandra.sh stop >/dev/null 2>&1 || true' EXIT
t0=$(date +%s.%N)
eval "$(deploy/nats.sh start)"
t1=$(date +%s.%N)
eval "$(deploy/cassandra.sh start)"
t2=$(date +%s.%N)
python3 -c "print(f'== services ready: nats-server {$t1 - $t0:.1f} s, Cassandra {$t2 - $t1:.1f} s')"
export LARACHAT_TEST_NATS_URL="$NATS_URL" LARACHAT_NATS_SERVER_BIN LARACHAT_TEST_CASSANDRA

# promtool checks the /metrics exposition (tests/edge.rs). Taken from Debian's prometheus
# package without installing it (no daemon, no service user), cached under ~/.cache/larachat.
promtool="$HOME/.cache/larachat/prometheus/usr/bin/promtool"
if [ ! -x "$promtool" ]; then
  echo "== promtool (Debian's prometheus package, extracted)"
  tmp="$(mktemp -d)"
  (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; })
  mkdir -p "$HOME/.cache/larachat/prometheus"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$HOME/.cache/larachat/prometheus"
  rm -rf "$tmp"
fi
export LARACHAT_PROMTOOL="$promtool"

# The independent Standard Webhooks implementation the webhook tests verify signatures with
# (webhooks/tests/receiver.py), from PyPI into a cached venv.
WH_VENV="$HOME/.cache/larachat/webhooks-venv"
WH_TOOLS="standardwebhooks==1.1.0"
if [ ! -x "$WH_VENV/bin/python" ] || [ "$(cat "$WH_VENV/.larachat-tools" 2>/dev/null)" != "$WH_TOOLS" ]; then
  echo "== standardwebhooks (PyPI, cached venv)"
  python3 -m venv "$WH_VENV"
  "$WH_VENV/bin/pip" install -q --disable-pip-version-check $WH_TOOLS
  echo "$WH_TOOLS" >"$WH_VENV/.larachat-tools"
fi
export LARACHAT_WEBHOOKS_PYTHON="$WH_VENV/bin/python"

FEATURES="larachat-broker/nats larachat-store/scylla"
echo "== format"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked --features "$FEATURES" -- -D warnings
echo "== unit, contract and integration tests (SQLite, in-process bus, real NATS, real Cassandra)"
cargo test --workspace --locked --features "$FEATURES"
echo "== README walkthrough through the real binary"
scripts/walkthrough.sh
echo "== OpenAPI: validator, generated TypeScript client, schemathesis"
scripts/openapi-check.sh
echo "== README distributed mode: deploy/local-cluster.sh with two gateways"
scripts/cluster-smoke.sh
echo "== widget: typecheck, size budget, real-browser tests"
scripts/browser-test.sh
echo "== dashboard: committed build = fresh build, real-browser and axe-core tests"
scripts/dashboard-check.sh
