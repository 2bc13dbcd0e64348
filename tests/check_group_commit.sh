#!/bin/bash
# check_group_commit.sh CONTROLLERD SIMHOSTS OCI_DIR - group commit (controllerd/db.c)
# keeps every acknowledged write: 16 keep-alive clients create API tokens and
# containers (on 4 SIMULATED hosts, tests/tools/simhosts) as fast as the controller
# answers; the controller is killed with -9 in the middle of the burst and started
# again, and every token and container it had answered 2xx for must be there. The
# burst must also have been committed in batches: the controller's
# kumo_db_sync_batch_commits histogram shows more commits than fsyncs (before group
# commit every commit had its own fsync, so the two were equal).
#
# Runs on loopback only: a controller with tls off and its own state under /tmp.
# Ports: KUMO_TEST_LAB_LINK_PORT+50..52 for the controller, twice that port + 700
# onward for the simulated hosts.
set -euo pipefail
ctld=$1 sim=$2 oci=$3
link=${KUMO_TEST_LAB_LINK_PORT:-9700}
port=$((link + 50)) sim_port=$((2 * link + 700))
dir=$(mktemp -d /tmp/kumo-group-commit.XXXXXX)
ctl_pid='' sim_pid=''
cleanup() {
	# Only the processes this script started, by their pids.
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
join_rate = 100000
log_level = warn
shared_pool = $dir/shared
EOF
mkdir -p "$dir/shared"
start_controller() {
	"$ctld" -c "$dir/ctl.conf" >>"$dir/ctl.log" 2>&1 &
	ctl_pid=$!
	for _ in $(seq 150); do
		curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && [ -s "$dir/state/admin.token" ] && return 0
		kill -0 "$ctl_pid" 2>/dev/null || fail "the controller exited"
		sleep 0.2
	done
	fail "the controller does not answer"
}
start_controller
token=$(cat "$dir/state/admin.token")
NO_PROXY='*' skopeo --insecure-policy copy --dest-tls-verify=false --dest-registry-token "$token" \
	"oci:$oci:latest" "docker://127.0.0.1:$port/busybox:latest" >/dev/null ||
	fail "cannot push busybox to the controller's registry"

# Four simulated hosts, so containers have somewhere to go.
python3 - "$port" "$token" "$dir/tokens" <<'PY' || fail "join tokens"
import http.client, json, sys
port, token, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
with open(out, "w") as f:
    for i in range(4):
        c.request("POST", "/api/v1/tokens", json.dumps({"kind": "join", "name": "sim%05d" % (i + 1)}), h)
        r = c.getresponse(); b = json.loads(r.read())
        assert r.status == 201, (r.status, b)
        f.write(b["token"] + "\n")
PY
"$sim" --controller "127.0.0.1:$((port + 1))" --tokens "$dir/tokens" --hosts 4 \
	--listen-base "127.0.0.1:$sim_port" >"$dir/sim.log" 2>&1 &
sim_pid=$!

# The burst, the kill in its middle, and the list of what was acknowledged.
python3 - "$port" "$token" "$dir" "$ctl_pid" <<'PY' || fail "see above"
import http.client, json, os, signal, sys, threading, time
port, token, d, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

def get(path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path, headers=h)
    r = c.getresponse()
    return r.status, r.read()

end = time.monotonic() + 120
while json.loads(get("/api/v1")[1])["counts"]["hosts_online"] < 4:
    if time.monotonic() > end:
        sys.exit("FAIL: 4 simulated hosts online within 120 s")
    time.sleep(0.5)

acked, lock, stop = [], threading.Lock(), threading.Event()
def client(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while not stop.is_set():
        name = "gc%02d-%05d" % (k, i)
        i += 1
        if k % 2:
            path, body = "/api/v1/tokens", {"kind": "api", "role": "viewer", "name": name}
        else:
            path, body = "/api/v1/instances", {"name": name, "type": "container",
                "image": "busybox:latest", "command": ["sleep", "infinity"]}
        try:
            c.request("POST", path, json.dumps(body), h)
            r = c.getresponse(); r.read()
        except (OSError, http.client.HTTPException):
            return  # the kill: this request was never answered
        if r.status // 100 == 2:
            with lock:
                acked.append((path, name))
ts = [threading.Thread(target=client, args=(k,)) for k in range(16)]
for t in ts: t.start()
# Let the burst run, look at the batches, then kill while it still runs.
end = time.monotonic() + 60
while len(acked) < 300 and time.monotonic() < end:
    time.sleep(0.05)
st, metrics = get("/metrics")
with lock:
    n_before = len(acked)
os.kill(pid, signal.SIGKILL)
stop.set()
for t in ts: t.join()
if n_before < 50:
    sys.exit("FAIL: only %d writes acknowledged in 60 s" % n_before)
syncs = commits = 0
for line in metrics.decode().splitlines():
    if line.startswith("kumo_db_sync_batch_commits_count"):
        syncs = float(line.split()[-1])
    elif line.startswith("kumo_db_sync_batch_commits_sum"):
        commits = float(line.split()[-1])
if syncs == 0 or commits / syncs < 2:
    sys.exit("FAIL: %d commits took %d fsyncs: writes were not committed in batches" % (commits, syncs))
print("ok: %d writes acknowledged before the kill -9; %d commits in %d fsyncs (%.1f a batch)"
      % (len(acked), commits, syncs, commits / syncs))
json.dump(acked, open(d + "/acked.json", "w"))
PY
wait "$ctl_pid" 2>/dev/null || true
ctl_pid=''
start_controller

python3 - "$port" "$token" "$dir" <<'PY' || fail "see above"
import http.client, json, sys
port, token, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
h = {"Authorization": "Bearer " + token}
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def names(path, key):
    out, after = set(), None
    while True:
        c.request("GET", path + "?limit=500" + ("&after=" + after if after else ""), headers=h)
        r = c.getresponse(); b = json.loads(r.read())
        assert r.status == 200, (r.status, b)
        out |= {x["name"] for x in b[key]}
        after = b.get("next")
        if not after:
            return out
have = {"/api/v1/tokens": names("/api/v1/tokens", "tokens"),
        "/api/v1/instances": names("/api/v1/instances", "instances")}
acked = json.load(open(d + "/acked.json"))
lost = [n for p, n in acked if n not in have[p]]
if lost:
    sys.exit("FAIL: %d of %d acknowledged writes lost across kill -9: %s" % (len(lost), len(acked), lost[:5]))
print("ok: all %d acknowledged writes (tokens and containers) are there after the restart" % len(acked))
PY
echo "PASS: group commit: a kill -9 in a burst of creates lost no acknowledged write"
