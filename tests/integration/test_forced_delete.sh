#!/bin/bash
# Drift between the controller and its hosts, settled:
#  - a container created on one host answers a ping from another host right after its
#    create operation succeeded (the operation waits for the network on both), even when
#    a peer host was slow to apply it;
#  - a container force-deleted while its host's agent is dead becomes a tombstone (state
#    deleting, name and fixed address kept, the delete operation pending); when the agent
#    comes back it removes the container (no process, no files) and only then are the
#    record and the address freed;
#  - a container the controller lost (its row deleted while the controller was stopped)
#    shows in its host's "unmanaged" list, is adopted (refused while its address is
#    taken), then, forgotten again, is destroyed through the API.
# shellcheck disable=SC2016 # jq programs in single quotes
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

NET=fd-net
CIDR=10.71.0.0/24
A=fd-a # h1 .10
B=fd-b # h3 .11, pinged from A right after its create
C=fd-c # h2 .20, force-deleted while h2 is offline
D=fd-d # h1, wants .20 (or .30)
U=fd-u # h3 .30, lost and found
E=fd-e # h2 .12, created while h1's agent is stopped
V=fd-vm # h2 .25, a VM force-deleted while h2 is offline
INSTANCES="$A $B $C $D $U $E $V"
DB="$KUMO_LAB_DIR/controller/kumo.db"

remove_all() {
	for n in $INSTANCES; do ct_delete "$n"; done
	net_delete $NET
}
SLOW=0 # 1 while the controller runs with offline_after=60
cleanup() {
	set +e
	kill -CONT "$(agent_pid h1)" 2>/dev/null
	if [ "$SLOW" = 1 ]; then
		pid=$(controller_pid)
		kill -TERM "$pid" 2>/dev/null
		wait_until 30 "the controller stopped" bash -c "! kill -0 $pid 2>/dev/null"
	fi
	lab up --hosts 3 >/dev/null 2>&1 # agents or controller left stopped by a failure
	wait_until 60 "3 hosts online" all_online 3
	remove_all
}
trap cleanup EXIT
remove_all # leftovers of an interrupted run

wait_until 60 "3 hosts online" all_online 3
ct_json() { net_ct_json "$1" "$2" "[{\"network\":\"$NET\",\"address\":\"$3\"}]"; }
runc_pid() { runc --root "$KUMO_LAB_DIR/hosts/$1/local/runc" state "$2" 2>/dev/null | jq -r '.pid // empty'; }
ct_dir() { printf '%s/hosts/%s/local/containers/%s' "$KUMO_LAB_DIR" "$1" "$2"; }
sql() { sqlite3 -cmd '.timeout 5000' "$DB" "$@"; }
unmanaged_has() {
	api GET "/api/v1/hosts/$1"
	[ "$(jqb --arg n "$2" '[.unmanaged[] | select(.name == $n)] | length')" = 1 ]
}
unmanaged_lacks() {
	api GET "/api/v1/hosts/$1"
	[ "$(jqb --arg n "$2" '[.unmanaged[] | select(.name == $n)] | length')" = 0 ]
}
address_owner() {
	api GET "/api/v1/networks/$NET/addresses"
	jqb --arg a "$1" '[.addresses[] | select(.address == $a) | .instance] | join(",")'
}
gone_from_host() { # HOST NAME PID: no runc state, no process, no bundle
	[ -z "$(runc_pid "$1" "$2")" ] && [ ! -e "/proc/$3" ] && [ ! -e "$(ct_dir "$1" "$2")" ]
}

api POST /api/v1/networks "{\"name\":\"$NET\",\"mode\":\"nat\",\"cidr\":\"$CIDR\"}"
expect_status 201 "create $NET"

# ---- running means reachable ---------------------------------------------------------------
ct_create "$(ct_json $A h1 10.71.0.10)"
ct_create "$(ct_json $B h3 10.71.0.11)"
# One ping, no retry: the create's success says the network is in place on h1 and h3.
ct_ping $A 10.71.0.11 || fail "$B (h3) does not answer $A (h1) right after its create succeeded: $(jqb .output)"
pass "a container on h3 answers a ping from h1 right after its create operation succeeded"

