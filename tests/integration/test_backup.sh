#!/bin/bash
# Backups: a store on the shared pool; a running VM backed up without stopping it; a
# stopped VM backed up from its disk (the second backup adds only the chunks that
# changed); the disk changed, then restored over: its content equals the backup's
# checksum and the guest boots from the restored disk; bad input is refused.
. "$(dirname "$0")/lib.sh"

# A store of this run's own: stores holding backups cannot be deleted, and backups
# cannot be yet.
bs=bs$$

trap 'api DELETE "/api/v1/instances/bk1?force=1" >/dev/null 2>&1 || true' EXIT

# The disk's content as the guest sees it: SHA-256 of its raw image (backing included).
disk_file() {
	api GET /api/v1/instances/bk1
	local host pool
	host=$(jqb .host) pool=$(jqb '.disks[0].pool')
	if [ "$pool" = shared ]; then
		echo "$KUMO_LAB_DIR/shared/disks/bk1/root.qcow2"
	else
		echo "$KUMO_LAB_DIR/hosts/$host/local/disks/bk1/root.qcow2"
	fi
}
disk_sha() {
	local f raw
	f=$(disk_file)
	raw=$(mktemp /tmp/kt-bk-XXXXXX)
	qemu-img convert -U -O raw "$f" "$raw"
	sha256sum "$raw" | cut -d' ' -f1
	rm -f "$raw"
}
backup() { # backup NAME [BODY] -> waits; BODY is the backup's record
	api POST "/api/v1/instances/$1/backups" "${2:-}"
	expect_status 202 "backup of $1"
	wait_op "$(jqb .id)" 300
	op_ok
	local id
	id=$(jqb .result.backup.id)
	[ -n "$id" ] && [ "$id" != null ] || fail "the backup operation's result names no backup id"
	api GET "/api/v1/backups/$id"
	expect_status 200
}

api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"
[ "$(jqb .path)" = "backups/$bs" ] || fail "store path is $(jqb .path), not backups/$bs"
api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 409 "a second store $bs"
api POST /api/v1/backup-stores '{"name":"x'$bs'","path":"../etc"}'
expect_status 400 "a store path leaving the shared pool"
api POST /api/v1/backup-stores '{"name":"y'$bs'"}'
expect_status 201 "a second store"
api GET /api/v1/backup-stores
jqb -e '[.backup_stores[].name] | index("'$bs'") != null' >/dev/null || fail "stores listed: $(jqb '[.backup_stores[].name]')"
# With two stores, a backup must name one.
api POST /api/v1/instances/nosuch/backups
expect_status 404 "backup of an unknown instance"
api DELETE "/api/v1/backup-stores/y$bs"
expect_status 204 "delete of an empty store"
pass "backup stores: create, 409 on a taken name, a path outside the pool refused"

vm_create '{"name":"bk1","type":"vm","memory":{"mb":256},"disks":[{"name":"root","image":"'$TEST_IMAGE'"}]}'
wait_until 150 "first boot" console_has bk1 "KUMO-BOOT count=1"

# 1. Running: the VM is not stopped, and the backup is crash-consistent.
backup bk1 '{"store":"'$bs'"}'
b1=$(jqb .id)
[ "$(jqb .status)" = succeeded ] && [ "$(jqb .restorable)" = true ] || fail "backup 1 is $(jqb .status)"
[ "$(jqb .kind)" = full ] && [ "$(jqb .consistency)" = crash ] || fail "backup 1: kind $(jqb .kind), consistency $(jqb .consistency)"
total=$(jqb .total_bytes) read1=$(jqb .read_bytes) new1=$(jqb .new_bytes) chunks1=$(jqb .chunk_count)
[ "$total" -gt 0 ] && [ "$read1" = "$total" ] && [ "$new1" -gt 0 ] && [ "$chunks1" -gt 0 ] ||
	fail "backup 1 numbers: total $total read $read1 new $new1 chunks $chunks1"
