#!/bin/bash
# tests/soak/ha.sh [N] - HA soak, not in CI: N (default 50) random faults in a row on
# the host of an HA VM (disk on the shared pool) and an HA container, in the test lab
# (lab up first, with the same KUMO_TEST_LAB_* as the tests). Each round: a fault
# (kill the host, freeze its agent, cut its network, its storage or both), wait until
# both run elsewhere (the container when it was on that host),
# heal the host, wait until it is back. A sampler counts every 100 ms the processes
# of each workload across all hosts (QEMU by its -name, runc inits by their state)
# through the whole fault, not only at its end; after each round the samples so far
# are checked, and so are the hosts' logs for a QEMU that found the disk in use (a
# second QEMU opening it). Prints detect and restart times (min, median, max), how
# many failovers started a copy prepared during the fence wait, and the number of
# samples that saw a workload twice (must be 0). A double run stops the soak at once.
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/../integration/lib_ha.sh"

ROUNDS=${1:-50}
VM=soak-vm
CT=soak-ct
SAMPLES=$(mktemp /tmp/kumo-ha-soak.XXXXXX)
TIMES=$(mktemp /tmp/kumo-ha-soak-times.XXXXXX)
SAMPLER=""
cleanup() {
	[ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
	for i in $(seq 1 "${KUMO_LAB_HOSTS:-3}"); do
		lab fault "h$i" thaw >/dev/null 2>&1 || true
		lab fault "h$i" net-restore >/dev/null 2>&1 || true
		lab fault "h$i" storage-restore >/dev/null 2>&1 || true
	done
	lab up --hosts "${KUMO_LAB_HOSTS:-3}" >/dev/null 2>&1 || true
	api DELETE "/api/v1/instances/$VM?force=1" >/dev/null 2>&1 || true
	api DELETE "/api/v1/instances/$CT?force=1" >/dev/null 2>&1 || true
	rm -f "$SAMPLES" "$TIMES"
}
trap cleanup EXIT

wait_until 60 "3 hosts online" all_online 3
vm_create '{"name":"'$VM'","type":"vm","memory":{"mb":128},"anti_affinity":"soak",
	"disks":[{"name":"root","image":"'$TEST_IMAGE'"}],"ha":{"enabled":true,"priority":90}}'
api POST /api/v1/instances '{"name":"'$CT'","type":"container","image":"busybox:latest",
	"command":["sleep","86400"],"host":"'"$(host_of $VM)"'","ha":{"enabled":true}}'
expect_status 202
wait_op "$(jqb .id)" 180
op_ok
ha_sampler $VM $CT "$SAMPLES" &
SAMPLER=$!

PREPARED=0
for round in $(seq 1 "$ROUNDS"); do
	from=$(host_of $VM)
	# the VM's host: the container is there in the first round, wherever it went after
	ct_from=$(host_of $CT)
	kind=$(shuf -n1 -e kill freeze net-cut storage-cut both-cut)
	t0=$(date +%s%3N)
	lab fault "$from" "$kind" >/dev/null
	wait_until 120 "$from failed" ha_failed "$from"
	detect=$(($(date +%s%3N) - t0))
	wait_until 240 "$VM elsewhere" running_elsewhere $VM "$from"
	[ "$ct_from" != "$from" ] || wait_until 240 "$CT elsewhere" running_elsewhere $CT "$from"
	restart=$(($(date +%s%3N) - t0))
	case $kind in
	kill) lab up --hosts "${KUMO_LAB_HOSTS:-3}" >/dev/null ;;
	freeze) lab fault "$from" thaw >/dev/null ;;
	net-cut) lab fault "$from" net-restore >/dev/null ;;
	storage-cut) lab fault "$from" storage-restore >/dev/null ;;
	both-cut) lab fault "$from" both-restore >/dev/null ;;
	esac
	wait_until 120 "$from back" ha_state_is "$from" ok
	echo "$detect $restart" >>"$TIMES"
	prepared=$(sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "SELECT json_extract(result,
		'\$.args.failover.prepared') FROM operations WHERE target = 'instances/$VM' AND
		json_extract(result, '\$.args.failover.from') = '$from' ORDER BY created_at DESC LIMIT 1")
	[ "$prepared" = 1 ] && PREPARED=$((PREPARED + 1))
	worst=$(ha_worst "$SAMPLES")
	printf 'round %d: %s on %s: failed after %d ms, running elsewhere after %d ms, prepared %s, worst %s\n' \
		"$round" "$kind" "$from" "$detect" "$restart" "${prepared:-?}" "$worst"
	[ "$worst" -le 1 ] || fail "round $round ($kind): a workload ran twice: $(awk '$2 > 1 || $3 > 1' "$SAMPLES" | head -n 3)"
	! grep -qs "another process using the image" "$KUMO_LAB_DIR"/logs/h*.log ||
		fail "round $round ($kind): a QEMU found $VM's disk in use: a second copy opened it"
done

stats() { sort -n | awk '{ a[NR] = $1 } END { printf "min %d ms, median %d ms, max %d ms", a[1], a[int((NR + 1) / 2)], a[NR] }'; }
echo "detect:  $(cut -d' ' -f1 "$TIMES" | stats)"
echo "restart: $(cut -d' ' -f2 "$TIMES" | stats)"
echo "failovers that started a prepared copy: $PREPARED of $ROUNDS"
doubles=$(awk '$2 > 1 || $3 > 1' "$SAMPLES" | wc -l)
echo "samples: $(wc -l <"$SAMPLES"), double-runs: $doubles"
[ "$doubles" = 0 ]
