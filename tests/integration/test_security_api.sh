#!/bin/bash
# The API's least-privilege and accountability (issue 10, items 7 and 8): viewers see
# no container secret and events carry none; tokens expire, rotate and never reuse an
# id; every mutating request is in the audit log (admins only); a revoked or expired
# token's streams and long polls end within a second; a token holds a bounded number
# of them.
. "$(dirname "$0")/lib.sh"

DB="$KUMO_LAB_DIR/controller/kumo.db"
CT=sec-ct
SECRET_ENV="pw-$RANDOM-envsecret"
SECRET_CMD="cmd-$RANDOM-argsecret"
tmp=$(mktemp -d)
BG_PIDS=()
stopped_agent=""
cleanup() {
	local p
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -z "$stopped_agent" ] || kill -CONT "$stopped_agent" 2>/dev/null || true
	api DELETE "/api/v1/instances/$CT?force=1" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
sql() { sqlite3 -cmd '.timeout 5000' "$DB" "$@"; }
ms() { date +%s%3N; }

# sse TOKEN FILE: an event stream in the background (its pid in SSE_PID).
sse() {
	curl -sS -N --cacert "$KUMO_CACERT" -H "Authorization: Bearer $1" \
		"$KUMO_URL/api/v1/events" >"$2" 2>/dev/null &
	SSE_PID=$!
	BG_PIDS+=("$SSE_PID")
}
gone() { ! kill -0 "$1" 2>/dev/null; }
opened() { grep -q "kumo events" "$1" 2>/dev/null; }

api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"sec-viewer"}'
expect_status 201
VIEWER=$(jqb .token)
api POST /api/v1/tokens '{"kind":"api","role":"operator","name":"sec-operator"}'
expect_status 201
OPERATOR=$(jqb .token)
OPERATOR_ID=$(jqb .id)

# ---- secrets -------------------------------------------------------------------------
sse "$ADMIN" "$tmp/admin-events"
wait_until 10 "the admin's event stream opened" opened "$tmp/admin-events"
body=$(jq -cn --arg n "$CT" --arg e "$SECRET_ENV" --arg c "$SECRET_CMD" \
	'{name: $n, type: "container", image: "busybox:latest",
	  command: ["sh", "-c", ("echo " + $c + "; sleep 3600")], env: {DB_PASSWORD: $e, MODE: "x"}}')
api POST /api/v1/instances "$body" "$OPERATOR"
expect_status 202 "create $CT"
wait_op "$(jqb .id)" 180
op_ok
api GET "/api/v1/instances/$CT" "" "$VIEWER"
expect_status 200
[ "$(jqb .env.DB_PASSWORD)" = "***" ] && [ "$(jqb .env.MODE)" = "***" ] ||
	fail "a viewer reads env values: $(jqb -c .env)"
[ "$(jqb .command)" = null ] || fail "a viewer reads the command: $(jqb -c .command)"
[ "$(jqb -c .redacted)" = '["env","command"]' ] || fail "no 'redacted' list for the viewer"
grep -q -- "$SECRET_ENV\|$SECRET_CMD" <<<"$BODY" && fail "a secret is in the viewer's GET"
api GET /api/v1/instances "" "$VIEWER"
grep -q -- "$SECRET_ENV\|$SECRET_CMD" <<<"$BODY" && fail "a secret is in the viewer's list"
api GET "/api/v1/operations?limit=1000" "" "$VIEWER"
grep -q -- "$SECRET_ENV\|$SECRET_CMD" <<<"$BODY" && fail "a secret is in the operations"
api GET "/api/v1/instances/$CT" "" "$OPERATOR"
[ "$(jqb .env.DB_PASSWORD)" = "$SECRET_ENV" ] || fail "the operator does not read env"
[ "$(jqb .redacted)" = null ] || fail "the operator's answer is redacted"
# Events carry neither, for anyone: not in the table, not on the admin's stream.
[ "$(sql "SELECT count(*) FROM events WHERE data LIKE '%$SECRET_ENV%' OR data LIKE '%$SECRET_CMD%'")" = 0 ] ||
	fail "an event holds a container secret"
