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

for mode in replay:replay tamper:tampered unknown-host:unknown-host stale:replay wrong-dir:malformed; do
	m=${mode%%:*} reason=${mode#*:}
	before=$(rejected "$reason")
	send "$m"
	wait_until 5 "$m counted as $reason" rejected_more "$reason" "$before"
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
