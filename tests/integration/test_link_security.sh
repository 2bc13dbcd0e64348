#!/bin/bash
# The agent link refuses forged, replayed, tampered and unknown-host messages, and
# logs and counts each; a correctly sealed message is accepted (the control).
. "$(dirname "$0")/lib.sh"

tool="$KUMO_BUILD_DIR/tests/kumo-linktool"
link="$KUMO_LAB_DIR/hosts/h1/state/link.json"
agent=$(api GET /api/v1/hosts/h1 && jqb .address)
log="$KUMO_LAB_DIR/logs/controller.log"

rejected() { metric "kumo_link_rejected_total{reason=\"$1\"}"; }
rejected_more() { [ "$(rejected "$1")" -gt "$2" ]; }
send() { "$tool" "$1" "$link" --agent "$agent" >/dev/null; }

# Replays are judged by the tool's own seq in the log: h1's agent shares its seq space
# and its heartbeats go on meanwhile. One the agent sealed after the tool's seal but
# that came first refuses the tool's first copy too ("seq S, last L", L the agent's;
# seen on a loaded machine), and one sealed before the tool's that comes after its
# accepted first copy is itself refused as reordered. "seq S, last S" can only mean
# the first copy was taken and the second refused; a try that lost the race to a
# heartbeat is made again.
replay_logged() { grep -q "rejected message: host h1: replayed or reordered message (seq $1, last $2)" "$log"; }
replay_seen() { grep -q "rejected message: host h1: replayed or reordered message (seq $1, last" "$log"; }
for try in 1 2 3 4 5; do
	before=$(rejected replay)
	seq=$("$tool" replay "$link" --agent "$agent" | sed -n 's/^seq //p')
	[ -n "$seq" ] || fail "linktool replay printed no seq"
	wait_until 20 "replay counted as replay" rejected_more replay "$before"
	wait_until 20 "the controller logged the refusal of seq $seq" replay_seen "$seq"
	replay_logged "$seq" "$seq" && break
	echo "test_link_security: a heartbeat of h1 came between the tool's seal and its first copy (try $try); again"
	[ "$try" = 5 ] && fail "replay: the first copy was refused in 5 tries: $(grep "seq $seq," "$log")"
