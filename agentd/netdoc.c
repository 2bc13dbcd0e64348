/*
 * netdoc.c - the networks document: its strict check (netdrv_doc_check()), and the
 * readers and parsers the engine (netdrv.c) shares with it: the fields of a network
 * and of a segment, IPv4 addresses, the names kumo gives links.
 *
 * The check refuses a document whole, naming the field at fault, before anything is
 * changed; the engine then reads a checked document without looking again.
 */
#include "netdoc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "json.h"
#include "netdrv.h"
#include "util.h"
#include "valid.h"

#define HASH_HEX_LEN   64
#define VNI_MAX	       16777215
#define VLAN_MAX       4094
#define NETWORK_ID_MAX 65535 /* the gateway MAC holds it in two bytes */

const char *const netdoc_mode_names[] = {"nat", "host-only", "bridge"};

/* ---- reading and parsing --------------------------------------------------------- */

/* Dotted quad (no leading zeros) to host byte order; false if s is not one. */
bool netdoc_ipv4_parse(const char *s, uint32_t *out)
{
	struct in_addr in;

	if (s == NULL || inet_pton(AF_INET, s, &in) != 1)
		return false;
	*out = ntohl(in.s_addr);
	return true;
}

/* Host byte order to a dotted quad in out. */
void netdoc_ipv4_format(uint32_t addr, char out[NETDOC_ADDR_LEN])
{
	struct in_addr in = {.s_addr = htonl(addr)};

	inet_ntop(AF_INET, &in, out, INET_ADDRSTRLEN);
}

static uint32_t prefix_mask(int prefix)
{
	return prefix <= 0 ? 0 : 0xffffffffu << (32 - prefix);
}

/* "A.B.C.D/P" with P in 0..32 written without leading zeros. */
static bool cidr_parse(const char *s, uint32_t *net, int *prefix)
{
	const char *slash = strchr(s, '/');
	char addr[INET_ADDRSTRLEN], *end;
	size_t len;
	long p;

	if (slash == NULL || (len = (size_t)(slash - s)) >= sizeof(addr))
		return false;
	memcpy(addr, s, len);
	addr[len] = '\0';
	if (!isdigit((unsigned char)slash[1]) || (slash[1] == '0' && slash[2] != '\0'))
		return false;
	p = strtol(slash + 1, &end, 10);
	if (*end != '\0' || p > 32 || !netdoc_ipv4_parse(addr, net))
		return false;
	*prefix = (int)p;
	return true;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* "xx:xx:xx:xx:xx:xx" into 48 bits. */
static bool mac_parse(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (strlen(s) != 17)
		return false;
	for (int i = 0; i < 6; i++) {
		int hi = hex_digit(s[3 * i]), lo = hex_digit(s[3 * i + 1]);

		if (hi < 0 || lo < 0 || (i < 5 && s[3 * i + 2] != ':'))
			return false;
		v = v << 8 | (uint64_t)(hi << 4 | lo);
	}
	*out = v;
	return true;
}

/* A MAC an interface may carry: not zero, not multicast. */
static bool mac_unicast(const char *s)
{
	uint64_t v;

	return mac_parse(s, &v) && v != 0 && !(v >> 40 & 1);
}

/* Digits without a leading zero (canonical) when canonical; at least one. */
static const char *digits_skip(const char *s, bool canonical, long long *value)
{
	const char *p = s;

	while (isdigit((unsigned char)*p))
		p++;
	if (p == s || p - s > 9 || (canonical && *s == '0' && p - s > 1))
		return NULL;
	if (value)
		*value = strtoll(s, NULL, 10);
	return p;
}

/*
 * True when s is kind ("kb", "kx" or "kp") followed by <digits>-<digits> and fits an
 * interface name; a and b (if not NULL) get the two numbers. Bridge and VXLAN names
 * are canonical (no leading zeros), so one network and VLAN have exactly one name.
 */
bool netdoc_kumo_name(const char *s, const char *kind, long long *a, long long *b)
{
	bool canonical = strcmp(kind, "kp") != 0;
	const char *p;

	if (s == NULL || strlen(s) >= IFNAMSIZ || strncmp(s, kind, 2) != 0)
		return false;
	p = digits_skip(s + 2, canonical, a);
	if (p == NULL || *p != '-')
		return false;
	p = digits_skip(p + 1, canonical, b);
	return p != NULL && *p == '\0';
}

/* An interface name safe to hand to ip: [A-Za-z0-9_.-], not starting with '-'. */
bool netdoc_ifname_safe(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len >= IFNAMSIZ || s[0] == '-' || strcmp(s, ".") == 0 ||
	    strcmp(s, "..") == 0)
		return false;
	for (const char *p = s; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("_.-", *p))
			return false;
	return true;
}