[ "$(jqb '.disks[0].name')" = root ] && [ "$(jqb '.disks[0].virtual_size')" = "$total" ] || fail "backup 1 disks: $(jqb .disks)"
instance_is bk1 running || fail "bk1 is $(jqb .state) after a live backup"
[ -f "$KUMO_LAB_DIR/shared/backups/$bs/backups/$b1.json" ] || fail "no manifest for $b1 in the store"
pass "a running VM backed up without stopping it (crash-consistent, $chunks1 chunks, $new1 bytes stored)"

api POST /api/v1/instances/bk1/actions/stop '{"timeout_s":60}'
wait_op "$(jqb .id)"
op_ok
wait_until 30 "bk1 stopped" instance_is bk1 stopped

# 2. Stopped: from the disk file; the chunks the first backup stored are not stored again.
backup bk1 '{"store":"'$bs'","mode":"full"}'
b2=$(jqb .id) sha2=$(jqb '.disks[0].sha256') new2=$(jqb .new_bytes)
[ "$(jqb .consistency)" = filesystem ] || fail "backup of a stopped VM is $(jqb .consistency)"
[ "$sha2" = "$(disk_sha)" ] || fail "backup 2's checksum $sha2 is not the disk's"
[ "$new2" -lt $((new1 / 2)) ] || fail "backup 2 stored $new2 new bytes; backup 1 stored $new1 (no dedup?)"
pass "a stopped VM backed up: checksum equals the disk's, $new2 new bytes after $new1 (dedup)"

# 3. Change the disk (a boot counts on it), then restore backup 2 over it.
api POST /api/v1/instances/bk1/actions/start
wait_op "$(jqb .id)"
op_ok
wait_until 150 "second boot" console_has bk1 "KUMO-BOOT count=2"
api POST /api/v1/backups/$b2/actions/restore
expect_status 409 "restore over a running VM"
api POST /api/v1/instances/bk1/actions/stop '{"timeout_s":60}'
wait_op "$(jqb .id)"
op_ok
wait_until 30 "bk1 stopped" instance_is bk1 stopped
[ "$(disk_sha)" != "$sha2" ] || fail "the disk did not change after the backup; the restore test would prove nothing"
api POST /api/v1/backups/$b2/actions/restore '{}'
expect_status 202 "restore"
wait_op "$(jqb .id)" 300
op_ok
[ "$(disk_sha)" = "$sha2" ] || fail "the restored disk's checksum is not backup 2's"
boots() { console bk1 | grep -c "KUMO-BOOT count=" || true; }
more_boots() { [ "$(boots)" -gt "$1" ]; }
n0=$(boots)
api POST /api/v1/instances/bk1/actions/start
wait_op "$(jqb .id)"
op_ok
wait_until 150 "boot after the restore" more_boots "$n0"
last=$(console bk1 | grep -o "KUMO-BOOT count=[0-9]*" | tail -1)
[ "$last" = "KUMO-BOOT count=2" ] || fail "after the restore the guest saw '$last': it did not boot from the backup's disk"
pass "restore over the stopped VM: the disk equals the backup's checksum and the guest boots from it"

# 4. Bad input and conflicts.
api POST /api/v1/instances/nosuch/backups
expect_status 404 "backup of an unknown instance"
api POST /api/v1/instances/bk1/backups '{"store":"nosuch"}'
expect_status 404 "backup into an unknown store"
api POST /api/v1/instances/bk1/backups '{"bogus":1}'
expect_status 400 "an unknown field"
api POST /api/v1/backups/nosuch/actions/restore
expect_status 404 "restore of an unknown backup"
api DELETE /api/v1/backup-stores/$bs
expect_status 409 "delete of a store holding backups"
api GET "/api/v1/backups?instance=bk1"
mine=$(jqb -c '[.backups[] | select(.store == "'$bs'") | .id]')
[ "$mine" = "[\"$b2\",\"$b1\"]" ] || fail "bk1's backups in $bs, newest first: $mine, not [$b2,$b1]"
api GET "/api/v1/backups?instance=nosuch"
[ "$(jqb '.backups | length')" = 0 ] || fail "backups of an unknown instance listed"
pass "unknown instance, store or backup 404; unknown field 400; a store with backups 409; list by instance"
