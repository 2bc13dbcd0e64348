#!/bin/bash
# Networks as controller records: create, show the IPAM facts, list, addresses, live
# updates, delete; and bad input (overlap, host bits, VLAN 0/4095, gateway outside,
# unknown uplink host) refused with a clear 4xx that writes nothing.
. "$(dirname "$0")/lib.sh"

DB="$KUMO_LAB_DIR/controller/kumo.db"
nets() { sqlite3 "$DB" 'SELECT count(*) FROM networks'; }
snapshot() { sqlite3 "$DB" 'SELECT group_concat(name || mode || cidr || gateway || dhcp || dns || vlans || vni_base || mtu || uplinks) FROM networks; SELECT count(*) FROM addresses'; }
cleanup() {
	api DELETE "/api/v1/instances/net-mac1?force=1" || true
	for n in it-nat it-slash30 it-slash8 it-bridge it-host; do
		api DELETE "/api/v1/networks/$n" || true
	done
}
trap cleanup EXIT
cleanup

check() { # check STATUS FIELD METHOD PATH BODY [MESSAGE-PATTERN]
	local want=$1 field=$2 body=${5:-} pat=${6:-}
	api "$3" "$4" "$body"
	expect_status "$want" "$3 $4 ${body:0:80}"
	[ -n "$(jqb '.error // empty')" ] || fail "no error message for $3 $4"
	if [ -n "$field" ]; then
		[ "$(jqb .field)" = "$field" ] || fail "error for $3 $4 names field '$(jqb .field)', want '$field'"
	fi
	if [ -n "$pat" ]; then
		grep -q -- "$pat" <<<"$(jqb .error)" || fail "error '$(jqb .error)' does not say '$pat'"
	fi
}

# --- create a NAT network with two VLANs --------------------------------------------
api POST /api/v1/networks '{"name":"it-nat","mode":"nat","cidr":"10.77.0.0/24","vlans":[10,20],"dns":["1.1.1.1","9.9.9.9"]}'
expect_status 201 "create it-nat"
[ "$(jqb .gateway)" = 10.77.0.1 ] || fail "default gateway is not the first usable address"
[ "$(jqb .mtu)" = 1450 ] || fail "default MTU is not 1450"
[ "$(jqb .dhcp)" = true ] || fail "DHCP is not on by default"
[ "$(jqb -c .vlans)" = "[10,20]" ] || fail "vlans not kept"
vni=$(jqb .vni_base)
[ "$vni" -ge 1 ] && [ $((vni + 4095)) -le 16777215 ] || fail "vni_base $vni not allocated in range"
pass "a nat network with VLANs 10 and 20 is created with gateway, MTU and VNI block filled in"

api GET /api/v1/networks/it-nat
expect_status 200
[ "$(jqb '.facts | [.network, .broadcast, .netmask, .usable_hosts, .first_usable, .last_usable, .class, .private] | map(tostring) | join(" ")')" = \
	"10.77.0.0 10.77.0.255 255.255.255.0 254 10.77.0.1 10.77.0.254 A true" ] || fail "facts of a /24 wrong"
pass "a /24 shows network, broadcast, netmask, 254 usable, first/last, class A, private"

api POST /api/v1/networks '{"name":"it-slash30","mode":"host-only","cidr":"192.168.77.4/30"}'
expect_status 201 "create a /30"
[ "$(jqb '.facts | [.usable_hosts, .first_usable, .last_usable, .broadcast, .class] | map(tostring) | join(" ")')" = \
	"2 192.168.77.5 192.168.77.6 192.168.77.7 C" ] || fail "facts of a /30 wrong"
[ "$(jqb .vni_base)" != "$vni" ] || fail "two networks got the same VNI block"
api POST /api/v1/networks '{"name":"it-slash8","mode":"nat","cidr":"20.0.0.0/8","mtu":1400,"dhcp":false}'
expect_status 201 "create a /8"
[ "$(jqb '.facts | [.usable_hosts, .broadcast, .netmask, .class, .private] | map(tostring) | join(" ")')" = \
	"16777214 20.255.255.255 255.0.0.0 A false" ] || fail "facts of a /8 wrong"
pass "a /30 has 2 usable addresses, a /8 16777214, and each network has its own VNI block"

api GET /api/v1/networks
expect_status 200
[ "$(jqb '[.networks[].name | select(startswith("it-"))] | join(",")')" = "it-nat,it-slash30,it-slash8" ] ||
	fail "list does not show the three networks by name"
api GET /api/v1/networks/it-nat/addresses
expect_status 200
[ "$(jqb '[.addresses[] | .address + "=" + .kind + ":" + .owner] | join(" ")')" = \
	"10.77.0.0=reserved:network 10.77.0.1=reserved:gateway 10.77.0.255=reserved:broadcast" ] ||
	fail "addresses do not show network, gateway and broadcast reserved"
