#!/bin/bash
# bench/failover.sh [N] - HA failover time in the test lab (up first, same
# KUMO_TEST_LAB_* as the tests): an HA VM (disk on the shared pool) whose host is
# killed whole, timed from the kill to the guest's KUMO-GUEST-READY on the new host's
# console; N runs (default 5), the median printed with each run's timeline:
#   failed    the controller saw the host failed (no heartbeat, lease still)
#   fenced    its lease expired: the restart (since the prepare during the fence
#             wait: only the start) was sent
#   running   the instance reported running on the new host
#   ready     the guest's marker on the new console
# Goal: ready <= 20 s with failed <= 5 s past ha_detect_s. Informative only; never gate.
. "$(dirname "$0")/../tests/integration/lib.sh"
. "$(dirname "$0")/../tests/integration/lib_ha.sh"

RUNS=${1:-5}
VM=bench-ha
cleanup() {
	lab up --hosts "${KUMO_LAB_HOSTS:-3}" >/dev/null 2>&1 || true
	api DELETE "/api/v1/instances/$VM?force=1" >/dev/null 2>&1 || true
}
trap cleanup EXIT

wait_until 60 "3 hosts online" all_online 3
vm_create '{"name":"'$VM'","type":"vm","memory":{"mb":128},
	"disks":[{"name":"root","image":"'$TEST_IMAGE'"}],"ha":{"enabled":true}}'
wait_until 120 "$VM's guest ready" console_has $VM KUMO-GUEST-READY
readies=()
faileds=()
fenceds=()
runnings=()
for run in $(seq 1 "$RUNS"); do
	from=$(host_of $VM)
	t0=$(date +%s%3N)
	lab fault "$from" kill >/dev/null
	wait_until 120 "$from failed" ha_failed "$from"
	failed=$(($(date +%s%3N) - t0))
	wait_until 120 "$from fenced" ha_state_is "$from" fenced
	fenced=$(($(date +%s%3N) - t0))
	wait_until 240 "$VM running elsewhere" running_elsewhere $VM "$from"
	running=$(($(date +%s%3N) - t0))
	wait_until 240 "$VM's guest ready again" console_has $VM KUMO-GUEST-READY
	ready=$(($(date +%s%3N) - t0))
	readies+=("$ready")
	faileds+=("$failed")
	fenceds+=("$fenced")
	runnings+=("$running")
	printf 'run %d: %s killed: failed %5d ms, fenced %5d ms, running %5d ms, ready %5d ms (on %s)\n' \
		"$run" "$from" "$failed" "$fenced" "$running" "$ready" "$(host_of $VM)"
	lab up --hosts "${KUMO_LAB_HOSTS:-3}" >/dev/null
	wait_until 120 "$from back" ha_state_is "$from" ok
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "RESULT failover_failed_median_ms=$(median "${faileds[@]}") fenced_median_ms=$(median "${fenceds[@]}")" \
	"running_median_ms=$(median "${runnings[@]}") ready_median_ms=$(median "${readies[@]}") runs=$RUNS"