static bool hash_valid(const char *s)
{
	if (strlen(s) != HASH_HEX_LEN)
		return false;
	for (const char *p = s; *p; p++)
		if (!isdigit((unsigned char)*p) && !(*p >= 'a' && *p <= 'f'))
			return false;
	return true;
}

static int mode_parse(const char *s)
{
	for (size_t i = 0; i < ARRAY_SIZE(netdoc_mode_names); i++)
		if (strcmp(s, netdoc_mode_names[i]) == 0)
			return (int)i;
	return -1;
}

/* A network's fields, read (strings borrowed); call only on a checked document. */
void netdoc_net_read(struct json_object *jn, struct netdoc_net *v)
{
	memset(v, 0, sizeof(*v));
	v->id = json_get_int(jn, "id", 0);
	v->mode = (enum netdoc_mode)mode_parse(json_get_str(jn, "mode", "nat"));
	v->name = json_get_str(jn, "name", "");
	v->cidr = json_get_str(jn, "cidr", "");
	v->gateway = json_get_str(jn, "gateway", NULL);
	v->uplink = json_get_str(jn, "uplink", NULL);
	if (!cidr_parse(v->cidr, &v->net, &v->prefix))
		v->prefix = 0;
	v->mask = prefix_mask(v->prefix);
	if (!v->gateway || !netdoc_ipv4_parse(v->gateway, &v->gw))
		v->gw = 0;
	v->mtu = (int)json_get_int(jn, "mtu", 1500);
	v->dhcp = json_get_bool(jn, "dhcp", false);
	v->dns = json_object_object_get(jn, "dns");
	v->segments = json_object_object_get(jn, "segments");
}

/* A segment's fields, read (strings borrowed); call only on a checked document. */
void netdoc_seg_read(struct json_object *js, struct netdoc_seg *s)
{
	s->vlan = (int)json_get_int(js, "vlan", 0);
	s->vni = json_get_int(js, "vni", 0);
	s->bridge = json_get_str(js, "bridge", "");
	s->vxlan = json_get_str(js, "vxlan", NULL);
	s->gateway_mac = json_get_str(js, "gateway_mac", NULL);
	s->peers = json_object_object_get(js, "peers");
	s->ports = json_object_object_get(js, "ports");
}

/* Length of a JSON array; 0 for NULL or any other type. */
size_t netdoc_len(struct json_object *arr)
{
	return arr && json_object_is_type(arr, json_type_array) ? json_array_len(arr) : 0;
}

/* ---- checking the document ------------------------------------------------------- */

static const struct json_field doc_fields[] = {
	{"hash", JK_STRING, true, NULL},	  {"underlay", JK_STRING, false, NULL},
	{"control_plane", JK_ARRAY, false, NULL}, {"security_groups", JK_ARRAY, false, NULL},
	{"networks", JK_ARRAY, true, NULL},	  {NULL, 0, false, NULL},
};

