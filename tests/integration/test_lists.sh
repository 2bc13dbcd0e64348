#!/bin/bash
# Lists that scale: pages with an opaque cursor that never repeat or skip an item,
# filters, field selection, bad paging input refused by name, and ETag / If-None-Match.
. "$(dirname "$0")/lib.sh"

NETS="lst-a lst-b lst-c lst-d lst-e lst-f lst-g"
cleanup() {
	for c in lst-ct1 lst-ct2; do api DELETE "/api/v1/instances/$c?force=1" || true; done
	for n in $NETS; do api DELETE "/api/v1/networks/$n" || true; done
}
trap cleanup EXIT
cleanup

i=0
for n in $NETS; do
	i=$((i + 1))
	api POST /api/v1/networks "{\"name\":\"$n\",\"mode\":\"host-only\",\"cidr\":\"10.9$i.0.0/24\"}"
	expect_status 201 "create network $n"
done

# all_pages PATH KEY LIMIT -> every item's name over all pages into $PAGED (one per
# line), and the number of pages into PAGES.
all_pages() {
	local path=$1 key=$2 limit=$3 after="" sep
	PAGES=0
	PAGED=""
	while :; do
		sep='?'
		[[ $path == *\?* ]] && sep='&'
		api GET "$path${sep}limit=$limit${after:+&after=$after}"
		expect_status 200 "GET $path page $PAGES"
		PAGES=$((PAGES + 1))
		[ "$(jqb ".$key | length")" -le "$limit" ] || fail "$path: a page holds more than limit=$limit"
		PAGED+=$(jqb ".$key[].name")$'\n'
		after=$(jqb '.next // empty')
		[ -n "$after" ] || break
		[ $PAGES -lt 100 ] || fail "$path: more than 100 pages"
	done
}

# Networks in pages of 3: every one exactly once, in name order, over ceil(n/3) pages.
api GET "/api/v1/networks?limit=1000"
whole=$(jqb '.networks[].name')
[ "$(jqb .next)" = null ] || fail "a page holding everything has a next cursor"
all_pages /api/v1/networks networks 3
paged=$(sed '/^$/d' <<<"$PAGED")
[ "$paged" = "$whole" ] || fail "paging networks by 3 gave a different list than one page:
$paged
---
$whole"
[ "$(sort -u <<<"$paged" | wc -l)" = "$(wc -l <<<"$paged")" ] || fail "an item appeared twice across pages"
[ "$paged" = "$(sort <<<"$paged")" ] || fail "pages are not in name order"
count=$(wc -l <<<"$whole")
[ "$PAGES" = $(((count + 2) / 3)) ] || fail "$count networks took $PAGES pages of 3"
pass "networks page by 3 with a cursor: $count items over $PAGES pages, none repeated or skipped"

# An item deleted between pages shifts nothing: the cursor is a key, not an offset.
api GET "/api/v1/networks?limit=2"
first=$(jqb '.networks[0].name')
cursor=$(jqb .next)
api DELETE "/api/v1/networks/$first"
expect_status 204 "delete $first"
api GET "/api/v1/networks?limit=2&after=$cursor"
expect_status 200
second_page=$(jqb -c '[.networks[].name]')
# Page 2 still starts after page 1's last item (an offset would now skip one).
expected=$(jq -R . <<<"$whole" | jq -sc '.[2:4]')
[ "$second_page" = "$expected" ] || fail "after deleting $first, page 2 is $second_page, want $expected"
pass "deleting an item between pages shifts nothing"

# Fields: only those asked for.
api GET "/api/v1/networks?fields=name,cidr&limit=2"
expect_status 200
[ "$(jqb -c '[.networks[] | keys] | unique')" = '[["cidr","name"]]' ] ||
	fail "fields=name,cidr gave keys $(jqb -c '[.networks[] | keys] | unique')"

# Bad paging input: 400 naming the parameter, for every list.
for path in /api/v1/networks /api/v1/hosts /api/v1/instances /api/v1/images /api/v1/tokens /api/v1/operations; do
	api GET "$path?limit=0"
	expect_status 400 "$path?limit=0"
	[ "$(jqb .field)" = limit ] || fail "$path?limit=0 names field $(jqb .field)"
	api GET "$path?after=zz"
	expect_status 400 "$path?after=zz"
	[ "$(jqb .field)" = after ] || fail "$path?after=zz names field $(jqb .field)"
	api GET "$path?fields=Name;x"
	expect_status 400 "$path?fields=Name;x"
	api GET "$path?fields="
	expect_status 400 "$path?fields= (empty)"
	api GET "$path?limit=1"
	expect_status 200 "$path?limit=1"
done
pass "limit, after and fields are checked on every list (400 naming the parameter)"

