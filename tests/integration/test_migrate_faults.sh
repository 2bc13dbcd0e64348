#!/bin/bash
# Live migration faults (issue 13 item 7), each in the middle of the copy of an idle
# VM slowed down by bandwidth_mbps: the controller killed -9 (after its restart the
# migration settles: it finishes on the target or stays on the source), the source's
# agent killed -9 (its QEMU finishes the copy alone; the restarted agent follows it and
# removes its stale copy, the controller switches over), the target's agent killed -9
# (the restarted agent drops the incoming QEMU it lost; the VM runs on at its source);
# and a container's cold move with the controller killed -9 while the source stops it
# (it is settled too: it runs on exactly one host, the database agreeing).
# After each: the VM runs on exactly one host (QEMU processes by -name), the database
# says that host, the guest kept its uptime (no reboot), and the other host holds no
# QEMU, run directory or tap of it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

NET=mfnet
VM=mf1
CT=mfct
cleanup() {
	local n
	for n in $VM $CT; do
		api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true
		for _ in $(seq 100); do
			api GET "/api/v1/instances/$n" >/dev/null 2>&1 || true
			[ "$STATUS" = 404 ] && break
			sleep 0.2
		done
	done
	net_delete $NET
}
cleanup
trap cleanup EXIT

# The guest prints its uptime (whole seconds) every second: a reboot starts it again.
ticker='#!/bin/sh\n(while :; do echo KUMO-TICK $(cut -d. -f1 /proc/uptime); sleep 1; done) </dev/null >/dev/console 2>&1 &\n'
api POST /api/v1/networks '{"name":"'$NET'","mode":"nat","cidr":"10.78.0.0/24"}'
expect_status 201 "create $NET"
vm_create '{"name":"'$VM'","type":"vm","vcpus":1,"memory":{"mb":256},"host":"h1",
	"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio"}],
	"nics":[{"network":"'$NET'","model":"virtio"}],
	"cloud_init":{"user_data":"'"$ticker"'"}}'
IFNAME=$(nic_field $VM 0 .ifname)
wait_until 150 "$VM booted" console_has $VM KUMO-GUEST-READY
wait_until 30 "$VM ticks" console_has $VM KUMO-TICK

