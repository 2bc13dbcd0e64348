#!/bin/bash
# Backups: a store on the shared pool; a running VM backed up without stopping it
# (its file systems frozen through qemu-ga while the point in time is taken;
# crash-consistent, saying why, when the guest agent is killed or the VM paused; read
# from QEMU's point-in-time NBD export, which a write during the read does not change); a
# stopped VM backed up from its disk (the second backup adds only the chunks that
# changed); the disk changed, then restored over: its content equals the backup's
# checksum and the guest boots from the restored disk; bad input is refused.
. "$(dirname "$0")/lib.sh"

# A store of this run's own: stores holding backups cannot be deleted, and backups
# cannot be yet.
bs=bs$$

trap 'instances_delete bk1 bk2 bk1x' EXIT

# The disk's content as the guest sees it: SHA-256 of its raw image (backing included).
disk_file() { # [NAME]
	local vm=${1:-bk1} host pool
	api GET "/api/v1/instances/$vm"
	host=$(jqb .host) pool=$(jqb '.disks[0].pool')
	if [ "$pool" = shared ]; then
		echo "$KUMO_LAB_DIR/shared/disks/$vm/root.qcow2"
	else
		echo "$KUMO_LAB_DIR/hosts/$host/local/disks/$vm/root.qcow2"
	fi
}
disk_sha() { # [NAME]
	local f raw
	f=$(disk_file "${1:-bk1}")
	raw=$(mktemp /tmp/kt-bk-XXXXXX)
	qemu-img convert -U -O raw "$f" "$raw"
	chunk_sum "$raw"
	rm -f "$raw"
}
backup() { # backup NAME [BODY] -> waits; BODY is the backup's record, $why its consistency_reason,
	# $live_read how a running VM's disk was read whole (fleecing, copy or "") and $live_why why
	api POST "/api/v1/instances/$1/backups" "${2:-}"
	expect_status 202 "backup of $1"
	wait_op "$(jqb .id)" 300
	op_ok
	local id
	live_read=$(jqb '.result.backup.live_read // empty') live_why=$(jqb '.result.backup.live_read_reason // empty')
	parent_reads=$(jqb '.result.backup.timings.parent_chunks_read // empty')
	target_nodes=$(jqb '.result.backup.timings.target_nodes // empty')
	leftover_checks=$(jqb '.result.backup.timings.leftover_checks // empty')
	id=$(jqb .result.backup.id)
	[ -n "$id" ] && [ "$id" != null ] || fail "the backup operation's result names no backup id"
	api GET "/api/v1/backups/$id"
	expect_status 200
	why=$(jqb .consistency_reason)
}

api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"
[ "$(jqb .path)" = "backups/$bs" ] || fail "store path is $(jqb .path), not backups/$bs"
api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 409 "a second store $bs"
api POST /api/v1/backup-stores '{"name":"x'$bs'","path":"../etc"}'
expect_status 400 "a store path leaving the shared pool"
api POST /api/v1/backup-stores '{"name":"y'$bs'"}'
expect_status 201 "a second store"
api GET /api/v1/backup-stores
jqb -e '[.backup_stores[].name] | index("'$bs'") != null' >/dev/null || fail "stores listed: $(jqb '[.backup_stores[].name]')"
# With two stores, a backup must name one.
api POST /api/v1/instances/nosuch/backups
expect_status 404 "backup of an unknown instance"
api DELETE "/api/v1/backup-stores/y$bs"
expect_status 204 "delete of an empty store"
pass "backup stores: create, 409 on a taken name, a path outside the pool refused"

# type NAME TEXT -> TEXT typed into the VM's serial console, then Enter.
type_in() {
	api POST "/api/v1/instances/$1/console" "$(jq -nc --arg d "$2"$'\r' '{data: $d}')"
	expect_status 204 "typing into $1's console"
}

vm_create '{"name":"bk1","type":"vm","memory":{"mb":256},"disks":[{"name":"root","image":"'$TEST_IMAGE'"}]}'
wait_until 150 "first boot" console_has bk1 "KUMO-GUEST-READY"
console_has bk1 "KUMO-QGA port=" || fail "the guest agent did not start in the guest: $(console bk1 | tail -5)"

