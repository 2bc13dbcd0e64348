#!/bin/bash
# Bad input everywhere gets a clear 4xx naming the problem, and writes nothing.
. "$(dirname "$0")/lib.sh"

snapshot() {
	sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" \
		"SELECT count(*) FROM tokens; SELECT count(*) FROM hosts; SELECT count(*) FROM operations;
		 SELECT group_concat(name || maintenance || labels) FROM hosts;"
}
before=$(snapshot)

check() { # check STATUS FIELD METHOD PATH BODY
	local want=$1 field=$2 body=${5:-}
	api "$3" "$4" "$body"
	expect_status "$want" "$3 $4 ${body:0:60}"
	[ "$(jqb .error)" != null ] && [ -n "$(jqb .error)" ] || fail "no error message for $3 $4"
	if [ -n "$field" ]; then
		[ "$(jqb .field)" = "$field" ] || fail "error for $3 $4 names field '$(jqb .field)', want '$field'"
	fi
}

check 400 "" POST /api/v1/tokens '{"kind":'
check 400 "" POST /api/v1/tokens '{"kind":"api"} trailing'
check 400 "" POST /api/v1/tokens '["kind"]'
check 400 "" POST /api/v1/tokens ''
check 400 kind POST /api/v1/tokens '{"kind":7}'
check 400 kind POST /api/v1/tokens '{"kind":"root"}'
check 400 role POST /api/v1/tokens '{"kind":"api","role":"god"}'
check 400 role POST /api/v1/tokens '{"kind":"api"}'
check 400 colour POST /api/v1/tokens '{"kind":"join","colour":"red"}'
check 400 expires_in POST /api/v1/tokens '{"kind":"join","expires_in":-5}'
check 400 expires_in POST /api/v1/tokens '{"kind":"join","expires_in":"soon"}'
check 400 maintenance PATCH /api/v1/hosts/h1 '{"maintenance":"yes"}'
check 400 labels PATCH /api/v1/hosts/h1 '{"labels":{"bad key!":"x"}}'
check 400 labels PATCH /api/v1/hosts/h1 '{"labels":{"k":5}}'
check 400 labels PATCH /api/v1/hosts/h1 '{"labels":["a"]}'
check 400 extra PATCH /api/v1/hosts/h1 '{"maintenance":true,"extra":1}'
check 400 name GET /api/v1/hosts/BAD_NAME
check 400 name GET "/api/v1/hosts/$(printf 'a%.0s' {1..64})"
check 400 name GET /api/v1/hosts/-lead
check 400 name GET /api/v1/hosts/etc.passwd
check 400 id GET /api/v1/operations/NOT!AN!ID
check 400 wait GET "/api/v1/operations/abc?wait=999"
check 400 limit GET "/api/v1/operations?limit=0"
check 400 status GET "/api/v1/operations?status=sleeping"
check 400 bogus GET "/api/v1/hosts?bogus=1"
check 400 type GET "/api/v1/events?type=no-such-event"
check 400 id DELETE /api/v1/tokens/abc
check 400 force DELETE "/api/v1/hosts/h1?force=maybe"
pass "malformed JSON, wrong types, unknown fields and bad names get 400 naming the field"

check 404 "" GET /api/v1/hosts/nosuchhost
check 404 "" GET /api/v1/operations/0123456789abcdef
check 404 "" GET /api/v1/nothing/here
check 404 "" DELETE /api/v1/tokens/999999
pass "unknown resources get 404"

api PUT /api/v1/hosts
expect_status 405
expect "405 has an Allow header listing GET" grep -qi "^Allow: GET" <<<"$HEADERS"
api DELETE /api/v1
expect_status 405
api POST /api/v1/hosts/h1 '{}'
expect_status 405
expect "405 Allow lists PATCH and DELETE" grep -qi "^Allow:.*PATCH.*DELETE" <<<"$HEADERS"
pass "wrong methods get 405 with Allow"

big=$(head -c 1100000 /dev/zero | tr '\0' 'x')
api POST /api/v1/tokens "{\"kind\":\"join\",\"name\":\"$big\"}"
expect_status 413
# Without Content-Length (chunked), the limit still holds.
STATUS=$(printf '{"kind":"join","name":"%s"}' "$big" | curl -sS --cacert "$KUMO_CACERT" -o /dev/null -w '%{http_code}' \
	-H "Authorization: Bearer $ADMIN" -H 'Transfer-Encoding: chunked' --data-binary @- "$KUMO_URL/api/v1/tokens")
expect_status 413 "chunked body"
pass "bodies over the limit get 413"

api PATCH /api/v1/hosts/h1 '{"labels":{"rack":"r1"},"maintenance":"no"}'
expect_status 400
after=$(snapshot)
[ "$before" = "$after" ] || fail "a rejected request changed the database: before=[$before] after=[$after]"
pass "nothing was written by any rejected request"
