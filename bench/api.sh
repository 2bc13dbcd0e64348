#!/bin/bash
# bench/api.sh - the controller's HTTP API against a bare libmicrohttpd server
# (bench/bare_mhd.c) with the same TLS key, certificate and priorities and the same
# bytes, in the same run, and its writes with group commit on and off:
#
#   - GET /healthz, and GET /api/v1/instances?limit=100 (a full page), requests/s;
#     bare_mhd answers the very bytes the controller answered
#   - POST /api/v1/tokens requests/s (bare_mhd: read the body, answer the same 201)
#   - containers created/s through REST (on 4 SIMULATED hosts, tests/tools/simhosts)
#   - both writes again with group_commit = off: one fsync per commit, on the loop
#
# wrk (keep-alive, TLS) drives the reads and token writes; 16 Python keep-alive
# clients the container creates. Loopback only; the controller's state under /tmp.
#
#   bench/api.sh [--seconds 10] [--connections 16] [--port 10380] [--sim-port 21000]
#                [--build DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
secs=10 conns=16 port=10380 sim_port=21000 build=$src/build-bench
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) secs=$2; shift 2 ;;
	--connections) conns=$2; shift 2 ;;
	--port) port=$2; shift 2 ;;
	--sim-port) sim_port=$2; shift 2 ;;
	--build) build=$2; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "usage: $0 [--seconds S] [--connections N] [--port P] [--sim-port S] [--build DIR]" >&2; exit 2 ;;
	esac
done
say() { printf 'api: %s\n' "$*" >&2; }
command -v wrk >/dev/null || { echo "api: needs wrk (deploy/install-deps.sh test)" >&2; exit 1; }

say "building in $build"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON >/dev/null
nice make -C "$build" -j"$(nproc)" kumo-controllerd simhosts bare_mhd >/dev/null
"$src/tests/guest/build-oci.sh" "$build/guest" >/dev/null
ctld=$build/controllerd/kumo-controllerd

work=$(mktemp -d /tmp/kumo-api.XXXXXX)
ctl_pid='' sim_pid='' bare_pid=''
stop() { # stop PID...: only what this script started
	for p in "$@"; do [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
}
trap 'stop "$sim_pid" "$bare_pid" "$ctl_pid"; rm -rf "$work"' EXIT
url=https://127.0.0.1:$port bare=https://127.0.0.1:$((port + 10))

start_controller() { # start_controller GROUP_COMMIT
	cat >"$work/ctl.conf" <<EOF
state_dir = $work/state
api_listen = 127.0.0.1:$port
link_address = 127.0.0.1
join_port = $((port + 1))
event_port = $((port + 2))
join_rate = 100000
log_level = warn
shared_pool = $work/shared
group_commit = $1
EOF
	mkdir -p "$work/shared"
	"$ctld" -c "$work/ctl.conf" >>"$work/ctl.log" 2>&1 &
	ctl_pid=$!
	for _ in $(seq 150); do
		curl -skf "$url/healthz" >/dev/null 2>&1 && [ -s "$work/state/admin.token" ] && break
		kill -0 "$ctl_pid" 2>/dev/null || { tail "$work/ctl.log" >&2; exit 1; }
		sleep 0.2
	done
	token=$(cat "$work/state/admin.token")
}

# wrk_rate URL [LUA [CONNECTIONS]]: requests/s over $secs s with $conns (or CONNECTIONS)
# keep-alive connections.
wrk_rate() {
	local out
	out=$(wrk -t2 -c"${3:-$conns}" -d"${secs}s" -H "Authorization: Bearer $token" ${2:+-s "$2"} "$1")
	if grep -q "Non-2xx" <<<"$out"; then
		say "non-2xx answers from $1: $(grep Non-2xx <<<"$out")"
	fi
	awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out"
}

# creates SECONDS TAG: containers created/s by 16 keep-alive clients.
creates() {
	python3 - "$url" "$token" "$1" "$2" <<'PY'
import http.client, json, ssl, sys, threading, time, urllib.parse
url, token, seconds, tag = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlparse(url)
ctx = ssl._create_unverified_context()
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
done = [0] * 16
stop = time.monotonic() + seconds
def creator(k):
    c = http.client.HTTPSConnection(u.hostname, u.port, timeout=60, context=ctx)
    i = 0
    while time.monotonic() < stop:
        body = json.dumps({"name": "%s%02d-%06d" % (tag, k, i), "type": "container",
                           "image": "busybox:latest", "command": ["sleep", "infinity"]})
        i += 1
        c.request("POST", "/api/v1/instances", body, h)
        r = c.getresponse(); b = r.read()
        if r.status == 202: done[k] += 1
        elif not failed: failed.append("HTTP %d %s" % (r.status, b[:200]))
failed = []
t0 = time.monotonic()
ts = [threading.Thread(target=creator, args=(k,)) for k in range(16)]
for t in ts: t.start()
for t in ts: t.join()
if failed: print("api: creates refused: %s" % failed[0], file=sys.stderr)
print("%.0f" % (sum(done) / (time.monotonic() - t0)))
PY
}

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"kind":"api","role":"viewer","name":"bench"}'
wrk.headers["Content-Type"] = "application/json"
EOF

