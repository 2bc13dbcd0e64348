# lib.sh - helpers for integration tests. Source it; it finds the test lab and gives:
#   api METHOD PATH [BODY] [TOKEN]   -> sets STATUS, BODY (and HEADERS)
#   expect_status N                  -> fails unless STATUS is N
#   expect "desc" CMD...             -> fails unless CMD succeeds
#   jqb FILTER                       -> jq -r FILTER over BODY
#   wait_until SECONDS "desc" CMD... -> polls CMD every 0.2 s
#   lab ARGS...                      -> the test lab's deploy/lab
# Every test runs against the lab its lane's fixture brought up (lab_up: "kt", lab2_up:
# "ktb"; tests/CMakeLists.txt passes it in KUMO_TEST_LAB_*), shared with the tests
# before it in that lane.
set -euo pipefail

KUMO_SRC=${KUMO_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
export KUMO_BUILD_DIR=${KUMO_BUILD_DIR:-$KUMO_SRC/build}
export KUMO_LAB_NO_BUILD=1
# The first lab when run by hand; ctest sets KUMO_TEST_LAB_* to the test's lab.
KUMO_TEST_LAB_NAME=${KUMO_TEST_LAB_NAME:-kt}
KUMO_TEST_LAB_SUBNET=${KUMO_TEST_LAB_SUBNET:-10.232.0}
KUMO_TEST_LAB_API_PORT=${KUMO_TEST_LAB_API_PORT:-9443}
KUMO_TEST_LAB_LINK_PORT=${KUMO_TEST_LAB_LINK_PORT:-9700}
LAB_ARGS=(--name "$KUMO_TEST_LAB_NAME" --subnet "$KUMO_TEST_LAB_SUBNET"
	--api-port "$KUMO_TEST_LAB_API_PORT" --link-port "$KUMO_TEST_LAB_LINK_PORT")

lab() { "$KUMO_SRC/deploy/lab" "${LAB_ARGS[@]}" "$@"; }

eval "$(lab env)"
# A test that failed with the controller or an agent down (it kills them on purpose) must
# not fail every test after it: bring the shared lab back to whole first.
if ! curl -sf --noproxy '*' --max-time 5 --cacert "$KUMO_CACERT" "$KUMO_URL/healthz" >/dev/null 2>&1; then
	echo "note [$(basename "$0" .sh)]: the lab's controller did not answer; lab up" >&2
	lab up >&2 || true
	eval "$(lab env)"
fi
KUMO_LINK_ADDRESS=${KUMO_LINK_ADDRESS:-$KUMO_TEST_LAB_SUBNET.1}
KUMO_JOIN_PORT=${KUMO_JOIN_PORT:-$KUMO_TEST_LAB_LINK_PORT}
ADMIN=$(cat "$KUMO_TOKEN_FILE")
TESTNAME=$(basename "$0" .sh)
STATUS=0
BODY=""
HEADERS=""

# A test may set FAIL_DIAG to a function that prints what explains a failure (the
# hosts' state, log tails): fail() runs it once, after the reason.
FAIL_DIAG=""
fail() {
	local diag=$FAIL_DIAG
	echo "FAIL [$TESTNAME]: $*" >&2
	echo "  last status: $STATUS" >&2
	echo "  last body: ${BODY:0:2000}" >&2
	if [ -n "$diag" ]; then
		FAIL_DIAG=""
		echo "  -- $diag:" >&2
		"$diag" 2>&1 | sed 's/^/  | /' >&2 || true
	fi
	exit 1
}

pass() { echo "ok [$TESTNAME]: $*"; }

# api METHOD PATH [BODY] [TOKEN]; TOKEN "-" sends no Authorization header.
api() {
	local method=$1 path=$2 body=${3:-} token=${4:-$ADMIN}
	local args=(-sS --cacert "$KUMO_CACERT" -X "$method" -o /tmp/kt-body.$$ -D /tmp/kt-head.$$
		-w '%{http_code}' --max-time 90)
	[ "$token" != "-" ] && args+=(-H "Authorization: Bearer $token")
	[ -n "${API_SOURCE:-}" ] && args+=(--interface "$API_SOURCE") # a client address of the test's choice
	if [ -n "$body" ]; then
		printf '%s' "$body" >/tmp/kt-req.$$
		args+=(-H 'Content-Type: application/json' --data-binary @/tmp/kt-req.$$)
	fi
	STATUS=$(curl "${args[@]}" "$KUMO_URL$path") || STATUS=000
	BODY=$(cat /tmp/kt-body.$$ 2>/dev/null || true)
	HEADERS=$(cat /tmp/kt-head.$$ 2>/dev/null || true)
	rm -f /tmp/kt-body.$$ /tmp/kt-head.$$ /tmp/kt-req.$$
}

expect_status() {
	[ "$STATUS" = "$1" ] || fail "expected HTTP $1, got $STATUS${2:+ ($2)}"
}

expect() {
	local desc=$1
	shift
	"$@" || fail "$desc"
}

jqb() { jq -r "$@" <<<"$BODY"; }

wait_until() {
	local secs=$1 desc=$2
	shift 2
	local end=$((SECONDS + secs))
	while ! "$@"; do
		[ $SECONDS -ge $end ] && fail "timed out after ${secs}s waiting for: $desc"
		sleep 0.2
	done
}

# hold_new SECONDS PATTERN: stop (SIGSTOP) the first process whose command line matches
# the extended regular expression PATTERN as soon as it shows, and print its pid; false
# after SECONDS (or when the calling shell is gone). For windows of milliseconds a test
# must land in beside a hog (a QEMU before its monitor answers, the qemu-img of a small
# disk): the watcher runs at real-time priority and reads /proc itself, each new process
# once and again for 5 s (a fork that has not exec'd yet), so neither the scheduler nor a
# pgrep per look delays it. Start it before the request that makes the process
# (hold_start ... ; request ; hold_wait): a watcher started after the request's answer
# can be late on a busy machine.
hold_new() {
	local rt=(chrt -f 10)
	chrt -f 10 true 2>/dev/null || rt=()
	"${rt[@]}" python3 - "$$" "$@" <<'PY'
import os, re, signal, sys, time
owner, secs, pat = sys.argv[1], float(sys.argv[2]), re.compile(sys.argv[3])
me, end, seen = os.getpid(), time.monotonic() + secs, {}
while time.monotonic() < end and os.path.exists(f"/proc/{owner}"):
    now = time.monotonic()
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me or now - seen.setdefault(p, now) > 5:
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").rstrip()
        except OSError:
            continue
        if pat.search(cmd):
            os.kill(int(p), signal.SIGSTOP)
            print(p)
            sys.exit(0)
    time.sleep(0.003)
sys.exit(1)
PY
}

# hold_start SECONDS PATTERN: hold_new in the background; hold_wait then waits for it and
# sets HELD to the held pid (false when nothing showed).
hold_start() {
	HOLD_FILE=$(mktemp "${TMPDIR:-/tmp}/kumo-hold.XXXXXX")
	hold_new "$@" >"$HOLD_FILE" &
	HOLD_WATCHER=$!
}
hold_wait() {
	local rc=0
	wait "$HOLD_WATCHER" || rc=1
	HELD=$(cat "$HOLD_FILE")
	rm -f "$HOLD_FILE"
	[ $rc = 0 ] && [ -n "$HELD" ]
}

host_state() {
	api GET "/api/v1/hosts/$1"
	jqb .state
}

all_online() {
	api GET /api/v1/hosts
	[ "$(jqb '[.hosts[] | select(.state == "online")] | length')" = "${1:-3}" ]
}

# Count of something in the controller's metrics, 0 when absent.
metric() {
	curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/metrics" | awk -v k="$1" '$1 == k { print $2; f=1 } END { if (!f) print 0 }'
}

agent_pid() { cat "$KUMO_LAB_DIR/hosts/$1/agent.pid"; }
controller_pid() { cat "$KUMO_LAB_DIR/controller/controller.pid"; }

host_is() { [ "$(host_state "$1")" = "$2" ]; }
# proc_gone PID -> the process has exited (or is a zombie)
proc_gone() { [ ! -e "/proc/$1" ] || grep -q '^State:.*[ZX]' "/proc/$1/status" 2>/dev/null; }
# agent_restarted HOST MS -> HOST is online with an agent started after MS (epoch ms):
# its heartbeats, not the ones of the agent that was killed. (host_is HOST online holds
# at once after a kill, until the controller misses enough heartbeats.)
agent_restarted() {
	api GET "/api/v1/hosts/$1"
	[ "$(jqb .state)" = online ] && [ "$(jqb '(.last_seen - (.facts.uptime_s // 0) * 1000) | floor')" -gt "$2" ]
}

# wait_op ID [SECONDS] -> long-polls an operation until final; sets BODY to it.
wait_op() {
	local id=$1 secs=${2:-120} end=$((SECONDS + ${2:-120}))
	while :; do
		api GET "/api/v1/operations/$id?wait=30"
		case "$(jqb .status)" in succeeded | failed | cancelled) return 0 ;; esac
		[ $SECONDS -ge $end ] && fail "operation $id not finished after ${secs}s"
	done
}

