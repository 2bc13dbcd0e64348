#!/bin/bash
# bench/instances.sh - the instance list and creates with many instances in the
# database, on one controller with SIMULATED hosts (tests/tools/simhosts).
#
# The instances are a BENCH-ONLY SQL SEED, never a state a real cluster reaches this
# way: phase 1 joins --seed-hosts simulated hosts ("sim*") and creates one container
# through the API as the template; then the controller and those hosts stop, and
# sqlite3 copies the template's row --instances times ("seed-NNNNNNN", spread over the
# seed hosts, which stay offline so nobody reconciles them; the per-host counters
# follow through the schema's triggers). Phase 2 restarts the controller with
# --live-hosts new simulated hosts ("live*") and measures, each --samples times:
#
#   - GET /api/v1/instances?limit=100: the first page, a deep page (the cursor after
#     the 90% mark), and filtered pages: ?host= (one seed host; one live host, which
#     has none yet), ?state=running,
#     ?type=container&label=tier=web (no seeded instance has the label)
#   - POST /api/v1/instances (containers on the live hosts), --clients keep-alive
#     clients for --create-seconds: creates/s, p50 and p99
#
# usage: bench/instances.sh [--instances 150000] [--seed-hosts 20] [--live-hosts 20]
#                           [--samples 30] [--clients 8] [--create-seconds 30]
#                           [--build DIR] [--port 10580] [--sim-port 31000]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
. "$here/simlib.sh"
instances=150000 seed_hosts=20 live_hosts=20 samples=30 clients=8 create_s=30
port=10580 sim_port=31000 build=$src/build-bench
while [ $# -gt 0 ]; do
	case $1 in
	--instances) instances=$2; shift 2 ;;
	--seed-hosts) seed_hosts=$2; shift 2 ;;
	--live-hosts) live_hosts=$2; shift 2 ;;
	--samples) samples=$2; shift 2 ;;
	--clients) clients=$2; shift 2 ;;
	--create-seconds) create_s=$2; shift 2 ;;
	*) sim_option "$1" "${2-}" || sim_usage 22; shift 2 ;;
	esac
done
sim_setup instances
sim_bins "$build"
oci=$src/build-test/guest/busybox-oci
[ -d "$oci" ] || "$src/tests/guest/build-oci.sh" "$src/build-test/guest" >/dev/null

db=$work/state/kumo.db
sim_ctl_conf "$work" 'heartbeat_interval = 2' 'join_rate = 100000'
# prefix_online: how many hosts named $join_prefix* are online; join waits for its
# own hosts by name, whatever the controller thinks of the others.
prefix_online() {
	curl -sS -H "Authorization: Bearer $token" "$api_url/api/v1/hosts?limit=500&fields=name,state" |
		jq "[.hosts[] | select(.name | startswith(\"$join_prefix\")) | select(.state == \"online\")] | length" ||
		echo 0
}
# join PREFIX N SIM_PORT [SIMHOSTS_ARG...]: N simulated hosts named PREFIX00001...,
# all online.
join() {
	join_prefix=$1
	sim_tokens_mint "$2" "$work/tokens-$1" "$1"
	sim_hosts_start "$work/tokens-$1" "$2" "$3" "$work/sim-$1.log" --prefix "$1" "${@:4}"
	sim_wait_online "$2" 300 prefix_online || { say "$1 hosts not online"; exit 1; }
}

say "phase 1: $seed_hosts seed hosts and the template container"
sim_ctl_start "$work"
join sim "$seed_hosts" "$sim_port"
sim_image_push "$oci"
curl -sS -f -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
	-d '{"name": "template", "type": "container", "image": "busybox:latest", "command": ["sleep", "infinity"]}' \
	"$api_url/api/v1/instances" >/dev/null
for ((i = 0; i < 300; i++)); do
	[ "$(sqlite3 "$db" "SELECT state FROM instances WHERE name = 'template'")" = running ] && break
	sleep 0.2
done
sim_stop_all

say "seeding $instances instances (bench-only SQL) over $seed_hosts offline hosts"
t0=$(now_ms)
sqlite3 "$db" <<EOF
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < $instances),
     seed(id, r) AS (SELECT id, row_number() OVER (ORDER BY id) - 1 FROM hosts WHERE name LIKE 'sim%')
INSERT INTO instances (name, type, host_id, spec, state, desired, anti_affinity, vcpus,
                       memory_mb, report, placement, created_at, updated_at)
