#!/bin/bash
# The scheduler: anti-affinity spreads a group over hosts, pinning pins, a VM too big
# for any host is 422 with every host's reason, and nothing is created by a refusal.
. "$(dirname "$0")/lib.sh"

cleanup() { for n in aa1 aa2 aa3 aa4 pin1 off1; do api DELETE "/api/v1/instances/$n?force=1" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
count() { api GET /api/v1/instances; jqb '.instances | length'; }
before=$(count)

small='"type":"vm","vcpus":1,"memory":{"mb":64},"start":false,"disks":[{"name":"d","size_mb":16}]'
vm_create '{"name":"aa1",'"$small"',"anti_affinity":"web"}'
h1=$(jqb .result.placement.host)
vm_create '{"name":"aa2",'"$small"',"anti_affinity":"web"}'
h2=$(jqb .result.placement.host)
vm_create '{"name":"aa3",'"$small"',"anti_affinity":"web"}'
h3=$(jqb .result.placement.host)
[ "$h1" != "$h2" ] && [ "$h1" != "$h3" ] && [ "$h2" != "$h3" ] || fail "anti-affinity group placed on $h1 $h2 $h3"
api POST /api/v1/instances '{"name":"aa4",'"$small"',"anti_affinity":"web"}'
expect_status 422
[ "$(jqb '[.placement.rejected[] | select(.reason | test("anti-affinity group web"))] | length')" = 3 ] ||
	fail "422 does not give the anti-affinity reason for all 3 hosts"
pass "three VMs of one anti-affinity group on three hosts ($h1 $h2 $h3); a fourth is 422"

api POST /api/v1/instances '{"name":"big1","type":"vm","vcpus":200,"memory":{"mb":64}}'
expect_status 422
[ "$(jqb '.placement.rejected | length')" = 3 ] || fail "not every host rejected with a reason"
jqb '.placement.rejected[].reason' | grep -q "not enough CPU" || fail "no CPU reason"
api POST /api/v1/instances '{"name":"big2","type":"vm","vcpus":1,"memory":{"mb":1048576}}'
expect_status 422
jqb '.placement.rejected[].reason' | grep -q "not enough memory" || fail "no memory reason"
pass "VMs too big for any host get 422 with each host's reason"

vm_create '{"name":"pin1",'"$small"',"host":"h2"}'
[ "$(jqb .result.placement.host)" = h2 ] || fail "pinned VM not on h2"
[ "$(jqb '[.result.placement.rejected[] | select(.reason | test("pinned"))] | length')" = 2 ] || fail "other hosts not rejected as pinned"
api PATCH /api/v1/hosts/h3 '{"maintenance":true}'
api POST /api/v1/instances '{"name":"maint1",'"$small"',"host":"h3"}'
st=$STATUS
jqb '.placement.rejected[] | select(.host == "h3") | .reason' | grep -q maintenance || { api PATCH /api/v1/hosts/h3 '{"maintenance":false}'; fail "h3 not rejected for maintenance"; }
api PATCH /api/v1/hosts/h3 '{"maintenance":false}'
STATUS=$st
expect_status 422
api GET /api/v1/instances/maint1
expect_status 404
pass "pinning places on the pinned host; a host in maintenance takes nothing"

[ "$(count)" = $((before + 4)) ] || fail "refused creates left instances behind"

# An instance on an offline host: a plain delete is 503; ?force=1 makes a tombstone that
# the host removes when it comes back (a second ?force=1 would forget it: forced_delete).
vm_create '{"name":"off1",'"$small"',"host":"h3"}'
pid=$(agent_pid h3)
kill -STOP "$pid"
wait_until 30 "h3 offline" host_is h3 offline
api DELETE /api/v1/instances/off1
st=$STATUS
api DELETE "/api/v1/instances/off1?force=1"
st2=$STATUS
off_op=$(jqb '.id // empty' 2>/dev/null || true)
kill -CONT "$pid"
STATUS=$st
expect_status 503
STATUS=$st2
expect_status 202
wait_until 30 "h3 online again" host_is h3 online
wait_op "$off_op" 60
op_ok
api GET /api/v1/instances/off1
expect_status 404
pass "an instance on an offline host: delete is 503; with force a tombstone, removed when the host returns"
