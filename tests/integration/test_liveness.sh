#!/bin/bash
# An agent killed goes offline after the missed heartbeats (an event), comes back
# online when restarted (an event), as the same host: never a duplicate.
. "$(dirname "$0")/lib.sh"

wait_until 60 "3 hosts online" all_online 3
api GET /api/v1/hosts/h2
id_before=$(jqb .id)
joined_before=$(jqb .joined_at)
db="$KUMO_LAB_DIR/controller/kumo.db"
last_event=$(sqlite3 "$db" "SELECT coalesce(max(id), 0) FROM events")

kill -9 "$(agent_pid h2)"
wait_until 30 "h2 offline" host_is h2 offline
api GET /api/v1/hosts
[ "$(jqb '[.hosts[] | select(.state == "online")] | length')" = 2 ] || fail "other hosts should stay online"
[ "$(sqlite3 "$db" "SELECT count(*) FROM events WHERE id > $last_event AND type = 'host-offline'
	AND json_extract(data, '\$.name') = 'h2'")" = 1 ] || fail "no host-offline event for h2"
pass "killed agent's host went offline, with a host-offline event"

lab up --hosts 3 >/dev/null
wait_until 30 "h2 online" host_is h2 online
api GET /api/v1/hosts
[ "$(jqb '.hosts | length')" = 3 ] || fail "restarted agent made a duplicate host"
api GET /api/v1/hosts/h2
[ "$(jqb .id)" = "$id_before" ] || fail "h2 came back with a new id"
[ "$(jqb .joined_at)" = "$joined_before" ] || fail "h2 joined again instead of resuming"
[ "$(sqlite3 "$db" "SELECT count(*) FROM events WHERE id > $last_event AND type = 'host-online'
	AND json_extract(data, '\$.name') = 'h2'")" = 1 ] || fail "no host-online event for h2"
[ "$(sqlite3 "$db" "SELECT count(*) FROM events WHERE id > $last_event AND type = 'host-joined'")" = 0 ] ||
	fail "restarted agent joined again"
pass "restarted agent is the same host, online again, no duplicate, no re-join"

# The metrics show hosts by state and heartbeat ages.
[ "$(metric 'kumo_hosts{state="online"}')" = 3 ] || fail "metrics do not show 3 online hosts"
age=$(metric 'kumo_host_heartbeat_age_seconds{host="h2"}')
awk -v a="$age" 'BEGIN { exit !(a >= 0 && a < 5) }' || fail "h2 heartbeat age in metrics is $age"
pass "metrics show hosts by state and heartbeat age"
