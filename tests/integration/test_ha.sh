#!/bin/bash
# High availability: an HA VM (its disk on the shared pool) and an HA container come
# back on another host when their host is (a) killed whole or (b) its agent frozen;
# a sampler counts, every 100 ms, the QEMU and container processes of each across all
# hosts and must never see two at once; the host coming back kills nothing that now
# runs elsewhere and runs nothing twice. Also: the "ha" field (create, PATCH, 422 for
# a disk off the shared pool), leases that advance, non-HA instances of a failed host
# shown "unknown", the failover operation's timeline.
. "$(dirname "$0")/lib.sh"

VM=ha-vm
CT=ha-ct
PLAIN=ha-plain
SAMPLES=$(mktemp /tmp/kt-ha-samples.XXXXXX)
SAMPLER=""
FROZEN=""
cleanup() {
	[ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
	[ -z "$FROZEN" ] || lab fault "$FROZEN" thaw >/dev/null 2>&1 || true
	lab up --hosts 3 >/dev/null 2>&1 || true
	for n in $VM $CT $PLAIN ha-local; do
		api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true
	done
	rm -f "$SAMPLES"
}
trap cleanup EXIT

wait_until 60 "3 hosts online" all_online 3

# ---- the field ----
api POST /api/v1/instances '{"name":"ha-local","type":"vm","start":false,
	"disks":[{"name":"scratch","pool":"local","size_mb":16}],"ha":{"enabled":true}}'
expect_status 422
jqb .error | grep -q "disk scratch" || fail "422 does not name the local disk: $BODY"
api POST /api/v1/instances '{"name":"ha-local","type":"vm","start":false,
	"disks":[{"name":"scratch","pool":"shared","size_mb":16}],"ha":{"enabled":true,"priority":101}}'
expect_status 400
pass "HA needs every disk on the shared pool (422 names the disk); priority is 0..100"

vm_create '{"name":"'$VM'","type":"vm","host":"h2","memory":{"mb":128},
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio"}],"ha":{"enabled":true,"priority":90}}'
api POST /api/v1/instances '{"name":"'$CT'","type":"container","image":"busybox:latest",
	"command":["sleep","3600"],"host":"h2","ha":{"enabled":true,"priority":10}}'
expect_status 202
wait_op "$(jqb .id)" 180
op_ok
api POST /api/v1/instances '{"name":"'$PLAIN'","type":"container","image":"busybox:latest",
	"command":["sleep","3600"],"host":"h2"}'
expect_status 202
wait_op "$(jqb .id)" 180
op_ok
api PATCH /api/v1/instances/$CT '{"ha":{"enabled":true,"priority":20}}'
expect_status 200
[ "$(jqb .ha.priority)" = 20 ] && [ "$(jqb .ha.enabled)" = true ] || fail "PATCH ha not applied: $BODY"
api GET /api/v1/instances/$VM
[ "$(jqb .ha.enabled)" = true ] && [ "$(jqb .ha.priority)" = 90 ] || fail "ha not shown: $BODY"
pass "HA VM and container created on h2, ha shown and patched"

# ---- leases ----
lease_counter() {
	api GET "/api/v1/hosts/$1"
	jqb '.ha.lease.counter // 0'
}
c1=$(lease_counter h2)
lease_moved() { [ "$(lease_counter h2)" -gt "$c1" ]; }
wait_until 30 "h2's lease to advance" lease_moved
api GET /api/v1/hosts/h2
[ "$(jqb .ha.state)" = ok ] || fail "h2 ha state is $(jqb .ha.state)"
pass "h2 renews its storage lease; its HA state is ok"

