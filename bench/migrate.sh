#!/bin/bash
# Live migration of an idle 256 MiB test guest on shared storage: Kumo's migrate
# (POST .../actions/migrate, h1 <-> h2 of a running lab, TLS, operation to its end)
# against the same migration driven by hand with raw QMP between two bare QEMUs
# (max-bandwidth raised the same), in the same run. The baseline's time counts from
# the target QEMU's start to its guest running (after QMP's "completed"), as Kumo's
# counts from the call (which starts the target QEMU) to the operation's end (the
# target's resume).
#
# Each round runs three raw migrations, then Kumo's, so a load drift on this shared
# machine hits all of them alike and each round gives paired ratios:
#   hosts  the same migration as Kumo's: the bare source QEMU in the lab's h1 (or h2)
#          network namespace, the target in the other's, the stream across the lab's
#          underlay (veth, bridge, MTU 1500) between the hosts' addresses, with TLS as
#          Kumo's (issue 13 mandates TLS): tls-creds-x509 objects on both QEMUs (the
#          target's on its command line, -incoming defer, then tls-creds and
#          migrate-incoming; the source's by object-add, then tls-creds and
#          tls-hostname), both verifying the peer, with a CA, server and client
#          certificates made by openssl before any timed window (EC P-256 and the
#          extensions Kumo's own certificates carry; the server's DH group RFC 7919's
#          ffdhe2048, as Kumo's). The goal (kumo/raw 1.10 or less) is judged on
#          ratio_tls_hosts.
#   tls    the same between two bare QEMUs on one host's loopback (MTU 65536, no
#          network between them): ratio_tls_loopback, printed for reference - it
#          holds the lab network's cost, which is the lab's, not Kumo's.
#   plain  loopback without TLS: ratio_plain_loopback, how much TLS costs on top.
#
# Both sides are timed by one Python process each, with the same clock rules: the raw
# run's QMP connection to its source and Kumo's HTTPS connection to the controller
# (TLS handshake included) are made before the timed window; inside it the raw run
# polls query-migrate every 10 ms, Kumo's client POSTs the migrate and long-polls the
# operation (?wait=60) on the same connection - no curl, jq or interpreter start-up
# is charged to either side. Before each timed run both touch and free the same
# memory (warm_memory below; --cold: not).
#
# --raw-cgroup adds a fourth raw run per round, "tls-as-kumo": hosts, its QEMUs also
# in cgroups of the kind Kumo's agent makes for a VM (agentd/vmcgroup.c: cpu
# controller, /kumo/GROUP/NAME, cpu.shares 1024 per vCPU, a quota of vCPUs + 1 CPUs;
# one GROUP per end, as Kumo's per-host level), so they get the CPU share Kumo's QEMUs
# get instead of a root-cgroup thread's each (cgroup v1 only; the memory and pids
# controllers are left alone): ratio_tls_as_kumo.
#
# --postcopy: the Kumo runs with the post-copy grant on h1 and h2: their agents restart
# with --qemu-user root (hosts/hI/agent.args, read by deploy/lab up, as
# tests/integration/test_migrate_load.sh does; back to the default at the end, also on
# failure), so under TCG Kumo post-copies at once instead of pausing first: what a host
# with the grant gets (docs/architecture.md, "Post-copy and userfaultfd").
#
# The guest-visible pause: QEMU's downtime counts from the source's last stop to the
# end of the stream, which is the guest's pause only when the guest ran during the
# copy (pre-copy, post-copy). A TCG guest without the grant is paused before the copy
# (pause-then-migrate) and runs again only at the target's resume, so its pause is
# result.paused_ms (the source's stop to its report of the completed copy) plus the
# controller's switchover_ms and resume_ms (to the target's report of its cont; the
# source report's hop to the controller is counted nowhere, the resume report's hop
# is counted: each well under a ms in the lab). The 100 ms goal is judged on that pause;
# QEMU's downtime is printed too, named as such.
#
# Prints medians, the ratios of the medians and the median of each round's paired
# ratio, the guest-visible pause (goal 100 ms or less for Kumo's) and QEMU's
# downtime, and for each Kumo run the
# operation's result.timings (where the time went: the controller's phases and each
# agent's own steps; api/openapi.yaml MigrationTimings). Needs root, python3, openssl,
# a lab (deploy/lab up; --lab NAME, else $KUMO_LAB_NAME, else kumo) and the lab's test
# image kumo-test. Only loopback and the lab are used. A last line times the same
# guest with its disk on the local pool (a linked clone, mirrored over NBD before the
# memory moves), one migration, for reference (--no-local: not).
#
#   bench/migrate.sh [-n N] [--lab NAME] [--raw-cgroup] [--postcopy] [--no-local]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/..
runs=3
lab_name=${KUMO_LAB_NAME:-kumo}
raw_cgroup=0 postcopy=0 local_run=1 warm=1
while [ $# -gt 0 ]; do
	case $1 in
	-n) runs=$2; shift 2 ;;
	--lab) lab_name=$2; shift 2 ;;
	--raw-cgroup) raw_cgroup=1; shift ;;
	--postcopy) postcopy=1; shift ;;
	--no-local) local_run=0; shift ;;
	--cold) warm=0; shift ;;
	*) echo "usage: $0 [-n N] [--lab NAME] [--raw-cgroup] [--postcopy] [--no-local] [--cold]" >&2; exit 2 ;;
	esac
