#!/bin/bash
# bench/scale.sh - one controller against SIMULATED hosts (tests/tools/simhosts: the
# real, sealed agent link, but nothing runs on them), printing one table:
#
#   - hosts joined, and the time from the first join to all of them online
#   - the controller's RSS and CPU% once they are all online and only heartbeat
#   - the scheduler's placements per second in process (bench/sched_bench.c)
#   - containers created per second through REST by keep-alive clients, and the
#     latency of GET /api/v1/instances while they run
#
# The controller runs with tls = off on loopback and its own state directory under
# /tmp; nothing leaves loopback. Runs under nice. Takes about 10-15 minutes.
#
#   bench/scale.sh [--sizes "1000 5000"] [--create-seconds 120] [--clients 16]
#                  [--heartbeat S] [--port 10280] [--sim-port 20000] [--build DIR] [--keep]
#
# The heartbeat interval (the controller's heartbeat_interval, told to each host at
# join) is --heartbeat S, or by default one second per 1,000 hosts: about 1,000
# heartbeats a second, what one controller processes comfortably here (at 5,000
# hosts beating every second it falls behind and hosts go offline; see README).
#
# --port P uses P (API), P+1 (join) and P+2 (events); --sim-port S uses S..S+N-1 for
# the simulated hosts' command sockets. Creates run against the largest size.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
sizes="1000 5000"
create_s=120
clients=16
port=10280
sim_port=20000
build=$src/build-bench
keep=0
heartbeat=''
while [ $# -gt 0 ]; do
	case $1 in
	--sizes) sizes=$2; shift 2 ;;
	--create-seconds) create_s=$2; shift 2 ;;
	--clients) clients=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--sim-port) sim_port=$2; shift 2 ;;
	--build) build=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	--heartbeat) heartbeat=$2; shift 2 ;;
	-h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "usage: $0 [--sizes \"1000 5000\"] [--create-seconds S] [--clients N] [--port P] [--sim-port S] [--build DIR] [--keep]" >&2; exit 2 ;;
	esac
done

say() { printf 'scale: %s\n' "$*" >&2; }
# Time from /proc/uptime: the wall clock of a VM may be stepped while it runs.
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# An optimised build (the tests' build has sanitizers): the controller, the simulator
# and the scheduler harness.
say "building in $build"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON >/dev/null
nice make -C "$build" -j"$(nproc)" kumo-controllerd simhosts sched_bench >/dev/null
ctld=$build/controllerd/kumo-controllerd
simhosts=$build/tests/tools/simhosts
"$src/tests/guest/build-oci.sh" "$build/guest" >/dev/null