# 1. Running: the VM is not stopped. Its guest agent killed (on the serial console),
# the backup cannot freeze: crash-consistent, and it says why.
type_in bk1 'kill $(cat /run/qemu-ga.pid); while kill -0 $(cat /run/qemu-ga.pid) 2>/dev/null; do usleep 20000; done; echo KUMO-QGA-$((1))KILLED'
wait_until 60 "qemu-ga killed in the guest" console_has bk1 "KUMO-QGA-1KILLED"
backup bk1 '{"store":"'$bs'"}'
b1=$(jqb .id)
[ "$(jqb .status)" = succeeded ] && [ "$(jqb .restorable)" = true ] || fail "backup 1 is $(jqb .status)"
[ "$(jqb .kind)" = full ] && [ "$(jqb .consistency)" = crash ] || fail "backup 1: kind $(jqb .kind), consistency $(jqb .consistency)"
grep -q "guest agent" <<<"$why" || fail "a crash-consistent backup does not say why: '$why'"
# Read from QEMU's point-in-time NBD export of the disk (image fleecing), not a raw copy.
[ "$live_read" = fleecing ] || fail "the live full was read by '$live_read', not fleecing: $live_why"
why1=$why
total=$(jqb .total_bytes) read1=$(jqb .read_bytes) new1=$(jqb .new_bytes) chunks1=$(jqb .chunk_count)
# Holes of the read disk are not read (nor hashed): read_bytes is at most the size.
[ "$total" -gt 0 ] && [ "$read1" -gt 0 ] && [ "$read1" -le "$total" ] && [ "$new1" -gt 0 ] && [ "$chunks1" -gt 0 ] ||
	fail "backup 1 numbers: total $total read $read1 new $new1 chunks $chunks1"
[ "$(jqb '.disks[0].name')" = root ] && [ "$(jqb '.disks[0].virtual_size')" = "$total" ] || fail "backup 1 disks: $(jqb .disks)"
instance_is bk1 running || fail "bk1 is $(jqb .state) after a live backup"
[ -f "$KUMO_LAB_DIR/shared/backups/$bs/backups/$b1.json" ] || fail "no manifest for $b1 in the store"
# Only the store's root and tmp/ are passable for a VM's QEMU (to its work directory);
# nobody else lists chunks or reads a manifest (a VM's spec, cloud-init data included).
st="$KUMO_LAB_DIR/shared/backups/$bs"
# A fan-out directory comes with its first chunk: the one of the backup's first chunk.
fan=$(jq -r '.disks[0].chunks[0][0:2]' "$st/backups/$b1.json")
modes=$(stat -c %a "$st" "$st/tmp" "$st/chunks" "$st/chunks/$fan" "$st/backups" | tr '\n' ' ')
[ "$modes" = "711 711 700 700 700 " ] || fail "the store's root, tmp, chunks, chunks/$fan, backups are $modes, not 711 711 700 700 700"
api POST "/api/v1/backups/$b1/actions/verify"
wait_op "$(jqb .id)" 300
[ "$(jqb .result.ok)" = true ] || fail "verify of the crash-consistent backup: $(jqb .result)"
pass "a running VM backed up without stopping it (read by fleecing); no guest agent: crash-consistent ($why1), verified, $chunks1 chunks, $new1 bytes stored"