done
cpu_cg=/sys/fs/cgroup/cpu
if [ "$raw_cgroup" = 1 ] && [ ! -f "$cpu_cg/cpu.shares" ]; then
	echo "bench: --raw-cgroup needs cgroup v1's cpu controller at $cpu_cg" >&2
	exit 2
fi
# The raw QEMUs' cgroups (--raw-cgroup): one level per end, as Kumo's per host.
raw_cg_base=$cpu_cg/kumo/bench-raw-$$
eval "$("$src/deploy/lab" --name "$lab_name" env)"
tmp=$(mktemp -d /tmp/kumo-bench-migrate.XXXXXX)
pids=()
granted=()
cleanup() {
	local n op
	# A second Ctrl-C must not cut the agents' restore short (they would stay down).
	trap '' INT TERM HUP
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	# The deletes end before the agents restart (ungrant), not under them.
	for n in bench-mig bench-mig-local; do
		op=$(kapi -X DELETE "$KUMO_URL/api/v1/instances/$n?force=1" 2>/dev/null | jq -r '.id // empty' 2>/dev/null) || true
		[ -z "$op" ] || kapi "$KUMO_URL/api/v1/operations/$op?wait=60" >/dev/null 2>&1 || true
	done
	[ "${#granted[@]}" -eq 0 ] || ungrant || echo "bench: restoring ${granted[*]}'s agents failed: check deploy/lab --name $lab_name status" >&2
	rm -rf "$tmp"
	# Their QEMUs are killed above; a cgroup goes once its last task is reaped.
	if [ -d "$raw_cg_base-a" ] || [ -d "$raw_cg_base-b" ]; then
		for _ in $(seq 50); do
			rmdir "$raw_cg_base"-?/* "$raw_cg_base"-? 2>/dev/null || true
			[ -d "$raw_cg_base-a" ] || [ -d "$raw_cg_base-b" ] || break
			sleep 0.1
		done
	fi
}
trap cleanup EXIT
kapi() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $(cat "$KUMO_TOKEN_FILE")" "$@"; }
# agents_restart WANT HOST...: the hosts' agents killed and started again by deploy/lab
# up (with their agent.args), until each reports the host fact qemu_user WANT ("root"
# granted, or back to the agent's default; not the fact postcopy, which a host's
# vm.unprivileged_userfaultfd=1 makes true either way). Their guests run on (an agent
# adopts its QEMUs again).
agents_restart() {
	local want=$1 h p end pids=()
	shift
	for h; do pids+=("$(cat "$KUMO_LAB_DIR/hosts/$h/agent.pid")"); done
	kill "${pids[@]}"
	end=$((SECONDS + 30))
	for p in "${pids[@]}"; do
		while [ -e "/proc/$p" ] && ! grep -q '^State:.*[ZX]' "/proc/$p/status" 2>/dev/null; do
			[ $SECONDS -lt $end ] || { echo "bench: agent $p did not stop" >&2; return 1; }
			sleep 0.1
		done
	done
	KUMO_LAB_NO_BUILD=1 "$src/deploy/lab" --name "$lab_name" up --hosts "$KUMO_LAB_HOSTS" >/dev/null || return 1
	end=$((SECONDS + 60))
	for h; do
		until kapi "$KUMO_URL/api/v1/hosts/$h" | jq -e --arg w "$want" \
			'.state == "online" and (if $w == "root" then .facts.qemu_user == "root" else .facts.qemu_user != "root" end)' >/dev/null; do
			[ $SECONDS -lt $end ] || { echo "bench: $h is not online with qemu_user $want" >&2; return 1; }
			sleep 0.2
		done
	done
}
# grant HOST...: their agents with --qemu-user root (the post-copy grant); ungrant: back.
grant() {
	local h
	granted=("$@")
	for h; do printf '%s\n' --qemu-user root >"$KUMO_LAB_DIR/hosts/$h/agent.args"; done
	agents_restart root "$@"
}
ungrant() {
	local h
	for h in "${granted[@]}"; do rm -f "$KUMO_LAB_DIR/hosts/$h/agent.args"; done
	agents_restart default "${granted[@]}" && granted=()
}
# guest_pause: jq filter, an operation -> the guest-visible pause in ms (see the top):
# paused first, from the source's stop to the target's resume report; held paused on
# the target (-S, local disks), QEMU's downtime plus the same switchover and resume;
# else QEMU's downtime.
guest_pause='.result as $r | (($r.timings.switchover_ms // 0) + ($r.timings.resume_ms // 0)) as $resume
	| if $r.paused_ms != null then $r.paused_ms + $resume
	  elif $r.target_paused == true then $r.downtime_ms + $resume
	  else $r.downtime_ms end'
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# kumo_migrate NAME HOST SECONDS SOURCE-PID: one Kumo migration timed by one Python
# process (see the top): prints its total ms on the first line, the final operation on
# the second, and on the third the source QEMU's CPU (utime + stime) from the call to
# its last sample (every 5 ms) before it quit: the copy, the source paused for it.
kumo_migrate() {
	python3 - "$KUMO_URL" "$KUMO_CACERT" "$KUMO_TOKEN_FILE" "$@" <<'PY'
import http.client, json, os, ssl, sys, threading, time, urllib.parse
url, cacert, token_file, name, host, limit, src_pid = sys.argv[1:8]
def cpu(pid):  # utime + stime of pid (all its threads, the ended ones too), in ms
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) * 1000 // os.sysconf("SC_CLK_TCK")
src_cpu = [None, None]
def src_poll():
    try:
        while True:
            src_cpu[1] = cpu(src_pid)
            time.sleep(0.005)
    except (OSError, IndexError, ValueError):
        pass
u = urllib.parse.urlsplit(url)
with open(token_file) as f:
    headers = {"Authorization": "Bearer " + f.read().strip(), "Content-Type": "application/json"}
conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=cacert))
def call(method, path, body=None):
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")
conn.connect()  # outside the window, as the raw run's QMP connection
src_cpu[0] = src_cpu[1] = cpu(src_pid)
threading.Thread(target=src_poll, daemon=True).start()
t0 = time.monotonic()
status, op = call("POST", f"/api/v1/instances/{name}/actions/migrate", json.dumps({"host": host}))
if status != 202:
    sys.exit(f"bench: migrate {name} to {host}: {status} {json.dumps(op)}")
while True:
    try:
        status, res = call("GET", f"/api/v1/operations/{op['id']}?wait=60")
    except (http.client.RemoteDisconnected, ConnectionError):
        conn.close()  # the next request connects again
        continue
    if res.get("status") in ("succeeded", "failed", "cancelled") or time.monotonic() - t0 > float(limit):
        break
print(int((time.monotonic() - t0) * 1000))
print(json.dumps(res))
print(src_cpu[1] - src_cpu[0])
PY
}
wait_file_has() { # FILE TEXT SECONDS
	local end=$((SECONDS + $3))
	until grep -aq "$2" "$1" 2>/dev/null; do
		[ $SECONDS -lt $end ] || { echo "bench: no '$2' in $1 after $3 s" >&2; exit 1; }
		sleep 0.2
	done
}

# qmp SOCKET CMD [ARGS-JSON]: one command, its answer on stdout.
qmp() {
	python3 - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
cmds = [("qmp_capabilities", {}), (sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})]
for cmd, args in cmds:
    f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            break
print(json.dumps(msg))
PY
}

image=$(kapi "$KUMO_URL/api/v1/images/kumo-test" | jq -r '.path // empty')
[ -n "$image" ] || image=$(ls "$KUMO_LAB_DIR"/shared/images/*kumo-test* 2>/dev/null | head -n 1)
[ -n "$image" ] && [ -f "$image" ] || { echo "bench: the lab has no kumo-test image file" >&2; exit 1; }

# ---- TLS certificates for the raw runs, made before anything is timed ----------------
tls=$tmp/tls
mkdir -p "$tls"
cat >"$tls/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
O = kumo-bench
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:127.0.0.1,IP:$ENV::KUMO_LAB_SUBNET.11,IP:$ENV::KUMO_LAB_SUBNET.12
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 -config "$tls/openssl.cnf" -extensions ca "${ec[@]}" -days 1 \
	-subj "/O=kumo-bench/CN=bench migration CA" -keyout "$tls/ca-key.pem" -out "$tls/ca-cert.pem" 2>/dev/null
for end in server client; do
	openssl req -new -config "$tls/openssl.cnf" "${ec[@]}" -subj "/O=kumo-bench/CN=127.0.0.1" \
		-keyout "$tls/$end-key.pem" -out "$tls/$end.csr" 2>/dev/null
	openssl x509 -req -in "$tls/$end.csr" -CA "$tls/ca-cert.pem" -CAkey "$tls/ca-key.pem" \
		-set_serial $((RANDOM + 1)) -days 1 -extfile "$tls/openssl.cnf" -extensions "$end" \
		-out "$tls/$end-cert.pem" 2>/dev/null
done
openssl verify -CAfile "$tls/ca-cert.pem" "$tls/server-cert.pem" "$tls/client-cert.pem" >/dev/null ||
	{ echo "bench: the raw runs' TLS certificates do not verify" >&2; exit 1; }
# The server's DH group, as Kumo's target gets it (agentd/migrate.c): without one QEMU
# generates 2048-bit parameters as it loads the credentials, 0.4-1.3 s here.
openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out "$tls/dh-params.pem" 2>/dev/null

if [ "$postcopy" = 1 ]; then
	for h in h1 h2; do
		[ ! -e "$KUMO_LAB_DIR/hosts/$h/agent.args" ] ||
			{ echo "bench: $h's agent has options of its own ($KUMO_LAB_DIR/hosts/$h/agent.args; a bench killed with SIGKILL leaves its --qemu-user root there: remove it and restart the lab)" >&2; exit 1; }
	done
	grant h1 h2 || exit 1
fi

# ---- the guests: raw QMP's (a bare QEMU on loopback) and Kumo's, booting side by side ----
qemu_common=(qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256 -nodefaults
	-display none -no-user-config -drive "file=$tmp/disk.qcow2,if=virtio,cache=none")
qemu-img create -q -f qcow2 -b "$image" -F qcow2 "$tmp/disk.qcow2"
ip netns exec "${KUMO_NS_PREFIX}1" "${qemu_common[@]}" -qmp "unix:$tmp/a.sock,server=on,wait=off" -serial "file:$tmp/a.log" &
pids+=($!)
src_pid=$!
kapi "$KUMO_URL/api/v1/instances" -d '{"name": "bench-mig", "type": "vm", "vcpus": 1,
	"memory": {"mb": 256}, "host": "h1",
	"disks": [{"name": "root", "image": "kumo-test", "bus": "virtio"}]}' >/dev/null
wait_file_has "$tmp/a.log" KUMO-GUEST-READY 180
end=$((SECONDS + 180))
until kapi "$KUMO_URL/api/v1/instances/bench-mig/console" | grep -aq KUMO-GUEST-READY; do
	[ $SECONDS -lt $end ] || { echo "bench: bench-mig did not boot" >&2; exit 1; }
	sleep 0.5
done

# warm_memory: before each timed run (raw and Kumo alike; not with --cold), touch and
# free 512 MiB of anonymous memory (huge pages, as QEMU's guest RAM), so the fresh
# memory the run's QEMUs fault in is memory this machine's kernel freed a moment ago.
# This machine is itself a VM whose kernel reports free memory to its hypervisor
# (page_reporting on its command line, after ~2 s): touching 256 MiB of such memory
# costs 140-600 ms of system time, of recently freed memory ~20 ms, so without this a
# migration's copy is fast or slow depending on what ran before it, for raw and Kumo
# alike. Real hosts do not pay it; the ratio should not carry it as noise.
warm_memory() {
	[ "$warm" = 1 ] || return 0
	python3 -c '
import ctypes, mmap
n = 512 << 20
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
ctypes.CDLL(None).madvise(ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m))), ctypes.c_size_t(n), 14)
for off in range(0, n, 4096):
    m[off] = 1
'
}

# qemu_sched PID: what PID's threads ran and waited runnable for a CPU, in ms (as raw_run).
qemu_sched() {
	[ -n "$1" ] && [ -d "/proc/$1/task" ] || { echo "? ?"; return; }
	cat /proc/"$1"/task/*/schedstat 2>/dev/null |
		awk '{ r += $1; w += $2 } END { printf "%d %d\n", r / 1e6, w / 1e6 }'
}

