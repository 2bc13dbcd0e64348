#!/bin/bash
# Restore to a new instance: a backup's saved spec makes a new VM (placed like a
# create, here pinned to another host), its disk written from the chunks: the disk's
# checksum is the backup's and the guest boots from it. A taken name 409, an unknown
# backup 404.
. "$(dirname "$0")/lib.sh"

bs=bsr$$
trap 'instances_delete bkr1 bkr2; api DELETE "/api/v1/backup-stores/$bs" >/dev/null 2>&1 || true' EXIT

# disk_sha NAME -> the backup checksum (chunk_sum) of the VM's disk as the guest sees it (backing included).
disk_sha() {
	local f raw host pool
	api GET "/api/v1/instances/$1"
	host=$(jqb .host) pool=$(jqb '.disks[0].pool')
	if [ "$pool" = shared ]; then
		f=$KUMO_LAB_DIR/shared/disks/$1/root.qcow2
	else
		f=$KUMO_LAB_DIR/hosts/$host/local/disks/$1/root.qcow2
	fi
	raw=$(mktemp /tmp/kt-bkr-XXXXXX)
	qemu-img convert -U -O raw "$f" "$raw"
	chunk_sum "$raw"
	rm -f "$raw"
}

api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"
# Stopped: a backup from its disk file, no boot needed to take it.
vm_create '{"name":"bkr1","type":"vm","vcpus":1,"memory":{"mb":192},"disks":[{"name":"root","image":"'$TEST_IMAGE'"}],"start":false}'
api POST /api/v1/instances/bkr1/backups '{"store":"'$bs'"}'
expect_status 202 "backup of bkr1"
wait_op "$(jqb .id)" 300
op_ok
b=$(jqb .result.backup.id)
api GET "/api/v1/backups/$b"
sha=$(jqb '.disks[0].sha256')
[ "$(jqb .status)" = succeeded ] && [ -n "$sha" ] && [ "$sha" != null ] || fail "backup $b: $(jqb .)"
api GET /api/v1/instances/bkr1
other=h1
[ "$(jqb .host)" = h1 ] && other=h2

api POST "/api/v1/backups/$b/actions/restore" '{"name":"bkr2","host":"'$other'","start":false}'
expect_status 202 "restore to a new instance bkr2"
[ "$(jqb .kind)" = instance-create ] || fail "the restore's operation is $(jqb .kind), not the create"
wait_op "$(jqb .id)" 300
op_ok
api GET /api/v1/instances/bkr2
expect_status 200 "the restored instance"
[ "$(jqb .host)" = "$other" ] && [ "$(jqb .state)" = stopped ] || fail "bkr2 is $(jqb .state) on $(jqb .host), not stopped on $other"
[ "$(jqb .vcpus)" = 1 ] && [ "$(jqb ".memory.mb // .memory_mb // .spec.memory.mb")" = 192 ] || fail "bkr2 does not have the backup's shape: $(jqb -c '{vcpus, memory}')"
[ "$(disk_sha bkr2)" = "$sha" ] || fail "bkr2's disk does not match backup $b's checksum"
pass "restore created bkr2 on $other from the backup's spec; its disk equals the backup's checksum"

api POST /api/v1/instances/bkr2/actions/start
wait_op "$(jqb .id)"
op_ok
wait_until 180 "bkr2 boots from the restored disk" console_has bkr2 "KUMO-BOOT count=1"
pass "the restored VM boots"

api POST "/api/v1/backups/$b/actions/restore" '{"name":"bkr2"}'
expect_status 409 "restore under a taken name"
api POST /api/v1/backups/nosuch/actions/restore '{"name":"bkr3"}'
expect_status 404 "restore of an unknown backup"
api POST "/api/v1/backups/$b/actions/restore" '{"name":"bkr3","networks":["no such"]}'
expect_status 400 "a bad network name"
api GET /api/v1/instances/bkr3
expect_status 404 "no instance made by a refused restore"
pass "a taken name 409, an unknown backup 404, bad input 400"

instances_delete bkr1 bkr2
api GET "/api/v1/backups?instance=bkr1"
for id in $(jqb -r '.backups[].id'); do api DELETE "/api/v1/backups/$id"; done
