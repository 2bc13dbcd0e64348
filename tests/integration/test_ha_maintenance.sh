#!/bin/bash
# HA planned maintenance hand-off: putting a host into maintenance moves its HA VM away
# by a live migration and its HA container by a clean stop and a start elsewhere; a
# sampler counts, every 100 ms, the QEMU and container processes of each across all
# hosts: the container never has two, and the VM has a second QEMU only while its
# migration runs and only one waiting for the incoming state (-incoming), never two
# that started the guest. Only after that is the host's lease released; its agent then
# dying is no failure (nothing is fenced or failed over); leaving maintenance re-arms
# the lease.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_ha.sh"

VM=hm-vm
CT=hm-ct
SAMPLES=$(mktemp /tmp/kt-hm-samples.XXXXXX)
SAMPLER=""
cleanup() {
	[ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
	api PATCH /api/v1/hosts/h1 '{"maintenance":false}' >/dev/null 2>&1 || true
	lab up --hosts 3 >/dev/null 2>&1 || true
	instances_delete $VM $CT
	rm -f "$SAMPLES"
}
trap cleanup EXIT

# qemu_incoming_count NAME -> QEMUs of NAME started to receive a migration.
qemu_incoming_count() {
	local n=0 f pid
	for f in $(grep -lsFxz -- "$1" /proc/[0-9]*/cmdline 2>/dev/null); do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[[ $(cat "/proc/$pid/comm" 2>/dev/null) == qemu* ]] || continue
		grep -qsFxz -- -incoming "/proc/$pid/cmdline" || continue
		grep -q '^State:.*[ZX]' "/proc/$pid/status" 2>/dev/null || n=$((n + 1))
	done
	echo $n
}
# "MS QEMUS(VM) INITS(CT) INCOMING(VM)" every 100 ms
sampler() {
	while :; do
		echo "$(date +%s%3N) $(qemu_count $VM) $(ct_count $CT) $(qemu_incoming_count $VM)"
		sleep 0.1
	done >>"$SAMPLES"
}

wait_until 60 "3 hosts online" all_online 3

vm_create '{"name":"'$VM'","type":"vm","host":"h1","memory":{"mb":128},
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio"}],"ha":{"enabled":true,"priority":90}}'
api POST /api/v1/instances '{"name":"'$CT'","type":"container","image":"busybox:latest",
	"command":["sleep","3600"],"host":"h1","ha":{"enabled":true,"priority":10}}'
expect_status 202
wait_op "$(jqb .id)" 180
op_ok
[ "$(qemu_count $VM)" = 1 ] && [ "$(ct_count $CT)" = 1 ] || fail "the sampler does not see both workloads"
sampler &
SAMPLER=$!
pass "HA VM and container running on h1"

# ---- into maintenance: hand-off, then the lease released ----
api PATCH /api/v1/hosts/h1 '{"maintenance":true}'
expect_status 200
wait_until 240 "$VM running elsewhere" running_elsewhere $VM h1
wait_until 120 "$CT running elsewhere" running_elsewhere $CT h1
wait_until 60 "h1's lease released (HA state maintenance)" ha_state_is h1 maintenance
lease_released() {
	api GET /api/v1/hosts/h1
	[ "$(jqb .ha.lease.released)" = true ]
}
wait_until 30 "h1's lease record to say released" lease_released
grep -q "lease: released" "$KUMO_LAB_DIR/logs/h1.log" || fail "h1's agent did not release its lease"

