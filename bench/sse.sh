#!/bin/bash
# bench/sse.sh - Server-Sent Events fan-out: N clients hold GET /api/v1/events open
# while one keep-alive client changes a host's labels as fast as the controller
# answers (each change is one host-updated event). Prints the events made, the events
# delivered to all clients per second, how many each client missed at the end, and
# the controller's loop lag (kumo_loop_lag_seconds, the longest since the last
# scrape) over the run.
#
# One SIMULATED host (tests/tools/simhosts). The controller runs with tls = off on
# loopback (the cost measured is the controller's, not Python's TLS), its own state
# under /tmp, and limits raised for N streams from one address and one token.
#
#   bench/sse.sh [--clients 1000] [--seconds 10] [--port 10680] [--sim-port 21500]
#                [--build DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
clients=1000 secs=10 port=10680 sim_port=21500 build=$src/build-bench
while [ $# -gt 0 ]; do
	case $1 in
	--clients) clients=$2; shift 2 ;;
	--seconds) secs=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--sim-port) sim_port=$2; shift 2 ;;
	--build) build=$2; shift 2 ;;
	-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "usage: $0 [--clients N] [--seconds S] [--port P] [--sim-port S] [--build DIR]" >&2; exit 2 ;;
	esac
done
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON >/dev/null
nice make -C "$build" -j"$(nproc)" kumo-controllerd simhosts >/dev/null
work=$(mktemp -d /tmp/kumo-sse.XXXXXX)
ctl_pid='' sim_pid=''
trap '[ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null; [ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/shared"
cat >"$work/ctl.conf" <<EOF
state_dir = $work/state
api_listen = 127.0.0.1:$port
tls = off
link_address = 127.0.0.1
join_port = $((port + 1))
event_port = $((port + 2))
log_level = warn
shared_pool = $work/shared
max_streams_per_token = $((clients + 10))
api_max_connections = $((clients + 100))
api_max_connections_per_ip = $((clients + 50))
EOF
"$build/controllerd/kumo-controllerd" -c "$work/ctl.conf" >"$work/ctl.log" 2>&1 &
ctl_pid=$!
for _ in $(seq 150); do
	curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && [ -s "$work/state/admin.token" ] && break
	sleep 0.2
done
token=$(cat "$work/state/admin.token")
curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
	-d '{"kind":"join","name":"sim00001"}' "http://127.0.0.1:$port/api/v1/tokens" | jq -r .token >"$work/tokens"
"$build/tests/tools/simhosts" --controller "127.0.0.1:$((port + 1))" --tokens "$work/tokens" --hosts 1 \
	--listen-base "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
sim_pid=$!
ulimit -n 65536 2>/dev/null || true
python3 - "$port" "$token" "$clients" "$secs" <<'PY'
import http.client, json, selectors, socket, sys, threading, time
port, token, n, secs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

def call(c, method, path, body=None):
    c.request(method, path, json.dumps(body) if body is not None else None, h)
    r = c.getresponse()
    return r.status, r.read()

c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
end = time.monotonic() + 60
while json.loads(call(c, "GET", "/api/v1")[1])["counts"]["hosts_online"] < 1:
    if time.monotonic() > end:
        sys.exit("sse: the simulated host did not come online")
    time.sleep(0.5)

sel = selectors.DefaultSelector()
req = ("GET /api/v1/events?type=host-updated HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
       "Accept: text/event-stream\r\n\r\n" % token).encode()
counts, socks = [0] * n, []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
    socks.append(s)
tail = [b""] * n
stop = threading.Event()
def reader():
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            i = key.data
            buf = tail[i] + data
            counts[i] += buf.count(b"\nevent: host-updated") + buf.startswith(b"event: host-updated")
            tail[i] = buf[-32:]
t = threading.Thread(target=reader)
t.start()
time.sleep(2)  # every stream open and waiting
call(c, "GET", "/metrics")  # resets the loop lag maximum
made, t0 = 0, time.monotonic()
while time.monotonic() - t0 < secs:
    st, _ = call(c, "PATCH", "/api/v1/hosts/sim00001", {"labels": {"n": str(made)}})
    made += st == 200
el = time.monotonic() - t0
lag = [l for l in call(c, "GET", "/metrics")[1].decode().splitlines()
       if l.startswith("kumo_loop_lag_seconds ")][0].split()[1]
time.sleep(3)  # let the streams drain
stop.set(); t.join()
got = sum(counts)
print("SSE fan-out: %d clients, %d events made in %.1f s (%.0f/s)" % (n, made, el, made / el))
print("  events delivered: %d (%.0f/s over the run), missed at the end: %d of %d"
      % (got, got / el, made * n - got, made * n))
print("  controller loop lag, longest during the run: %.3f s" % float(lag))
PY
