#!/bin/bash
# bench/heartbeats.sh - do N SIMULATED hosts beating every second stay online on one
# controller? (tests/tools/simhosts: the real sealed link, nothing runs on them; a
# measure of the controller only.)
#
# One controller (tls off, loopback, heartbeat_interval 1), N simulated hosts joined
# through single-use tokens; once all are online (or after --join-timeout), it holds
# for --hold seconds and samples every second: hosts online (the lowest and the last),
# heartbeats taken (kumo_link_messages_total{type="heartbeat"}), the loop lag
# (kumo_loop_lag_seconds, the largest) and GET /healthz every 100 ms (p50, p99).
# The controller's CPU time per heartbeat taken is its CPU time over the hold divided
# by the heartbeats taken meanwhile.
#
# usage: bench/heartbeats.sh [--hosts 5000] [--hold 60] [--join-timeout 300]
#                            [--build DIR] [--port 10480] [--sim-port 12000]
#                            [--full-facts]
# --build DIR: a build (RelWithDebInfo) with kumo-controllerd and simhosts in it;
# compare two builds by running this twice with the same options. --full-facts makes
# every simulated beat carry the whole facts, as agents did before facts digests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
. "$here/simlib.sh"
hosts=5000 hold=60 join_timeout=300 port=10480 sim_port=12000 sim_args=()
build=$src/build-bench
while [ $# -gt 0 ]; do
	case $1 in
	--hosts) hosts=$2; shift 2 ;;
	--hold) hold=$2; shift 2 ;;
	--join-timeout) join_timeout=$2; shift 2 ;;
	--full-facts) sim_args+=(--full-facts); shift ;;
	*) sim_option "$1" "${2-}" || sim_usage 19; shift 2 ;;
	esac
done
sim_setup heartbeats
sim_bins "$build"
sim_ctl_conf "$work" 'heartbeat_interval = 1' 'join_rate = 100000' 'metrics_public = yes'
sim_ctl_start "$work"
sim_tokens_mint "$hosts" "$work/tokens"

t0=$(now_ms)
sim_hosts_start "$work/tokens" "$hosts" "$sim_port" "$work/sim.log" "${sim_args[@]}"
sim_wait_online "$hosts" "$join_timeout" || true
on=$sim_on best=$sim_best
all_s=$( ((on >= hosts)) && awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }' || echo "never (best $best)")
say "$on of $hosts online after $((($(now_ms) - t0) / 1000)) s; holding for $hold s"

c0=$(cpu_ticks "$ctl_pid")
out=$(python3 - "$api_url" "$token" "$hold" <<'PY'
import http.client, json, sys, threading, time, urllib.parse
url, token, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
u = urllib.parse.urlparse(url)
h = {"Authorization": "Bearer " + token}
running, lat, lag, online = [True], [], [0.0], []
beats = []

def get(c, path):
    c.request("GET", path, headers=h)
    r = c.getresponse()
    return r.read().decode()

def prober():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    while running[0]:
        t = time.monotonic()
        get(c, "/healthz")
        lat.append(time.monotonic() - t)
        time.sleep(0.1)

def sampler():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    while running[0]:
        t = time.monotonic()
        for line in get(c, "/metrics").splitlines():
            if line.startswith("kumo_loop_lag_seconds "):
                lag[0] = max(lag[0], float(line.split()[1]))
            elif line.startswith('kumo_link_messages_total{type="heartbeat"}'):
                beats.append((time.monotonic(), int(float(line.split()[1]))))
        online.append(json.loads(get(c, "/api/v1"))["counts"]["hosts_online"])
        time.sleep(max(0, 1 - (time.monotonic() - t)))

ts = [threading.Thread(target=prober), threading.Thread(target=sampler)]
for t in ts: t.start()
time.sleep(hold)
running[0] = False
for t in ts: t.join()
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
taken = beats[-1][1] - beats[0][1] if len(beats) > 1 else 0
rate = taken / (beats[-1][0] - beats[0][0]) if len(beats) > 1 else 0
print("%d %d %d %.0f %.0f %.0f %.0f %d" % (min(online), online[-1], taken, rate, pct(.5), pct(.99),
      lag[0] * 1000, len(lat)))
PY
)
c1=$(cpu_ticks "$ctl_pid")
read -r on_min on_last taken rate h50 h99 lag nprobe <<<"$out"
per_beat=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v n="$taken" \
	'BEGIN { if (n > 0) printf "%.0f", 1e6 * t / hz / n; else print "n/a" }')
cpu=$(cpu_percent $((c1 - c0)) $((hold * 1000)))

echo "Kumo heartbeat bench - SIMULATED hosts (tests/tools/simhosts: real link, no workloads)"
echo "build: $build ${sim_args[*]:-}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-52s %s\n' "hosts (1 s heartbeats)" "$hosts"
printf '%-52s %s\n' "time until all online (s)" "$all_s"
printf '%-52s %s\n' "hosts online over the ${hold} s hold, lowest / last" "$on_min / $on_last"
printf '%-52s %s\n' "heartbeats taken/s during the hold" "$rate"
printf '%-52s %s\n' "controller CPU per heartbeat taken (us)" "$per_beat"
printf '%-52s %s\n' "controller CPU during the hold (% of a core)" "$cpu"
printf '%-52s %s\n' "GET /healthz p50 / p99 ms (n=$nprobe)" "$h50 / $h99"
printf '%-52s %s\n' "longest loop lag (kumo_loop_lag_seconds), ms" "$lag"
