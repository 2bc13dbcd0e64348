#!/bin/bash
# check_many_hosts.sh CONTROLLERD SIMHOSTS - one controller commands more hosts than
# nanomsg has sockets (512 a process): 600 SIMULATED hosts (tests/tools/simhosts, the
# real sealed link, no workloads) join, come online, and each answers a probe sent
# through the API. Before the command socket pool, the controller's nn_socket failed
# past about 510 hosts and those probes never finished. Then: heartbeats with unchanged
# facts carry only their digest (kumo_link_heartbeats_total), the hosts' uptime still
# moves and all stay online.
#
# Runs on loopback only: a controller with tls off and its own state under /tmp.
# Ports: KUMO_TEST_LAB_LINK_PORT+40..42 for the controller, twice that port onward for
# the simulated hosts (600 ports).
set -euo pipefail
ctld=$1 sim=$2
hosts=600
link=${KUMO_TEST_LAB_LINK_PORT:-9700}
port=$((link + 40)) sim_port=$((2 * link))
dir=$(mktemp -d /tmp/kumo-many-hosts.XXXXXX)
ctl_pid='' sim_pid=''
cleanup() {
	[ -z "$sim_pid" ] && [ -s "$dir/sim.pid" ] && sim_pid=$(cat "$dir/sim.pid")
	[ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true
	[ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null && wait "$ctl_pid" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -n 5 "$dir/ctl.log" "$dir/sim.log" >&2 || true; exit 1; }

cat >"$dir/ctl.conf" <<EOF
state_dir = $dir/state
api_listen = 127.0.0.1:$port
tls = off
link_address = 127.0.0.1
join_port = $((port + 1))
event_port = $((port + 2))
heartbeat_interval = 2
join_rate = 100000
log_level = warn
shared_pool = $dir/shared
EOF
mkdir -p "$dir/shared"
"$ctld" -c "$dir/ctl.conf" >"$dir/ctl.log" 2>&1 &
ctl_pid=$!

python3 - "$port" "$dir" "$hosts" "$sim" "$sim_port" <<'PY' || fail "see above"
import http.client, json, os, subprocess, sys, time
port, d, n, sim, sim_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])

def wait_until(what, cond, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if cond():
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.5)
    sys.exit("FAIL: %s within %d s" % (what() if callable(what) else what, seconds))

def healthy():
    hc = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    hc.request("GET", "/healthz")
    return hc.getresponse().status == 200 and os.path.exists(d + "/state/admin.token")

wait_until("the controller answers", healthy, 30)
token = open(d + "/state/admin.token").read().strip()
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

def call(method, path, body=None):
    c.request(method, path, json.dumps(body) if body is not None else None, h)
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")

with open(d + "/tokens", "w") as f:
    for i in range(n):
        st, b = call("POST", "/api/v1/tokens", {"kind": "join", "name": "sim%05d" % (i + 1)})
        assert st == 201, (st, b)
        f.write(b["token"] + "\n")
log = open(d + "/sim.log", "w")
p = subprocess.Popen([sim, "--controller", "127.0.0.1:%d" % (port + 1), "--tokens", d + "/tokens",
                      "--hosts", str(n), "--listen-base", "127.0.0.1:%d" % sim_port],
                     stdout=log, stderr=log)
open(d + "/sim.pid", "w").write(str(p.pid))
wait_until("%d hosts online" % n, lambda: call("GET", "/api/v1")[1]["counts"]["hosts_online"] == n, 180)
print("ok: %d simulated hosts online" % n)

ops = []
for i in range(n):
    st, b = call("POST", "/api/v1/hosts/sim%05d/actions/probe" % (i + 1))
    assert st == 202, (st, b)
    ops.append(b["id"])
pending = set(ops)
def all_done():
    for op in list(pending):
        st, b = call("GET", "/api/v1/operations/" + op)
        if b["status"] == "succeeded":
            pending.discard(op)
        elif b["status"] == "failed":
            sys.exit("FAIL: probe %s failed: %s" % (op, b.get("error")))
    return not pending
wait_until(lambda: "every probe answered (%d left)" % len(pending), all_done, 180)
print("ok: each of %d hosts answered a probe; the controller holds at most 448 command "
      "sockets" % n)

# Facts digests (common/link.h): unchanged facts travel as their digest, the
# controller keeps the facts it has and moves only their uptime, and nobody goes
# offline for it.
def beats(kind):
    c.request("GET", "/metrics", headers=h)
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith('kumo_link_heartbeats_total{facts="%s"}' % kind):
            return int(line.split()[1])
    return 0
wait_until("heartbeats with the facts' digest only outnumber those with whole facts",
           lambda: beats("unchanged") > beats("whole") >= n, 60)
up0 = call("GET", "/api/v1/hosts/sim00001")[1]["facts"]["uptime_s"]
wait_until("sim00001's uptime advances on digest-only heartbeats",
           lambda: call("GET", "/api/v1/hosts/sim00001")[1]["facts"]["uptime_s"] > up0 + 2, 30)
st, b = call("GET", "/api/v1")
assert b["counts"]["hosts_online"] == n, b["counts"]
assert beats("unknown") == 0, beats("unknown")
print("ok: %d heartbeats carried the digest only, %d whole facts; all %d hosts online" %
      (beats("unchanged"), beats("whole"), n))
PY
echo "PASS: $hosts simulated hosts, more than nanomsg's 512 sockets, each took a command"
