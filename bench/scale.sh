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
. "$here/simlib.sh"
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
	--keep) keep=1; shift ;;
	--heartbeat) heartbeat=$2; shift 2 ;;
	-h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) sim_option "$1" "${2-}" || { echo "usage: $0 [--sizes \"1000 5000\"] [--create-seconds S] [--clients N] [--port P] [--sim-port S] [--build DIR] [--keep]" >&2; exit 2; }; shift 2 ;;
	esac
done

sim_setup scale "$keep"

# The controller, the simulator and the scheduler harness.
say "building in $build"
sim_build "$build" kumo-controllerd simhosts sched_bench
sim_bins "$build"
"$src/tests/guest/build-oci.sh" "$build/guest" >/dev/null

kget() { curl -sS --max-time 30 -H "Authorization: Bearer $token" "$api_url$1"; }
rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

declare -A joined join_s online_s rss cpu beat
largest=''
for n in $sizes; do
	dir=$work/$n
	beat[$n]=${heartbeat:-$(((n + 999) / 1000))}
	say "$n hosts: controller in $dir, heartbeats every ${beat[$n]} s"
	sim_ctl_conf "$dir" "heartbeat_interval = ${beat[$n]}" 'join_rate = 100000'
	sim_ctl_start "$dir"
	sim_tokens_mint "$n" "$dir/tokens"
	t0=$(now_ms)
	sim_hosts_start "$dir/tokens" "$n" "$sim_port" "$dir/sim.log"
	sim_wait_online "$n" 300 || true
	on=$sim_on
	joined[$n]=$on
	join_s[$n]=$(sed -n 's/.*joined in \([0-9.]*\) s.*/\1/p' "$dir/sim.log")
	online_s[$n]=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
	say "$n hosts: $on online after ${online_s[$n]} s; measuring idle for 30 s"
	sleep 10
	c0=$(cpu_ticks "$ctl_pid") w0=$(now_ms)
	sleep 30
	c1=$(cpu_ticks "$ctl_pid") w1=$(now_ms)
	cpu[$n]=$(cpu_percent $((c1 - c0)) $((w1 - w0)))
	rss[$n]=$(rss_mb "$ctl_pid")
	say "$n hosts: RSS ${rss[$n]} MB, CPU ${cpu[$n]}% with heartbeats only"
	largest=$n
	[ "$n" = "${sizes##* }" ] || sim_stop_all
done

# Creates against the largest cluster, still running.
say "creates: $clients keep-alive clients for $create_s s against $largest hosts"
sim_image_push "$build/guest/busybox-oci"
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
