#!/bin/bash
# A NAT overlay network with VLANs 100 and 200 across hosts, by real packets: a VM on h1
# (VLAN 100) gets the address the controller allocated by DHCP and pings a container on
# h2 (VLAN 100, fixed address) through the VXLAN, which pings it back; a container in
# VLAN 200 (h3) and one in a second network (h1) reach their own gateway but neither of
# them; the NAT container reaches the "internet" (198.18.0.1 in the lab's outside
# namespace), while the outside cannot reach it even with a route to it. The hosts show
# the bridges kb<NID>-<VLAN> and VXLANs kx<NID>-<VLAN>, with each other in the FDB.
# shellcheck disable=SC2016 # jq programs in single quotes
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

NET=net-ov
NET2=net-ov2
CIDR=10.61.0.0/24
GW=10.61.0.1
CIDR2=10.62.0.0/24
GW2=10.62.0.1
VM=net-ov-vm    # h1, VLAN 100, DHCP
CT=net-ov-c2    # h2, VLAN 100, fixed address
CT_ADDR=10.61.0.20
CT200=net-ov-c3 # h3, VLAN 200
CT200_ADDR=10.61.0.30
CTX=net-ov-x # h1, the second network
CTX_ADDR=10.62.0.10
INSTANCES="$VM $CT $CT200 $CTX"
OUT_ROUTE=0 # 1 while the outside namespace has the route to CIDR via h2

remove_all() {
	for n in $INSTANCES; do ct_delete "$n"; done
	net_delete $NET
	net_delete $NET2
}
cleanup() {
	[ "$OUT_ROUTE" = 0 ] || ip -n "$KUMO_LAB_OUTSIDE_NS" route del $CIDR via "$(host_underlay h2)" 2>/dev/null || true
	remove_all
	rm -rf "$OCI_CERTS"
}
trap cleanup EXIT
remove_all # leftovers of an interrupted run

if [ -z "${KUMO_LAB_OUTSIDE_NS:-}" ] || [ ! -e "/run/netns/$KUMO_LAB_OUTSIDE_NS" ]; then
	fail "the lab has no outside namespace (deploy/lab up makes it)"
fi
for h in h1 h2 h3; do
	host_is $h online || fail "$h is not online"
done
H1=$(host_underlay h1)
H2=$(host_underlay h2)
H3=$(host_underlay h3)

# ---- the network ---------------------------------------------------------------------
api POST /api/v1/networks "{\"name\":\"$NET\",\"mode\":\"nat\",\"cidr\":\"$CIDR\",\"vlans\":[100,200]}"
expect_status 201 "create $NET"
VNI=$(jqb .vni_base)
NID=$(net_id $NET)
[ -n "$NID" ] || fail "no id for network $NET"
[ -z "$(all_kumo_links | grep -E " k[bx]$NID-" || true)" ] || fail "a network without instances has bridges: $(all_kumo_links)"
pass "$NET (id $NID, VNI base $VNI) created; no host has its bridges before an instance uses it"

# ---- a container on h2, VLAN 100, fixed address ------------------------------------------
ct_create "$(net_ct_json $CT h2 "[{\"network\":\"$NET\",\"vlan\":100,\"address\":\"$CT_ADDR\"}]")"
wait_until 60 "$CT running" instance_is $CT running
[ "$(nic_field $CT 0 .address)" = $CT_ADDR ] || fail "$CT's NIC shows address $(nic_field $CT 0 .address)"
[ "$(nic_field $CT 0 .vlan)" = 100 ] || fail "$CT's NIC shows vlan $(nic_field $CT 0 .vlan)"
CT_MAC=$(nic_field $CT 0 .mac)
api GET /api/v1/networks/$NET/addresses
[ "$(jqb --arg a $CT_ADDR '[.addresses[] | select(.address == $a) | .kind + " " + .instance + " " + (.vlan | tostring)] | join(",")')" = \
	"static $CT 100" ] || fail "the addresses of $NET do not show $CT_ADDR static for $CT in VLAN 100"
pass "$CT on h2 holds $CT_ADDR (static, VLAN 100) in the controller"

# ---- a VM on h1, VLAN 100, by DHCP; its user data pings the container ---------------------
# The marker is printed as KUMO-PING-%s so the user data, which the guest also prints on
# its console, does not contain it.
script=$(
	cat <<EOF
#!/bin/sh
(
	n=0
	while [ \$n -lt 900 ]; do
		if ping -c 1 -W 1 $CT_ADDR >/dev/null 2>&1; then
			printf '\\nKUMO-PING-%s to=%s\\n' OK $CT_ADDR >/dev/console
			break
		fi
		n=\$((n + 1))
		sleep 1
	done
) </dev/null >/dev/null 2>&1 &
EOF
)
vm_create "$(jq -cn --arg n $VM --arg img "$TEST_IMAGE" --arg net $NET --arg ud "$script" \
	'{name: $n, type: "vm", vcpus: 1, memory: {mb: 256}, host: "h1",
	  disks: [{name: "root", image: $img, bus: "virtio"}],
	  nics: [{network: $net, vlan: 100, model: "virtio"}],
	  cloud_init: {user_data: $ud}}')"