# 1b. Incremental: the next backup builds on the first through the disk's dirty bitmap
# and reads only what changed (a reboot: the guest counts boots on its disk). Paused,
# so the disk holds still for the checksum.
api POST /api/v1/instances/bk1/actions/reboot
wait_op "$(jqb .id)"
op_ok
wait_until 150 "boot 2 (reboot)" console_has bk1 "KUMO-BOOT count=2"
api POST /api/v1/instances/bk1/actions/pause
wait_op "$(jqb .id)"
op_ok
wait_until 20 "paused" instance_is bk1 paused
backup bk1 '{"store":"'$bs'"}'
bi=$(jqb .id)
[ "$(jqb .consistency)" = crash ] && grep -q paused <<<"$why" || fail "a paused VM's backup is $(jqb .consistency) ('$why')"
[ "$(jqb .kind)" = incremental ] && [ "$(jqb .parent)" = "$b1" ] || fail "the second live backup is $(jqb .kind) with parent $(jqb .parent) ($(jqb .full_reason))"
readi=$(jqb .read_bytes) newi=$(jqb .new_bytes)
[ "$readi" -gt 0 ] && [ "$readi" -lt $((total / 4)) ] || fail "the incremental backup read $readi of $total bytes"
[ "$newi" -lt $((new1 / 2)) ] || fail "the incremental backup stored $newi new bytes; the full one $new1"
[ "$(jqb '.disks[0].sha256')" = "$(disk_sha)" ] || fail "the incremental backup's checksum is not the disk's"
# The bitmap marks whole 4 MiB chunks: a changed chunk is read whole, its parent never.
[ "$parent_reads" = 0 ] || fail "the incremental read $parent_reads of its parent's chunks back (the bitmap's bits are not chunks)"
api GET /api/v1/instances/bk1
nodes=$(qemu_monitor2 "$KUMO_LAB_DIR/hosts/$(jqb .host)/local/instances/bk1/monitor.sock" qmp query-named-block-nodes '{"flat":true}')
gran=$(jq -c '[.[] | ."dirty-bitmaps"[]? | select(.name | startswith("kumo-")) | .granularity] | unique | .[]' <<<"$nodes")
[ "$gran" = 4194304 ] || fail "the disk's kumo- bitmap has granularity '$gran', not one bit per 4 MiB chunk"
# The job's target was a node of its own (no fdatasync, fleece.h), closed before the read.
[ "$target_nodes" = 1 ] || fail "the incremental's disk was not copied into a target node the agent made (target_nodes '$target_nodes')"
left=$(jq -r '[.[] | ."node-name" // "" | select(startswith("kbt-"))] | join(" ")' <<<"$nodes")
[ -z "$left" ] || fail "the incremental's target node is left in QEMU: $left"
# After the fleecing full, the agent asked QEMU for leftover backup nodes; it found none,
# and the next incremental (nothing but its own target node added and removed since)
# skips that question, and is as right.
[ "$leftover_checks" = 1 ] || fail "the incremental after a fleecing did not look for leftover nodes (leftover_checks '$leftover_checks')"
backup bk1 '{"store":"'$bs'"}'
[ "$(jqb .kind)" = incremental ] && [ "$(jqb .parent)" = "$bi" ] || fail "the third live backup is $(jqb .kind) with parent $(jqb .parent)"
[ "$leftover_checks" = 0 ] || fail "an incremental right after another asked QEMU for leftover nodes again (leftover_checks '$leftover_checks')"
[ "$(jqb '.disks[0].sha256')" = "$(disk_sha)" ] || fail "the second incremental's checksum is not the disk's"
api DELETE "/api/v1/backups/$(jqb .id)" # the retention counts below know the others
expect_status 204 "delete of the second incremental"
api POST /api/v1/instances/bk1/actions/resume
wait_op "$(jqb .id)"
op_ok
pass "incremental: read $readi of $total bytes, stored $newi; its checksum is the disk's; the next one skipped the leftover-node question and was as right"

