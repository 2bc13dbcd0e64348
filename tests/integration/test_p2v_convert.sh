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
#   - a two-disk session converts (virt-v2v-in-place -i libvirtxml, a domain holding
#     both disks), and a controller kill -9 while its appliance runs leaves no
#     process behind: the restarted controller kills the old virt-v2v tree (found by
#     the mark in its environment, whoever its parent is now) and converts again from
#     the received disks; the second run's refusal ends the operation, nothing left
#     (no process, no images, no session, no scratch files, not even libguestfs's
#     socket directory in /tmp).
. "$(dirname "$0")/lib.sh"

P2V=$KUMO_BUILD_DIR/tools/kumo-p2v
W=$KUMO_LAB_DIR/p2v-convert-test
SHARED=$KUMO_LAB_DIR/shared
MB=$((1 << 20))

cleanup() {
	for id in $(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/p2v" | jq -r '.sessions[].id' 2>/dev/null); do
		api DELETE "/api/v1/p2v/$id" >/dev/null 2>&1 || true
	done
	for n in p2vconv p2vconvc p2vconvr; do
		api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true
		api DELETE "/api/v1/images/p2v-$n-root" >/dev/null 2>&1 || true
	done
	api DELETE "/api/v1/images/p2v-p2vconvr-data" >/dev/null 2>&1 || true
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
# left_nothing NAME WHAT [DISK...]: no VM, no image of each disk (row or file; root if
# none named), no session, no received files, no virt-v2v scratch files
left_nothing() {
	local name=$1 what=$2 disk
	shift 2
	api GET "/api/v1/instances/$name"
	[ "$STATUS" = 404 ] || fail "$what left VM $name: HTTP $STATUS"
	for disk in "${@:-root}"; do
		api GET "/api/v1/images/p2v-$name-$disk"
		[ "$STATUS" = 404 ] || fail "$what left image p2v-$name-$disk"
		[ ! -e "$SHARED/images/p2v-$name-$disk.qcow2" ] || fail "$what left $SHARED/images/p2v-$name-$disk.qcow2"
	done
	[ ! -e "$KUMO_LAB_DIR/controller/v2v/$SID" ] || fail "$what left virt-v2v's scratch files in $KUMO_LAB_DIR/controller/v2v/$SID"
	api GET "/api/v1/p2v/$SID"
	[ "$STATUS" = 404 ] || fail "$what left the session: HTTP $STATUS $(jqb .state)"
	[ ! -e "$SHARED/p2v/$SID" ] || fail "$what left the received disk in $SHARED/p2v/$SID"
}
# Every process of a run carries KUMO_P2V_CONVERT=<session> in its environment.
marked() { grep -l -a -s "KUMO_P2V_CONVERT=$SID" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true; }
marked_comm() { local p; for p in $(marked); do cat "/proc/$p/comm" 2>/dev/null; done; }
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
v2v_gone() { ! v2v_running p2vconvc && [ -z "$(marked)" ]; }
wait_until 20 "virt-v2v and all its processes killed" v2v_gone
left_nothing p2vconvc "a cancelled conversion"
pass "a conversion cancelled mid-way: virt-v2v killed, the operation cancelled, nothing left"

# ---- two disks; the controller killed (-9) while virt-v2v's appliance runs ----
head -c $((4 * MB)) /dev/urandom >"$W/data.raw"
api POST /api/v1/p2v '{"name":"p2vconvr","disks":[{"name":"root","size_bytes":'"$SIZE"',"bus":"sata"},{"name":"data","size_bytes":'$((4 * MB))',"bus":"sata"}]}'
expect_status 201 "a two-disk session"
SID=$(jqb .id) TOKEN=$(jqb .token) OP=$(jqb .operation)
"$P2V" --url "$KUMO_URL/api/v1/p2v/$SID" --token "$TOKEN" --cacert "$KUMO_CACERT" \
	--disk "root=$W/src.raw" --disk "data=$W/data.raw" >/dev/null 2>"$W/pass.err" ||
	fail "the pass failed: $(tail -3 "$W/pass.err")"
api POST "/api/v1/p2v/$SID/actions/cutover" '{"convert": true}'
expect_status 202 "a converting cutover of two disks"
# The appliance (QEMU) is the last of the tree to start: kill once it runs. It is the
# QEMU whose command line names libguestfs's socket directory (/tmp/libguestfsXXXXXX,
# as root whatever TMPDIR says), not one of the short QEMU probes libguestfs runs first.
appliance_sockdir() {
	local p
	for p in $(marked); do
		{ grep -q '^qemu-system' "/proc/$p/comm" 2>/dev/null &&
			tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -o '/tmp/libguestfs[A-Za-z0-9]\{6\}' | head -1; } || true
	done | head -1
}
appliance_up() { [ -n "$(appliance_sockdir)" ]; }
wait_until 180 "virt-v2v's appliance running" appliance_up
pgrep -f "virt-v2v-in-place -i libvirtxml .*/v2v/$SID/domain.xml" >/dev/null ||
	fail "the two-disk conversion is not virt-v2v-in-place -i libvirtxml: $(marked_comm | tr '\n' ' ')"
[ "$(grep -c "<source file='$SHARED/images/p2v-p2vconvr-\(root\|data\)\.qcow2'/>" "$KUMO_LAB_DIR/controller/v2v/$SID/domain.xml")" = 2 ] ||
	fail "the domain virt-v2v reads does not hold both disks: $(cat "$KUMO_LAB_DIR/controller/v2v/$SID/domain.xml")"
# virt-v2v is held (SIGSTOP) so the refusal cannot end the run before the kill,
# however fast the machine; its appliance runs on.
for p in $(pgrep -f "virt-v2v-in-place -i libvirtxml .*/v2v/$SID/domain.xml"); do kill -STOP "$p"; done
old=$(marked | tr '\n' ' ')
sockdir=$(appliance_sockdir)
[ -n "$sockdir" ] && [ -d "$sockdir" ] || fail "no libguestfs socket directory ($sockdir) on the appliance's command line"
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 20 "the controller gone" proc_gone "$cpid"
alive=0
for p in $old; do proc_gone "$p" || alive=$((alive + 1)); done
[ "$alive" -gt 0 ] || fail "the conversion died with the controller; the test needs it left running"
lab up --hosts 3 >/dev/null
old_gone() { local p; for p in $old; do proc_gone "$p" || return 1; done; }
wait_until 30 "the old conversion's processes killed" old_gone
[ ! -e "$sockdir" ] || fail "the killed appliance's socket directory $sockdir is left"
wait_op "$OP" 300
[ "$(jqb .status)" = failed ] || fail "the session's operation is $(jqb .status): $(jqb .error)"
jqb .error | grep -q "virt-v2v could not convert disks root ...: .*No root device found" ||
	fail "the operation's error is not the second run's refusal: $(jqb .error)"
[ "$(jqb .result.session.convert_tries)" = 2 ] ||
	fail "virt-v2v ran $(jqb .result.session.convert_tries) times, not twice (once killed, once again)"
[ -z "$(marked)" ] || fail "processes of the conversion are left: $(marked_comm | tr '\n' ' ')"
left_nothing p2vconvr "a conversion across a controller restart" root data
pass "two disks converted by virt-v2v -i libvirtxml; controller kill -9 with the appliance up: $alive old processes killed by the new controller, converted again, the second refusal ended the operation, nothing left"
