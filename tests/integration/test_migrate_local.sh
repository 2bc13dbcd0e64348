#!/bin/bash
# Live migration of a VM whose disks are on the local pool (issue 13 items 2, 3): a
# linked clone of the test image (its own layer mirrored, sync top) and a blank data
# disk (mirrored whole). The guest writes a random file to its root disk and a random
# pattern to its data disk, and prints their checksums read back from the disk (page
# cache dropped) every second. A cancel in the middle of the mirror keeps the VM on
# h1 and leaves nothing on h2; then the VM moves h1 -> h2: the target's guest reads
# the same checksums, its uptime goes on (no new boot), and h1's disk files are gone.
# The source's agent killed -9 in the middle of a mirror: the VM stays on h1, and
# the restarted agent sweeps the mirror jobs and NBD nodes left in its QEMU, so the
# migration after it works. One TCG boot, no network: cheap.
. "$(dirname "$0")/lib.sh"

VM=ml1
cleanup() {
	api DELETE "/api/v1/instances/$VM?force=1" >/dev/null 2>&1 || true
	for _ in $(seq 100); do
		api GET "/api/v1/instances/$VM" >/dev/null 2>&1 || true
		[ "$STATUS" = 404 ] && break
		sleep 0.2
	done
}
cleanup
trap cleanup EXIT

# The data disk is the virtio disk with serial "data" (the seed is a virtio disk too).
script='#!/bin/sh\nfor b in /sys/block/vd*; do [ $(cat $b/serial) = data ] && d=/dev/${b##*/}; done\ndd if=/dev/urandom of=/mnt/root/var/kumo/marker bs=64k count=32 2>/dev/null\ndd if=/dev/urandom of=$d bs=64k count=16 2>/dev/null\nsync\n(while :; do sync; echo 3 >/proc/sys/vm/drop_caches; echo KUMO-DISK $(cut -d. -f1 /proc/uptime) $(md5sum </mnt/root/var/kumo/marker | cut -c1-32) $(dd if=$d bs=64k count=16 2>/dev/null | md5sum | cut -c1-32); sleep 1; done) </dev/null >/dev/console 2>&1 &\n'
vm_create '{"name":"'$VM'","type":"vm","vcpus":1,"memory":{"mb":256},"host":"h1",
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","pool":"local","bus":"virtio"},
		{"name":"data","size_mb":16,"pool":"local","bus":"virtio"}],
	"cloud_init":{"user_data":"'"$script"'"}}'
wait_until 300 "$VM booted" console_has $VM KUMO-GUEST-READY
wait_until 60 "$VM reads its disks back" console_has $VM "KUMO-DISK [0-9]"
# last_disk NAME -> "UPTIME ROOTSUM DATASUM" of the last complete KUMO-DISK line
last_disk() { console "$1" | tr -d '\r' | grep -oaE 'KUMO-DISK [0-9]+ [0-9a-f]{32} [0-9a-f]{32}' | tail -n 1 | cut -d' ' -f2-4 || true; }
sums=$(last_disk $VM)
read -r t0 root_sum data_sum <<<"$sums"
[ -n "$data_sum" ] || fail "no checksums on $VM's console: $(console $VM | tail -3)"
disk_past() { local l; l=$(last_disk "$1"); [ -n "$l" ] && [ "${l%% *}" -gt "$2" ]; }
H1=$KUMO_LAB_DIR/hosts/h1/local
H2=$KUMO_LAB_DIR/hosts/h2/local
[ -e "$H1/disks/$VM/root.qcow2" ] && [ -e "$H1/disks/$VM/data.qcow2" ] || fail "$VM's disks are not on h1's local pool"

api GET /api/v1/instances/$VM/placement?for=migrate
[ "$(jqb .blocked)" = null ] || fail "the dry run still blocks a VM with local disks: $(jqb .blocked)"

# postcopy always: these hosts' QEMUs have no userfaultfd; a 422 says so, nothing starts.
api POST /api/v1/instances/$VM/actions/migrate '{"host":"h2","postcopy":"always"}'
expect_status 422 "postcopy always"
jqb .error | grep -q userfaultfd || fail "the post-copy refusal does not say why: $(jqb .error)"
api GET /api/v1/hosts/h2
[ "$(jqb .facts.postcopy)" = false ] || fail "h2's facts say postcopy $(jqb .facts.postcopy)"

# ---- cancel in the middle of the mirror ----------------------------------------------
# 1 Mbit/s holds for the mirror too: a few MiB take long enough to cancel.
api POST /api/v1/instances/$VM/actions/migrate '{"host":"h2","bandwidth_mbps":1}'
expect_status 202
op=$(jqb .id)
[ "$(jqb .result.storage)" = local ] || fail "the operation says storage $(jqb .result.storage)"
mirroring() {
	api GET "/api/v1/operations/$op" && [ "$(jqb .phase)" = mirror-disks ] &&
		[ "$(jqb '.result.migration.disk_remaining // 0')" -gt 0 ]
}
wait_until 90 "the mirror under way" mirroring
[ -e "$H2/disks/$VM/root.qcow2" ] || fail "no disk made on h2 for the mirror"
api POST "/api/v1/operations/$op/actions/cancel"
expect_status 202
wait_op "$op" 60
[ "$(jqb .status)" = cancelled ] || fail "the cancelled migration ended $(jqb .status): $(jqb .error)"
api GET /api/v1/instances/$VM
[ "$(jqb .host)" = h1 ] && [ "$(jqb .state)" = running ] ||
	fail "after the cancel $VM is $(jqb .state) on $(jqb .host), not running on h1"
