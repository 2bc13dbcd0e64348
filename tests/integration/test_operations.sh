#!/bin/bash
# One real command end to end through the operations model: probe a host, watch the
# operation go pending -> running -> succeeded with progress, long-poll it, and see
# the agent's fresh facts land on the host.
. "$(dirname "$0")/lib.sh"

wait_until 60 "all hosts online" all_online 3

api POST /api/v1/hosts/h2/actions/probe
expect_status 202
op=$(jqb .id)
[ "$(jqb .kind)" = probe ] || fail "operation kind is not probe"
[ "$(jqb .target)" = hosts/h2 ] || fail "operation target is not hosts/h2"
case "$(jqb .status)" in pending | running) ;; *) fail "a new operation is $(jqb .status)" ;; esac

# Long poll: answers as soon as the operation is final, well before the 30 s wait.
start=$SECONDS
api GET "/api/v1/operations/$op?wait=30"
expect_status 200
[ "$(jqb .status)" = succeeded ] || fail "probe did not succeed"
[ $((SECONDS - start)) -lt 25 ] || fail "long poll did not return when the operation finished"
[ "$(jqb .progress)" = 100 ] || fail "finished operation progress is $(jqb .progress)"
[ "$(jqb '.result.facts.cpus')" -ge 1 ] || fail "probe result carries no facts"
[ "$(jqb '.result.facts.kvm_usable')" != null ] || fail "probe result has no kvm_usable fact"
pass "probe operation succeeded through a long poll, with facts in its result"

# The operation is listed, and filterable by status.
api GET "/api/v1/operations?status=succeeded&limit=1000"
jqb '.operations[].id' | grep -qx "$op" || fail "operation not in the succeeded list"
api GET "/api/v1/operations?status=failed"
if jqb '.operations[].id' | grep -qx "$op"; then fail "operation listed as failed"; fi

# Its progress went through the agent's phases: the event log shows them in order.
db="$KUMO_LAB_DIR/controller/kumo.db"
phases=$(sqlite3 "$db" "SELECT json_extract(data, '\$.status') || ':' || json_extract(data, '\$.progress')
	FROM events WHERE type LIKE 'operation-%' AND json_extract(data, '\$.id') = '$op' ORDER BY id")
echo "$phases" | head -1 | grep -q "^pending:0" || fail "first event is not pending: $phases"
echo "$phases" | grep -q "^running:[1-9]" || fail "no running progress event: $phases"
echo "$phases" | tail -1 | grep -q "^succeeded:100" || fail "last event is not succeeded: $phases"
pass "operation events went pending -> running with progress -> succeeded"

# A long poll on an operation that is already final returns at once; wait=0 too.
api GET "/api/v1/operations/$op?wait=0"
expect_status 200

# Probing an offline host is refused with 503 and creates no operation.
n_before=$(sqlite3 "$db" "SELECT count(*) FROM operations")
pid=$(cat "$KUMO_LAB_DIR/hosts/h3/agent.pid")
kill -STOP "$pid"
wait_until 30 "h3 offline" host_is h3 offline
api POST /api/v1/hosts/h3/actions/probe
kill -CONT "$pid"
expect_status 503
[ "$(sqlite3 "$db" "SELECT count(*) FROM operations")" = "$n_before" ] || fail "a refused probe created an operation"
wait_until 30 "h3 online again" host_is h3 online
pass "probe of an offline host is 503 and writes nothing"

api POST /api/v1/hosts/nosuch/actions/probe
expect_status 404
