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
. "$here/simlib.sh"
clients=1000 secs=10 port=10680 sim_port=21500 build=$src/build-bench
while [ $# -gt 0 ]; do
	case $1 in
	--clients) clients=$2; shift 2 ;;
	--seconds) secs=$2; shift 2 ;;
	-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) sim_option "$1" "${2-}" || { echo "usage: $0 [--clients N] [--seconds S] [--port P] [--sim-port S] [--build DIR]" >&2; exit 2; }; shift 2 ;;
	esac
done
# At the default priority, as docs/architecture.md's SSE numbers were measured.
sim_nice=0
sim_setup sse
sim_build "$build" kumo-controllerd simhosts
sim_bins "$build"
sim_ctl_conf "$work" "max_streams_per_token = $((clients + 10))" \
	"api_max_connections = $((clients + 100))" "api_max_connections_per_ip = $((clients + 50))"
sim_ctl_start "$work"
sim_tokens_mint 1 "$work/tokens"
sim_hosts_start "$work/tokens" 1 "$sim_port" "$work/sim.log"
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
