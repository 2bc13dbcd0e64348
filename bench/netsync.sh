#!/bin/bash
# bench/netsync.sh - how many host network documents the controller builds while
# containers with NICs are created, against SIMULATED hosts (tests/tools/simhosts:
# the real link protocol, no workloads; a measure of the controller only).
#
# One controller (tls off, loopback), N simulated hosts beating every second, T
# networks each with its own security group ("tenants"); then C containers, each with
# one NIC on tenant i mod T's network, created by 8 keep-alive clients. Prints
# kumo_netsync_doc_builds_total per second idle and during the creates, the p50
# and p99 of GET /healthz, /api/v1/hosts?limit=100 and /api/v1/instances?limit=100
# during the creates (at least --probe-seconds), the longest loop lag
# (kumo_loop_lag_seconds, scraped every second) and the controller's CPU meanwhile.
# --creates 0 measures heartbeats alone.
#
# usage: bench/netsync.sh [--hosts 1000] [--creates 400] [--tenants 10]
#                         [--probe-seconds 30] [--build DIR] [--port 10380]
#                         [--sim-port 21000]
# --build DIR: a build (RelWithDebInfo) with kumo-controllerd and simhosts in it;
# compare two builds by running this twice with the same options.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
. "$here/simlib.sh"
hosts=1000 creates=400 tenants=10 port=10380 sim_port=21000 probe_s=30
build=$src/build-bench
while [ $# -gt 0 ]; do
	case $1 in
	--hosts) hosts=$2; shift 2 ;;
	--creates) creates=$2; shift 2 ;;
	--tenants) tenants=$2; shift 2 ;;
	--probe-seconds) probe_s=$2; shift 2 ;;
	*) sim_option "$1" "${2-}" || sim_usage 18; shift 2 ;;
	esac
done
sim_setup netsync
sim_bins "$build"
sim_ctl_conf "$work" 'heartbeat_interval = 1' 'join_rate = 100000' 'metrics_public = yes'
sim_ctl_start "$work"
builds() { curl -sS --max-time 60 "$api_url/metrics" | awk '/^kumo_netsync_doc_builds_total/ { print $2 }'; }

# Join tokens, the tenants' networks and groups, through the API.
sim_tokens_mint "$hosts" "$work/tokens"
python3 - "$api_url" "$token" "$tenants" <<'PY'
import http.client, json, sys, urllib.parse
url, token, tenants = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(url)
c = http.client.HTTPConnection(u.hostname, u.port)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
def post(path, body, want):
    c.request("POST", path, json.dumps(body), h)
    r = c.getresponse(); b = r.read()
    if r.status != want:
        sys.exit("%s: HTTP %d %s" % (path, r.status, b[:200]))
    return json.loads(b) if b else None
for t in range(tenants):
    post("/api/v1/networks", {"name": "t%d" % t, "mode": "nat", "cidr": "10.%d.0.0/16" % (100 + t)}, 201)
    post("/api/v1/security-groups", {"name": "t%d" % t, "rules": []}, 201)
PY

t0=$(now_ms)
sim_hosts_start "$work/tokens" "$hosts" "$sim_port" "$work/sim.log"
sim_wait_online "$hosts" 300 || { say "only $sim_on of $hosts online"; exit 1; }
say "$hosts simulated hosts online after $((($(now_ms) - t0) / 1000)) s; 20 s idle"
sleep 5
b0=$(builds) w0=$(now_ms)
sleep 20
b1=$(builds) w1=$(now_ms)
idle=$(awk -v b=$((b1 - b0)) -v ms=$((w1 - w0)) 'BEGIN { printf "%.1f", b / (ms / 1000) }')

