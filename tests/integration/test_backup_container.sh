#!/bin/bash
# Container backups: a running container's spec and writable layer into the chunk
# store (paused while the layer is read, running after); restored as a new container
# on another host, whose files are the ones written before the backup (a new file, a
# deleted one, owned by the container's root), while the original goes on.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

REPO=kt-bkc/busybox
IMG=$REPO:latest
bs=bsc$$
cleanup() {
	instances_delete bkc1 bkc2
	api GET "/api/v1/backups?instance=bkc1" >/dev/null 2>&1 || true
	for id in $(jqb -r '.backups[].id' 2>/dev/null); do api DELETE "/api/v1/backups/$id" >/dev/null 2>&1 || true; done
	api DELETE "/api/v1/backup-stores/$bs" >/dev/null 2>&1 || true
	oci_untag $IMG
	rm -rf "$OCI_CERTS"
}
trap cleanup EXIT

oci_build
oci_push busybox-oci $IMG || fail "skopeo push of $IMG failed: $SKOPEO_OUT"
api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"

ct_create '{"name":"bkc1","type":"container","image":"'$IMG'","command":["sleep","3600"],"limits":{"memory_mb":64}}'
wait_until 60 "bkc1 running" instance_is bkc1 running
host=$(ct_field bkc1 .host)
other=h1
[ "$host" = h1 ] && other=h2
nonce=kt-$RANDOM$RANDOM
# /root/sparse: 8 GiB of holes and one byte; it must not cost 8 GiB of the shared pool.
ct_exec bkc1 "[\"/bin/sh\",\"-c\",\"echo $nonce >/root/data && rm /etc/kumo-release && dd if=/dev/zero of=/root/sparse bs=1 count=1 seek=8589934591 2>/dev/null && echo ok\"]"
[ "$(jqb .output)" = ok ] || fail "writing into bkc1 failed: $(jqb .output)"

api POST /api/v1/instances/bkc1/backups '{"store":"'$bs'","mode":"incremental"}'
expect_status 422 "an incremental backup of a container"
api POST /api/v1/instances/bkc1/backups '{"store":"'$bs'"}'
expect_status 202 "backup of the running container"
wait_op "$(jqb .id)" 300
op_ok
b=$(jqb .result.backup.id)
api GET "/api/v1/backups/$b"
[ "$(jqb .status)" = succeeded ] && [ "$(jqb .instance_type)" = container ] && [ "$(jqb .kind)" = full ] ||
	fail "the container's backup: $(jqb -c '{status, instance_type, kind, error}')"
nb=$(jqb .new_bytes)
[ "$(jqb .consistency)" = filesystem ] && [ "$(jqb .new_bytes)" -gt 0 ] && [ "$(jqb '.disks[0].name')" = upper ] ||
	fail "the container's backup: $(jqb -c '{consistency, new_bytes, disks}')"
[ "$nb" -lt $((64 << 20)) ] || fail "an 8 GiB sparse file cost $nb bytes in the store (holes stored as data)"
wait_until 20 "bkc1 running again after the backup" instance_is bkc1 running
pass "a running container backed up (paused while read, running after): $nb bytes"

# Changed after the backup: the restore must not see this.
ct_exec bkc1 '["/bin/sh","-c","echo later >/root/data"]'
api POST "/api/v1/backups/$b/actions/restore" '{"name":"bkc1"}'
expect_status 409 "a container restored over itself"
api POST "/api/v1/backups/$b/actions/restore" '{"name":"bkc2","host":"'$other'"}'
expect_status 202 "restore to a new container"
wait_op "$(jqb .id)" 300
op_ok
wait_until 60 "bkc2 running" instance_is bkc2 running
[ "$(ct_field bkc2 .host)" = "$other" ] || fail "bkc2 runs on $(ct_field bkc2 .host), not $other"
ct_exec bkc2 '["cat","/root/data"]'
[ "$(jqb .output)" = "$nonce" ] || fail "bkc2 reads '$(jqb .output)' from /root/data, not $nonce"
ct_exec bkc2 '["/bin/sh","-c","[ -e /etc/kumo-release ] && echo present || echo gone; ls -ln /root/data | awk \"{print \\$3}\""]'
[ "$(jqb .output)" = "$(printf 'gone\n0')" ] || fail "bkc2: the deleted file / the owner: $(jqb .output)"
ct_exec bkc2 '["/bin/sh","-c","ls -l /root/sparse | awk \"{print \\$5}\"; du -k /root/sparse | cut -f1"]'
set -- $(jqb .output)
[ "${1:-}" = 8589934592 ] && [ "${2:-999999}" -lt 1024 ] ||
	fail "bkc2's sparse file: size ${1:-?}, ${2:-?} KiB allocated (want 8589934592, < 1024)"
ct_exec bkc1 '["cat","/root/data"]'
[ "$(jqb .output)" = later ] || fail "the original changed: $(jqb .output)"
pass "restored as bkc2 on $other: the file written before the backup, the deletion, owned by its root"
