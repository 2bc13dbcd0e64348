#!/bin/bash
# High availability: an HA VM (its disk on the shared pool) and an HA container come
# back on another host when their host is (a) killed whole, (b) its agent frozen or
# (c) cut off from the network while its storage stays (isolated: nothing restarts
# until it has fenced itself), (d) its storage cut while its network stays (the shared
# pool covered in its own mount namespace: it fences itself and falls silent) or (e)
# both at once;
# a sampler counts, every 100 ms, the QEMU and container processes of each across all
# hosts and must never see two at once; the host coming back kills nothing that now
# runs elsewhere and runs nothing twice. Also: the "ha" field (create, PATCH, 422 for
# a disk off the shared pool), leases that advance, non-HA instances of a failed host
# shown "unknown", the failover operation's timeline.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_ha.sh"

VM=ha-vm
CT=ha-ct
PLAIN=ha-plain
SAMPLES=$(mktemp /tmp/kt-ha-samples.XXXXXX)
SAMPLER=""
FROZEN=""
CUT=""
STORAGE_CUT=""
BOTH_CUT=""
cleanup() {
	[ -z "$STORAGE_CUT" ] || lab fault "$STORAGE_CUT" storage-restore >/dev/null 2>&1 || true
	[ -z "$BOTH_CUT" ] || lab fault "$BOTH_CUT" both-restore >/dev/null 2>&1 || true
	[ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
	[ -z "$FROZEN" ] || lab fault "$FROZEN" thaw >/dev/null 2>&1 || true
	[ -z "$CUT" ] || lab fault "$CUT" net-restore >/dev/null 2>&1 || true
	lab up --hosts 3 >/dev/null 2>&1 || true
	instances_delete $VM $CT $PLAIN ha-local
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

# ---- the sampler: processes per instance across all hosts, every 100 ms (lib_ha.sh) ----
[ "$(qemu_count $VM)" = 1 ] || fail "the sampler does not see the VM's QEMU"
[ "$(ct_count $CT)" = 1 ] || fail "the sampler does not see the container"
ha_sampler $VM $CT "$SAMPLES" &
SAMPLER=$!

no_double_run() {
	local worst
	worst=$(ha_worst "$SAMPLES")
	[ "$worst" -le 1 ] || fail "$1: a workload ran twice: $(awk '$2 > 1 || $3 > 1' "$SAMPLES" | head -n 3)"
	# QEMU's image lock must never have been what stopped a second copy: a restart
	# sent while the first QEMU still held the disk would show here.
	! grep -qs "another process using the image" "$KUMO_LAB_DIR"/logs/h*.log ||
		fail "$1: a QEMU found $VM's disk still in use: restarted before the fence"
	echo "  ($(wc -l <"$SAMPLES") samples, at most $worst process per workload)"
}

# failover_check FAULT HOST T0: both back elsewhere; prints the times.
failover_check() {
	local fault=$1 from=$2 t0=$3 detect restart op
	wait_until 60 "$from failed ($fault)" ha_failed "$from"
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
	# Made ready during the fence wait (ha-prepare: created, not started), so that at
	# the lease's expiry only the start was left.
	[ "$(jqb .result.args.failover.prepared)" = true ] ||
		fail "the failover of $VM did not use a copy prepared during the fence wait: $BODY"
	[ "$(sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "SELECT count(*) FROM operations WHERE
		kind = 'ha-prepare' AND target = 'ha-prepare/$from/$VM' AND status = 'succeeded'")" -ge 1 ] ||
		fail "no ha-prepare operation for $VM from $from succeeded"
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
wait_until 60 "$from failed (agent frozen)" ha_failed "$from"
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

# ---- (c) the VM's host cut off from controller and peers, its storage alive ----
from=$(host_of $VM)
CUT=$from
t0=$(date +%s%3N)
lab fault "$from" net-cut >/dev/null
wait_until 60 "$from isolated (network cut, lease moving)" ha_state_is "$from" isolated
isolated=$(($(date +%s%3N) - t0))
[ "$(host_of $VM)" = "$from" ] || fail "$VM was moved while $from was only isolated"
wait_until 180 "$VM running elsewhere (network cut)" running_elsewhere $VM "$from"
restart=$(($(date +%s%3N) - t0))
echo "  network cut: isolated after ${isolated} ms, $VM running elsewhere after ${restart} ms"
grep -q "controller has not heard this host" "$KUMO_LAB_DIR/logs/$from.log" ||
	fail "$from did not stop renewing its lease when the controller lost it"
no_double_run "network cut"
lab fault "$from" net-restore >/dev/null
CUT=""
wait_until 60 "$from online again" ha_state_is "$from" ok
running_elsewhere $VM "$from" || fail "$VM is not running elsewhere after $from came back"
[ "$(qemu_count $VM)" = 1 ] || fail "$(qemu_count $VM) QEMUs of $VM after $from came back"
no_double_run "network restored"
pass "network cut: isolated first (nothing moved), fenced itself, then restarted elsewhere, never twice"

# ---- (d) the VM's host loses its storage, its network alive ----
# The lab covers the shared pool in that host's own mount namespace: its lease, the HA
# list and the view are gone there, while its QEMU keeps the disk it has open. Its
# fencer must kill the VM before the controller restarts it elsewhere: the sampler
# would see two QEMUs otherwise.
from=$(host_of $VM)
STORAGE_CUT=$from
fenced_before=$(grep -c "fence: vm $VM" "$KUMO_LAB_DIR/logs/$from-fencer.log" || true)
t0=$(date +%s%3N)
lab fault "$from" storage-cut >/dev/null
wait_until 60 "$from failed (storage cut)" ha_failed "$from"
detect=$(($(date +%s%3N) - t0))
wait_until 180 "$VM running elsewhere (storage cut)" running_elsewhere $VM "$from"
restart=$(($(date +%s%3N) - t0))
echo "  storage cut: failed seen after ${detect} ms, $VM running elsewhere after ${restart} ms"
grep -q "holding heartbeats back" "$KUMO_LAB_DIR/logs/$from.log" || fail "$from kept sending heartbeats while fenced"
[ "$(grep -c "fence: vm $VM" "$KUMO_LAB_DIR/logs/$from-fencer.log")" -gt "$fenced_before" ] ||
	fail "the fencer of $from did not kill $VM"
no_double_run "storage cut"
lab fault "$from" storage-restore >/dev/null
STORAGE_CUT=""
wait_until 60 "$from online again" ha_state_is "$from" ok
running_elsewhere $VM "$from" || fail "$VM is not running elsewhere after $from's storage came back"
[ "$(qemu_count $VM)" = 1 ] || fail "$(qemu_count $VM) QEMUs of $VM after $from's storage came back"
no_double_run "storage restored"
pass "storage cut: the host's fencer killed the VM, it fell silent; restarted elsewhere, never twice"

# ---- (e) both: the host of both workloads loses network and storage at once ----
# The container is made anew on the VM's host, so that both are there.
from=$(host_of $VM)
if [ "$(host_of $CT)" != "$from" ]; then
	instances_delete $CT
	api POST /api/v1/instances '{"name":"'$CT'","type":"container","image":"busybox:latest",
		"command":["sleep","3600"],"host":"'$from'","ha":{"enabled":true,"priority":20}}'
	expect_status 202
	wait_op "$(jqb .id)" 180
	op_ok
fi
BOTH_CUT=$from
t0=$(date +%s%3N)
lab fault "$from" both-cut >/dev/null
wait_until 60 "$from failed (network and storage cut)" ha_failed "$from"
detect=$(($(date +%s%3N) - t0))
wait_until 180 "$VM running elsewhere (both cut)" running_elsewhere $VM "$from"
wait_until 120 "$CT running elsewhere (both cut)" running_elsewhere $CT "$from"
restart=$(($(date +%s%3N) - t0))
echo "  network and storage cut: failed seen after ${detect} ms, both running elsewhere after ${restart} ms"
no_double_run "both cut"
lab fault "$from" both-restore >/dev/null
BOTH_CUT=""
wait_until 60 "$from online again" ha_state_is "$from" ok
running_elsewhere $VM "$from" && running_elsewhere $CT "$from" ||
	fail "the workloads are not running elsewhere after $from came back"
[ "$(qemu_count $VM)" = 1 ] && [ "$(ct_count $CT)" = 1 ] || fail "not exactly one copy after $from came back"
no_double_run "both restored"
pass "network and storage cut: fenced, restarted elsewhere, never twice, also after it came back"

# ---- (f) a failed host back before its lease expired: the prepared copies go ----
# Frozen until judged failed, then thawed at once: the controller had created the
# replacements (ha-prepare, not started) on another host; with the host back before
# the expiry nothing moves and those copies are removed (ha-unprepare).
from=$(host_of $VM)
FROZEN=$from
lab fault "$from" freeze >/dev/null
wait_until 60 "$from failed (agent frozen)" ha_failed "$from"
lab fault "$from" thaw >/dev/null
FROZEN=""
wait_until 60 "$from back before its lease expired" ha_state_is "$from" ok
[ "$(host_of $VM)" = "$from" ] || fail "$VM moved although $from came back before its lease expired"
unprepared() {
	[ "$(sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "SELECT count(*) FROM operations WHERE
		kind = 'ha-unprepare' AND target LIKE 'ha-unprepare/%/$VM' AND status = 'succeeded'")" -ge 1 ]
}
wait_until 60 "$VM's prepared copy removed" unprepared
to=$(sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "SELECT substr(target, 14, instr(substr(target, 14), '/') - 1)
	FROM operations WHERE kind = 'ha-unprepare' AND target LIKE 'ha-unprepare/%/$VM' ORDER BY created_at DESC LIMIT 1")
[ ! -e "$KUMO_LAB_DIR/hosts/$to/local/instances/$VM" ] || fail "$VM's prepared copy is still on $to"
[ "$(qemu_count $VM)" -le 1 ] || fail "two QEMUs of $VM"
no_double_run "back before expiry"
pass "a failed host back before its lease expired: nothing moved, the prepared copy on $to removed"
