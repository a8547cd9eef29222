#!/usr/bin/env bash
# The dashboard's checks (docs/dashboard.md):
# 1. its committed build (dashboard/dist/, embedded in the binary by build.rs) is exactly what
#    `npm ci && npm run build` makes from dashboard/src with the locked packages: a change to the
#    sources without a rebuild, or a hand-edited asset, fails here;
# 2. its real-browser tests (dashboard/test/, Chromium through playwright-core, axe-core) against
#    the real `larachat` binary. Screenshots land in dashboard/test-artifacts/.
# npm keeps its cache in ~/.npm. Chromium comes from apt only when /usr/bin/chromium is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== dashboard build (npm ci && npm run build)"
(cd dashboard && npm ci --no-audit --no-fund && npm run build)
if ! git diff --exit-code --stat -- dashboard/dist || [ -n "$(git status --porcelain -- dashboard/dist)" ]; then
  git status --short -- dashboard/dist
  echo "dashboard/dist differs from a fresh build of dashboard/src: rebuild it" \
    "(cd dashboard && npm ci && npm run build) and commit dashboard/dist" >&2
  exit 1
fi
echo "== dashboard build matches the committed dashboard/dist"

if [ "${LARACHAT_DASHBOARD_BUILD_ONLY:-}" = 1 ]; then exit 0; fi
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Chromium (apt)"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
echo "== building larachat (embeds dashboard/dist)"
cargo build --bin larachat
bin="$(pwd)/target/debug/larachat"
echo "== dashboard tests (real browser, axe-core)"
(cd dashboard && LARACHAT_BIN="$bin" npm test)
# The inbox against a control plane and a gateway on two origins (NATS + Cassandra needed).
if [ -n "${LARACHAT_TEST_NATS_URL:-}" ] && [ -n "${LARACHAT_TEST_CASSANDRA:-}" ]; then
  echo "== dashboard in distributed mode (control plane + gateway, real browser)"
  (cd dashboard && LARACHAT_BIN="$bin" node --test test/distributed.mjs)
else
  echo "== NOT RUN: dashboard/test/distributed.mjs needs LARACHAT_TEST_NATS_URL and LARACHAT_TEST_CASSANDRA (deploy/nats.sh start, deploy/cassandra.sh start)"
fi
