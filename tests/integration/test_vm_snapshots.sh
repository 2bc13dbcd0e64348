#!/bin/bash
# Checkpoints: a disk snapshot taken, the disk changed, the snapshot reverted -> the
# change is gone; a snapshot with memory reverted on a running VM restores it running.
# Then the same VM backed up: reverts still work (running, stopped, stopped with memory),
# the next backup is full because of the revert, an operator's bitmap refuses a revert.
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

# A VM that was backed up (issue 14): each backup leaves a dirty bitmap kumo-ID on its
# disk, and QEMU reverts no disk with a dirty bitmap ("Device has active dirty
# bitmaps"). Reverts must still work, running (HMP loadvm), stopped (qemu-img snapshot
# -a) and stopped with memory (a start with -loadvm): Kumo's bitmaps go, the guest reads
# the snapshot's bytes, and the next backup is full saying it is because of the revert,
# its content the disk's. An operator's own bitmap refuses the revert, naming it, and
# changes nothing. The last MiB of the disk (no file system uses it) carries a pattern
# per moment: 0x11 at m2, 0x5a after it; 0x33 at d2, 0x44 after it.
t_case=$SECONDS
bs=snb$$
cleanup() {
	api DELETE "/api/v1/instances/sn1?force=1" >/dev/null 2>&1 || true
	instances_delete sn1
	api GET "/api/v1/backups?instance=sn1" >/dev/null 2>&1 || true
	for id in $(jqb -r '.backups[].id' 2>/dev/null); do api DELETE "/api/v1/backups/$id" >/dev/null 2>&1 || true; done
	api DELETE "/api/v1/backup-stores/$bs" >/dev/null 2>&1 || true
}
trap cleanup EXIT
api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"
api GET /api/v1/instances/sn1
sn_host=$(jqb .host)
[ "$(jqb '.disks[0].pool')" = shared ] && disk=$KUMO_LAB_DIR/shared/disks/sn1/root.qcow2 ||
	disk=$KUMO_LAB_DIR/hosts/$sn_host/local/disks/sn1/root.qcow2
[ -f "$disk" ] || fail "no disk file $disk"
off=$(($(qemu-img info -U --output=json "$disk" | jq '."virtual-size"') - (1 << 20)))
qmp2() { qemu_monitor2 "$KUMO_LAB_DIR/hosts/$sn_host/local/instances/sn1/monitor.sock" "$@"; }
dev=/machine/peripheral/disk0/virtio-backend
qwrite() { # PATTERN: written over the last MiB through the running VM's block layer, flushed
	qmp2 "qemu-io -d $dev \"write -P $1 $off 1M\"" "qemu-io -d $dev flush" ||
		fail "the write of $1 through QEMU failed"
}
freads() { # PATTERN: the disk file holds PATTERN over its last MiB ($qread: what qemu-io said)
	qread=$(qemu-io -r -U -f qcow2 -c "read -P $1 $off 1M" "$disk" 2>&1)
}
qreads() { # PATTERN: the same of a running VM's disk, QEMU's qcow2 cache flushed first
	# (HMP's qemu-io prints a read's result on QEMU's stdout, not to the monitor)
	qmp2 "qemu-io -d $dev flush" || fail "the flush through QEMU failed"
	freads "$1"
}
qbitmaps() { qmp2 qmp query-named-block-nodes '{"flat":true}' | jq -r '[.[] | select(."node-name" == "d0") | ."dirty-bitmaps"[]?.name] | sort | join(",")'; }
fbitmaps() { qemu-img info -U --output=json "$disk" | jq -r '[."format-specific".data.bitmaps[]?.name] | sort | join(",")'; }
disk_sha() {
	local raw
	raw=$(mktemp /tmp/kt-sn-XXXXXX)
	qemu-img convert -U -O raw "$disk" "$raw"
	chunk_sum "$raw"
	rm -f "$raw"
}
backup() { # -> BODY the backup's record once it succeeded
	api POST /api/v1/instances/sn1/backups '{"store":"'$bs'"}'
	expect_status 202 "backup of sn1"
	wait_op "$(jqb .id)" 300
	op_ok
	api GET "/api/v1/backups/$(jqb .result.backup.id)"
	expect_status 200
}
revert() { # SNAPSHOT -> BODY the revert's operation, ended
	api POST "/api/v1/instances/sn1/snapshots/$1/actions/revert"
	expect_status 202 "revert to $1"
	wait_op "$(jqb .id)" 300
}
verify_matches() { # SHA: the backup in BODY is the disk (SHA) and verifies whole
	local id
	id=$(jqb .id)
	[ "$(jqb '.disks[0].sha256')" = "$1" ] || fail "backup $id's checksum $(jqb '.disks[0].sha256') is not the disk's $1"
	api POST "/api/v1/backups/$id/actions/verify"
	expect_status 202 "verify $id"
	wait_op "$(jqb .id)" 300
	op_ok
	[ "$(jqb .result.ok)" = true ] || fail "backup $id does not verify: $(jqb -c .result)"
}

