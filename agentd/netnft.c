/*
 * netnft.c - the nftables tables of one network, as text for `nft -f -` (netdrv.c
 * replaces them whole, atomically, in one transaction with the other networks').
 *
 * table inet kumo_n<NID> (every mode):
 *   input    instances reach their host only for DHCP (udp 67) and DNS (53) to
 *            dnsmasq and ping of the gateway, plus replies to what the host started;
 *            everything else from a segment's bridge to the host is dropped.
 *   forward  the control plane first: instance traffic to the control-plane
 *            addresses the controller lists (every host's underlay address, the
 *            controller's) and to this host's underlay subnet is dropped. Then the
 *            security groups of the local ports (below), then the network's isolation
 *            (routed modes): within a segment, out to the world (nat), replies back.
 *   postrouting (nat) masquerade.
 * table bridge kumo_n<NID>:
 *   prerouting  port security: a frame from an instance port must carry the port's
 *               MAC, be ARP or IPv4, claim only the port's address (ARP and IPv4;
 *               0.0.0.0 for a DHCP request) and never be a DHCP server's reply. It
 *               runs before the bridge learns the source, so no other MAC is learned.
 *   output, forward (routed modes) the anycast gateway and dnsmasq stay local.
 *
 * Security groups are stateful and keyed by address (port security makes a source
 * address the port's own): bridged frames reach the inet forward hook through
 * br_netfilter with iif = oif = the bridge, so a port is known by its address. For a
 * connection's first packet (ct state not established or related):
 *   egress of a local port P (ip saddr P): its groups' egress rules in order, the
 *     first match decides (deny drops, allow goes on); no match allows.
 *   ingress to P (ip daddr P): its groups' ingress rules in order, the first match
 *     decides; then a source that is a member of one of P's groups is allowed; any
 *     other is dropped.
 * "Goes on" is a return to the forward chain, so the network's isolation still
 * applies after a group allowed something. A port that names no group is in the
 * group "default" (the controller says so in the document).
 */
#include "netnft.h"

#include <stdio.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "util.h"

/* A chain name for port ifname ("kp7-0" -> "in_kp7_0"): nft names take no '-'. */
static void port_chain(char *out, size_t len, const char *prefix, const char *ifname)
{
	snprintf(out, len, "%s_%s", prefix, ifname);
	for (char *p = out; *p; p++)
		if (*p == '-')
			*p = '_';
}

/* Does the document name group index gi on any local port of n? */
static bool group_used(const struct netdoc_net *n, struct json_object *groups, int gi)
{
	const char *name = json_get_str(json_object_array_get_idx(groups, (size_t)gi), "name", "");

	for (size_t j = 0; j < netdoc_len(n->segments); j++) {
		struct json_object *ports =
			json_object_object_get(json_object_array_get_idx(n->segments, j), "ports");

		for (size_t k = 0; k < netdoc_len(ports); k++) {
			struct json_object *names = json_object_object_get(
				json_object_array_get_idx(ports, k), "security_groups");

			for (size_t m = 0; m < netdoc_len(names); m++)
				if (strcmp(json_object_get_string(
						   json_object_array_get_idx(names, m)),
					   name) == 0)
					return true;
		}
	}
	return false;
}

/* Is group gi needed in this table: named by a local port or by a rule of one that is? */
static bool group_needed(const struct netdoc_net *n, struct json_object *groups, int gi)
{
	const char *name = json_get_str(json_object_array_get_idx(groups, (size_t)gi), "name", "");

	if (group_used(n, groups, gi))
		return true;
	for (size_t i = 0; i < netdoc_len(groups); i++) {
		struct json_object *rules =
			json_object_object_get(json_object_array_get_idx(groups, i), "rules");

		if (!group_used(n, groups, (int)i))
			continue;
		for (size_t r = 0; r < netdoc_len(rules); r++)
			if (strcmp(json_get_str(json_object_array_get_idx(rules, r), "group", ""),
				   name) == 0)
				return true;
	}
	return false;
}

/* The match of one rule (without verdict), seen from the port: remote is saddr on
 * ingress, daddr on egress. */
