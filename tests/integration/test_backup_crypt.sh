#!/bin/bash
# Encrypted backup stores (issue 14, items 1 and 8), with a container (cheaper than a
# VM): a store made with an operator key; a backup whose chunk files and manifest
# hold none of the container's data or spec in the clear; the key nowhere in the
# controller's database (nor its WAL), the operation or the logs; a restore on another
# host reads back the same files; a wrong key is refused (422 naming encryption_key)
# before anything is read, on restore and on re-attaching the store; one flipped byte
# of a chunk makes verify name the chunk and its GCM tag failure; a stopped VM (no
# boot) backed up and restored on another host with the same bytes.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

REPO=kt-bkx/busybox
IMG=$REPO:latest
bs=bsx$$
KEY=$(openssl rand -hex 32)
WRONG=$(openssl rand -hex 32)
KEY_UPPER=${KEY^^}
cleanup() {
	instances_delete bkx1 bkx2 bkx3 bkx4
	for inst in bkx1 bkx3; do
		api GET "/api/v1/backups?instance=$inst" >/dev/null 2>&1 || true
		for id in $(jqb -r '.backups[].id' 2>/dev/null); do api DELETE "/api/v1/backups/$id" >/dev/null 2>&1 || true; done
	done
	api DELETE "/api/v1/backup-stores/$bs" >/dev/null 2>&1 || true
	oci_untag $IMG
	rm -rf "$OCI_CERTS" "/tmp/kt-xchunk.$$" "/tmp/kt-xdisk.$$"
}
trap cleanup EXIT

db=$KUMO_LAB_DIR/controller/kumo.db
store_dir=$KUMO_LAB_DIR/shared/backups/$bs
# No trace of the key: in clear hex (either case) nor as its 32 raw bytes.
key_absent() { # FILE...
	local f
	for f in "$@"; do
		[ -e "$f" ] || continue
		! grep -qaiF "$KEY" "$f" || fail "the key's hex is in $f"
		# Its raw bytes compared as bytes: in grep -F a newline among them splits the
		# pattern into short pieces that match anywhere, and bash drops a NUL.
		! python3 -c 'import sys; sys.exit(bytes.fromhex(sys.argv[1]) not in open(sys.argv[2], "rb").read())' \
			"$KEY" "$f" || fail "the key's bytes are in $f"
	done
}

# 1. The store: a malformed key is a 400 naming the field; a good one makes it encrypted.
api POST /api/v1/backup-stores '{"name":"'$bs'","encryption_key":"abc123"}'
expect_status 400 "a store with a short key"
[ "$(jqb .field)" = encryption_key ] || fail "the short key's error names $(jqb .field)"
api POST /api/v1/backup-stores '{"name":"'$bs'","encryption_key":"'$KEY_UPPER'"}'
expect_status 201 "encrypted store create"
[ "$(jqb .encrypted)" = true ] || fail "the store is not shown encrypted: $BODY"
jqb -e 'has("encryption_key") or has("key_wrapped") | not' >/dev/null || fail "the store shows its key: $BODY"
mk=$KUMO_LAB_DIR/controller/backup-master.key
[ "$(stat -c %a "$mk")" = 600 ] || fail "the master key $mk is mode $(stat -c %a "$mk" 2>/dev/null)"
pass "an encrypted store: a short key refused (400), the master key made 0600"

# 2. A backup: a marker written many times (zstd alone would keep it readable) and a
# secret in the spec's environment.
oci_build
oci_push busybox-oci $IMG || fail "skopeo push of $IMG failed: $SKOPEO_OUT"
marker=ktmark$RANDOM$RANDOM
secret=ktsecret$RANDOM$RANDOM
ct_create '{"name":"bkx1","type":"container","image":"'$IMG'","command":["sleep","3600"],"env":{"DB_PASSWORD":"'$secret'"},"limits":{"memory_mb":64}}'
wait_until 60 "bkx1 running" instance_is bkx1 running
host=$(ct_field bkx1 .host)
other=h1
[ "$host" = h1 ] && other=h2
ct_exec bkx1 "[\"/bin/sh\",\"-c\",\"for i in \$(seq 2000); do echo $marker; done >/root/data && md5sum </root/data\"]"
sum=$(jqb .output)
api POST /api/v1/instances/bkx1/backups '{"store":"'$bs'"}'
expect_status 202 "backup into the encrypted store"
op=$(jqb .id)
wait_op "$op" 300
op_ok
jqb -e '[.. | strings | ascii_downcase | select(contains("'$KEY'"))] | length == 0' >/dev/null ||
	fail "the backup operation shows the key: $(jqb -c .result)"
b=$(jqb .result.backup.id)
[ -f "$store_dir/encryption.json" ] || fail "the store has no encryption.json"
! grep -rqF "$marker" "$store_dir/chunks" || fail "a chunk file holds the marker in clear"
! grep -qF "$secret" "$store_dir/backups/$b.json" || fail "the manifest holds the spec's secret in clear"
jq -e '.mac and .spec_sealed and (has("spec") | not)' "$store_dir/backups/$b.json" >/dev/null ||
	fail "the manifest is not authenticated and sealed: $(head -c 300 "$store_dir/backups/$b.json")"
