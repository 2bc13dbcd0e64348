#!/bin/bash
# Slow and greedy clients cannot take the API from others: 1,000 connections from one
# address that trickle their headers a byte a second are held to the per-address limit
# and closed at the header deadline however they trickle, while a client on another
# address keeps getting answers; /metrics stays valid Prometheus text throughout.
. "$(dirname "$0")/lib.sh"

port=$KUMO_TEST_LAB_API_PORT
# The attack comes from 127.0.0.1; this test's own requests from 127.0.0.2.
API_SOURCE=127.0.0.2
api GET /metrics
expect_status 200
timed_out_before=$(awk '/^kumo_api_connections_timed_out_total /{print $2}' <<<"$BODY")
# The controller's effective settings (its -n mode prints them).
effective=$("$KUMO_BUILD_DIR/controllerd/kumo-controllerd" -n -c "$KUMO_LAB_DIR/controller.conf" 2>/dev/null)
header_timeout=$(sed -n 's/^api_header_timeout = //p' <<<"$effective")
per_ip=$(sed -n 's/^api_max_connections_per_ip = //p' <<<"$effective")
[ -n "$header_timeout" ] && [ -n "$per_ip" ] || fail "cannot read the controller's settings: $effective"

# The attacker: asyncio, 1,000 TLS connections from 127.0.0.1, each sends a request
# line and then one header byte a second, never ending its headers. It reports how many
# connections were established, and for each one the server closed, after how long.
log=/tmp/kt-slow.$$
python3 - "$port" "$KUMO_CACERT" 1000 "$((header_timeout + 20))" >"$log" 2>&1 <<'EOF' &
import asyncio, ssl, sys, time
port, ca, n, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
established, closed = 0, []
start = time.monotonic()

async def one(i):
    global established
    t0 = time.monotonic()  # before connecting: the server's clock for it starts later
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                              local_addr=("127.0.0.1", 0)), 20)
    except Exception:
        return
    try:
        w.write(b"GET /healthz HTTP/1.1\r\nHost: k\r\n")
        await w.drain()
    except Exception:
        return
    established += 1
    try:
        while time.monotonic() - start < hold:
            w.write(b"X")  # one byte of a header name, never a line end
            await w.drain()
            try:
                data = await asyncio.wait_for(r.read(1), 1.0)
                if data == b"":
                    closed.append(time.monotonic() - t0)
                    return
            except asyncio.TimeoutError:
                pass
    except Exception:
        closed.append(time.monotonic() - t0)
    finally:
        w.close()

async def main():
    await asyncio.gather(*(one(i) for i in range(n)))

asyncio.run(main())
print("established", established)
print("closed", len(closed))
print("earliest_close", round(min(closed), 1) if closed else -1)
EOF
attacker=$!
trap 'kill $attacker 2>/dev/null || true; rm -f $log' EXIT

# Wait until the attacker holds its connections (the controller counts them).
held() {
	api GET /metrics
	local open
	open=$(awk '/^kumo_api_connections /{print $2}' <<<"$BODY")
	[ "${open:-0}" -ge $((per_ip / 2)) ]
}
wait_until 60 "the slow connections to be open" held

# Meanwhile a client on another address is answered, again and again.
for i in $(seq 10); do
	code=$(curl -sS --interface 127.0.0.2 --cacert "$KUMO_CACERT" --max-time 10 -o /dev/null \
		-w '%{http_code}' "$KUMO_URL/healthz") || code=000
	[ "$code" = 200 ] || fail "healthz from 127.0.0.2 answered $code while 127.0.0.1 held slow connections"
	code=$(curl -sS --interface 127.0.0.2 --cacert "$KUMO_CACERT" --max-time 10 -o /dev/null \
		-w '%{http_code}' -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/hosts") || code=000
	[ "$code" = 200 ] || fail "GET /api/v1/hosts from 127.0.0.2 answered $code during the attack"
done
api GET /metrics
open=$(awk '/^kumo_api_connections /{print $2}' <<<"$BODY")
[ "$open" -le $((per_ip + 12)) ] || fail "$open connections open: the per-address limit ($per_ip) did not hold"
pass "1,000 slow connections from 127.0.0.1 held $open connections; 127.0.0.2 was answered throughout"

wait "$attacker" || fail "the attacker script failed: $(cat $log)"
established=$(awk '/^established/{print $2}' $log)
closed=$(awk '/^closed/{print $2}' $log)
earliest=$(awk '/^earliest_close/{print $2}' $log)
[ "$established" -le $((per_ip + 12)) ] || fail "$established connections were established past the per-address limit $per_ip"
[ "$closed" -ge "$((established * 9 / 10))" ] ||
	fail "only $closed of $established trickling connections were closed by the server ($(cat $log))"
awk -v e="$earliest" -v t="$header_timeout" 'BEGIN { exit !(e >= t - 2) }' ||
	fail "a trickling connection was closed after ${earliest}s, before the ${header_timeout}s header deadline"
api GET /metrics
timed_out=$(awk '/^kumo_api_connections_timed_out_total /{print $2}' <<<"$BODY")
[ "$timed_out" -gt "${timed_out_before:-0}" ] || fail "kumo_api_connections_timed_out_total did not grow"
pass "trickled headers did not move the ${header_timeout}s deadline: $closed of $established closed (first after ${earliest}s)"

# The exposition is valid Prometheus text, with the new families in it.
printf '%s\n' "$BODY" >/tmp/kt-metrics.$$
promtool check metrics </tmp/kt-metrics.$$ >/tmp/kt-promtool.$$ 2>&1 ||
	fail "promtool check metrics: $(head -5 /tmp/kt-promtool.$$)"
for family in kumo_api_request_duration_seconds_bucket kumo_api_connections kumo_event_streams \
	kumo_link_messages_total kumo_db_commit_duration_seconds_count kumo_loop_lag_seconds \
	process_open_fds process_resident_memory_bytes; do
	grep -q "^$family" /tmp/kt-metrics.$$ || fail "/metrics lacks $family"
done
rm -f /tmp/kt-metrics.$$ /tmp/kt-promtool.$$
pass "promtool accepts /metrics: latency per route, connections, streams, link messages, commits, loop lag, fds, RSS"

# A caller without a token is answered when its headers are in: it cannot make the
# controller wait for (and keep) a body it will refuse anyway.
answer=$(python3 - "$KUMO_TEST_LAB_API_PORT" "$KUMO_CACERT" <<'PY'
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 10, ("127.0.0.2", 0)),
                    server_hostname="127.0.0.1")
s.settimeout(10)
s.sendall(b"POST /api/v1/tokens HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n"
          b"Content-Length: 1000000\r\n\r\n{")
t0 = time.monotonic()
data = s.recv(4096)
print(data.split(b"\r\n")[0].decode(), round(time.monotonic() - t0, 1))
PY
) || fail "the anonymous POST got no answer: $answer"
[[ $answer == *" 401 "* ]] || fail "an anonymous POST with a body still to come was answered '$answer', not 401"
pass "an anonymous POST is refused (401) before its body: $answer s"
