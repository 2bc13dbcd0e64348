#!/bin/bash
# Images are verified where they are used. Root on one host can write the shared pool:
# it replaces an image with a qcow2 whose backing file is another host's link.json,
# or with other bytes, or points a VM's disk at that file. Each time the agent refuses
# to start the VM (or to make a disk from the image) naming the problem, and QEMU never
# runs; with the image restored the VM starts.
. "$(dirname "$0")/lib.sh"

tmp=$(mktemp -d)
VMS="iv1 iv2 iv3"
cleanup() {
	local v id
	for v in $VMS; do
		api DELETE "/api/v1/instances/$v?force=1" >/dev/null 2>&1 || continue
		[ "$STATUS" = 202 ] || continue
		id=$(jqb .id 2>/dev/null) || continue
		api GET "/api/v1/operations/$id?wait=30" >/dev/null 2>&1 || true
	done
	api DELETE /api/v1/images/iv-img >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT

upload() { # upload FILE NAME -> waits for the import; BODY is the operation
	STATUS=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -o "$tmp/resp" -w '%{http_code}' \
		-H 'Content-Type: application/octet-stream' -T "$1" -X POST "$KUMO_URL/api/v1/images?name=$2&format=qcow2")
	BODY=$(cat "$tmp/resp")
	[ "$STATUS" = 202 ] || fail "upload of $2: HTTP $STATUS"
	wait_op "$(jqb .id)"
	op_ok
}
# start_refused VM TEXT: the start operation fails, its error holds TEXT, no QEMU ran.
start_refused() {
	api POST "/api/v1/instances/$1/actions/start"
	expect_status 202 "start $1"
	wait_op "$(jqb .id)" 120
	[ "$(jqb .status)" = failed ] || fail "$1 started from a tampered image: $BODY"
	grep -qF -- "$2" <<<"$(jqb .error)" || fail "the refusal of $1 does not say '$2': $(jqb .error)"
	qemu_of "$1" && fail "QEMU runs for $1: $(qemu_of "$1")"
	[ ! -e "$KUMO_LAB_DIR/hosts/$host/local/instances/$1/qemu.pid" ] || fail "$1 has a qemu.pid: QEMU was run"
	return 0
}
# qemu_of VM: a QEMU process whose command line names VM's run directory.
qemu_of() { grep -l "[i]nstances/$1/" /proc/[0-9]*/cmdline 2>/dev/null | grep -q . ; }

# A small self-contained image, imported; its original bytes kept aside.
qemu-img create -q -f qcow2 "$tmp/img.qcow2" 32M
qemu-io -c 'write -P 0x5a 0 1M' "$tmp/img.qcow2" >/dev/null
upload "$tmp/img.qcow2" iv-img
api GET /api/v1/images/iv-img
sum=$(jqb .sha256)
ipath=$KUMO_LAB_DIR/shared/images/iv-img.qcow2
cp "$ipath" "$tmp/orig.qcow2"

vm_create '{"name":"iv1","type":"vm","vcpus":1,"memory":{"mb":64},"start":false,
	"disks":[{"name":"root","image":"iv-img"}]}'
api GET /api/v1/instances/iv1
host=$(jqb .host)
other=h1
[ "$host" != h1 ] || other=h2
secret=$KUMO_LAB_DIR/hosts/$other/state/link.json
[ -r "$secret" ] || fail "no link.json on $other to aim at"
spec=$KUMO_LAB_DIR/hosts/$host/local/instances/iv1/spec.json
[ "$(jq -r '.disks[0].image.sha256' "$spec")" = "$sum" ] || fail "the spec sent to $host lacks the image's SHA-256: $(jq -c '.disks[0].image' "$spec")"
pass "iv1 made from image iv-img on $host; its spec carries the image's SHA-256"

# 1. The image becomes a qcow2 over another host's link.json.
qemu-img create -q -f qcow2 -b "$secret" -F raw "$tmp/evil.qcow2" 32M
cp "$tmp/evil.qcow2" "$ipath"
start_refused iv1 "backing file"
pass "an image whose backing file is $other's link.json: start refused, QEMU never ran"

