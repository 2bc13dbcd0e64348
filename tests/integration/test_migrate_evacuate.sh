#!/bin/bash
# Host drain: evacuating h1 puts it in maintenance and moves its running VMs live
# elsewhere, two at once, under one operation whose result says where each went and
# how, each VM to its own host (an instance migrating in counts on its target), one VM
# with its disk on the local pool (taken along), and the container cold.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

cleanup() {
	instances_delete ev1 ev2 evc
	api PATCH /api/v1/hosts/h1 '{"maintenance":false}' >/dev/null 2>&1 || true
}
cleanup # leftovers of an interrupted run
trap cleanup EXIT

# ev2's disk is on h1's local pool: it moves with the VM (an NBD mirror).
for n in ev1 ev2; do
	pool=shared
	[ $n = ev2 ] && pool=local
	vm_create '{"name":"'$n'","type":"vm","vcpus":1,"memory":{"mb":256},"host":"h1",
		"disks":[{"name":"root","image":"'$TEST_IMAGE'","bus":"virtio","pool":"'$pool'"}]}'
done
ct_create '{"name":"evc","type":"container","image":"busybox:latest","command":["sleep","3600"],"host":"h1"}'
for n in ev1 ev2; do wait_until 300 "$n booted" console_has $n KUMO-GUEST-READY; done

api POST /api/v1/hosts/h9/actions/evacuate
expect_status 404
api POST /api/v1/hosts/h1/actions/evacuate '{"parallel":0}'
expect_status 400
api GET /api/v1/hosts/h1
[ "$(jqb .maintenance)" = false ] || fail "a refused evacuation put h1 in maintenance"

api POST /api/v1/hosts/h1/actions/evacuate '{"parallel":2}'
expect_status 202
[ "$(jqb .kind)" = evacuate ] || fail "the operation is of kind $(jqb .kind)"
op=$(jqb .id)
api GET /api/v1/hosts/h1
[ "$(jqb .maintenance)" = true ] || fail "h1 is not in maintenance while it is evacuated"
wait_op "$op" 300
[ "$(jqb .status)" = succeeded ] || fail "the evacuation ended $(jqb .status): $(jqb .error) $(jqb -c .result.instances)"
for n in ev1 ev2 evc; do
	f=$(jqb --arg n $n '.result.instances[] | select(.name == $n)')
	[ "$(jq -r .fate <<<"$f")" = moved ] || fail "$n: $f"
	to=$(jq -r .host <<<"$f")
	[ "$to" != h1 ] && [ "$to" != null ] || fail "$n moved to '$to'"
	[ -n "$(jq -r '.how // empty' <<<"$f")" ] || fail "$n: no 'how' in $f"
	[ -n "$(jq -r '.operation // empty' <<<"$f")" ] || fail "$n: no operation in $f"
done
[ "$(jqb '.result.instances[] | select(.name == "evc") | .how')" = cold ] ||
	fail "evc did not move cold: $(jqb -c '.result.instances[] | select(.name == "evc")')"
# Two at once onto two empty hosts: the first one's target counts it while it moves in,
# so the second goes to the other host (the scheduler spreads).
[ "$(jqb '[.result.instances[] | select(.type == "vm") | .host] | unique | length')" = 2 ] ||
	fail "both VMs went to one host although the other had room: $(jqb -c '[.result.instances[] | {name, host}]')"
summary=$(jqb -c '[.result.instances[] | {name, fate, host, how}]')
for n in ev1 ev2; do
	api GET /api/v1/instances/$n
	[ "$(jqb .host)" != h1 ] && [ "$(jqb .state)" = running ] ||
		fail "$n is $(jqb .state) on $(jqb .host) after the evacuation"
done
api GET /api/v1/instances/ev2
ev2_host=$(jqb .host)
[ -e "$KUMO_LAB_DIR/hosts/$ev2_host/local/disks/ev2/root.qcow2" ] || fail "ev2's local disk is not on $ev2_host"
gone_h1() { [ ! -e "$KUMO_LAB_DIR/hosts/h1/local/disks/ev2/root.qcow2" ]; }
wait_until 30 "ev2's local disk gone from h1" gone_h1
api GET /api/v1/instances/evc
[ "$(jqb .host)" != h1 ] && [ "$(jqb .state)" = running ] || fail "evc is $(jqb .state) on $(jqb .host)"
pass "h1 evacuated into maintenance: $summary"
