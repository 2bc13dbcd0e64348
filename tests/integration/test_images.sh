#!/bin/bash
# VM images: streamed upload, qcow2 kept and other formats converted, size and
# SHA-256 listed, unsafe images refused, deletion refused while a disk uses one.
. "$(dirname "$0")/lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf $tmp; for i in t-qcow t-vmdk t-raw t-used; do api DELETE /api/v1/images/$i >/dev/null 2>&1 || true; done; api DELETE "/api/v1/instances/img-user?force=1" >/dev/null 2>&1 || true' EXIT
upload() { # upload FILE NAME FORMAT -> waits for the import; BODY is the operation
	STATUS=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o $tmp/resp -w '%{http_code}' \
		-H 'Content-Type: application/octet-stream' -T "$1" -X POST "$KUMO_URL/api/v1/images?name=$2&format=$3")
	BODY=$(cat $tmp/resp)
	[ "$STATUS" = 202 ] || return 0
	wait_op "$(jqb .id)"
}

qemu-img create -q -f qcow2 $tmp/a.qcow2 48M
qemu-io -c 'write -P 0x5a 0 1M' $tmp/a.qcow2 >/dev/null
upload $tmp/a.qcow2 t-qcow qcow2
op_ok
api GET /api/v1/images/t-qcow
[ "$(jqb .format)" = qcow2 ] && [ "$(jqb .virtual_size)" = $((48 << 20)) ] || fail "qcow2 image listed wrong: $BODY"
sum=$(sha256sum "$KUMO_LAB_DIR/shared/images/t-qcow.qcow2" | cut -d' ' -f1)
[ "$(jqb .sha256)" = "$sum" ] || fail "listed SHA-256 does not match the stored file"
[ "$(jqb .file_size)" = "$(stat -c %s "$KUMO_LAB_DIR/shared/images/t-qcow.qcow2")" ] || fail "file size wrong"
pass "qcow2 upload stored with its virtual size, file size and SHA-256"

qemu-img create -q -f vmdk $tmp/b.vmdk 20M
upload $tmp/b.vmdk t-vmdk vmdk
op_ok
api GET /api/v1/images/t-vmdk
[ "$(jqb .format)" = qcow2 ] && [ "$(jqb .source_format)" = vmdk ] || fail "vmdk not converted: $BODY"
qemu-img info "$KUMO_LAB_DIR/shared/images/t-vmdk.qcow2" | grep -q "file format: qcow2" || fail "stored vmdk is not qcow2"
head -c 4M /dev/urandom >$tmp/c.raw
upload $tmp/c.raw t-raw raw
op_ok
qemu-img compare -f raw -F qcow2 $tmp/c.raw "$KUMO_LAB_DIR/shared/images/t-raw.qcow2" >/dev/null || fail "converted raw image differs from the upload"
pass "vmdk and raw uploads are converted to qcow2 with the same content"

qemu-img create -q -f qcow2 -b /etc/hostname -F raw $tmp/evil.qcow2
upload $tmp/evil.qcow2 t-evil qcow2
[ "$(jqb .status)" = failed ] && jqb .error | grep -q "backing file" || fail "image with a backing file was not refused: $BODY"
api GET /api/v1/images/t-evil
expect_status 404
# A small upload whose conversion could write more than the pool holds: a VMDK
# declaring 10 GiB more than the shared pool's free space (all holes: a few MB sent).
free_gib=$(($(stat -f -c '%a * %S' "$KUMO_LAB_DIR/shared") / (1 << 30)))
qemu-img create -q -f vmdk -o subformat=streamOptimized $tmp/huge.vmdk "$((free_gib + 10))G"
upload $tmp/huge.vmdk t-huge vmdk
[ "$(jqb .status)" = failed ] && jqb .error | grep -q "free space" ||
	fail "a VMDK larger than the pool's free space was converted: $BODY"
rm -f $tmp/huge.vmdk
upload $tmp/c.raw t-lie qcow2
[ "$(jqb .status)" = failed ] || fail "raw data declared qcow2 was accepted"
upload $tmp/a.qcow2 t-qcow qcow2
expect_status 409
upload $tmp/a.qcow2 'bad/name' qcow2
expect_status 400
upload $tmp/a.qcow2 t-x iso
expect_status 400
: >$tmp/empty
upload $tmp/empty t-empty qcow2
expect_status 400
ls -a "$KUMO_LAB_DIR/shared/images" | grep -q '^\.upload' && fail "refused uploads left files behind"
pass "backing files, a conversion larger than the pool, mislabelled formats, duplicates, bad names and empty bodies are refused; nothing left behind"

upload $tmp/a.qcow2 t-used qcow2
op_ok
vm_create '{"name":"img-user","type":"vm","memory":{"mb":64},"start":false,"disks":[{"name":"root","image":"t-used"}]}'
api DELETE /api/v1/images/t-used
expect_status 409
api DELETE "/api/v1/instances/img-user?force=1"
wait_op "$(jqb .id)"
op_ok
api DELETE /api/v1/images/t-used
expect_status 204
[ -e "$KUMO_LAB_DIR/shared/images/t-used.qcow2" ] && fail "deleted image file is still there"
pass "an image in use cannot be deleted; unused, it is removed with its file"
