#!/bin/bash
# Guest integrity under load, and post-copy (issue 13 items 4, 7, 10): one TCG guest
# that keeps rewriting and checking 32 MiB of its memory moves five times.
#   1. Kumo's default choice with no host allowed to post-copy: never pre-copy under
#      TCG (it crashed such guests here) - the guest is paused, moved and resumed.
#   1b. the same with the stream's tail held back from the target until its resume came:
#      the resume waits until the target QEMU loaded it (a cont sent before is lost).
#   Then two hosts get the post-copy grant: no lab host has it (the machine's
#   vm.unprivileged_userfaultfd is 0 and is never changed; the lab's QEMUs drop to
#   uids of their own), so their agents restart with --qemu-user root, the agent
#   setting that lets QEMU use userfaultfd (weaker isolation: their QEMUs keep root),
#   and back to the default at the end.
#   2. postcopy "never" to a host with the grant: paused first, never post-copy.
#   3. the default to a host with the grant: post-copy (at once under TCG); the guest
#      runs on, its checks keep passing, no panic, oops or new boot.
#   4. post-copy again, the target's QEMU killed -9 during it: the VM is lost (only
#      here - post-copy's known risk), the operation says so, neither host keeps a
#      QEMU or run directory of it, and the database says it is missing.
. "$(dirname "$0")/lib.sh"