[ "$(jqb .result.placement.host)" = h1 ] || fail "$VM placed on $(jqb .result.placement.host), not h1"
VM_ADDR=$(nic_field $VM 0 .address)
VM_MAC=$(nic_field $VM 0 .mac)
[[ $VM_ADDR == 10.61.0.* ]] || fail "$VM's NIC has address '$VM_ADDR', not one of $CIDR"
if [ "$VM_ADDR" = $CT_ADDR ] || [ "$VM_ADDR" = $GW ]; then fail "$VM got the taken address $VM_ADDR"; fi
api GET /api/v1/networks/$NET/addresses
[ "$(jqb --arg a "$VM_ADDR" '[.addresses[] | select(.address == $a) | .kind + " " + .instance + " " + (.vlan | tostring) + " " + (.nic | tostring)] | join(",")')" = \
	"dynamic $VM 100 0" ] || fail "the addresses of $NET do not show $VM_ADDR dynamic for $VM NIC 0 in VLAN 100"
[ "$(jqb --arg a "$VM_ADDR" '.addresses[] | select(.address == $a) | .mac' | tr 'A-F' 'a-f')" = "$(tr 'A-F' 'a-f' <<<"$VM_MAC")" ] ||
	fail "the address entry of $VM_ADDR does not carry the NIC's MAC $VM_MAC"
end=$((SECONDS + 240))
until console_text_has $VM "KUMO-NET iface=[a-z0-9]* addr=$VM_ADDR/24"; do
	[ $SECONDS -lt $end ] || fail "after 240 s $VM's console shows no KUMO-NET with $VM_ADDR/24 (DHCP from h1); it shows: $(console $VM | grep -o 'KUMO-NET [a-z0-9=./ ]*' | tr '\n' ';')"
	sleep 1
done
others=$(console $VM | grep -o 'KUMO-NET iface=[a-z0-9]* addr=[0-9./]*' | grep -v "addr=$VM_ADDR/24" || true)
[ -z "$others" ] || fail "$VM configured other addresses too: $others"
pass "$VM on h1 got $VM_ADDR/24 by DHCP: the address the controller allocated (dynamic, NIC 0, VLAN 100)"

# ---- the container's NIC ------------------------------------------------------------------
ct_exec $CT '["/bin/sh","-c","ip -4 -o addr show dev eth0; ip route; cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address"]'
out=$(jqb .output)
grep -q "inet $CT_ADDR/24 " <<<"$out" || fail "$CT's eth0 does not have $CT_ADDR/24: $out"
grep -q "^default via $GW " <<<"$out" || fail "$CT has no default route via $GW: $out"
grep -qx 1450 <<<"$out" || fail "$CT's eth0 does not have the network's MTU 1450: $out"
grep -qix "$CT_MAC" <<<"$out" || fail "$CT's eth0 does not have the MAC $CT_MAC the controller shows: $out"
wait_until 30 "$CT reaches its gateway $GW (h2's anycast gateway)" ct_ping $CT $GW
pass "$CT on h2: eth0 $CT_ADDR/24, MTU 1450, MAC $CT_MAC, default via $GW, which answers"

# ---- across hosts, both ways ---------------------------------------------------------
wait_until 120 "$CT (h2) pings $VM (h1) at $VM_ADDR" ct_ping $CT "$VM_ADDR"
wait_until 120 "$VM's user data reaches $CT_ADDR (KUMO-PING-OK on its console)" console_text_has $VM "KUMO-PING-OK to=$CT_ADDR"
pass "container on h2 -> VM on h1 and VM -> container over the VXLAN of VLAN 100"

# ---- what the hosts show: bridges, VXLANs, FDB -------------------------------------------
for h in h1 h2; do
	links=" $(kumo_links $h "$NID" | tr '\n' ' ')"
	[[ $links == *" kb$NID-100 "* && $links == *" kx$NID-100 "* ]] || fail "$h lacks kb$NID-100/kx$NID-100: $links"
	[[ $links != *"-200 "* ]] || fail "$h has a VLAN 200 segment with no port of it: $links"
	in_host $h ip -d -o link show dev "kx$NID-100" | grep -q "vxlan id $((VNI + 100)) " ||
		fail "kx$NID-100 on $h is not VXLAN id $((VNI + 100)): $(in_host $h ip -d -o link show dev "kx$NID-100")"
	[ "$(link_master $h "kx$NID-100")" = "kb$NID-100" ] || fail "kx$NID-100 on $h is not a port of kb$NID-100"
	wait_until 60 "$h shows its networks applied" host_net_in_sync $h
done
[ -z "$(kumo_links h3 "$NID")" ] || fail "h3 has bridges of $NET with no instance there: $(kumo_links h3 "$NID")"
fdb=$(fdb_dsts h1 "kx$NID-100")
grep -qx "$H2" <<<"$fdb" || fail "the FDB of kx$NID-100 on h1 does not list h2 ($H2): $fdb"
grep -qx "$H3" <<<"$fdb" && fail "the FDB of kx$NID-100 on h1 lists h3 ($H3), which has no instance on it"
grep -qx "$H1" <<<"$(fdb_dsts h2 "kx$NID-100")" || fail "the FDB of kx$NID-100 on h2 does not list h1 ($H1)"
pass "h1 and h2 have kb$NID-100 with kx$NID-100 (VNI $((VNI + 100))) whose FDB lists the other; h3 has nothing"