# ---- the sampler: processes per instance across all hosts, every 100 ms ----
# QEMU: the process whose argv holds "-name NAME". A container: the init pid in runc's
# state of each host (the pid namespace is the machine's, so any host's is visible).
qemu_count() {
	local n=0 f pid
	for f in $(grep -lsFxz -- "$1" /proc/[0-9]*/cmdline 2>/dev/null); do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[[ $(cat "/proc/$pid/comm" 2>/dev/null) == qemu* ]] || continue
		grep -q '^State:.*[ZX]' "/proc/$pid/status" 2>/dev/null || n=$((n + 1))
	done
	echo $n
}
ct_count() {
	local n=0 s pid st
	for s in "$KUMO_LAB_DIR"/hosts/h*/local/runc/"$1"/state.json; do
		[ -r "$s" ] || continue
		st=$(<"$s") || continue
		[[ $st =~ \"init_process_pid\":([0-9]+) ]] || continue
		pid=${BASH_REMATCH[1]}
		[ -e "/proc/$pid" ] || continue
		grep -q '^State:.*[ZX]' "/proc/$pid/status" 2>/dev/null || n=$((n + 1))
	done
	echo $n
}
sampler() {
	while :; do
		echo "$(date +%s%3N) $(qemu_count $VM) $(ct_count $CT)"
		sleep 0.1
	done
}
[ "$(qemu_count $VM)" = 1 ] || fail "the sampler does not see the VM's QEMU"
[ "$(ct_count $CT)" = 1 ] || fail "the sampler does not see the container"
sampler >"$SAMPLES" &
SAMPLER=$!

no_double_run() {
	local worst
	worst=$(awk 'BEGIN { m = 0 } { if ($2 > m) m = $2; if ($3 > m) m = $3 } END { print m }' "$SAMPLES")
	[ "$worst" -le 1 ] || fail "$1: a workload ran twice: $(awk '$2 > 1 || $3 > 1' "$SAMPLES" | head -n 3)"
	echo "  ($(wc -l <"$SAMPLES") samples, at most $worst process per workload)"
}

# running_elsewhere NAME HOST: running, on another host than HOST.
running_elsewhere() {
	api GET "/api/v1/instances/$1"
	[ "$(jqb .state)" = running ] && [ "$(jqb .host)" != "$2" ] && [ "$(jqb .host)" != null ]
}
host_of() {
	api GET "/api/v1/instances/$1"
	jqb .host
}
ha_state_is() {
	api GET "/api/v1/hosts/$1"
	[ "$(jqb .ha.state)" = "$2" ]
}

# failover_check FAULT HOST T0: both back elsewhere; prints the times.
failover_check() {
	local fault=$1 from=$2 t0=$3 detect restart op
	wait_until 60 "$from failed ($fault)" ha_state_is "$from" failed
	detect=$(($(date +%s%3N) - t0))
	wait_until 180 "$VM running elsewhere ($fault)" running_elsewhere $VM "$from"
	wait_until 120 "$CT running elsewhere ($fault)" running_elsewhere $CT "$from"
	restart=$(($(date +%s%3N) - t0))
	echo "  $fault: failed seen after ${detect} ms, both running elsewhere after ${restart} ms"
	op=$(sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "SELECT id FROM operations WHERE
		target = 'instances/$VM' AND json_extract(result, '\$.args.failover.from') = '$from'
		ORDER BY created_at DESC LIMIT 1")
	[ -n "$op" ] || fail "no failover operation for $VM from $from"
	api GET "/api/v1/operations/$op"
	[ "$(jqb .status)" = succeeded ] || fail "failover operation: $BODY"
	[ "$(jqb '.result.args.failover.fenced_at >= .result.args.failover.detected_at')" = true ] ||
		fail "failover timeline out of order: $BODY"
	echo "  timeline: $(jqb '.result.args.failover | "detected \(.detected_at), fenced \(.fenced_at - .detected_at) ms later, restart sent \(.restart_at - .detected_at) ms after detection"'), done at $(jqb .updated_at)"
	no_double_run "$fault"
}

# ---- (a) the host killed whole ----
t0=$(date +%s%3N)
lab fault h2 kill >/dev/null
failover_check "host killed" h2 "$t0"
api GET /api/v1/instances/$PLAIN
[ "$(jqb .state)" = unknown ] || fail "the non-HA container of the failed host is $(jqb .state), not unknown"
api GET /api/v1/hosts/h2
[ "$(jqb .ha.state)" = fenced ] || fail "h2's HA state is $(jqb .ha.state), not fenced"
[ "$(sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "SELECT count(*) FROM ha_fences f JOIN hosts h
	ON h.id = f.host_id WHERE h.name = 'h2'")" -ge 2 ] || fail "no fence recorded for h2"
pass "host killed: HA VM and container run elsewhere, never twice; the plain one is unknown"

# The host comes back: its agent kills nothing that runs elsewhere, runs nothing twice.
vm_host=$(host_of $VM)
ct_host=$(host_of $CT)
lab up --hosts 3 >/dev/null
wait_until 60 "h2 online again" ha_state_is h2 ok
sleep_until=$((SECONDS + 5))
while [ $SECONDS -lt $sleep_until ]; do
	running_elsewhere $VM h2 || fail "$VM stopped running when h2 came back"
	sleep 0.5
done
[ "$(host_of $VM)" = "$vm_host" ] && [ "$(host_of $CT)" = "$ct_host" ] || fail "the instances moved when h2 came back"
[ "$(qemu_count $VM)" = 1 ] && [ "$(ct_count $CT)" = 1 ] || fail "not exactly one copy after h2 came back"
no_double_run "h2 back"
pass "h2 back: it ran nothing twice and the workloads stayed where they run"

# ---- (b) the agent of the VM's host frozen ----
from=$(host_of $VM)
FROZEN=$from
t0=$(date +%s%3N)
lab fault "$from" freeze >/dev/null
wait_until 60 "$from failed (agent frozen)" ha_state_is "$from" failed
detect=$(($(date +%s%3N) - t0))
wait_until 180 "$VM running elsewhere (agent frozen)" running_elsewhere $VM "$from"
restart=$(($(date +%s%3N) - t0))
echo "  agent frozen: failed seen after ${detect} ms, $VM running elsewhere after ${restart} ms"
no_double_run "agent frozen"
lab fault "$from" thaw >/dev/null
FROZEN=""
wait_until 60 "$from online again" ha_state_is "$from" ok
running_elsewhere $VM "$from" || fail "$VM is not running elsewhere after $from thawed"
[ "$(qemu_count $VM)" = 1 ] || fail "$(qemu_count $VM) QEMUs of $VM after $from thawed"
no_double_run "agent thawed"
grep -q "fence" "$KUMO_LAB_DIR/logs/$from-fencer.log" || fail "the fencer of $from did not fence"
pass "agent frozen: its fencer killed the VM, it runs elsewhere, never twice, also after the thaw"
