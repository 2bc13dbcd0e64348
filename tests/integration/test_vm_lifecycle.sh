#!/bin/bash
# A VM from the lab's test image: placed, boots (marker on its console), gets its
# cloud-init user data, stops by ACPI, keeps a file on its disk across restarts,
# pauses and resumes, survives its agent being killed, is deleted with its disks.
. "$(dirname "$0")/lib.sh"

name=lc1
cleanup() {
	api DELETE "/api/v1/instances/$name?force=1" >/dev/null 2>&1 || true
	api DELETE "/api/v1/instances/lc2?force=1" >/dev/null 2>&1 || true
}
trap cleanup EXIT

vm_create '{"name":"lc1","type":"vm","vcpus":1,"memory":{"mb":256},
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio"}],
	"nics":[{"model":"virtio"}],
	"cloud_init":{"user_data":"#cloud-config\nkumo-marker: hello-from-user-data\n"}}'
host=$(jqb .result.placement.host)
[ -n "$host" ] && [ "$host" != null ] || fail "create result has no placement host"
api GET /api/v1/instances/lc1
[ "$(jqb .host)" = "$host" ] || fail "instance host $(jqb .host) differs from placement $host"
[ "$(jqb .accel)" = tcg ] || fail "accel should be tcg on hosts where KVM does not run guests"
wait_until 150 "lc1 console shows the boot marker" console_has lc1 KUMO-GUEST-READY
console lc1 | grep -q "KUMO-BOOT count=1" || fail "first boot count is not 1: $(console lc1 | grep KUMO-BOOT)"
console lc1 | grep -q "hello-from-user-data" || fail "cloud-init user data did not reach the guest"
api GET /api/v1/instances/lc1
[ "$(jqb .state)" = running ] || fail "lc1 is $(jqb .state), not running"
[ "$(jqb '.disks[0].virtual_size')" -gt 0 ] || fail "disk virtual size not reported"
[ "$(jqb '.disks[0].allocated')" -gt 0 ] || fail "disk allocated size not reported"
[ "$(jqb '.operations | length')" -ge 1 ] || fail "no operation history"
pid=$(jqb .pid)
pass "VM placed on $host, booted under TCG, printed its marker and its user data"
# Least privilege: QEMU runs as a uid of its own (from the host's range, uid.c) once it
# opened its files.
api GET "/api/v1/hosts/$host"
base=$(jqb .facts.qemu_uid_base)
[ "${base:-0}" -gt 0 ] || fail "host $host reports qemu_uid_base $base"
read -r quid e s f < <(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
[ "$quid" -ge "$base" ] && [ "$quid" = "$e" ] && [ "$quid" = "$s" ] && [ "$quid" = "$f" ] ||
	fail "QEMU (pid $pid) runs with uids $quid $e $s $f, not one uid from $base"
grep -qE '^CapEff:[[:space:]]+0+$' "/proc/$pid/status" || fail "QEMU kept capabilities: $(grep CapEff "/proc/$pid/status")"
pass "QEMU runs as uid $quid (its own) with no capabilities"

# Stop: ACPI power button, the guest powers itself off.
api POST /api/v1/instances/lc1/actions/stop '{"timeout_s":60}'
expect_status 202
wait_op "$(jqb .id)"
op_ok
wait_until 30 "lc1 stopped" instance_is lc1 stopped
console lc1 | grep -q KUMO-POWEROFF || fail "the guest did not see the ACPI power button"
kill -0 "$pid" 2>/dev/null && fail "qemu (pid $pid) still runs after stop"
pass "stop shut the guest down through ACPI"

api POST /api/v1/instances/lc1/actions/start
expect_status 202
wait_op "$(jqb .id)"
op_ok
wait_until 150 "second boot" console_has lc1 "KUMO-BOOT count=2"
pass "a file written on the disk survived the restart (boot count 2)"

api POST /api/v1/instances/lc1/actions/pause
wait_op "$(jqb .id)"
op_ok
wait_until 20 "lc1 paused" instance_is lc1 paused
api POST /api/v1/instances/lc1/actions/pause
expect_status 409
api POST /api/v1/instances/lc1/actions/resume
wait_op "$(jqb .id)"
op_ok
wait_until 20 "lc1 running" instance_is lc1 running
pass "pause and resume; pausing a paused VM is 409"

# The agent dies; the VM does not. A restarted agent re-adopts it.
api GET /api/v1/instances/lc1
pid=$(jqb .pid)
apid=$(agent_pid "$host")
killed_at=$(date +%s%3N)
kill -9 "$apid"
wait_until 10 "the agent of $host gone" proc_gone "$apid"
kill -0 "$pid" || fail "the VM died with its agent"
lab up --hosts 3 >/dev/null
wait_until 60 "$host's agent back" agent_restarted "$host" "$killed_at"
wait_until 30 "lc1 running after re-adoption" instance_is lc1 running
api GET /api/v1/instances/lc1
[ "$(jqb .pid)" = "$pid" ] || fail "after the agent restart the VM has pid $(jqb .pid), not $pid"
pass "VM kept running through an agent kill -9 and was re-adopted (same pid)"

# A guest that powers itself off while its agent is away: QEMU (-no-shutdown) stays,
# paused, for the agent to come back and see a clean shutdown, not a crash. The guest
# powers off 25 s (guest time) after its user data ran, which is before it is ready.
vm_create '{"name":"lc2","type":"vm","vcpus":1,"memory":{"mb":256},"host":"'"$host"'",
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio"}],
	"cloud_init":{"user_data":"#!/bin/sh\n(sleep 25; echo KUMO-SELF-$((0))OFF >/dev/console; sync; poweroff -f) </dev/null >/dev/null 2>&1 &\n"}}'
