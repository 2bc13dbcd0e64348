#!/bin/bash
# Tenant isolation by real packets (issue 10, items 1-3):
#   port security: a container (root, CAP_NET_RAW: busybox arping) claiming its
#     neighbour's address does not move the host's neighbour entry, nor does a forged
#     source MAC get through; a NIC with "port_security": false can (the control).
#   the control plane: from a container on a nat, a host-only and a bridge network, and
#     from a VM, TCP to every host's agent port, the controller's join and event ports
#     and a port the host itself listens on fails, while the gateway answers pings and
#     the outside is reached (the probe's own control).
#   security groups: a group's rules allow and deny real TCP and ICMP across hosts,
#     members of a group reach each other, the default group keeps others out, changes
#     apply live, and a group in use cannot be deleted.
#   and no DHCP server in an instance: a client on a network without Kumo's DHCP gets no
#     lease from a container running udhcpd, unless that one's port security is off.
# Containers needing raw sockets (CAP_NET_RAW): nsec-a and nsec-o (arping), nsec-dc
# (udhcpc), nsec-dr and nsec-do (udhcpd); the others use ping, which busybox does with a
# raw socket too.
# shellcheck disable=SC2016 # jq programs in single quotes
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib_oci.sh"

NAT=nsec-nat
NAT_CIDR=10.71.0.0/24
NAT_GW=10.71.0.1
HO=nsec-ho
HO_CIDR=10.72.0.0/24
HO_GW=10.72.0.1
BR=nsec-br
LAN_CIDR=192.168.200.0/24
SG=nsec-web
CT_V=nsec-v # h1, the victim; default group
V_ADDR=10.71.0.10
CT_A=nsec-a # h1, the attacker
A_ADDR=10.71.0.11
CT_O=nsec-o # h1, port security off
O_ADDR=10.71.0.12
CT_S=nsec-s # h2, group nsec-web, listens on 8080 and 9090
S_ADDR=10.71.0.20
CT_D=nsec-d # h3, group nsec-web
D_ADDR=10.71.0.30
CT_HO=nsec-ho1 # h1, host-only
HO_ADDR=10.72.0.10
CT_B=nsec-b1 # h1, bridge
B_ADDR=192.168.200.31
DH=nsec-dh # host-only, no DHCP of Kumo's
DH_CIDR=10.73.0.0/24
CT_DC=nsec-dc # h1, DHCP client
CT_DR=nsec-dr # h1, a DHCP server, port security on
DR_ADDR=10.73.0.11
CT_DO=nsec-do # h1, a DHCP server, port security off
DO_ADDR=10.73.0.12
VM=nsec-vm # h2, nat, DHCP
INSTANCES="$VM $CT_V $CT_A $CT_O $CT_S $CT_D $CT_HO $CT_B $CT_DC $CT_DR $CT_DO"
PROBE_PORT=5555
LISTENERS=()
OUT_FORWARD=0
VIEWER_ID=""

remove_all() {
	for n in $INSTANCES; do ct_delete "$n"; done
	api DELETE "/api/v1/security-groups/$SG" >/dev/null 2>&1 || true
	for n in $NAT $HO $BR $DH; do net_delete "$n"; done
}
cleanup() {
	local pid
	for pid in "${LISTENERS[@]}"; do kill "$pid" 2>/dev/null || true; done
	[ "$OUT_FORWARD" = 0 ] || in_outside sysctl -qw net.ipv4.ip_forward=0 || true
	[ -z "$VIEWER_ID" ] || api DELETE "/api/v1/tokens/$VIEWER_ID" >/dev/null 2>&1 || true
	remove_all
	rm -rf "$OCI_CERTS"
}
trap cleanup EXIT
remove_all

for h in h1 h2 h3; do
	host_is $h online || fail "$h is not online"
done
H1=$(host_underlay h1)
H2=$(host_underlay h2)
H3=$(host_underlay h3)
LINK=$KUMO_LINK_ADDRESS
UP=${KUMO_LAB_UPLINK:-up0}
LAN_GW=${KUMO_LAB_LAN_ADDR:-192.168.200.254}
OUTSIDE=$KUMO_LAB_OUTSIDE_ADDR