SELECT printf('seed-%07d', k), t.type, seed.id,
       json_set(t.spec, '\$.name', printf('seed-%07d', k)), t.state, t.desired, NULL,
       t.vcpus, t.memory_mb, t.report, t.placement, t.created_at, t.updated_at
FROM n JOIN instances t ON t.name = 'template' JOIN seed ON seed.r = k % $seed_hosts;
COMMIT;
EOF
say "seeded in $((($(now_ms) - t0) / 1000)) s: $(sqlite3 "$db" 'SELECT count(*) FROM instances') instances"

say "phase 2: controller restarted, $live_hosts live hosts"
sim_ctl_start "$work"
# Room for every create of the run: at 64 CPUs (256 containers) each, 20 hosts were
# full after 5,120 creates and the rest were refused (422), capping creates/s.
join live "$live_hosts" "$((sim_port + seed_hosts))" --cpus 4096 --memory-mb 16777216
deep=$(printf 'seed-%07d' $((instances * 9 / 10)) | od -An -tx1 | tr -d ' \n')
out=$(python3 - "$api_url" "$token" "$samples" "$clients" "$create_s" "$deep" <<'PY'
import http.client, json, sys, threading, time, urllib.parse
url, token, samples, clients, seconds, deep = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
u = urllib.parse.urlparse(url)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))] * 1000 if v else float("nan")
paths = ["/api/v1/instances?limit=100", "/api/v1/instances?limit=100&after=" + deep,
         "/api/v1/instances?limit=100&host=sim00007", "/api/v1/instances?limit=100&host=live00001",
         "/api/v1/instances?limit=100&state=running",
         "/api/v1/instances?limit=100&type=container&label=tier=web"]
c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
res = []
for p in paths:
    lat = []
    for _ in range(samples):
        t = time.monotonic()
        c.request("GET", p, headers=h)
        r = c.getresponse(); b = r.read()
        lat.append(time.monotonic() - t)
        if r.status != 200: sys.exit("%s: HTTP %d %s" % (p, r.status, b[:200]))
    res += [pct(lat, .5), pct(lat, .99), len(json.loads(b)["instances"])]
stop = time.monotonic() + seconds
done, failed, clat, lock = [0], [0], [], threading.Lock()
def creator(k):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    i = 0
    while time.monotonic() < stop:
        body = json.dumps({"name": "c%02d-%06d" % (k, i), "type": "container",
                           "image": "busybox:latest", "command": ["sleep", "infinity"]})
        i += 1
        t = time.monotonic()
        c.request("POST", "/api/v1/instances", body, h)
        r = c.getresponse(); r.read()
        with lock:
            clat.append(time.monotonic() - t)
            if r.status == 202: done[0] += 1
            else: failed[0] += 1
t0 = time.monotonic()
ts = [threading.Thread(target=creator, args=(k,)) for k in range(clients)]
for t in ts: t.start()
for t in ts: t.join()
el = time.monotonic() - t0
print(" ".join("%.0f" % x for x in res), done[0], failed[0], "%.1f" % (done[0] / el),
      "%.0f %.0f" % (pct(clat, .5), pct(clat, .99)))
PY
)
read -r f50 f99 fn d50 d99 dn h50 h99 hn e50 e99 en s50 s99 sn l50 l99 ln c_done c_failed c_rate c50 c99 <<<"$out"

echo "Kumo instances bench - SIMULATED hosts and a BENCH-ONLY SQL seed of instances"
echo "build: $build; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-60s %s\n' "instances in the database (seeded + template)" "$((instances + 1))"
printf '%-60s %s\n' "GET ?limit=100, first page: p50 / p99 ms (items)" "$f50 / $f99 ($fn)"
printf '%-60s %s\n' "GET ?limit=100&after=<90% mark>: p50 / p99 ms (items)" "$d50 / $d99 ($dn)"
printf '%-60s %s\n' "GET ?limit=100&host=sim00007: p50 / p99 ms (items)" "$h50 / $h99 ($hn)"
printf '%-60s %s\n' "GET ?limit=100&host=live00001 (no instances yet): p50 / p99" "$e50 / $e99 ($en)"
printf '%-60s %s\n' "GET ?limit=100&state=running: p50 / p99 ms (items)" "$s50 / $s99 ($sn)"
printf '%-60s %s\n' "GET ?limit=100&type=container&label=tier=web: p50 / p99 ms" "$l50 / $l99 ($ln)"
printf '%-60s %s\n' "POST creates, $clients clients, ${create_s} s: done (refused)" "$c_done ($c_failed)"
printf '%-60s %s\n' "  creates/s; p50 / p99 ms" "$c_rate; $c50 / $c99"
