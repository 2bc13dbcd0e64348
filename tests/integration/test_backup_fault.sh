#!/bin/bash
# Backup faults: a running VM's backup cancelled mid-way stops on the agent (QEMU's
# block job, the work files) and is never listed as restorable, with no manifest; the
# agent killed with -9 mid-read: the operation ends failed saying why, no manifest,
# the VM keeps running; the next backup works and its content is the disk's, and its
# success drops the killed backup's bitmap (keeping its own and another store's); an
# incremental whose agent is killed -9 while QEMU copies leaves no QEMU job or target
# node once the new agent adopted the VM. An incremental that fails after QEMU's copy
# job ended (its manifest cannot be written) leaves the parent's bitmap whole: the next
# backup holds every write since the parent, those before the failed backup's point in
# time too. A running VM's incremental that
# cannot be (a parent chunk gone; the disk resized) reads the disk whole instead: full,
# saying why, its content the disk's (its bitmap, which the incremental's transaction
# had added, is dropped before the whole read adds it again).
. "$(dirname "$0")/lib.sh"

bs=bsf$$ bs2=bsf2$$
cleanup() {
	instances_delete bkf1
	api GET "/api/v1/backups?instance=bkf1" >/dev/null 2>&1 || true
	for id in $(jqb -r '.backups[].id' 2>/dev/null); do api DELETE "/api/v1/backups/$id" >/dev/null 2>&1 || true; done
	api DELETE "/api/v1/backup-stores/$bs" >/dev/null 2>&1 || true
	api DELETE "/api/v1/backup-stores/$bs2" >/dev/null 2>&1 || true
}
trap cleanup EXIT
store_dir=$KUMO_LAB_DIR/shared/backups/$bs

disk_sha() {
	local raw
	raw=$(mktemp /tmp/kt-bkf-XXXXXX)
	qemu-img convert -U -O raw "$KUMO_LAB_DIR/shared/disks/bkf1/root.qcow2" "$raw"
	chunk_sum "$raw"
	rm -f "$raw"
}
# under_way OP ID -> backup ID (operation OP) is on its agent: its work directory is
# made, the step just before QEMU is asked to copy the disk (the operation's phase is
# not: progress reaches the controller later than that).
under_way() {
	api GET "/api/v1/operations/$1"
	case "$(jqb .status)" in succeeded | failed | cancelled) fail "operation $1 ended ($(jqb .status)) before the fault: $(jqb .error)" ;; esac
	[ -d "$store_dir/tmp/$2" ]
}
# hold_qemu VM / release_qemu: SIGSTOP VM's QEMU (this lab's), so that a backup started
# next waits on it with its QMP transaction in flight, mid-backup however fast the
# machine chunks (a 1 GiB disk of a test image is chunked in well under a second now:
# waiting for the storing phase raced it). Held for seconds only: the agent's QMP
# timeout is 10 s.
hold_qemu() {
	held_qemu=$(pgrep -f -- "qemu-system[^ ]* -name $1 .*$KUMO_LAB_DIR/")
	[ -n "$held_qemu" ] || fail "no QEMU for $1"
	kill -STOP "$held_qemu"
	trap 'kill -CONT $held_qemu 2>/dev/null; cleanup' EXIT
}
release_qemu() {
	kill -CONT "$held_qemu"
	trap cleanup EXIT
}

# agent_kill_restart HOST: HOST's agent killed -9 and started again; killed_at: when (ms).
agent_kill_restart() {
	local apid
	apid=$(agent_pid "$1")
	killed_at=$(($(date +%s) * 1000))
	kill -9 "$apid"
	wait_until 10 "the agent gone" proc_gone "$apid"
	lab up --hosts 3 >/dev/null
	wait_until 60 "$1's agent back" agent_restarted "$1" "$killed_at"
}

# fleece_clean VM -> VM's QEMU (asked on its second QMP monitor) holds nothing of a
# backup's fleecing: no kfl-* node, no block export, disk0's device on its node d0.
fleece_clean() {
	local host
	api GET "/api/v1/instances/$1"
	host=$(jqb .host)
	left=$(qemu_monitor2 "$KUMO_LAB_DIR/hosts/$host/local/instances/$1/monitor.sock" leftovers)
	[ "$left" = "0 0 d0 0" ]
}