VM=ml1
GRANTED=()
# grant HOST... / ungrant: restart the hosts' agents with (without) --qemu-user root.
agents_restart() {
	local h t0 pids=()
	t0=$(date +%s%3N)
	for h in "$@"; do pids+=("$(agent_pid "$h")"); done
	kill "${pids[@]}"
	for p in "${pids[@]}"; do wait_until 30 "agent $p gone" proc_gone "$p"; done
	lab up --hosts 3 >/dev/null
	for h in "$@"; do wait_until 60 "$h's agent back" agent_restarted "$h" "$t0"; done
}
postcopy_fact() { api GET "/api/v1/hosts/$1" && [ "$(jqb .facts.postcopy)" = "$2" ]; }
grant() {
	local h
	for h in "$@"; do printf '%s\n' --qemu-user root >"$KUMO_LAB_DIR/hosts/$h/agent.args"; done
	GRANTED=("$@")
	agents_restart "$@"
	for h in "$@"; do wait_until 30 "$h reports the post-copy grant" postcopy_fact "$h" true; done
}
ungrant() {
	local h
	[ ${#GRANTED[@]} -gt 0 ] || return 0
	for h in "${GRANTED[@]}"; do rm -f "$KUMO_LAB_DIR/hosts/$h/agent.args"; done
	agents_restart "${GRANTED[@]}"
	GRANTED=()
}
cleanup() {
	local rc=$? h
	# A failure says what the guest and its QEMUs were doing: the console's end and each
	# QEMU's run state (a guest that stopped ticking: hung, or never resumed?).
	if [ "$rc" != 0 ]; then
		echo "  $VM's console, last 25 lines:" >&2
		console $VM 2>/dev/null | tail -25 | sed 's/^/    /' >&2 || true
		for h in h1 h2 h3; do
			[ -S "$KUMO_LAB_DIR/hosts/$h/local/instances/$VM/monitor.sock" ] || continue
			echo "  $VM's QEMU on $h: $(qemu_monitor2 "$KUMO_LAB_DIR/hosts/$h/local/instances/$VM/monitor.sock" qmp query-status 2>&1)" >&2
		done
	fi
	# A tail holder (case 1b) lifts its block and ends.
	[ -z "${hold:-}" ] || touch "$hold/unblock" 2>/dev/null || true
	instances_delete $VM
	ungrant || true
}
for h in h1 h2 h3; do rm -f "$KUMO_LAB_DIR/hosts/$h/agent.args"; done
instances_delete $VM # leftovers of an interrupted run
trap cleanup EXIT

# Uptime ticks, and a loop that fills a tmpfs file (guest memory) with random data
# and checks it three times over: a page the migration lost or mixed up shows.
load='#!/bin/sh\n(while :; do echo KUMO-TICK $(cut -d. -f1 /proc/uptime); sleep 1; done) </dev/null >/dev/console 2>&1 &\n(n=0; while :; do dd if=/dev/urandom of=/tmp/load bs=1M count=32 2>/dev/null; s=$(md5sum </tmp/load); for i in 1 2 3; do [ \"$(md5sum </tmp/load)\" = \"$s\" ] || echo KUMO-CORRUPT; done; n=$((n + 1)); echo KUMO-LOAD-OK $n; done) </dev/null >/dev/console 2>&1 &\n'
vm_create '{"name":"'$VM'","type":"vm","vcpus":1,"memory":{"mb":256},"host":"h1",
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio"}],
	"cloud_init":{"user_data":"'"$load"'"}}'
wait_until 150 "$VM booted" console_has $VM KUMO-GUEST-READY
wait_until 180 "$VM's load runs" console_has $VM "KUMO-LOAD-OK 2"

last() { console $VM | awk -v k="$1" '$1 == k { v = $2 + 0 } END { print v + 0 }'; }
past() { [ "$(last "$1")" -gt "$2" ]; }
# qemu_hosts: the lab host of each QEMU process started with -name $VM.
qemu_hosts() {
	local p
	for p in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "^[^ ]*qemu-system[^ ]* -name $VM " || continue
		tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -o "$KUMO_LAB_DIR/hosts/h[0-9]*/" | head -1 |
			sed 's|.*/hosts/\(h[0-9]*\)/|\1|'
	done
	return 0
}
qemu_pid_on() { # qemu_pid_on HOST: the pid of $VM's QEMU on HOST
	local p
	for p in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "^[^ ]*qemu-system[^ ]* -name $VM .*$KUMO_LAB_DIR/hosts/$1/" || continue
		echo "${p#/proc/}"
		return 0
	done
}
qemu_only() { [ "$(qemu_hosts | tr '\n' ' ')" = "$1 " ]; }
# healthy HOST WHAT: $VM runs on HOST in the database and there alone, its clock and
# its load go on past where they were, and the console shows no trouble.
healthy() {
	local where=$1 what=$2 t l
	api GET /api/v1/instances/$VM
	[ "$(jqb .host)" = "$where" ] && [ "$(jqb .state)" = running ] ||
		fail "$what: $VM is $(jqb .state) on $(jqb .host), not running on $where"
	# The source's QEMU goes just after the switchover.
	wait_until 30 "$what: $VM's QEMU on $where alone" qemu_only "$where"
	t=$(last KUMO-TICK)
	l=$(last KUMO-LOAD-OK)
	wait_until 60 "$VM ticks on $where ($what)" past KUMO-TICK "$t"
	wait_until 120 "$VM's load passes its checks on $where ($what)" past KUMO-LOAD-OK "$l"
	local bad
	bad=$(console $VM | grep -aiE 'KUMO-CORRUPT|KUMO-BOOT|panic|oops|general protection|BUG:|stack-protector|segfault' || true)
	[ -z "$bad" ] || fail "$what: $VM's console on $where shows trouble: $bad"
}
migrate() { # migrate BODY -> waits; BODY holds the finished operation
	api POST /api/v1/instances/$VM/actions/migrate "$1"
	expect_status 202 "migrate $1"
	wait_op "$(jqb .id)" 240
}

# ---- 1. the default, no host with the grant: pause-then-migrate --------------------------
t0=$(last KUMO-TICK)
migrate '{}'
op_ok
strategy=$(jqb .result.strategy)
dst=$(jqb .result.host)
echo "  $VM h1 -> $dst under load: $strategy, downtime $(jqb .result.downtime_ms) ms, paused $(jqb .result.paused_ms) ms, total $(jqb .result.total_ms) ms"
echo "  timings: $(jqb -c '.result.timings // {}')"
[ "$strategy" = pause-then-migrate ] || fail "a TCG guest dirtying memory was migrated with $strategy"
[ "$(jqb .result.postcopy)" = never ] && jqb .result.postcopy_why | grep -q userfaultfd ||
	fail "the result does not say why post-copy was not used: $(jqb -c .result)"
# The guest goes on where it was: its clock, and its load, checked again and again.
wait_until 60 "$VM ticks on $dst past its uptime before" past KUMO-TICK "$t0"
healthy "$dst" "paused, moved, resumed"
sleep_ticks=$(last KUMO-TICK)
wait_until 60 "$VM ran 10 s more" past KUMO-TICK $((sleep_ticks + 10))
healthy "$dst" "10 s later"
pass "a guest dirtying memory under TCG was paused, moved to $dst and resumed: no panic, no oops, no corruption, no reboot"

# ---- 1b. the stream's tail late at the target: the resume waits for it ------------------------
# The source says "completed" once its last byte is in its socket; a busy target may
# still be loading it ("inmigrate"), and QEMU takes a cont then but forgets it: the
# guest keeps the source's run state, paused (it_migrate_load's one failure). This
# holds the tail back on purpose: tail_hold SRC_MON DST_DIR DST_MON DIR drops the
# stream's packets into the target (nft in the namespace of the QEMU started under
# DST_DIR, on the port it listens on) once the source has under 4 MiB of RAM left, so
# the source completes while the target waits; when DIR/unblock shows it writes the
# target's run state to DIR/held and lifts the block.
tail_hold() {
	local rt=(chrt -f 10)
	chrt -f 10 true 2>/dev/null || rt=()
	"${rt[@]}" python3 - "$@" <<'PY'
import json, os, socket, subprocess, sys, time
src_mon, dst_dir, dst_mon, d = sys.argv[1:5]
def monitor(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rw"); f.readline()
    def ask(cmd):
        f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
        while True:
            m = json.loads(f.readline())
            if "return" in m or "error" in m: return m.get("return", {})
    ask("qmp_capabilities")
    return ask
src = monitor(src_mon)
open(d + "/ready", "w").close()
end = time.time() + 120; pid = port = None
while pid is None and time.time() < end:
    for p in filter(str.isdigit, os.listdir("/proc")):
        try: c = open("/proc/%s/cmdline" % p, "rb").read().decode(errors="replace")
        except OSError: continue
        if "qemu-system" in c and dst_dir in c and "-incoming" in c: pid = p
    time.sleep(0.005)
while pid and port is None and time.time() < end:
    try: socks = {os.readlink("/proc/%s/fd/%s" % (pid, n)) for n in os.listdir("/proc/%s/fd" % pid)}
    except OSError: socks = set()
    for l in open("/proc/%s/net/tcp" % pid).read().splitlines()[1:]:
        x = l.split()
        if x[3] == "0A" and "socket:[%s]" % x[9] in socks: port = int(x[1].split(":")[1], 16)
    time.sleep(0.005)
if port is None: sys.exit("tail_hold: no QEMU of %s listening" % dst_dir)
nft = subprocess.Popen(["nsenter", "--net=/proc/%s/ns/net" % pid, "nft", "-f", "-"], stdin=subprocess.PIPE, text=True)
seen = False
while time.time() < end:
    r = src("query-migrate"); st = r.get("status")
    seen = seen or st == "active"
    if seen and (st != "active" or r.get("ram", {}).get("remaining", 1 << 40) < (4 << 20)): break
    time.sleep(0.002)
nft.stdin.write("table inet kumo_test_hold {\n chain in { type filter hook input priority -300; tcp dport %d drop; }\n}\n" % port)
nft.stdin.close(); nft.wait()
while not os.path.exists(d + "/unblock") and time.time() < end: time.sleep(0.02)
try: held = monitor(dst_mon)("query-status").get("status", "?")
except Exception as e: held = "unknown (%s)" % e
open(d + "/held", "w").write(held)
subprocess.run(["nsenter", "--net=/proc/%s/ns/net" % pid, "nft", "delete", "table", "inet", "kumo_test_hold"])
PY
}
# resume_reached OP: the migration OP's resume was sent to the target (its operation
# exists), or the migration ended. The hold is lifted then, not once the resume's phase
# says it waits: the dropped packets' retransmissions back off exponentially, so a
# hold of many seconds (a phase report late on a loaded machine) delayed the tail past
# the resume's 45 s bound (a clean-clone run). The old agent's cont still came first:
# it goes at once, the tail only at the next retransmission.
resume_reached() {
	local id
	api GET "/api/v1/operations/$1"
	[ "$(jqb .status)" = running ] || return 0
	api GET "/api/v1/operations?limit=20"
	id=$(jq -r --arg p "$1" '.operations[]? | select(.kind == "migrate-resume" and .result.parent == $p) | .id' <<<"$BODY" | head -1)
	[ -n "$id" ]
}
hold=$(mktemp -d)
src=$dst
dst=h1
[ "$src" = h1 ] && dst=h3
for attempt in 1 2 3; do
	rm -f "$hold"/*
	tail_hold "$KUMO_LAB_DIR/hosts/$src/local/instances/$VM/monitor.sock" "$KUMO_LAB_DIR/hosts/$dst/" \
		"$KUMO_LAB_DIR/hosts/$dst/local/instances/$VM/monitor.sock" "$hold" &
	holder=$!
	wait_until 30 "the tail holder ready" test -e "$hold/ready"
	t0=$(last KUMO-TICK)
	# 50 Mbit/s: the source's last 4 MiB take long enough for the holder to see them.
	api POST /api/v1/instances/$VM/actions/migrate '{"host":"'$dst'","bandwidth_mbps":50}'
	expect_status 202
	op=$(jqb .id)
	wait_until 240 "the resume of $VM on $dst under way" resume_reached "$op"
	touch "$hold/unblock"
	wait "$holder" || fail "the tail holder failed"
	wait_op "$op" 240
	op_ok
	[ "$(jqb .result.host)" = "$dst" ] || fail "$VM went to $(jqb .result.host), not $dst"
	echo "  $VM $src -> $dst, its tail held back: the target was $(cat "$hold/held") when its resume came; resume $(jqb .result.timings.resume_ms) ms, its marks $(jqb -c '.result.timings.resume // {}')"
	wait_until 60 "$VM ticks on $dst past its uptime before (tail held back)" past KUMO-TICK "$t0"
	healthy "$dst" "tail held back"
	src=$dst
	dst=h1
	[ "$src" = h1 ] && dst=h3
	held=$(cat "$hold/held")
	[ "$held" != inmigrate ] || break
	[ "$attempt" != 3 ] || fail "three times the hold came after the target had the stream's tail (it was $held); the case could not run"
	echo "  (the hold came after the target had the tail: it was $held; again)"
done
rm -rf "$hold"
pass "a resume that came while the target still loaded the stream waited for it: $VM runs on $src"
dst=$src

# ---- the grant: h1 and the host $VM is not on -------------------------------------------
other=h2
[ "$dst" = h2 ] && other=h3
grant h1 "$other"

# ---- 2. postcopy never, to a host with the grant -------------------------------------------
migrate '{"host":"'$other'","postcopy":"never"}'
op_ok
[ "$(jqb .result.strategy)" = pause-then-migrate ] && [ "$(jqb -c .result.ladder)" = '["pause-then-migrate"]' ] ||
	fail "postcopy never to $other (it has the grant): strategy $(jqb .result.strategy), ladder $(jqb -c .result.ladder)"
healthy "$other" "postcopy never"
pass "postcopy never: $VM was paused and moved to $other although $other may post-copy"

# ---- 3. the default to a host with the grant: post-copy -------------------------------------
migrate '{"host":"h1"}'
op_ok
echo "  $VM $other -> h1 under load: $(jqb .result.strategy) $(jqb -c .result.ladder), downtime $(jqb .result.downtime_ms) ms, total $(jqb .result.total_ms) ms"
echo "  timings: $(jqb -c '.result.timings // {}')"
[ "$(jqb .result.strategy)" = postcopy ] && [ "$(jqb -c .result.ladder)" = '["postcopy"]' ] ||
	fail "the default to h1 (it has the grant) was not post-copy: $(jqb -c .result)"
[ "$(jqb .result.postcopy)" = auto ] || fail "the result says postcopy $(jqb .result.postcopy), not auto"
healthy h1 "post-copy"
t=$(last KUMO-TICK)
wait_until 60 "$VM ran 10 s more on h1" past KUMO-TICK $((t + 10))
healthy h1 "10 s after post-copy"
pass "post-copy: $VM moved to h1 under load (downtime $(jqb .result.downtime_ms) ms) and runs on, its checks passing: no panic, no oops, no corruption, no reboot"

# ---- 4. the target's QEMU killed -9 during post-copy: the VM is lost -------------------------
# 16 Mbit/s holds for post-copy too: its pages take long enough to kill the target.
api POST /api/v1/instances/$VM/actions/migrate '{"host":"'$other'","postcopy":"always","bandwidth_mbps":16}'
expect_status 202
op=$(jqb .id)
in_postcopy() { api GET "/api/v1/operations/$op" && [ "$(jqb .phase)" = postcopy ]; }
wait_until 60 "the migration in post-copy" in_postcopy
api POST "/api/v1/operations/$op/actions/cancel"
expect_status 409 "a cancel during post-copy"
qpid=$(qemu_pid_on "$other")
[ -n "$qpid" ] || fail "no QEMU of $VM on $other during post-copy"
kill -9 "$qpid"
wait_op "$op" 120
[ "$(jqb .status)" = failed ] && [ "$(jqb .result.lost)" = true ] ||
	fail "the migration whose target QEMU died in post-copy ended $(jqb .status), lost $(jqb .result.lost)"
why=$(jqb .error)
grep -q "lost" <<<"$why" || fail "the operation does not say the VM is lost: $why"
lost_in_db() { api GET /api/v1/instances/$VM && [ "$(jqb .state)" = missing ]; }
wait_until 30 "the database says $VM is missing" lost_in_db
no_qemu() { [ -z "$(qemu_hosts)" ]; }
wait_until 30 "no QEMU of $VM on any host" no_qemu
no_rundir() { [ ! -e "$KUMO_LAB_DIR/hosts/h1/local/instances/$VM" ] && [ ! -e "$KUMO_LAB_DIR/hosts/$other/local/instances/$VM" ]; }
wait_until 30 "no run directory of $VM on h1 or $other" no_rundir
ls /tmp/kumo-migtls-* >/dev/null 2>&1 && fail "certificate files are left: $(ls -d /tmp/kumo-migtls-*)"
ls -d "$KUMO_LAB_DIR"/hosts/h*/local/instances/*/migrate-tls >/dev/null 2>&1 &&
	fail "a target's certificate directory is left: $(ls -d "$KUMO_LAB_DIR"/hosts/h*/local/instances/*/migrate-tls)"
pass "the target's QEMU killed -9 in post-copy: the operation says the VM is lost ($why), neither host keeps a QEMU or run directory, the database says missing"

trap - EXIT
cleanup
