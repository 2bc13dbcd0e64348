#!/bin/bash
# Backup schedules: PUT a calendar ("*:*", every minute), a store and keep_last on an
# instance; the schedule survives a controller kill -9; the controller then starts the
# backup on time as an ordinary backup operation and prunes after it, keeping exactly
# keep_last. Bad calendars 400, unknown instance or store 404; GET and DELETE.
. "$(dirname "$0")/lib.sh"

bs=bss$$
cleanup() {
	api DELETE /api/v1/instances/bks1/backup-schedule >/dev/null 2>&1 || true
	instances_delete bks1
	api GET "/api/v1/backups?instance=bks1" >/dev/null 2>&1 || true
	for id in $(jqb -r '.backups[].id' 2>/dev/null); do api DELETE "/api/v1/backups/$id" >/dev/null 2>&1 || true; done
	api DELETE "/api/v1/backup-stores/$bs" >/dev/null 2>&1 || true
}
trap cleanup EXIT

api POST /api/v1/backup-stores '{"name":"'$bs'"}'
expect_status 201 "store create"
vm_create '{"name":"bks1","type":"vm","memory":{"mb":128},"disks":[{"name":"root","size_mb":16}],"start":false}'
manual() {
	api POST /api/v1/instances/bks1/backups '{"store":"'$bs'"}'
	expect_status 202 "a manual backup"
	wait_op "$(jqb .id)" 300
	op_ok
	jqb .result.backup.id
}
b1=$(manual)
b2=$(manual)

api PUT /api/v1/instances/bks1/backup-schedule '{"calendar":"25:00","store":"'$bs'"}'
expect_status 400 "an hour 25"
grep -q calendar <<<"$(jqb .field)$(jqb .error)" || fail "the 400 does not name the calendar: $BODY"
api PUT /api/v1/instances/bks1/backup-schedule '{"calendar":"*:*","store":"nosuch"}'
expect_status 404 "an unknown store"
api PUT /api/v1/instances/nosuch/backup-schedule '{"calendar":"*:*"}'
expect_status 404 "an unknown instance"
api GET /api/v1/instances/bks1/backup-schedule
expect_status 404 "no schedule yet"

t0=$(($(date +%s) * 1000))
api PUT /api/v1/instances/bks1/backup-schedule '{"calendar":"*:*","store":"'$bs'","keep_last":2}'
expect_status 200 "schedule set"
[ "$(jqb .calendar)" = '*:*' ] && [ "$(jqb .keep_last)" = 2 ] && [ "$(jqb .mode)" = auto ] || fail "the schedule: $BODY"
next=$(jqb .next_at)
[ "$next" -gt "$t0" ] && [ "$next" -le $((t0 + 61000)) ] || fail "next_at $next is not within a minute of $t0"
api GET /api/v1/backup-schedules
jqb -e '[.backup_schedules[].instance] | index("bks1") != null' >/dev/null || fail "the schedules list: $BODY"
pass "schedule set: every minute, keep_last 2; bad calendar 400, unknown store/instance 404"

# The schedule is the database's: a controller killed and restarted runs it.
cpid=$(controller_pid)
kill -9 "$cpid"
wait_until 10 "the controller gone" proc_gone "$cpid"
lab up --hosts 3 >/dev/null
wait_until 60 "3 hosts online after the restart" all_online 3
api GET /api/v1/instances/bks1/backup-schedule
expect_status 200 "the schedule after a controller restart"

scheduled_done() {
	api GET /api/v1/instances/bks1/backup-schedule
	local op
	op=$(jqb '.last_operation // empty')
	[ -n "$op" ] || return 1
	api GET "/api/v1/operations/$op"
	[ "$(jqb .status)" = succeeded ]
}
wait_until 150 "a scheduled backup succeeded" scheduled_done
[ "$(jqb .kind)" = instance-backup ] || fail "the schedule's operation is $(jqb .kind)"
sb=$(jqb .result.backup.id)
pruned() {
	api GET "/api/v1/backups?instance=bks1"
	[ "$(jqb '[.backups[] | select(.store == "'$bs'" and .status == "succeeded")] | length')" = 2 ]
}
wait_until 30 "the scheduled prune keeps 2" pruned
ids=$(jqb -c '[.backups[] | select(.store == "'$bs'" and .status == "succeeded") | .id] | sort')
[ "$ids" = "$(jq -nc --arg a "$b2" --arg b "$sb" '[$a,$b] | sort')" ] || fail "kept $ids, not [$b2, $sb]"
api GET "/api/v1/backups/$b1"
expect_status 404 "the oldest backup pruned"
pass "after a controller restart the schedule ran a backup ($sb) on time and pruned to keep_last 2"

api DELETE /api/v1/instances/bks1/backup-schedule
expect_status 204 "schedule delete"
api GET /api/v1/instances/bks1/backup-schedule
expect_status 404 "the deleted schedule"
api DELETE /api/v1/instances/bks1/backup-schedule
expect_status 404 "a second delete"
pass "schedule GET/DELETE"