api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"
# A 1 GiB disk, as a user's would be.
vm_create '{"name":"bkf1","type":"vm","memory":{"mb":192},"disks":[{"name":"root","image":"'$TEST_IMAGE'","size_mb":1024,"pool":"shared"}]}'
wait_until 180 "first boot" console_has bkf1 "KUMO-BOOT count=1"
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'"}'
wait_op "$(jqb .id)" 300
op_ok
b0=$(jqb .result.backup.id)

# 1. Cancel, with QEMU's copy in flight.
hold_qemu bkf1
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'","mode":"full"}'
expect_status 202 "backup to cancel"
op=$(jqb .id) bc=$(jqb .result.id)
wait_until 30 "the backup under way" under_way "$op" "$bc"
api POST "/api/v1/operations/$op/actions/cancel"
expect_status 202 "cancel of the backup"
release_qemu
wait_op "$op" 120
[ "$(jqb .status)" = cancelled ] || fail "the cancelled backup ended $(jqb .status): $(jqb .error)"
api GET "/api/v1/backups/$bc"
[ "$(jqb .status)" = failed ] && [ "$(jqb .restorable)" = false ] || fail "the cancelled backup is $(jqb .status), restorable $(jqb .restorable)"
[ ! -e "$store_dir/backups/$bc.json" ] || fail "a manifest for the cancelled backup"
wait_until 30 "its work files removed" test ! -e "$store_dir/tmp/$bc"
instance_is bkf1 running || fail "bkf1 is $(jqb .state) after the cancel"
wait_until 30 "the cancelled backup's fleecing gone from QEMU" fleece_clean bkf1
socks=$(find "$KUMO_LAB_DIR/run" -name '*.sock' 2>/dev/null || true)
[ -z "$socks" ] || fail "the cancelled backup left its NBD socket: $socks"
pass "a backup cancelled mid-way: cancelled, not restorable, no manifest, no work files, nothing of it in QEMU, the VM runs"

# 1b. An incremental cancelled while QEMU's job copies into the target node the agent
# added (kbt-*): 8 MiB written at the disk's end (no file system there), read at
# 1 Mbit/s. QEMU refuses to delete the node while the cancelled job still holds it; the
# job's end must take both: nothing of it (node, job) may stay in QEMU.
api GET /api/v1/instances/bkf1
bkf1_mon="$KUMO_LAB_DIR/hosts/$(jqb .host)/local/instances/bkf1/monitor.sock"
qemu_monitor2 "$bkf1_mon" "qemu-io -d /machine/peripheral/disk0/virtio-backend \"write -P 0x3c $((1016 << 20)) 8M\"" ||
	fail "the write through QEMU failed"
qemu_jobs() { [ "$(qemu_monitor2 "$bkf1_mon" qmp query-jobs | jq length)" -gt 0 ]; }
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'","mode":"incremental","bandwidth_mbps":1}'
expect_status 202 "incremental to cancel"
op=$(jqb .id) bc=$(jqb .result.id)
wait_until 30 "QEMU's job of the incremental running" qemu_jobs
api POST "/api/v1/operations/$op/actions/cancel"
expect_status 202 "cancel of the incremental"
wait_op "$op" 120
[ "$(jqb .status)" = cancelled ] || fail "the cancelled incremental ended $(jqb .status): $(jqb .error)"
wait_until 30 "the cancelled incremental's target node and job gone from QEMU" fleece_clean bkf1
instance_is bkf1 running || fail "bkf1 is $(jqb .state) after the cancelled incremental"
pass "an incremental cancelled mid-way: no target node or job of it left in QEMU, the VM runs"

