/*
 * ipam.c - IPv4 networks and their addresses.
 *
 * Parsing is strict on purpose: "10.0.0.010/24" or "10.0.0.0/24 " are refused rather
 * than guessed at, because inet_aton-style leniency reads "010" as octal. A CIDR with
 * host bits set is refused too, naming the network the user probably meant: silently
 * masking them would hide a typo in the prefix length.
 *
 * The allocator is a bitmap with one bit per address of the network. A /8 is 2^24
 * addresses, 2 MiB of bitmap, which is cheap next to guessing at a sparser structure.
 * A word hint (no free bit below it) makes handing out the lowest free address O(1)
 * amortized: it only moves down when an address is released.
 */
#include "ipam.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define OCTET_DIGITS_MAX 3

/* The private ranges of RFC 1918. */
static const struct {
	uint32_t base;
	int prefix;
} private_ranges[] = {
	{UINT32_C(0x0a000000), 8},  /* 10.0.0.0/8 */
	{UINT32_C(0xac100000), 12}, /* 172.16.0.0/12 */
	{UINT32_C(0xc0a80000), 16}, /* 192.168.0.0/16 */
};

static uint32_t prefix_mask(int prefix)
{
	/* A shift by 32 is undefined; /0 never reaches here but the guard costs nothing. */
	return prefix <= 0 ? 0 : UINT32_MAX << (32 - prefix);
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * Read a run of decimal digits at *p into *out and move *p past it. A number too long
 * for max_digits reads as UINT32_MAX, so the caller's range check refuses it. Returns
 * -1 with why when there is no digit or a leading zero; *p is unchanged then.
 */
static int read_number(const char **p, int max_digits, uint32_t *out, const char *what, char *why,
		       size_t whylen)
{
	const char *s = *p;
	uint32_t value = 0;
	int n = 0;

	while (is_digit(s[n])) {
		if (n < max_digits)
			value = value * 10 + (uint32_t)(s[n] - '0');
		n++;
	}
	if (n == 0) {
		if (s[0] == '\0')
			snprintf(why, whylen, "%s is missing", what);
		else
			snprintf(why, whylen, "%s expected, found \"%.1s\"", what, s);
		return -1;
	}
	/* Refused rather than read as octal (inet_aton) or decimal: either guess is wrong. */
	if (n > 1 && s[0] == '0') {
		snprintf(why, whylen, "%s %.*s has a leading zero", what, n > 12 ? 12 : n, s);
		return -1;
	}
	*out = n > max_digits ? UINT32_MAX : value;
	*p = s + n;
	return 0;
}

/*
 * Read a dotted quad at *p, leaving *p just past its last octet (the caller decides what
 * may follow). Returns 0, or -1 with why.
 */
static int read_quad(const char **p, uint32_t *out, char *why, size_t whylen)
{
	static const char *const names[] = {"first octet", "second octet", "third octet",
					    "fourth octet"};
	const char *s = *p;
	uint32_t addr = 0;

	for (int i = 0; i < 4; i++) {
		const char *start;
		uint32_t octet;

		if (i > 0) {
			if (*s == '\0' || *s == '/') {
				snprintf(why, whylen, "%s is missing", names[i]);
				return -1;
			}
			if (*s != '.') {
				snprintf(why, whylen, "unexpected \"%.1s\" after the %s", s,
					 names[i - 1]);
				return -1;
			}
			s++;
		}
		start = s;
		if (read_number(&s, OCTET_DIGITS_MAX, &octet, names[i], why, whylen) < 0)
			return -1;
		if (octet > 255) {
			snprintf(why, whylen, "%s %.*s is over 255", names[i],
				 s - start > 12 ? 12 : (int)(s - start), start);
			return -1;
		}
		addr = addr << 8 | octet;
	}
	*p = s;
	*out = addr;
	return 0;
}

char *ipam_addr_format(uint32_t addr, char *buf)
{
	snprintf(buf, IPAM_ADDR_STRLEN, "%u.%u.%u.%u", addr >> 24, (addr >> 16) & 0xff,
		 (addr >> 8) & 0xff, addr & 0xff);
	return buf;
}

/* Parse a whole dotted quad, nothing after it; why says what is wrong. */
static int parse_addr(const char *text, uint32_t *out, char *why, size_t whylen)
{
	const char *p = text;
	uint32_t addr;

	if (!text || !*text) {
		snprintf(why, whylen, "it is empty");
		return -1;
	}
	if (read_quad(&p, &addr, why, whylen) < 0)
		return -1;
	if (*p) {
		snprintf(why, whylen, "unexpected \"%.16s\" after the fourth octet", p);
		return -1;
	}
	*out = addr;
	return 0;
}

int ipam_addr_parse(const char *text, uint32_t *out, struct kerr *err)
{
	char why[96];

	if (parse_addr(text, out, why, sizeof(why)) < 0)
		return err_input(err, 400, "address", "\"%.64s\" is not an IPv4 address (%s)",
				 text ? text : "", why);
	return 0;
}

char ipam_addr_class(uint32_t addr)
{
	unsigned first = addr >> 24;

	if (first < 128)
		return 'A';
	if (first < 192)
		return 'B';
	if (first < 224)
		return 'C';
	if (first < 240)
		return 'D';
	return 'E';
}

bool ipam_addr_private(uint32_t addr)
{
	for (size_t i = 0; i < ARRAY_SIZE(private_ranges); i++)
		if ((addr & prefix_mask(private_ranges[i].prefix)) == private_ranges[i].base)
			return true;
	return false;
}

/* The whole of network/prefix inside one private range, not merely touching one. */
static bool net_private(uint32_t network, int prefix)
{
	for (size_t i = 0; i < ARRAY_SIZE(private_ranges); i++)
		if (prefix >= private_ranges[i].prefix &&
		    (network & prefix_mask(private_ranges[i].prefix)) == private_ranges[i].base)
			return true;
	return false;
}

static void net_fill(struct ipam_net *net, uint32_t network, int prefix)
{
	net->network = network;
	net->prefix = prefix;
	net->netmask = prefix_mask(prefix);
	net->broadcast = network | ~net->netmask;
	net->first_usable = network + 1;
	net->last_usable = net->broadcast - 1;
	net->usable = net->broadcast - network - 1;
	net->addr_class = ipam_addr_class(network);
	net->private_range = net_private(network, prefix);
}

int ipam_cidr_parse(const char *text, struct ipam_net *out, struct kerr *err)
{
	char why[96], addr_text[IPAM_ADDR_STRLEN], net_text[IPAM_ADDR_STRLEN];
	const char *p = text, *prefix_text;
	uint32_t addr, mask, prefix;

	if (!text || !*text)
		return err_input(err, 400, "cidr", "cidr is empty; expected a.b.c.d/N, e.g. %s",
				 "10.0.0.0/24");
	if (read_quad(&p, &addr, why, sizeof(why)) < 0)
		return err_input(err, 400, "cidr", "\"%.64s\" is not an IPv4 CIDR (%s)", text, why);
	if (*p == '\0')
		return err_input(err, 400, "cidr",
				 "\"%.64s\" has no prefix length; expected a.b.c.d/N, e.g. %s/24",
				 text, ipam_addr_format(addr, addr_text));
	if (*p != '/')
		return err_input(err, 400, "cidr",
				 "\"%.64s\" is not an IPv4 CIDR (unexpected \"%.16s\" after the "
				 "fourth octet)",
				 text, p);
	prefix_text = ++p;
	if (read_number(&p, 2, &prefix, "prefix length", why, sizeof(why)) < 0)
		return err_input(err, 400, "cidr", "\"%.64s\" is not an IPv4 CIDR (%s)", text, why);
	if (*p)
		return err_input(err, 400, "cidr",
				 "\"%.64s\" is not an IPv4 CIDR (unexpected \"%.16s\" after the "
				 "prefix length)",
				 text, p);
	if (prefix < IPAM_PREFIX_MIN || prefix > IPAM_PREFIX_MAX)
		return err_input(err, 400, "cidr",
				 "prefix length /%.12s of %.64s is out of range; networks are /%d "
				 "to /%d",
				 prefix_text, text, IPAM_PREFIX_MIN, IPAM_PREFIX_MAX);
	mask = prefix_mask((int)prefix);
	if (addr & ~mask)
		return err_input(err, 400, "cidr", "%s/%u has host bits set; did you mean %s/%u?",
				 ipam_addr_format(addr, addr_text), (unsigned)prefix,
				 ipam_addr_format(addr & mask, net_text), (unsigned)prefix);
	net_fill(out, addr, (int)prefix);
	return 0;
}

char *ipam_cidr_format(const struct ipam_net *net, char *buf)
{
	char addr[IPAM_ADDR_STRLEN];

	snprintf(buf, IPAM_CIDR_STRLEN, "%s/%d", ipam_addr_format(net->network, addr), net->prefix);
	return buf;
}

static void add_addr(struct json_object *o, const char *key, uint32_t addr)
{
	char buf[IPAM_ADDR_STRLEN];

	json_object_object_add(o, key, json_object_new_string(ipam_addr_format(addr, buf)));
}

struct json_object *ipam_net_json(const struct ipam_net *net)
{
	struct json_object *o = json_object_new_object();
	char cidr[IPAM_CIDR_STRLEN], class_text[2] = {net->addr_class, '\0'};

	json_object_object_add(o, "cidr", json_object_new_string(ipam_cidr_format(net, cidr)));
	add_addr(o, "network", net->network);
	json_object_object_add(o, "prefix", json_object_new_int(net->prefix));
	add_addr(o, "netmask", net->netmask);
	add_addr(o, "broadcast", net->broadcast);
	add_addr(o, "first_usable", net->first_usable);
	add_addr(o, "last_usable", net->last_usable);
	json_object_object_add(o, "usable_hosts", json_object_new_int64(net->usable));
	json_object_object_add(o, "class", json_object_new_string(class_text));
	json_object_object_add(o, "private", json_object_new_boolean(net->private_range));
	return o;
}

bool ipam_overlap(const struct ipam_net *a, const struct ipam_net *b)
{
	return a->network <= b->broadcast && b->network <= a->broadcast;
}

uint32_t ipam_gateway_default(const struct ipam_net *net)
{
	return net->first_usable;
}

/* addr as a gateway of net: inside it, not its network or broadcast address. */
static int gateway_check(const struct ipam_net *net, uint32_t addr, struct kerr *err)
{
	char a[IPAM_ADDR_STRLEN], cidr[IPAM_CIDR_STRLEN];
	char first[IPAM_ADDR_STRLEN], last[IPAM_ADDR_STRLEN];

	ipam_addr_format(addr, a);
	ipam_cidr_format(net, cidr);
	if ((addr & net->netmask) != net->network)
		return err_input(err, 400, "gateway",
				 "gateway %s is outside network %s (usable %s to %s)", a, cidr,
				 ipam_addr_format(net->first_usable, first),
				 ipam_addr_format(net->last_usable, last));
	if (addr == net->network)
		return err_input(err, 400, "gateway",
				 "gateway %s is the network address of %s, not a host address", a,
				 cidr);
	if (addr == net->broadcast)
		return err_input(err, 400, "gateway",
				 "gateway %s is the broadcast address of %s, not a host address", a,
				 cidr);
	return 0;
}

int ipam_gateway_check(const struct ipam_net *net, const char *addr_text, struct kerr *err)
{
	char why[96];
	uint32_t addr;

	if (parse_addr(addr_text, &addr, why, sizeof(why)) < 0)
		return err_input(err, 400, "gateway",
				 "gateway \"%.64s\" is not an IPv4 address (%s)",
				 addr_text ? addr_text : "", why);
	return gateway_check(net, addr, err);
}

static void bit_set(struct ipam_pool *pool, uint32_t index)
{
	pool->bits[index / 64] |= UINT64_C(1) << (index % 64);
}

static void bit_clear(struct ipam_pool *pool, uint32_t index)
{
	pool->bits[index / 64] &= ~(UINT64_C(1) << (index % 64));
}

static bool bit_test(const struct ipam_pool *pool, uint32_t index)
{
	return pool->bits[index / 64] >> (index % 64) & 1;
}

int ipam_pool_init(struct ipam_pool *pool, const struct ipam_net *net, uint32_t gateway,
		   struct kerr *err)
{
	uint64_t size = (uint64_t)net->usable + 2;

	memset(pool, 0, sizeof(*pool));
	if (gateway_check(net, gateway, err) < 0)
		return -1;
	pool->net = *net;
	pool->gateway = gateway;
	pool->nwords = (size_t)((size + 63) / 64);
	/* calloc: the kernel hands out zero pages lazily, so a /8 costs little up front. */
	pool->bits = xcalloc(pool->nwords, sizeof(uint64_t));
	/* Bits past the end of a network smaller than one word read as in use. */
	if (size % 64)
		pool->bits[pool->nwords - 1] = UINT64_MAX << (size % 64);
	bit_set(pool, 0);
	bit_set(pool, net->broadcast - net->network);
	bit_set(pool, gateway - net->network);
	pool->capacity = net->usable - 1;
	pool->assigned = 0;
	pool->hint = 0;
	return 0;
}

void ipam_pool_free(struct ipam_pool *pool)
{
	free(pool->bits);
	memset(pool, 0, sizeof(*pool));
}

int ipam_alloc(struct ipam_pool *pool, uint32_t *addr, struct kerr *err)
{
	char cidr[IPAM_CIDR_STRLEN];

	if (!pool->bits)
		return err_set(err, 0, "the address pool of network %s is not set up",
			       ipam_cidr_format(&pool->net, cidr));
	for (size_t w = pool->hint; w < pool->nwords; w++) {
		uint64_t word = pool->bits[w];

		if (word != UINT64_MAX) {
			uint32_t index = (uint32_t)(w * 64) + (uint32_t)__builtin_ctzll(~word);

			bit_set(pool, index);
			pool->hint = w;
			pool->assigned++;
			*addr = pool->net.network + index;
			return 0;
		}
	}
	pool->hint = pool->nwords;
	return err_input(err, 409, "address",
			 "network %s has no free address: all %u assignable addresses are in use",
			 ipam_cidr_format(&pool->net, cidr), pool->capacity);
}

int ipam_reserve(struct ipam_pool *pool, uint32_t addr, struct kerr *err)
{
	char a[IPAM_ADDR_STRLEN], cidr[IPAM_CIDR_STRLEN];
	const struct ipam_net *net = &pool->net;

	if (!pool->bits)
		return err_set(err, 0, "the address pool of network %s is not set up",
			       ipam_cidr_format(net, cidr));
	ipam_addr_format(addr, a);
	ipam_cidr_format(net, cidr);
	if ((addr & net->netmask) != net->network)
		return err_input(err, 400, "address", "address %s is outside network %s", a, cidr);
	if (addr == net->network)
		return err_input(err, 400, "address",
				 "address %s is the network address of %s and is never assigned", a,
				 cidr);
	if (addr == net->broadcast)
		return err_input(err, 400, "address",
				 "address %s is the broadcast address of %s and is never assigned",
				 a, cidr);
	if (addr == pool->gateway)
		return err_input(err, 409, "address", "address %s is the gateway of network %s", a,
				 cidr);
	if (bit_test(pool, addr - net->network))
		return err_input(err, 409, "address", "address %s of network %s is already in use",
				 a, cidr);
	bit_set(pool, addr - net->network);
	pool->assigned++;
	return 0;
}

int ipam_release(struct ipam_pool *pool, uint32_t addr)
{
	const struct ipam_net *net = &pool->net;
	uint32_t index = addr - net->network;

	if (!pool->bits || (addr & net->netmask) != net->network || addr == net->network ||
	    addr == net->broadcast || addr == pool->gateway || !bit_test(pool, index))
		return -1;
	bit_clear(pool, index);
	pool->assigned--;
	if (index / 64 < pool->hint)
		pool->hint = index / 64;
	return 0;
}

bool ipam_pool_in_use(const struct ipam_pool *pool, uint32_t addr)
{
	if (!pool->bits || (addr & pool->net.netmask) != pool->net.network)
		return false;
	return bit_test(pool, addr - pool->net.network);
}
