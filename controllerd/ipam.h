/*
 * ipam.h - IPv4 address management: a network's CIDR checked and described, overlap
 * between networks, the gateway, and an allocator handing out the addresses of one
 * network. Pure logic over plain structs (no database, no loop), so it is unit-tested
 * on every prefix from /8 to /30. Addresses are uint32_t in host byte order.
 */
#ifndef KUMO_IPAM_H
#define KUMO_IPAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct json_object;

#define IPAM_PREFIX_MIN 8
#define IPAM_PREFIX_MAX 30

#define IPAM_ADDR_STRLEN 16 /* "255.255.255.255" and its NUL */
#define IPAM_CIDR_STRLEN 19 /* "255.255.255.255/30" and its NUL */

/* One IPv4 network and the facts an operator asks about it; filled by ipam_cidr_parse. */
struct ipam_net {
	uint32_t network;
	int prefix; /* IPAM_PREFIX_MIN..IPAM_PREFIX_MAX */
	uint32_t netmask;
	uint32_t broadcast;
	uint32_t first_usable;
	uint32_t last_usable;
	uint32_t usable;    /* host addresses: all but the network and broadcast addresses */
	char addr_class;    /* 'A'..'E', by the first octet of the network address */
	bool private_range; /* the whole network lies in 10/8, 172.16/12 or 192.168/16 */
};

/*
 * The addresses of one network: a bit per address, set when it is in use. The network
 * and broadcast addresses and the gateway are set from the start and never cleared.
 */
struct ipam_pool {
	struct ipam_net net;
	uint32_t gateway;
	uint64_t *bits;	   /* owned; 2^(32 - prefix) bits, 2 MiB for a /8 */
	size_t nwords;	   /* 64-bit words in bits */
	size_t hint;	   /* no free address below this word */
	uint32_t capacity; /* addresses that can be handed out: usable minus the gateway */
	uint32_t assigned; /* of those, how many are allocated or reserved */
};

/*
 * Format addr as a dotted quad into buf, which holds IPAM_ADDR_STRLEN bytes. Returns
 * buf, so a call can sit in a printf argument list.
 */
char *ipam_addr_format(uint32_t addr, char *buf);

/*
 * Parse a strict dotted quad ("10.0.0.1": four decimal octets 0..255, no leading zeros,
 * nothing before or after). Returns 0 with *out set, or -1 with err (status 400, field
 * "address") saying what is wrong; *out is untouched then.
 */
int ipam_addr_parse(const char *text, uint32_t *out, struct kerr *err);

/* The class of an address by its first octet: A 0-127, B -191, C -223, D -239, E -255. */
char ipam_addr_class(uint32_t addr);

/* True when addr is in one of the private ranges 10/8, 172.16/12 and 192.168/16. */
bool ipam_addr_private(uint32_t addr);

/*
 * Parse "a.b.c.d/N" (strict dotted quad, N from IPAM_PREFIX_MIN to IPAM_PREFIX_MAX, no
 * leading zeros, nothing after) and fill *out with the network's facts. An address with
 * host bits set is refused, and the message names the network meant. Returns 0, or -1
 * with err (status 400, field "cidr"); *out is untouched on failure.
 */
int ipam_cidr_parse(const char *text, struct ipam_net *out, struct kerr *err);

/* Format net as "a.b.c.d/N" into buf (IPAM_CIDR_STRLEN bytes). Returns buf. */
char *ipam_cidr_format(const struct ipam_net *net, char *buf);

/*
 * The facts of net as a new JSON object the caller owns: cidr, network, broadcast,
 * netmask, first_usable, last_usable (strings), prefix, usable_hosts (ints), class
 * (string "A".."E") and private (bool).
 */
struct json_object *ipam_net_json(const struct ipam_net *net);

/* True when a and b share at least one address (one inside the other, or the same). */
bool ipam_overlap(const struct ipam_net *a, const struct ipam_net *b);

/* The gateway a network gets when none is given: its first usable address. */
uint32_t ipam_gateway_default(const struct ipam_net *net);

/*
 * Check that addr_text is a usable gateway for net: a dotted quad inside the network that
 * is neither its network nor its broadcast address. Returns 0, or -1 with err (status
 * 400, field "gateway") saying which rule it breaks.
 */
int ipam_gateway_check(const struct ipam_net *net, const char *addr_text, struct kerr *err);

/*
 * Set up pool over net with gateway (see ipam_gateway_default), every address free but
 * the network, broadcast and gateway addresses. Returns 0, or -1 with err (status 400,
 * field "gateway") when the gateway is no usable address of net; the pool then owns
 * nothing. Release what it owns with ipam_pool_free.
 */
int ipam_pool_init(struct ipam_pool *pool, const struct ipam_net *net, uint32_t gateway,
		   struct kerr *err);

/* Free the pool's bitmap; the pool is empty afterwards and freeing it again is harmless. */
void ipam_pool_free(struct ipam_pool *pool);

/*
 * Hand out the lowest free address of the pool into *addr. Returns 0, or -1 with err
 * (status 409, field "address") when every address is in use.
 */
int ipam_alloc(struct ipam_pool *pool, uint32_t *addr, struct kerr *err);

/*
 * Reserve addr, a fixed address asked for by name. Returns 0, or -1 with err (field
 * "address") when addr is outside the network or its network or broadcast address
 * (status 400), or is the gateway or in use already (status 409).
 */
int ipam_reserve(struct ipam_pool *pool, uint32_t addr, struct kerr *err);

/*
 * Give addr back, allocated or reserved alike. Returns 0, or -1 when addr was not in
 * use or is the network, broadcast or gateway address; the pool is unchanged then.
 */
int ipam_release(struct ipam_pool *pool, uint32_t addr);

/* True when addr belongs to the pool's network and is in use (the fixed three count). */
bool ipam_pool_in_use(const struct ipam_pool *pool, uint32_t addr);

#endif