work=$(mktemp -d /tmp/kumo-scale.XXXXXX)
ctl_pid='' sim_pid=''
stop_all() {
	# Only the processes this script started, by their pids.
	[ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true
	[ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null && wait "$ctl_pid" 2>/dev/null || true
	sim_pid='' ctl_pid=''
}
trap 'stop_all; [ $keep = 1 ] || rm -rf "$work"' EXIT

api_url=http://127.0.0.1:$port
token=''
kget() { curl -sS --max-time 30 -H "Authorization: Bearer $token" "$api_url$1"; }

start_controller() { # start_controller DIR HEARTBEAT_S
	local dir=$1 i
	mkdir -p "$dir/shared"
	cat >"$dir/ctl.conf" <<EOF
state_dir = $dir/state
api_listen = 127.0.0.1:$port
tls = off
link_address = 127.0.0.1
join_port = $((port + 1))
event_port = $((port + 2))
log_level = warn
shared_pool = $dir/shared
heartbeat_interval = $2
join_rate = 100000
EOF
	nice -n 5 "$ctld" -c "$dir/ctl.conf" >"$dir/ctl.log" 2>&1 &
	ctl_pid=$!
	for ((i = 0; i < 150; i++)); do
		curl -sf "$api_url/healthz" >/dev/null 2>&1 && break
		kill -0 "$ctl_pid" 2>/dev/null || { tail "$dir/ctl.log" >&2; exit 1; }
		sleep 0.2
	done
	token=$(cat "$dir/state/admin.token")
}

# mint N FILE: N single-use join tokens through the API, one per line.
mint() {
	python3 - "$api_url" "$token" "$1" "$2" <<'PY'
import http.client, json, sys, urllib.parse
url, token, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(url)
c = http.client.HTTPConnection(u.hostname, u.port)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
with open(out, "w") as f:
    for i in range(n):
        c.request("POST", "/api/v1/tokens",
                  json.dumps({"kind": "join", "name": "sim%05d" % (i + 1)}), h)
        r = c.getresponse(); b = r.read()
        if r.status != 201:
            sys.exit("join token %d: HTTP %d %s" % (i, r.status, b[:200]))
        f.write(json.loads(b)["token"] + "\n")
PY
}

# cpu_ticks PID: utime + stime in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

declare -A joined join_s online_s rss cpu beat
largest=''
for n in $sizes; do
	dir=$work/$n
	beat[$n]=${heartbeat:-$(((n + 999) / 1000))}
	say "$n hosts: controller in $dir, heartbeats every ${beat[$n]} s"
	start_controller "$dir" "${beat[$n]}"
	mint "$n" "$dir/tokens"
	t0=$(now_ms)
	nice -n 5 "$simhosts" --controller "127.0.0.1:$((port + 1))" --tokens "$dir/tokens" \
		--hosts "$n" --listen-base "127.0.0.1:$sim_port" >"$dir/sim.log" 2>&1 &
	sim_pid=$!
	on=0
	while :; do
		on=$(kget /api/v1 | jq -r '.counts.hosts_online // 0' 2>/dev/null || echo 0)
		[ "$on" -ge "$n" ] && break
		(($(now_ms) - t0 < 300000)) || break
		kill -0 "$sim_pid" 2>/dev/null || { tail "$dir/sim.log" >&2; exit 1; }
		sleep 0.5
	done
	joined[$n]=$on
	join_s[$n]=$(sed -n 's/.*joined in \([0-9.]*\) s.*/\1/p' "$dir/sim.log")
	online_s[$n]=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
	say "$n hosts: $on online after ${online_s[$n]} s; measuring idle for 30 s"
	sleep 10
	c0=$(cpu_ticks "$ctl_pid") w0=$(now_ms)
	sleep 30
	c1=$(cpu_ticks "$ctl_pid") w1=$(now_ms)
	cpu[$n]=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v ms=$((w1 - w0)) \
		'BEGIN { printf "%.1f", 100 * t / hz / (ms / 1000) }')
	rss[$n]=$(rss_mb "$ctl_pid")
	say "$n hosts: RSS ${rss[$n]} MB, CPU ${cpu[$n]}% with heartbeats only"
	largest=$n
	[ "$n" = "${sizes##* }" ] || stop_all
done

# Creates against the largest cluster, still running.
say "creates: $clients keep-alive clients for $create_s s against $largest hosts"
NO_PROXY='*' skopeo --insecure-policy copy --dest-tls-verify=false --dest-registry-token "$token" \
	"oci:$build/guest/busybox-oci:latest" "docker://127.0.0.1:$port/busybox:latest" >/dev/null
creates=$(python3 - "$api_url" "$token" "$clients" "$create_s" <<'PY'
import http.client, json, sys, threading, time, urllib.parse
url, token, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
u = urllib.parse.urlparse(url)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
stop = time.monotonic() + seconds
done, failed, lat = [0] * clients, [0] * clients, []

def creator(k):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    i = 0
    while time.monotonic() < stop:
        body = json.dumps({"name": "b%02d-%06d" % (k, i), "type": "container",
                           "image": "busybox:latest", "command": ["sleep", "infinity"]})
        i += 1
        try:
            c.request("POST", "/api/v1/instances", body, h)
            r = c.getresponse(); r.read()
            if r.status == 202: done[k] += 1
            else: failed[k] += 1
        except Exception:
            failed[k] += 1
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

def lister():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    while time.monotonic() < stop:
        t = time.monotonic()
        c.request("GET", "/api/v1/instances?limit=100", headers=h)
        r = c.getresponse(); r.read()
        lat.append(time.monotonic() - t)
        time.sleep(0.2)

t0 = time.monotonic()
ts = [threading.Thread(target=creator, args=(k,)) for k in range(clients)]
ts.append(threading.Thread(target=lister))
for t in ts: t.start()
for t in ts: t.join()
el = time.monotonic() - t0
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
print("%d %d %.1f %.0f %.0f %d" % (sum(done), sum(failed), sum(done) / el, pct(0.5), pct(0.99), len(lat)))
PY
)
read -r c_done c_failed c_rate l50 l99 l_n <<<"$creates"
# The list pages now; count in the database (WAL: a reader does not disturb it).
total=$(sqlite3 "$work/$largest/state/kumo.db" "SELECT count(*) FROM instances")

say "scheduler harness"
declare -A sched
for n in 1000 5000; do
	sched[$n]=$("$build/bench/sched_bench" "$n" 3 | awk '{ print $3 }')
done

echo
echo "Kumo scale bench - SIMULATED hosts (tests/tools/simhosts: real link, no workloads)"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-44s' "hosts"
for n in $sizes; do printf '%14s' "$n"; done
echo
printf '%-44s' "heartbeat interval (s)"
for n in $sizes; do printf '%14s' "${beat[$n]}"; done
echo
printf '%-44s' "hosts joined and online"
for n in $sizes; do printf '%14s' "${joined[$n]}"; done
echo
printf '%-44s' "time until all joined (s, simhosts)"
for n in $sizes; do printf '%14s' "${join_s[$n]:-?}"; done
echo
printf '%-44s' "time until all online (s)"
for n in $sizes; do printf '%14s' "${online_s[$n]}"; done
echo
printf '%-44s' "controller RSS, heartbeats only (MB)"
for n in $sizes; do printf '%14s' "${rss[$n]}"; done
echo
printf '%-44s' "controller CPU, heartbeats only (% of a core)"
for n in $sizes; do printf '%14s' "${cpu[$n]}"; done
echo
printf '%-44s%14s%14s\n' "scheduler placements/s (CPU time), hosts:" "1000: ${sched[1000]}" "5000: ${sched[5000]}"
printf '%-44s%14s\n' "containers created through REST ($clients clients)" "$c_done in ${create_s}s"
printf '%-44s%14s\n' "  creates/s (refused or failed: $c_failed)" "$c_rate"
printf '%-44s%14s\n' "  instances in the cluster afterwards" "$total"
printf '%-44s%14s\n' "GET /api/v1/instances?limit=100 during creates, p50 ms" "$l50"
printf '%-44s%14s\n' "GET /api/v1/instances?limit=100 during creates, p99 ms" "$l99 (n=$l_n)"