# op_ok -> fails unless the last operation in BODY succeeded.
op_ok() { [ "$(jqb .status)" = succeeded ] || fail "operation $(jqb .kind) failed: $(jqb .error)"; }

# console NAME -> the instance's serial console text.
console() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/instances/$1/console?bytes=65536"; }
console_has() { console "$1" | grep -q -- "$2"; }
# instances_delete NAME... -> force-deletes each and waits (up to 120 s) until all are
# gone: a cleanup must not leave deletes running into the next test's counts.
instances_delete() {
	local n end=$((SECONDS + 120))
	for n in "$@"; do api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true; done
	for n in "$@"; do
		while [ $SECONDS -lt $end ]; do
			api GET "/api/v1/instances/$n" >/dev/null 2>&1 || true
			[ "$STATUS" = 404 ] && break
			sleep 0.2
		done
	done
}
instance_is() { api GET "/api/v1/instances/$1" && [ "$(jqb .state)" = "$2" ]; }

# vm_create JSON -> creates and waits for the create operation to succeed.
vm_create() {
	api POST /api/v1/instances "$1"
	expect_status 202 "create $1"
	wait_op "$(jqb .id)" 180
	op_ok
}

# The lab registers the test guest image as "kumo-test".
TEST_IMAGE=kumo-test

