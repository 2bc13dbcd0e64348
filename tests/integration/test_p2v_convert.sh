#!/bin/bash
# P2V conversion ("convert": true at the cutover) is wired through virt-v2v: cheap
# checks with the busybox test image, which virt-v2v's inspection does not recognise
# as an operating system (a real conversion of a Debian guest, minutes under TCG, is
# tests/soak/p2v_convert.sh):
#   - the cutover is answered at once (202, the session's operation: a conversion
#     outlasts any HTTP timeout) and runs virt-v2v-in-place on the received disk, its
#     steps the operation's phase; its refusal ("No root device found") is the
#     operation's error, word for word, and nothing is left: no VM, no image, no
#     qcow2, no session, no raw file;
#   - a conversion cancelled (DELETE) while virt-v2v runs kills virt-v2v and its
#     appliance, the operation ends cancelled, and nothing is left either;
#   - convert of a two-disk session is refused (400) before anything runs.
. "$(dirname "$0")/lib.sh"

P2V=$KUMO_BUILD_DIR/tools/kumo-p2v
W=$KUMO_LAB_DIR/p2v-convert-test
SHARED=$KUMO_LAB_DIR/shared
MB=$((1 << 20))

cleanup() {
	for id in $(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/p2v" | jq -r '.sessions[].id' 2>/dev/null); do
		api DELETE "/api/v1/p2v/$id" >/dev/null 2>&1 || true
	done
	for n in p2vconv p2vconvc; do
		api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true
		api DELETE "/api/v1/images/p2v-$n-root" >/dev/null 2>&1 || true
	done
	rm -rf "$W"
}
trap cleanup EXIT
cleanup
mkdir -p "$W"

qemu-img convert -O raw "$KUMO_BUILD_DIR/guest/kumo-test.qcow2" "$W/src.raw"
SIZE=$(stat -c %s "$W/src.raw")

# session NAME -> SID, TOKEN, OP
session() {
	api POST /api/v1/p2v '{"name":"'"$1"'","disks":[{"name":"root","size_bytes":'"$SIZE"',"bus":"sata"}]}'
	expect_status 201 "create a p2v session"
	SID=$(jqb .id) TOKEN=$(jqb .token) OP=$(jqb .operation)
}
p2v() { "$P2V" --url "$KUMO_URL/api/v1/p2v/$SID" --token "$TOKEN" --cacert "$KUMO_CACERT" --disk "$W/src.raw" "$@"; }
# left_nothing NAME: no VM, no image (row or file), no session, no received files
left_nothing() {
	api GET "/api/v1/instances/$1"
	[ "$STATUS" = 404 ] || fail "$2 left VM $1: HTTP $STATUS"
	api GET "/api/v1/images/p2v-$1-root"
	[ "$STATUS" = 404 ] || fail "$2 left image p2v-$1-root"
	[ ! -e "$SHARED/images/p2v-$1-root.qcow2" ] || fail "$2 left $SHARED/images/p2v-$1-root.qcow2"
	api GET "/api/v1/p2v/$SID"
	[ "$STATUS" = 404 ] || fail "$2 left the session: HTTP $STATUS $(jqb .state)"
	[ ! -e "$SHARED/p2v/$SID" ] || fail "$2 left the received disk in $SHARED/p2v/$SID"
}
v2v_running() { pgrep -f "virt-v2v-in-place .*$SHARED/images/p2v-$1-root.qcow2" >/dev/null; }

# ---- refused guest: the reason surfaces ----
session p2vconv
t0=$SECONDS
p2v --cutover --convert --json >"$W/run.out" 2>"$W/run.err" || fail "kumo-p2v failed: $(tail -3 "$W/run.err")"
[ "$(jq -r .cutover.id "$W/run.out")" = "$OP" ] || fail "the cutover did not answer the session's operation: $(cat "$W/run.out")"
saw_v2v_step() { api GET "/api/v1/operations/$OP" && { jqb .phase | grep -q "cutover: virt-v2v: " || [ "$(jqb .status)" != running ]; }; }
wait_until 120 "a virt-v2v step as the phase" saw_v2v_step
jqb .phase | grep -q "cutover: virt-v2v: " || fail "no virt-v2v step was shown; the operation is $(jqb .status): $(jqb .error)"
wait_op "$OP" 400
[ "$(jqb .status)" = failed ] || fail "the session's operation is $(jqb .status)"
jqb .error | grep -q "virt-v2v could not convert disk root: .*No root device found" ||
	fail "the operation's error does not say why: $(jqb .error)"
left_nothing p2vconv "a refused conversion"
pass "virt-v2v refused the busybox guest in $((SECONDS - t0)) s: answered 202 at once, virt-v2v steps shown, the operation failed with its reason, nothing left"

# ---- cancelled while converting ----
session p2vconvc
p2v >/dev/null 2>"$W/pass.err" || fail "the pass failed: $(tail -3 "$W/pass.err")"
api POST "/api/v1/p2v/$SID/actions/cutover" '{"convert": true}'
expect_status 202 "a converting cutover"
converting() { api GET "/api/v1/operations/$OP" && jqb .phase | grep -q "virt-v2v" && v2v_running p2vconvc; }
wait_until 120 "virt-v2v running" converting
api DELETE "/api/v1/p2v/$SID"
expect_status 202 "cancel while converting"
wait_op "$OP" 60
[ "$(jqb .status)" = cancelled ] || fail "the cancelled conversion's operation is $(jqb .status): $(jqb .error)"
v2v_gone() { ! v2v_running p2vconvc; }
wait_until 20 "virt-v2v killed" v2v_gone
left_nothing p2vconvc "a cancelled conversion"
pass "a conversion cancelled mid-way: virt-v2v killed, the operation cancelled, nothing left"

# ---- convert needs one disk ----
api POST /api/v1/p2v '{"name":"p2vconv2","disks":[{"name":"a","size_bytes":'$MB'},{"name":"b","size_bytes":'$MB'}]}'
expect_status 201 "a two-disk session"
SID=$(jqb .id)
api POST "/api/v1/p2v/$SID/actions/cutover" '{"convert": true}'
expect_status 400 "convert of two disks"
jqb .error | grep -q "one disk" || fail "the refusal does not say why: $BODY"
api GET "/api/v1/p2v/$SID"
[ "$(jqb .state)" = receiving ] || fail "the refused cutover changed the session to $(jqb .state)"
api DELETE "/api/v1/p2v/$SID"
pass "convert of a two-disk session: 400, the session still receives"