# Listeners the probes aim at: on h1 and h2 themselves (every address: the gateways
# too), and the outside (the probes' control: TCP does get through where allowed).
for ns in "$(host_ns h1)" "$(host_ns h2)" "$KUMO_LAB_OUTSIDE_NS"; do
	ip netns exec "$ns" busybox nc -ll -p $PROBE_PORT -e /bin/echo listening </dev/null >/dev/null 2>&1 &
	LISTENERS+=($!)
done
listener_up() { [ "$(in_outside sh -c "busybox nc -w 3 $OUTSIDE $PROBE_PORT </dev/null" 2>/dev/null)" = listening ]; }
wait_until 10 "the probe listener in the outside namespace answers" listener_up

# tcp_probe NAME ADDR PORT -> "open" or "closed" from inside container NAME
tcp_probe() {
	ct_exec "$1" "[\"sh\",\"-c\",\"timeout 6 nc -w 3 $2 $3 </dev/null\"]" 20
	if grep -q listening <<<"$(jqb .output)"; then echo open; else echo closed; fi
}
# tcp_open NAME ADDR PORT / tcp_closed NAME ADDR PORT: fail the test otherwise
tcp_open() { [ "$(tcp_probe "$@")" = open ] || fail "$1 cannot reach $2:$3 over TCP (it must)"; }
tcp_closed() { [ "$(tcp_probe "$@")" = closed ] || fail "$1 reaches $2:$3 over TCP (it must not)"; }
tcp_is() { [ "$(tcp_probe "$1" "$2" "$3")" = "$4" ]; } # NAME ADDR PORT open|closed
# tcp_all_closed NAME ADDR:PORT... -> fail unless each target is closed from NAME. The
# probes run side by side in one exec: a dropped SYN costs each its whole 3 s.
tcp_all_closed() {
	local name=$1 t open
	shift
	ct_exec "$name" "$(jq -cn --arg ts "$*" '["sh", "-c", "for t in \($ts); do (if timeout 6 nc -w 3 ${t%:*} ${t#*:} </dev/null 2>/dev/null | grep -q listening; then echo \"$t open\"; else echo \"$t closed\"; fi) & done; wait"]')" 20
	for t in "$@"; do
		grep -qx "$t closed" <<<"$(jqb .output)" || {
			open=$(grep -q "^$t open$" <<<"$(jqb .output)" && echo reaches || echo "has no answer for")
			fail "$name $open $t over TCP (it must not reach it): $(jqb .output)"
		}
	done
}

# ---- networks, a group, containers ------------------------------------------------------
api POST /api/v1/networks "{\"name\":\"$NAT\",\"mode\":\"nat\",\"cidr\":\"$NAT_CIDR\"}"
expect_status 201 "create $NAT"
NID=$(net_id $NAT)
api POST /api/v1/networks "{\"name\":\"$HO\",\"mode\":\"host-only\",\"cidr\":\"$HO_CIDR\"}"
expect_status 201 "create $HO"
api POST /api/v1/networks "{\"name\":\"$BR\",\"mode\":\"bridge\",\"cidr\":\"$LAN_CIDR\",\"gateway\":\"$LAN_GW\",\"dhcp\":false,\"uplinks\":{\"h1\":\"$UP\",\"h2\":\"$UP\"}}"
expect_status 201 "create $BR"

api POST /api/v1/security-groups '{"name":"nsec-bad","rules":[{"direction":"ingress","protocol":"icmp","ports":"80","cidr":"0.0.0.0/0"}]}'
expect_status 400 "ports on an icmp rule"
api POST /api/v1/security-groups '{"name":"nsec-bad","rules":[{"direction":"ingress","protocol":"tcp","group":"nsec-nosuch"}]}'
expect_status 422 "a rule naming a group that does not exist"
api POST /api/v1/security-groups '{"name":"nsec-bad","rules":[{"direction":"ingress","protocol":"tcp","cidr":"10.0.0.1/8"}]}'
expect_status 400 "a CIDR with host bits"
api POST /api/v1/security-groups "{\"name\":\"$SG\",\"rules\":[{\"direction\":\"ingress\",\"protocol\":\"tcp\",\"ports\":\"8080\",\"cidr\":\"0.0.0.0/0\"}]}"
expect_status 201 "create $SG"
[ "$(jqb -c '.rules')" = '[{"direction":"ingress","action":"allow","protocol":"tcp","ports":"8080","cidr":"0.0.0.0/0"}]' ] ||
	fail "$SG does not show its rule with action allow: $(jqb -c .rules)"
api POST /api/v1/instances "$(net_ct_json nsec-bad h1 "[{\"network\":\"$NAT\",\"security_groups\":[\"nsec-nosuch\"]}]")"
expect_status 422 "a NIC naming a group that does not exist"
api POST /api/v1/tokens '{"kind":"api","role":"viewer","name":"nsec-viewer"}'
expect_status 201 "viewer token"
VIEWER=$(jqb .token)
VIEWER_ID=$(jqb .id)
api GET "/api/v1/security-groups/$SG" "" "$VIEWER"
expect_status 200 "a viewer reads a group"
api PUT "/api/v1/security-groups/$SG" '{"rules":[]}' "$VIEWER"
expect_status 403 "a viewer changes a group"
pass "security groups: bad rules 400, unknown groups 422 (rule and NIC), viewers read but do not write"

# The VM first: it boots while the containers are made.
script=$(
	cat <<EOF
#!/bin/sh
(
	n=0
	until ping -c 1 -W 1 $NAT_GW >/dev/null 2>&1; do
		n=\$((n + 1)); [ \$n -lt 600 ] || break; sleep 1
	done
	# side by side: a dropped SYN costs each probe its whole 3 s
	for t in $H1:7710 $H2:7710 $H3:7710 $LINK:$KUMO_JOIN_PORT $LINK:$KUMO_EVENT_PORT $LINK:$KUMO_TEST_LAB_API_PORT $NAT_GW:$PROBE_PORT $H2:$PROBE_PORT $OUTSIDE:$PROBE_PORT; do
		(
			if timeout 6 nc -w 3 \${t%:*} \${t#*:} </dev/null 2>/dev/null | grep -q listening; then r=OPEN; else r=CLOSED; fi
			printf '\\nKUMO-%s-%s %s\\n' CP \$r \$t >/dev/console
		) &
	done
	wait
	if ping -c 1 -W 2 $NAT_GW >/dev/null 2>&1; then r=OK; else r=NONE; fi
	printf '\\nKUMO-%s-%s\\n' GWPING \$r >/dev/console
	printf '\\nKUMO-%s-%s\\n' CP DONE >/dev/console
) </dev/null >/dev/null 2>&1 &
EOF
)
vm_create "$(jq -cn --arg n $VM --arg img "$TEST_IMAGE" --arg net $NAT --arg ud "$script" \
	'{name: $n, type: "vm", vcpus: 1, memory: {mb: 256}, host: "h2",
	  disks: [{name: "root", image: $img, bus: "virtio"}],
	  nics: [{network: $net, model: "virtio"}],
	  cloud_init: {user_data: $ud}}')"

ct_create "$(net_ct_json $CT_V h1 "[{\"network\":\"$NAT\",\"address\":\"$V_ADDR\"}]")"
ct_create "$(net_ct_json $CT_A h1 "[{\"network\":\"$NAT\",\"address\":\"$A_ADDR\"}]")"
ct_create "$(net_ct_json $CT_O h1 "[{\"network\":\"$NAT\",\"address\":\"$O_ADDR\",\"port_security\":false}]")"
[ "$(nic_field $CT_O 0 .port_security)" = false ] || fail "$CT_O's NIC does not show port_security false"
[ "$(nic_field $CT_V 0 .port_security)" = true ] || fail "$CT_V's NIC does not show port_security true"
ct_create "$(jq -cn --arg n $CT_S --arg net $NAT --arg a $S_ADDR --arg g $SG \
	'{name: $n, type: "container", image: "busybox:latest", host: "h2",
	  command: ["sh", "-c", "nc -ll -p 8080 -e /bin/echo listening & nc -ll -p 9090 -e /bin/echo listening & exec sleep 3600"],
	  nics: [{network: $net, address: $a, security_groups: [$g]}]}')"
ct_create "$(net_ct_json $CT_D h3 "[{\"network\":\"$NAT\",\"address\":\"$D_ADDR\",\"security_groups\":[\"$SG\"]}]")"
ct_create "$(net_ct_json $CT_HO h1 "[{\"network\":\"$HO\",\"address\":\"$HO_ADDR\"}]")"
ct_create "$(net_ct_json $CT_B h1 "[{\"network\":\"$BR\",\"address\":\"$B_ADDR\"}]")"
for n in $CT_V $CT_A $CT_O $CT_S $CT_D $CT_HO $CT_B; do
	wait_until 60 "$n running" instance_is $n running
done
for h in h1 h2 h3; do
	wait_until 60 "$h applies its networks" host_net_in_sync $h
done

# ---- port security: the ARP takeover -----------------------------------------------------
V_MAC=$(nic_field $CT_V 0 .mac | tr 'A-F' 'a-f')
neigh_of() { in_host h1 ip neigh show "$1" dev "kb$NID-0" | grep -o 'lladdr [0-9a-f:]*' | cut -d' ' -f2; }
wait_until 30 "h1 reaches $CT_V" in_host h1 ping -c 1 -W 1 $V_ADDR
[ "$(neigh_of $V_ADDR)" = "$V_MAC" ] || fail "h1's neighbour entry for $V_ADDR is $(neigh_of $V_ADDR), not $V_MAC"
# arping binds its probe to the address it claims: allow that in the attacker's own
# namespace (it changes nothing the host sees).
ct_netns_exec $CT_A sysctl -qw net.ipv4.ip_nonlocal_bind=1
sleep 1.1 # past the neighbour's locktime, so an update would be taken
ct_exec $CT_A "[\"sh\",\"-c\",\"arping -U -c 2 -I eth0 -s $V_ADDR $V_ADDR; arping -A -c 2 -I eth0 -s $V_ADDR $V_ADDR\"]" 20
grep -q 'Sent 2 probe' <<<"$(jqb .output)" || fail "arping in $CT_A did not send: $(jqb .output)"
[ "$(neigh_of $V_ADDR)" = "$V_MAC" ] || fail "after $CT_A's ARP claim h1's neighbour entry for $V_ADDR is $(neigh_of $V_ADDR), not $CT_V's $V_MAC"
in_host h1 ping -c 1 -W 2 $V_ADDR >/dev/null || fail "h1 no longer reaches $CT_V after $CT_A's ARP claim"
# A forged source MAC gets nowhere, and the bridge does not learn it.
ct_netns_exec $CT_A ip link set eth0 address 52:54:00:de:ad:01
ct_no_ping $CT_A $NAT_GW
in_host h1 bridge fdb show br "kb$NID-0" | grep -qi '52:54:00:de:ad:01' && fail "kb$NID-0 learned $CT_A's forged MAC"
ct_netns_exec $CT_A ip link set eth0 address "$(nic_field $CT_A 0 .mac)"
wait_until 30 "$CT_A reaches its gateway again with its own MAC" ct_ping $CT_A $NAT_GW
# The control: port security off, the same claim moves the entry.
ct_netns_exec $CT_O sysctl -qw net.ipv4.ip_nonlocal_bind=1
O_MAC=$(nic_field $CT_O 0 .mac | tr 'A-F' 'a-f')
in_host h1 ping -c 1 -W 1 $V_ADDR >/dev/null || true
sleep 1.1
ct_exec $CT_O "[\"sh\",\"-c\",\"arping -U -c 2 -I eth0 -s $V_ADDR $V_ADDR\"]" 20
[ "$(neigh_of $V_ADDR)" = "$O_MAC" ] || fail "with port security off, $CT_O's claim did not move the entry for $V_ADDR ($(neigh_of $V_ADDR)): the test would not see a takeover"
in_host h1 ip neigh del $V_ADDR dev "kb$NID-0" || true
pass "port security: $CT_A's ARP claim of $V_ADDR and a forged MAC are dropped; with port_security false ($CT_O) the claim moves h1's entry"

# ---- port security: no DHCP server in an instance ----------------------------------------
api POST /api/v1/networks "{\"name\":\"$DH\",\"mode\":\"host-only\",\"cidr\":\"$DH_CIDR\",\"dhcp\":false}"
expect_status 201 "create $DH"
dhcp_server_json() { # NAME ADDR PORT-SECURITY
	jq -cn --arg n "$1" --arg net $DH --arg a "$2" --argjson ps "$3" \
		'{name: $n, type: "container", image: "busybox:latest", host: "h1",
		  command: ["sh", "-c", "printf \"start 10.73.0.100\\nend 10.73.0.150\\ninterface eth0\\nlease_file /tmp/leases\\n\" >/tmp/u.conf; touch /tmp/leases; exec udhcpd -f /tmp/u.conf"],
		  nics: [{network: $net, address: $a, port_security: $ps}]}'
}
dhcp_lease() { # the client's udhcpc output: a lease obtained, or none
	ct_exec $CT_DC '["sh","-c","udhcpc -i eth0 -n -q -f -s /bin/true -t 3 -T 1 2>&1"]' 30
	jqb .output
}
ct_create "$(net_ct_json $CT_DC h1 "[{\"network\":\"$DH\"}]")"
ct_create "$(dhcp_server_json $CT_DR $DR_ADDR true)"
wait_until 60 "$CT_DR running" instance_is $CT_DR running
wait_until 30 "$CT_DR's udhcpd started" ct_logs_have $CT_DR "udhcpd: started"
out=$(dhcp_lease)
grep -q "obtained" <<<"$out" && fail "$CT_DC got a lease from $CT_DR's DHCP server: $out"
ct_logs_have $CT_DR "sending OFFER" || fail "$CT_DR's server never offered (the test would prove nothing): $(ct_logs $CT_DR)"
ct_delete $CT_DR
ct_create "$(dhcp_server_json $CT_DO $DO_ADDR false)"
wait_until 60 "$CT_DO running" instance_is $CT_DO running
wait_until 30 "$CT_DO's udhcpd started" ct_logs_have $CT_DO "udhcpd: started"
out=$(dhcp_lease)
grep -q "obtained from $DO_ADDR" <<<"$out" || fail "with port security off, $CT_DC got no lease from $CT_DO: $out"
for n in $CT_DC $CT_DO; do ct_delete $n; done
pass "port security: $CT_DR's DHCP offers never reach $CT_DC; with port_security false ($CT_DO) they do"

# ---- the control plane, from a container on each mode ------------------------------------
wait_until 30 "$CT_A reaches the outside" ct_ping $CT_A "$OUTSIDE"
tcp_open $CT_A "$OUTSIDE" $PROBE_PORT
tcp_all_closed $CT_A $H1:7710 $H2:7710 $H3:7710 $LINK:"$KUMO_JOIN_PORT" $LINK:"$KUMO_EVENT_PORT" \
	$LINK:"$KUMO_TEST_LAB_API_PORT" $NAT_GW:$PROBE_PORT $H1:$PROBE_PORT $H2:$PROBE_PORT
ct_ping $CT_A $NAT_GW || fail "$CT_A cannot ping its gateway $NAT_GW"
pass "nat: $CT_A reaches the outside over TCP and pings its gateway, but no host's agent port, the controller's join/event/API ports or a host's own listener"

wait_until 30 "$CT_HO pings its gateway" ct_ping $CT_HO $HO_GW
tcp_all_closed $CT_HO $H1:7710 $H2:7710 $HO_GW:$PROBE_PORT $H1:$PROBE_PORT $LINK:"$KUMO_JOIN_PORT"
pass "host-only: $CT_HO pings its gateway but reaches neither its host's listeners nor the agent and controller ports"

# Bridge mode: the LAN's router (the outside namespace) forwards for this part, so the
# underlay is one hop away, as it would be on a real LAN.
OUT_FORWARD=1
in_outside sysctl -qw net.ipv4.ip_forward=1
wait_until 30 "$CT_B pings the LAN gateway" ct_ping $CT_B "$LAN_GW"
tcp_open $CT_B "$OUTSIDE" $PROBE_PORT
tcp_all_closed $CT_B $H1:7710 $H2:7710 $H1:$PROBE_PORT $LINK:"$KUMO_JOIN_PORT" $LINK:"$KUMO_EVENT_PORT"
in_outside sysctl -qw net.ipv4.ip_forward=0
OUT_FORWARD=0
pass "bridge: $CT_B reaches the outside through the LAN's router, but no host or controller port behind it"

# ---- security groups across hosts ----------------------------------------------------------
tcp_open $CT_V $S_ADDR 8080    # h1 -> h2: the rule allows it
tcp_closed $CT_V $S_ADDR 9090  # no rule, not a member
ct_no_ping $CT_V $S_ADDR
tcp_open $CT_D $S_ADDR 9090    # h3 -> h2: a member of the same group
ct_no_ping $CT_S $V_ADDR       # into the default group from outside it
wait_until 30 "$CT_V pings $CT_A (both in default)" ct_ping $CT_V $A_ADDR
wait_until 30 "$CT_S pings the outside" ct_ping $CT_S "$OUTSIDE"
pass "groups: $CT_V (default, h1) reaches $CT_S ($SG, h2) on 8080 by rule but not 9090 or ping; $CT_D ($SG, h3) reaches 9090 as a member; default keeps $CT_S out"

# A running instance's NIC changes groups live (PATCH nics).
api PATCH "/api/v1/instances/$CT_V" '{"nics":[{"security_groups":["nsec-nosuch"]}]}'
expect_status 422 "PATCH a NIC into a group that does not exist"
api PATCH "/api/v1/instances/$CT_V" '{"nics":[{},{}]}'
expect_status 400 "PATCH nics with more NICs than the instance has"
api PATCH "/api/v1/instances/$CT_V" "{\"nics\":[{\"security_groups\":[\"$SG\"]}]}"
expect_status 200 "PATCH $CT_V into $SG"
[ "$(jqb -c '.spec.nics[0].security_groups // .nics[0].security_groups')" = "[\"$SG\"]" ] ||
	fail "$CT_V's NIC does not show group $SG after the PATCH: $BODY"
wait_until 30 "$CT_V (now in $SG) reaches $CT_S:9090" tcp_is $CT_V $S_ADDR 9090 open
api PATCH "/api/v1/instances/$CT_V" '{"nics":[{"security_groups":[]}]}'
expect_status 200 "PATCH $CT_V back to default"
wait_until 30 "$CT_V (default again) no longer reaches $CT_S:9090" tcp_is $CT_V $S_ADDR 9090 closed
pass "a running container's NIC moves into a group and back (PATCH nics), live"

api PUT "/api/v1/security-groups/$SG" "$(jq -cn --arg v "$V_ADDR/32" '{rules: [
	{direction: "ingress", action: "deny", protocol: "tcp", ports: "8080", cidr: $v},
	{direction: "ingress", protocol: "tcp", ports: "8080", cidr: "0.0.0.0/0"},
	{direction: "ingress", protocol: "any", group: "default"},
	{direction: "egress", action: "deny", protocol: "icmp", cidr: "198.18.0.0/15"}]}')"
expect_status 200 "replace $SG's rules"
wait_until 30 "$CT_V pings $CT_S (group default now allowed)" ct_ping $CT_V $S_ADDR
tcp_closed $CT_V $S_ADDR 8080 # the deny comes first
tcp_open $CT_V $S_ADDR 9090
tcp_open $CT_A $S_ADDR 8080
ct_no_ping $CT_S "$OUTSIDE" # egress denied
pass "groups, changed live: a deny before an allow wins, a remote group is let in, egress deny holds"

api DELETE "/api/v1/security-groups/$SG"
expect_status 409 "delete $SG while NICs use it"
grep -qE "instance ($CT_S|$CT_D)" <<<"$(jqb .error)" || fail "the 409 does not say who uses $SG: $(jqb .error)"
api DELETE /api/v1/security-groups/default
expect_status 409 "delete the default group"

# ---- the control plane, from a VM ----------------------------------------------------------
end=$((SECONDS + 400))
until console_text_has $VM "KUMO-CP-DONE"; do
	[ $SECONDS -lt $end ] || fail "$VM did not finish its probes in 400 s; its console: $(console $VM | grep -o 'KUMO-[A-Z]*-[A-Z]* [0-9.:]*' | tr '\n' ';')"
	sleep 2
done
out=$(console $VM)
grep -q "KUMO-CP-OPEN $OUTSIDE:$PROBE_PORT" <<<"$out" || fail "$VM did not reach the outside over TCP: $(grep -o 'KUMO-CP-[A-Z]* [0-9.:]*' <<<"$out" | tr '\n' ';')"
grep -q "KUMO-GWPING-OK" <<<"$out" || fail "$VM cannot ping its gateway"
opened=$(grep -o 'KUMO-CP-OPEN [0-9.:]*' <<<"$out" | grep -v " $OUTSIDE:" || true)
[ -z "$opened" ] || fail "$VM reached the control plane: $opened"
[ "$(grep -c 'KUMO-CP-CLOSED' <<<"$out")" -ge 8 ] || fail "$VM did not report all its probes: $(grep -o 'KUMO-CP-[A-Z]* [0-9.:]*' <<<"$out" | tr '\n' ';')"
pass "VM $VM (DHCP under port security) pings its gateway and reaches the outside, but no agent, controller or host port"

# ---- dnsmasq holds no root -------------------------------------------------------------------
# The VM's lease came from a dnsmasq running as kumo-dnsmasq; it still records leases (its
# lease file was opened as root before it dropped), and its hosts file is the group's only.
vm_mac=$(nic_field $VM 0 .mac)
found_lease=0 checked=0 owners=""
for h in $(lab_host_names); do
	for pid in $(dnsmasq_pids "$h"); do
		uid=$(awk '/^Uid:/{print $2}' "/proc/$pid/status")
		[ "$uid" = "$(id -u kumo-dnsmasq)" ] || fail "dnsmasq $pid on $h runs as uid $uid, not kumo-dnsmasq"
		conf=$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 's/^--conf-file=//p')
		# dnsmasq writes them as root before it drops (the pid file it then hands to its
		# user); neither is reachable by path for that user: the state directory is root's.
		for f in "${conf%.conf}.pid" "${conf%.conf}.leases"; do
			[ $(($(stat -c '0%a' "$f") & 0022)) = 0 ] || fail "$f is writable by others: $(stat -c %a "$f")"
			if setpriv --reuid=kumo-dnsmasq --regid=kumo-dnsmasq --clear-groups -- sh -c ": >>'$f'" 2>/dev/null; then
				fail "the kumo-dnsmasq user can open $f by path"
			fi
			owners="$owners $(basename "$f"):$(stat -c %U "$f")"
		done
		hosts=$(sed -n 's/^dhcp-hostsfile=//p' "$conf")
		[ "$(stat -c '%U %G %a' "$hosts")" = "root kumo-dnsmasq 640" ] ||
			fail "$hosts is $(stat -c '%U %G %a' "$hosts"), not root kumo-dnsmasq 640"
		grep -qi "$vm_mac" "${conf%.conf}.leases" && found_lease=1
		checked=$((checked + 1))
	done
done
[ "$checked" -gt 0 ] || fail "no dnsmasq found on any host"
[ "$found_lease" = 1 ] || fail "no dnsmasq lease file records $VM's MAC $vm_mac"
pass "$checked dnsmasq processes run as kumo-dnsmasq; their pid and lease files ($owners) are out of its reach, hosts files root:kumo-dnsmasq 0640; $VM's lease is recorded"

for n in $CT_S $CT_D; do ct_delete $n; done
api DELETE "/api/v1/security-groups/$SG"
expect_status 204 "delete $SG once unused"
pass "a group in use cannot be deleted (409), nor can default; unused, it can"
