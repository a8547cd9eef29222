#!/usr/bin/env bash
# The README's distributed-mode steps, scripted: `deploy/local-cluster.sh start 2` (a control
# plane and two gateways over NATS and Cassandra), then an admin, a project, a key, an end user
# and a message sent through gateway 1 and read through gateway 2; `status`; `stop`.
#
# Usage: scripts/cluster-smoke.sh   (uses target/debug/larachat unless LARACHAT_BIN is set;
#        NATS and Cassandra already started by deploy/nats.sh / deploy/cassandra.sh are reused
#        and left running)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${LARACHAT_BIN:-}" ]; then
  cargo build -q --bin larachat
  export LARACHAT_BIN=target/debug/larachat
fi
export LARACHAT_ADMIN_EMAIL=smoke@example.com LARACHAT_ADMIN_PASSWORD=change-me-please
export LARACHAT_CLUSTER_KEYSPACE="lc_smoke_$(date +%s)_$$"
trap 'deploy/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT

passed=0
failed=0
check() { # check "description" command...
  local what=$1; shift
  if "$@"; then echo "ok   - $what"; passed=$((passed + 1));
  else echo "FAIL - $what"; failed=$((failed + 1)); fi
}
json() { python3 -c "import sys, json; print(json.load(sys.stdin)$1)"; }
post() { # post URL TOKEN BODY
  curl -sf "$1" -H "authorization: Bearer $2" -H 'content-type: application/json' -d "$3"
}

started=$(date +%s.%N)
eval "$(deploy/local-cluster.sh start 2)"
echo "# cluster up in $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s: admin $ADMIN_URL, gateways $GATEWAY_1_URL $GATEWAY_2_URL"
check "status: every process ready" deploy/local-cluster.sh status

ADMIN=$(post "$ADMIN_URL/api/admin/login" "" \
  "{\"email\":\"$LARACHAT_ADMIN_EMAIL\",\"password\":\"$LARACHAT_ADMIN_PASSWORD\"}" | json '["token"]')
check "admin login on the control plane" test -n "$ADMIN"
PROJECT=$(post "$ADMIN_URL/api/admin/projects" "$ADMIN" '{"name":"Smoke"}' | json '["id"]')
KEY=$(post "$ADMIN_URL/api/admin/projects/$PROJECT/api-keys" "$ADMIN" \
  '{"name":"backend","scopes":["read","write"]}' | json '["key"]')
check "project and secret key created" test -n "$KEY"
check "the Admin API is not served by gateways" \
  test "$(curl -s -o /dev/null -w '%{http_code}' "$GATEWAY_1_URL/api/admin/projects")" = 404

USER_ID=$(post "$GATEWAY_1_URL/api/v1/users" "$KEY" \
  '{"user_identifier":"customer-1","name":"Ada"}' | json '["user"]["id"]')
CONV=$(post "$GATEWAY_1_URL/api/v1/conversations" "$KEY" \
  "{\"members\":[\"$USER_ID\"]}" | json '["id"]')
MSG=$(post "$GATEWAY_1_URL/api/v1/conversations/$CONV/messages" "$KEY" \
  '{"text":"sent through gateway 1","client_msg_id":"smoke-1","sender":{"type":"agent","id":"ana"}}' \
  | json '["message"]["id"]')
check "message sent through gateway 1" test -n "$MSG"
READ=$(curl -sf "$GATEWAY_2_URL/api/v1/conversations/$CONV/messages" -H "authorization: Bearer $KEY" \
  | json '["data"][-1]["id"]')
check "the same message read through gateway 2" test "$READ" = "$MSG"

deploy/local-cluster.sh stop >/dev/null
check "stop leaves no cluster process" sh -c '! deploy/local-cluster.sh status >/dev/null 2>&1'

echo "# cluster smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