sqlite3 -cmd '.timeout 5000' "$db" 'PRAGMA wal_checkpoint(PASSIVE)' >/dev/null 2>&1 || true
compgen -G "$KUMO_LAB_DIR/logs/*.log" >/dev/null || fail "no daemon logs under $KUMO_LAB_DIR/logs to search"
key_absent "$db" "$db-wal" "$db-shm" "$KUMO_LAB_DIR"/logs/*.log
pass "backup $b: no marker in the chunks, no secret in the manifest, no key in the database, WAL or logs"

# 3. Restore: a wrong key refused before anything is read; then restored with the key
# the controller holds, on another host.
api POST "/api/v1/backups/$b/actions/restore" '{"name":"bkx2","host":"'$other'","encryption_key":"'$WRONG'"}'
expect_status 422 "a restore with a wrong key"
[ "$(jqb .field)" = encryption_key ] && grep -q "key check" <<<"$(jqb .error)" ||
	fail "the wrong key's error: $BODY"
api GET /api/v1/instances/bkx2
[ "$STATUS" = 404 ] || fail "a restore with a wrong key made bkx2"
api POST "/api/v1/backups/$b/actions/restore" '{"name":"bkx2","host":"'$other'","encryption_key":"'$KEY'"}'
expect_status 202 "restore to a new container with the right key given"
wait_op "$(jqb .id)" 300
op_ok
wait_until 60 "bkx2 running" instance_is bkx2 running
ct_exec bkx2 '["/bin/sh","-c","md5sum </root/data; echo $DB_PASSWORD"]'
[ "$(jqb .output)" = "$(printf '%s\n%s' "$sum" "$secret")" ] ||
	fail "bkx2 reads '$(jqb .output)', not the backed-up data and env"
key_absent "$db" "$db-wal" "$KUMO_LAB_DIR"/logs/*.log
pass "a wrong key refused (422 encryption_key); restored on $other with the same data and env"

# 4. Verify: intact passes; one flipped byte of a data chunk is named, as a GCM failure.
api POST "/api/v1/backups/$b/actions/verify"
expect_status 202 "verify"
wait_op "$(jqb .id)" 300
op_ok
[ "$(jqb .result.ok)" = true ] || fail "verify of an intact encrypted backup: $(jqb -c .result)"
victim=$(jq -r '.disks[0].chunks[0]' "$store_dir/backups/$b.json")
vfile=$store_dir/chunks/${victim:0:2}/$victim
size=$(stat -c %s "$vfile")
cp -p "$vfile" "/tmp/kt-xchunk.$$"
byte=$(od -An -tu1 -j $((size / 2)) -N1 "$vfile" | tr -d ' ')
printf "\\x$(printf %02x $((byte ^ 1)))" | dd of="$vfile" bs=1 seek=$((size / 2)) conv=notrunc status=none
api POST "/api/v1/backups/$b/actions/verify"
wait_op "$(jqb .id)" 300
op_ok
[ "$(jqb .result.ok)" = false ] || fail "verify missed a flipped byte"
jqb -e '[.result.bad[] | select(.chunk == "'$victim'" and (.error | contains("GCM tag")))] | length > 0' >/dev/null ||
	fail "verify did not name chunk $victim's tag failure: $(jqb -c .result.bad)"
mv "/tmp/kt-xchunk.$$" "$vfile"
pass "verify: one flipped byte of an encrypted chunk named, a GCM tag failure"

# 5. Re-attach: the store forgotten (no backups), then made again at its path: another
# key or none refused, its own key taken.
instances_delete bkx2
for id in $(api GET "/api/v1/backups?instance=bkx1" && jqb -r '.backups[].id'); do
	api DELETE "/api/v1/backups/$id"
done
api DELETE "/api/v1/backup-stores/$bs"
expect_status 204 "store delete"
api POST /api/v1/backup-stores '{"name":"'$bs'","path":"backups/'$bs'","encryption_key":"'$WRONG'"}'
expect_status 422 "re-attach with another key"
[ "$(jqb .field)" = encryption_key ] || fail "re-attach with another key: $BODY"
api POST /api/v1/backup-stores '{"name":"'$bs'","path":"backups/'$bs'"}'
expect_status 422 "re-attach without a key"
api POST /api/v1/backup-stores '{"name":"'$bs'","path":"backups/'$bs'","encryption_key":"'$KEY'"}'
expect_status 201 "re-attach with its key"
pass "re-attaching the store: another key or none refused (422 encryption_key), its own taken"

# 6. A VM's disk: a stopped VM is read where its disk lies (no boot), into the re-attached
# store; restored as a new stopped VM on another host, its disk holds the same bytes.
vm_create '{"name":"bkx3","type":"vm","vcpus":1,"memory":{"mb":128},"disks":[{"name":"root","size_mb":64,"pool":"shared"}],"host":"'$host'","start":false}'
d3=$KUMO_LAB_DIR/shared/disks/bkx3/root.qcow2
{ yes "$marker" || true; } | head -c $((4 << 20)) >"/tmp/kt-xdisk.$$"
truncate -s 64M "/tmp/kt-xdisk.$$"
qemu-img convert -n -f raw -O qcow2 "/tmp/kt-xdisk.$$" "$d3"
api POST /api/v1/instances/bkx3/backups '{"store":"'$bs'"}'
expect_status 202 "backup of the stopped VM bkx3"
wait_op "$(jqb .id)" 300
op_ok
b3=$(jqb .result.backup.id)
! grep -rqF "$marker" "$store_dir/chunks" || fail "a chunk of bkx3's disk holds the marker in clear"
api POST "/api/v1/backups/$b3/actions/restore" '{"name":"bkx4","host":"'$other'","start":false}'
expect_status 202 "restore of bkx3's backup to a new VM"
wait_op "$(jqb .id)" 300
op_ok
qemu-img compare -U -q "$d3" "$KUMO_LAB_DIR/shared/disks/bkx4/root.qcow2" ||
	fail "bkx4's restored disk differs from bkx3's"
pass "a stopped VM's disk through the encrypted store: no marker in the chunks, restored on $other byte for byte"