# ---- networks (test_net_*.sh) ----------------------------------------------------------
# The lab's outside namespace stands for the internet (KUMO_LAB_OUTSIDE_ADDR on its lo,
# KUMO_LAB_UNDERLAY_OUTSIDE on the underlay) and holds the switch lan0
# (KUMO_LAB_LAN_ADDR) that every host's uplink KUMO_LAB_UPLINK is plugged into.
#   host_ns HOST / host_underlay HOST  -> hI's namespace / underlay address
#   lab_host_names                     -> h1..hN, from the lab's namespaces
#   in_host HOST CMD... / in_outside CMD... -> CMD in that network namespace
#   kumo_links HOST [NID]              -> kb*/kx* links on HOST (of network NID), sorted
#   all_kumo_links                     -> "HOST LINK" for every host: compare snapshots
#   kumo_tables HOST [NID]             -> "FAMILY kumo_nNID" nft tables on HOST
#   fdb_dsts HOST LINK                 -> dst addresses of the VXLAN LINK's 00:00:.. entries
#   dnsmasq_pids HOST [TEXT]           -> dnsmasq processes in HOST (command line has TEXT)
#   net_id NAME                        -> a network's row id (bridge kb<ID>-<VLAN>)
#   net_delete NAME                    -> quiet DELETE (for traps)
#   nic_field NAME I FILTER            -> jq FILTER over the instance's NIC I
#   host_net_in_sync HOST              -> the controller shows HOST's networks applied
#   net_ct_json NAME HOST NICS-JSON    -> a busybox "sleep 3600" container pinned to HOST
#   ct_ping NAME ADDR                  -> 0 when one ping from the container is answered
#   ct_no_ping NAME ADDR               -> fails the test unless no ping is answered (1.6 s)
#   ct_netns_exec NAME CMD...          -> CMD (as root, from outside) in the container's netns
#   console_text_has NAME TEXT         -> the console holds TEXT (no pipe: see ct_logs_have)
#   link_master HOST IF                -> the bridge IF is enslaved to on HOST, or nothing
host_ns() { printf '%s%s' "$KUMO_NS_PREFIX" "${1#h}"; }
host_underlay() { printf '%s.%s' "$KUMO_LAB_SUBNET" $((10 + ${1#h})); }
lab_host_names() {
	ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${KUMO_NS_PREFIX}[0-9]+\$" |
		sed "s/^$KUMO_NS_PREFIX/h/" | sort -V || true
}
in_host() {
	local ns
	ns=$(host_ns "$1")
	shift
	ip netns exec "$ns" "$@"
}
in_outside() { ip netns exec "${KUMO_LAB_OUTSIDE_NS:?the lab has no outside namespace: run lab up}" "$@"; }
kumo_links() {
	ip -n "$(host_ns "$1")" -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
		grep -E "^k[bx]${2:-[0-9]+}-[0-9]+\$" | sort || true
}
all_kumo_links() {
	local h
	for h in $(lab_host_names); do kumo_links "$h" | sed "s/^/$h /"; done
}
kumo_tables() {
	in_host "$1" nft list tables 2>/dev/null | awk -v want="kumo_n${2:-}" \
		'$1 == "table" && (want == "kumo_n" ? index($3, want) == 1 : $3 == want) { print $2, $3 }' || true
}
fdb_dsts() {
	in_host "$1" bridge fdb show dev "$2" 2>/dev/null |
		awk '$1 == "00:00:00:00:00:00" { for (i = 2; i < NF; i++) if ($i == "dst") print $(i + 1) }' | sort -u || true
}
dnsmasq_pids() {
	local pid cmd
	for pid in $(ip netns pids "$(host_ns "$1")" 2>/dev/null); do
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dnsmasq ] || continue
		cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
		[ -z "${2:-}" ] || [[ $cmd == *"$2"* ]] || continue
		echo "$pid"
	done
}
net_id() {
	local id
	api GET "/api/v1/networks/$1"
	id=$(jqb '.id // empty' 2>/dev/null || true)
	[ -n "$id" ] || id=$(sqlite3 -cmd '.timeout 5000' "$KUMO_LAB_DIR/controller/kumo.db" \
		"SELECT id FROM networks WHERE name = '$1'")
	printf '%s' "$id"
}
net_delete() { api DELETE "/api/v1/networks/$1" >/dev/null 2>&1 || true; }
nic_field() {
	api GET "/api/v1/instances/$1"
	jqb "(.spec.nics // .nics)[$2] | $3"
}
host_net_in_sync() {
	api GET "/api/v1/hosts/$1"
	[ "$(jqb '.network.in_sync // false')" = true ]
}
net_ct_json() {
	jq -cn --arg n "$1" --arg h "$2" --argjson nics "$3" \
		'{name: $n, type: "container", image: "busybox:latest", command: ["sleep", "3600"], host: $h, nics: $nics}'
}
ct_ping() {
	api POST "/api/v1/instances/$1/exec" "{\"command\":[\"ping\",\"-c\",\"1\",\"-W\",\"2\",\"$2\"],\"timeout_s\":15}"
	[ "$STATUS" = 200 ] && [ "$(jqb .exit_code)" = 0 ]
}
ct_no_ping() {
	# Three probes 0.3 s apart, then a second for their answers (busybox's -W counts
	# after the last probe): as many probes as at 1 s apart, in half the time.
	api POST "/api/v1/instances/$1/exec" "{\"command\":[\"ping\",\"-c\",\"3\",\"-i\",\"0.3\",\"-W\",\"1\",\"$2\"],\"timeout_s\":15}"
	expect_status 200 "exec ping $2 in $1"
	[ "$(jqb .exit_code)" != 0 ] || fail "$1 reaches $2 (it must not): $(jqb .output)"
}
ct_netns_exec() {
	local name=$1 host pid
	shift
	api GET "/api/v1/instances/$name"
	host=$(jqb .host)
	pid=$(runc --root "$KUMO_LAB_DIR/hosts/$host/local/runc" state "$name" 2>/dev/null | jq -r '.pid // empty')
	if [ -z "$pid" ] || [ "$pid" = 0 ]; then fail "no runc pid for $name on $host"; fi
	nsenter --net="/proc/$pid/ns/net" "$@"
}
console_text_has() {
	local t
	t=$(console "$1") && grep -q -- "$2" <<<"$t"
}
link_master() { ip -n "$(host_ns "$1")" -o link show dev "$2" 2>/dev/null | grep -oE ' master [^ ]+' | cut -d' ' -f3 || true; }
# qemu_monitor2 SOCK WHAT -> a QEMU asked on its second QMP monitor, SOCK (a VM's
# monitor.sock; the agent holds the first, qmp.sock). WHAT "leftovers" prints "NODES
# EXPORTS DRIVE JOBS": the counts of a backup's nodes (fleecing's kfl-*, an incremental's
# target kbt-*) and of block exports, the node disk0's device writes to (d0 unless the
# fleecing filter is in front of it), and the count of QEMU's jobs; it fails when QEMU
# refuses one of those questions. "qmp CMD [ARGS-JSON]" runs a
# QMP command and prints its return as JSON (failing on QEMU's error, which it prints).
# Anything else is one or more HMP command lines, run in order, failing on an error.
qemu_monitor2() {
	python3 - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
def ask(cmd, args=None):
    f.write(json.dumps({"execute": cmd, "arguments": args or {}}) + "\n")
    f.flush()
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m:
            return m
ask("qmp_capabilities")
if sys.argv[2] == "leftovers":
    nodes = ask("query-named-block-nodes", {"flat": True})["return"]
    exports = ask("query-block-exports")["return"]
    drive = ask("qom-get", {"path": "/machine/peripheral/disk0/virtio-backend",
                            "property": "drive"})["return"]
    jobs = ask("query-jobs")["return"]
    print(len([n for n in nodes if n.get("node-name", "").startswith(("kfl-", "kbt-"))]),
          len(exports), drive, len(jobs))
elif sys.argv[2] == "qmp":
    m = ask(sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else None)
    if "error" in m:
        sys.exit("qmp2: " + m["error"].get("desc", json.dumps(m)))
    print(json.dumps(m["return"]))
else:
    for line in sys.argv[2:]:
        m = ask("human-monitor-command", {"command-line": line})
        # HMP answers its errors as text; qemu-io's "wrote ..." line is success.
        if "error" in m or (m["return"] and "wrote" not in m["return"]):
            sys.exit("qmp2: " + json.dumps(m))
PY
}
# migration_client_creds HOST VM -> the names of the client-side TLS credentials a
# migration left in VM's QEMU on HOST (a source's tls-creds-x509 objects, endpoint
# "client"; a QEMU that migrated in keeps its own server's), one per line.
migration_client_creds() {
	local sock=$KUMO_LAB_DIR/hosts/$1/local/instances/$2/monitor.sock names n
	names=$(qemu_monitor2 "$sock" qmp qom-list '{"path":"/objects"}' | jq -r '.[].name | select(startswith("kumo-tls"))') || return 1
	for n in $names; do
		[ "$(qemu_monitor2 "$sock" qmp qom-get '{"path":"/objects/'"$n"'","property":"endpoint"}')" = '"client"' ] && echo "$n"
	done
	return 0
}
no_migration_client_creds() {
	local c
	c=$(migration_client_creds "$1" "$2") || return 1
	[ -z "$c" ]
}
# chunk_sum FILE -> a backup disk's checksum (manifest version 2) computed from the raw
# disk's bytes, apart from the C code: SHA-256 over each 4 MiB chunk's SHA-256 and its
# length (8 bytes, big-endian), in order (common/chunkstore.h's CHUNKSTORE_CHUNK_SIZE).
chunk_sum() {
	python3 - "$1" <<'PY'
import hashlib, sys
total = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(4 << 20)
        if not b:
            break
        total.update(hashlib.sha256(b).digest() + len(b).to_bytes(8, "big"))
print(total.hexdigest())
PY
}
