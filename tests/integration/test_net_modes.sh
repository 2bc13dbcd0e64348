#!/bin/bash
# Network modes by real packets. host-only: a container reaches its gateway (the host) and
# the host reaches it, but it never gets out (not even with a default route) nor in, while
# a NAT container on the same host does get out. bridge: containers on h1 and h2 talk over
# the hosts' uplinks up0 and the lab's switch lan0 (whose address 192.168.200.254 is the
# gateway), with no VXLAN. Refused: a bridge network with VLANs on hosts without 802.1Q
# (422), an uplink on an unknown host (404) or on an interface the host lacks (422).
# shellcheck disable=SC2016 # jq programs in single quotes
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

HO=net-md-ho
HO_CIDR=10.63.0.0/24
HO_GW=10.63.0.1
NAT=net-md-nat
NAT_CIDR=10.64.0.0/24
BR=net-md-br
LAN_CIDR=192.168.200.0/24
CT_HO=net-md-ho1 # h1
CT_HO_ADDR=10.63.0.10
CT_NAT=net-md-nat1 # h1
CT_NAT_ADDR=10.64.0.10
CT_B1=net-md-br1 # h1
CT_B1_ADDR=192.168.200.11
CT_B2=net-md-br2 # h2
CT_B2_ADDR=192.168.200.12
INSTANCES="$CT_HO $CT_NAT $CT_B1 $CT_B2"
OUT_ROUTE=0 # 1 while the outside namespace has a route to HO_CIDR via h1

remove_all() {
	for n in $INSTANCES; do ct_delete "$n"; done
	for n in $HO $NAT $BR net-md-bv net-md-bad; do net_delete "$n"; done
}
cleanup() {
	[ "$OUT_ROUTE" = 0 ] || ip -n "$KUMO_LAB_OUTSIDE_NS" route del $HO_CIDR via "$(host_underlay h1)" 2>/dev/null || true
	remove_all
	rm -rf "$OCI_CERTS"
}
trap cleanup EXIT
remove_all

if [ -z "${KUMO_LAB_OUTSIDE_NS:-}" ] || [ ! -e "/run/netns/$KUMO_LAB_OUTSIDE_NS" ]; then
	fail "the lab has no outside namespace (deploy/lab up makes it)"
fi
for h in h1 h2; do
	host_is $h online || fail "$h is not online"
done
H1=$(host_underlay h1)
UP=${KUMO_LAB_UPLINK:-up0}
LAN_GW=${KUMO_LAB_LAN_ADDR:-192.168.200.254}

# ---- refused bridge networks: nothing made -------------------------------------------
links0=$(all_kumo_links)
refused() { # refused STATUS NAME BODY WHAT; sets ERR and FIELD from the answer
	api POST /api/v1/networks "$3"
	expect_status "$1" "$4"
	ERR=$(jqb '.error // empty')
	FIELD=$(jqb '.field // empty')
	[ -n "$ERR" ] || fail "no error message for $4"
	api GET "/api/v1/networks/$2"
	expect_status 404 "$2 exists after a refused create ($4)"
	[ "$(all_kumo_links)" = "$links0" ] || fail "links changed after a refused create ($4): $(all_kumo_links)"
}
refused 422 net-md-bv "{\"name\":\"net-md-bv\",\"mode\":\"bridge\",\"cidr\":\"192.168.201.0/24\",\"vlans\":[10],\"uplinks\":{\"h1\":\"$UP\",\"h2\":\"$UP\"}}" \
	"bridge network with VLANs on hosts without 802.1Q"
grep -qi "802.1q\|vlan" <<<"$ERR" || fail "the 422 does not say the hosts lack 802.1Q/VLAN support: $ERR"
refused 404 net-md-bad "{\"name\":\"net-md-bad\",\"mode\":\"bridge\",\"cidr\":\"192.168.201.0/24\",\"uplinks\":{\"h1\":\"$UP\",\"net-md-nohost\":\"$UP\"}}" \
	"uplink on an unknown host"
grep -q net-md-nohost <<<"$ERR" || fail "the 404 does not name the unknown host: $ERR"
refused 422 net-md-bad '{"name":"net-md-bad","mode":"bridge","cidr":"192.168.201.0/24","uplinks":{"h1":"nosuch0"}}' \
	"uplink interface the host lacks"
[ "$FIELD" = uplinks ] || fail "the 422 for a missing interface names field '$FIELD', not uplinks"
grep -q nosuch0 <<<"$ERR" || fail "the 422 does not name the interface: $ERR"
pass "bridge network with VLANs and no 802.1Q: 422; uplink on an unknown host: 404; on a missing interface: 422; nothing made"

