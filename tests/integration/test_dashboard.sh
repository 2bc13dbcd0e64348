#!/bin/bash
# test_dashboard.sh - the web dashboard in a real browser (tests/browser/dashboard.mjs:
# Playwright driving Debian's Chromium, headless): sign-in, live updates over SSE, a
# container created from the form, its logs, a VM's serial console, a form error next to
# its field, a viewer's disabled actions, a revoked token returning to sign-in, page
# weight and the time to draw a large overview. Screenshots land in
# BUILD/artifacts/dashboard/. playwright-core comes pinned from tests/browser's lockfile.
. "$(dirname "$0")/lib.sh"

VM=dash-vm1
cleanup() {
	api GET "/api/v1/backups?instance=$VM" >/dev/null 2>&1 || true
	for id in $( [ "$STATUS" = 200 ] && jqb '.backups[].id'); do
		api DELETE "/api/v1/backups/$id" >/dev/null 2>&1 || true
	done
	api DELETE /api/v1/backup-stores/dash-store >/dev/null 2>&1 || true
	instances_delete dash-ct1 $VM
	for id in $(api GET '/api/v1/tokens?limit=1000' >/dev/null 2>&1 && jqb '.tokens[] | select(.name == "dash-viewer") | .id'); do
		api DELETE "/api/v1/tokens/$id" >/dev/null 2>&1 || true
	done
}
trap cleanup EXIT
cleanup

command -v chromium >/dev/null || fail "chromium is not installed (deploy/install-deps.sh test)"
NPM_DIR=$KUMO_BUILD_DIR/browser
mkdir -p "$NPM_DIR"
if ! cmp -s "$KUMO_SRC/tests/browser/package-lock.json" "$NPM_DIR/package-lock.json" ||
	[ ! -d "$NPM_DIR/node_modules/playwright-core" ]; then
	cp "$KUMO_SRC/tests/browser/package.json" "$KUMO_SRC/tests/browser/package-lock.json" "$NPM_DIR/"
	(cd "$NPM_DIR" && npm ci --no-audit --no-fund --no-update-notifier >/dev/null) ||
		fail "npm ci of the browser test's lockfile failed"
fi

api POST /api/v1/backup-stores '{"name": "dash-store"}'
[ "$STATUS" = 201 ] || [ "$STATUS" = 409 ] || fail "the backup store the browser backs up to: HTTP $STATUS"
api POST /api/v1/tokens '{"kind": "api", "role": "viewer", "name": "dash-viewer"}'
expect_status 201
VIEWER=$(jqb .token)

vm_create "{\"name\": \"$VM\", \"type\": \"vm\", \"memory\": {\"mb\": 192},
	\"disks\": [{\"name\": \"root\", \"image\": \"$TEST_IMAGE\"}], \"nics\": [{\"model\": \"virtio\"}]}"

# Typing into a serial console: bad input is refused and names the problem.
api POST /api/v1/instances/$VM/console '{"data": ""}'
expect_status 400
api POST /api/v1/instances/$VM/console '{"data": "x", "extra": 1}'
expect_status 400
api POST /api/v1/instances/$VM/console '{"data": "uptime\r"}' "$VIEWER"
expect_status 403
api POST /api/v1/instances/no-such-vm/console '{"data": "x"}'
expect_status 404
pass "console input: empty data, unknown fields 400; a viewer 403; no such VM 404"

# The terminal's WebSocket: the token comes as a subprotocol (never in the URL) and is
# checked like a bearer; a viewer may not type into a guest; only a running VM has one.
ws_status() { # path token|-: the status of a WebSocket handshake
	local proto=kumo
	[ "$2" != "-" ] && proto="kumo, kumo.token.$2"
	curl -sS --cacert "$KUMO_CACERT" -o /dev/null -w '%{http_code}' --max-time 10 \
		-H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
		-H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H "Sec-WebSocket-Protocol: $proto" \
		"$KUMO_URL$1" || true
}
[ "$(ws_status /api/v1/instances/$VM/console/ws -)" = 401 ] || fail "a console socket without a token was not refused with 401"
[ "$(ws_status /api/v1/instances/$VM/console/ws "$VIEWER")" = 403 ] || fail "a viewer's console socket was not refused with 403"
[ "$(ws_status /api/v1/instances/no-such-vm/console/ws "$ADMIN")" = 404 ] || fail "a console socket of no VM was not 404"
api GET /api/v1/instances/$VM/console/ws
expect_status 400 "a console socket asked for without a WebSocket handshake"
[ "$(ws_status /api/v1/instances/$VM/vnc/ws -)" = 401 ] || fail "a screen socket without a token was not refused with 401"
[ "$(ws_status /api/v1/instances/$VM/vnc/ws "$VIEWER")" = 403 ] || fail "a viewer's screen socket was not refused with 403"
pass "console and screen sockets: no token 401, a viewer 403, no such VM 404, no handshake 400"
# The screen is never on the network: QEMU's VNC listens on a unix socket only.
qpid=$(cat "$KUMO_LAB_DIR"/hosts/*/local/instances/$VM/qemu.pid 2>/dev/null | head -1)
[ -n "$qpid" ] || fail "no QEMU pid file for $VM"
vnc=$(tr '\0' '\n' <"/proc/$qpid/cmdline" | grep -A1 -x -- -vnc | tail -1)
[[ $vnc == unix:*/vnc.sock ]] || fail "$VM's VNC is not a unix socket: '$vnc'"
pass "$VM's VNC server is a unix socket on its host ($vnc), not a port"

cp "$KUMO_SRC/tests/browser/dashboard.mjs" "$NPM_DIR/"
KUMO_URL=$KUMO_URL ADMIN=$ADMIN VIEWER=$VIEWER VM=$VM ARTIFACTS=$KUMO_BUILD_DIR/artifacts/dashboard \
	NODE_EXTRA_CA_CERTS=$KUMO_CACERT node "$NPM_DIR/dashboard.mjs" ||
	fail "the browser test failed (screenshots in $KUMO_BUILD_DIR/artifacts/dashboard)"
pass "dashboard in Chromium"