# 2. Another self-contained image under the same name: the SHA-256 differs.
qemu-img create -q -f qcow2 "$tmp/other.qcow2" 32M
qemu-io -c 'write -P 0x33 0 1M' "$tmp/other.qcow2" >/dev/null
cp "$tmp/other.qcow2" "$ipath"
start_refused iv1 "SHA-256"
api POST /api/v1/instances '{"name":"iv2","type":"vm","vcpus":1,"memory":{"mb":64},"start":false,"disks":[{"name":"root","image":"iv-img"}]}'
expect_status 202 "create iv2"
wait_op "$(jqb .id)" 120
[ "$(jqb .status)" = failed ] && grep -qF "SHA-256" <<<"$(jqb .error)" ||
	fail "a disk was made from a changed image: $BODY"
pass "an image with other bytes: start and create refused naming the SHA-256"

# 3. The image restored, but the VM's own disk now backed by link.json.
cp "$tmp/orig.qcow2" "$ipath"
disk=$KUMO_LAB_DIR/shared/disks/iv1/root.qcow2
cp "$disk" "$tmp/disk.qcow2"
qemu-img rebase -u -f qcow2 -b "$secret" -F raw "$disk"
start_refused iv1 "not its image"
# 4. A disk keeping its data in an external file (made here: qemu-img would write it).
qemu-img create -q -f qcow2 -o data_file="$tmp/data.raw" "$tmp/datafile.qcow2" 32M
cp "$tmp/datafile.qcow2" "$disk"
start_refused iv1 "external file"
pass "a disk backed by link.json or keeping its data in it: start refused"

# Restored: the same checks pass and QEMU runs.
cp "$tmp/disk.qcow2" "$disk"
api POST /api/v1/instances/iv1/actions/start
expect_status 202
wait_op "$(jqb .id)" 120
op_ok
wait_until 30 "iv1 running" instance_is iv1 running
pass "with the image and disk restored iv1 starts"

# 5. A live migration's target checks them too (beside its other preparation,
# agentd/migrate.c): the image changed, the migration fails in prepare-target naming
# the SHA-256, and iv1 runs on where it was, nothing of it left on the target.
cp "$tmp/other.qcow2" "$ipath"
api POST /api/v1/instances/iv1/actions/migrate '{"host":"'$other'"}'
expect_status 202 "migrate iv1 to $other"
wait_op "$(jqb .id)" 120
[ "$(jqb .status)" = failed ] && grep -qF "SHA-256" <<<"$(jqb .error)" ||
	fail "iv1 migrated to $other over a changed image: $(jqb -c '{status, error}')"
cp "$tmp/orig.qcow2" "$ipath"
api GET /api/v1/instances/iv1
[ "$(jqb .host)" = "$host" ] && [ "$(jqb .state)" = running ] ||
	fail "after the refused migration iv1 is $(jqb .state) on $(jqb .host), not running on $host"
[ ! -e "$KUMO_LAB_DIR/hosts/$other/local/instances/iv1" ] ||
	fail "the refused migration left iv1's run directory on $other"
pass "a migration to $other over a changed image: refused by the target naming the SHA-256, iv1 runs on $host"

# The controller's record is signed with a key only it holds: a record changed behind
# its back (here its database edited) is refused, not sent to a host as the truth.
key=$KUMO_LAB_DIR/controller/image.key
[ "$(stat -c '%a %s' "$key")" = "600 32" ] || fail "the image key is not a 32-byte 0600 file: $(stat -c '%a %s' "$key")"
db=$KUMO_LAB_DIR/controller/kumo.db
forged=$(sha256sum "$tmp/other.qcow2" | cut -d' ' -f1)
sqlite3 "$db" "PRAGMA busy_timeout = 5000; UPDATE images SET sha256 = '$forged' WHERE name = 'iv-img';" >/dev/null
api POST /api/v1/instances '{"name":"iv3","type":"vm","vcpus":1,"memory":{"mb":64},"start":false,"disks":[{"name":"root","image":"iv-img"}]}'
expect_status 409 "a VM from an image whose record was forged"
grep -q signature <<<"$(jqb .error)" || fail "the refusal does not name the signature: $BODY"
sqlite3 "$db" "PRAGMA busy_timeout = 5000; UPDATE images SET sha256 = '$sum' WHERE name = 'iv-img';" >/dev/null
pass "an image record forged in the database (the SHA-256 of other bytes): 409 naming its signature"