# A peer that cannot apply the network yet holds the create: h1's agent is stopped (the
# controller restarted to wait 60 s before calling a silent host offline, so h1 stays an
# online peer meanwhile); the create of a container on h2 waits for h1, and succeeds once
# h1 has applied the state naming h2 - then one ping goes through at once.
controller_restart() { # [CONFIG]: a graceful restart, with extra controller config
	local pid
	pid=$(controller_pid)
	kill -TERM "$pid"
	wait_until 30 "the controller stopped" bash -c "! kill -0 $pid 2>/dev/null"
	KUMO_LAB_CONTROLLER_SET="${1:-}" lab up --hosts 3 >/dev/null
	wait_until 60 "3 hosts online after the restart" all_online 3
}
op_phase_is() {
	api GET "/api/v1/operations/$1"
	[ "$(jqb .phase)" = "$2" ]
}
controller_restart offline_after=60
SLOW=1
kill -STOP "$(agent_pid h1)"
api POST /api/v1/instances "$(ct_json $E h2 10.71.0.12)"
expect_status 202 "create $E"
e_op=$(jqb .id)
wait_until 60 "$E's create waiting for the network" op_phase_is "$e_op" "waiting for the network"
[ "$(jqb .status)" = running ] || fail "$E's create is $(jqb .status) while h1 cannot apply the network"
host_is h1 online || fail "h1 went offline: the controller's offline_after did not apply"
kill -CONT "$(agent_pid h1)"
wait_op "$e_op" 120
op_ok
ct_ping $A 10.71.0.12 || fail "$E (h2) does not answer $A (h1) right after its create succeeded: $(jqb .output)"
controller_restart
SLOW=0
pass "a create waits (running, 'waiting for the network') while a peer host has not applied the network, then $E answers at once"

# ---- forced delete while the host is offline: a tombstone ----------------------------------
ct_create "$(ct_json $C h2 10.71.0.20)"
cpid=$(runc_pid h2 $C)
[ -n "$cpid" ] && [ -e "/proc/$cpid" ] || fail "no process for $C on h2"
vm_create '{"name":"'$V'","type":"vm","host":"h2","vcpus":1,"memory":{"mb":128},
	"disks":[{"name":"root","image":"'$TEST_IMAGE'"}],
	"nics":[{"network":"'$NET'","address":"10.71.0.25"}]}'
api GET "/api/v1/instances/$V"
vpid=$(jqb .pid)
[ -n "$vpid" ] && [ "$vpid" != null ] && [ -e "/proc/$vpid" ] || fail "no QEMU process for $V on h2"
ls "$KUMO_LAB_DIR/shared/disks/$V" 2>/dev/null | grep -q . || fail "$V has no disk on the shared pool"
kill -9 "$(agent_pid h2)"
wait_until 60 "h2 offline" host_is h2 offline
api DELETE "/api/v1/instances/$V?force=1"
expect_status 202 "forced delete of $V while h2 is offline"
vm_op=$(jqb .id)
api DELETE "/api/v1/instances/$C?force=1"
expect_status 202 "forced delete of $C while h2 is offline"
del_op=$(jqb .id)
[ "$(jqb .kind)" = instance-delete ] && [ "$(jqb .status)" = pending ] ||
	fail "the forced delete is not a pending instance-delete"
[[ "$(jqb .phase)" == *"waiting for host h2"* ]] || fail "the delete's phase does not say it waits for h2"
api GET "/api/v1/instances/$C"
expect_status 200 "the tombstone is still shown"
[ "$(jqb .state)" = deleting ] && [ "$(jqb .tombstone)" = true ] || fail "$C is not a deleting tombstone"
api GET /api/v1/instances
[ "$(jqb --arg n $C '[.instances[] | select(.name == $n and .tombstone)] | length')" = 1 ] ||
	fail "the list does not show $C as a tombstone"
[ "$(address_owner 10.71.0.20)" = $C ] || fail "10.71.0.20 is not held by the tombstone $C"
api POST /api/v1/instances "$(ct_json $D h1 10.71.0.20)"
expect_status 409 "a new container must not get the tombstone's address"
api POST /api/v1/instances "$(ct_json $C h1 10.71.0.21)"
expect_status 409 "the tombstone's name must stay taken"
api POST "/api/v1/instances/$C/actions/start"
expect_status 409 "a tombstone takes no action"
[ -e "/proc/$cpid" ] || fail "$C's process went while its host's agent was dead"
api GET "/api/v1/instances/$V"
[ "$(jqb .state)" = deleting ] && [ "$(jqb .tombstone)" = true ] || fail "$V is not a deleting tombstone"
[ "$(address_owner 10.71.0.25)" = $V ] || fail "10.71.0.25 is not held by the tombstone $V"
api POST /api/v1/instances "$(ct_json $D h1 10.71.0.25)"
expect_status 409 "a new container must not get the VM tombstone's address"
pass "forced delete on offline h2 (a container and a VM): 202, tombstones (deleting), names and addresses kept"