[ "$creates" = 0 ] || sim_image_push "$src/build-test/guest/busybox-oci"
say "creating $creates containers over $tenants tenant networks"
b2=$(builds) w2=$(now_ms) c2=$(cpu_ticks "$ctl_pid")
out=$(python3 - "$api_url" "$token" "$creates" "$tenants" "$probe_s" <<'PY'
import http.client, json, sys, threading, time, urllib.parse
url, token, total, tenants, probe_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
u = urllib.parse.urlparse(url)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
lock = threading.Lock()
nxt, done, failed, lat = [0], [0], [0], {"/healthz": [], "/api/v1/hosts?limit=100": [],
                             "/api/v1/instances?limit=100": []}
running = [True]
lag = [0.0]

def creator():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    while True:
        with lock:
            i = nxt[0]; nxt[0] += 1
        if i >= total: return
        t = "t%d" % (i % tenants)
        body = json.dumps({"name": "n%06d" % i, "type": "container", "image": "busybox:latest",
                           "command": ["sleep", "infinity"],
                           "nics": [{"network": t, "security_groups": [t]}]})
        try:
            c.request("POST", "/api/v1/instances", body, h)
            r = c.getresponse(); b = r.read()
            with lock:
                if r.status == 202: done[0] += 1
                else:
                    failed[0] += 1
                    if failed[0] < 3: print(r.status, b[:200], file=sys.stderr)
        except Exception as e:
            with lock: failed[0] += 1
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)

def prober(path):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    while running[0]:
        t = time.monotonic()
        c.request("GET", path, headers=h)
        r = c.getresponse(); r.read()
        lat[path].append(time.monotonic() - t)
        time.sleep(0.1)

def lagger():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    while running[0]:
        c.request("GET", "/metrics", headers=h)
        r = c.getresponse()
        for line in r.read().decode().splitlines():
            if line.startswith("kumo_loop_lag_seconds "):
                lag[0] = max(lag[0], float(line.split()[1]))
        time.sleep(1)

ts = [threading.Thread(target=creator) for _ in range(8)]
ps = [threading.Thread(target=prober, args=(p,)) for p in lat] + [threading.Thread(target=lagger)]
t0 = time.monotonic()
for t in ts + ps: t.start()
for t in ts: t.join()
el = max(time.monotonic() - t0, 1e-3)
time.sleep(3)  # the hosts' next heartbeats rebuild what the last creates changed
while time.monotonic() - t0 < probe_s: time.sleep(0.2)
running[0] = False
for t in ps: t.join()
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))] * 1000 if v else float("nan")
print("%d %d %.1f %.0f %.0f %.0f %.0f %.0f %.0f %.0f" % (done[0], failed[0], done[0] / el,
      pct(lat["/healthz"], .5), pct(lat["/healthz"], .99),
      pct(lat["/api/v1/hosts?limit=100"], .5), pct(lat["/api/v1/hosts?limit=100"], .99),
      lag[0] * 1000, pct(lat["/api/v1/instances?limit=100"], .5),
      pct(lat["/api/v1/instances?limit=100"], .99)))
PY
)
b3=$(builds) w3=$(now_ms) c3=$(cpu_ticks "$ctl_pid")
read -r c_done c_failed c_rate h50 h99 l50 l99 lag i50 i99 <<<"$out"
cpu=$(cpu_percent $((c3 - c2)) $((w3 - w2)))
online=$(curl -sS --max-time 60 -H "Authorization: Bearer $token" "$api_url/api/v1" |
	jq -r '.counts.hosts_online // 0')
during=$(awk -v b=$((b3 - b2)) -v ms=$((w3 - w2)) 'BEGIN { printf "%.1f", b / (ms / 1000) }')

echo "Kumo netsync bench - SIMULATED hosts (tests/tools/simhosts: real link, no workloads)"
echo "build: $build; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-52s %s\n' "hosts (1 s heartbeats) / tenant networks" "$hosts / $tenants"
printf '%-52s %s\n' "network documents built/s, idle" "$idle"
printf '%-52s %s\n' "containers with a NIC created (refused), creates/s" "$c_done ($c_failed), $c_rate"
printf '%-52s %s\n' "network documents built, during creates (+3 s)" "$((b3 - b2))"
printf '%-52s %s\n' "network documents built/s, during creates" "$during"
printf '%-52s %s\n' "GET /healthz during creates, p50 / p99 ms" "$h50 / $h99"
printf '%-52s %s\n' "GET /api/v1/hosts?limit=100 during, p50 / p99 ms" "$l50 / $l99"
printf '%-52s %s\n' "GET /api/v1/instances?limit=100 during, p50 / p99 ms" "$i50 / $i99"
printf '%-52s %s\n' "longest loop lag (kumo_loop_lag_seconds), ms" "$lag"
printf '%-52s %s\n' "controller CPU meanwhile (% of a core)" "$cpu"
printf '%-52s %s\n' "hosts online at the end" "$online"