[ "$(jqb .capacity)" = 253 ] || fail "capacity of a /24 is not 253"
pass "list shows the networks, addresses shows the reserved network, gateway and broadcast"

# --- live updates, and the fixed fields ---------------------------------------------
api PATCH /api/v1/networks/it-nat '{"dns":["8.8.8.8"],"dhcp":false,"mtu":1400}'
expect_status 200 "patch live fields"
[ "$(jqb -c '[.dns, .dhcp, .mtu]')" = '[["8.8.8.8"],false,1400]' ] || fail "live fields not changed"
before=$(snapshot)
check 400 cidr PATCH /api/v1/networks/it-nat '{"cidr":"10.78.0.0/24"}' "cannot change"
check 400 mode PATCH /api/v1/networks/it-nat '{"mode":"bridge"}' "cannot change"
check 400 vlans PATCH /api/v1/networks/it-nat '{"vlans":[30]}' "cannot change"
check 400 vni_base PATCH /api/v1/networks/it-nat '{"vni_base":99999}' "cannot change"
check 400 mtu PATCH /api/v1/networks/it-nat '{"mtu":100}'
check 400 uplinks PATCH /api/v1/networks/it-nat '{"uplinks":{"h1":"eth0"}}' "bridge mode only"
check 400 colour PATCH /api/v1/networks/it-nat '{"colour":"red"}'
check 404 "" PATCH /api/v1/networks/no-such-net '{"mtu":1400}'
[ "$before" = "$(snapshot)" ] || fail "a refused PATCH changed the database"
pass "dns, dhcp and mtu change live; mode, cidr, vlans and vni_base are refused with 400 naming the field"

# --- bad input on create --------------------------------------------------------------
before=$(snapshot)
n0=$(nets)
check 409 cidr POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.77.0.128/25"}' "it-nat"
check 409 cidr POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.0.0.0/8"}' "it-nat"
check 400 cidr POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.5/24"}' "10.90.0.0/24"
check 400 cidr POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/31"}'
check 400 cidr POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0/24"}'
check 400 vlans POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","vlans":[0]}'
check 400 vlans POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","vlans":[10,4095]}'
check 400 vlans POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","vlans":[10,10]}'
check 400 gateway POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","gateway":"10.91.0.1"}'
check 400 gateway POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","gateway":"10.90.0.255"}'
check 400 mode POST /api/v1/networks '{"name":"it-host","mode":"overlay","cidr":"10.90.0.0/24"}'
check 400 mtu POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","mtu":9001}'
check 400 dns POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","dns":["dns.example"]}'
check 400 vni_base POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","vni_base":16773121}'
check 409 vni_base POST /api/v1/networks "{\"name\":\"it-host\",\"mode\":\"nat\",\"cidr\":\"10.90.0.0/24\",\"vni_base\":$((vni + 100))}" "it-nat"
check 400 name POST /api/v1/networks '{"name":"Bad_Name","mode":"nat","cidr":"10.90.0.0/24"}'
check 400 extra POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","extra":1}'
check 400 cidr POST /api/v1/networks '{"name":"it-host","mode":"nat"}'
check 409 name POST /api/v1/networks '{"name":"it-nat","mode":"nat","cidr":"10.90.0.0/24"}'
check 400 uplinks POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24","uplinks":{"h1":"eth0"}}'
check 400 uplinks POST /api/v1/networks '{"name":"it-bridge","mode":"bridge","cidr":"10.90.0.0/24","uplinks":{"h1":"a-very-long-interface"}}'
check 404 uplinks POST /api/v1/networks '{"name":"it-bridge","mode":"bridge","cidr":"10.90.0.0/24","uplinks":{"h1":"up0","nosuchhost":"up0"}}' "nosuchhost"
check 422 uplinks POST /api/v1/networks '{"name":"it-bridge","mode":"bridge","cidr":"10.90.0.0/24","uplinks":{"h1":"eth0"}}' "IPv4 address"
api POST /api/v1/networks '{"name":"it-host","mode":"nat","cidr":"10.90.0.0/24"}' -
expect_status 401 "create without a token"
[ "$n0" = "$(nets)" ] || fail "a refused create added a network ($n0 -> $(nets))"
[ "$before" = "$(snapshot)" ] || fail "a refused create changed the database"
pass "overlap 409, host bits 400 naming the network meant, VLAN 0/4095, gateway outside, unknown uplink host 404; nothing written"

