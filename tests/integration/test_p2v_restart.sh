#!/bin/bash
# P2V sessions survive a controller restart (kill -9): a kumo-p2v run that retries
# through the restart finishes in each phase, and nothing is sent twice beyond the one
# chunk in flight (--parallel 1):
#   - first pass: killed part-way, the pass goes on where it was;
#   - a later pass (every data chunk changed): the same;
#   - cutover: killed while the disk is converted, the cut is rolled back and the
#     retried cutover makes the VM; its disk equals the source bit for bit;
#   - a session whose deadline passes while the controller is down is cleaned at start
#     (its files, its row, its operation failed "timed out");
#   - power loss: a chunk answered stored whose bytes never reached the disk is
#     re-hashed at start-up, dropped and resent; a chunk fsynced before is kept;
#   - a session brought back is cancelled through its operation (POST
#     /api/v1/operations/{id}/actions/cancel): its partial disk and its row go.
. "$(dirname "$0")/lib.sh"

P2V=$KUMO_BUILD_DIR/tools/kumo-p2v
W=$KUMO_LAB_DIR/p2v-restart-test
DB=$KUMO_LAB_DIR/controller/kumo.db
MB=$((1 << 20))

instance_absent() { api GET "/api/v1/instances/$1" && [ "$STATUS" = 404 ]; }
cleanup() {
	[ -n "${client:-}" ] && kill "$client" 2>/dev/null || true
	api DELETE "/api/v1/instances/p2vrs?force=1" >/dev/null 2>&1 || true
	wait_until 120 "p2vrs deleted" instance_absent p2vrs || true
	api DELETE /api/v1/images/p2v-p2vrs-root >/dev/null 2>&1 || true
	for id in $(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/p2v" | jq -r '.sessions[].id' 2>/dev/null); do
		api DELETE "/api/v1/p2v/$id" >/dev/null 2>&1 || true
	done
	rm -rf "$W"
}
trap cleanup EXIT
cleanup
mkdir -p "$W"

# session NAME SIZE [EXTRA-JSON] -> SID, TOKEN, OP
session() {
	api POST /api/v1/p2v '{"name":"'"$1"'","disks":[{"name":"root","size_bytes":'"$2"',"bus":"sata"}]'"${3:-}"'}'
	expect_status 201 "create a p2v session"
	SID=$(jqb .id) TOKEN=$(jqb .token) OP=$(jqb .operation)
}
# Not through a function: $! must be kumo-p2v itself.
p2v_bg() {
	"$P2V" --url "$KUMO_URL/api/v1/p2v/$SID" --token "$TOKEN" --cacert "$KUMO_CACERT" \
		--disk "$W/src.raw" --parallel 1 --json "$@" >"$W/run.json" 2>"$W/run.log" &
	client=$!
}
client_done() {
	wait "$client" || fail "kumo-p2v did not finish across the restart: $(tail -5 "$W/run.log")"
	client=
}
sess() { api GET "/api/v1/p2v/$SID" && expect_status 200 "the session after the restart"; }
stored_at_least() { api GET "/api/v1/p2v/$SID" && [ "$(jqb .chunks_stored)" -ge "$1" ]; }
state_is() { api GET "/api/v1/p2v/$SID" && [ "$(jqb .state)" = "$1" ]; }
rows() { sqlite3 -cmd '.timeout 5000' "$DB" "SELECT count(*) FROM $1 WHERE ${2:-id} = '$SID'"; }
controller_kill() {
	local cpid
	cpid=$(controller_pid)
	kill -9 "$cpid"
	wait_until 20 "the controller gone" proc_gone "$cpid"
}
controller_restart() {
	controller_kill
	lab up --hosts 3 >/dev/null
}

# 160 MiB of data in a 192 MiB disk: a pass at one chunk in flight lasts long enough to
# be killed part-way (the test says so clearly if not).
head -c $((160 * MB)) /dev/urandom >"$W/src.raw"
truncate -s $((192 * MB)) "$W/src.raw"
session p2vrs $((192 * MB))

# ---- first pass ----
p2v_bg
wait_until 120 "a few chunks stored" stored_at_least 4
controller_restart
client_done
sess
n=$(jqb .chunks_stored)
[ "$(jq '.passes[0].chunks_sent' "$W/run.json")" = 160 ] || fail "kumo-p2v sent $(jq '.passes[0].chunks_sent' "$W/run.json") chunks, not 160"
[ "$n" -ge 160 ] && [ "$n" -le 161 ] || fail "the controller stored $n chunks for 160: more than the one in flight was sent twice (or some lost)"
[ "$(jqb .passes)" = 1 ] || fail "the first pass became $(jqb .passes) passes"
[ "$(rows p2v_chunks session)" -ge 160 ] || fail "p2v_chunks holds $(rows p2v_chunks session) rows"
pass "first pass: killed part-way, the run finished; $n stores for 160 chunks"

# ---- a later pass: every data chunk changed ----
head -c $((160 * MB)) /dev/urandom | dd of="$W/src.raw" bs=1M conv=notrunc status=none
p2v_bg
wait_until 120 "a few chunks of pass 2 stored" stored_at_least $((n + 4))
controller_restart
client_done
sess
m=$(jqb .chunks_stored)
[ "$(jqb .passes)" = 2 ] || fail "the later pass: the controller counts $(jqb .passes) passes"
[ $((m - n)) -ge 160 ] && [ $((m - n)) -le 161 ] || fail "pass 2 stored $((m - n)) chunks for 160 changed"
[ "$(jq '.passes[0].pass' "$W/run.json")" = 2 ] || fail "kumo-p2v's pass was not pass 2"
pass "a later pass: killed part-way, the run finished; $((m - n)) stores for 160 chunks"

# ---- cutover: killed while the disk is converted ----
sum=$(sha256sum "$W/src.raw" | cut -c1-64)
# The cut is held mid-conversion: its qemu-img is stopped the moment it exists
# (hold_new; an API poll, or a pgrep loop, is too slow beside a hog to see a window that
# short), so the kill lands in the cut whatever the machine's load.
hold_start 120 "qemu-img convert .*$KUMO_LAB_DIR/shared/p2v/$SID/"
p2v_bg --resume --cutover
hold_wait || {
	sess
	fail "no qemu-img of the cutover was seen (session $(jqb .state)): $(tail -3 "$W/run.log")"
}
qpid=$HELD
wait_until 30 "the session cutting over (its qemu-img held)" state_is cutting-over
controller_kill
kill -9 "$qpid" 2>/dev/null || true # the dead controller's child: as after a power loss
lab up --hosts 3 >/dev/null
client_done
[ "$(jq '.passes[0].chunks_sent' "$W/run.json")" = 0 ] || fail "the resumed pass resent $(jq '.passes[0].chunks_sent' "$W/run.json") chunks"
cut=$(jq -r '.cutover.id // empty' "$W/run.json")
[ -n "$cut" ] || fail "the cutover's answer has no operation: $(cat "$W/run.json")"
wait_op "$cut" 180
op_ok
sess
[ "$(jqb .state)" = done ] || fail "the session is $(jqb .state) after the cutover"
api GET "/api/v1/operations/$OP"
[ "$(jqb .status)" = succeeded ] || fail "the session's operation is $(jqb .status): $(jqb .error)"
qemu-img convert -O raw "$KUMO_LAB_DIR/shared/images/p2v-p2vrs-root.qcow2" "$W/img.raw"
[ "$(sha256sum "$W/img.raw" | cut -c1-64)" = "$sum" ] || fail "the VM's disk differs from the source"
rm -f "$W/img.raw"
[ ! -e "$KUMO_LAB_DIR/shared/p2v/$SID" ] || fail "the done session left its raw files"
pass "cutover: killed mid-conversion, rolled back, cut again; the VM's disk equals the source"

# ---- a session that expires while the controller is down ----
head -c $MB /dev/urandom >"$W/chunk"
h=$(sha256sum "$W/chunk" | cut -c1-64)
put_chunk() {
	# Expect: a refusal comes before the body; curl then never sends it (a body sent
	# into a connection the controller closed after its 401 is a curl error, 000).
	STATUS=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $TOKEN" -X PUT \
		-H "Expect: 100-continue" --expect100-timeout 30 \
		--data-binary @"$W/chunk" -o /dev/null -w '%{http_code}' \
		"$KUMO_URL/api/v1/p2v/$SID/disks/root/chunks/$((${1:-0} * MB))?sha256=$h") || STATUS=000
}
session p2vexp $((4 * MB)) ',"deadline_s":8'
put_chunk
[ "$STATUS" = 204 ] || fail "a chunk of the expiring session: HTTP $STATUS"
api GET "/api/v1/p2v/$SID"
deadline=$(jqb .deadline)
controller_kill
past_deadline() { [ "$(date +%s%3N)" -gt "$deadline" ]; }
wait_until 30 "the session's deadline passes" past_deadline
lab up --hosts 3 >/dev/null
api GET "/api/v1/p2v/$SID"
[ "$STATUS" = 404 ] || fail "the expired session is still there: HTTP $STATUS $(jqb .state)"
[ ! -e "$KUMO_LAB_DIR/shared/p2v/$SID" ] || fail "the expired session left its files"
[ "$(rows p2v_sessions)" = 0 ] && [ "$(rows p2v_chunks session)" = 0 ] || fail "the expired session left its rows"
api GET "/api/v1/operations/$OP"
[ "$(jqb .status)" = failed ] && jqb .error | grep -q "timed out" || fail "the expired session's operation: $(jqb .status) $(jqb .error)"
pass "a session past its deadline at start-up: files, rows gone, its operation failed (timed out)"

# ---- power loss: a chunk's row committed, its bytes never on disk ----
# The controller's machine loses power after a chunk was answered stored: its row is in
# the database, its bytes were in the page cache only. Simulated by a kill -9 and the
# chunk's range zeroed in the raw file. A chunk fsynced before (its row unsynced = 0)
# is durable and not re-read; the unsynced one is re-hashed at start-up, dropped, and
# the source's next pass is told to send it again.
unsynced() { sqlite3 -cmd '.timeout 5000' "$DB" "SELECT unsynced FROM p2v_chunks WHERE session = '$SID' AND chunk = $1"; }
synced() { [ "$(unsynced "$1")" = 0 ]; }
pass_hash() {
	curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $TOKEN" -X POST \
		"$KUMO_URL/api/v1/p2v/$SID/passes" | jq -r ".disks[0].stored[\"$1\"] // \"\""
}
session p2vpl $((4 * MB))
put_chunk 1
[ "$STATUS" = 204 ] || fail "chunk 1 of the power-loss session: HTTP $STATUS"
wait_until 30 "chunk 1 fsynced behind its row" synced 1
put_chunk 0
[ "$STATUS" = 204 ] || fail "chunk 0 of the power-loss session: HTTP $STATUS"
controller_kill
[ "$(unsynced 0)" -gt 0 ] || fail "chunk 0 was fsynced before the kill; the test needs it unsynced"
dd if=/dev/zero of="$KUMO_LAB_DIR/shared/p2v/$SID/root.raw" bs=1M count=1 conv=notrunc status=none
lab up --hosts 3 >/dev/null
[ "$(pass_hash 0)" = "" ] || fail "chunk 0's bytes were lost, yet the controller still says it holds them"
[ "$(pass_hash 1)" = "$h" ] || fail "the fsynced chunk 1 was dropped"
put_chunk 0
[ "$STATUS" = 204 ] || fail "the resent chunk 0: HTTP $STATUS"
[ "$(pass_hash 0)" = "$h" ] || fail "the resent chunk 0 is not held"
cmp -n $MB "$W/chunk" "$KUMO_LAB_DIR/shared/p2v/$SID/root.raw" || fail "the resent chunk's bytes are not in the file"
api DELETE "/api/v1/p2v/$SID"
pass "power loss: the chunk whose bytes were lost is dropped at start-up and resent; the fsynced one kept"

# ---- cancel through the operation, after a restart ----
session p2vcan $((4 * MB))
put_chunk
[ "$STATUS" = 204 ] || fail "a chunk of the session to cancel: HTTP $STATUS"
controller_restart
api GET "/api/v1/operations/$OP"
[ "$(jqb .status)" = running ] || fail "the session's operation after the restart: $(jqb .status) $(jqb .error)"
put_chunk
[ "$STATUS" = 204 ] || fail "the ingest token after the restart: HTTP $STATUS"
api POST "/api/v1/operations/$OP/actions/cancel"
[ "$STATUS" = 200 ] || [ "$STATUS" = 202 ] || fail "cancel of the ingest: HTTP $STATUS $BODY"
wait_op "$OP" 60
[ "$(jqb .status)" = cancelled ] || fail "the cancelled ingest's operation is $(jqb .status)"
api GET "/api/v1/p2v/$SID"
[ "$STATUS" = 404 ] || fail "the cancelled session is still there: HTTP $STATUS"
[ ! -e "$KUMO_LAB_DIR/shared/p2v/$SID" ] || fail "the cancel left the partial disk"
[ "$(rows p2v_sessions)" = 0 ] && [ "$(rows p2v_chunks session)" = 0 ] || fail "the cancel left the session's rows"
put_chunk
[ "$STATUS" = 401 ] || fail "the cancelled session's token still works: HTTP $STATUS"
pass "a session brought back by a restart is cancelled through its operation: disk, rows gone"