host_of() { api GET "/api/v1/instances/$1" && jqb .host; }
last_tick() { console "$1" | awk '/KUMO-TICK/ { v = $2 + 0 } END { print v + 0 }'; }
tick_past() { [ "$(last_tick "$1")" -gt "$2" ]; }
# qemu_hosts NAME: the lab host of each QEMU process started with -name NAME.
qemu_hosts() {
	local p
	for p in /proc/[0-9]*; do
		{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "^[^ ]*qemu-system[^ ]* -name $1 " || continue
		tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -o "$KUMO_LAB_DIR/hosts/h[0-9]*/" | head -1 |
			sed 's|.*/hosts/\(h[0-9]*\)/|\1|'
	done
	return 0
}
# stale HOST: what of $VM is left on HOST (QEMU, run directory, tap); empty when none.
stale() {
	qemu_hosts $VM | grep -qx "$1" && echo "qemu on $1"
	[ -e "$KUMO_LAB_DIR/hosts/$1/local/instances/$VM" ] && echo "run directory on $1"
	ip -n "$(host_ns "$1")" link show "$IFNAME" >/dev/null 2>&1 && echo "tap $IFNAME on $1"
	return 0
}
clean_on() { [ -z "$(stale "$1")" ]; }
on_one_host() { [ "$(qemu_hosts $VM | sort -u | wc -l)" = 1 ] && [ "$(qemu_hosts $VM | wc -l)" = 1 ]; }
running_on() { api GET "/api/v1/instances/$VM" && [ "$(jqb .host)" = "$1" ] && [ "$(jqb .state)" = running ]; }
copying() { api GET "/api/v1/operations/$1" && [ "$(jqb '.result.migration.ram_transferred // 0')" -gt 0 ]; }

# settled WHERE OTHER T0 WHAT: the end state every case must reach.
settled() {
	local where=$1 other=$2 t0=$3
	wait_until 60 "$VM running on $where in the database" running_on "$where"
	wait_until 60 "nothing of $VM left on $other" clean_on "$other"
	on_one_host || fail "$4: $VM has QEMUs on: $(qemu_hosts $VM | tr '\n' ' ')"
	[ "$(qemu_hosts $VM)" = "$where" ] || fail "$4: $VM's QEMU is on $(qemu_hosts $VM), the database says $where"
	local end=$((SECONDS + 30))
	until tick_past $VM "$t0"; do
		[ $SECONDS -lt $end ] ||
			fail "$4: $VM does not tick on $where past $t0; its console ends: $(console $VM | tail -c 400 | tr -c '[:print:]\n' '.')"
		sleep 1
	done
	console $VM | grep -aq KUMO-BOOT && fail "$4: $VM booted again: $(console $VM | grep -a KUMO-BOOT)"
	console $VM | grep -aEq 'Kernel panic|Oops|BUG:|general protection' &&
		fail "$4: $VM's kernel broke after the move: $(console $VM | grep -aE 'Kernel panic|Oops|BUG:|general protection' | head -3)"
	wait_until 10 "no migration credentials left in $VM's QEMU on $where" no_migration_client_creds "$where" $VM
	ls /tmp/kumo-migtls-* >/dev/null 2>&1 && fail "$4: certificate files are left: $(ls -d /tmp/kumo-migtls-*)"
	ls -d "$KUMO_LAB_DIR"/hosts/h*/local/instances/*/migrate-tls >/dev/null 2>&1 &&
		fail "$4: a target's certificate directory is left: $(ls -d "$KUMO_LAB_DIR"/hosts/h*/local/instances/*/migrate-tls)"
	return 0
}

# kill_agent HOST: kill -9 HOST's agent, bring it back, wait for its heartbeats.
kill_agent() {
	local apid killed_at
	apid=$(agent_pid "$1")
	killed_at=$(date +%s%3N)
	kill -9 "$apid"
	wait_until 10 "the agent of $1 gone" proc_gone "$apid"
	lab up --hosts 3 >/dev/null
	wait_until 60 "$1's agent back" agent_restarted "$1" "$killed_at"
}

# ---- the controller killed -9 mid-copy -----------------------------------------------------
# 32 Mbit/s: the idle guest's ~100 MiB take ~27 s, many times what a kill and restart take
# (~1.5 s, more beside a CPU hog), so the fault still lands mid-copy.
t0=$(last_tick $VM)
api POST /api/v1/instances/$VM/actions/migrate '{"host":"h2","bandwidth_mbps":32}'
expect_status 202
op=$(jqb .id)
wait_until 60 "the copy under way" copying "$op"
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 10 "the controller gone" proc_gone "$cpid"
lab up --hosts 3 >/dev/null
wait_until 60 "3 hosts online after the restart" all_online 3
wait_op "$op" 240
status=$(jqb .status)
case "$status" in
succeeded) where=h2 other=h1 ;;
failed) where=h1 other=h2 ;;
*) fail "after the controller's kill -9 the migration ended $status: $(jqb .error)" ;;
esac
recovery=$(jqb .result.recovery)
[ "$recovery" != null ] || fail "the operation does not say it was settled after a restart"
settled $where $other "$t0" "controller kill -9"
pass "controller kill -9 mid-copy: the migration settled ($status: $recovery); $VM runs on $where alone, no reboot, $other clean"

# ---- the source's agent killed -9 mid-copy ---------------------------------------------------
src=$where
dst=h1
[ "$src" = h1 ] && dst=h2
t0=$(last_tick $VM)
api POST /api/v1/instances/$VM/actions/migrate '{"host":"'$dst'","bandwidth_mbps":32}'
expect_status 202
op=$(jqb .id)
wait_until 60 "the copy under way" copying "$op"
kill_agent "$src"
wait_op "$op" 240
[ "$(jqb .status)" = succeeded ] ||
	fail "the migration whose source agent died ended $(jqb .status): $(jqb .error)"
settled "$dst" "$src" "$t0" "source agent kill -9"
pass "source agent kill -9 mid-copy: its QEMU finished the copy, the restarted agent removed its stale copy, $VM runs on $dst alone, no reboot, $src clean"

# ---- the target's agent killed -9 mid-copy ---------------------------------------------------
src=$dst
dst=h1
[ "$src" = h1 ] && dst=h2
t0=$(last_tick $VM)
# 2 Mbit/s: the copy is still under way when the target's agent is back.
api POST /api/v1/instances/$VM/actions/migrate '{"host":"'$dst'","bandwidth_mbps":2}'
expect_status 202
op=$(jqb .id)
wait_until 60 "the copy under way" copying "$op"
kill_agent "$dst"
wait_op "$op" 240
[ "$(jqb .status)" = failed ] ||
	fail "the migration whose target agent died ended $(jqb .status), not failed: $(jqb .error)"
why=$(jqb .error)
settled "$src" "$dst" "$t0" "target agent kill -9"
pass "target agent kill -9 mid-copy: the migration failed ($why), $VM runs on at $src alone, no reboot, $dst clean"
# ---- a container's cold move, the controller killed -9 during stop-source -------------------
# Its init (sleep) ignores SIGTERM: the stop takes the 10 s grace, time for the kill.
ct_create "$(net_ct_json $CT h3 '[{"network":"'$NET'"}]')"
ct_running_on() { # ct_running_on HOST: runc runs it on HOST
	runc --root "$KUMO_LAB_DIR/hosts/$1/local/runc" state $CT 2>/dev/null | jq -e '.status == "running"' >/dev/null
}
api POST /api/v1/instances/$CT/actions/migrate '{"host":"h1"}'
expect_status 202
op=$(jqb .id)
stopping() { api GET "/api/v1/operations/$op" && [ "$(jqb .phase)" = stop-source ]; }
wait_until 30 "$CT being stopped on h3" stopping
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 10 "the controller gone" proc_gone "$cpid"
lab up --hosts 3 >/dev/null
wait_until 60 "3 hosts online after the restart" all_online 3
wait_op "$op" 120
status=$(jqb .status)
recovery=$(jqb .result.recovery)
[ "$recovery" != null ] || fail "the container's move does not say it was settled: $(jqb -c .result)"
case "$status" in
succeeded) where=h1 other=h3 ;;
failed) where=h3 other=h1 ;;
*) fail "the container's move ended $status after the controller's kill -9: $(jqb .error)" ;;
esac
ct_in_db() { api GET "/api/v1/instances/$CT" && [ "$(jqb .host)" = "$1" ] && [ "$(jqb .state)" = running ]; }
wait_until 30 "$CT running on $where in the database" ct_in_db $where
wait_until 30 "$CT running on $where" ct_running_on $where
ct_gone() { ! runc --root "$KUMO_LAB_DIR/hosts/$1/local/runc" state $CT >/dev/null 2>&1; }
wait_until 30 "nothing of $CT on $other" ct_gone $other
no_archive() { ! ls "$KUMO_LAB_DIR/shared/migrations/"*.tar >/dev/null 2>&1; }
wait_until 30 "no migration archive left on the shared pool" no_archive
pass "a container's cold move with the controller killed -9 mid-stop settled ($status: $recovery); $CT runs on $where alone, the database agreeing"

trap - EXIT
cleanup
