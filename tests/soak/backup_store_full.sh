#!/bin/bash
# By hand (root, a lab; a booted VM, so not in the suite): a running VM's live full
# backup into a store that fills while the guest writes. Fleecing's copy-before-write
# filter copies every block the guest overwrites into an overlay in the store's work
# directory; on a full store that copy fails. The region the guest overwrites holds
# data first (the filter copies no zeros), and the store is sized for the backup's
# chunks but not for them and the copies too. The filter breaks the backup's view
# (on-cbw-error break-snapshot), never the guest's write: the guest's writes finish, the
# VM stays running, and the backup fails saying its point in time broke. (With
# blockdev-backup sync=none, the filter's break-guest-write and the disk's werror=enospc
# stopped the VM instead.) The store is a 40 MiB tmpfs mounted over a store's directory.
#
#   KUMO_TEST_LAB_NAME=k2 ... KUMO_BUILD_DIR=build-test tests/soak/backup_store_full.sh
. "$(dirname "$0")/../integration/lib.sh"

bs=bsfull$$ vm=bkfull
sdir=
mntns=
cleanup_full() {
	instances_delete "$vm"
	[ -n "$mntns" ] && nsenter --mount="$mntns" umount "$sdir" 2>/dev/null
	return 0
}
trap cleanup_full EXIT
type_in() {
	api POST "/api/v1/instances/$1/console" "$(jq -nc --arg d "$2"$'\r' '{data: $d}')"
	expect_status 204 "typing into $1's console"
}

api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"
sdir=$KUMO_LAB_DIR/shared/$(jqb -r .path)
vm_create '{"name":"'$vm'","type":"vm","memory":{"mb":256},"disks":[{"name":"root","image":"'$TEST_IMAGE'"}]}'
# A small file system under the store (made at its first backup), so this backup
# fills it: mounted in the VM's host's own mount namespace, where its agent sees the
# shared pool (deploy/lab; root: nsenter, mount).
api GET /api/v1/instances/$vm
mntns=$KUMO_LAB_DIR/mntns/$(jqb .host)
mkdir -p "$sdir"
nsenter --mount="$mntns" mount -t tmpfs -o size=40m kumo-bsfull "$sdir"
wait_until 150 "first boot" console_has $vm "KUMO-GUEST-READY"
type_in $vm 'dd if=/dev/urandom of=/dev/vda bs=1M seek=16 count=40 conv=fsync 2>/dev/null; echo KUMO-DD-$((6*6))-DONE'
wait_until 120 "the guest's first writes finished" console_has $vm "KUMO-DD-36-DONE"
# Paced, so the guest's writes land while the read is at the disk's start.
api POST /api/v1/instances/$vm/backups '{"store":"'$bs'","mode":"full","bandwidth_mbps":8}'
expect_status 202 "a paced live full"
op=$(jqb .id)
reading() {
	api GET "/api/v1/operations/$op"
	[[ "$(jqb .phase)" =~ ^"reading disk root: " ]]
}
wait_until 60 "the live full reading" reading
# 40 MiB of the disk's last 48 overwritten by the guest, through its own virtio disk.
type_in $vm 'dd if=/dev/urandom of=/dev/vda bs=1M seek=16 count=40 conv=fsync 2>/dev/null; echo KUMO-DD-$((6*7))-DONE'
wait_until 120 "the guest's writes finished" console_has $vm "KUMO-DD-42-DONE"
wait_op "$op" 300
[ "$(jqb .status)" = failed ] || fail "the backup into a full store ended $(jqb .status), not failed"
err=$(jqb .error)
grep -qE "point in time broke|No space left" <<<"$err" || fail "the backup's error does not say why: $err"
api GET /api/v1/instances/$vm
[ "$(jqb .state)" = running ] || fail "the VM is $(jqb .state) after its store filled"
type_in $vm 'echo KUMO-ALIVE-$((6*7))'
wait_until 30 "the guest answers" console_has $vm "KUMO-ALIVE-42"
pass "a live full into a store that filled while the guest wrote 40 MiB: the guest's writes finished, the VM runs, the backup failed: ${err:0:160}"
