#!/bin/bash
# P2V: a "physical machine" outside Kumo (a plain QEMU no agent manages: the test image
# on a raw SATA disk, an e1000 NIC with its own MAC) becomes a cluster VM.
#   - warm: while it runs and a writer keeps appending a counter to its disk, kumo-p2v
#     makes >= 2 passes, the final pass (after the freeze) sends less than the first,
#     the VM's disk equals the source's at the freeze bit for bit, the counter in it is
#     the last value written before the freeze, the VM boots with the source's hardware
#     (SATA, e1000, MAC) and the downtime (freeze to the VM's boot marker) is printed;
#   - cold: the powered-off machine's disk in one pass, all-zero chunks never sent,
#     same checksum, the VM boots;
#   - a client killed mid-pass resumes without resending a stored chunk;
#   - a wrong, used or expired ingest token is 401, a chunk whose hash does not match
#     is 400 and not stored, a chunk outside the disk is 400;
#   - DELETE abandons a session: its operation is cancelled and its files are gone;
#   - a session larger than the shared pool's free space is 507, the 17th live session
#     429 (p2v_max_sessions, 16 by default), nothing created; a pass start lists only
#     the chunks that hold data.
# kumo-p2v reads the machine's disk from the host side (the raw file QEMU runs on)
# rather than inside the guest: the busybox test image has no room for a TLS client
# and its libraries, and the disk is the same bytes either way.
. "$(dirname "$0")/lib.sh"

P2V=$KUMO_BUILD_DIR/tools/kumo-p2v
W=$KUMO_LAB_DIR/p2v-test
PM_PID=$W/pm.pid
WRITER_PID=$W/writer.pid
MAC=52:54:00:7b:00:01
MB=$((1 << 20))