wait_until 150 "lc2 console shows the boot marker" console_has lc2 KUMO-GUEST-READY
api GET /api/v1/instances/lc2
pid2=$(jqb .pid)
console lc2 | grep -q KUMO-SELF-0OFF && fail "lc2 powered off before its agent could be stopped"
apid=$(agent_pid "$host")
killed_at=$(date +%s%3N)
kill -9 "$apid"
log2="$KUMO_LAB_DIR/hosts/$host/local/instances/lc2/console.log"
wait_until 120 "lc2 powered itself off (agent away)" grep -q KUMO-SELF-0OFF "$log2"
# QEMU (-no-shutdown) must stay for the agent: had it exited, the agent would find
# its pid file without it and report a crash, which the checks below refuse.
kill -0 "$pid2" || fail "QEMU of lc2 exited on the guest's power-off; it should wait for the agent"
lab up --hosts 3 >/dev/null
wait_until 60 "$host's agent back" agent_restarted "$host" "$killed_at"
wait_until 30 "lc2 stopped after re-adoption" instance_is lc2 stopped
[ "$(jqb .error)" = null ] || [ -z "$(jqb '.error // empty')" ] || fail "lc2 shows an error: $(jqb .error)"
wait_until 10 "QEMU of lc2 gone" eval "! kill -0 $pid2 2>/dev/null"
api DELETE "/api/v1/instances/lc2?force=1"
wait_op "$(jqb .id)"
pass "a guest that powered off while its agent was away shows as stopped, not crashed"
kill -9 "$pid"
wait_until 30 "lc1 crashed" instance_is lc1 crashed
pass "a VM killed outside Kumo shows as crashed"

api POST /api/v1/instances/lc1/actions/start
wait_op "$(jqb .id)"
op_ok
api DELETE /api/v1/instances/lc1
expect_status 409
api DELETE "/api/v1/instances/lc1?force=1"
expect_status 202
wait_op "$(jqb .id)"
op_ok
api GET /api/v1/instances/lc1
expect_status 404
ls "$KUMO_LAB_DIR"/shared/disks/lc1 2>/dev/null | grep -q . && fail "disks of a deleted VM are left behind"
pass "delete of a running VM is 409 without force; with force the VM and its disks are gone"
trap - EXIT