# raw_cgroup_enter PID END: PID into a cgroup as agentd/vmcgroup.c makes one for a 1-vCPU
# VM, under group END (a or b: one per end, as Kumo's per-host level); END root: back
# to the root cgroup.
raw_cgroup_enter() {
	local dir
	if [ "$2" = root ]; then
		echo "$1" >"$cpu_cg/cgroup.procs"
		return
	fi
	dir=$raw_cg_base-$2/q$1
	mkdir -p "$dir"
	echo 1024 >"$dir/cpu.shares"
	echo 100000 >"$dir/cpu.cfs_period_us"
	echo 200000 >"$dir/cpu.cfs_quota_us"
	echo "$1" >"$dir/cgroup.procs"
}

# One raw run in one process (no interpreter start-up inside the measured time): start
# the target QEMU, wait for its QMP, raise max-bandwidth, migrate, poll every 10 ms.
# MODE tls: the target starts with its server credentials and -incoming defer, is
# given tls-creds and then migrate-incoming; the source loads its client credentials
# (object-add) and gets tls-creds and tls-hostname with max-bandwidth, all inside the
# timed window as Kumo's agents do. MODE plain clears a source's tls-creds (a QEMU
# that was a TLS target keeps its server's) in the same call as max-bandwidth.
# MODE hosts: tls, to the other host's address. MODE tls-as-kumo: hosts; a CGROUP given, the target QEMU goes into it right after its
# start, inside the window (as Kumo's agent does: agentd/vmcgroup.c), with
# raw_cgroup_enter's limits.
# Also prints what the target QEMU's threads ran and waited runnable for a CPU
# (/proc/PID/task/*/schedstat) from its start to the end: the CPU share it got.
# Then QEMU's own count of the copy (migrate to completed) and the MiB it sent.
# NETNS: the target QEMU runs in that network namespace and listens on ADDR, its TLS
# hostname too.
raw_run() { # MODE SOURCE-SOCKET TARGET-SOCKET TARGET-LOG PORT CGROUP NETNS ADDR SOURCE-PID -> "total_ms downtime_ms pid ran_ms waited_ms copy_ms sent_mib src_cpu_ms"
	python3 - "$@" "$tls" "${qemu_common[@]}" <<'PY'
import json, os, socket, subprocess, sys, time
mode, src, dst, log, port, cgroup, netns, addr, src_pid, tlsdir = sys.argv[1:11]
qemu = sys.argv[11:]
if netns:  # ip netns exec execs QEMU in the same process: p.pid is QEMU's
    qemu = ["ip", "netns", "exec", netns] + qemu
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    f.readline()
    call(f, "qmp_capabilities")
    return f
p = None  # the target QEMU, killed if a call fails (nobody else knows its pid then)
def call(f, cmd, args=None):
    f.write(json.dumps({"execute": cmd, "arguments": args or {}}) + "\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "error" in msg:
            if p is not None:
                p.kill()
            sys.exit(f"raw {mode} run: {cmd}: {msg['error'].get('desc', msg)}")
        if "return" in msg:
            return msg
def sched(pid):  # the ms all of pid's threads ran, and waited runnable for a CPU
    run = wait = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/schedstat") as f:
            fields = f.read().split()
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return run // 1000000, wait // 1000000
def cpu(pid):  # utime + stime of pid (all its threads, the ended ones too), in ms
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) * 1000 // os.sysconf("SC_CLK_TCK")
uri = f"tcp:{addr}:{port}"
if mode in ("hosts", "tls-as-kumo"):
    mode = "tls"
if mode == "tls":
    incoming = ["-object", f"tls-creds-x509,id=kumo-bench-srv,dir={tlsdir},endpoint=server,verify-peer=on",
                "-incoming", "defer"]
else:
    incoming = ["-incoming", uri]
a = connect(src)
t0 = time.monotonic()
p = subprocess.Popen(qemu + ["-qmp", f"unix:{dst},server=on,wait=off", "-serial", f"file:{log}"] + incoming,
                     start_new_session=True)
if cgroup:
    os.makedirs(cgroup, exist_ok=True)
    for name, value in (("cpu.shares", 1024), ("cpu.cfs_period_us", 100000),
                        ("cpu.cfs_quota_us", 200000), ("cgroup.procs", p.pid)):
        with open(os.path.join(cgroup, name), "w") as f:
            f.write(str(value))
while True:
    try:
        b = connect(dst)
        break
    except OSError:
        time.sleep(0.005)
params = {"max-bandwidth": 1000000000, "tls-creds": "", "tls-hostname": ""}
if mode == "tls":
    call(b, "migrate-set-parameters", {"tls-creds": "kumo-bench-srv"})
    call(b, "migrate-incoming", {"uri": uri})
    call(a, "object-add", {"qom-type": "tls-creds-x509", "id": "kumo-bench-cli", "dir": tlsdir,
                           "endpoint": "client", "verify-peer": True})
    params.update({"tls-creds": "kumo-bench-cli", "tls-hostname": addr})
call(a, "migrate-set-parameters", params)
src_cpu = cpu(src_pid)
call(a, "migrate", {"uri": uri})
while True:
    r = call(a, "query-migrate")["return"]
    if r.get("status") == "completed":
        break
    if r.get("status") in ("failed", "cancelled"):
        p.kill()
        sys.exit(f"raw {mode} migration: " + json.dumps(r))
    time.sleep(0.01)
# The migration is over when the guest runs on the target (as Kumo's operation ends at
# the target's resume), not at the source's "completed": the target may still be
# loading the last of the stream then. It starts on its own (no -S).
end = time.monotonic() + 30
while call(b, "query-status")["return"]["status"] != "running":
    if time.monotonic() > end:
        p.kill()
        sys.exit(f"raw {mode} migration: the target's guest does not run")
    time.sleep(0.002)
print(int((time.monotonic() - t0) * 1000), r.get("downtime", -1), p.pid, *sched(p.pid),
      r.get("total-time", -1), r.get("ram", {}).get("transferred", 0) >> 20, cpu(src_pid) - src_cpu)
call(a, "quit")
PY
}
# Each round migrates the raw guest on three times (plain, tls, hosts; with
# --raw-cgroup four, then tls-as-kumo), then Kumo's, so load drifts hit all alike.
modes=(plain tls hosts)
[ "$raw_cgroup" = 1 ] && modes+=(tls-as-kumo)
src_sock=$tmp/a.sock src_end=root src_host=1
raw_total=() raw_down=() tls_total=() tls_down=() hosts_total=() hosts_down=() ak_total=() ak_down=()
kumo_total=() kumo_down=() kumo_pause=() kumo_op=() to=h2
# Each run's QEMU copy (migrate to completed, QEMU's own total-time) and the rest of
# its total: what Kumo (or the raw driver) adds around the copy, apart from the copy's
# own spread (docs/benchmarks.md: a copy across the lab's underlay took ~500 or
# ~1,000 ms at random, raw and Kumo alike, until the lab's hosts used cubic instead of
# this machine's bbr; a lab brought up before that still has it: down, then up).
hosts_rest=() hosts_copy=() kumo_rest=() kumo_copy=()
for i in $(seq "$runs"); do
	for mode in "${modes[@]}"; do
		# The source QEMU where this mode wants it (outside the window): its own
		# cgroup in one end's group, the target's in the other's; back to the root
		# cgroup for the other modes.
		cgroup='' dst_end=root
		if [ "$mode" = tls-as-kumo ] && [ "$raw_cgroup" = 1 ]; then
			[ "$src_end" = root ] && { raw_cgroup_enter "$src_pid" a; src_end=a; }
			[ "$src_end" = a ] && dst_end=b || dst_end=a
			cgroup=$raw_cg_base-$dst_end/q$i
		elif [ "$src_end" != root ]; then
			raw_cgroup_enter "$src_pid" root
		fi
		# The target's namespace and address: the other host's underlay address
		# (hosts, tls-as-kumo), or loopback beside the source.
		addr=127.0.0.1 dst_host=$src_host
		if [ "$mode" = hosts ] || [ "$mode" = tls-as-kumo ]; then
			dst_host=$((3 - src_host))
			addr=$KUMO_LAB_SUBNET.$((10 + dst_host))
		fi
		netns=$KUMO_NS_PREFIX$dst_host
		# read, not $(...): the target QEMU holds the pipe open for as long as it runs.
		total='' down='' pid='' ran='' waited='' copy='' sent='' src_cpu=''
		warm_memory
		read -r total down pid ran waited copy sent src_cpu < <(raw_run "$mode" "$src_sock" \
			"$tmp/b$i$mode.sock" "$tmp/b$i$mode.log" $((47000 + RANDOM % 2000)) \
			"$cgroup" "$netns" "$addr" "$src_pid") || true
		[ -n "$pid" ] || { echo "bench: raw $mode run $i failed" >&2; exit 1; }
		pids+=("$pid")
		case $mode in
		plain) raw_total+=("$total") raw_down+=("$down") ;;
		tls) tls_total+=("$total") tls_down+=("$down") ;;
		hosts) hosts_total+=("$total") hosts_down+=("$down") hosts_rest+=($((total - copy))) hosts_copy+=("$copy") ;;
		tls-as-kumo) ak_total+=("$total") ak_down+=("$down") ;;
		esac
		src_sock=$tmp/b$i$mode.sock src_pid=$pid src_end=$dst_end src_host=$dst_host
		echo "raw $mode run $i: total $total ms (copy $copy ms, $sent MiB), downtime $down ms; target QEMU ran $ran ms, waited $waited ms for a CPU; source QEMU's CPU over the copy $src_cpu ms"
	done

	[ "$to" = h2 ] && from=h1 || from=h2
	warm_memory
	out=$(kumo_migrate bench-mig "$to" 120 "$(cat "$KUMO_LAB_DIR/hosts/$from/local/instances/bench-mig/qemu.pid")") || exit 1
	res=$(sed -n 2p <<<"$out")
	read -r ran waited < <(qemu_sched "$(cat "$KUMO_LAB_DIR/hosts/$to/local/instances/bench-mig/qemu.pid" 2>/dev/null)")
	[ "$(jq -r .status <<<"$res")" = succeeded ] || { echo "bench: $(jq -c '{status, error}' <<<"$res")" >&2; exit 1; }
	kumo_total+=("$(sed -n 1p <<<"$out")")
	kumo_copy+=("$(jq -r .result.timings.source.qemu_total_ms <<<"$res")")
	kumo_rest+=($((kumo_total[-1] - kumo_copy[-1])))
	kumo_down+=("$(jq -r .result.downtime_ms <<<"$res")")
	kumo_pause+=("$(jq -r "$guest_pause // empty" <<<"$res")")
	[ -n "${kumo_pause[-1]}" ] || { echo "bench: kumo run $i has no downtime_ms or paused_ms: $res" >&2; exit 1; }
	kumo_op+=("$(jq -r .result.total_ms <<<"$res")")
	echo "kumo run $i: to $to, total ${kumo_total[-1]} ms (operation ${kumo_op[-1]} ms, copy $(jq -r .result.timings.source.qemu_total_ms <<<"$res") ms, $(($(jq -r '.result.migration.ram_transferred // 0' <<<"$res") >> 20)) MiB), $(jq -r .result.strategy <<<"$res"): guest paused ${kumo_pause[-1]} ms (QEMU's downtime ${kumo_down[-1]} ms); target QEMU ran $ran ms, waited $waited ms for a CPU; source QEMU's CPU over the copy $(sed -n 3p <<<"$out") ms; paired ratio_tls_hosts $(awk -v k="${kumo_total[-1]}" -v r="${hosts_total[-1]}" 'BEGIN { printf "%.2f", k / r }')"
	# Where the time went: the controller's phases, then each agent's own steps.
	echo "kumo run $i timings: $(jq -c '.result.timings // {} | del(.target, .source, .resume)' <<<"$res")"
	echo "kumo run $i target: $(jq -c '.result.timings.target // {}' <<<"$res")"
	echo "kumo run $i source: $(jq -c '.result.timings.source // {}' <<<"$res")"
	echo "kumo run $i resume: $(jq -c '.result.timings.resume // {}' <<<"$res")"
	[ "$to" = h2 ] && to=h1 || to=h2
done

# ---- Kumo, the disk on the local pool (one run) ------------------------------------------
kapi -X DELETE "$KUMO_URL/api/v1/instances/bench-mig?force=1" >/dev/null
if [ "$local_run" = 1 ]; then
	kapi "$KUMO_URL/api/v1/instances" -d '{"name": "bench-mig-local", "type": "vm", "vcpus": 1,
		"memory": {"mb": 256}, "host": "h1",
		"disks": [{"name": "root", "image": "kumo-test", "bus": "virtio", "pool": "local"}]}' >/dev/null
	end=$((SECONDS + 180))
	until kapi "$KUMO_URL/api/v1/instances/bench-mig-local/console" | grep -aq KUMO-GUEST-READY; do
		[ $SECONDS -lt $end ] || { echo "bench: bench-mig-local did not boot" >&2; exit 1; }
		sleep 0.5
	done
	out=$(kumo_migrate bench-mig-local h2 240 "$(cat "$KUMO_LAB_DIR/hosts/h1/local/instances/bench-mig-local/qemu.pid")") || exit 1
	res=$(sed -n 2p <<<"$out")
	[ "$(jq -r .status <<<"$res")" = succeeded ] || { echo "bench: local: $(jq -c '{status, error}' <<<"$res")" >&2; exit 1; }
	echo "RESULT local_disk_total_ms=$(sed -n 1p <<<"$out") local_disk_strategy=$(jq -r .result.strategy <<<"$res") local_disk_guest_pause_ms=$(jq -r "$guest_pause" <<<"$res") local_disk_qemu_downtime_ms=$(jq -r .result.downtime_ms <<<"$res") local_disk_mirrored_bytes=$(jq -r .result.migration.disk_total <<<"$res")"
	echo "local disk timings: $(jq -c '.result.timings // {}' <<<"$res")"