# --- bridge mode with uplinks on real hosts -----------------------------------------
# The lab gives every host an uplink up0 (deploy/lab); hosts report their interfaces.
check 422 uplinks POST /api/v1/networks '{"name":"it-bridge","mode":"bridge","cidr":"10.91.0.0/16","uplinks":{"h1":"eth9"}}' "eth9"
api POST /api/v1/networks '{"name":"it-bridge","mode":"bridge","cidr":"10.91.0.0/16","gateway":"10.91.255.254","uplinks":{"h1":"up0"}}'
expect_status 201 "create bridge network"
[ "$(jqb -c '[.gateway, .uplinks]')" = '["10.91.255.254",{"h1":"up0"}]' ] || fail "bridge gateway/uplinks not kept"
api PATCH /api/v1/networks/it-bridge '{"uplinks":{"h1":"up0","h2":"up0"}}'
expect_status 200
[ "$(jqb -c .uplinks)" = '{"h1":"up0","h2":"up0"}' ] || fail "uplinks not changed live"
check 404 uplinks PATCH /api/v1/networks/it-bridge '{"uplinks":{"ghost":"eth0"}}' "ghost"
check 422 uplinks PATCH /api/v1/networks/it-bridge '{"uplinks":{"h3":"nope0"}}' "nope0"
check 409 uplinks POST /api/v1/networks '{"name":"it-host","mode":"bridge","cidr":"10.92.0.0/24","uplinks":{"h2":"up0"}}' "it-bridge"
pass "a bridge network takes per-host uplinks the hosts have, changeable live, its own alone"

# --- MACs: one per NIC of a network ---------------------------------------------------
mac_ct() { # mac_ct NAME MAC: a stopped container with one NIC on it-nat
	api POST /api/v1/instances "{\"name\":\"$1\",\"type\":\"container\",\"image\":\"busybox:latest\",\"command\":[\"sleep\",\"60\"],\"start\":false,\"nics\":[{\"network\":\"it-nat\",\"mac\":\"$2\"}]}"
}
mac_ct net-mac1 52:54:00:AA:BB:01
expect_status 202 "a container with a NIC on it-nat"
wait_op "$(jqb .id)"
mac_ct net-mac2 52:54:00:aa:bb:01
expect_status 409 "a second NIC with the same MAC"
[ "$(jqb .field)" = "nics[0].mac" ] || fail "the MAC clash names '$(jqb .field)', not nics[0].mac"
mac_ct net-mac2 00:00:00:00:00:00
expect_status 400 "an all-zero MAC"
mac_ct net-mac2 02:6b:00:01:00:00
expect_status 400 "a MAC of the anycast gateways' prefix"
api GET /api/v1/instances/net-mac2
expect_status 404
api DELETE "/api/v1/instances/net-mac1?force=1"
expect_status 202 "delete net-mac1"
wait_op "$(jqb .id)"
pass "a MAC is unique in its network (409, case-blind); all-zero and 02:6b:... are refused"

# A bridge network only runs instances on hosts with an uplink: h3 has none.
api POST /api/v1/instances '{"name":"net-vm","type":"vm","start":false,"memory":{"mb":64},"host":"h3","nics":[{"network":"it-bridge"}]}'
expect_status 422
jqb -c .placement.rejected | grep -q "no uplink on this host" || fail "422 does not say h3 has no uplink: $BODY"
api GET /api/v1/instances/net-vm
expect_status 404
pass "placement refuses a host without the bridge network's uplink (422, with the reason)"

# --- delete ---------------------------------------------------------------------------
# An allocated address holds the network (a reservation made by hand stands for a NIC).
id=$(sqlite3 "$DB" "SELECT id FROM networks WHERE name = 'it-slash30'")
sqlite3 "$DB" "PRAGMA busy_timeout = 5000; INSERT INTO addresses (network_id, address, kind, owner, created_at) VALUES ($id, '192.168.77.5', 'static', 'test', 0)" >/dev/null
check 409 "" DELETE /api/v1/networks/it-slash30 "allocated"
api GET /api/v1/networks/it-slash30/addresses
[ "$(jqb '[.addresses[] | select(.kind == "static") | .address] | join(",")')" = 192.168.77.5 ] || fail "allocation not listed"
sqlite3 "$DB" "PRAGMA busy_timeout = 5000; DELETE FROM addresses WHERE network_id = $id" >/dev/null
for n in it-nat it-slash30 it-slash8 it-bridge; do
	api DELETE "/api/v1/networks/$n"
	expect_status 204 "delete $n"
done
api GET /api/v1/networks/it-nat
expect_status 404
check 404 "" DELETE /api/v1/networks/it-nat
[ "$(sqlite3 "$DB" "SELECT count(*) FROM networks WHERE name LIKE 'it-%'")" = 0 ] || fail "networks left behind"
pass "delete is refused with 409 while addresses are allocated, then removes the network"
