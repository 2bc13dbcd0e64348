#!/bin/bash
# Server-Sent Events: changes arrive as events, filterable by type, resumable with
# Last-Event-ID.
. "$(dirname "$0")/lib.sh"

out=/tmp/kt-events.$$
trap 'rm -f $out $out.2 $out.3' EXIT
curl -sSN --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" --max-time 90 \
	"$KUMO_URL/api/v1/events" >"$out" &
all=$!
curl -sSN --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" --max-time 90 \
	"$KUMO_URL/api/v1/events?type=host-updated" >"$out.2" &
filtered=$!
trap 'kill $all $filtered 2>/dev/null || true; rm -f $out $out.2 $out.3' EXIT
# A stream opens with a comment line: both are subscribed once they have it.
subscribed() { grep -q '^: kumo events' "$out" && grep -q '^: kumo events' "$out.2"; }
wait_until 30 "both event streams open" subscribed
api PATCH /api/v1/hosts/h1 '{"labels":{"rack":"r7"}}'
expect_status 200
api POST /api/v1/tokens '{"kind":"join","name":"events-test"}'
expect_status 201
# Both changes reach the streams (the filtered one gets the second one's event, if
# it wrongly does, in the same pass as the first stream).
arrived() { grep -q "^event: token-created" "$out" && grep -q "^event: host-updated" "$out.2"; }
wait_until 30 "the events in the streams" arrived
kill $all $filtered 2>/dev/null || true
wait || true

grep -q "^event: host-updated" "$out" || fail "no host-updated event in the stream: $(cat $out)"
grep -q "^event: token-created" "$out" || fail "no token-created event in the stream"
# Events reach viewers: a token's event names its id and kind, never its host or role.
tok=$(grep "^data: " "$out" | grep token-created | sed 's/^data: //' | head -1)
jq -e '.data | has("id") and has("kind") and (has("name") | not) and (has("role") | not)' <<<"$tok" >/dev/null ||
	fail "the token-created event carries more than id and kind: $tok"
grep "^data: " "$out" | grep host-updated | sed 's/^data: //' | jq -e '.data.labels.rack == "r7"' >/dev/null ||
	fail "host-updated event does not carry the new labels"
grep -q "^event: host-updated" "$out.2" || fail "filtered stream missed host-updated"
if grep -q "^event: token-created" "$out.2"; then fail "filtered stream carried token-created"; fi
pass "events stream shows changes as they happen, and ?type= filters them"

# Resume after the host-updated event: the token-created one comes again.
id=$(grep -B1 "^event: host-updated" "$out" | head -1 | sed 's/^id: //')
curl -sSN --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -H "Last-Event-ID: $id" \
	--max-time 2 "$KUMO_URL/api/v1/events" >"$out.3" || true
grep -q "^event: token-created" "$out.3" || fail "Last-Event-ID resume did not replay later events"
if grep -q "^id: $id\$" "$out.3"; then fail "Last-Event-ID resume replayed the event it was given"; fi
pass "Last-Event-ID resumes the stream after the given event"

api PATCH /api/v1/hosts/h1 '{"labels":{}}'
expect_status 200