# 1c. The guest agent runs (the reboot started it): the file systems are frozen around
# the point in time. A writer in the guest writes its disk in a loop while a sampler
# reads the writer's kernel wait channel: a write blocked in the freeze protection
# (percpu_rwsem_wait) during the backup, and went on after the thaw (the writer ends
# when asked, which a write stuck for good would never let it).
qga_started() { [ "$(console bk1 | grep -c "KUMO-QGA port=")" -ge "$1" ]; }
wait_until 120 "qemu-ga started again after the reboot" qga_started 2
type_in bk1 "rm -f /run/stopw /run/blocked; sh -c 'while [ ! -e /run/stopw ]; do echo x >/mnt/root/var/kumo/w; done; echo KUMO-WRITER-\$((1))DONE' & sh -c 'while [ ! -e /run/stopw ]; do read -r c </proc/'\$!'/wchan; [ \"\$c\" = percpu_rwsem_wait ] && echo >>/run/blocked; done' >/dev/null 2>&1 & echo KUMO-WRITER-\$((0))START"
wait_until 60 "the guest's writer started" console_has bk1 "KUMO-WRITER-0START"
backup bk1 '{"store":"'$bs'","mode":"full"}'
bf=$(jqb .id)
[ "$(jqb .kind)" = full ] || fail "mode full made a $(jqb .kind) backup"
[ "$(jqb .consistency)" = filesystem ] && [ "$why" = null ] || fail "with the guest agent running the backup is $(jqb .consistency) ('$why')"
type_in bk1 'touch /run/stopw; echo KUMO-BLOCKED-$(cat /run/blocked 2>/dev/null | wc -l)-SAMPLES'
wait_until 60 "the guest's writer ended after the thaw" console_has bk1 "KUMO-WRITER-1DONE"
wait_until 60 "the guest's sampler counted" console_has bk1 "KUMO-BLOCKED-[0-9]*-SAMPLES"
blocked=$(console bk1 | grep -o "KUMO-BLOCKED-[0-9]*-SAMPLES" | tail -1 | tr -dc 0-9)
[ "$blocked" -gt 0 ] || fail "no write in the guest waited for the freeze ($blocked samples)"
pass "mode full is full; the guest agent froze the file systems (consistency filesystem): a guest write waited in the freeze ($blocked samples) and finished after the thaw"

# qmp2 CMD -> bk1's QEMU asked on its second QMP monitor (lib.sh's qemu_monitor2 says
# what CMD may be: "leftovers", or an HMP command line).
qmp2() {
	local host
	api GET /api/v1/instances/bk1
	host=$(jqb .host)
	qemu_monitor2 "$KUMO_LAB_DIR/hosts/$host/local/instances/bk1/monitor.sock" "$@"
}

# 1d. The point in time holds while the disk changes under the read: paused (so the
# disk holds still but for the write below), a full paced to 16 Mbit/s (at 80, with
# the live read's NBD requests in 1 MiB pieces, the reader was past the check's margin
# in two runs of two at load 12; whether main's raced too was not measured); once it reads,
# 1 MiB at the disk's end (which the reader reaches last) is overwritten through the
# device's block layer, the copy-before-write filter in front of it. The reader had
# not reached that MiB yet (its progress says so after the write). The backup holds
# the disk as it was before that write (the filter copied the old blocks aside first),
# and nothing of the fleecing is left in QEMU: no kfl-* node, no export, the device
# back on its disk's node.
api POST /api/v1/instances/bk1/actions/pause
wait_op "$(jqb .id)"
op_ok
wait_until 20 "paused" instance_is bk1 paused
sha_before=$(disk_sha)
api POST /api/v1/instances/bk1/backups '{"store":"'$bs'","mode":"full","bandwidth_mbps":16}'
expect_status 202 "a paced live full"
pitop=$(jqb .id)
pit_reading() {
	api GET "/api/v1/operations/$pitop"
	case "$(jqb .status)" in succeeded | failed | cancelled) fail "the paced live full ended before the write: $(jqb .status) $(jqb .error)" ;; esac
	case "$(jqb .phase)" in "reading disk root: "*) return 0 ;; esac
	return 1
}
wait_until 60 "the paced live full reading" pit_reading
pit_live() {
	api GET "/api/v1/operations/$pitop"
	[[ "$(jqb .phase)" =~ ^"reading disk root: "[0-9]+" of "[0-9]+" MiB"$ ]]
}
wait_until 60 "the paced live full's read progress" pit_live
[ "$(qmp2 leftovers | cut -d' ' -f3)" = kfl-cbw-d0 ] || fail "the fleecing filter is not in front of the disk during the read: $(qmp2 leftovers)"
qmp2 "qemu-io -d /machine/peripheral/disk0/virtio-backend \"write -P 0x5a $((total - (1 << 20))) 1M\"" ||
	fail "the write through QEMU during the backup failed"
