#!/bin/bash
# HA maintenance hand-off across controller restarts (its state is kept in
# ha_handoffs and ha_released): the controller is killed -9 while it hands an HA
# container off (the clean stop under way on the old host; a container's 10 s grace,
# since sleep as pid 1 ignores SIGTERM); the restarted controller goes on from the saved
# step, the host reaches maintenance and the container runs exactly once throughout
# (sampled every 100 ms). Then, with the lease released, a second kill -9: the host
# stays released, its agent is not re-armed and it is not judged failed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_ha.sh"

CT=hr-ct
HOST=h3
SAMPLES=$(mktemp /tmp/kt-hr-samples.XXXXXX)
SAMPLER=""
cleanup() {
	[ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
	lab up --hosts 3 >/dev/null 2>&1 || true
	api PATCH /api/v1/hosts/$HOST '{"maintenance":false}' >/dev/null 2>&1 || true
	instances_delete $CT
	rm -f "$SAMPLES"
}
trap cleanup EXIT
db=$KUMO_LAB_DIR/controller/kumo.db
clog=$KUMO_LAB_DIR/logs/controller.log

controller_kill() {
	local cpid
	cpid=$(controller_pid)
	kill -9 "$cpid"
	wait_until 10 "the controller gone" proc_gone "$cpid"
	lab up --hosts 3 >/dev/null
	wait_until 60 "3 hosts online after the restart" all_online 3
}

wait_until 60 "3 hosts online" all_online 3
api POST /api/v1/instances '{"name":"'$CT'","type":"container","image":"busybox:latest",
	"command":["sleep","3600"],"host":"'$HOST'","ha":{"enabled":true}}'
expect_status 202
wait_op "$(jqb .id)" 180
op_ok
[ "$(ct_count $CT)" = 1 ] || fail "the sampler does not see $CT"
(while :; do
	echo "$(date +%s%3N) 0 $(ct_count $CT)"
	sleep 0.1
done >>"$SAMPLES") &
SAMPLER=$!

# ---- killed during the hand-off's stop ----
stop_running() {
	[ "$(sqlite3 "$db" "SELECT count(*) FROM operations WHERE kind = 'ha-handoff' AND
		target = 'ha-handoff/$HOST/$CT' AND status IN ('pending', 'running')")" -ge 1 ]
}
log_at=$(wc -l <"$clog")
api PATCH /api/v1/hosts/$HOST '{"maintenance":true}'
expect_status 200
wait_until 60 "$CT's hand-off stop under way" stop_running
controller_kill
tail -n +"$log_at" "$clog" | grep -q "instance $CT: hand-off from $HOST goes on after the restart (step stop" ||
	fail "the restarted controller did not go on with $CT's hand-off from its saved step"
wait_until 120 "$CT running elsewhere" running_elsewhere $CT $HOST
wait_until 60 "$HOST's lease released (HA state maintenance)" ha_state_is $HOST maintenance
[ "$(sqlite3 "$db" "SELECT count(*) FROM operations WHERE kind = 'ha-handoff' AND
	target = 'ha-handoff/$HOST/$CT' AND status = 'succeeded'")" = 2 ] ||
	fail "$CT was not stopped, then dropped, on $HOST (the stop resumed after the restart)"
[ "$(sqlite3 "$db" "SELECT count(*) FROM ha_handoffs")" = 0 ] || fail "a finished hand-off is still saved"
worst=$(ha_worst "$SAMPLES")
[ "$worst" -le 1 ] || fail "$CT ran twice: $(awk '$3 > 1' "$SAMPLES" | head -n 3)"
[ "$(ct_count $CT)" = 1 ] || fail "$(ct_count $CT) copies of $CT after the hand-off"
pass "controller killed during the hand-off: it went on from its step; $HOST in maintenance, $CT ran once ($(wc -l <"$SAMPLES") samples)"

# ---- killed with the lease released: it stays released ----
alog=$KUMO_LAB_DIR/logs/$HOST.log
agent_at=$(wc -l <"$alog")
log_at=$(wc -l <"$clog")
controller_kill
tail -n +"$log_at" "$clog" | grep -q "host $HOST: its lease stays released after the restart" ||
	fail "the restarted controller forgot that $HOST's lease is released"
ha_state_is $HOST maintenance || fail "$HOST's HA state is $(jqb .ha.state) after the restart, not maintenance"
# A view without the release would have the agent re-arm within a renewal or two.
end=$((SECONDS + 5))
while [ $SECONDS -lt $end ]; do
	ha_state_is $HOST maintenance || fail "$HOST left maintenance after the restart: $(jqb .ha.state)"
	sleep 0.5
done
! tail -n +"$agent_at" "$alog" | grep -q "lease: re-armed" || fail "$HOST's agent re-armed its lease after the restart"
[ "$(ct_count $CT)" = 1 ] && running_elsewhere $CT $HOST || fail "$CT is not running once elsewhere"
pass "controller killed with $HOST released: still released, not re-armed; $CT runs once"
