#!/bin/bash
# test_dashboard.sh - the web dashboard in a real browser (tests/browser/dashboard.mjs:
# Playwright driving Debian's Chromium, headless): sign-in, live updates over SSE, a
# container created from the form, its logs, a VM's serial console, a form error next to
# its field, a VM backup's progress bar moving, a viewer's disabled actions, a revoked
# token returning to sign-in, page weight and the time to draw a large overview; here,
# around it: the HA view's history from the controller (a maintenance round made before
# the browser signs in), a VNC relay the agent ends by itself after the controller is
# killed, and last (dashboard_migrate.mjs) a migration started from the migrate picker
# with its progress bar moving. Screenshots land in BUILD/artifacts/dashboard/.
# playwright-core comes pinned from tests/browser's lockfile.
. "$(dirname "$0")/lib.sh"

VM=dash-vm1
WSPID=""
MHOST=""
cleanup() {
	[ -n "$WSPID" ] && kill "$WSPID" 2>/dev/null || true
	[ -n "$MHOST" ] && api PATCH "/api/v1/hosts/$MHOST" '{"maintenance": false}' >/dev/null 2>&1 || true
	for inst in $VM dash-ct1; do
		api GET "/api/v1/backups?instance=$inst" >/dev/null 2>&1 || true
		for id in $( [ "$STATUS" = 200 ] && jqb '.backups[].id'); do
			api DELETE "/api/v1/backups/$id" >/dev/null 2>&1 || true
		done
	done
	api DELETE /api/v1/backup-stores/dash-store >/dev/null 2>&1 || true
	instances_delete dash-ct1 dash-ct1r dash-ct1s $VM
	for id in $(api GET '/api/v1/tokens?limit=1000' >/dev/null 2>&1 && jqb '.tokens[] | select(.name == "dash-viewer" or .name == "dash-revoked") | .id'); do
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
# A console held open ends when its token is revoked; a ping over 125 bytes (a control
# frame the RFC caps) ends a socket with 1002 instead of being echoed.
api POST /api/v1/tokens '{"kind": "api", "role": "operator", "name": "dash-revoked"}'
expect_status 201 "an operator token for a console"
REVOKED=$(jqb .token) REVOKED_ID=$(jqb .id)
mkdir -p "$KUMO_BUILD_DIR/artifacts/dashboard"
WSREV=$KUMO_BUILD_DIR/artifacts/dashboard/ws-revoke.out
ws_hold() { # token ping_len: open the serial console, print what ends it
	python3 - "$KUMO_URL" "$KUMO_CACERT" "$1" "$VM" "$2" <<'PY'
import os, socket, ssl, struct, sys, urllib.parse
url, ca, token, vm, ping = sys.argv[1:]
u = urllib.parse.urlparse(url)
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection((u.hostname, u.port)), server_hostname=u.hostname)
s.settimeout(120)
s.sendall((f"GET /api/v1/instances/{vm}/console/ws HTTP/1.1\r\nHost: {u.netloc}\r\n"
           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           f"Sec-WebSocket-Protocol: kumo, kumo.token.{token}\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, buf = buf.split(b"\r\n\r\n", 1)
print("open" if b" 101 " in head.split(b"\r\n")[0] else "refused", flush=True)
if int(ping):
    body = os.urandom(int(ping))
    mask = os.urandom(4)
    s.sendall(bytes([0x89, 0x80 | 126]) + struct.pack(">H", len(body)) + mask +
              bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
while True:  # frames until the close frame
    while len(buf) < 2:
        more = s.recv(4096)
        if not more:
            print("eof"); sys.exit()
        buf += more
    op, n, h = buf[0] & 0x0f, buf[1] & 0x7f, 2
    if n == 126:
        n, h = struct.unpack(">H", buf[2:4])[0], 4
    elif n == 127:
        n, h = struct.unpack(">Q", buf[2:10])[0], 10
    while len(buf) < h + n:
        buf += s.recv(65536)
    if op == 8:
        print("close", struct.unpack(">H", buf[h:h + 2])[0] if n >= 2 else 0, flush=True)
        sys.exit()
    buf = buf[h + n:]
PY
}
ws_hold "$REVOKED" 0 >"$WSREV" 2>&1 &
REVPID=$!
wait_until 60 "the revoked token's console open" grep -q open "$WSREV"
api DELETE "/api/v1/tokens/$REVOKED_ID"
expect_status 204 "the console's token deleted"
wait_until 30 "the console ended by the revocation" grep -q close "$WSREV"
wait "$REVPID" || true
grep -q "close 1008" "$WSREV" || fail "a revoked token's console did not end with 1008: $(cat "$WSREV")"
out=$(ws_hold "$ADMIN" 200 2>&1)
[ "$out" = "$(printf 'open\nclose 1002')" ] || fail "a 200-byte ping was not refused with 1002: $out"
pass "a console ends (1008) when its token is revoked; an oversized ping ends it with 1002"
# The screen is never on the network: QEMU's VNC listens on a unix socket only.
qpid=$(cat "$KUMO_LAB_DIR"/hosts/*/local/instances/$VM/qemu.pid 2>/dev/null | head -1)
[ -n "$qpid" ] || fail "no QEMU pid file for $VM"
vnc=$(tr '\0' '\n' <"/proc/$qpid/cmdline" | grep -A1 -x -- -vnc | tail -1)
[[ $vnc == unix:*/vnc.sock ]] || fail "$VM's VNC is not a unix socket: '$vnc'"
pass "$VM's VNC server is a unix socket on its host ($vnc), not a port"

# HA history kept by the controller: a host without instances goes into maintenance and
# back before the browser signs in; the HA view must show both changes (dashboard.mjs).
api GET "/api/v1/instances/$VM"
vmhost=$(jqb .host)
for h in h1 h2 h3; do [ "$h" != "$vmhost" ] && MHOST=$h && break; done
ha_is() { api GET "/api/v1/hosts/$1" && [ "$(jqb .ha.state)" = "$2" ]; }
api PATCH "/api/v1/hosts/$MHOST" '{"maintenance": true}'
expect_status 200
wait_until 60 "$MHOST's HA state maintenance" ha_is "$MHOST" maintenance
api PATCH "/api/v1/hosts/$MHOST" '{"maintenance": false}'
expect_status 200
wait_until 60 "$MHOST's HA state ok again" ha_is "$MHOST" ok
MHOST_DONE=$MHOST
MHOST=""
api GET "/api/v1/events/history?type=host-ha-changed&limit=5"
expect_status 200
[ "$(jqb "[.events[] | select(.data.name == \"$MHOST_DONE\")][0].data.state")" = ok ] ||
	fail "the kept HA history: $(jqb -c .events)"
api GET "/api/v1/events/history?type=no-such-event"
expect_status 400
pass "HA state changes are kept: $MHOST_DONE ok -> maintenance -> ok listed by /api/v1/events/history"

# A screen relay held open through the browser test and then orphaned by a controller
# kill: the agent's VNC stream to QEMU must stay while renewed and must not
# linger (the new controller knows nothing of it). The agent ends a stream its
# controller stops renewing (common/link.h LINK_RELAY_LEASE_MS); QEMU's own list of VNC
# clients shows the agent's connection come and go.
vnc_clients() { # -> how many VNC clients QEMU of $VM has
	python3 - "$KUMO_LAB_DIR/hosts/$vmhost/local/instances/$VM/monitor.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "query-vnc"):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            break
print(len(msg.get("return", {}).get("clients", [])))
PY
}
vnc_clients_are() { [ "$(vnc_clients)" = "$1" ]; }
mkdir -p "$KUMO_BUILD_DIR/artifacts/dashboard"
WSOUT=$KUMO_BUILD_DIR/artifacts/dashboard/vnc-ws.out
python3 - "$KUMO_URL" "$KUMO_CACERT" "$ADMIN" "$VM" >"$WSOUT" 2>&1 <<'PY' &
# Open the VM's screen socket as noVNC does and hold it open.
import socket, ssl, sys, time, urllib.parse
url, ca, token, vm = sys.argv[1:]
u = urllib.parse.urlparse(url)
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection((u.hostname, u.port)), server_hostname=u.hostname)
s.sendall((f"GET /api/v1/instances/{vm}/vnc/ws HTTP/1.1\r\nHost: {u.netloc}\r\n"
           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           f"Sec-WebSocket-Protocol: kumo, kumo.token.{token}\r\n\r\n").encode())
got = b""
while b"RFB " not in got:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
print("101" if b" 101 " in got else "no 101", "RFB" if b"RFB " in got else "no RFB", flush=True)
time.sleep(600)
PY
WSPID=$!
wait_until 60 "the screen socket open (QEMU's RFB greeting relayed)" grep -q "101 RFB" "$WSOUT"
wait_until 30 "the agent connected to $VM's VNC server" vnc_clients_are 1
VNC_OPENED=$SECONDS

cp "$KUMO_SRC"/tests/browser/*.mjs "$NPM_DIR/"
MHOST=$MHOST_DONE KUMO_URL=$KUMO_URL ADMIN=$ADMIN VIEWER=$VIEWER VM=$VM ARTIFACTS=$KUMO_BUILD_DIR/artifacts/dashboard \
	NODE_EXTRA_CA_CERTS=$KUMO_CACERT node "$NPM_DIR/dashboard.mjs" ||
	fail "the browser test failed (screenshots in $KUMO_BUILD_DIR/artifacts/dashboard)"
pass "dashboard in Chromium"

# A relay in use is renewed: the one opened above is still there after the browser
# test (the page's own screen relay has closed), at least 25 s later: past the lease.
wait_until 30 "the page's screen relay closed, the held one open" vnc_clients_are 1
held=$((SECONDS - VNC_OPENED))
[ "$held" -ge 25 ] || sleep $((25 - held)) # the browser test was quicker than the lease
vnc_clients_are 1 || fail "the agent closed a VNC stream whose relay is open (lease not renewed)"
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 10 "the controller gone" proc_gone "$cpid"
kill "$WSPID" 2>/dev/null || true
WSPID=""
lab up --hosts 3 >/dev/null
wait_until 60 "3 hosts online after the controller restart" all_online 3
wait_until 60 "the agent closed the orphaned VNC stream" vnc_clients_are 0
pass "a VNC relay open past the 20 s lease kept its stream; orphaned by a controller kill -9, the agent closed it (QEMU has no VNC client left)"

# Last, as it moves the VM (and would end the screen relay held above): a live migration
# started from the migrate picker, its progress bar watched moving on the VM's page.
t0=$SECONDS
KUMO_URL=$KUMO_URL ADMIN=$ADMIN VM=$VM ARTIFACTS=$KUMO_BUILD_DIR/artifacts/dashboard \
	NODE_EXTRA_CA_CERTS=$KUMO_CACERT node "$NPM_DIR/dashboard_migrate.mjs" ||
	fail "the browser's migration test failed (screenshots in $KUMO_BUILD_DIR/artifacts/dashboard)"
api GET "/api/v1/instances/$VM"
[ "$(jqb .host)" != "$vmhost" ] && [ "$(jqb .state)" = running ] ||
	fail "after the migration from the dashboard $VM is $(jqb .state) on $(jqb .host)"
pass "a migration started from the dashboard moved $VM off $vmhost; its progress bar moved on screen ($((SECONDS - t0)) s)"