lab up --hosts 3 >/dev/null
wait_until 60 "h2 online" host_is h2 online
wait_op "$del_op" 120
op_ok
wait_until 30 "$C gone from h2" gone_from_host h2 $C "$cpid"
wait_op "$vm_op" 120
op_ok
vm_gone() { [ ! -e "/proc/$vpid" ] && ! ls "$KUMO_LAB_DIR/shared/disks/$V" 2>/dev/null | grep -q .; }
wait_until 30 "$V's QEMU and disks gone" vm_gone
api GET "/api/v1/instances/$V"
expect_status 404 "the VM's record goes once the host removed it"
[ -z "$(address_owner 10.71.0.25)" ] || fail "10.71.0.25 is still held after the VM's delete"
api GET "/api/v1/instances/$C"
expect_status 404 "the record goes once the host removed it"
[ -z "$(address_owner 10.71.0.20)" ] || fail "10.71.0.20 is still held after the delete"
unmanaged_lacks h2 $C || fail "h2 shows $C as unmanaged"
ct_create "$(ct_json $D h1 10.71.0.20)"
ct_delete $D
pass "h2 back: its agent removed $C and $V (no process, no files or disks), then the records and addresses went"

# ---- unmanaged: lost, shown, adopted ------------------------------------------------------
ct_create "$(ct_json $U h3 10.71.0.30)"
upid=$(runc_pid h3 $U)
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 30 "the controller gone" bash -c "! kill -0 $cpid 2>/dev/null"
sql "PRAGMA foreign_keys = ON; DELETE FROM instances WHERE name = '$U'"
lab up --hosts 3 >/dev/null
wait_until 60 "3 hosts online after restart" all_online 3
wait_until 30 "$U unmanaged on h3" unmanaged_has h3 $U
api GET /api/v1/hosts/h3
[ "$(jqb --arg n $U '.unmanaged[] | select(.name == $n) | .type + " " + .state')" = "container running" ] ||
	fail "h3's unmanaged entry for $U is not a running container"
api POST /api/v1/hosts/h3/unmanaged/fd-nothing/actions/adopt
expect_status 404 "adopting what the host does not run"
# Its address went with its record: a new container takes it; adopting must refuse.
ct_create "$(ct_json $D h1 10.71.0.30)"
api POST "/api/v1/hosts/h3/unmanaged/$U/actions/adopt"
expect_status 409 "adopting $U while its address belongs to $D"
api GET "/api/v1/instances/$U"
expect_status 404 "a refused adoption records nothing"
ct_delete $D
api POST "/api/v1/hosts/h3/unmanaged/$U/actions/adopt"
expect_status 201 "adopt $U"
[ "$(jqb .host)" = h3 ] && [ "$(jqb .state)" = running ] || fail "adopted $U is not running on h3"
[ "$(address_owner 10.71.0.30)" = $U ] || fail "the adopted $U does not hold 10.71.0.30"
unmanaged_lacks h3 $U || fail "$U is still unmanaged after its adoption"
api POST "/api/v1/hosts/h3/unmanaged/$U/actions/adopt"
expect_status 404 "adopting twice"
pass "a lost container shows in h3's unmanaged list; adoption refused while its address is taken, then done"

# ---- unmanaged: forgotten, destroyed --------------------------------------------------------
kill -9 "$(agent_pid h3)"
wait_until 60 "h3 offline" host_is h3 offline
api DELETE "/api/v1/instances/$U?force=1"
expect_status 202 "tombstone $U"
api DELETE "/api/v1/instances/$U?force=1"
expect_status 204 "a second forced delete forgets the tombstone"
api GET "/api/v1/instances/$U"
expect_status 404 "the forgotten $U"
lab up --hosts 3 >/dev/null
wait_until 60 "h3 online" host_is h3 online
wait_until 30 "$U unmanaged on h3" unmanaged_has h3 $U
api POST "/api/v1/hosts/h3/unmanaged/$U/actions/destroy"
expect_status 202 "destroy $U"
[ "$(jqb .kind)" = unmanaged-destroy ] || fail "the destroy is not an unmanaged-destroy operation"
wait_op "$(jqb .id)" 120
op_ok
wait_until 30 "$U gone from h3" gone_from_host h3 $U "$upid"
wait_until 30 "$U no longer unmanaged" unmanaged_lacks h3 $U
pass "forgotten with a second forced delete, $U came back unmanaged and was destroyed (no process, no files)"