instance_absent() { api GET "/api/v1/instances/$1" && [ "$STATUS" = 404 ]; }
# vm_gone NAME -> the VM and the image its cutover made are deleted
vm_gone() {
	api DELETE "/api/v1/instances/$1?force=1" >/dev/null 2>&1 || true
	wait_until 120 "$1 deleted" instance_absent "$1" || true
	api DELETE "/api/v1/images/p2v-$1-root" >/dev/null 2>&1 || true
}
stop_pidfile() {
	local pid
	pid=$(cat "$1" 2>/dev/null) || return 0
	kill -CONT "$pid" 2>/dev/null || true
	kill "$pid" 2>/dev/null || true
	wait_until 20 "pid $pid gone" proc_gone "$pid" || true
	rm -f "$1"
}
cleanup() {
	stop_pidfile "$WRITER_PID"
	stop_pidfile "$PM_PID"
	for n in p2vwarm p2vcold; do vm_gone "$n"; done
	for id in $(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/p2v" | jq -r '.sessions[].id' 2>/dev/null); do
		api DELETE "/api/v1/p2v/$id" >/dev/null 2>&1 || true
	done
	rm -rf "$W"
}
trap cleanup EXIT
cleanup
mkdir -p "$W"

# ---- limits: the pool's free space and the number of live sessions ----
live() { curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/p2v" | jq '[.sessions[] | select(.state == "receiving" or .state == "cutting-over")] | length'; }
p2v_dirs() { find "$KUMO_LAB_DIR/shared/p2v" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || true; }  # none before the first session
[ "$(live)" = 0 ] || fail "p2v sessions were left from an earlier run"
dirs=$(p2v_dirs)
api POST /api/v1/p2v '{"name":"p2vhuge","disks":[{"name":"root","size_bytes":17592186044416}]}'
expect_status 507 "a 16 TiB session on a smaller pool"
jqb .error | grep -q "free space" || fail "the refusal does not say why: $BODY"
[ "$(live)" = 0 ] && [ "$(p2v_dirs)" = "$dirs" ] || fail "the refused session left a session or files"
for i in $(seq 1 16); do
	api POST /api/v1/p2v '{"name":"p2vcap'"$i"'","disks":[{"name":"root","size_bytes":1048576}]}'
	expect_status 201 "live session $i of 16"
done
api POST /api/v1/p2v '{"name":"p2vcap17","disks":[{"name":"root","size_bytes":1048576}]}'
expect_status 429 "the 17th live session"
jqb .error | grep -q p2v_max_sessions || fail "the refusal does not name the cap: $BODY"
[ "$(live)" = 16 ] || fail "$(live) live sessions after the refusal"
for id in $(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" "$KUMO_URL/api/v1/p2v" | jq -r '.sessions[].id'); do
	api DELETE "/api/v1/p2v/$id"
done
[ "$(live)" = 0 ] || fail "the capped sessions were not deleted"
pass "a session larger than the pool's free space 507, the 17th live one 429; nothing created"

# booted NAME: the VM printed its boot marker within 240 s; otherwise fail with its console
booted() {
	local end=$((SECONDS + 240))
	until console_has "$1" KUMO-GUEST-READY; do
		[ $SECONDS -lt $end ] || fail "$1 did not boot in 240 s; its console ends: $(console "$1" | tail -15)"
		sleep 1
	done
}
# session NAME SIZE [EXTRA-JSON] -> SID, TOKEN (the session's id and ingest token)
session() {
	api POST /api/v1/p2v '{"name":"'"$1"'","disks":[{"name":"root","size_bytes":'"$2"',"bus":"sata"}],
		"hardware":{"vcpus":1,"memory_mb":256,"nics":[{"model":"e1000","mac":"'$MAC'"}]}'"${3:-}"'}'
	expect_status 201 "create a p2v session"
	SID=$(jqb .id)
	TOKEN=$(jqb .token)
	[[ $TOKEN == kumo_* ]] || fail "no ingest token in the answer"
}
# The token from a file, as a user keeps it out of ps (--token is tested by the others).
p2v() {
	printf '%s\n' "$TOKEN" >"$W/token"
	"$P2V" --url "$KUMO_URL/api/v1/p2v/$SID" --token-file "$W/token" --cacert "$KUMO_CACERT" "$@"
}
# put_chunk OFFSET FILE SHA256 [TOKEN] -> STATUS, BODY
put_chunk() {
	# Expect: the controller refuses before the body; curl then never sends it.
	STATUS=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer ${4:-$TOKEN}" -X PUT \
		-H "Expect: 100-continue" --expect100-timeout 30 \
		--data-binary @"$2" -o "$W/put.out" -w '%{http_code}' \
		"$KUMO_URL/api/v1/p2v/$SID/disks/root/chunks/$1?sha256=$3") || STATUS=000
	BODY=$(cat "$W/put.out" 2>/dev/null || true)
}
image_sha() { # IMAGE -> SHA-256 of its content as raw
	qemu-img convert -O raw "$KUMO_LAB_DIR/shared/images/$1.qcow2" "$W/img.raw"
	sha256sum "$W/img.raw" | cut -c1-64
	rm -f "$W/img.raw"
}

# ---- the physical machine: boots the test image once (its boot counter becomes 1) ----
qemu-img convert -O raw "$KUMO_BUILD_DIR/guest/kumo-test.qcow2" "$W/pm.raw"
# Room past the partition for the writer, outside any file system the guest mounts.
qemu-img resize -f raw "$W/pm.raw" 128M >/dev/null
# locking off: kumo-p2v reads the disk while this QEMU has it open, as it would read
# /dev/sda under a running system. The NIC's user network is restricted: no traffic
# leaves the machine.
qemu-system-x86_64 -machine q35,accel=tcg -m 256 -smp 1 -display none -no-reboot \
	-drive file="$W/pm.raw",format=raw,if=none,id=d0,file.locking=off \
	-device ide-hd,drive=d0,bus=ide.0 \
	-netdev user,id=n0,restrict=on -device e1000,netdev=n0,mac=$MAC \
	-serial file:"$W/pm-console.log" -pidfile "$PM_PID" -daemonize
wait_until 240 "the physical machine boots" grep -q KUMO-GUEST-READY "$W/pm-console.log"
grep -q "KUMO-BOOT count=1" "$W/pm-console.log" || fail "the physical machine's first boot is not count=1"
pass "a physical machine (plain QEMU, SATA disk, e1000 $MAC) runs outside Kumo"

# A writer appending a counter record per 64 KiB block past the partition, all the time.
(
	trap 'exit 0' TERM
	n=0
	while :; do
		# The freeze (freeze.sh) asks; the writer stops between two whole records.
		if [ -e "$W/freeze" ]; then
			touch "$W/writer-paused"
			sleep 0.1
			continue
		fi
		n=$((n + 1))
		printf 'counter %08d\n' "$n" | dd of="$W/pm.raw" bs=64K seek=$((1024 + n % 1024)) conv=notrunc status=none
		echo "$n" >"$W/last.tmp" && mv "$W/last.tmp" "$W/last"
		sleep 0.02
	done
) &
echo $! >"$WRITER_PID"
wait_until 20 "the writer runs" test -s "$W/last"

# ---- warm P2V while it runs ----
session p2vwarm $((128 * MB))
# The freeze: the writer and the machine stop; what the disk holds now is what the VM
# must get. Its checksum and the last counter are kept for after.
cat >"$W/freeze.sh" <<EOF
#!/bin/bash
touch "$W/freeze"
while [ ! -e "$W/writer-paused" ]; do sleep 0.05; done
kill -STOP \$(cat "$PM_PID")
date +%s.%N >"$W/frozen_at"
cp "$W/last" "$W/last_at_freeze"
sha256sum "$W/pm.raw" | cut -c1-64 >"$W/sha_at_freeze"
EOF
chmod +x "$W/freeze.sh"
p2v --disk root="$W/pm.raw" --warm --max-passes 4 --small 0 --freeze-cmd "$W/freeze.sh" \
	--cutover --start --json >"$W/warm.json" 2>"$W/warm.log" || fail "kumo-p2v --warm failed: $(tail -5 "$W/warm.log")"
jq -e . "$W/warm.json" >/dev/null || fail "kumo-p2v --json printed no JSON summary"
npasses=$(jq '.passes | length' "$W/warm.json")
first=$(jq '.passes[0].bytes_sent' "$W/warm.json")
final=$(jq '.passes[-1].bytes_sent' "$W/warm.json")
[ "$npasses" -ge 2 ] || fail "warm P2V made $npasses passes"
[ "$final" -lt "$first" ] || fail "the final pass sent $final bytes, not less than the first's $first"
grep -q '"event":"progress"' "$W/warm.log" || fail "no progress on stderr"
api GET "/api/v1/p2v/$SID"
expect_status 200
[ "$(jqb .state)" = done ] || fail "the session is $(jqb .state) after the cutover"
[ "$(jqb .passes)" = "$npasses" ] || fail "the controller counted $(jqb .passes) passes, kumo-p2v $npasses"
[ "$(jqb '.pass_history[-1].bytes')" = "$final" ] || fail "the controller's last pass is not the final one"
[ "$(jqb .rate_bytes_per_s)" -gt 0 ] || fail "no rate"
pass "warm P2V: $npasses passes, first sent $first bytes, final (frozen) $final bytes"

[ "$(image_sha p2v-p2vwarm-root)" = "$(cat "$W/sha_at_freeze")" ] ||
	fail "the VM's disk differs from the source's at the freeze"
last=$(cat "$W/last_at_freeze")
qemu-img convert -O raw "$KUMO_LAB_DIR/shared/images/p2v-p2vwarm-root.qcow2" "$W/all.raw"
dd if="$W/all.raw" of="$W/tail.raw" bs=64K skip=$((1024 + last % 1024)) count=1 status=none
rm -f "$W/all.raw"
head -c 17 "$W/tail.raw" | grep -q "counter $(printf %08d "$last")" ||
	fail "the VM's disk does not hold counter $last, the last written before the freeze"
pass "the VM's disk equals the source at the freeze (SHA-256) and ends at counter $last"

wait_op "$(jq -r .cutover.id "$W/warm.json")" 180
op_ok
booted p2vwarm
ready=$(date +%s.%N)
console p2vwarm | grep -q "KUMO-BOOT count=2" || fail "the VM is not the machine's second boot: $(console p2vwarm | grep KUMO-BOOT)"
api GET /api/v1/instances/p2vwarm
[ "$(jqb '.disks[0].bus')" = sata ] || fail "the VM's disk bus is $(jqb '.disks[0].bus')"
[ "$(jqb '.nics[0].model')" = e1000 ] || fail "the VM's NIC is $(jqb '.nics[0].model')"
[ "$(jqb '.nics[0].mac')" = $MAC ] || fail "the VM's MAC is $(jqb '.nics[0].mac')"
echo "p2v freeze to cutover answered: $(jq '.freeze_to_cutover_s * 10 | round / 10' "$W/warm.json") s (final pass and image conversion)"
echo "p2v cutover downtime (freeze to the VM's boot marker): $(awk -v a="$ready" -v b="$(cat "$W/frozen_at")" 'BEGIN { printf "%.1f", a - b }') s"
pass "the VM boots in the cluster as the machine's second boot, with SATA, e1000 and MAC $MAC"

# ---- cold P2V: the machine is off, its disk read in one pass ----
stop_pidfile "$WRITER_PID"
stop_pidfile "$PM_PID"
sum=$(sha256sum "$W/pm.raw" | cut -c1-64)
vm_gone p2vwarm
session p2vcold $((128 * MB))
p2v --disk "$W/pm.raw" --cutover --start --json >"$W/cold.json" 2>"$W/cold.log" || fail "kumo-p2v (cold) failed: $(tail -5 "$W/cold.log")"
[ "$(jq '.passes | length' "$W/cold.json")" = 1 ] || fail "cold P2V made more than one pass"
sent=$(jq '.passes[0].chunks_sent' "$W/cold.json")
[ "$sent" -lt 128 ] || fail "cold P2V sent all 128 chunks: all-zero chunks are not skipped"
[ "$(image_sha p2v-p2vcold-root)" = "$sum" ] || fail "the cold VM's disk differs from the source"
wait_op "$(jq -r .cutover.id "$W/cold.json")" 180
op_ok
booted p2vcold
pass "cold P2V: one pass of $sent of 128 chunks (zero chunks skipped), same SHA-256, the VM boots"
vm_gone p2vcold

# ---- tokens and chunks: hostile input ----
head -c $MB /dev/urandom >"$W/chunk"
h=$(sha256sum "$W/chunk" | cut -c1-64)
session p2vbad $((4 * MB))
# An http:// url would send the token and the disk in clear: refused before any request.
if "$P2V" --url "http://${KUMO_URL#https://}/api/v1/p2v/$SID" --token "$TOKEN" --disk "$W/chunk" \
	>/dev/null 2>"$W/http.err"; then
	fail "kumo-p2v sent a session over plain http"
fi
grep -q "in clear" "$W/http.err" || fail "kumo-p2v's http refusal does not say why: $(cat "$W/http.err")"
put_chunk 0 "$W/chunk" "$h" kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
[ "$STATUS" = 401 ] || fail "a wrong token stored a chunk: HTTP $STATUS"
bad_sid=$SID bad_token=$TOKEN
session p2vother $((4 * MB))
put_chunk 0 "$W/chunk" "$h" "$bad_token"
[ "$STATUS" = 401 ] || fail "another session's token was taken: HTTP $STATUS"
api GET /api/v1/hosts "" "$bad_token"
[ "$STATUS" = 401 ] || fail "the ingest token opened /api/v1/hosts: HTTP $STATUS"
api DELETE "/api/v1/p2v/$SID"
SID=$bad_sid TOKEN=$bad_token
put_chunk 0 "$W/chunk" 0000000000000000000000000000000000000000000000000000000000000000
[ "$STATUS" = 400 ] || fail "a chunk whose hash does not match: HTTP $STATUS"
put_chunk $((4 * MB)) "$W/chunk" "$h"
[ "$STATUS" = 400 ] || fail "a chunk past the end of the disk: HTTP $STATUS"
put_chunk 12345 "$W/chunk" "$h"
[ "$STATUS" = 400 ] || fail "a chunk at an unaligned offset: HTTP $STATUS"
api GET "/api/v1/p2v/$SID"
[ "$(jqb .chunks_stored)" = 0 ] && [ "$(jqb .chunks_rejected)" = 1 ] ||
	fail "a refused chunk was stored (stored $(jqb .chunks_stored), rejected $(jqb .chunks_rejected))"
op=$(jqb .operation)
[ "$(stat -c %b "$KUMO_LAB_DIR/shared/p2v/$SID/root.raw")" = 0 ] || fail "a refused chunk reached the disk file"
put_chunk 0 "$W/chunk" "$h"
[ "$STATUS" = 204 ] || fail "a good chunk: HTTP $STATUS $BODY"
# The pass start lists only what holds data: its size follows what was received.
stored_keys=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $TOKEN" -X POST \
	"$KUMO_URL/api/v1/p2v/$SID/passes?resume=1" | jq -c '.disks[0].stored')
[ "$stored_keys" = "{\"0\":\"$h\"}" ] || fail "the pass start lists $stored_keys, not chunk 0 alone"
api DELETE "/api/v1/p2v/$SID"
expect_status 204
[ ! -e "$KUMO_LAB_DIR/shared/p2v/$SID" ] || fail "DELETE left the session's files"
api GET "/api/v1/operations/$op"
[ "$(jqb .status)" = cancelled ] || fail "the abandoned session's operation is $(jqb .status)"
put_chunk 0 "$W/chunk" "$h"
[ "$STATUS" = 401 ] || fail "the token of a deleted session still works: HTTP $STATUS"
session p2vttl $((4 * MB)) ',"token_ttl_s":1'
expired() { put_chunk 0 "$W/chunk" "$h" && [ "$STATUS" = 401 ]; }
wait_until 10 "the ingest token expires" expired
api DELETE "/api/v1/p2v/$SID"
pass "kumo-p2v refuses an http url; wrong, foreign, used and expired tokens 401; bad hash, offset and size 400 and not stored; DELETE removes all"

# ---- a client killed mid-pass resumes without resending stored chunks ----
# One chunk in flight and 160 chunks of data: the pass lasts long enough, even on a quiet
# machine, for the client to be killed part-way (the test fails clearly if not).
head -c $((160 * MB)) /dev/urandom >"$W/big.raw"
truncate -s $((192 * MB)) "$W/big.raw"
session p2vresume $((192 * MB))
# Not through p2v(): $! must be kumo-p2v itself, not a subshell around it.
"$P2V" --url "$KUMO_URL/api/v1/p2v/$SID" --token "$TOKEN" --cacert "$KUMO_CACERT" \
	--disk "$W/big.raw" --parallel 1 --json >/dev/null 2>"$W/resume1.log" &
client=$!
stored() { api GET "/api/v1/p2v/$SID" && [ "$(jqb .chunks_stored)" -ge "$1" ]; }
wait_until 120 "a few chunks stored" stored 4
kill -9 $client 2>/dev/null || true
wait $client 2>/dev/null || true
api GET "/api/v1/p2v/$SID"
before=$(jqb .chunks_stored)
[ "$before" -lt 160 ] || fail "the client finished before it was killed; the test needs a slower pass"
p2v --disk "$W/big.raw" --resume --json >"$W/resume2.json" 2>"$W/resume2.log" || fail "kumo-p2v --resume failed"
again=$(jq '.passes[0].chunks_sent' "$W/resume2.json")
api GET "/api/v1/p2v/$SID"
[ "$(jqb .chunks_stored)" = 160 ] || fail "160 data chunks, $(jqb .chunks_stored) stored: some were sent twice"
# Chunks whose body was whole when the client died may still be stored after the
# count above; they are not resent either.
[ "$again" -le $((160 - before)) ] && [ "$again" -gt 0 ] ||
	fail "$before stored before the kill, yet the resumed run sent $again"
[ "$(jqb .passes)" = 1 ] || fail "the resumed run started a new pass"
api DELETE "/api/v1/p2v/$SID"
pass "killed after $before chunks, the resumed run sent the other $again and nothing twice"
