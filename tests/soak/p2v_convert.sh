#!/bin/bash
# tests/soak/p2v_convert.sh - P2V with guest conversion, by hand (minutes under TCG, too
# long for the suite; tests/integration/test_p2v_convert.sh keeps the cheap checks):
# a minimal Debian (tests/soak/build-debian-guest.sh, cached in the build tree) is the
# "physical machine" on a SATA disk; kumo-p2v sends it in one cold pass and cuts over
# with --convert --start; virt-v2v-in-place rewrites it; the VM must come up on a
# virtio-blk disk and virtio NIC and reach its login prompt. Prints the image build,
# transfer, conversion and boot times.
#
#   KUMO_BUILD_DIR=build-test KUMO_TEST_LAB_NAME=... (the tests' lab, up) \
#     tests/soak/p2v_convert.sh
. "$(dirname "$0")/../integration/lib.sh"

P2V=$KUMO_BUILD_DIR/tools/kumo-p2v
W=$KUMO_LAB_DIR/p2v-convert-soak
VM=p2vdeb
cleanup() {
	api DELETE "/api/v1/instances/$VM?force=1" >/dev/null 2>&1 || true
	instance_absent() { api GET "/api/v1/instances/$VM" && [ "$STATUS" = 404 ]; }
	wait_until 120 "$VM deleted" instance_absent || true
	api DELETE "/api/v1/images/p2v-$VM-root" >/dev/null 2>&1 || true
	rm -rf "$W"
}
trap cleanup EXIT
cleanup
mkdir -p "$W"

t0=$SECONDS
"$KUMO_SRC/tests/soak/build-debian-guest.sh" "$KUMO_BUILD_DIR/guest"
build_s=$((SECONDS - t0))
qemu-img convert -O raw "$KUMO_BUILD_DIR/guest/debian-v2v.qcow2" "$W/src.raw"
SIZE=$(stat -c %s "$W/src.raw")

api POST /api/v1/p2v '{"name":"'$VM'","disks":[{"name":"root","size_bytes":'"$SIZE"',"bus":"sata"}],
	"hardware":{"vcpus":1,"memory_mb":1024,"nics":[{"model":"e1000","mac":"52:54:00:7b:00:09"}]}}'
expect_status 201 "create a p2v session"
SID=$(jqb .id) TOKEN=$(jqb .token) OP=$(jqb .operation)

t0=$SECONDS
"$P2V" --url "$KUMO_URL/api/v1/p2v/$SID" --token "$TOKEN" --cacert "$KUMO_CACERT" \
	--disk "$W/src.raw" --json >"$W/pass.json" 2>"$W/pass.log" || fail "the pass failed: $(tail -3 "$W/pass.log")"
pass_s=$((SECONDS - t0))

t0=$SECONDS
"$P2V" --url "$KUMO_URL/api/v1/p2v/$SID" --token "$TOKEN" --cacert "$KUMO_CACERT" \
	--disk "$W/src.raw" --resume --cutover --convert --start --json >"$W/cut.json" 2>"$W/cut.log" ||
	fail "the converting cutover failed: $(tail -3 "$W/cut.log")"
[ "$(jq -r '.cutover.id' "$W/cut.json")" = "$OP" ] || fail "the cutover did not answer the session's operation"
wait_op "$OP" 1800
op_ok
convert_s=$((SECONDS - t0))
api GET "/api/v1/p2v/$SID"
[ "$(jqb .converted)" = true ] || fail "the session does not say converted: $BODY"
wait_op "$(jqb .instance_operation)" 600
op_ok

api GET "/api/v1/instances/$VM"
[ "$(jqb '.disks[0].bus')" = virtio ] || fail "the converted VM's disk is on $(jqb '.disks[0].bus')"
[ "$(jqb '.nics[0].model')" = virtio ] || fail "the converted VM's NIC is $(jqb '.nics[0].model')"
[ "$(jqb '.nics[0].mac')" = 52:54:00:7b:00:09 ] || fail "the converted VM's MAC changed: $(jqb '.nics[0].mac')"
t0=$SECONDS
end=$((SECONDS + 900))
until console_has "$VM" "kumo-v2v login:"; do
	[ $SECONDS -lt $end ] || fail "$VM did not reach its login prompt; its console ends: $(console "$VM" | tail -20)"
	sleep 2
done
boot_s=$((SECONDS - t0))
# Its only disk is virtio-blk (checked above): a login prompt means the root was found
# there. (The kernel's "[vda]" line is early and falls out of the console's 64 KiB.)
pass "Debian converted by virt-v2v boots on virtio: image build ${build_s} s, pass ${pass_s} s, cutover with conversion ${convert_s} s, boot to login ${boot_s} s"
