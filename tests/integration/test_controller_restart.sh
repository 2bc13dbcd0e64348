#!/bin/bash
# The controller killed with -9 and restarted keeps every host, token and operation;
# hosts come back online without re-joining.
. "$(dirname "$0")/lib.sh"

wait_until 60 "3 hosts online" all_online 3
# Something acknowledged just before the kill must survive it.
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"restart-survivor"}'
expect_status 201
survivor=$(jqb .token)
api PATCH /api/v1/hosts/h3 '{"maintenance":true,"labels":{"zone":"b"}}'
expect_status 200
api POST /api/v1/hosts/h1/actions/probe
expect_status 202
op=$(jqb .id)

snap() {
	api GET /api/v1/hosts
	jqb '[.hosts[] | {name, id, maintenance, labels, joined_at}]'
	api GET /api/v1/tokens
	jqb '[.tokens[] | {id, kind, role, name, used_by}]'
	api GET "/api/v1/operations?limit=1000"
	jqb '[.operations[] | .id] | sort'
}
before=$(snap)
cluster=$(api GET /api/v1 && jqb .cluster_id)

cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 10 "the controller gone" proc_gone "$cpid"
lab up --hosts 3 >/dev/null
wait_until 30 "3 hosts online after restart" all_online 3
after=$(snap)
[ "$before" = "$after" ] || fail "state changed across a kill -9: $(diff <(echo "$before") <(echo "$after"))"
api GET /api/v1
[ "$(jqb .cluster_id)" = "$cluster" ] || fail "cluster id changed"
api GET /api/v1 "" "$survivor"
expect_status 200
api GET "/api/v1/operations/$op?wait=30"
[ "$(jqb .status)" = succeeded ] || fail "the probe operation did not finish after the restart"
api GET /api/v1/hosts/h3
[ "$(jqb .maintenance)" = true ] && [ "$(jqb .labels.zone)" = b ] || fail "host h3 lost its maintenance flag or labels"
pass "after kill -9: hosts, tokens, operations, labels and cluster id intact; hosts online"

# An operation interrupted mid-way is resumed: a probe queued while the host's agent
# is stopped finishes after the controller restarts.
pid=$(agent_pid h2)
api POST /api/v1/hosts/h2/actions/probe
expect_status 202
op2=$(jqb .id)
kill -STOP "$pid"
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 10 "the controller gone" proc_gone "$cpid"
lab up --hosts 3 >/dev/null
kill -CONT "$pid"
api GET "/api/v1/operations/$op2?wait=30"
[ "$(jqb .status)" = succeeded ] || fail "an interrupted operation was not resumed: $(jqb .status) $(jqb .error)"
pass "an operation in flight at the kill is resumed after restart"

api PATCH /api/v1/hosts/h3 '{"maintenance":false,"labels":{}}'
expect_status 200