static void rule_match(FILE *f, struct json_object *groups, struct json_object *rule, bool ingress)
{
	const char *proto = json_get_str(rule, "protocol", "any");
	const char *ports = json_get_str(rule, "ports", NULL);
	const char *cidr = json_get_str(rule, "cidr", NULL);
	const char *group = json_get_str(rule, "group", NULL);
	const char *dir = ingress ? "saddr" : "daddr";
	int lo, hi;

	fprintf(f, "\t\tmeta nfproto ipv4");
	if (cidr)
		fprintf(f, " ip %s %s", dir, cidr);
	else if (group)
		fprintf(f, " ip %s @sg%d", dir, netdoc_group_index(groups, group));
	if (strcmp(proto, "any") != 0)
		fprintf(f, " meta l4proto %s", proto);
	if (ports && netdoc_ports_parse(ports, &lo, &hi)) {
		if (lo == hi)
			fprintf(f, " %s dport %d", proto, lo);
		else
			fprintf(f, " %s dport %d-%d", proto, lo, hi);
	}
}

/* The port's groups' rules of one direction, in order: how many there are. */
static size_t port_rules(FILE *f, struct json_object *groups, struct json_object *port,
			 bool ingress)
{
	struct json_object *names = json_object_object_get(port, "security_groups");
	size_t count = 0;

	for (size_t m = 0; m < netdoc_len(names); m++) {
		int gi = netdoc_group_index(
			groups, json_object_get_string(json_object_array_get_idx(names, m)));
		struct json_object *rules = json_object_object_get(
			json_object_array_get_idx(groups, (size_t)gi), "rules");

		for (size_t r = 0; gi >= 0 && r < netdoc_len(rules); r++) {
			struct json_object *rule = json_object_array_get_idx(rules, r);
			bool deny = strcmp(json_get_str(rule, "action", "allow"), "deny") == 0;

			if (strcmp(json_get_str(rule, "direction", ""),
				   ingress ? "ingress" : "egress") != 0)
				continue;
			count++;
			if (f == NULL)
				continue;
			rule_match(f, groups, rule, ingress);
			fprintf(f, " %s\n", deny ? "drop" : "return");
		}
	}
	return count;
}

/* The per-port chains. */
static void groups_chains(FILE *f, const struct netdoc_net *n, struct json_object *groups)
{
	for (size_t j = 0; j < netdoc_len(n->segments); j++) {
		struct json_object *ports =
			json_object_object_get(json_object_array_get_idx(n->segments, j), "ports");

		for (size_t k = 0; k < netdoc_len(ports); k++) {
			struct json_object *port = json_object_array_get_idx(ports, k);
			struct json_object *names = json_object_object_get(port, "security_groups");
			const char *ifname = json_get_str(port, "ifname", "");
			char chain[40];

			if (json_get_str(port, "address", NULL) == NULL)
				continue;
			if (port_rules(NULL, groups, port, false) > 0) {
				port_chain(chain, sizeof(chain), "eg", ifname);
				fprintf(f, "\tchain %s {\n", chain);
				port_rules(f, groups, port, false);
				fprintf(f, "\t}\n");
			}
			port_chain(chain, sizeof(chain), "in", ifname);
			fprintf(f, "\tchain %s {\n", chain);
			port_rules(f, groups, port, true);
			for (size_t m = 0; m < netdoc_len(names); m++)
				fprintf(f, "\t\tip saddr @sg%d return\n",
					netdoc_group_index(
						groups,
						json_object_get_string(
							json_object_array_get_idx(names, m))));
			fprintf(f, "\t\tdrop\n\t}\n");
		}
	}
}

/*
 * The forward rules jumping to them. Scoped by the port's bridge as well as its
 * address: every table's forward chain sees every packet, and two bridge networks may
 * hold the same address.
 */
static void groups_jumps(FILE *f, const struct netdoc_net *n, struct json_object *groups)
{
	for (size_t j = 0; j < netdoc_len(n->segments); j++) {
		struct json_object *ports =
			json_object_object_get(json_object_array_get_idx(n->segments, j), "ports");
		struct netdoc_seg s;

		netdoc_seg_read(json_object_array_get_idx(n->segments, j), &s);
		for (size_t k = 0; k < netdoc_len(ports); k++) {
			struct json_object *port = json_object_array_get_idx(ports, k);
			const char *ifname = json_get_str(port, "ifname", "");
			const char *addr = json_get_str(port, "address", NULL);
			char chain[40];

			if (addr == NULL)
				continue;
			if (port_rules(NULL, groups, port, false) > 0) {
				port_chain(chain, sizeof(chain), "eg", ifname);
				fprintf(f,
					"\t\tiifname \"%s\" ct state new,invalid,untracked ip "
					"saddr %s "
					"jump %s\n",
					s.bridge, addr, chain);
			}
			port_chain(chain, sizeof(chain), "in", ifname);
			fprintf(f,
				"\t\toifname \"%s\" ct state new,invalid,untracked ip daddr %s "
				"jump "
				"%s\n",
				s.bridge, addr, chain);
		}
	}
}