# Tokens and operations page too (newest operations first, no overlap).
for r in 1 2 3; do
	api POST /api/v1/tokens "{\"kind\":\"api\",\"role\":\"viewer\",\"name\":\"lst-$r\"}"
	expect_status 201
done
ids=""
after=""
while :; do
	api GET "/api/v1/tokens?limit=2${after:+&after=$after}"
	ids="$ids $(jqb '.tokens[].id' | tr '\n' ' ')"
	after=$(jqb '.next // empty')
	[ -n "$after" ] || break
done
api GET "/api/v1/tokens?limit=1000"
[ "$(echo $ids)" = "$(jqb '.tokens[].id' | tr '\n' ' ' | xargs)" ] || fail "token pages ($ids) differ from the whole list"
for h in h1 h2 h3; do # at least three operations
	api POST "/api/v1/hosts/$h/actions/probe"
	expect_status 202 "probe $h"
done
api GET "/api/v1/operations?limit=2"
[ "$(jqb .next)" != null ] || fail "two operations of three or more have no next page"
p1=$(jqb -c '[.operations[].id]')
api GET "/api/v1/operations?limit=2&after=$(jqb .next)"
p2=$(jqb -c '[.operations[].id]')
[ "$(jq -n --argjson a "$p1" --argjson b "$p2" '[$a[] | select(. as $x | $b | index($x))] | length')" = 0 ] ||
	fail "operation pages overlap: $p1 $p2"
pass "tokens and operations page without overlap"

# Instance filters: type, label, host, state, network.
api POST /api/v1/instances '{"name":"lst-ct1","type":"container","image":"busybox:latest","command":["sleep","3600"],"labels":{"tier":"web"},"nics":[{"network":"lst-b"}]}'
expect_status 202 "create lst-ct1"
wait_op "$(jqb .id)" 180
op_ok
api POST /api/v1/instances '{"name":"lst-ct2","type":"container","image":"busybox:latest","command":["sleep","3600"],"labels":{"tier":"db"}}'
expect_status 202 "create lst-ct2"
wait_op "$(jqb .id)" 180
op_ok
api GET "/api/v1/instances/lst-ct1"
host1=$(jqb .host)
api GET "/api/v1/instances?label=tier=web"
[ "$(jqb -c '[.instances[].name]')" = '["lst-ct1"]' ] || fail "label=tier=web gave $(jqb -c '[.instances[].name]')"
api GET "/api/v1/instances?network=lst-b"
[ "$(jqb -c '[.instances[].name]')" = '["lst-ct1"]' ] || fail "network=lst-b gave $(jqb -c '[.instances[].name]')"
api GET "/api/v1/instances?type=container&state=running&fields=name"
jqb '.instances[].name' | grep -qx lst-ct2 || fail "type=container&state=running lacks lst-ct2"
[ "$(jqb -c '[.instances[] | keys] | unique')" = '[["name"]]' ] || fail "fields=name kept other fields"
api GET "/api/v1/instances?type=vm"
jqb '.instances[].name' | grep -q '^lst-' && fail "type=vm listed a container"
api GET "/api/v1/instances?host=$host1"
jqb '.instances[].host' | grep -qvx "$host1" && fail "host=$host1 listed an instance elsewhere"
jqb '.instances[].name' | grep -qx lst-ct1 || fail "host=$host1 lacks lst-ct1"
api GET "/api/v1/instances?label=bad%20key=x"
expect_status 400 "a bad label key"
[ "$(jqb .field)" = label ] || fail "a bad label filter names field $(jqb .field)"
api GET "/api/v1/instances?type=nope"
expect_status 400 "type=nope"
pass "instances filter by label, network, type, state and host, and select fields"

# ETag: the same answer has the same tag; If-None-Match gets 304 without a body; a
# change gives a new tag.
api GET /api/v1/networks
etag=$(grep -i '^etag:' <<<"$HEADERS" | tr -d '\r' | cut -d' ' -f2)
[ -n "$etag" ] || fail "GET /api/v1/networks has no ETag"
code=$(curl -sS --cacert "$KUMO_CACERT" -H "Authorization: Bearer $ADMIN" -H "If-None-Match: $etag" \
	-o /tmp/kt-304.$$ -w '%{http_code}' "$KUMO_URL/api/v1/networks")
[ "$code" = 304 ] || fail "If-None-Match with the current ETag answered $code"
[ ! -s /tmp/kt-304.$$ ] || fail "a 304 carried a body"
rm -f /tmp/kt-304.$$
api DELETE /api/v1/networks/lst-g
api GET /api/v1/networks
etag2=$(grep -i '^etag:' <<<"$HEADERS" | tr -d '\r' | cut -d' ' -f2)
[ "$etag2" != "$etag" ] || fail "the ETag did not change when the list did"
pass "ETag and If-None-Match: 304 while nothing changed, a new tag after a change"