# ---- host-only: the host and nothing else -------------------------------------------------
api POST /api/v1/networks "{\"name\":\"$HO\",\"mode\":\"host-only\",\"cidr\":\"$HO_CIDR\"}"
expect_status 201 "create $HO"
HO_ID=$(net_id $HO)
api POST /api/v1/networks "{\"name\":\"$NAT\",\"mode\":\"nat\",\"cidr\":\"$NAT_CIDR\"}"
expect_status 201 "create $NAT"
ct_create "$(net_ct_json $CT_HO h1 "[{\"network\":\"$HO\",\"address\":\"$CT_HO_ADDR\"}]")"
ct_create "$(net_ct_json $CT_NAT h1 "[{\"network\":\"$NAT\",\"address\":\"$CT_NAT_ADDR\"}]")"
wait_until 60 "$CT_HO running" instance_is $CT_HO running
wait_until 60 "$CT_NAT running" instance_is $CT_NAT running
wait_until 30 "$CT_HO reaches its gateway $HO_GW (the host)" ct_ping $CT_HO $HO_GW
in_host h1 ping -c 1 -W 2 $CT_HO_ADDR >/dev/null || fail "h1 cannot reach its host-only container $CT_HO_ADDR"
# The NAT container on the same host gets out: h1 forwards, and the outside answers.
wait_until 30 "$CT_NAT reaches the internet $KUMO_LAB_OUTSIDE_ADDR" ct_ping $CT_NAT "$KUMO_LAB_OUTSIDE_ADDR"
ct_no_ping $CT_HO "$KUMO_LAB_OUTSIDE_ADDR"
# Even with a default route (set from outside: the container has no CAP_NET_ADMIN) and a
# route back in the outside namespace, nothing crosses h1 from or to the host-only net.
ct_netns_exec $CT_HO ip route replace default via $HO_GW dev eth0
in_outside ping -c 1 -W 2 "$H1" >/dev/null || fail "the outside namespace cannot reach h1 ($H1)"
OUT_ROUTE=1
ip -n "$KUMO_LAB_OUTSIDE_NS" route add $HO_CIDR via "$H1"
ct_no_ping $CT_HO "$KUMO_LAB_OUTSIDE_ADDR"
if in_outside ping -c 3 -w 4 $CT_HO_ADDR >/dev/null 2>&1; then
	fail "the outside reaches the host-only container $CT_HO_ADDR through h1"
fi
ip -n "$KUMO_LAB_OUTSIDE_NS" route del $HO_CIDR via "$H1"
OUT_ROUTE=0
ct_no_ping $CT_HO $CT_NAT_ADDR
ct_no_ping $CT_NAT $CT_HO_ADDR
[ -n "$(kumo_tables h1 "$HO_ID")" ] || fail "h1 has no nft table kumo_n$HO_ID for $HO"
pass "host-only: $CT_HO and h1 reach each other; it reaches neither the internet (even routed) nor the NAT network, and the outside cannot reach it"

# ---- bridge mode over the uplinks ------------------------------------------------------------
api POST /api/v1/networks "{\"name\":\"$BR\",\"mode\":\"bridge\",\"cidr\":\"$LAN_CIDR\",\"gateway\":\"$LAN_GW\",\"dhcp\":false,\"uplinks\":{\"h1\":\"$UP\",\"h2\":\"$UP\"}}"
expect_status 201 "create $BR"
[ "$(jqb -c '[.gateway, .dhcp, .uplinks]')" = "[\"$LAN_GW\",false,{\"h1\":\"$UP\",\"h2\":\"$UP\"}]" ] ||
	fail "$BR does not keep gateway, dhcp and uplinks: $(jqb -c '[.gateway, .dhcp, .uplinks]')"
BR_ID=$(net_id $BR)
ct_create "$(net_ct_json $CT_B1 h1 "[{\"network\":\"$BR\",\"address\":\"$CT_B1_ADDR\"}]")"
ct_create "$(net_ct_json $CT_B2 h2 "[{\"network\":\"$BR\",\"address\":\"$CT_B2_ADDR\"}]")"
wait_until 60 "$CT_B1 running" instance_is $CT_B1 running
wait_until 60 "$CT_B2 running" instance_is $CT_B2 running
wait_until 30 "$CT_B1 (h1) pings $CT_B2 (h2)" ct_ping $CT_B1 $CT_B2_ADDR
wait_until 30 "$CT_B2 (h2) pings $CT_B1 (h1)" ct_ping $CT_B2 $CT_B1_ADDR
wait_until 30 "$CT_B1 pings the LAN gateway $LAN_GW" ct_ping $CT_B1 "$LAN_GW"
wait_until 30 "$CT_B2 pings the LAN gateway $LAN_GW" ct_ping $CT_B2 "$LAN_GW"
for h in h1 h2; do
	[ "$(link_master $h "$UP")" = "kb$BR_ID-0" ] || fail "$UP on $h is not a port of kb$BR_ID-0 (master: '$(link_master $h "$UP")')"
	links=" $(kumo_links $h "$BR_ID" | tr '\n' ' ')"
	[ "$links" = " kb$BR_ID-0 " ] || fail "$h should have kb$BR_ID-0 and no VXLAN for a bridge network: $links"
	[ -z "$(in_host $h ip -4 -o addr show dev "kb$BR_ID-0")" ] || fail "kb$BR_ID-0 on $h has an address in bridge mode"
done
# The switch learned each container's MAC on the port of its host's uplink.
fdb=$(ip netns exec "$KUMO_LAB_OUTSIDE_NS" bridge fdb show br lan0)
for x in "$CT_B1 up-h1" "$CT_B2 up-h2"; do
	read -r n port <<<"$x"
	mac=$(nic_field "$n" 0 .mac | tr 'A-F' 'a-f')
	grep -qi "^$mac dev $port " <<<"$fdb" || fail "lan0 has not seen $n ($mac) on $port: $fdb"
done
pass "bridge: $CT_B1 (h1) and $CT_B2 (h2) ping each other and $LAN_GW over $UP and lan0 (which learned their MACs), no VXLAN"