static const struct json_field group_fields[] = {
	{"name", JK_STRING, true, NULL},
	{"members", JK_ARRAY, true, NULL},
	{"rules", JK_ARRAY, true, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field rule_fields[] = {
	{"direction", JK_STRING, true, NULL},
	{"action", JK_STRING, true, NULL},
	{"protocol", JK_STRING, true, NULL},
	{"ports", JK_STRING, false, NULL},
	{"cidr", JK_STRING, false, NULL},
	{"group", JK_STRING, false, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field network_fields[] = {
	{"id", JK_INT, true, NULL},	    {"name", JK_STRING, true, NULL},
	{"mode", JK_STRING, true, NULL},    {"cidr", JK_STRING, true, NULL},
	{"prefix", JK_INT, true, NULL},	    {"gateway", JK_STRING, false, NULL},
	{"mtu", JK_INT, true, NULL},	    {"dhcp", JK_BOOL, true, NULL},
	{"dns", JK_ARRAY, false, NULL},	    {"uplink", JK_STRING, false, NULL},
	{"segments", JK_ARRAY, true, NULL}, {NULL, 0, false, NULL},
};

static const struct json_field segment_fields[] = {
	{"vlan", JK_INT, true, NULL},
	{"vni", JK_INT, false, NULL},
	{"bridge", JK_STRING, true, NULL},
	{"vxlan", JK_STRING, false, NULL},
	{"gateway_mac", JK_STRING, false, NULL},
	{"peers", JK_ARRAY, false, NULL},
	{"ports", JK_ARRAY, true, NULL},
	{NULL, 0, false, NULL},
};

static const struct json_field port_fields[] = {
	{"ifname", JK_STRING, true, NULL},
	{"mac", JK_STRING, true, NULL},
	{"address", JK_STRING, false, NULL},
	{"instance", JK_STRING, true, NULL},
	{"port_security", JK_BOOL, false, NULL},
	{"security_groups", JK_ARRAY, false, NULL},
	{NULL, 0, false, NULL},
};

/* An input error about at.member (member may be ""): the message starts with the field. */
static int bad(struct kerr *err, const char *at, const char *member, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int bad(struct kerr *err, const char *at, const char *member, const char *fmt, ...)
{
	char field[64], text[192];
	va_list ap;

	snprintf(field, sizeof(field), "%s%s%s", at, *at && *member ? "." : "", member);
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return err_input(err, 400, field, "%s %s", field, text);
}

/*
 * json_fields_check() where an optional member may also be null (meaning absent), and
 * the message names where in the document the object is (at, "" for the top).
 */
static int fields_check(struct json_object *obj, const struct json_field *fields, const char *at,
			struct kerr *err)
{
	struct json_object *copy = json_object_new_object();
	char msg[sizeof(err->msg)];
	int ret;

	json_object_object_foreach(obj, key, val)
	{
		const struct json_field *f = fields;

		while (f->name && strcmp(f->name, key) != 0)
			f++;
		if (val == NULL && f->name) {
			if (f->required) {
				json_object_put(copy);
				return bad(err, at, key, "must be %s, not null",
					   json_kind_name(f->kind));
			}
			continue;
		}
		json_object_object_add(copy, key, json_object_get(val));
	}
	ret = *at ? json_fields_check_in(copy, fields, at, err)
		  : json_fields_check(copy, fields, err);
	json_object_put(copy);
	if (ret < 0 && *at) {
		snprintf(msg, sizeof(msg), "%s: %s", at, err->msg);
		snprintf(err->msg, sizeof(err->msg), "%s", msg);
	}
	return ret;
}

/* What the check of one document collects to find duplicates across networks. */
struct port_ref {
	const char *ifname;
	size_t net, seg, port;
};

struct doc_check {
	bool has_underlay;
	uint32_t underlay;
	struct json_object *groups; /* the document's security_groups, or NULL */
	size_t segments, ports;	    /* so far, all networks */
	struct port_ref *ifnames;
};

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int port_ref_cmp(const void *a, const void *b)
{
	return strcmp(((const struct port_ref *)a)->ifname, ((const struct port_ref *)b)->ifname);
}

/* Sorted values: the index of the first duplicate, or n. */
static size_t first_duplicate(const void *base, size_t n, size_t size,
			      int (*cmp)(const void *, const void *))
{
	const char *p = base;

	for (size_t i = 1; i < n; i++)
		if (cmp(p + (i - 1) * size, p + i * size) == 0)
			return i;
	return n;
}

static int ipv4_field(struct json_object *val, const char *at, const char *member, uint32_t *addr,
		      struct kerr *err)
{
	if (!netdoc_ipv4_parse(json_object_get_string(val), addr))
		return bad(err, at, member, "must be an IPv4 address (\"10.0.0.1\")");
	return 0;
}

/* The index of group name in the document's security_groups, or -1. */
int netdoc_group_index(struct json_object *groups, const char *name)
{
	for (size_t i = 0; i < netdoc_len(groups); i++)
		if (strcmp(json_get_str(json_object_array_get_idx(groups, i), "name", ""), name) ==
		    0)
			return (int)i;
	return -1;
}

/* "80" or "1000-2000", ports 1 to 65535, the first not above the second. */
bool netdoc_ports_parse(const char *s, int *lo, int *hi)
{
	long long a, b;
	const char *p = digits_skip(s, true, &a);

	if (p == NULL || a < 1 || a > 65535)
		return false;
	b = a;
	if (*p == '-' && ((p = digits_skip(p + 1, true, &b)) == NULL || b < a || b > 65535))
		return false;
	if (*p != '\0')
		return false;
	*lo = (int)a;
	*hi = (int)b;
	return true;
}

/* An array of at most max IPv4 addresses, none twice. */
static int addr_list_check(struct json_object *arr, const char *at, const char *member, size_t max,
			   struct kerr *err)
{
	size_t n = netdoc_len(arr), dup;
	_cleanup_free_ uint32_t *addrs = NULL;
	char item[48];

	if (n > max)
		return bad(err, at, member, "lists more than %zu addresses", max);
	addrs = xcalloc(n + 1, sizeof(*addrs));
	for (size_t i = 0; i < n; i++) {
		struct json_object *val = json_object_array_get_idx(arr, i);

		snprintf(item, sizeof(item), "%s[%zu]", member, i);
		if (!json_object_is_type(val, json_type_string))
			return bad(err, at, item, "must be a string");
		if (ipv4_field(val, at, item, &addrs[i], err) < 0)
			return -1;
	}
	qsort(addrs, n, sizeof(*addrs), u32_cmp);
	if ((dup = first_duplicate(addrs, n, sizeof(*addrs), u32_cmp)) < n) {
		char text[INET_ADDRSTRLEN];

		netdoc_ipv4_format(addrs[dup], text);
		return bad(err, at, member, "lists %s twice", text);
	}
	return 0;
}

static const char *const rule_directions[] = {"ingress", "egress", NULL};
static const char *const rule_actions[] = {"allow", "deny", NULL};
static const char *const rule_protocols[] = {"tcp", "udp", "icmp", "any", NULL};

static bool word_in(const char *s, const char *const *words)
{
	for (; *words; words++)
		if (strcmp(s, *words) == 0)
			return true;
	return false;
}

static int rule_check(struct json_object *groups, struct json_object *jr, const char *at,
		      struct kerr *err)
{
	const char *proto, *ports, *cidr, *group;
	uint32_t net;
	int prefix, lo, hi;

	if (!json_object_is_type(jr, json_type_object))
		return bad(err, at, "", "must be an object");
	if (fields_check(jr, rule_fields, at, err) < 0)
		return -1;
	if (!word_in(json_get_str(jr, "direction", ""), rule_directions))
		return bad(err, at, "direction", "must be \"ingress\" or \"egress\"");
	if (!word_in(json_get_str(jr, "action", ""), rule_actions))
		return bad(err, at, "action", "must be \"allow\" or \"deny\"");
	proto = json_get_str(jr, "protocol", "");
	if (!word_in(proto, rule_protocols))
		return bad(err, at, "protocol", "must be \"tcp\", \"udp\", \"icmp\" or \"any\"");
	ports = json_get_str(jr, "ports", NULL);
	if (ports && strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0)
		return bad(err, at, "ports", "needs protocol tcp or udp");
	if (ports && !netdoc_ports_parse(ports, &lo, &hi))
		return bad(err, at, "ports", "must be a port or a range (\"80\", \"1000-2000\")");
	cidr = json_get_str(jr, "cidr", NULL);
	group = json_get_str(jr, "group", NULL);
	if ((cidr == NULL) == (group == NULL))
		return bad(err, at, "cidr", "or group: exactly one must be given");
	if (cidr && (!cidr_parse(cidr, &net, &prefix) || (net & ~prefix_mask(prefix)) != 0))
		return bad(err, at, "cidr", "must be an IPv4 network (\"10.0.0.0/8\")");
	if (group && netdoc_group_index(groups, group) < 0)
		return bad(err, at, "group", "names %.63s, not a group of the document", group);
	return 0;
}

static int groups_check(struct doc_check *c, struct json_object *groups, struct kerr *err)
{
	size_t n = netdoc_len(groups);

	if (n > NETDRV_GROUPS_MAX)
		return bad(err, "", "security_groups", "lists more than %d groups",
			   NETDRV_GROUPS_MAX);
	c->groups = groups;
	for (size_t i = 0; i < n; i++) {
		struct json_object *jg = json_object_array_get_idx(groups, i), *rules;
		char at[32], rat[64];

		snprintf(at, sizeof(at), "security_groups[%zu]", i);
		if (!json_object_is_type(jg, json_type_object))
			return bad(err, at, "", "must be an object");
		if (fields_check(jg, group_fields, at, err) < 0)
			return -1;
		if (!name_valid(json_get_str(jg, "name", "")))
			return bad(err, at, "name", "must be a group name ([a-z0-9-], 1-%d)",
				   NAME_MAX_LEN);
		if (netdoc_group_index(groups, json_get_str(jg, "name", "")) != (int)i)
			return bad(err, at, "name", "is also an earlier group's");
		if (addr_list_check(json_object_object_get(jg, "members"), at, "members",
				    NETDRV_GROUP_MEMBERS_MAX, err) < 0)
			return -1;
		rules = json_object_object_get(jg, "rules");
		if (netdoc_len(rules) > NETDRV_GROUP_RULES_MAX)
			return bad(err, at, "rules", "lists more than %d rules",
				   NETDRV_GROUP_RULES_MAX);
		for (size_t r = 0; r < netdoc_len(rules); r++) {
			snprintf(rat, sizeof(rat), "%s.rules[%zu]", at, r);
			if (rule_check(groups, json_object_array_get_idx(rules, r), rat, err) < 0)
				return -1;
		}
	}
	return 0;
}

/* A port's security_groups: names of the document's groups, each once. */
static int port_groups_check(struct doc_check *c, struct json_object *names, const char *at,
			     struct kerr *err)
{
	char item[32];

	if (netdoc_len(names) > NETDRV_PORT_GROUPS_MAX)
		return bad(err, at, "security_groups", "lists more than %d groups",
			   NETDRV_PORT_GROUPS_MAX);
	for (size_t i = 0; i < netdoc_len(names); i++) {
		struct json_object *val = json_object_array_get_idx(names, i);
		const char *name = json_object_get_string(val);

		snprintf(item, sizeof(item), "security_groups[%zu]", i);
		if (!json_object_is_type(val, json_type_string))
			return bad(err, at, item, "must be a string");
		if (netdoc_group_index(c->groups, name) < 0)
			return bad(err, at, item, "names %.63s, not a group of the document", name);
		for (size_t j = 0; j < i; j++)
			if (strcmp(json_object_get_string(json_object_array_get_idx(names, j)),
				   name) == 0)
				return bad(err, at, item, "names %.63s twice", name);
	}
	return 0;
}

static int port_check(struct doc_check *c, const struct netdoc_net *n, struct json_object *jp,
		      const char *at, uint32_t *addr, bool *has_addr, uint64_t *mac,
		      struct kerr *err)
{
	struct json_object *val;
	const char *s;

	if (!json_object_is_type(jp, json_type_object))
		return bad(err, at, "", "must be an object");
	if (fields_check(jp, port_fields, at, err) < 0)
		return -1;
	s = json_get_str(jp, "ifname", "");
	if (!netdoc_kumo_name(s, "kp", NULL, NULL))
		return bad(err, at, "ifname",
			   "must be kp<instance>-<nic>, at most %d characters (got \"%.20s\")",
			   IFNAMSIZ - 1, s);
	s = json_get_str(jp, "mac", "");
	if (!mac_unicast(s) || !mac_parse(s, mac))
		return bad(err, at, "mac", "must be a unicast MAC address (\"52:54:00:12:34:56\")");
	s = json_get_str(jp, "instance", "");
	if (!name_valid(s))
		return bad(err, at, "instance", "must be an instance name ([a-z0-9-], 1-%d)",
			   NAME_MAX_LEN);
	if (port_groups_check(c, json_object_object_get(jp, "security_groups"), at, err) < 0)
		return -1;
	*has_addr = json_object_object_get_ex(jp, "address", &val) && val != NULL;
	if (!*has_addr) {
		if (n->mode != NETDOC_BRIDGE)
			return bad(err, at, "address", "is required on a %s network",
				   netdoc_mode_names[n->mode]);
		return 0;
	}
	if (ipv4_field(val, at, "address", addr, err) < 0)
		return -1;
	if ((*addr & n->mask) != n->net)
		return bad(err, at, "address", "%s is outside %s", json_object_get_string(val),
			   n->cidr);
	if (*addr == n->net || *addr == (n->net | ~n->mask) || (n->gateway && *addr == n->gw))
		return bad(err, at, "address", "%s is the network, broadcast or gateway address",
			   json_object_get_string(val));
	return 0;
}

static int peers_check(struct doc_check *c, struct json_object *peers, const char *at,
		       struct kerr *err)
{
	size_t n = netdoc_len(peers), dup;
	_cleanup_free_ uint32_t *addrs = NULL;
	char member[32];

	if (n > NETDRV_PEERS_MAX)
		return bad(err, at, "peers", "lists more than %d hosts", NETDRV_PEERS_MAX);
	addrs = xcalloc(n + 1, sizeof(*addrs));
	for (size_t i = 0; i < n; i++) {
		struct json_object *val = json_object_array_get_idx(peers, i);

		snprintf(member, sizeof(member), "peers[%zu]", i);
		if (!json_object_is_type(val, json_type_string))
			return bad(err, at, member, "must be a string");
		if (ipv4_field(val, at, member, &addrs[i], err) < 0)
			return -1;
		if (c->has_underlay && addrs[i] == c->underlay)
			return bad(err, at, member, "is this host's own underlay address");
	}
	qsort(addrs, n, sizeof(*addrs), u32_cmp);
	if ((dup = first_duplicate(addrs, n, sizeof(*addrs), u32_cmp)) < n) {
		char text[INET_ADDRSTRLEN];

		netdoc_ipv4_format(addrs[dup], text);
		return bad(err, at, "peers", "lists %s twice", text);
	}
	return 0;
}

/* addrs collects the network's port addresses (grown here; *naddrs of them). */
static int segment_check(struct doc_check *c, const struct netdoc_net *n, struct json_object *js,
			 size_t ni, size_t si, uint32_t **addrs, size_t *naddrs, struct kerr *err)
{
	struct netdoc_seg s;
	char at[48], pat[64], want[IFNAMSIZ + 8];
	_cleanup_free_ uint64_t *macs = NULL;
	size_t nports, dup;

	snprintf(at, sizeof(at), "networks[%zu].segments[%zu]", ni, si);
	if (!json_object_is_type(js, json_type_object))
		return bad(err, at, "", "must be an object");
	if (fields_check(js, segment_fields, at, err) < 0)
		return -1;
	netdoc_seg_read(js, &s);
	if (json_get_int(js, "vlan", -1) < 0 || json_get_int(js, "vlan", -1) > VLAN_MAX)
		return bad(err, at, "vlan", "must be between 0 (untagged) and %d", VLAN_MAX);
	snprintf(want, sizeof(want), "kb%lld-%d", (long long)n->id, s.vlan);
	if (strcmp(s.bridge, want) != 0)
		return bad(err, at, "bridge", "must be \"%s\" (kb<network id>-<vlan>)", want);
	if (json_object_object_get(js, "vni") &&
	    (json_get_int(js, "vni", 0) < 1 || json_get_int(js, "vni", 0) > VNI_MAX))
		return bad(err, at, "vni", "must be between 1 and %d", VNI_MAX);
	if (s.gateway_mac && !mac_unicast(s.gateway_mac))
		return bad(err, at, "gateway_mac",
			   "must be a unicast MAC address (\"02:6b:00:03:00:00\")");
	if (n->mode == NETDOC_BRIDGE) {
		if (s.vxlan)
			return bad(err, at, "vxlan", "must be null on a bridge network");
		if (s.vlan > 0 &&
		    strlen(n->uplink) + 1 + (size_t)snprintf(NULL, 0, "%d", s.vlan) >= IFNAMSIZ)
			return bad(err, at, "vlan", "makes %s.%d, longer than %d characters",
				   n->uplink, s.vlan, IFNAMSIZ - 1);
	} else {
		snprintf(want, sizeof(want), "kx%lld-%d", (long long)n->id, s.vlan);
		if (s.vxlan == NULL || strcmp(s.vxlan, want) != 0)
			return bad(err, at, "vxlan", "must be \"%s\" (kx<network id>-<vlan>)",
				   want);
		if (s.vni == 0)
			return bad(err, at, "vni", "is required on a %s network",
				   netdoc_mode_names[n->mode]);
		if (s.gateway_mac == NULL)
			return bad(err, at, "gateway_mac", "is required on a %s network",
				   netdoc_mode_names[n->mode]);
	}
	if (peers_check(c, s.peers, at, err) < 0)
		return -1;

	nports = netdoc_len(s.ports);
	if (nports > NETDRV_PORTS_MAX)
		return bad(err, at, "ports", "lists more than %d ports", NETDRV_PORTS_MAX);
	if (c->ports + nports > NETDRV_DOC_PORTS_MAX)
		return bad(err, at, "ports", "makes more than %d ports in the document",
			   NETDRV_DOC_PORTS_MAX);
	macs = xcalloc(nports + 1, sizeof(*macs));
	*addrs = xrealloc(*addrs, (*naddrs + nports + 1) * sizeof(**addrs));
	for (size_t pi = 0; pi < nports; pi++) {
		struct json_object *jp = json_object_array_get_idx(s.ports, pi);
		bool has_addr = false;
		uint32_t addr = 0;

		snprintf(pat, sizeof(pat), "%s.ports[%zu]", at, pi);
		if (port_check(c, n, jp, pat, &addr, &has_addr, &macs[pi], err) < 0)
			return -1;
		if (has_addr)
			(*addrs)[(*naddrs)++] = addr;
		c->ifnames[c->ports++] = (struct port_ref){
			.ifname = json_get_str(jp, "ifname", ""), .net = ni, .seg = si, .port = pi};
	}
	qsort(macs, nports, sizeof(*macs), u64_cmp);
	if ((dup = first_duplicate(macs, nports, sizeof(*macs), u64_cmp)) < nports)
		return bad(err, at, "ports", "lists MAC %02x:%02x:%02x:%02x:%02x:%02x twice",
			   (unsigned)(macs[dup] >> 40 & 0xff), (unsigned)(macs[dup] >> 32 & 0xff),
			   (unsigned)(macs[dup] >> 24 & 0xff), (unsigned)(macs[dup] >> 16 & 0xff),
			   (unsigned)(macs[dup] >> 8 & 0xff), (unsigned)(macs[dup] & 0xff));
	return 0;
}

static int network_check(struct doc_check *c, struct json_object *jn, size_t ni, struct kerr *err)
{
	_cleanup_free_ uint32_t *addrs = NULL;
	bool vlans[VLAN_MAX + 1] = {false};
	size_t nsegs, naddrs = 0, dup;
	struct netdoc_net v;
	struct json_object *val;
	char at[24];
	int mode, prefix;

	snprintf(at, sizeof(at), "networks[%zu]", ni);
	if (!json_object_is_type(jn, json_type_object))
		return bad(err, at, "", "must be an object");
	if (fields_check(jn, network_fields, at, err) < 0)
		return -1;
	netdoc_net_read(jn, &v);
	if (v.id < 1 || v.id > NETWORK_ID_MAX)
		return bad(err, at, "id", "must be between 1 and %d", NETWORK_ID_MAX);
	if (!name_valid(v.name))
		return bad(err, at, "name", "must be a network name ([a-z0-9-], 1-%d)",
			   NAME_MAX_LEN);
	if ((mode = mode_parse(json_get_str(jn, "mode", ""))) < 0)
		return bad(err, at, "mode", "must be \"nat\", \"host-only\" or \"bridge\"");
	if (!cidr_parse(v.cidr, &v.net, &prefix) || prefix < 1 || prefix > 30)
		return bad(err, at, "cidr",
			   "must be an IPv4 network, /1 to /30 (\"10.50.0.0/24\")");
	if ((v.net & ~prefix_mask(prefix)) != 0)
		return bad(err, at, "cidr", "%s has host bits set", v.cidr);
	if (json_get_int(jn, "prefix", -1) != prefix)
		return bad(err, at, "prefix", "must be %d, the prefix of %s", prefix, v.cidr);
	if (v.gateway) {
		if (!netdoc_ipv4_parse(v.gateway, &v.gw))
			return bad(err, at, "gateway", "must be an IPv4 address (\"10.50.0.1\")");
		if ((v.gw & v.mask) != v.net || v.gw == v.net || v.gw == (v.net | ~v.mask))
			return bad(err, at, "gateway", "%s is not a host address of %s", v.gateway,
				   v.cidr);
	} else if (v.mode != NETDOC_BRIDGE) {
		return bad(err, at, "gateway", "is required on a %s network",
			   netdoc_mode_names[v.mode]);
	}
	if (v.mtu < NETDOC_MTU_MIN || v.mtu > NETDOC_MTU_MAX)
		return bad(err, at, "mtu", "must be between %d and %d", NETDOC_MTU_MIN,
			   NETDOC_MTU_MAX);
	if (netdoc_len(v.dns) > NETDRV_DNS_MAX)
		return bad(err, at, "dns", "lists more than %d servers", NETDRV_DNS_MAX);
	for (size_t i = 0; i < netdoc_len(v.dns); i++) {
		char member[16];
		uint32_t addr;

		val = json_object_array_get_idx(v.dns, i);
		snprintf(member, sizeof(member), "dns[%zu]", i);
		if (!json_object_is_type(val, json_type_string))
			return bad(err, at, member, "must be a string");
		if (ipv4_field(val, at, member, &addr, err) < 0)
			return -1;
	}
	if (v.mode == NETDOC_BRIDGE) {
		if (v.uplink == NULL)
			return bad(err, at, "uplink", "is required on a bridge network");
		if (!netdoc_ifname_safe(v.uplink) || strcmp(v.uplink, "lo") == 0 ||
		    netdoc_kumo_name(v.uplink, "kb", NULL, NULL) ||
		    netdoc_kumo_name(v.uplink, "kx", NULL, NULL) ||
		    netdoc_kumo_name(v.uplink, "kp", NULL, NULL))
			return bad(err, at, "uplink",
				   "must be an interface name of this host ([A-Za-z0-9_.-], 1-%d, "
				   "not lo or a kumo link)",
				   IFNAMSIZ - 1);
	} else {
		if (v.uplink)
			return bad(err, at, "uplink", "must be null on a %s network",
				   netdoc_mode_names[v.mode]);
		if (!c->has_underlay)
			return bad(err, "", "underlay", "is required with a %s network (%s)",
				   netdoc_mode_names[v.mode], at);
	}

	nsegs = netdoc_len(v.segments);
	if (c->segments + nsegs > NETDRV_SEGMENTS_MAX)
		return bad(err, at, "segments", "makes more than %d segments in the document",
			   NETDRV_SEGMENTS_MAX);
	for (size_t si = 0; si < nsegs; si++) {
		struct json_object *js = json_object_array_get_idx(v.segments, si);
		int vlan;

		if (segment_check(c, &v, js, ni, si, &addrs, &naddrs, err) < 0)
			return -1;
		vlan = (int)json_get_int(js, "vlan", 0);
		if (vlans[vlan])
			return bad(err, at, "segments", "lists VLAN %d twice", vlan);
		vlans[vlan] = true;
	}
	c->segments += nsegs;
	/* Without segments addrs is still NULL, which qsort may not be given. */
	if (naddrs > 0)
		qsort(addrs, naddrs, sizeof(*addrs), u32_cmp);
	if ((dup = first_duplicate(addrs, naddrs, sizeof(*addrs), u32_cmp)) < naddrs) {
		char text[INET_ADDRSTRLEN];

		netdoc_ipv4_format(addrs[dup], text);
		return bad(err, at, "segments", "give address %s to two ports", text);
	}
	return 0;
}

/* A VLAN both networks have a segment on, or -1. */
static int vlans_shared(const struct netdoc_net *a, const struct netdoc_net *b)
{
	for (size_t i = 0; i < netdoc_len(a->segments); i++) {
		int vlan = (int)json_get_int(json_object_array_get_idx(a->segments, i), "vlan", -1);

		for (size_t j = 0; j < netdoc_len(b->segments); j++)
			if (json_get_int(json_object_array_get_idx(b->segments, j), "vlan", -2) ==
			    vlan)
				return vlan;
	}
	return -1;
}

int netdrv_doc_check(struct json_object *doc, struct kerr *err)
{
	struct doc_check c = {0};
	_cleanup_free_ struct port_ref *ifnames = NULL;
	struct json_object *networks, *val;
	size_t n, dup;

	if (!json_object_is_type(doc, json_type_object))
		return err_input(err, 400, "", "the network document must be a JSON object");
	if (fields_check(doc, doc_fields, "", err) < 0)
		return -1;
	if (!hash_valid(json_get_str(doc, "hash", "")))
		return bad(err, "", "hash", "must be %d lower-case hex digits (sha256)",
			   HASH_HEX_LEN);
	if (json_object_object_get_ex(doc, "underlay", &val) && val) {
		if (ipv4_field(val, "", "underlay", &c.underlay, err) < 0)
			return -1;
		c.has_underlay = true;
	}
	if (addr_list_check(json_object_object_get(doc, "control_plane"), "", "control_plane",
			    NETDRV_CONTROL_PLANE_MAX, err) < 0)
		return -1;
	if (groups_check(&c, json_object_object_get(doc, "security_groups"), err) < 0)
		return -1;
	networks = json_object_object_get(doc, "networks");
	n = netdoc_len(networks);
	if (n > NETDRV_NETWORKS_MAX)
		return bad(err, "", "networks", "lists more than %d networks", NETDRV_NETWORKS_MAX);
	ifnames = c.ifnames = xcalloc(NETDRV_DOC_PORTS_MAX + 1, sizeof(*c.ifnames));
	for (size_t i = 0; i < n; i++)
		if (network_check(&c, json_object_array_get_idx(networks, i), i, err) < 0)
			return -1;

	/* Across networks: ids, overlapping routed networks, port names. */
	for (size_t i = 0; i < n; i++) {
		struct netdoc_net a;

		netdoc_net_read(json_object_array_get_idx(networks, i), &a);
		for (size_t j = i + 1; j < n; j++) {
			struct netdoc_net b;
			char at[24];
			uint32_t mask;

			netdoc_net_read(json_object_array_get_idx(networks, j), &b);
			snprintf(at, sizeof(at), "networks[%zu]", j);
			if (a.id == b.id)
				return bad(err, at, "id", "%lld is also networks[%zu]'s",
					   (long long)b.id, i);
			if (a.mode == NETDOC_BRIDGE && b.mode == NETDOC_BRIDGE &&
			    strcmp(a.uplink, b.uplink) == 0 && vlans_shared(&a, &b) >= 0)
				return bad(err, at, "uplink",
					   "%s VLAN %d is also networks[%zu]'s uplink", b.uplink,
					   vlans_shared(&a, &b), i);
			mask = a.mask & b.mask; /* the shorter prefix */
			if (a.mode != NETDOC_BRIDGE && b.mode != NETDOC_BRIDGE &&
			    (a.net & mask) == (b.net & mask))
				return bad(err, at, "cidr", "%s overlaps networks[%zu] (%s)",
					   b.cidr, i, a.cidr);
		}
	}
	qsort(c.ifnames, c.ports, sizeof(*c.ifnames), port_ref_cmp);
	if ((dup = first_duplicate(c.ifnames, c.ports, sizeof(*c.ifnames), port_ref_cmp)) <
	    c.ports) {
		const struct port_ref *p = &c.ifnames[dup];
		char at[64];

		snprintf(at, sizeof(at), "networks[%zu].segments[%zu].ports[%zu]", p->net, p->seg,
			 p->port);
		return bad(err, at, "ifname", "%s is listed twice", p->ifname);
	}
	return 0;
}