grep -q "instance-created" "$tmp/admin-events" || fail "the admin's stream missed instance-created"
grep -q -- "$SECRET_ENV\|$SECRET_CMD" "$tmp/admin-events" && fail "an event on the stream holds a secret"
pass "viewers see env values as *** and no command; operations and events carry neither"

# ---- tokens: expiry, ids, used_at, rotation ------------------------------------------
# Ten seconds of life: long enough that a busy machine still uses it before it expires.
at=$(($(ms) + 10000))
api POST /api/v1/tokens "{\"kind\":\"api\",\"role\":\"viewer\",\"expires_at\":$at}"
expect_status 201
[ "$(jqb .expires_at)" = "$at" ] || fail "expires_at not kept"
SHORT=$(jqb .token)
api GET /api/v1 "" "$SHORT"
expect_status 200
short_401() { api GET /api/v1 "" "$SHORT" && [ "$STATUS" = 401 ]; }
wait_until 30 "the token expired" short_401
expect "the 401 says the token expired" grep -q "expired at" <<<"$BODY"
api POST /api/v1/tokens '{"kind":"api","role":"viewer","ttl_s":0}'
expect_status 400
api POST /api/v1/tokens "{\"kind\":\"api\",\"role\":\"viewer\",\"ttl_s\":5,\"expires_at\":$at}"
expect_status 400
api POST /api/v1/tokens '{"kind":"api","role":"viewer","expires_at":1000}'
expect_status 400
pass "tokens expire at expires_at or after ttl_s; an expired one gets 401 saying so"

api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"sec-last"}'
last_id=$(jqb .id)
api DELETE "/api/v1/tokens/$last_id"
expect_status 204
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"sec-next"}'
[ "$(jqb .id)" -gt "$last_id" ] || fail "token id $last_id was given again after its delete"
pass "a deleted token's id is never reused"

api GET /api/v1 "" "$OPERATOR"
used=$(sql "SELECT used_at FROM tokens WHERE id = $OPERATOR_ID")
[ -n "$used" ] || fail "used_at was not recorded for the operator token"
api GET /api/v1 "" "$OPERATOR"
[ "$(sql "SELECT used_at FROM tokens WHERE id = $OPERATOR_ID")" = "$used" ] ||
	fail "used_at was written again within a minute"
api GET /api/v1/tokens
[ "$(jqb '.tokens[] | select(.name == "bootstrap") | .used_at')" != null ] ||
	fail "the bootstrap admin token's used_at is null"
pass "used_at is recorded (at most once a minute per token), the admin token's too"

api POST /api/v1/tokens '{"kind":"api","role":"admin","name":"sec-admin2"}'
A2=$(jqb .token)
A2_ID=$(jqb .id)
api POST "/api/v1/tokens/$A2_ID/actions/rotate" "" "$VIEWER"
expect_status 403
api POST "/api/v1/tokens/$A2_ID/actions/rotate"
expect_status 200
A2_NEW=$(jqb .token)
[ "$(jqb .id)" = "$A2_ID" ] && [ "$A2_NEW" != "$A2" ] && [ "$(jqb .rotated_at)" != null ] ||
	fail "rotate did not give a new secret under the same id"
api GET /api/v1 "" "$A2"
expect_status 401
api GET /api/v1 "" "$A2_NEW"
expect_status 200
# The first admin token too: its file follows, the old secret is dead.
OLD_ADMIN=$ADMIN
boot_id=$(sql "SELECT id FROM tokens WHERE name = 'bootstrap' ORDER BY id LIMIT 1")
api POST "/api/v1/tokens/$boot_id/actions/rotate" "" "$A2_NEW"
expect_status 200
ADMIN=$(cat "$KUMO_TOKEN_FILE")
[ "$ADMIN" = "$(jqb .token)" ] || fail "admin.token does not hold the rotated secret"
[ "$(stat -c %a "$KUMO_TOKEN_FILE")" = 600 ] || fail "admin.token is not 0600 after rotation"
api GET /api/v1 "" "$OLD_ADMIN"
expect_status 401
api GET /api/v1
expect_status 200
api POST /api/v1/tokens/999999/actions/rotate
expect_status 404
pass "a token (the first admin token too) rotates: new secret once, old one dead, same id"