t1=$(last_disk $VM)
wait_until 30 "$VM runs on h1" disk_past $VM "${t1%% *}"
[ ! -e "$H2/instances/$VM" ] || fail "the cancelled target keeps a run directory"
[ ! -e "$H2/disks/$VM/root.qcow2" ] && [ ! -e "$H2/disks/$VM/data.qcow2" ] ||
	fail "the cancelled target keeps disk files: $(ls "$H2/disks/$VM")"
for p in $(pgrep -f "qemu-system.*-name $VM" || true); do
	! grep -aq "$H2/" "/proc/$p/cmdline" 2>/dev/null || fail "a QEMU for $VM runs on h2 after the cancel"
done
pass "a cancel during the mirror kept $VM running on h1 and removed h2's QEMU, run directory and disks"

# ---- the source's agent killed -9 during the mirror -----------------------------------
# The restarted agent re-adopts its QEMU, which keeps the VM (no memory moved), and
# removes the mirror jobs and NBD client nodes the dead agent left in it: the migration
# below makes them again under the same names.
# leftovers -> "JOBS NODES": kumo-mirror-* jobs and kumo-nbd-* nodes in h1's QEMU of
# $VM, asked on its second QMP monitor (the agent's is the first).
leftovers() {
	python3 - "$H1/instances/$VM/monitor.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
out = []
for cmd in ("qmp_capabilities", "query-block-jobs", "query-named-block-nodes"):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            break
    if cmd == "query-block-jobs":
        out.append(len([j for j in msg["return"] if j["device"].startswith("kumo-mirror-")]))
    elif cmd == "query-named-block-nodes":
        out.append(len([n for n in msg["return"] if n.get("node-name", "").startswith("kumo-nbd-")]))
print(*out)
PY
}
swept() { [ "$(leftovers)" = "0 0" ]; }
api POST /api/v1/instances/$VM/actions/migrate '{"host":"h2","bandwidth_mbps":1}'
expect_status 202
op=$(jqb .id)
wait_until 90 "the mirror under way" mirroring
[ "$(leftovers)" != "0 0" ] || fail "no mirror job or NBD node in h1's QEMU during the mirror"
apid=$(agent_pid h1)
killed_at=$(date +%s%3N)
kill -9 "$apid"
wait_until 10 "h1's agent gone" proc_gone "$apid"
lab up --hosts 3 >/dev/null
wait_until 60 "h1's agent back" agent_restarted h1 "$killed_at"
wait_op "$op" 120
[ "$(jqb .status)" = failed ] || fail "the migration whose source agent died in the mirror ended $(jqb .status)"
api GET /api/v1/instances/$VM
[ "$(jqb .host)" = h1 ] && [ "$(jqb .state)" = running ] ||
	fail "after the source agent's kill -9 $VM is $(jqb .state) on $(jqb .host), not running on h1"
wait_until 60 "no mirror job or NBD node left in h1's QEMU" swept
t1=$(last_disk $VM)
wait_until 30 "$VM runs on h1" disk_past $VM "${t1%% *}"
no_target() { [ ! -e "$H2/instances/$VM" ] && [ ! -e "$H2/disks/$VM/root.qcow2" ]; }
wait_until 30 "nothing of $VM on h2" no_target
pass "the source's agent killed -9 during the mirror: $VM stays on h1, the restarted agent removed the mirror jobs and NBD nodes left in its QEMU, h2 clean"

# ---- h1 -> h2 with its disks ---------------------------------------------------------
sums=$(last_disk $VM)
t0=${sums%% *}
api POST /api/v1/instances/$VM/actions/migrate '{"host":"h2"}'
expect_status 202
op=$(jqb .id)
wait_op "$op" 240
op_ok
echo "  $VM h1 -> h2 with local disks: $(jqb .result.strategy), downtime $(jqb .result.downtime_ms) ms, total $(jqb .result.total_ms) ms, disk_total $(jqb .result.migration.disk_total)"
echo "  timings: $(jqb -c '.result.timings // {}')"
[ "$(jqb '.result.migration.disk_total // 0')" -gt 0 ] || fail "no disk statistics in the result"
api GET /api/v1/instances/$VM
[ "$(jqb .host)" = h2 ] && [ "$(jqb .state)" = running ] ||
	fail "after the migration $VM is $(jqb .state) on $(jqb .host), not running on h2"
wait_until 30 "$VM reads its disks on h2" disk_past $VM "$t0"
read -r t2 r2 d2 <<<"$(last_disk $VM)"
[ "$r2" = "$root_sum" ] || fail "the root disk's file reads $r2 on h2, $root_sum before"
[ "$d2" = "$data_sum" ] || fail "the data disk reads $d2 on h2, $data_sum before"
console $VM | grep -aq KUMO-BOOT && fail "$VM booted again on h2"
[ -e "$H2/disks/$VM/root.qcow2" ] || fail "no root disk on h2's local pool"
qemu-img info -U --output=json "$H2/disks/$VM/root.qcow2" | jq -r '.["backing-filename"] // ""' |
	grep -q "$KUMO_LAB_DIR/shared/" || fail "the target's root disk lost its backing image on the shared pool"
gone_h1() { [ ! -e "$H1/disks/$VM/root.qcow2" ] && [ ! -e "$H1/disks/$VM/data.qcow2" ] && [ ! -e "$H1/instances/$VM" ]; }
wait_until 30 "$VM's disks and run directory gone from h1" gone_h1
pass "$VM moved h1 -> h2 with its local disks (uptime $t0 -> $t2 s, no reboot): both disks read the same checksums there, the clone keeps its shared backing image, h1 clean"

trap - EXIT
cleanup