declare -A r
for gc in on off; do
	say "controller with group_commit = $gc"
	start_controller "$gc"
	if [ "$gc" = on ]; then
		# Four simulated hosts and an image, so containers have somewhere to go.
		: >"$work/tokens"
		for i in 1 2 3 4; do
			curl -skf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
				-d "{\"kind\":\"join\",\"name\":\"sim0000$i\"}" "$url/api/v1/tokens" |
				jq -r .token >>"$work/tokens"
		done
		"$build/tests/tools/simhosts" --controller "127.0.0.1:$((port + 1))" --tokens "$work/tokens" \
			--hosts 4 --listen-base "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
		sim_pid=$!
		NO_PROXY='*' skopeo --insecure-policy copy --dest-tls-verify=false --dest-registry-token "$token" \
			"oci:$build/guest/busybox-oci:latest" "docker://127.0.0.1:$port/busybox:latest" >/dev/null
		for i in $(seq 121); do
			[ "$(curl -sk -H "Authorization: Bearer $token" "$url/api/v1" | jq -r .counts.hosts_online)" = 4 ] && break
			[ "$i" -lt 121 ] || { tail -3 "$work/sim.log" >&2; exit 1; }
			sleep 0.5
		done
	fi
	say "creates ($gc)"
	r[creates_$gc]=$(creates "$secs" "$gc")
	say "POST /api/v1/tokens ($gc)"
	r[post_$gc]=$(wrk_rate "$url/api/v1/tokens" "$work/post.lua")
	r[post64_$gc]=$(wrk_rate "$url/api/v1/tokens" "$work/post.lua" 64)
	if [ "$gc" = on ]; then
		say "reads, and the same bytes from bare_mhd"
		curl -sk "$url/healthz" >"$work/healthz.body"
		curl -sk -H "Authorization: Bearer $token" "$url/api/v1/instances?limit=100" >"$work/list.body"
		curl -sk -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
			-d '{"kind":"api","role":"viewer","name":"bench"}' "$url/api/v1/tokens" >"$work/post.body"
		prio=$(sed -n '/#define TLS_PRIORITIES/,/SERVER_PRECEDENCE/p' "$src/controllerd/http.c" |
			grep -o '"[^"]*"' | tr -d '"\n')
		"$build/bench/bare_mhd" $((port + 10)) "$work/state/tls.key" "$work/state/tls.crt" "$prio" \
			/healthz="$work/healthz.body" /list="$work/list.body" /post="$work/post.body" &
		bare_pid=$!
		sleep 0.5
		r[healthz]=$(wrk_rate "$url/healthz")
		r[healthz_bare]=$(wrk_rate "$bare/healthz")
		r[list]=$(wrk_rate "$url/api/v1/instances?limit=100")
		r[list_bare]=$(wrk_rate "$bare/list")
		r[post_bare]=$(wrk_rate "$bare/post" "$work/post.lua")
		r[list_bytes]=$(wc -c <"$work/list.body")
		r[batch]=$(curl -sk -H "Authorization: Bearer $token" "$url/metrics" |
			awk '/^kumo_db_sync_batch_commits_sum/ { s = $2 } /^kumo_db_sync_batch_commits_count/ { n = $2 }
			     END { if (n) printf "%.1f (%d fsyncs)", s / n, n }')
		stop "$bare_pid"
		bare_pid=''
	fi
	stop "$ctl_pid"
	ctl_pid=''
done
stop "$sim_pid"
sim_pid=''

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "?" }'; }
echo
echo "Kumo API bench: controller vs bare libmicrohttpd, same TLS and bytes, same run"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c$conns -d${secs}s"
printf '%-48s%12s%12s%10s\n' "" controller bare_mhd ratio
printf '%-48s%12s%12s%10s\n' "GET /healthz (req/s)" "${r[healthz]}" "${r[healthz_bare]}" "$(ratio "${r[healthz]}" "${r[healthz_bare]}")"
printf '%-48s%12s%12s%10s\n' "GET /api/v1/instances?limit=100, ${r[list_bytes]} B" "${r[list]}" "${r[list_bare]}" "$(ratio "${r[list]}" "${r[list_bare]}")"
printf '%-48s%12s%12s%10s\n' "POST /api/v1/tokens, group commit (req/s)" "${r[post_on]}" "${r[post_bare]}" "$(ratio "${r[post_on]}" "${r[post_bare]}")"
printf '%-48s%12s\n' "POST /api/v1/tokens, fsync per commit (req/s)" "${r[post_off]}"
printf '%-48s%12s\n' "  group commit / fsync per commit" "$(ratio "${r[post_on]}" "${r[post_off]}")"
printf '%-48s%12s\n' "POST /api/v1/tokens, 64 connections, group commit" "${r[post64_on]}"
printf '%-48s%12s\n' "POST /api/v1/tokens, 64 connections, fsync per commit" "${r[post64_off]}"
printf '%-48s%12s\n' "  group commit / fsync per commit" "$(ratio "${r[post64_on]}" "${r[post64_off]}")"
printf '%-48s%12s\n' "containers created/s, group commit" "${r[creates_on]}"
printf '%-48s%12s\n' "containers created/s, fsync per commit" "${r[creates_off]}"
printf '%-48s%12s\n' "  group commit / fsync per commit" "$(ratio "${r[creates_on]}" "${r[creates_off]}")"
printf '%-48s%12s\n' "commits per fsync (group commit run)" "${r[batch]}"