# Running: m2 (with memory) at 0x11, a backup (its bitmap on d0), 0x5a, revert m2.
wait_until 30 "sn1 running" instance_is sn1 running
qwrite 0x11
api POST /api/v1/instances/sn1/snapshots '{"name":"m2","with_memory":true}'
expect_status 202
wait_op "$(jqb .id)" 300
op_ok
backup
b1=$(jqb .id)
grep -q "kumo-$b1" <<<"$(qbitmaps)" || fail "backup $b1 left no bitmap kumo-$b1 on d0: '$(qbitmaps)'"
qwrite 0x5a
revert m2
op_ok
wait_until 30 "running after the revert" instance_is sn1 running
qreads 0x11 || fail "after the revert to m2 the guest's disk does not read m2's bytes: $qread"
[ -z "$(qbitmaps)" ] || fail "bitmaps left on d0 after the revert: $(qbitmaps)"
pass "a backed-up running VM reverts to a memory snapshot: the guest reads the snapshot's bytes"

# The next backup (paused: the disk holds still for the checksum) is full, because of
# the revert, and is the disk.
api POST /api/v1/instances/sn1/actions/pause
wait_op "$(jqb .id)"
op_ok
qmp2 "qemu-io -d $dev flush" || fail "the flush through QEMU failed"
backup
b2=$(jqb .id)
[ "$(jqb .kind)" = full ] && grep -q "revert to snapshot m2" <<<"$(jqb .full_reason)" ||
	fail "the backup after the revert is $(jqb .kind), full_reason '$(jqb .full_reason)'"
why=$(jqb .full_reason)
verify_matches "$(disk_sha)"
api POST /api/v1/instances/sn1/actions/resume
wait_op "$(jqb .id)"
op_ok
pass "the backup after the revert is full, its full_reason '$why'; it is the disk and verifies"

# An operator's bitmap on the running VM: the revert is refused naming it; nothing moved.
qwrite 0x5a
qmp2 qmp block-dirty-bitmap-add '{"node":"d0","name":"ops-watch"}' >/dev/null || fail "cannot add the operator's bitmap"
revert m2
[ "$(jqb .status)" = failed ] && grep -q "ops-watch" <<<"$(jqb .error)" ||
	fail "a revert with an operator's bitmap on the disk: $(jqb .status) '$(jqb .error)'"
err_running=$(jqb .error)
instance_is sn1 running || fail "the refused revert left sn1 $(jqb .state)"
qreads 0x5a || fail "the refused revert changed the disk: $qread"
[ "$(qbitmaps)" = "kumo-$b2,ops-watch" ] || fail "the refused revert changed the bitmaps: '$(qbitmaps)'"
qmp2 qmp block-dirty-bitmap-remove '{"node":"d0","name":"ops-watch"}' >/dev/null || fail "cannot remove the operator's bitmap"
pass "an operator's bitmap refuses the running revert ('$err_running'), nothing changed"

# Stopped: d2 (disk only) at 0x33, then 0x44; revert d2 with the bitmap of b2 on the file.
stop
qemu-io -f qcow2 -c "write -P 0x33 $off 1M" "$disk" >/dev/null || fail "cannot write the stopped disk"
api POST /api/v1/instances/sn1/snapshots '{"name":"d2"}'
expect_status 202
wait_op "$(jqb .id)"
op_ok
qemu-io -f qcow2 -c "write -P 0x44 $off 1M" "$disk" >/dev/null || fail "cannot write the stopped disk"
grep -q "kumo-$b2" <<<"$(fbitmaps)" || fail "no bitmap kumo-$b2 on the stopped disk: '$(fbitmaps)'"
revert d2
op_ok
freads 0x33 || fail "after the stopped revert to d2 the disk does not hold d2's bytes: $qread"
[ -z "$(fbitmaps)" ] || fail "bitmaps left on the disk after the revert: $(fbitmaps)"
backup
b3=$(jqb .id)
[ "$(jqb .kind)" = full ] && grep -q "revert to snapshot d2" <<<"$(jqb .full_reason)" ||
	fail "the stopped VM's backup after the revert is $(jqb .kind), full_reason '$(jqb .full_reason)'"
verify_matches "$(disk_sha)"
pass "a backed-up stopped VM reverts (qemu-img): the disk holds the snapshot's bytes; the next backup is full because of the revert, is the disk and verifies"

# An operator's bitmap on the stopped disk: refused naming it, nothing changed.
qemu-img bitmap --add -f qcow2 "$disk" ops-watch || fail "cannot add the operator's bitmap"
sha=$(disk_sha)
revert d2
[ "$(jqb .status)" = failed ] && grep -q "ops-watch" <<<"$(jqb .error)" ||
	fail "a stopped revert with an operator's bitmap: $(jqb .status) '$(jqb .error)'"
[ "$(fbitmaps)" = "kumo-$b3,ops-watch" ] && [ "$(disk_sha)" = "$sha" ] ||
	fail "the refused revert changed the disk or its bitmaps: '$(fbitmaps)'"
qemu-img bitmap --remove -f qcow2 "$disk" ops-watch || fail "cannot remove the operator's bitmap"
pass "an operator's bitmap refuses the stopped revert, nothing changed"

# Stopped, with memory: a start with -loadvm m2, the bitmap of b3 on the file.
revert m2
op_ok
wait_until 30 "running from m2" instance_is sn1 running
qreads 0x11 || fail "after the revert to m2 of the stopped VM the guest's disk does not read m2's bytes: $qread"
[ -z "$(qbitmaps)" ] || fail "bitmaps on d0 after the revert: $(qbitmaps)"
pass "a backed-up stopped VM reverts to a memory snapshot (-loadvm) ($((SECONDS - t_case)) s for the backed-up reverts)"
