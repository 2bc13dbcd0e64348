#!/bin/bash
# tests/soak/migrate_local_fail.sh [N] - not in CI: N (default 10) migrations h1 -> h2
# of a VM with a local disk, each failed on purpose by killing the target's QEMU
# (by its pidfile in the lab) once the memory copy runs. Every operation must end
# (failed, within 120 s) with the VM running on h1 and nothing left on h2. It guards
# the review's M1: a late MIGRATION event once restarted the query-migrate poll on the
# timer the mirrors' stop was using, and the migrate-out operation never ended.
# Run in the test lab (lab up first, with the same KUMO_TEST_LAB_* as the tests).
. "$(dirname "$0")/../integration/lib.sh"

ROUNDS=${1:-10}
VM=mlf1
H2=$KUMO_LAB_DIR/hosts/h2/local
cleanup() { api DELETE "/api/v1/instances/$VM?force=1" >/dev/null 2>&1 || true; }
cleanup
trap cleanup EXIT

vm_create '{"name":"'$VM'","type":"vm","vcpus":1,"memory":{"mb":256},"host":"h1",
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","pool":"local","bus":"virtio"}]}'
wait_until 300 "$VM booted" console_has $VM KUMO-GUEST-READY

copying() { api GET "/api/v1/operations/$op" && [ "$(jqb .phase)" = precopy ]; }
target_gone() { [ ! -e "$H2/instances/$VM" ] && [ ! -e "$H2/disks/$VM/root.qcow2" ]; }
for round in $(seq "$ROUNDS"); do
	# 50 Mbit/s: the mirror takes about a second, the memory a few.
	api POST /api/v1/instances/$VM/actions/migrate '{"host":"h2","bandwidth_mbps":50}'
	expect_status 202
	op=$(jqb .id)
	wait_until 120 "round $round: the memory copy under way" copying
	pid=$(cat "$H2/instances/$VM/qemu.pid")
	grep -aq -- "$VM" "/proc/$pid/cmdline" || fail "round $round: pid $pid is not $VM's QEMU"
	kill -9 "$pid"
	t0=$SECONDS
	wait_op "$op" 120
	[ "$(jqb .status)" = failed ] || fail "round $round: the operation ended $(jqb .status)"
	api GET /api/v1/instances/$VM
	[ "$(jqb .host)" = h1 ] && [ "$(jqb .state)" = running ] ||
		fail "round $round: $VM is $(jqb .state) on $(jqb .host)"
	wait_until 60 "round $round: h2 clean" target_gone
	echo "round $round: ended in $((SECONDS - t0)) s after the kill"
done
pass "$ROUNDS local-disk migrations failed by a killed target QEMU: each ended, $VM ran on h1"