done
before=$(rejected replay)
seq=$("$tool" stale "$link" --agent "$agent" | sed -n 's/^seq //p')
[ -n "$seq" ] || fail "linktool stale printed no seq"
wait_until 20 "stale counted as replay" rejected_more replay "$before"
wait_until 20 "the controller logged the refusal of stale seq $seq" replay_seen "$seq"
for mode in tamper:tampered unknown-host:unknown-host wrong-dir:malformed; do
	m=${mode%%:*} reason=${mode#*:}
	before=$(rejected "$reason")
	send "$m"
	wait_until 20 "$m counted as $reason" rejected_more "$reason" "$before"
	[ "$(rejected "$reason")" = $((before + 1)) ] || fail "$m: expected one rejection, got $(($(rejected "$reason") - before))"
done
grep -q "rejected message: message from unknown host 'nosuchhost'" "$log" || fail "unknown host not logged"
grep -q "rejected message: host h1: replayed or reordered" "$log" || fail "replay not logged"
grep -q "rejected message: host h1: message failed authentication" "$log" || fail "tampering not logged"
pass "replayed, stale, tampered, wrong-direction and unknown-host messages are rejected, logged and counted"

# Control: a validly sealed message with the host's key is accepted (no rejection),
# which shows the checks above are not refusing everything.
# Nothing to wait for when nothing happens: a tampered message sent after the valid
# one marks when the controller has read both.
total_before=$(metric 'kumo_link_rejected_total{reason="tampered"}')
send valid
send tamper
wait_until 10 "the tampered marker counted" rejected_more tampered "$total_before"
[ "$(metric 'kumo_link_rejected_total{reason="tampered"}')" = $((total_before + 1)) ] || fail "a valid message was rejected"
grep -q "host h1: rejected" "$log" && grep "host h1: rejected" "$log" | grep -q linktool && fail "valid message logged as rejected"
api GET /api/v1/hosts/h1
[ "$(jqb .state)" = online ] || fail "h1 not online after the valid message"
pass "a correctly sealed message is accepted"

# The agent refuses a replayed command: acked once, the replay gets no answer.
"$tool" agent-replay "$link" --agent "$agent" || fail "agent did not refuse a replayed command"
grep -q "rejected message" "$KUMO_LAB_DIR/logs/h1.log" || fail "agent did not log the replayed command"
pass "the agent acks a command once and drops its replay"

# A restart does not reopen the replay window: a message captured (and accepted) just
# before the controller restarts is refused after it, and a command the agent acked
# before its restart gets no answer after it. (Both still lie inside the 120 s window
# a seq may be old: only the windows' memory of the last seq refuses them.)
cap=$(mktemp /tmp/kt-link-cap.XXXXXX)
cmdcap=$(mktemp /tmp/kt-link-cmd.XXXXXX)
trap 'rm -f "$cap" "$cmdcap"' EXIT
"$tool" save "$link" --agent "$agent" --file "$cap" >/dev/null || fail "linktool save failed"
"$tool" agent-save "$link" --agent "$agent" --file "$cmdcap" || fail "the agent did not ack the probe to be captured"
log_lines=$(wc -l <"$log")
kill -9 "$(controller_pid)"
sleep 0.5
lab up --hosts 3 >/dev/null
wait_until 30 "3 hosts online after the controller's restart" all_online 3
before=$(rejected replay)
"$tool" resend "$link" --file "$cap" >/dev/null
wait_until 20 "the capture replayed after the restart counted as replay" rejected_more replay "$before"
tail -n +"$((log_lines + 1))" "$log" | grep -q "rejected message: host h1: replayed or reordered" ||
	fail "the replay after the restart is not logged"
pass "a message captured before the controller restarted is refused after it"

kill -9 "$(agent_pid h1)"
wait_until 30 "h1 offline" host_is h1 offline
lab up --hosts 3 >/dev/null
wait_until 30 "h1 online after its agent's restart" host_is h1 online
"$tool" agent-resend "$link" --agent "$agent" --file "$cmdcap" || fail "the restarted agent answered a command captured before its restart"
# A controller whose clock runs ahead seals commands later than the agent's restart
# time: the agent keeps such a seq (link.seq), so this capture stays refused too. The
# agent then refuses everything sealed before that seq: the test waits it out.
# On a loaded machine the restart can outlast a 30 s lead: then the same check again
# with a longer one (the wait after it is as long as the lead, so the short one first).
agent_back() { [ "$(agent_pid h1)" != "$old" ] && in_host h1 ss -Hltn "sport = :7710" | grep -q 7710; }
for ahead in 30 90 0; do
	[ "$ahead" != 0 ] || fail "the agent took over 90 s to restart: this check needs it back sooner"
	"$tool" agent-save "$link" --agent "$agent" --file "$cmdcap" --ahead "$ahead" || fail "the agent did not ack a probe sealed $ahead s ahead"
	ahead_until=$(($(date +%s) + ahead + 1))
	old=$(agent_pid h1)
	kill -9 "$old"
	lab up --hosts 3 >/dev/null
	wait_until 30 "h1's agent restarted and listening" agent_back
	[ "$(date +%s)" -lt "$ahead_until" ] && break
	echo "test_link_security: the agent's restart outlasted the probe's $ahead s lead; again with a longer one"
	wait_until 30 "h1 online" host_is h1 online
done
"$tool" agent-resend "$link" --agent "$agent" --file "$cmdcap" || fail "the restarted agent answered a command sealed ahead of its clock and captured before its restart"
ahead_past() { [ "$(date +%s)" -ge "$ahead_until" ]; }
wait_until 100 "the probe's seq is past (the controller's commands pass again)" ahead_past
wait_until 30 "h1 online" host_is h1 online
pass "a command captured before the agent restarted gets no answer after it, even one sealed ahead of the agent's clock"

# Join requests are rate-limited: a burst of requests claiming one name is cut short
# (dropped unanswered, counted as rate-limited), and real agents still join after it.
before=$(rejected rate-limited)
"$tool" join-flood "$link" --join "tcp://$KUMO_LINK_ADDRESS:$KUMO_JOIN_PORT" >/dev/null
wait_until 10 "join flood counted as rate-limited" rejected_more rate-limited "$before"
api GET /api/v1/hosts
[ "$(jqb '[.hosts[] | select(.state == "online")] | length')" = 3 ] || fail "hosts went offline during the join flood"
pass "a flood of join requests is rate-limited ($(($(rejected rate-limited) - before)) dropped)"