# 1c. The agent killed -9 while QEMU's job of an incremental copies into the agent's
# target node (8 MiB more at the disk's end, at 1 Mbit/s: over a minute of copying).
# The new agent ends the job it finds at the adoption: nothing of it (job, node) may
# stay in QEMU, well before the copy would have ended by itself.
qemu_monitor2 "$bkf1_mon" "qemu-io -d /machine/peripheral/disk0/virtio-backend \"write -P 0x3d $((1008 << 20)) 8M\"" ||
	fail "the write through QEMU failed"
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'","mode":"incremental","bandwidth_mbps":1}'
expect_status 202 "incremental to interrupt"
op=$(jqb .id) bk=$(jqb .result.id)
wait_until 30 "QEMU's job of the incremental running" qemu_jobs
api GET /api/v1/instances/bkf1
host=$(jqb .host)
agent_kill_restart "$host"
wait_op "$op" 120
[ "$(jqb .status)" = failed ] || fail "the interrupted incremental ended $(jqb .status): $(jqb .error)"
wait_until 30 "the killed agent's incremental job and target node gone from QEMU" fleece_clean bkf1
# The copy (1b's 8 MiB too, both since the parent: 16 MiB at 1 Mbit/s) would take over
# two minutes; ending by itself, the job would go only then (its event): too late.
gone_after=$(($(date +%s) - killed_at / 1000))
[ "$gone_after" -lt 90 ] || fail "the killed agent's incremental job went only ${gone_after}s after the kill: it copied on"
api GET "/api/v1/backups/$bk"
[ "$(jqb .restorable)" = false ] || fail "the interrupted incremental is restorable"
wait_until 30 "bkf1 running under the new agent" instance_is bkf1 running
pass "agent kill -9 during an incremental's copy: failed, its QEMU job and target node ended by the new agent, the VM runs"

# 2. The agent killed -9 mid-backup: mid-read, its point in time taken (its bitmap
# added, the fleecing export up: the read is held to 1 Mbit/s, so it is still reading).
# A backup of bkf1 into a second store first: the chain end there, whose bitmap must
# outlive the bitmaps this store's backups drop.
api POST /api/v1/backup-stores '{"name":"'$bs2'"}'
expect_status 201 "second store create"
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs2'"}'
wait_op "$(jqb .id)" 300
op_ok
bo=$(jqb .result.backup.id)
reading() {
	api GET "/api/v1/operations/$1"
	case "$(jqb .status)" in succeeded | failed | cancelled) fail "operation $1 ended ($(jqb .status)) before the fault: $(jqb .error)" ;; esac
	[ -n "$(find "$KUMO_LAB_DIR/run" -name '*.sock' 2>/dev/null)" ]
}
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'","mode":"full","bandwidth_mbps":1}'
expect_status 202 "backup to interrupt"
op=$(jqb .id) bk=$(jqb .result.id)
api GET /api/v1/instances/bkf1
host=$(jqb .host)
wait_until 60 "the backup reading" reading "$op"
agent_kill_restart "$host"
wait_op "$op" 120
why=$(jqb .error)
[ "$(jqb .status)" = failed ] && grep -q "agent restarted" <<<"$why" || fail "after the agent's kill the backup ended $(jqb .status): $why"
api GET "/api/v1/backups/$bk"
[ "$(jqb .status)" = failed ] && [ "$(jqb .restorable)" = false ] || fail "the interrupted backup is $(jqb .status)"
[ ! -e "$store_dir/backups/$bk.json" ] || fail "a manifest for the interrupted backup"
wait_until 30 "bkf1 running under the new agent" instance_is bkf1 running
# The new agent clears what the killed one's backup left in QEMU when it adopts the VM.
wait_until 30 "the killed agent's fleecing gone from QEMU" fleece_clean bkf1
socks=$(find "$KUMO_LAB_DIR/run" -name '*.sock' 2>/dev/null || true)
[ -z "$socks" ] || fail "the killed agent's NBD socket is still there after the adoption: $socks"
pass "agent kill -9 mid-backup: failed (${why:0:60}...), no manifest, nothing of it left in QEMU, the VM runs"

# 3. The next backup works: paused so the disk holds still for the checksum.
api POST /api/v1/instances/bkf1/actions/pause
wait_op "$(jqb .id)"
op_ok
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'"}'
wait_op "$(jqb .id)" 300
op_ok
bn=$(jqb .result.backup.id)
api GET "/api/v1/backups/$bn"
[ "$(jqb .status)" = succeeded ] || fail "the next backup: $(jqb .status) $(jqb .error)"
[ "$(jqb '.disks[0].sha256')" = "$(disk_sha)" ] || fail "the next backup ($(jqb .kind)) does not hold the disk's content"
kind=$(jqb .kind) reason=$(jqb '.full_reason // empty')
[ "$kind" = full ] || [ "$(jqb .parent)" = "$b0" ] || fail "an incremental next backup built on $(jqb .parent), not $b0"
api GET "/api/v1/backups?instance=bkf1"
[ "$(jqb -c '[.backups[] | select(.restorable) | .id] | sort')" = "$(jq -nc --arg a "$b0" --arg b "$bn" --arg c "$bo" '[$a,$b,$c] | sort')" ] ||
	fail "restorable backups: $(jqb -c '[.backups[] | select(.restorable) | .id]')"