# ---- audit ---------------------------------------------------------------------------
api GET /api/v1/audit "" "$OPERATOR"
expect_status 403
api GET "/api/v1/audit?limit=1000"
expect_status 200
after=$(jqb '[.entries[].id] | max // 0')
api PATCH /api/v1/hosts/h1 '{"labels":{"sec":"1"}}' "$OPERATOR"
expect_status 200
api PATCH /api/v1/hosts/h1 '{"labels":{}}' "$VIEWER"
expect_status 403
api POST /api/v1/hosts/h1/actions/probe "" "$OPERATOR"
expect_status 202
probe_op=$(jqb .id)
wait_op "$probe_op" 60
# A registry push starts with an upload session: audited like the rest.
api POST /v2/sec-audit/blobs/uploads/ "" "$OPERATOR"
expect_status 202
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"sec-audited"}'
expect_status 201
created_secret=$(jqb .token)
api PATCH /api/v1/hosts/h1 '{"labels":{}}' "$OPERATOR"
expect_status 200
api GET "/api/v1/audit?after=$after&limit=1000"
expect_status 200
entry() { jqb -c "[.entries[] | select($1)] | first // empty"; }
e=$(entry '.method == "PATCH" and .status == 200 and .token_id == '"$OPERATOR_ID")
[ -n "$e" ] || fail "the operator's PATCH is not audited"
jq -e '.token_name == "sec-operator" and .role == "operator" and .route == "/api/v1/hosts/{}"
	and .target == "/api/v1/hosts/h1" and (.time > 0)' <<<"$e" >/dev/null || fail "audit entry incomplete: $e"
[ -n "$(entry '.status == 403 and .role == "viewer" and .method == "PATCH"')" ] ||
	fail "the viewer's refused PATCH is not audited"
