#!/bin/bash
# Hosts join with single-use tokens and are listed online with the facts docs/architecture.md
# names; a used, unknown or expired join token gets a clear refusal.
. "$(dirname "$0")/lib.sh"

wait_until 60 "3 hosts online" all_online 3
api GET /api/v1/hosts
[ "$(jqb '.hosts | length')" = 3 ] || fail "expected 3 hosts"
[ "$(jqb '[.hosts[].name] | join(",")')" = "h1,h2,h3" ] || fail "hosts are not h1,h2,h3"
for h in h1 h2 h3; do
	api GET "/api/v1/hosts/$h"
	expect_status 200
	f() { jqb ".facts.$1"; }
	[ "$(f cpus)" -ge 1 ] || fail "$h: cpus fact missing"
	[ "$(f memory_mb)" -gt 0 ] || fail "$h: memory_mb fact missing"
	[ "$(f 'load | length')" = 3 ] || fail "$h: load fact missing"
	[ "$(f kernel)" = "$(uname -r)" ] || fail "$h: kernel fact wrong"
	[ "$(f kvm_usable)" = false ] || fail "$h: kvm_usable should be false here (KVM guests hang on these machines)"
	[ "$(f accel)" = tcg ] || fail "$h: accel should be tcg when KVM is not usable"
	[ "$(f net.vxlan)" = true ] || fail "$h: vxlan should be reported available"
	[ "$(f net.vlan_8021q)" = false ] || fail "$h: 802.1Q should be reported missing here"
	[ "$(f 'pools | map(.name) | sort | join(",")')" = "local,shared" ] || fail "$h: pools missing"
	[ "$(jqb .address)" = "tcp://$KUMO_TEST_LAB_SUBNET.$((10 + ${h#h})):7710" ] || fail "$h: wrong address $(jqb .address)"
	[ "$(jqb .heartbeat_age_ms)" -lt 5000 ] || fail "$h: heartbeat is old"
done
pass "3 hosts online with cpus, memory, load, kernel, KVM, network and pool facts"

# Each agent's key file is 0600 and its state dir private.
for h in h1 h2 h3; do
	[ "$(stat -c %a "$KUMO_LAB_DIR/hosts/$h/state/link.json")" = 600 ] || fail "$h: link.json is not 0600"
done

# Join tokens were consumed by the lab's joins.
api GET /api/v1/tokens
[ "$(jqb '[.tokens[] | select(.kind == "join" and .used_by == "h2")] | length')" -ge 1 ] ||
	fail "no join token is marked used by h2"

# Refusals: a used token, an unknown one, an expired one, a malformed one.
agent="$KUMO_BUILD_DIR/agentd/kumo-agentd"
tmp=$(mktemp -d)
apid=""
trap '[ -n "$apid" ] && kill $apid 2>/dev/null; rm -rf $tmp' EXIT
try_join() { # try_join TOKEN -> prints the agent's output, returns its status
	rm -rf "$tmp/state"
	printf '%s\n' "$1" >"$tmp/token"
	timeout 20 "$agent" --controller "$KUMO_LINK_ADDRESS:$KUMO_JOIN_PORT" --name intruder \
		--listen 127.0.0.1:17799 --state-dir "$tmp/state" --join-token-file "$tmp/token" \
		--shared-pool "$tmp" --local-pool "$tmp" 2>&1
}
api POST /api/v1/tokens '{"kind":"join"}'
tok=$(jqb .token)
sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "UPDATE tokens SET used_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000, used_by = 'someone' WHERE id = $(jqb .id)"
out=$(try_join "$tok") && fail "agent joined with a used token"
grep -q "join refused: join token was already used" <<<"$out" || fail "no clear refusal for a used token: $out"
out=$(try_join "kumo_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA") && fail "agent joined with an unknown token"
grep -q "join refused: join token is not known" <<<"$out" || fail "no clear refusal for an unknown token: $out"
api POST /api/v1/tokens '{"kind":"join","expires_in":1}'
tok=$(jqb .token)
expires_at=$(jqb .expires_at)
[ "$expires_at" != null ] || fail "a join token with expires_in has no expires_at: $BODY"
past_expiry() { [ "$(date +%s%3N)" -gt "$expires_at" ]; }
wait_until 10 "the join token's expiry passed" past_expiry
out=$(try_join "$tok") && fail "agent joined with an expired token"
grep -q "join refused: join token has expired" <<<"$out" || fail "no clear refusal for an expired token: $out"
api GET /api/v1/hosts/intruder
expect_status 404
pass "used, unknown and expired join tokens are refused clearly; no host created"

# The token never crosses the network: every byte the agent sends while it joins
# (nanomsg writes with sendmsg) holds the proof, never the token.
api POST /api/v1/tokens '{"kind":"join"}'
tok=$(jqb .token)
sqlite3 "$KUMO_LAB_DIR/controller/kumo.db" "UPDATE tokens SET used_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000, used_by = 'someone' WHERE id = $(jqb .id)"
rm -rf "$tmp/state"
printf '%s\n' "$tok" >"$tmp/token"
strace -f -qq -s 65536 -e trace=sendmsg,sendto,write -o "$tmp/trace" \
	timeout 20 "$agent" --controller "$KUMO_LINK_ADDRESS:$KUMO_JOIN_PORT" --name intruder \
	--listen 127.0.0.1:17799 --state-dir "$tmp/state" --join-token-file "$tmp/token" \
	--shared-pool "$tmp" --local-pool "$tmp" >"$tmp/out" 2>&1 && fail "agent joined with a used token"
grep -q "already used" "$tmp/out" || fail "the traced join was not refused for its token: $(cat "$tmp/out")"
grep -q '\\"proof\\":' "$tmp/trace" || grep -q '"proof":' "$tmp/trace" ||
	fail "the trace shows no join request (nothing to judge): $(head -c 2000 "$tmp/trace")"
grep -qF "${tok#kumo_}" "$tmp/trace" && fail "the join token went out on the wire"
pass "the join request carries a proof of the token, never the token"

# A good token joins once; the same token a second time is refused.
api POST /api/v1/tokens '{"kind":"join"}'
tok=$(jqb .token)
rm -rf "$tmp/state"
printf '%s\n' "$tok" >"$tmp/token"
"$agent" --controller "$KUMO_LINK_ADDRESS:$KUMO_JOIN_PORT" --name h9 --listen 127.0.0.1:17798 --accel kvm \
	--state-dir "$tmp/state" --join-token-file "$tmp/token" --shared-pool "$tmp" --local-pool "$tmp" \
	>"$tmp/h9.log" 2>&1 &
apid=$!
wait_until 30 "h9 online" host_is h9 online
# --accel overrides the probe: h9's guests are to run with KVM whatever it found.
api GET /api/v1/hosts/h9
[ "$(jqb .facts.accel)" = kvm ] && [ "$(jqb .facts.accel_mode)" = kvm ] || fail "--accel kvm not reported: $(jqb .facts.accel)"
kill "$apid"
wait "$apid" || true
apid=""
mv "$tmp/state" "$tmp/state.h9"
out=$(try_join "$tok") && fail "a join token worked twice"
grep -q "already used" <<<"$out" || fail "second use of a join token not refused clearly: $out"
wait_until 30 "h9 offline" host_is h9 offline
api DELETE /api/v1/hosts/h9
expect_status 204
api GET /api/v1/hosts/h9
expect_status 404
pass "a join token works exactly once; an offline host can be deleted"