fi

rt=$(printf '%s\n' "${raw_total[@]}" | median)
rd=$(printf '%s\n' "${raw_down[@]}" | median)
tt=$(printf '%s\n' "${tls_total[@]}" | median)
td=$(printf '%s\n' "${tls_down[@]}" | median)
kt=$(printf '%s\n' "${kumo_total[@]}" | median)
kd=$(printf '%s\n' "${kumo_down[@]}" | median)
kp=$(printf '%s\n' "${kumo_pause[@]}" | median)
kpmax=$(printf '%s\n' "${kumo_pause[@]}" | sort -n | tail -n 1)
ko=$(printf '%s\n' "${kumo_op[@]}" | median)
ratio() { awk -v k="$1" -v r="$2" 'BEGIN { printf "%.2f", k / r }'; }
# paired KUMO... -- RAW...: the median of each round's kumo/raw.
paired() {
	local -a k=() r=()
	while [ "$1" != -- ]; do k+=("$1"); shift; done
	shift
	r=("$@")
	for j in "${!k[@]}"; do ratio "${k[j]}" "${r[j]}"; echo; done | median
}
# kumo_total_ms is the client's (one Python process, its HTTPS connection made before
# the call); kumo_op_ms the operation's own result.total_ms.
ht=$(printf '%s\n' "${hosts_total[@]}" | median)
hd=$(printf '%s\n' "${hosts_down[@]}" | median)
echo "RESULT raw_hosts_total_ms=$ht raw_hosts_downtime_ms=$hd kumo_total_ms=$kt kumo_op_ms=$ko ratio_tls_hosts=$(ratio "$kt" "$ht") paired_ratio_tls_hosts=$(paired "${kumo_total[@]}" -- "${hosts_total[@]}") kumo_guest_pause_ms=$kp kumo_guest_pause_max_ms=$kpmax pause_goal=$([ "$kpmax" -le 100 ] && echo met || echo missed) kumo_qemu_downtime_ms=$kd (the goal, 1.10 or less, is judged on ratio_tls_hosts: the same migration, h1 to h2 with TLS, by raw QMP between bare QEMUs; the pause goal, 100 ms or less in every run, on the guest-visible pause, not on QEMU's downtime)"
echo "RESULT raw_loopback_tls_total_ms=$tt raw_loopback_tls_downtime_ms=$td raw_loopback_plain_total_ms=$rt raw_loopback_plain_downtime_ms=$rd ratio_tls_loopback=$(ratio "$kt" "$tt") paired_ratio_tls_loopback=$(paired "${kumo_total[@]}" -- "${tls_total[@]}") ratio_plain_loopback=$(ratio "$kt" "$rt") (bare QEMUs on one host's loopback: no network between them)"
echo "RESULT raw_hosts_copy_ms=$(printf '%s\n' "${hosts_copy[@]}" | median) kumo_copy_ms=$(printf '%s\n' "${kumo_copy[@]}" | median) raw_hosts_rest_ms=$(printf '%s\n' "${hosts_rest[@]}" | median) kumo_rest_ms=$(printf '%s\n' "${kumo_rest[@]}" | median) (medians of each run's QEMU copy and of the rest of its total: the target's start, the steps around the copy, the resume; the rest is what Kumo adds or saves, the copy is QEMU's and the network's)"
if [ "${#ak_total[@]}" -gt 0 ]; then
	at=$(printf '%s\n' "${ak_total[@]}" | median)
	ad=$(printf '%s\n' "${ak_down[@]}" | median)
	echo "RESULT raw_tls_as_kumo_total_ms=$at raw_tls_as_kumo_downtime_ms=$ad ratio_tls_as_kumo=$(ratio "$kt" "$at") paired_ratio_tls_as_kumo=$(paired "${kumo_total[@]}" -- "${ak_total[@]}") (h1 to h2 with the raw QEMUs in cgroups as Kumo's)"
fi