[ -n "$(entry ".operation == \"$probe_op\" and .status == 202")" ] || fail "the probe's operation id is not audited"
[ -n "$(entry '.route == "/v2/*" and .method == "POST" and .status == 202')" ] || fail "the registry push is not audited"
[ -n "$(entry '.route == "/api/v1/tokens" and .status == 201')" ] || fail "the token create is not audited"
[ -z "$(entry '.method == "GET"')" ] || fail "a GET was audited"
[ "$(sql "SELECT count(*) FROM audit WHERE target LIKE '%kumo_%' OR token_name LIKE '%kumo_%'")" = 0 ] || fail "a secret is in the audit table"
sql "SELECT * FROM audit" | grep -q -- "$created_secret\|$SECRET_ENV" && fail "a secret is in the audit table"
# Paging and the token filter.
api GET "/api/v1/audit?after=$after&limit=1"
[ "$(jqb '.entries | length')" = 1 ] && [ "$(jqb .next)" = "$(jqb '.entries[0].id')" ] || fail "limit=1 paging: $BODY"
first=$(jqb .next)
api GET "/api/v1/audit?after=$first&limit=1"
[ "$(jqb '.entries[0].id')" -gt "$first" ] || fail "after= does not page forward"
api GET "/api/v1/audit?after=$after&token=$OPERATOR_ID&limit=1000"
[ "$(jqb "[.entries[] | select(.token_id != $OPERATOR_ID)] | length")" = 0 ] &&
	[ "$(jqb '.entries | length')" -ge 4 ] || fail "token= does not filter: $BODY"
api GET "/api/v1/audit?bogus=1"
expect_status 400
pass "mutating requests (refused ones, registry pushes) are audited with token, role, route, target, status, operation; admins page and filter"

# ---- streams end with their token; a bounded number per token -----------------------
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"sec-stream"}'
S_TOK=$(jqb .token)
S_ID=$(jqb .id)
sse "$S_TOK" "$tmp/s1"
s1=$SSE_PID
wait_until 10 "the viewer's stream opened" opened "$tmp/s1"
api DELETE "/api/v1/tokens/$S_ID"
expect_status 204
# A stream never ends by itself: ending at all proves the revoke ended it. The bound is
# generous because the machine may be busy; the test asserts no wall-clock time.
wait_until 15 "the revoked token's stream ended" gone "$s1"

# A long poll of a revoked token is answered 401 at once: an operation kept pending
# by a stopped agent (this lab's, by its pidfile), polled by a viewer.
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"sec-poll"}'
P_TOK=$(jqb .token)
P_ID=$(jqb .id)
stopped_agent=$(agent_pid h3)
kill -STOP "$stopped_agent"
api POST /api/v1/hosts/h3/actions/probe "" "$OPERATOR"
expect_status 202
pending_op=$(jqb .id)
curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $P_TOK" -o "$tmp/poll" -w '%{http_code}' \
	"$KUMO_URL/api/v1/operations/$pending_op?wait=60" >"$tmp/poll.code" 2>/dev/null &
poll=$!
BG_PIDS+=("$poll")
polling() { sql "SELECT 1" >/dev/null; sleep 0.3; kill -0 "$poll" 2>/dev/null; }
polling || fail "the long poll ended before the revoke: $(cat "$tmp/poll")"
api DELETE "/api/v1/tokens/$P_ID"
# The poll would last 60 s (its operation stays pending): ending well before proves it.
wait_until 15 "the revoked token's long poll ended" gone "$poll"
kill -CONT "$stopped_agent"
stopped_agent=""
[ "$(cat "$tmp/poll.code")" = 401 ] || fail "the revoked long poll got $(cat "$tmp/poll.code"): $(cat "$tmp/poll")"
wait_op "$pending_op" 60

# An expiring token's stream ends when it expires.
api POST /api/v1/tokens '{"kind":"api","role":"viewer","ttl_s":15}'
E_TOK=$(jqb .token)
sse "$E_TOK" "$tmp/e1"
e1=$SSE_PID
wait_until 15 "the expiring token's stream opened" opened "$tmp/e1"
wait_until 40 "the expired token's stream ended" gone "$e1"
pass "deleting a token ends its event stream and long poll at once (not at the poll's end); expiry ends a stream"

# max_streams_per_token (16 by default): the 17th stream or long poll is refused 429.
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"sec-many"}'
M_TOK=$(jqb .token)
M_PIDS=()
for i in $(seq 1 16); do
	sse "$M_TOK" "$tmp/m$i"
	M_PIDS+=("$SSE_PID")
done
all_open() { for i in $(seq 1 16); do opened "$tmp/m$i" || return 1; done; }
wait_until 30 "16 streams open" all_open
api GET /api/v1/events "" "$M_TOK"
expect_status 429
expect "429 names the limit" grep -q "max_streams_per_token" <<<"$BODY"
api GET "/api/v1/operations/$probe_op?wait=5" "" "$M_TOK"
expect_status 200 "a long poll on a finished operation answers at once"
# Another token is not limited by this one's streams.
sse "$VIEWER" "$tmp/other"
wait_until 10 "another token's stream opens" opened "$tmp/other"
kill "${M_PIDS[0]}"
one_free() {
	local code
	code=$(curl -sS -N --cacert "$KUMO_CACERT" -H "Authorization: Bearer $M_TOK" --max-time 1 \
		-o /dev/null -w '%{http_code}' "$KUMO_URL/api/v1/events" 2>/dev/null || true)
	[ "$code" = 200 ]
}
# A client that left frees its slot at once (its hang-up is noticed), not at a keepalive.
wait_until 15 "a stream may open again once one closed" one_free
pass "a token holds at most max_streams_per_token streams (429 beyond); others are not affected"