# QEMU's qcow2 metadata cache to the file, so qemu-img (disk_sha) sees the write.
qmp2 "qemu-io -d /machine/peripheral/disk0/virtio-backend flush" || fail "the flush through QEMU failed"
api GET "/api/v1/operations/$pitop"
read -r pit_done pit_size < <(jqb .phase | grep -oE '[0-9]+ of [0-9]+' | tr -d 'of') || true
# The pipeline's threads read a few 4 MiB chunks ahead of what it counts as done.
[ "$(jqb .status)" = running ] && [ -n "$pit_size" ] && [ $((pit_done + 24)) -le "$pit_size" ] ||
	fail "the reader may have passed the written MiB before the write ($(jqb .status): $(jqb .phase)): the check would be vacuous"
wait_op "$pitop" 300
op_ok
[ "$(jqb .result.backup.live_read)" = fleecing ] ||
	fail "the paced live full was read by $(jqb .result.backup.live_read): $(jqb .result.backup.live_read_reason)"
pit_sha=$(jqb '.result.backup.disks[0].sha256')
bp=$(jqb .result.backup.id)
sha_after=$(disk_sha)
[ "$sha_after" != "$sha_before" ] || fail "the write during the backup did not change the disk"
[ "$pit_sha" = "$sha_before" ] ||
	fail "the backup is not the disk at its point in time (its checksum $pit_sha; before the write $sha_before, after $sha_after)"
[ "$(qmp2 leftovers)" = "0 0 d0 0" ] || fail "fleecing nodes or exports left in QEMU after the backup, or the device off its disk: $(qmp2 leftovers)"
# QEMU's NBD socket was in the host agent's own --run-dir (deploy/lab: run/hI), and
# is gone with the read.
api GET /api/v1/instances/bk1
bkhost=$(jqb .host)
[ -d "$KUMO_LAB_DIR/run/$bkhost/fleece" ] || fail "no $KUMO_LAB_DIR/run/$bkhost/fleece: the fleecing socket was not in the agent's run directory"
socks=$(find "$KUMO_LAB_DIR/run" -name '*.sock' 2>/dev/null || true)
[ -z "$socks" ] || fail "fleecing sockets left after the backup: $socks"
api POST /api/v1/instances/bk1/actions/resume
wait_op "$(jqb .id)"
op_ok
pass "a live full read by fleecing is the disk at its point in time: a write during the read (at $pit_done of $pit_size MiB) is not in it; no fleecing node or export left"

api POST /api/v1/instances/bk1/actions/stop '{"timeout_s":60}'
wait_op "$(jqb .id)"
op_ok
wait_until 30 "bk1 stopped" instance_is bk1 stopped

# 2. Stopped: from the disk file; the chunks the first backup stored are not stored again.
# Paced (bandwidth_mbps, as vzdump's bwlimit): the agent reads the disk file itself and
# sleeps between chunks to hold the limit, reporting how far it got meanwhile; the
# operation is polled to see those reports change.
bw=120 # Mbit/s = 15 MB/s: the lab disk's ~40 MiB of data take over 2 s
api POST /api/v1/instances/bk1/backups '{"store":"'$bs'","bandwidth_mbps":'$bw'}'
expect_status 202 "a paced backup"
bwop=$(jqb .id) bwphases=""
paced_done() {
	api GET "/api/v1/operations/$bwop"
	local ph
	ph=$(jqb .phase)
	case "$ph" in "storing disk root: "*) grep -qxF "$ph" <<<"$bwphases" || bwphases+="$ph"$'\n' ;; esac
	case "$(jqb .status)" in succeeded | failed | cancelled) return 0 ;; esac
	return 1
}
wait_until 120 "the paced backup ended" paced_done
op_ok
bwread=$(jqb .result.backup.read_bytes) bwms=$(jqb .result.backup.duration_ms)
nphases=$(grep -c . <<<"$bwphases" || true)
[ "$nphases" -ge 2 ] || fail "the paced backup's progress did not move while it read: '${bwphases//$'\n'/|}'"
# One chunk (4 MiB) may go at once; the rest at the limit.
[ "$bwread" -gt $((8 << 20)) ] || fail "the paced backup read only $bwread bytes: too few to time"
floor_ms=$(((bwread - (4 << 20)) * 8 / bw / 1000))
[ "$bwms" -ge "$floor_ms" ] && [ "$bwms" -ge 2000 ] ||
	fail "the paced backup read $bwread bytes in $bwms ms: faster than $bw Mbit/s (at least $floor_ms ms)"
