#!/bin/bash
# Memory ballooning on a running VM within min..max (visible through QMP's
# query-balloon as the agent reports it), and vCPUs, memory and disk growth while
# stopped.
. "$(dirname "$0")/lib.sh"

trap 'api DELETE "/api/v1/instances/bal1?force=1" >/dev/null 2>&1 || true' EXIT
vm_create '{"name":"bal1","type":"vm","vcpus":1,"memory":{"min_mb":128,"max_mb":384},
	"disks":[{"name":"root","image":"'$TEST_IMAGE'"}]}'
wait_until 150 "boot" console_has bal1 KUMO-GUEST-READY
balloon_near() { api GET /api/v1/instances/bal1; local a; a=$(jqb .balloon_actual_mb); [ "$a" != null ] && [ "$a" -ge $(($1 - 16)) ] && [ "$a" -le $(($1 + 16)) ]; }
wait_until 30 "balloon reports the full 384 MiB" balloon_near 384
api PATCH /api/v1/instances/bal1 '{"memory":{"target_mb":200}}'
expect_status 202
wait_op "$(jqb .id)"
op_ok
# The operation ends when the guest got there (within its tolerance), not before.
[ "$(jqb .result.reached)" = true ] || fail "the balloon operation ended with the guest not at 200 MiB: $(jqb -c .result)"
actual=$(jqb .result.actual_mb) tol=$(jqb .result.tolerance_mb)
[ "$tol" -ge 4 ] && [ $((actual - 200)) -le "$tol" ] && [ $((200 - actual)) -le "$tol" ] ||
	fail "the balloon operation says reached with the guest at $actual MiB (tolerance $tol MiB)"
balloon_near 200 || fail "right after the balloon operation the instance shows $(jqb .balloon_actual_mb) MiB, not about 200"
[ "$(jqb .balloon_target_mb)" = 200 ] || fail "the instance shows balloon_target_mb $(jqb .balloon_target_mb), not 200"
api PATCH /api/v1/instances/bal1 '{"memory":{"target_mb":512}}'
expect_status 400
api PATCH /api/v1/instances/bal1 '{"memory":{"target_mb":100}}'
expect_status 400
api PATCH /api/v1/instances/bal1 '{"vcpus":2}'
expect_status 409
pass "balloon target set within min..max on a running VM: the operation ends with the guest there, the instance shows the target; out of range 400"

api POST /api/v1/instances/bal1/actions/stop
wait_op "$(jqb .id)"
op_ok
[ "$(jqb .result.grace_s)" = 60 ] || fail "a VM's stop without timeout_s had a grace of $(jqb .result.grace_s) s, not 60"
wait_until 30 "stopped" instance_is bal1 stopped
api GET /api/v1/instances/bal1
size0=$(jqb '.disks[0].size_mb')
api PATCH /api/v1/instances/bal1 '{"vcpus":2,"memory":{"min_mb":128,"max_mb":512},"disks":[{"name":"root","size_mb":'$((size0 + 64))'}]}'
expect_status 202
wait_op "$(jqb .id)"
op_ok
api GET /api/v1/instances/bal1
[ "$(jqb .vcpus)" = 2 ] || fail "vcpus not changed"
[ "$(jqb .memory.max_mb)" = 512 ] || fail "memory not changed"
[ "$(jqb '.disks[0].size_mb')" = $((size0 + 64)) ] || fail "disk size not changed"
qemu-img info --output=json -U "$KUMO_LAB_DIR/shared/disks/bal1/root.qcow2" | jq -e ".\"virtual-size\" == $(((size0 + 64) << 20))" >/dev/null ||
	fail "the disk file did not grow"
pass "vCPUs, memory and disk size changed while stopped; the disk file grew"
