#!/usr/bin/env bash
# The widget's checks: typecheck, then `npm test` in widget/ (the size test and the real-browser
# end-to-end tests of widget/test/browser.test.mjs, which drive Debian's Chromium through
# playwright-core against the real `larachat` binary). Idempotent and quick when everything is
# installed already: Chromium comes from apt only when /usr/bin/chromium is missing.
# Screenshots land in widget/test-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Chromium (apt)"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi

echo "== widget dependencies"
if [ -f widget/package-lock.json ]; then
  (cd widget && npm ci --no-audit --no-fund)
else
  (cd widget && npm install --no-audit --no-fund)
fi

echo "== building larachat (serves widget/src/*.js)"
cargo build --bin larachat
# Given to the tests only: the server itself reads every LARACHAT_* variable as configuration.
bin="$(pwd)/target/debug/larachat"

echo "== widget typecheck"
(cd widget && npm run typecheck)
echo "== widget tests (size, real browser)"
(cd widget && LARACHAT_BIN="$bin" npm test)
