#!/bin/bash
# Checkpoints: a disk snapshot taken, the disk changed, the snapshot reverted -> the
# change is gone; a snapshot with memory reverted on a running VM restores it running.
. "$(dirname "$0")/lib.sh"

trap 'api DELETE "/api/v1/instances/sn1?force=1" >/dev/null 2>&1 || true' EXIT
vm_create '{"name":"sn1","type":"vm","memory":{"mb":256},"disks":[{"name":"root","image":"'$TEST_IMAGE'"}]}'
wait_until 150 "first boot" console_has sn1 "KUMO-BOOT count=1"
stop() {
	api POST /api/v1/instances/sn1/actions/stop '{"timeout_s":60}'
	wait_op "$(jqb .id)"
	op_ok
	wait_until 30 "sn1 stopped" instance_is sn1 stopped
}
start() {
	api POST /api/v1/instances/sn1/actions/start
	wait_op "$(jqb .id)"
	op_ok
}
stop
api POST /api/v1/instances/sn1/snapshots '{"name":"s1"}'
expect_status 202
wait_op "$(jqb .id)"
op_ok
api GET /api/v1/instances/sn1/snapshots
[ "$(jqb '.snapshots[0].name')" = s1 ] && [ "$(jqb '.snapshots[0].state')" = ready ] || fail "snapshot s1 not listed ready"
api POST /api/v1/instances/sn1/snapshots '{"name":"s1"}'
expect_status 409
start
wait_until 150 "second boot (disk changed after the snapshot)" console_has sn1 "KUMO-BOOT count=2"
stop
api POST /api/v1/instances/sn1/snapshots/s1/actions/revert
expect_status 202
wait_op "$(jqb .id)"
op_ok
boots() { console sn1 | grep -c "KUMO-BOOT count=" || true; }
more_boots() { [ "$(boots)" -gt "$1" ]; }
n0=$(boots)
start
# The boot after the revert counts from the snapshot's disk: 2 again, not 3.
wait_until 150 "boot after revert" more_boots "$n0"
last=$(console sn1 | grep -o "KUMO-BOOT count=[0-9]*" | tail -1)
[ "$last" = "KUMO-BOOT count=2" ] || fail "after the revert the guest saw '$last': the change made after the snapshot survived"
pass "disk snapshot, change, revert: the change is gone"

# With memory, on the running VM: revert brings back the running state.
api POST /api/v1/instances/sn1/snapshots '{"name":"m1","with_memory":true}'
expect_status 202
wait_op "$(jqb .id)" 300
op_ok
api POST /api/v1/instances/sn1/actions/pause
wait_op "$(jqb .id)"
op_ok
wait_until 20 "paused" instance_is sn1 paused
api POST /api/v1/instances/sn1/snapshots/m1/actions/revert
wait_op "$(jqb .id)" 300
op_ok
wait_until 30 "running again after revert" instance_is sn1 running
pass "a snapshot with memory reverted on a paused VM restores its running state"

api DELETE /api/v1/instances/sn1/snapshots/m1
wait_op "$(jqb .id)"
op_ok
api GET /api/v1/instances/sn1/snapshots
[ "$(jqb '[.snapshots[].name] | join(",")')" = s1 ] || fail "deleted snapshot still listed"
api POST /api/v1/instances/sn1/snapshots/nosuch/actions/revert
expect_status 404
pass "snapshot delete; reverting an unknown snapshot is 404"