# ---- VLAN 200 on h3: its own gateway answers, VLAN 100 does not --------------------------
ct_create "$(net_ct_json $CT200 h3 "[{\"network\":\"$NET\",\"vlan\":200,\"address\":\"$CT200_ADDR\"}]")"
wait_until 60 "$CT200 running" instance_is $CT200 running
wait_until 30 "$CT200 (VLAN 200) reaches its gateway $GW" ct_ping $CT200 $GW
ct_no_ping $CT200 "$VM_ADDR"
ct_no_ping $CT200 $CT_ADDR
ct_no_ping $CT $CT200_ADDR
links=" $(kumo_links h3 "$NID" | tr '\n' ' ')"
[[ $links == *" kb$NID-200 "* && $links != *"-100 "* ]] || fail "h3 should have the VLAN 200 segment alone: $links"
[ -z "$(fdb_dsts h3 "kx$NID-200")" ] || fail "kx$NID-200 on h3 floods to $(fdb_dsts h3 "kx$NID-200"), with no other host in VLAN 200"
pass "VLAN 200 (h3) reaches its gateway but neither VLAN 100 instance, nor they it"

# ---- a second network on h1: no way into the first ---------------------------------------
api POST /api/v1/networks "{\"name\":\"$NET2\",\"mode\":\"nat\",\"cidr\":\"$CIDR2\"}"
expect_status 201 "create $NET2"
ct_create "$(net_ct_json $CTX h1 "[{\"network\":\"$NET2\",\"address\":\"$CTX_ADDR\"}]")"
wait_until 60 "$CTX running" instance_is $CTX running
wait_until 30 "$CTX reaches its gateway $GW2" ct_ping $CTX $GW2
ct_no_ping $CTX "$VM_ADDR" # same host: a /32 route exists, the firewall must drop it
ct_no_ping $CTX $CT_ADDR
ct_no_ping $CT $CTX_ADDR
pass "a container of $NET2 on h1 reaches its gateway but not $NET's VM on the same host nor its container on h2"

# ---- NAT: out to the internet, nothing in ---------------------------------------------------
in_outside ip route get $CT_ADDR >/dev/null 2>&1 && fail "the outside namespace has a route to $CT_ADDR: the NAT test would prove nothing"
wait_until 30 "$CT pings the internet ($KUMO_LAB_OUTSIDE_ADDR)" ct_ping $CT "$KUMO_LAB_OUTSIDE_ADDR"
in_outside ping -c 1 -W 2 "$H2" >/dev/null || fail "the outside namespace cannot reach h2's underlay address $H2"
OUT_ROUTE=1
ip -n "$KUMO_LAB_OUTSIDE_NS" route add $CIDR via "$H2"
if in_outside ping -c 3 -w 4 $CT_ADDR >/dev/null 2>&1; then
	fail "the outside reaches $CT_ADDR through h2: a NAT network must not let connections in"
fi
ip -n "$KUMO_LAB_OUTSIDE_NS" route del $CIDR via "$H2"
OUT_ROUTE=0
pass "$CT reaches $KUMO_LAB_OUTSIDE_ADDR (masqueraded: the outside has no route back), the outside cannot reach $CT_ADDR even routed via h2"

# ---- the VM's NIC counters: its tap's, swapped to the guest's view (agentd/usage.c) ----
# A sample is a 15 s step of two heartbeats' counters (controllerd/usage.c): checked
# here, a step over the pings above has ended (pinged meanwhile too, should it not).
vm_nic_traffic() {
	ct_ping $CT "$VM_ADDR" || true
	api GET /api/v1/instances/$VM/metrics
	[ "$(jqb '[.samples[] | select(.rx_bps > 0 and .tx_bps > 0)] | length')" -gt 0 ]
}
t0=$SECONDS
wait_until 60 "$VM's metrics show bytes in and out of its NIC" vm_nic_traffic
pass "$VM's NIC traffic shows in its metrics: $(jqb -c '.samples[-1] | {rx_bps, tx_bps}') ($((SECONDS - t0)) s)"

# ---- segments go with their last port ---------------------------------------------------------
ct_delete $CT200
ct_delete $CTX
gone() { [ -z "$(kumo_links "$1" "$2")" ]; }
wait_until 60 "h3's segment of $NET removed" gone h3 "$NID"
NID2=$(net_id $NET2)
wait_until 60 "$NET2's bridge on h1 removed" gone h1 "$NID2"
[[ " $(kumo_links h1 "$NID" | tr '\n' ' ')" == *" kb$NID-100 "* ]] || fail "h1 lost kb$NID-100 when another network went"
api DELETE /api/v1/networks/$NET2
expect_status 204 "delete $NET2"
pass "deleting the last instance of a segment removes its bridge and VXLAN from that host only"