/* Instances reach their host for DHCP, DNS and a ping of the gateway only. */
static void input_chain(FILE *f, const struct netdoc_net *n)
{
	bool routed = n->mode != NETDOC_BRIDGE;

	fprintf(f, "\tchain input {\n"
		   "\t\ttype filter hook input priority filter; policy accept;\n");
	for (size_t j = 0; j < netdoc_len(n->segments); j++) {
		struct netdoc_seg s;

		netdoc_seg_read(json_object_array_get_idx(n->segments, j), &s);
		/* Replies to what the host started (it pings its instances, for one). */
		fprintf(f, "\t\tiifname \"%s\" ct state established,related accept\n", s.bridge);
		if (routed && n->dhcp)
			fprintf(f, "\t\tiifname \"%s\" udp sport 68 udp dport 67 accept\n",
				s.bridge);
		if (routed)
			fprintf(f,
				"\t\tiifname \"%s\" ip daddr %s udp dport 53 accept\n"
				"\t\tiifname \"%s\" ip daddr %s tcp dport 53 accept\n"
				"\t\tiifname \"%s\" ip daddr %s icmp type echo-request accept\n",
				s.bridge, n->gateway, s.bridge, n->gateway, s.bridge, n->gateway);
		fprintf(f, "\t\tiifname \"%s\" drop\n", s.bridge);
	}
	fprintf(f, "\t}\n");
}

/* Instance traffic to the control plane and this host's underlay subnet: dropped. */
static void control_plane_rules(FILE *f, const struct netdoc_net *n, const struct netnft_host *h)
{
	for (size_t j = 0; j < netdoc_len(n->segments); j++) {
		struct netdoc_seg s;

		netdoc_seg_read(json_object_array_get_idx(n->segments, j), &s);
		if (netdoc_len(h->control_plane) > 0) {
			fprintf(f, "\t\tiifname \"%s\" ip daddr { ", s.bridge);
			for (size_t i = 0; i < netdoc_len(h->control_plane); i++)
				fprintf(f, "%s%s", i ? ", " : "",
					json_object_get_string(
						json_object_array_get_idx(h->control_plane, i)));
			fprintf(f, " } drop\n");
		}
		if (h->underlay_prefix > 0) {
			char net[NETDOC_ADDR_LEN];

			netdoc_ipv4_format(h->underlay_net, net);
			fprintf(f, "\t\tiifname \"%s\" ip daddr %s/%d drop\n", s.bridge, net,
				h->underlay_prefix);
		}
	}
}

/* A frame from each port with port security: its MAC, ARP or IPv4, its address. */
static void port_security_chain(FILE *f, const struct netdoc_net *n)
{
	fprintf(f, "\tchain prerouting {\n"
		   "\t\ttype filter hook prerouting priority filter; policy accept;\n");
	for (size_t j = 0; j < netdoc_len(n->segments); j++) {
		struct json_object *ports =
			json_object_object_get(json_object_array_get_idx(n->segments, j), "ports");

		for (size_t k = 0; k < netdoc_len(ports); k++) {
			struct json_object *port = json_object_array_get_idx(ports, k);
			const char *ifname = json_get_str(port, "ifname", "");
			const char *mac = json_get_str(port, "mac", "");
			const char *addr = json_get_str(port, "address", NULL);

			if (!json_get_bool(port, "port_security", true))
				continue;
			fprintf(f, "\t\tiifname \"%s\" ether saddr != %s drop\n", ifname, mac);
			/* No IPv6 (router advertisements), no VLAN tags: kumo networks are
			 * IPv4. */
			fprintf(f, "\t\tiifname \"%s\" ether type != { ip, arp } drop\n", ifname);
			fprintf(f, "\t\tiifname \"%s\" ether type arp arp saddr ether != %s drop\n",
				ifname, mac);
			fprintf(f, "\t\tiifname \"%s\" ether type ip udp sport 67 drop\n", ifname);
			if (addr == NULL)
				continue;
			/* 0.0.0.0: an ARP probe, and DHCP before the address is known. */
			fprintf(f,
				"\t\tiifname \"%s\" ether type arp arp saddr ip != { %s, 0.0.0.0 } "
				"drop\n",
				ifname, addr);
			fprintf(f,
				"\t\tiifname \"%s\" ether type ip ip saddr 0.0.0.0 udp sport 68 "
				"udp dport 67 accept\n",
				ifname);
			fprintf(f, "\t\tiifname \"%s\" ether type ip ip saddr != %s drop\n", ifname,
				addr);
		}
	}
	fprintf(f, "\t}\n");
}