api GET "/api/v1/backups/$(jqb .result.backup.id)"
expect_status 200
pass "bandwidth_mbps $bw: $bwread bytes read in $bwms ms ($((bwread * 8 / bwms / 1000)) Mbit/s), $nphases distinct progress reports while paced"
b2=$(jqb .id) sha2=$(jqb '.disks[0].sha256') new2=$(jqb .new_bytes)
[ "$(jqb .consistency)" = filesystem ] || fail "backup of a stopped VM is $(jqb .consistency)"
[ "$(jqb .kind)" = full ] && grep -q stopped <<<"$(jqb .full_reason)" || fail "a stopped VM's backup is $(jqb .kind), reason '$(jqb .full_reason)'"
[ "$sha2" = "$(disk_sha)" ] || fail "backup 2's checksum $sha2 is not the disk's"
[ "$new2" -lt $((new1 / 2)) ] || fail "backup 2 stored $new2 new bytes; backup 1 stored $new1 (no dedup?)"
pass "a stopped VM backed up: checksum equals the disk's, $new2 new bytes after $new1 (dedup)"
# Exactly one bitmap: this backup's. Each backup's superseded its parent's (the full
# one's too), so none piles up and slows the guest's writes.
bitmaps=$(qemu-img info --output=json "$(disk_file)" | jq -c '[.["format-specific"].data.bitmaps[]?.name]')
[ "$bitmaps" = "[\"kumo-$b2\"]" ] || fail "the disk's bitmaps after the stopped backup: $bitmaps, not [kumo-$b2]"
qemu-img bitmap --remove "$(disk_file)" "kumo-$b2"

# 3. Change the disk (a boot counts on it), then restore backup 2 over it.
api POST /api/v1/instances/bk1/actions/start
wait_op "$(jqb .id)"
op_ok
wait_until 150 "third boot" console_has bk1 "KUMO-BOOT count=3"
# The stopped backup gave the disk a bitmap; it was removed behind the agent's back
# (above): the chain is broken, and the next backup is full and says why.
backup bk1 '{"store":"'$bs'"}'
bx=$(jqb .id)
[ "$(jqb .kind)" = full ] && [ "$(jqb .parent)" = null ] && grep -q bitmap <<<"$(jqb .full_reason)" ||
	fail "after the bitmap was lost the backup is $(jqb .kind) (parent $(jqb .parent), reason '$(jqb .full_reason)')"
pass "a lost bitmap: the next backup is full and says why ($(jqb .full_reason))"
api POST /api/v1/backups/$b2/actions/restore
expect_status 409 "restore over a running VM"
api POST /api/v1/instances/bk1/actions/stop '{"timeout_s":60}'
wait_op "$(jqb .id)"
op_ok
wait_until 30 "bk1 stopped" instance_is bk1 stopped
[ "$(disk_sha)" != "$sha2" ] || fail "the disk did not change after the backup; the restore test would prove nothing"
api POST /api/v1/backups/$b2/actions/restore '{}'
expect_status 202 "restore"
wait_op "$(jqb .id)" 300
op_ok
[ "$(disk_sha)" = "$sha2" ] || fail "the restored disk's checksum is not backup 2's"
boots() { console bk1 | grep -c "KUMO-BOOT count=" || true; }
more_boots() { [ "$(boots)" -gt "$1" ]; }
n0=$(boots)
api POST /api/v1/instances/bk1/actions/start
wait_op "$(jqb .id)"
op_ok
wait_until 150 "boot after the restore" more_boots "$n0"
last=$(console bk1 | grep -o "KUMO-BOOT count=[0-9]*" | tail -1)
[ "$last" = "KUMO-BOOT count=3" ] || fail "after the restore the guest saw '$last': it did not boot from the backup's disk"
pass "restore over the stopped VM: the disk equals the backup's checksum and the guest boots from it"

