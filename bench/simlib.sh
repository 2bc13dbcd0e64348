# shellcheck shell=bash
# bench/simlib.sh - what the bench scripts that run one controller against SIMULATED
# hosts (tests/tools/simhosts: the real sealed link, nothing runs on them) share.
# Sourced, never run: heartbeats.sh, instances.sh, netsync.sh, scale.sh, sse.sh.
#
# A script sets $src (the source tree), sources this file, parses its options (the
# shared ones through sim_option), then:
#
#   sim_setup NAME            # say(), $work, $api_url, the EXIT trap
#   sim_bins "$build"         # $ctld, $simhosts (or sim_build first to make them)
#   sim_ctl_conf "$work" 'heartbeat_interval = 1'
#   sim_ctl_start "$work"     # $ctl_pid, $token
#   sim_tokens_mint N "$work/tokens" sim
#   sim_hosts_start "$work/tokens" N "$sim_port" "$work/sim.log"
#   sim_wait_online N 300 || ...
#
# The controller runs with tls = off on loopback and its state under /tmp; nothing
# leaves loopback. Only the processes these functions started are ever stopped, by
# their pids.

# The nice level of the controller and the simulated hosts; sse.sh runs them at 0.
sim_nice=${sim_nice:-5}

# sim_option NAME VALUE: the options every one of these scripts takes: --build DIR,
# --port P (the API; P+1 join, P+2 events) and --sim-port S (the simulated hosts'
# command sockets from S on). Sets $build, $port or $sim_port; returns 1 for any other
# NAME.
sim_option() {
	case $1 in
	--build) build=$2 ;;
	--port) port=$2 ;;
	--sim-port) sim_port=$2 ;;
	*) return 1 ;;
	esac
}

