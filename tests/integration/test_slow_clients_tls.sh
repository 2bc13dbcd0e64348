#!/bin/bash
# Incomplete TLS handshakes cannot stall the controller. 20 connections send the first
# bytes of a TLS record and hold the socket open, one more trickles a ClientHello a byte
# at a time; meanwhile authenticated API requests from another address keep answering
# within seconds and the loop's lag (kumo_loop_lag_seconds) stays under a second, and
# the trickle is closed at the header deadline like any other slow client.
#
# Before the fix, libmicrohttpd kept a half-shaken connection "ready" for ever, asked to
# be run again at once, and the loop's zero-delay timer ran again without ever leaving
# libuv's timer phase: the loop stalled for as long as a handshake stayed incomplete.
. "$(dirname "$0")/lib.sh"

port=$KUMO_TEST_LAB_API_PORT
API_SOURCE=127.0.0.2
effective=$("$KUMO_BUILD_DIR/controllerd/kumo-controllerd" -n -c "$KUMO_LAB_DIR/controller.conf" 2>/dev/null)
header_timeout=$(sed -n 's/^api_header_timeout = //p' <<<"$effective")
[ -n "$header_timeout" ] || fail "cannot read the controller's settings: $effective"
hold=$((header_timeout + 10))
[ "$hold" -ge 20 ] || hold=20

api GET /metrics # a scrape resets the largest lag seen
expect_status 200

log=/tmp/kt-tlsstall.$$
: >"$log"
python3 - "$port" 20 "$hold" >"$log" 2>&1 <<'EOF' &
import socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), 10, ("127.0.0.1", 0))
    s.sendall(b"\x16\x03\x01\x02\x00")  # a handshake record of 512 bytes, never sent
    held.append(s)
# The trickle: a ClientHello record, one byte every half second.
t = socket.create_connection(("127.0.0.1", port), 10, ("127.0.0.1", 0))
hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(200))
start = time.monotonic()
trickle_closed = -1
print("holding", len(held) + 1, flush=True)
for b in hello:
    if time.monotonic() - start > hold:
        break
    try:
        t.sendall(bytes([b]))
    except OSError:
        trickle_closed = time.monotonic() - start
        break
    t.settimeout(0.5)
    try:
        if t.recv(1) == b"":
            trickle_closed = time.monotonic() - start
            break
    except socket.timeout:
        pass
    except OSError:
        trickle_closed = time.monotonic() - start
        break
while time.monotonic() - start < hold:
    time.sleep(0.5)
print("trickle_closed", round(trickle_closed, 1))
EOF
attacker=$!
trap 'kill $attacker 2>/dev/null || true; rm -f $log' EXIT
wait_until 30 "the attacker to hold its handshakes" grep -q '^holding' "$log"

# While they are held: requests answer, and the loop is never late by a second.
worst_request=0 worst_lag=0 rounds=0
deadline=$((SECONDS + hold - 4))
while [ $SECONDS -lt $deadline ]; do
	t0=$(date +%s.%N)
	api GET /api/v1/hosts
	[ "$STATUS" = 200 ] || fail "GET /api/v1/hosts answered $STATUS while handshakes were held"
	took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
	worst_request=$(awk -v a="$worst_request" -v b="$took" 'BEGIN { print (b > a) ? b : a }')
	api GET /metrics
	expect_status 200
	lag=$(awk '/^kumo_loop_lag_seconds /{print $2}' <<<"$BODY")
	worst_lag=$(awk -v a="$worst_lag" -v b="${lag:-99}" 'BEGIN { print (b > a) ? b : a }')
	rounds=$((rounds + 1))
	sleep 1
done
wait "$attacker" || fail "the attacker script failed: $(cat $log)"
# The scrape after the attack also sees a stall that ended with it.
api GET /metrics
lag=$(awk '/^kumo_loop_lag_seconds /{print $2}' <<<"$BODY")
worst_lag=$(awk -v a="$worst_lag" -v b="${lag:-99}" 'BEGIN { print (b > a) ? b : a }')
echo "rounds $rounds, slowest request ${worst_request}s, largest loop lag ${worst_lag}s"
awk -v l="$worst_lag" 'BEGIN { exit !(l < 1) }' ||
	fail "the loop lagged ${worst_lag}s while TLS handshakes were held"
awk -v r="$worst_request" 'BEGIN { exit !(r < 5) }' ||
	fail "an API request took ${worst_request}s while TLS handshakes were held"
pass "21 incomplete TLS handshakes held for ${hold}s: $rounds rounds of requests, slowest ${worst_request}s, loop lag at most ${worst_lag}s"

closed=$(awk '/^trickle_closed/{print $2}' "$log")
awk -v c="$closed" -v t="$header_timeout" 'BEGIN { exit !(c >= t - 2 && c <= t + 5) }' ||
	fail "the trickled handshake was closed after ${closed}s, not at the ${header_timeout}s header deadline"
pass "a handshake trickled a byte every half second was closed after ${closed}s (header deadline ${header_timeout}s)"