# 3b. Into a new VM on another host: the restore creates it from the backup's spec.
api GET /api/v1/instances/bk1
other=h1
[ "$(jqb .host)" = h1 ] && other=h2
api POST /api/v1/backups/$b2/actions/restore '{"name":"bk2","host":"'$other'","start":false}'
expect_status 202 "restore into bk2"
wait_op "$(jqb .id)" 300
op_ok
[ "$(disk_sha bk2)" = "$sha2" ] || fail "bk2's restored disk does not match backup 2's checksum"
api POST /api/v1/instances/bk2/actions/start
wait_op "$(jqb .id)"
op_ok
wait_until 150 "bk2 boots from the restored disk" console_has bk2 "KUMO-BOOT count=3"
api DELETE "/api/v1/instances/bk2?force=1"
api POST /api/v1/backups/$b2/actions/restore '{"name":"bk1x","start":false}'
expect_status 202 "restore into a new instance bk1x"
wait_op "$(jqb .id)" 300
op_ok
api POST /api/v1/backups/$b2/actions/restore '{"name":"bk1x"}'
expect_status 409 "restore under a taken name"
instances_delete bk1x
pass "restore into a new VM on host $other: the disk equals the backup's checksum and it boots"

# 4. Verify: every chunk re-read; one byte of a chunk changed -> the backup is corrupt,
# named with the chunk and its offset, and no longer restorable.
api POST /api/v1/backups/$b2/actions/verify
expect_status 202 "verify"
wait_op "$(jqb .id)" 300
op_ok
[ "$(jqb .result.ok)" = true ] && [ "$(jqb .result.chunks)" -gt 0 ] || fail "verify of an intact backup: $(jqb .result)"
store_dir=$KUMO_LAB_DIR/shared/backups/$bs
# A chunk with data: the all-zero chunk is known by its name and never read, so a
# change to its file changes nothing restored.
zero_chunk=bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8
victim=$(jq -r --arg z "$zero_chunk" '[.disks[0].chunks[] | select(. != $z)][1]' "$store_dir/backups/$b2.json")
vfile=$store_dir/chunks/${victim:0:2}/$victim
size=$(stat -c %s "$vfile")
cp -p "$vfile" "/tmp/kt-chunk.$$" # other backups may share it: put back after
printf '\x5a' | dd of="$vfile" bs=1 seek=$((size / 2)) conv=notrunc status=none
api POST /api/v1/backups/$b2/actions/verify
wait_op "$(jqb .id)" 300
op_ok
[ "$(jqb .result.ok)" = false ] || fail "verify missed a changed chunk"
jqb -e '[.result.bad[] | select(.chunk == "'$victim'")] | length > 0' >/dev/null || fail "verify did not name chunk $victim: $(jqb .result.bad)"
api GET /api/v1/backups/$b2
[ "$(jqb .status)" = corrupt ] && [ "$(jqb .restorable)" = false ] || fail "backup $b2 is $(jqb .status) after a failed verify"
grep -q "$victim" <<<"$(jqb .error)" || fail "the backup's error does not name the chunk: $(jqb .error)"
api POST /api/v1/backups/$b2/actions/restore
expect_status 409 "restore of a corrupt backup"
mv "/tmp/kt-chunk.$$" "$vfile"
pass "verify: an intact backup passes; a changed byte in a chunk makes it corrupt, named, and not restorable"

# 5. Bad input and conflicts.
api POST /api/v1/instances/nosuch/backups
expect_status 404 "backup of an unknown instance"
api POST /api/v1/instances/bk1/backups '{"store":"nosuch"}'
expect_status 404 "backup into an unknown store"
api POST /api/v1/instances/bk1/backups '{"bogus":1}'
expect_status 400 "an unknown field"
for v in 0 -1 '"x"' 1000001; do
	api POST /api/v1/instances/bk1/backups '{"bandwidth_mbps":'"$v"'}'
	expect_status 400 "bandwidth_mbps $v"
	[ "$(jqb .field)" = bandwidth_mbps ] || fail "bandwidth_mbps $v: the error names $(jqb .field)"