# The killed backup's bitmap is gone with the next backup's success (nothing else would
# drop it: QEMU would track writes in it for ever); the next backup's own and the other
# store's chain end stay, and nothing else of Kumo's.
bitmaps() {
	qemu_monitor2 "$KUMO_LAB_DIR/hosts/$host/local/instances/bkf1/monitor.sock" qmp query-named-block-nodes '{"flat":true}' |
		jq -c '[.[] | select(."node-name" == "d0") | ."dirty-bitmaps"[]?.name] | sort'
}
want=$(jq -nc --arg a "kumo-$bn" --arg b "kumo-$bo" '[$a,$b] | sort')
bitmaps_settled() { [ "$(bitmaps)" = "$want" ]; }
wait_until 30 "bkf1's bitmaps after the next backup to be exactly $want" bitmaps_settled
api POST /api/v1/instances/bkf1/actions/resume
wait_op "$(jqb .id)"
pass "the next backup ($kind${reason:+: $reason}) holds the disk's content; only it, the first and the other store's are restorable; the killed backup's bitmap dropped, the other store's kept"

# 4. An incremental that fails after QEMU's job ended. A write in the guest (a reboot:
# the guest counts boots on its disk, and its journal moves on), then an incremental
# whose manifest cannot be written (a directory, not empty, where its file goes: the
# rename fails after the job copied and the chunks were stored), then another write,
# then the next backup. QEMU's sync "incremental" (bitmap-mode on-success) had cleared
# the parent's bitmap down to the writes after the failed backup's point in time: the
# next incremental missed the first write and was reported good. Now the parent's
# bitmap is never rewritten by QEMU: the next backup is an incremental on the same
# parent holding both writes, or full saying why; either way its content is the disk's.
reboot_to() {
	api POST /api/v1/instances/bkf1/actions/reboot
	wait_op "$(jqb .id)"
	op_ok
	wait_until 150 "boot $1" console_has bkf1 "KUMO-BOOT count=$1"
}
boots=$(console bkf1 | grep -o 'KUMO-BOOT count=[0-9]*' | tail -1 | cut -d= -f2)
reboot_to $((boots + 1))
api POST /api/v1/instances/bkf1/actions/pause
wait_op "$(jqb .id)"
op_ok
hold_qemu bkf1
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'"}'
expect_status 202 "the incremental to fail"
op=$(jqb .id) bf=$(jqb .result.id)
mkdir -p "$store_dir/backups/$bf.json/blocker"
release_qemu
wait_op "$op" 300
why=$(jqb .error)
[ "$(jqb .status)" = failed ] && grep -q "manifest" <<<"$why" || fail "the incremental meant to fail at its manifest ended $(jqb .status): $why"
rm -rf "$store_dir/backups/$bf.json"
api POST /api/v1/instances/bkf1/actions/resume
wait_op "$(jqb .id)"
op_ok
reboot_to $((boots + 2))
api POST /api/v1/instances/bkf1/actions/pause
wait_op "$(jqb .id)"
op_ok
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'"}'
wait_op "$(jqb .id)" 300
op_ok
ba=$(jqb .result.backup.id)
api GET "/api/v1/backups/$ba"
[ "$(jqb .status)" = succeeded ] || fail "the backup after the failed one: $(jqb .status) $(jqb .error)"
kind=$(jqb .kind) reason=$(jqb '.full_reason // empty')
{ [ "$kind" = incremental ] && [ "$(jqb .parent)" = "$bn" ]; } || { [ "$kind" = full ] && [ -n "$reason" ]; } ||
	fail "the backup after the failed one is $kind on $(jqb .parent) ('$reason'): neither an incremental on $bn nor a full saying why"
