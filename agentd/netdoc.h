/*
 * netdoc.h - the networks document as the check and the engine both read it
 * (netdoc.c). Private to the network driver: netdrv.h is what others include.
 */
#ifndef KUMO_NETDOC_H
#define KUMO_NETDOC_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NETDOC_MTU_MIN	576
#define NETDOC_MTU_MAX	9000
#define NETDOC_ADDR_LEN 16 /* "255.255.255.255" and its NUL */

enum netdoc_mode {
	NETDOC_NAT,
	NETDOC_HOST_ONLY,
	NETDOC_BRIDGE,
};

extern const char *const netdoc_mode_names[]; /* by enum netdoc_mode */

/* A network of the document, its fields read (the document is checked already). */
struct netdoc_net {
	int64_t id;
	enum netdoc_mode mode;
	const char *name, *cidr, *gateway, *uplink; /* gateway, uplink may be NULL */
	uint32_t net, mask, gw;			    /* host byte order */
	int prefix, mtu;
	bool dhcp;
	struct json_object *dns, *segments; /* dns may be NULL */
};

/* A segment of a network. */
struct netdoc_seg {
	int vlan;
	int64_t vni;				  /* 0 if none (bridge mode) */
	const char *bridge, *vxlan, *gateway_mac; /* vxlan, gateway_mac may be NULL */
	struct json_object *peers, *ports;	  /* peers may be NULL */
};

/* Read a network's or a segment's fields; strings are borrowed from the document. */
void netdoc_net_read(struct json_object *jn, struct netdoc_net *v);
void netdoc_seg_read(struct json_object *js, struct netdoc_seg *s);
/* Length of a JSON array; 0 for NULL or anything else. */
size_t netdoc_len(struct json_object *arr);

/* Dotted-quad IPv4 to host byte order and back. */
bool netdoc_ipv4_parse(const char *s, uint32_t *out);
void netdoc_ipv4_format(uint32_t addr, char out[NETDOC_ADDR_LEN]);
/*
 * Is s kind ("kb", "kx" or "kp") followed by <digits>-<digits>, short enough for an
 * interface name? a and b (if not NULL) get the numbers. kb and kx names are canonical
 * (no leading zeros): one network and VLAN have exactly one name.
 */
bool netdoc_kumo_name(const char *s, const char *kind, long long *a, long long *b);
/* "80" or "1000-2000" (1-65535, ascending) into lo and hi; false if s is neither. */
bool netdoc_ports_parse(const char *s, int *lo, int *hi);
/* The index of the security group called name in groups (an array), or -1. */
int netdoc_group_index(struct json_object *groups, const char *name);
/* An interface name safe to hand to ip: [A-Za-z0-9_.-], not starting with '-'. */
bool netdoc_ifname_safe(const char *s);

#endif
