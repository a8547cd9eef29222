#!/usr/bin/env bash
# Checks /openapi.json of a real `larachat serve` (debug build, loopback, temp data dir):
#   1. openapi-spec-validator accepts it;
#   2. openapi-typescript generates a TypeScript client from it, which `tsc --strict`
#      type-checks together with scripts/openapi/client-check.ts;
#   3. schemathesis runs a bounded pass (fixed seed, SCHEMATHESIS_EXAMPLES cases per operation,
#      default 50) over the Client API (with a secret key) and the Admin API (with an admin
#      token): it must end with 0 server errors and 0 status-code, content-type or response
#      schema conformance failures. Rate limits are off on that server, so that the budget
#      tests the API rather than the limiter (tests/limits.rs tests the limiter). One worker:
#      with several, schemathesis 4.32 hits a thread-safety error inside hypothesis ("AST
#      constructor recursion depth mismatch").
# Tools install once from PyPI and npm into ~/.cache/larachat (quick when present).
# Called by scripts/test.sh. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${LARACHAT_CACHE_DIR:-$HOME/.cache/larachat}
VENV=$CACHE/openapi-venv
PY_TOOLS=("schemathesis==4.32.5" "openapi-spec-validator==0.7.2")
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-50}

echo "== openapi: tools"
stamp="$VENV/.larachat-tools"
if [ ! -x "$VENV/bin/schemathesis" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PY_TOOLS[*]}" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}"
  echo "${PY_TOOLS[*]}" >"$stamp"
fi
if [ ! -x scripts/openapi/node_modules/.bin/openapi-typescript ]; then
  (cd scripts/openapi && npm install --no-audit --no-fund --no-package-lock --silent)
fi

cargo build -q --bin larachat
BIN=$ROOT/target/debug/larachat
WORK=$(mktemp -d "${TMPDIR:-/tmp}/larachat-openapi.XXXXXX")
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# The server reads LARACHAT_<SECTION>__<KEY> variables: give it only its own.
env -u LARACHAT_CONFIG \
  LARACHAT_ADMIN_EMAIL=openapi@example.com LARACHAT_ADMIN_PASSWORD=openapi-check-password \
  LARACHAT_DEMO__ENABLED=false LARACHAT_LIMITS__ENABLED=false LARACHAT_LOG=warn \
  LARACHAT_STORAGE__SQLITE_SYNCHRONOUS=normal \
  "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/server.out" 2>"$WORK/server.err" &
PID=$!
URL=""
for _ in $(seq 1 300); do
  URL=$(sed -n 's/^larachat listening on \(http:\/\/[0-9.:]*\).*$/\1/p' "$WORK/server.out" | head -n1)
  [ -n "$URL" ] && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "the server did not start" >&2; cat "$WORK/server.err" >&2; exit 1; }
curl -sf "$URL/openapi.json" -o "$WORK/openapi.json"

echo "== openapi: openapi-spec-validator"
"$VENV/bin/openapi-spec-validator" "$WORK/openapi.json"

echo "== openapi: openapi-typescript client, tsc --strict"
mkdir -p scripts/openapi/generated
scripts/openapi/node_modules/.bin/openapi-typescript "$WORK/openapi.json" \
  -o scripts/openapi/generated/openapi.d.ts --silent
(cd scripts/openapi && node_modules/.bin/tsc -p tsconfig.json)
echo "   generated client type-checks"

json() { python3 -c "import sys, json; print(json.load(sys.stdin)$1)"; }
ADMIN=$(curl -sf "$URL/api/admin/login" -H 'content-type: application/json' \
  -d '{"email":"openapi@example.com","password":"openapi-check-password"}' | json '["token"]')
PROJECT=$(curl -sf "$URL/api/admin/projects" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"name":"schemathesis"}' | json '["id"]')
KEY=$(curl -sf "$URL/api/admin/projects/$PROJECT/api-keys" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"name":"schemathesis","scopes":["read","write"]}' | json '["key"]')

st() {
  local name=$1 token=$2 regex=$3
  echo "== openapi: schemathesis, $name ($EXAMPLES examples per operation, seed 1)"
  local out=$WORK/schemathesis-$name.txt status=0
  # From the work directory: schemathesis keeps a cache (.schemathesis/) where it runs.
  (cd "$WORK" && "$VENV/bin/schemathesis" run "$URL/openapi.json" -H "Authorization: Bearer $token" \
    --include-path-regex "$regex" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$EXAMPLES" --seed 1 --workers 1 --no-color --generation-database none \
    --request-timeout 10) >"$out" 2>&1 || status=$?
  # The summary: operations, phases, failures and the number of cases.
  sed -n '/= SUMMARY =/,$p' "$out" | grep -vE '^\s*$' | sed 's/^/   /'
  if [ "$status" -ne 0 ]; then
    echo "!! schemathesis found failures ($name):" >&2
    sed -n "/= \(FAILURES\|ERRORS\) =/,/= SUMMARY =/p" "$out" | head -n 200 >&2
    exit 1
  fi
}
# The Client API first: the Admin API pass may delete projects.
st client-api "$KEY" '^/api/v1/'
st admin-api "$ADMIN" '^/api/admin/'
if grep -qE "panicked|ERROR" "$WORK/server.err"; then
  echo "!! the server logged errors during the run:" >&2
  grep -E "panicked|ERROR" "$WORK/server.err" | head -n 20 >&2
  exit 1
fi
echo "== openapi: ok"