static void inet_table(FILE *f, const struct netdoc_net *n, const struct netnft_host *h)
{
	size_t nsegs = netdoc_len(n->segments);
	bool nat = n->mode == NETDOC_NAT, routed = n->mode != NETDOC_BRIDGE;

	fprintf(f, "table inet kumo_n%lld\ndelete table inet kumo_n%lld\n", (long long)n->id,
		(long long)n->id);
	fprintf(f, "table inet kumo_n%lld {\n", (long long)n->id);
	for (size_t i = 0; i < netdoc_len(h->groups); i++) {
		struct json_object *members =
			json_object_object_get(json_object_array_get_idx(h->groups, i), "members");

		if (!group_needed(n, h->groups, (int)i))
			continue;
		fprintf(f, "\tset sg%zu {\n\t\ttype ipv4_addr\n", i);
		for (size_t m = 0; m < netdoc_len(members); m++)
			fprintf(f, "%s%s", m ? ", " : "\t\telements = { ",
				json_object_get_string(json_object_array_get_idx(members, m)));
		fprintf(f, "%s\t}\n", netdoc_len(members) ? " }\n" : "");
	}
	groups_chains(f, n, h->groups);
	input_chain(f, n);
	/* Bridged frames (br_netfilter) come here with iif = oif = the bridge. */
	fprintf(f, "\tchain forward {\n"
		   "\t\ttype filter hook forward priority filter; policy accept;\n");
	control_plane_rules(f, n, h);
	groups_jumps(f, n, h->groups);
	for (size_t j = 0; routed && j < nsegs; j++) {
		struct netdoc_seg s;

		netdoc_seg_read(json_object_array_get_idx(n->segments, j), &s);
		fprintf(f, "\t\tiifname \"%s\" oifname \"%s\" accept\n", s.bridge, s.bridge);
		if (nat) {
			/* Out to the world, not into another segment or network. */
			fprintf(f, "\t\tiifname \"%s\" oifname != \"kb*\" accept\n", s.bridge);
			fprintf(f, "\t\toifname \"%s\" ct state established,related accept\n",
				s.bridge);
		}
		fprintf(f, "\t\tiifname \"%s\" drop\n\t\toifname \"%s\" drop\n", s.bridge,
			s.bridge);
	}
	fprintf(f, "\t}\n");
	if (nat)
		fprintf(f,
			"\tchain postrouting {\n"
			"\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
			"\t\tip saddr %s oifname != \"kb*\" masquerade\n"
			"\t}\n",
			n->cidr);
	fprintf(f, "}\n");
}

static void bridge_table(FILE *f, const struct netdoc_net *n)
{
	size_t nsegs = netdoc_len(n->segments);

	fprintf(f, "table bridge kumo_n%lld\ndelete table bridge kumo_n%lld\n", (long long)n->id,
		(long long)n->id);
	fprintf(f, "table bridge kumo_n%lld {\n", (long long)n->id);
	port_security_chain(f, n);
	if (n->mode != NETDOC_BRIDGE) {
		/* Each host's anycast gateway and dnsmasq answer its own instances only. */
		fprintf(f, "\tchain output {\n"
			   "\t\ttype filter hook output priority filter; policy accept;\n");
		for (size_t j = 0; j < nsegs; j++) {
			struct netdoc_seg s;

			netdoc_seg_read(json_object_array_get_idx(n->segments, j), &s);
			fprintf(f, "\t\toifname \"%s\" ether saddr %s drop\n", s.vxlan,
				s.gateway_mac);
		}
		fprintf(f, "\t}\n\tchain forward {\n"
			   "\t\ttype filter hook forward priority filter; policy accept;\n");
		for (size_t j = 0; j < nsegs; j++) {
			struct netdoc_seg s;

			netdoc_seg_read(json_object_array_get_idx(n->segments, j), &s);
			fprintf(f, "\t\toifname \"%s\" arp daddr ip %s drop\n", s.vxlan,
				n->gateway);
			fprintf(f, "\t\toifname \"%s\" udp dport 67 drop\n", s.vxlan);
		}
		fprintf(f, "\t}\n");
	}
	fprintf(f, "}\n");
}

char *netnft_network(const struct netdoc_net *n, const struct netnft_host *h)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (f == NULL)
		fatal("open_memstream: out of memory");
	inet_table(f, n, h);
	bridge_table(f, n);
	fclose(f);
	return text;
}