# The VM moved live (a migrate operation), the container by a create on its new host.
db=$KUMO_LAB_DIR/controller/kumo.db
mig=$(sqlite3 "$db" "SELECT created_at || ' ' || updated_at FROM operations WHERE kind = 'migrate'
	AND target = 'instances/$VM' AND status = 'succeeded' ORDER BY created_at DESC LIMIT 1")
[ -n "$mig" ] || fail "$VM was not moved by a live migration"
read -r mig_from mig_to <<<"$mig"
[ "$(sqlite3 "$db" "SELECT count(*) FROM operations WHERE kind = 'instance-create' AND
	target = 'instances/$CT' AND json_extract(result, '\$.args.failover.handoff') = 1 AND
	status = 'succeeded'")" -ge 1 ] || fail "$CT was not started elsewhere by the hand-off"
[ "$(sqlite3 "$db" "SELECT count(*) FROM operations WHERE kind = 'ha-handoff' AND
	target = 'ha-handoff/h1/$CT' AND status = 'succeeded'")" = 2 ] ||
	fail "$CT was not stopped, then dropped, on h1"
grep -q "instance $CT: hand-off from h1: stopping it cleanly" "$KUMO_LAB_DIR/logs/controller.log" ||
	fail "$CT was not stopped cleanly first"
[ "$(sqlite3 "$db" "SELECT count(*) FROM ha_fences f JOIN hosts h ON h.id = f.host_id
	WHERE h.name = 'h1'")" = 0 ] || fail "a fence was recorded for h1"

# Never two copies: the container never had two inits; the VM never two QEMUs that
# started the guest, and two processes at all only during its migration.
bad=$(awk '$3 > 1 || $2 - $4 > 1' "$SAMPLES" | head -n 3)
[ -z "$bad" ] || fail "a workload ran twice during the hand-off: $bad"
bad=$(awk -v a="$mig_from" -v b="$mig_to" '$2 > 1 && ($1 < a - 500 || $1 > b + 1500)' "$SAMPLES" | head -n 3)
[ -z "$bad" ] || fail "two QEMUs of $VM outside its migration ($mig_from..$mig_to): $bad"
echo "  ($(wc -l <"$SAMPLES") samples; $(awk '$2 > 1' "$SAMPLES" | wc -l) with the migration's second QEMU)"
pass "maintenance: VM migrated live, container stopped then started elsewhere, never twice; lease released after"

# ---- the agent of a host in maintenance stops: no failure, nothing fenced ----
log_at=$(wc -l <"$KUMO_LAB_DIR/logs/controller.log")
lab fault h1 kill >/dev/null
wait_until 60 "h1 offline" host_is h1 offline
# Long enough for detection, lease period and expiry (5 + 3 + 10 s with margins):
# without the release h1 would be failed, then fenced, within this.
end=$((SECONDS + 25))
while [ $SECONDS -lt $end ]; do
	ha_state_is h1 maintenance || fail "h1 in maintenance became $(jqb .ha.state) when its agent stopped"
	sleep 0.5
done
! tail -n +"$log_at" "$KUMO_LAB_DIR/logs/controller.log" | grep -q "host h1: .* -> failed" ||
	fail "h1 was judged failed"
running_elsewhere $VM h1 && running_elsewhere $CT h1 || fail "the workloads stopped running"
pass "h1 in maintenance, agent dead: HA state stays maintenance, nothing failed over"

# ---- back, out of maintenance: the lease re-armed ----
lab up --hosts 3 >/dev/null
wait_until 60 "h1 online" host_is h1 online
api PATCH /api/v1/hosts/h1 '{"maintenance":false}'
expect_status 200
wait_until 30 "h1's HA state ok" ha_state_is h1 ok
lease_armed() {
	api GET /api/v1/hosts/h1
	[ "$(jqb .ha.lease.released)" = false ] && [ "$(jqb .ha.lease.age_ms)" -lt 3000 ]
}
wait_until 30 "h1's lease renewed again" lease_armed
grep -q "lease: re-armed" "$KUMO_LAB_DIR/logs/h1.log" || fail "h1's agent did not re-arm its lease"
[ "$(qemu_count $VM)" = 1 ] && [ "$(ct_count $CT)" = 1 ] || fail "not exactly one copy of each"
pass "out of maintenance: h1's lease re-armed, one copy of each workload"