done
api POST /api/v1/backups/nosuch/actions/restore
expect_status 404 "restore of an unknown backup"
api DELETE /api/v1/backup-stores/$bs
expect_status 409 "delete of a store holding backups"
api GET "/api/v1/backups?instance=bk1"
mine=$(jqb -c '[.backups[] | select(.store == "'$bs'") | .id]')
[ "$(jq length <<<"$mine")" = 6 ] && [ "$(jq -r '.[0]' <<<"$mine")" = "$bx" ] && [ "$(jq -r '.[5]' <<<"$mine")" = "$b1" ] || fail "bk1's backups in $bs, newest first: $mine, not [$bx,..,$b1]"
api GET "/api/v1/backups?instance=nosuch"
[ "$(jqb '.backups | length')" = 0 ] || fail "backups of an unknown instance listed"
pass "unknown instance, store or backup 404; unknown field and bandwidth_mbps 0/-1/\"x\"/1000001 400; a store with backups 409; list by instance"

# 6. Retention, delete and garbage collection.
api POST "/api/v1/backup-stores/$bs/actions/prune" '{"instance":"bk1","keep_last":1,"dry_run":true}'
expect_status 200 "prune (dry run)"
[ "$(jqb -c .kept)" = "[\"$bx\"]" ] && [ "$(jqb -c '.removed | sort')" = "$(jq -nc --arg a "$b1" --arg b "$bi" --arg c "$bf" --arg d "$bp" '[$a,$b,$c,$d] | sort')" ] ||
	fail "prune keep_last 1 would keep $(jqb -c .kept) and remove $(jqb -c .removed)"
api GET "/api/v1/backups/$b1"
expect_status 200 "a dry run removes nothing"
api POST "/api/v1/backup-stores/$bs/actions/prune" '{"instance":"bk1","keep_last":1}'
expect_status 200 "prune"
api GET "/api/v1/backups/$b1"
expect_status 404 "a pruned backup"
wait_until 30 "the pruned manifest removed" test ! -e "$store_dir/backups/$b1.json"
api DELETE "/api/v1/backups/$b2"
expect_status 204 "delete of the corrupt backup"
# An unreferenced chunk, old enough: collected. The kept backup's chunks stay.
junk=$store_dir/chunks/00/$(printf '0%.0s' {1..64})
mkdir -p "$(dirname "$junk")" && echo junk >"$junk" && touch -d '2 hours ago' "$junk"
# A manifest's temporary file a crash mid-commit left (an hour old), and one of a commit
# under way (new): the first is collected, the second stays.
left_tmp=$store_dir/backups/$(printf 'a%.0s' {1..32}).json.tmp.4242
new_tmp=$store_dir/backups/$(printf 'b%.0s' {1..32}).json.tmp.4243
echo '{"version": 2, "disks": [' >"$left_tmp" && touch -d '1 hour ago' "$left_tmp"
echo '{"version": 2, "disks": [' >"$new_tmp"
api POST "/api/v1/backup-stores/$bs/actions/gc"
expect_status 202 "gc"
wait_op "$(jqb .id)" 300
op_ok
[ "$(jqb .result.chunks_removed)" -ge 1 ] && [ ! -e "$junk" ] || fail "gc left the unreferenced chunk: $(jqb .result)"
[ ! -e "$left_tmp" ] || fail "gc left a manifest's temporary file a crash left an hour ago"
[ -e "$new_tmp" ] || fail "gc removed the temporary file of a manifest being written"
rm -f "$new_tmp"
api POST "/api/v1/backups/$bx/actions/verify"
wait_op "$(jqb .id)" 300
[ "$(jqb .result.ok)" = true ] || fail "gc removed a chunk the kept backup names: $(jqb .result.bad)"
api DELETE "/api/v1/backups/$bx"
expect_status 204
api DELETE "/api/v1/backup-stores/$bs"
expect_status 204 "delete of the emptied store"
pass "prune keeps exactly keep_last (dry run first), delete, gc removes only unreferenced chunks and old temporary manifests"
