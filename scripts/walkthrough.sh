#!/usr/bin/env bash
# The README walkthrough, scripted against the real binary: bootstrap an admin, create a
# project and a key, identify an end user, start a conversation, talk over HTTP and over two
# realtime sockets (agent and end user), then SIGKILL the server, restart it and check that
# every acknowledged message is still there.
#
# Usage: scripts/walkthrough.sh            (builds debug binaries if needed)
#        LARACHAT_BIN=… CHAT_BIN=… scripts/walkthrough.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${LARACHAT_BIN:-}" ] || [ -z "${CHAT_BIN:-}" ]; then
  cargo build -q --bin larachat --example chat
fi
LARACHAT_BIN=${LARACHAT_BIN:-target/debug/larachat}
CHAT_BIN=${CHAT_BIN:-target/debug/examples/chat}

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check "description" command...
  local what=$1; shift
  if "$@"; then echo "ok   - $what"; passed=$((passed + 1));
  else echo "FAIL - $what"; failed=$((failed + 1)); fi
}
json() { python3 -c "import sys, json; print(json.load(sys.stdin)$1)"; }

start_server() {
  : > "$work/stdout"
  LARACHAT_ADMIN_EMAIL=admin@example.com LARACHAT_ADMIN_PASSWORD=change-me-please LARACHAT_LOG=warn \
    "$LARACHAT_BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data" > "$work/stdout" 2> "$work/stderr" &
  server_pid=$!
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$work/stdout"; then break; fi
    sleep 0.1
  done
  BASE=$(sed -n 's/^larachat listening on //p' "$work/stdout")
  [ -n "$BASE" ] || { cat "$work/stderr"; echo "server did not start"; exit 1; }
  WS=${BASE/http:/ws:}/realtime/v1
}

start_server
echo "# server at $BASE"

# 1. Admin: log in, create a project and a secret key.
ADMIN=$(curl -sf "$BASE/api/admin/login" -H 'content-type: application/json' \
  -d '{"email":"admin@example.com","password":"change-me-please"}' | json '["token"]')
check "admin login returns a token" test -n "$ADMIN"
PROJECT=$(curl -sf "$BASE/api/admin/projects" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"name":"Acme"}' | json '["id"]')
check "project created" test -n "$PROJECT"
KEY=$(curl -sf "$BASE/api/admin/projects/$PROJECT/api-keys" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"name":"backend","scopes":["read","write"]}' | json '["key"]')
check "secret key issued" test "${KEY:0:8}" = "sk_live_"

# 2. Client API: identify an end user, start a conversation, send, page, read, type.
curl -sf "$BASE/api/v1/users" -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"user_identifier":"user-123","name":"John Doe","email":"john@example.com"}' > "$work/user.json"
USER_ID=$(json '["user"]["id"]' < "$work/user.json")
USER_TOKEN=$(json '["token"]' < "$work/user.json")
check "end user identified with a token" test -n "$USER_TOKEN"
AGAIN=$(curl -sf "$BASE/api/v1/users" -H "authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"user_identifier":"user-123"}' | json '["user"]["id"]')
check "identifying again returns the same user" test "$AGAIN" = "$USER_ID"
CONV=$(curl -sf "$BASE/api/v1/conversations" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d "{\"subject\":\"Order #42\",\"members\":[\"$USER_ID\"]}" | json '["id"]')
check "conversation started" test -n "$CONV"
FIRST=$(curl -sf "$BASE/api/v1/conversations/$CONV/messages" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' \
  -d '{"text":"Hi John, how can we help?","client_msg_id":"welcome-1","sender":{"type":"agent","id":"ana","name":"Ana"}}' \
  | json '["message"]["id"]')
DUP=$(curl -sf "$BASE/api/v1/conversations/$CONV/messages" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' \
  -d '{"text":"Hi John, how can we help?","client_msg_id":"welcome-1","sender":{"type":"agent","id":"ana","name":"Ana"}}' \
  | json '["duplicate"]')
check "a retried send is recognised as a duplicate" test "$DUP" = "True"
curl -sf "$BASE/api/v1/conversations/$CONV/messages" -H "authorization: Bearer $USER_TOKEN" \
  -H 'content-type: application/json' -d '{"text":"My order has not arrived"}' > /dev/null
COUNT=$(curl -sf "$BASE/api/v1/conversations/$CONV/messages?limit=1" -H "authorization: Bearer $KEY" | json '["has_more"]')
check "history pages with a cursor (limit=1 has more)" test "$COUNT" = "True"
READ=$(curl -sf "$BASE/api/v1/conversations/$CONV/read" -H "authorization: Bearer $USER_TOKEN" \
  -H 'content-type: application/json' -d "{\"message_id\":\"$FIRST\"}" | json '["last_read_message_id"]')
check "end user marks the conversation read" test "$READ" = "$FIRST"
TYPING=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/api/v1/conversations/$CONV/typing" \
  -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d '{"state":"start"}')
check "typing accepted" test "$TYPING" = "202"

# 3. Realtime: an agent socket and an end-user socket talk live.
(sleep 1.5; echo "Sorry about that, it ships today"; sleep 3) \
  | "$CHAT_BIN" "$WS" "$KEY" "$CONV" > "$work/agent.out" &
agent_pid=$!
(sleep 3; echo "Thanks!") | "$CHAT_BIN" "$WS" "$USER_TOKEN" "$CONV" > "$work/enduser.out" &
user_pid=$!
wait $agent_pid $user_pid || true
check "end user received the agent's live message" \
  grep -q '"type":"message".*Sorry about that, it ships today' "$work/enduser.out"
check "agent received the end user's live message" grep -q '"type":"message".*Thanks!' "$work/agent.out"
check "both sends were acknowledged" \
  test "$(cat "$work/agent.out" "$work/enduser.out" | grep -c '"type":"ack"')" = 2

# 4. Durability: SIGKILL, restart, everything acknowledged is there.
kill -9 "$server_pid"; wait "$server_pid" 2>/dev/null || true
start_server
TEXTS=$(curl -sf "$BASE/api/v1/conversations/$CONV/messages" -H "authorization: Bearer $KEY" \
  | json '["data"]' )
for t in "Hi John, how can we help?" "My order has not arrived" "Sorry about that, it ships today" "Thanks!"; do
  check "after SIGKILL and restart: \"$t\"" grep -qF "$t" <<< "$TEXTS"
done
N=$(curl -sf "$BASE/api/v1/conversations/$CONV/messages" -H "authorization: Bearer $KEY" | json '["data"].__len__()')
check "exactly 4 messages stored" test "$N" = 4

echo "walkthrough: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
