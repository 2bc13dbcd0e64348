#!/bin/bash
# Each VM's QEMU runs under a uid of its own, owns its disk while it runs (0600) and sits
# in a cgroup of its own with the VM's limits; another VM's uid cannot open that disk,
# neither by path nor through /proc/PID/fd. At stop the disk goes back to root and the
# cgroup and uid are given back.
. "$(dirname "$0")/lib.sh"

A=iso-a B=iso-b
cleanup() {
	instances_delete $A $B
}
trap cleanup EXIT

for n in $A $B; do
	vm_create '{"name":"'$n'","type":"vm","host":"h1","vcpus":1,"memory":{"mb":128},
		"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio"}]}'
done
api GET /api/v1/hosts/h1
base=$(jqb .facts.qemu_uid_base)
[ "${base:-0}" -gt 0 ] || fail "h1 reports no qemu_uid_base: $(jqb .facts)"

declare -A pid uid disk
for n in $A $B; do
	api GET "/api/v1/instances/$n"
	pid[$n]=$(jqb .pid)
	[ "$(jqb .state)" = running ] && [ "${pid[$n]:-0}" -gt 0 ] || fail "$n is $(jqb .state), pid $(jqb .pid)"
	read -r r e s f < <(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/${pid[$n]}/status")
	[ "$r" = "$e" ] && [ "$r" = "$s" ] && [ "$r" = "$f" ] || fail "QEMU of $n has mixed uids $r $e $s $f"
	[ "$r" -ge "$base" ] || fail "QEMU of $n runs as uid $r, below the range from $base"
	uid[$n]=$r
	for fd in /proc/${pid[$n]}/fd/*; do
		t=$(readlink "$fd" || true)
		[[ $t == */disks/$n/root.qcow2 ]] && disk[$n]=$t && break
	done
	[ -n "${disk[$n]:-}" ] || fail "QEMU of $n has no disk file open"
	[ "$(stat -c '%u %a' "${disk[$n]}")" = "${uid[$n]} 600" ] ||
		fail "${disk[$n]} is $(stat -c '%u %a' "${disk[$n]}"), not ${uid[$n]} 600"
done
[ "${uid[$A]}" != "${uid[$B]}" ] || fail "both VMs' QEMUs run as uid ${uid[$A]}"
pass "QEMU of $A runs as uid ${uid[$A]}, of $B as ${uid[$B]}; each owns its disk, 0600"

# As B's uid (what a guest that broke into B's QEMU would be), A's disk stays closed.
as_b() { setpriv --reuid="${uid[$B]}" --regid="${uid[$B]}" --clear-groups -- "$@"; }
as_b dd if="${disk[$A]}" of=/dev/null bs=512 count=1 2>/dev/null &&
	fail "uid ${uid[$B]} ($B) read $A's disk ${disk[$A]} by path"
for fd in /proc/${pid[$A]}/fd/*; do
	[ "$(readlink "$fd")" = "${disk[$A]}" ] || continue
	as_b dd if="$fd" of=/dev/null bs=512 count=1 2>/dev/null &&
		fail "uid ${uid[$B]} ($B) read $A's disk through $fd"
done
as_b kill -0 "${pid[$A]}" 2>/dev/null && fail "uid ${uid[$B]} ($B) may signal $A's QEMU"
pass "as $B's uid, $A's disk opens neither by path nor through /proc/${pid[$A]}/fd, and $A's QEMU takes no signal"

# The cgroup: the VM's memory plus QEMU's overhead, vCPUs + 1 CPUs, a pids cap.
cg=$(sed -n 's/^[0-9]*:memory://p' "/proc/${pid[$A]}/cgroup")
[[ $cg == /kumo/*/$A ]] || fail "QEMU of $A is in memory cgroup '$cg', not its own"
limit=$(cat "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes")
[ "$limit" = $(((128 + 512) << 20)) ] || fail "memory limit of $A is $limit"
[ "$(cat "/sys/fs/cgroup/pids$cg/pids.max")" = 1024 ] || fail "pids.max of $A is $(cat "/sys/fs/cgroup/pids$cg/pids.max")"
[ "$(cat "/sys/fs/cgroup/cpu$cg/cpu.cfs_quota_us")" = 200000 ] || fail "cpu quota of $A is $(cat "/sys/fs/cgroup/cpu$cg/cpu.cfs_quota_us")"
grep -qx "${pid[$A]}" "/sys/fs/cgroup/pids$cg/cgroup.procs" || fail "QEMU of $A is not in its pids cgroup"
pass "QEMU of $A is in cgroup $cg: memory $((limit >> 20)) MiB, 2 CPUs of quota, 1024 pids"

# Stop: the disk back to root, the cgroup gone, the uid free for the next VM.
api POST "/api/v1/instances/$A/actions/stop" '{"timeout_s":5}'
expect_status 202
wait_op "$(jqb .id)" 120
op_ok
[ "$(stat -c %u "${disk[$A]}")" = 0 ] || fail "${disk[$A]} is still uid $(stat -c %u "${disk[$A]}") after stop"
[ ! -d "/sys/fs/cgroup/memory$cg" ] || fail "the memory cgroup $cg outlived $A's QEMU"
[ ! -e "/run/kumo-uids/${uid[$A]}" ] || fail "uid ${uid[$A]} is still claimed after $A stopped"
pass "stopped, $A's disk is root's again, its cgroup is gone and uid ${uid[$A]} is free"