[ "$(jqb '.disks[0].sha256')" = "$(disk_sha)" ] || fail "the $kind backup after a failed incremental misses writes: its checksum is not the disk's"
api POST /api/v1/instances/bkf1/actions/resume
wait_op "$(jqb .id)"
pass "an incremental failed after QEMU's job (${why:0:60}...); the next backup ($kind${reason:+: $reason}) holds every write since its parent"

# 5. A parent chunk that cannot be read (every chunk file gone: the whole read stores
# them again; the store's older backups are broken from here on). A write first, so
# the incremental touches a chunk and reads its parent chunk back. Kumo's bitmaps have
# one bit per 4 MiB chunk, so its jobs copy every touched chunk whole and read no
# parent chunk: the chain end's bitmap is swapped for one of 64 KiB, as an agent of
# before made them, whose partly touched chunks are laid over their parent's.
mon=$KUMO_LAB_DIR/hosts/$host/local/instances/bkf1/monitor.sock
qemu_monitor2 "$mon" qmp block-dirty-bitmap-remove '{"node":"d0","name":"kumo-'$ba'"}' >/dev/null
qemu_monitor2 "$mon" qmp block-dirty-bitmap-add '{"node":"d0","name":"kumo-'$ba'","persistent":true,"granularity":65536}' >/dev/null
resume_reboot_pause() {
	if instance_is bkf1 paused; then
		api POST /api/v1/instances/bkf1/actions/resume
		wait_op "$(jqb .id)"
		op_ok
	fi
	boots=$((boots + 1))
	reboot_to $boots
	api POST /api/v1/instances/bkf1/actions/pause
	wait_op "$(jqb .id)"
	op_ok
}
boots=$((boots + 2))
resume_reboot_pause
find "$store_dir/chunks" -type f -delete
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'"}'
wait_op "$(jqb .id)" 300
op_ok
bp=$(jqb .result.backup.id)
api GET "/api/v1/backups/$bp"
kind=$(jqb .kind) reason=$(jqb '.full_reason // empty')
[ "$(jqb .status)" = succeeded ] && [ "$kind" = full ] && grep -q "parent backup cannot be read" <<<"$reason" ||
	fail "with its parent's chunks gone the backup is $(jqb .status) $kind ('$reason') $(jqb .error)"
[ "$(jqb '.disks[0].sha256')" = "$(disk_sha)" ] || fail "the full backup after a bad parent chunk does not hold the disk's content"
wait_until 30 "its fleecing gone from QEMU" fleece_clean bkf1
pass "a parent chunk that cannot be read: the running VM's disk read whole ($reason)"

# 6. The disk resized (stopped: the controller grows its file with qemu-img resize;
# QEMU resizes the persistent bitmap with it) since the parent: read whole, saying so.
api POST /api/v1/instances/bkf1/actions/stop
wait_op "$(jqb .id)"
op_ok
wait_until 60 "stopped" instance_is bkf1 stopped
api PATCH /api/v1/instances/bkf1 '{"disks":[{"name":"root","size_mb":1088}]}'
expect_status 202 "the disk's resize"
wait_op "$(jqb .id)"
op_ok
api POST /api/v1/instances/bkf1/actions/start
wait_op "$(jqb .id)"
op_ok
boots=$((boots + 1))
wait_until 150 "boot $boots" console_has bkf1 "KUMO-BOOT count=$boots"
api POST /api/v1/instances/bkf1/actions/pause
wait_op "$(jqb .id)"
op_ok
api POST /api/v1/instances/bkf1/backups '{"store":"'$bs'"}'
wait_op "$(jqb .id)" 300
op_ok
br=$(jqb .result.backup.id)
api GET "/api/v1/backups/$br"
kind=$(jqb .kind) reason=$(jqb '.full_reason // empty')
[ "$(jqb .status)" = succeeded ] && [ "$kind" = full ] && grep -q "changed size" <<<"$reason" ||
	fail "after a resize the backup is $(jqb .status) $kind ('$reason') $(jqb .error)"
[ "$(jqb '.disks[0].sha256')" = "$(disk_sha)" ] || fail "the full backup after a resize does not hold the disk's content"
api POST /api/v1/instances/bkf1/actions/resume
wait_op "$(jqb .id)"
pass "a disk resized since its parent: the running VM's disk read whole ($reason)"