# sim_usage LAST: lines 2..LAST of the script's header comment (its usage) on stderr,
# then exits 2.
sim_usage() {
	sed -n "2,$1p" "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

say() { printf '%s: %s\n' "$sim_name" "$*" >&2; }
# Time from /proc/uptime: the wall clock of a VM may be stepped while it runs.
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
# cpu_ticks PID: utime + stime in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# cpu_percent TICKS MS: TICKS of CPU time over MS of wall time, in % of a core.
cpu_percent() {
	awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v ms="$2" \
		'BEGIN { printf "%.1f", 100 * t / hz / (ms / 1000) }'
}

# sim_setup NAME [KEEP]: say() prefixes NAME; a fresh work directory
# /tmp/kumo-NAME.XXXXXX in $work, removed at exit unless KEEP is 1; $api_url from
# $port; an EXIT trap that stops the controller and the simulated hosts this script
# started.
sim_setup() {
	sim_name=$1 sim_keep=${2:-0}
	work=$(mktemp -d "/tmp/kumo-$1.XXXXXX")
	api_url=http://127.0.0.1:$port
	ctl_pid='' sim_pid='' token=''
	trap 'sim_stop_all; [ "$sim_keep" = 1 ] || rm -rf "$work"' EXIT
}

# sim_build BUILD TARGET...: an optimised build (the tests' build has sanitizers) of
# the TARGETs in BUILD.
sim_build() {
	local build=$1
	shift
	cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=ON >/dev/null
	nice make -C "$build" -j"$(nproc)" "$@" >/dev/null
}

# sim_bins BUILD: $ctld and $simhosts from BUILD; exits unless both are built.
sim_bins() {
	ctld=$1/controllerd/kumo-controllerd
	simhosts=$1/tests/tools/simhosts
	[ -x "$ctld" ] && [ -x "$simhosts" ] ||
		{ echo "$sim_name.sh: build kumo-controllerd and simhosts in $1 first" >&2; exit 1; }
}

# Each stop forgets its pid, so stopping twice (a phase, then the trap) is harmless.
sim_stop_hosts() { [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true; sim_pid=''; }
sim_stop_ctl() { [ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null && wait "$ctl_pid" 2>/dev/null || true; ctl_pid=''; }
sim_stop_all() {
	sim_stop_hosts
	sim_stop_ctl
}

# sim_ctl_conf DIR [LINE...]: DIR/ctl.conf for a controller on $port (API), $port+1
# (join) and $port+2 (events), state in DIR/state, the shared pool DIR/shared, and
# each LINE (e.g. 'heartbeat_interval = 1') appended.
sim_ctl_conf() {
	local dir=$1 line
	shift
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
EOF
	for line in "$@"; do printf '%s\n' "$line" >>"$dir/ctl.conf"; done
}

# sim_ctl_start DIR: the controller on DIR/ctl.conf, its log appended to DIR/ctl.log
# (a restart keeps the first run's); returns once it answers /healthz and has written
# its admin token, which it sets in $token. Exits if it dies or takes 120 s.
sim_ctl_start() {
	local dir=$1 t0
	nice -n "$sim_nice" "$ctld" -c "$dir/ctl.conf" >>"$dir/ctl.log" 2>&1 &
	ctl_pid=$!
	t0=$(now_ms)
	until curl -sf "$api_url/healthz" >/dev/null 2>&1 && [ -s "$dir/state/admin.token" ]; do
		kill -0 "$ctl_pid" 2>/dev/null || { tail "$dir/ctl.log" >&2; exit 1; }
		(($(now_ms) - t0 < 120000)) || { say "the controller did not answer in 120 s"; exit 1; }
		sleep 0.2
	done
	token=$(cat "$dir/state/admin.token")
}

# sim_tokens_mint N FILE [PREFIX]: N single-use join tokens for hosts PREFIX00001...
# (PREFIX defaults to sim), one per line in FILE, from 8 connections at once (the
# controller's group commit batches them).
sim_tokens_mint() {
	python3 - "$api_url" "$token" "$1" "$2" "${3:-sim}" <<'PY'
import http.client, json, sys, threading, urllib.parse
url, token, n, out, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
u = urllib.parse.urlparse(url)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
toks = [None] * n
def mint(k):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    for i in range(k, n, 8):
        c.request("POST", "/api/v1/tokens", json.dumps({"kind": "join", "name": "%s%05d" % (prefix, i + 1)}), h)
        r = c.getresponse(); b = r.read()
        if r.status != 201: sys.exit("join token %d: HTTP %d %s" % (i, r.status, b[:200]))
        toks[i] = json.loads(b)["token"]
ts = [threading.Thread(target=mint, args=(k,)) for k in range(8)]
for t in ts: t.start()
for t in ts: t.join()
if None in toks: sys.exit("join tokens: some were not minted")
open(out, "w").write("".join(t + "\n" for t in toks))
PY
}

# sim_hosts_start TOKENS N SIM_PORT LOG [SIMHOSTS_ARG...]: N simulated hosts joining
# with the tokens in TOKENS, their command sockets on SIM_PORT..SIM_PORT+N-1; sets
# $sim_pid and $sim_log.
sim_hosts_start() {
	local tokens=$1 n=$2 listen=$3 log=$4
	shift 4
	sim_log=$log
	nice -n "$sim_nice" "$simhosts" --controller "127.0.0.1:$((port + 1))" --tokens "$tokens" \
		--hosts "$n" --listen-base "127.0.0.1:$listen" "$@" >"$log" 2>&1 &
	sim_pid=$!
}

# sim_online: the hosts online (counts.hosts_online), 0 when the controller does not
# answer in time.
sim_online() { curl -sS --max-time 30 -H "Authorization: Bearer $token" "$api_url/api/v1" | jq -r '.counts.hosts_online // 0' 2>/dev/null || echo 0; }

# sim_wait_online N TIMEOUT_S [COUNT]: polls COUNT (a command printing how many of the
# hosts are online; sim_online by default) every half second until it reaches N.
# Returns 0 then, 1 after TIMEOUT_S; $sim_on is the last count, $sim_best the highest.
# Exits, showing their log, if the simulated hosts die.
sim_wait_online() {
	local n=$1 timeout_ms=$(($2 * 1000)) count=${3:-sim_online} t0
	t0=$(now_ms)
	sim_on=0 sim_best=0
	while :; do
		sim_on=$($count)
		((sim_on > sim_best)) && sim_best=$sim_on
		[ "$sim_on" -ge "$n" ] && return 0
		(($(now_ms) - t0 < timeout_ms)) || return 1
		kill -0 "$sim_pid" 2>/dev/null || { tail "$sim_log" >&2; exit 1; }
		sleep 0.5
	done
}

# sim_image_push OCI: the OCI layout directory OCI into the controller's registry as
# busybox:latest.
sim_image_push() {
	NO_PROXY='*' skopeo --insecure-policy copy --dest-tls-verify=false --dest-registry-token "$token" \
		"oci:$1:latest" "docker://127.0.0.1:$port/busybox:latest" >/dev/null
}
