#!/bin/bash
# Auth on every /api/v1 route: 401 without or with a bad token, 403 when the role is
# too low, and nothing written by a refused request.
. "$(dirname "$0")/lib.sh"

# No token, a malformed one, a well-formed unknown one.
api GET /api/v1/hosts "" -
expect_status 401
expect "401 names the need for a token" grep -q "bearer token" <<<"$BODY"
expect "401 carries WWW-Authenticate" grep -qi "^WWW-Authenticate: Bearer" <<<"$HEADERS"
api GET /api/v1/hosts "" "not-a-token"
expect_status 401
api GET /api/v1/hosts "" "kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
expect_status 401
# Unknown routes under /api/ need a token too, so anonymous callers learn nothing.
api GET /api/v1/nosuch "" -
expect_status 401
pass "requests without a valid token get 401"

# Health is open; metrics need a token (metrics_public = no by default).
api GET /healthz "" -
expect_status 200
api GET /metrics "" -
expect_status 401

api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"auth-viewer"}'
expect_status 201
VIEWER=$(jqb .token)
VIEWER_ID=$(jqb .id)
api POST /api/v1/tokens '{"kind":"api","role":"operator","name":"auth-operator"}'
expect_status 201
OPERATOR=$(jqb .token)

api GET /api/v1/tokens
ntokens=$(jqb '.tokens | length')

# Viewer reads but cannot write.
api GET /api/v1/hosts "" "$VIEWER"
expect_status 200
api GET /metrics "" "$VIEWER"
expect_status 200
expect "a viewer reads the metrics" grep -q '^kumo_hosts' <<<"$BODY"
api PATCH /api/v1/hosts/h1 '{"maintenance":true}' "$VIEWER"
expect_status 403
expect "403 names the role needed" grep -q "operator" <<<"$BODY"
api POST /api/v1/hosts/h1/actions/probe '' "$VIEWER"
expect_status 403
api POST /api/v1/tokens '{"kind":"join"}' "$VIEWER"
expect_status 403
# Operator writes hosts but cannot manage tokens or delete hosts.
api POST /api/v1/tokens '{"kind":"api","role":"admin"}' "$OPERATOR"
expect_status 403
api GET /api/v1/tokens "" "$OPERATOR"
expect_status 403
api DELETE /api/v1/hosts/h1?force=1 "" "$OPERATOR"
expect_status 403
api GET /api/v1/hosts/h1
expect_status 200
[ "$(jqb .maintenance)" = false ] || fail "a refused PATCH changed maintenance"
api GET /api/v1/tokens
[ "$(jqb '.tokens | length')" = "$ntokens" ] || fail "a refused POST created a token"
pass "viewer and operator tokens are refused (403) where their role is not enough; nothing written"

# A join token is not an API token.
api POST /api/v1/tokens '{"kind":"join"}'
JOIN=$(jqb .token)
api GET /api/v1/hosts "" "$JOIN"
expect_status 401

# An expiring token stops working; a deleted one at once. Ten seconds of life, so a
# busy machine still uses it before it expires.
api POST /api/v1/tokens '{"kind":"api","role":"viewer","expires_in":10}'
SHORT=$(jqb .token)
api GET /api/v1 "" "$SHORT"
expect_status 200
short_refused() { api GET /api/v1 "" "$SHORT" && [ "$STATUS" = 401 ]; }
wait_until 30 "the 10 s token refused once expired" short_refused
api DELETE "/api/v1/tokens/$VIEWER_ID"
expect_status 204
api GET /api/v1 "" "$VIEWER"
expect_status 401
pass "join tokens, expired and deleted tokens get 401"

# Tokens are stored as SHA-256 digests, never in clear.
db="$KUMO_LAB_DIR/controller/kumo.db"
if sqlite3 "$db" "SELECT digest FROM tokens" | grep -q "kumo_"; then fail "a token is stored in clear"; fi
digest=$(printf %s "$OPERATOR" | sha256sum | cut -d' ' -f1)
[ "$(sqlite3 "$db" "SELECT count(*) FROM tokens WHERE digest = '$digest'")" = 1 ] ||
	fail "the operator token's SHA-256 digest is not in the database"
[ "$(stat -c %a "$KUMO_TOKEN_FILE")" = 600 ] || fail "admin token file is not 0600"
pass "tokens stored as SHA-256 digests; admin token file is 0600"
