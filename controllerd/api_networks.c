/*
 * api_networks.c - /api/v1/networks: the controller's records of networks (mode, CIDR,
 * gateway, DHCP, DNS, VLANs, VNI block, MTU, bridge uplinks) and the addresses
 * allocated in each. Realising a network on the hosts is the agent's net driver; this
 * file only keeps the records and the IPAM facts straight.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controllerd.h"
#include "ipam.h"
#include "log.h"
#include "util.h"
#include "valid.h"

/*
 * Each network owns a block of NETWORK_VNI_BLOCK VNIs starting at vni_base: VNI
 * vni_base + vlan carries one VLAN segment, vni_base itself the untagged one. The VNI
 * space is 24 bits, so the last block starts at 2^24 - 1 - 4095.
 */
#define NETWORK_VNI_BLOCK    4096
#define NETWORK_VNI_BASE_MAX (16777215 - (NETWORK_VNI_BLOCK - 1))
#define NETWORK_VLAN_MAX     4094
#define NETWORK_MTU_MIN	     576
#define NETWORK_MTU_MAX	     9000
/* A 1500-byte underlay less VXLAN's 50 bytes of outer headers. */
#define NETWORK_MTU_DEFAULT 1450
#define NETWORK_IFNAME_MAX  15 /* IFNAMSIZ less the NUL */
#define NETWORK_ID_MAX	    65535

/* A JSON reference dropped when the local goes out of scope. */
static inline void json_putp(struct json_object **obj)
{
	json_object_put(*obj);
}
#define _cleanup_json_ _attr_cleanup_(json_putp)

#define NETWORK_COLUMNS                                                                            \
	"id, name, mode, cidr, gateway, dhcp, dns, vlans, vni_base, mtu, uplinks, created_at, "    \
	"updated_at"

static int mode_check(struct json_object *v, const char *field, struct kerr *err)
{
	const char *s = json_object_get_string(v);

	if (strcmp(s, "bridge") && strcmp(s, "nat") && strcmp(s, "host-only"))
		return err_input(err, 400, field,
				 "field '%s' must be \"bridge\", \"nat\" or \"host-only\"", field);
	return 0;
}

static int cidr_check(struct json_object *v, const char *field, struct kerr *err)
{
	struct ipam_net net;

	(void)field;
	return ipam_cidr_parse(json_object_get_string(v), &net, err);
}

static int dns_check(struct json_object *v, const char *field, struct kerr *err)
{
	size_t n = json_array_len(v);

	if (n > 8)
		return err_input(err, 400, field, "field '%s' lists at most 8 servers", field);
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(v, i);
		struct kerr why;
		uint32_t addr;

		if (!json_object_is_type(e, json_type_string))
			return err_input(err, 400, field,
					 "field '%s' must be a list of IPv4 addresses", field);
		if (ipam_addr_parse(json_object_get_string(e), &addr, &why) < 0)
			return err_input(err, 400, field, "%s[%zu]: %s", field, i, why.msg);
	}
	return 0;
}

static int vlans_check(struct json_object *v, const char *field, struct kerr *err)
{
	size_t n = json_array_len(v);

	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(v, i);
		int64_t id;

		if (!json_object_is_type(e, json_type_int))
			return err_input(err, 400, field, "field '%s' must be a list of VLAN ids",
					 field);
		id = json_object_get_int64(e);
		if (id < 1 || id > NETWORK_VLAN_MAX)
			return err_input(err, 400, field,
					 "VLAN %lld in '%s' is out of range: VLAN ids are 1..%d "
					 "(0 and 4095 are reserved by 802.1Q)",
					 (long long)id, field, NETWORK_VLAN_MAX);
		for (size_t j = 0; j < i; j++)
			if (json_object_get_int64(json_object_array_get_idx(v, j)) == id)
				return err_input(err, 400, field,
						 "VLAN %lld is listed twice in '%s'", (long long)id,
						 field);
	}
	return 0;
}

static int vni_check(struct json_object *v, const char *field, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < 1 || n > NETWORK_VNI_BASE_MAX)
		return err_input(err, 400, field,
				 "field '%s' must be 1..%d: the network uses VNIs %s..%s+%d", field,
				 NETWORK_VNI_BASE_MAX, field, field, NETWORK_VNI_BLOCK - 1);
	return 0;
}

static int mtu_check(struct json_object *v, const char *field, struct kerr *err)
{
	int64_t n = json_object_get_int64(v);

	if (n < NETWORK_MTU_MIN || n > NETWORK_MTU_MAX)
		return err_input(err, 400, field, "field '%s' must be %d..%d", field,
				 NETWORK_MTU_MIN, NETWORK_MTU_MAX);
	return 0;
}

static bool ifname_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > NETWORK_IFNAME_MAX)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' ||
		      *s == '.' || *s == '-'))
			return false;
	return true;
}

/* The shape of uplinks; that each host exists is checked with the host list later. */
static int uplinks_check(struct json_object *v, const char *field, struct kerr *err)
{
	json_object_object_foreach(v, host, iface)
	{
		if (!name_valid(host))
			return err_input(err, 400, field,
					 "'%s' names host \"%.64s\", not a host name", field, host);
		if (!json_object_is_type(iface, json_type_string) ||
		    !ifname_valid(json_object_get_string(iface)))
			return err_input(err, 400, field,
					 "%s.%s must be an interface name of 1-%d characters of "
					 "a-z, 0-9, '_', '.' and '-'",
					 field, host, NETWORK_IFNAME_MAX);
	}
	return 0;
}

static const struct json_field create_fields[] = {
	{"name", JK_STRING, true, name_check},
	{"mode", JK_STRING, true, mode_check},
	{"cidr", JK_STRING, true, cidr_check},
	{"gateway", JK_STRING, false, NULL},
	{"dhcp", JK_BOOL, false, NULL},
	{"dns", JK_ARRAY, false, dns_check},
	{"vlans", JK_ARRAY, false, vlans_check},
	{"vni_base", JK_INT, false, vni_check},
	{"mtu", JK_INT, false, mtu_check},
	{"uplinks", JK_OBJECT, false, uplinks_check},
	{NULL, 0, false, NULL},
};
const struct json_field *const network_create_fields = create_fields;

/* What a running network lets change; the rest of create_fields is fixed. */
static const struct json_field patch_fields[] = {
	{"dhcp", JK_BOOL, false, NULL},
	{"dns", JK_ARRAY, false, dns_check},
	{"mtu", JK_INT, false, mtu_check},
	{"uplinks", JK_OBJECT, false, uplinks_check},
	{NULL, 0, false, NULL},
};
const struct json_field *const network_patch_fields = patch_fields;

static bool json_list_has(struct json_object *list, const char *s)
{
	for (size_t i = 0; list && i < json_array_len(list); i++)
		if (!strcmp(json_object_get_string(json_object_array_get_idx(list, i)), s))
			return true;
	return false;
}

/* The bridge network other than self_id that has iface as its uplink on host, or NULL. */
static char *uplink_holder(const char *host, const char *iface, int64_t self_id)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT name, uplinks FROM networks WHERE "
					      "mode = 'bridge' AND id != ? ORDER BY name");
	char *holder = NULL;

	sqlite3_bind_int64(st, 1, self_id);
	while (holder == NULL && sqlite3_step(st) == SQLITE_ROW) {
		struct json_object *u =
			json_tokener_parse((const char *)sqlite3_column_text(st, 1));

		if (!strcmp(json_get_str(u, host, ""), iface))
			holder = xstrdup((const char *)sqlite3_column_text(st, 0));
		json_object_put(u);
	}
	sqlite3_finalize(st);
	return holder;
}

/*
 * Every host named in uplinks must have joined (404 naming the first that has not) and
 * have the interface, free: no address of the host's own on it (bridging it would cut
 * the host off) and no other bridge network on it (409). VLANs are tagged onto the
 * uplinks with 802.1Q: each host needs it, and IFACE.VLAN must fit a name (422).
 * self_id is the network being changed (0 on create).
 */
static int uplinks_hosts_check(struct json_object *uplinks, struct json_object *vlans,
			       int64_t self_id, struct kerr *err)
{
	size_t nvlans = vlans ? json_array_len(vlans) : 0;

	json_object_object_foreach(uplinks, host, iface)
	{
		struct host *h = host_find(host);
		struct json_object *net, *ifs;
		const char *want = json_object_get_string(iface);
		_cleanup_free_ char *holder = NULL;

		if (h == NULL)
			return err_input(err, 404, "uplinks",
					 "uplinks names host %s, which has not joined", host);
		net = json_object_object_get(h->facts, "net");
		ifs = json_object_object_get(net, "interfaces");
		if (!json_list_has(ifs, want))
			return err_input(err, 422, "uplinks",
					 "host %s has no interface %s (it has %s)", host, want,
					 ifs ? json_text(ifs) : "not reported its interfaces yet");
		if (json_list_has(json_object_object_get(net, "addressed"), want))
			return err_input(err, 422, "uplinks",
					 "interface %s of host %s carries an IPv4 address of the "
					 "host's own; bridging it would cut the host off - give a "
					 "dedicated interface",
					 want, host);
		holder = uplink_holder(host, want, self_id);
		if (holder)
			return err_input(
				err, 409, "uplinks",
				"interface %s of host %s is the uplink of network %s already", want,
				host, holder);
		if (nvlans > 0 && !json_get_bool(net, "vlan_8021q", false))
			return err_input(err, 422, "vlans",
					 "VLANs on a bridge network are tagged onto its uplinks "
					 "with 802.1Q, and host %s has no 802.1Q support",
					 host);
		if (nvlans > 0 && strlen(want) + 5 > NETWORK_IFNAME_MAX)
			return err_input(err, 422, "uplinks",
					 "%s.<vlan> would be longer than %d characters: VLANs need "
					 "an uplink name of at most %d",
					 want, NETWORK_IFNAME_MAX, NETWORK_IFNAME_MAX - 5);
	}
	return 0;
}

static struct json_object *column_json(sqlite3_stmt *st, int col)
{
	const char *text = (const char *)sqlite3_column_text(st, col);

	return json_tokener_parse(text ? text : "null");
}

/* The JSON of the row st stands on (NETWORK_COLUMNS), with its IPAM facts. */
static struct json_object *network_row_json(sqlite3_stmt *st)
{
	struct json_object *o = json_object_new_object();
	struct ipam_net net;
	int64_t vni = sqlite3_column_int64(st, 8);

	json_object_object_add(o, "name",
			       json_object_new_string((const char *)sqlite3_column_text(st, 1)));
	json_object_object_add(o, "mode",
			       json_object_new_string((const char *)sqlite3_column_text(st, 2)));
	json_object_object_add(o, "cidr",
			       json_object_new_string((const char *)sqlite3_column_text(st, 3)));
	json_object_object_add(o, "gateway",
			       json_object_new_string((const char *)sqlite3_column_text(st, 4)));
	json_object_object_add(o, "dhcp", json_object_new_boolean(sqlite3_column_int(st, 5)));
	json_object_object_add(o, "dns", column_json(st, 6));
	json_object_object_add(o, "vlans", column_json(st, 7));
	json_object_object_add(o, "vni_base", json_object_new_int64(vni));
	json_object_object_add(o, "vni_last", json_object_new_int64(vni + NETWORK_VNI_BLOCK - 1));
	json_object_object_add(o, "mtu", json_object_new_int(sqlite3_column_int(st, 9)));
	json_object_object_add(o, "uplinks", column_json(st, 10));
	json_object_object_add(o, "created_at",
			       json_object_new_int64(sqlite3_column_int64(st, 11)));
	json_object_object_add(o, "updated_at",
			       json_object_new_int64(sqlite3_column_int64(st, 12)));
	/* The CIDR was checked on the way in, so it parses; NULL facts would say otherwise. */
	json_object_object_add(
		o, "facts",
		ipam_cidr_parse((const char *)sqlite3_column_text(st, 3), &net, NULL) == 0
			? ipam_net_json(&net)
			: NULL);
	return o;
}

/* The network named name as JSON (a new reference), or NULL; *id gets its row id. */
static struct json_object *network_get_json(const char *name, int64_t *id)
{
	sqlite3_stmt *st =
		db_prepare(ctl.db, "SELECT " NETWORK_COLUMNS " FROM networks WHERE name = ?");
	struct json_object *out = NULL;

	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) == SQLITE_ROW) {
		out = network_row_json(st);
		if (id)
			*id = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	return out;
}

/* Refuse net when it shares an address with another network: 409 naming that one. */
static int overlap_check(const struct ipam_net *net, struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT name, cidr FROM networks ORDER BY name");
	char mine[IPAM_CIDR_STRLEN];
	int ret = 0;

	while (ret == 0 && sqlite3_step(st) == SQLITE_ROW) {
		struct ipam_net other;
		const char *name = (const char *)sqlite3_column_text(st, 0);
		const char *cidr = (const char *)sqlite3_column_text(st, 1);

		if (ipam_cidr_parse(cidr, &other, NULL) == 0 && ipam_overlap(net, &other))
			ret = err_input(err, 409, "cidr", "%s overlaps network %s (%s)",
					ipam_cidr_format(net, mine), name, cidr);
	}
	sqlite3_finalize(st);
	return ret;
}

/*
 * Check a requested VNI block against the others (409 naming the network that holds
 * it), or, with *vni_base 0, pick the lowest free block on a NETWORK_VNI_BLOCK boundary.
 */
static int vni_reserve(int64_t *vni_base, struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT name, vni_base FROM networks");
	int64_t n = db_count(ctl.db, "SELECT count(*) FROM networks");
	int64_t *taken = xcalloc(n > 0 ? (size_t)n : 1, sizeof(*taken));
	size_t used = 0;
	int ret = 0;

	while (sqlite3_step(st) == SQLITE_ROW && used < (size_t)n) {
		int64_t other = sqlite3_column_int64(st, 1);

		if (*vni_base && llabs(*vni_base - other) < NETWORK_VNI_BLOCK && ret == 0)
			ret = err_input(err, 409, "vni_base",
					"VNIs %lld..%lld overlap network %s's block %lld..%lld",
					(long long)*vni_base,
					(long long)*vni_base + NETWORK_VNI_BLOCK - 1,
					(const char *)sqlite3_column_text(st, 0), (long long)other,
					(long long)other + NETWORK_VNI_BLOCK - 1);
		taken[used++] = other;
	}
	sqlite3_finalize(st);
	if (*vni_base == 0) {
		for (int64_t base = NETWORK_VNI_BLOCK; base <= NETWORK_VNI_BASE_MAX;
		     base += NETWORK_VNI_BLOCK) {
			bool free_block = true;

			for (size_t i = 0; i < used && free_block; i++)
				if (llabs(base - taken[i]) < NETWORK_VNI_BLOCK)
					free_block = false;
			if (free_block) {
				*vni_base = base;
				break;
			}
		}
		if (*vni_base == 0)
			ret = err_input(err, 409, "vni_base", "every VNI block is in use");
	}
	free(taken);
	return ret;
}

/* Find the network named by the path: its JSON, or NULL after answering 400/404. */
static struct json_object *path_network(struct request *req, int64_t *id, enum MHD_Result *ret)
{
	struct json_object *o;

	if (!name_valid(req->params[0])) {
		*ret = http_reply_error(req, 400, "name",
					"network name must be 1-63 characters of a-z, 0-9 and '-'");
		return NULL;
	}
	o = network_get_json(req->params[0], id);
	if (o == NULL)
		*ret = http_reply_error(req, 404, NULL, "no network named %s", req->params[0]);
	return o;
}

/*
 * The checks of a create body (already checked against create_fields) that need no
 * database: the CIDR, the gateway inside it (or the default one), uplinks in bridge
 * mode only. Fills net and gw (IPAM_ADDR_STRLEN bytes). Returns 0 or -1 with err.
 */
int network_body_check(struct json_object *body, struct ipam_net *net, char *gw, struct kerr *err)
{
	const char *mode = json_get_str(body, "mode", "");
	const char *gw_text = json_get_str(body, "gateway", NULL);

	if (ipam_cidr_parse(json_get_str(body, "cidr", ""), net, err) < 0)
		return -1;
	if (gw_text) {
		if (ipam_gateway_check(net, gw_text, err) < 0)
			return -1;
		snprintf(gw, IPAM_ADDR_STRLEN, "%s", gw_text);
	} else {
		ipam_addr_format(ipam_gateway_default(net), gw);
	}
	if (json_object_object_get(body, "uplinks") && strcmp(mode, "bridge") != 0)
		return err_input(err, 400, "uplinks",
				 "uplinks are for bridge mode only; a %s network has none", mode);
	return 0;
}

/* Validate body (already checked against create_fields) and insert it; err on refusal. */
static int network_insert(struct json_object *body, struct kerr *err)
{
	const char *name = json_get_str(body, "name", "");
	const char *mode = json_get_str(body, "mode", "");
	struct json_object *uplinks = json_object_object_get(body, "uplinks");
	struct json_object *dns = json_object_object_get(body, "dns");
	struct json_object *vlans = json_object_object_get(body, "vlans");
	int64_t vni = json_get_int(body, "vni_base", 0), now = now_ms();
	char gw[IPAM_ADDR_STRLEN], cidr[IPAM_CIDR_STRLEN];
	struct ipam_net net;
	sqlite3_stmt *st;
	int rc;

	if (network_body_check(body, &net, gw, err) < 0)
		return -1;
	if (uplinks && uplinks_hosts_check(uplinks, vlans, 0, err) < 0)
		return -1;
	if (db_count(ctl.db, "SELECT count(*) FROM networks") > 0) {
		st = db_prepare(ctl.db, "SELECT 1 FROM networks WHERE name = ?");
		sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc == SQLITE_ROW)
			return err_input(err, 409, "name", "a network named %s exists already",
					 name);
	}
	if (overlap_check(&net, err) < 0 || vni_reserve(&vni, err) < 0)
		return -1;
	/* Hosts name bridges and gateway MACs by the id, in 16 bits. */
	if (db_count(ctl.db, "SELECT coalesce(max(id), 0) FROM networks") >= NETWORK_ID_MAX)
		return err_input(err, 507, NULL,
				 "network ids run up to %d and the newest network has the last; "
				 "delete it to make room",
				 NETWORK_ID_MAX);

	st = db_prepare(ctl.db,
			"INSERT INTO networks (name, mode, cidr, gateway, dhcp, dns, vlans, "
			"vni_base, mtu, uplinks, created_at, updated_at) "
			"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
	sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, mode, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, ipam_cidr_format(&net, cidr), -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, gw, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 5, json_get_bool(body, "dhcp", true));
	sqlite3_bind_text(st, 6, dns ? json_text(dns) : "[]", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 7, vlans ? json_text(vlans) : "[]", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 8, vni);
	sqlite3_bind_int64(st, 9, json_get_int(body, "mtu", NETWORK_MTU_DEFAULT));
	sqlite3_bind_text(st, 10, uplinks ? json_text(uplinks) : "{}", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 11, now);
	sqlite3_bind_int64(st, 12, now);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return err_set(err, 0, "database: %s", sqlite3_errmsg(ctl.db));
	return 0;
}

enum MHD_Result api_networks_create(struct request *req)
{
	struct json_object *body, *out;
	struct kerr err;

	if (http_body_json(req, create_fields, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	/* The overlap, name and VNI checks and the insert see one state of the table. */
	if (db_begin(ctl.db) < 0) {
		json_object_put(body);
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	}
	if (network_insert(body, &err) < 0 || db_commit(ctl.db, &err) < 0) {
		db_rollback(ctl.db);
		json_object_put(body);
		return http_reply_kerr(req, &err);
	}
	out = network_get_json(json_get_str(body, "name", ""), NULL);
	json_object_put(body);
	if (out == NULL)
		return http_reply_error(req, 500, NULL, "network vanished after insert");
	log_info("network %s: created",
		 json_object_get_string(json_object_object_get(out, "name")));
	event_emit("network-created", json_object_get(out));
	return http_reply_json(req, 201, out);
}

/* GET /api/v1/networks: by name, paged (page.c). */
enum MHD_Result api_networks_list(struct request *req)
{
	struct json_object *list, *out;
	struct page page;
	struct kerr err;

	if (page_begin(req, &page, &err) < 0)
		return http_reply_kerr(req, &err);
	list = page_rows_by_name(&page,
				 db_prepare(ctl.db, "SELECT " NETWORK_COLUMNS
						    " FROM networks WHERE name > ?1 "
						    "ORDER BY name LIMIT ?2"),
				 network_row_json);
	out = json_object_new_object();
	page_end(&page, out, "networks", list);
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_network_get(struct request *req)
{
	enum MHD_Result ret;
	struct json_object *o = path_network(req, NULL, &ret);

	if (o == NULL)
		return ret;
	return http_reply_json(req, 200, o);
}

/* A host with NICs on bridge network id keeps its uplink: 409 naming it otherwise. */
static int uplinks_kept_check(const char *name, int64_t id, struct json_object *uplinks,
			      struct kerr *err)
{
	sqlite3_stmt *st = db_prepare(ctl.db, "SELECT DISTINCT i.host_id FROM addresses a "
					      "JOIN instances i ON a.instance_id = i.id "
					      "WHERE a.network_id = ? AND i.host_id IS NOT NULL");
	int ret = 0;

	sqlite3_bind_int64(st, 1, id);
	while (ret == 0 && sqlite3_step(st) == SQLITE_ROW) {
		int64_t hid = sqlite3_column_int64(st, 0);

		for (struct host *h = ctl.hosts; h; h = h->next)
			if (h->id == hid && !json_object_object_get_ex(uplinks, h->name, NULL))
				ret = err_input(err, 409, "uplinks",
						"host %s has instances on network %s: its uplink "
						"stays while they do",
						h->name, name);
	}
	sqlite3_finalize(st);
	return ret;
}

/* Fields a live network keeps: the agents built bridges, VXLANs and routes from them. */
static const char *const fixed_fields[] = {"name", "mode", "cidr", "gateway", "vlans", "vni_base"};

enum MHD_Result api_network_patch(struct request *req)
{
	enum MHD_Result ret;
	int64_t id;
	_cleanup_json_ struct json_object *cur = path_network(req, &id, &ret);
	struct json_object *body, *dns, *uplinks;
	struct kerr err;
	sqlite3_stmt *st;
	const char *mode;
	int rc;

	if (cur == NULL)
		return ret;
	if (json_body_parse(req->body ? req->body : "", req->body_len, &body, &err) < 0)
		return http_reply_kerr(req, &err);
	for (size_t i = 0; i < ARRAY_SIZE(fixed_fields); i++)
		if (json_object_object_get_ex(body, fixed_fields[i], NULL)) {
			json_object_put(body);
			return http_reply_error(req, 400, fixed_fields[i],
						"field '%s' cannot change on an existing network; "
						"only dhcp, dns, mtu and uplinks can (delete and "
						"create it again otherwise)",
						fixed_fields[i]);
		}
	if (json_fields_check(body, patch_fields, &err) < 0) {
		json_object_put(body);
		return http_reply_kerr(req, &err);
	}
	mode = json_object_get_string(json_object_object_get(cur, "mode"));
	uplinks = json_object_object_get(body, "uplinks");
	if (uplinks && strcmp(mode, "bridge") != 0) {
		json_object_put(body);
		return http_reply_error(req, 400, "uplinks",
					"uplinks are for bridge mode only; network %s is %s",
					req->params[0], mode);
	}
	if (uplinks &&
	    (uplinks_hosts_check(uplinks, json_object_object_get(cur, "vlans"), id, &err) < 0 ||
	     uplinks_kept_check(req->params[0], id, uplinks, &err) < 0)) {
		json_object_put(body);
		return http_reply_kerr(req, &err);
	}
	if (uplinks == NULL)
		uplinks = json_object_object_get(cur, "uplinks");
	dns = json_object_object_get(body, "dns");
	if (dns == NULL)
		dns = json_object_object_get(cur, "dns");
	st = db_prepare(ctl.db, "UPDATE networks SET dhcp = ?, dns = ?, mtu = ?, uplinks = ?, "
				"updated_at = ? WHERE id = ?");
	sqlite3_bind_int(st, 1, json_get_bool(body, "dhcp", json_get_bool(cur, "dhcp", true)));
	sqlite3_bind_text(st, 2, json_text(dns), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(
		st, 3, json_get_int(body, "mtu", json_get_int(cur, "mtu", NETWORK_MTU_DEFAULT)));
	sqlite3_bind_text(st, 4, json_text(uplinks), -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 5, now_ms());
	sqlite3_bind_int64(st, 6, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	json_object_put(body);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	struct json_object *out = network_get_json(req->params[0], NULL);

	if (out == NULL)
		return http_reply_error(req, 500, NULL, "network vanished after update");
	event_emit("network-updated", json_object_get(out));
	netsync_all();
	return http_reply_json(req, 200, out);
}

enum MHD_Result api_network_delete(struct request *req)
{
	enum MHD_Result ret;
	int64_t id, used;
	struct json_object *cur = path_network(req, &id, &ret), *ev;
	sqlite3_stmt *st;
	int rc;

	if (cur == NULL)
		return ret;
	json_object_put(cur);
	st = db_prepare(ctl.db, "SELECT count(*) FROM addresses WHERE network_id = ?");
	sqlite3_bind_int64(st, 1, id);
	used = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	if (used > 0)
		return http_reply_error(req, 409, NULL,
					"network %s still has %lld addresses allocated; remove the "
					"NICs that use it first",
					req->params[0], (long long)used);
	st = db_prepare(ctl.db, "DELETE FROM networks WHERE id = ?");
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return http_reply_error(req, 500, NULL, "database: %s", sqlite3_errmsg(ctl.db));
	log_info("network %s: deleted", req->params[0]);
	ev = json_object_new_object();
	json_object_object_add(ev, "name", json_object_new_string(req->params[0]));
	event_emit("network-deleted", ev);
	netsync_all();
	return http_reply_empty(req, 204);
}

struct addr_row {
	uint32_t addr;
	struct json_object *json;
};

static int addr_row_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct addr_row *)a)->addr, y = ((const struct addr_row *)b)->addr;

	return x < y ? -1 : x > y;
}

static struct json_object *addr_json(uint32_t addr, const char *kind, const char *owner,
				     int64_t created_at)
{
	struct json_object *o = json_object_new_object();
	char text[IPAM_ADDR_STRLEN];

	json_object_object_add(o, "address", json_object_new_string(ipam_addr_format(addr, text)));
	json_object_object_add(o, "kind", json_object_new_string(kind));
	json_object_object_add(o, "owner", json_object_new_string(owner));
	json_object_object_add(o, "created_at",
			       created_at ? json_object_new_int64(created_at) : NULL);
	return o;
}

enum MHD_Result api_network_addresses(struct request *req)
{
	enum MHD_Result ret;
	int64_t id, n;
	_cleanup_json_ struct json_object *cur = path_network(req, &id, &ret);
	struct json_object *list, *out;
	struct addr_row *rows;
	struct ipam_net net;
	uint32_t gw;
	sqlite3_stmt *st;
	size_t used = 0;

	if (cur == NULL)
		return ret;
	if (ipam_cidr_parse(json_object_get_string(json_object_object_get(cur, "cidr")), &net,
			    NULL) < 0 ||
	    ipam_addr_parse(json_object_get_string(json_object_object_get(cur, "gateway")), &gw,
			    NULL) < 0)
		return http_reply_error(req, 500, NULL, "network %s has a broken record",
					req->params[0]);
	st = db_prepare(ctl.db, "SELECT count(*) FROM addresses WHERE network_id = ?");
	sqlite3_bind_int64(st, 1, id);
	n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	rows = xcalloc((size_t)n + 3, sizeof(*rows));
	/* Never handed out: shown so a reader sees why the allocator skips them. */
	rows[used++] =
		(struct addr_row){net.network, addr_json(net.network, "reserved", "network", 0)};
	rows[used++] = (struct addr_row){net.broadcast,
					 addr_json(net.broadcast, "reserved", "broadcast", 0)};
	rows[used++] = (struct addr_row){gw, addr_json(gw, "reserved", "gateway", 0)};
	st = db_prepare(ctl.db, "SELECT a.address, a.kind, a.owner, a.created_at, i.name, a.nic, "
				"a.vlan, a.mac FROM addresses a LEFT JOIN instances i "
				"ON a.instance_id = i.id WHERE a.network_id = ?");
	sqlite3_bind_int64(st, 1, id);
	while (used < (size_t)n + 3 && sqlite3_step(st) == SQLITE_ROW) {
		uint32_t a;

		if (ipam_addr_parse((const char *)sqlite3_column_text(st, 0), &a, NULL) < 0)
			continue;
		rows[used] =
			(struct addr_row){a, addr_json(a, (const char *)sqlite3_column_text(st, 1),
						       (const char *)sqlite3_column_text(st, 2),
						       sqlite3_column_int64(st, 3))};
		/* The NIC holding it: instance, its index, the VLAN segment and the MAC. */
		json_object_object_add(
			rows[used].json, "instance",
			sqlite3_column_type(st, 4) == SQLITE_NULL
				? NULL
				: json_object_new_string((const char *)sqlite3_column_text(st, 4)));
		json_object_object_add(
			rows[used].json, "nic",
			sqlite3_column_type(st, 5) == SQLITE_NULL
				? NULL
				: json_object_new_int64(sqlite3_column_int64(st, 5)));
		json_object_object_add(rows[used].json, "vlan",
				       json_object_new_int64(sqlite3_column_int64(st, 6)));
		json_object_object_add(
			rows[used].json, "mac",
			sqlite3_column_type(st, 7) == SQLITE_NULL
				? NULL
				: json_object_new_string((const char *)sqlite3_column_text(st, 7)));
		used++;
	}
	sqlite3_finalize(st);
	qsort(rows, used, sizeof(*rows), addr_row_cmp);
	list = json_object_new_array();
	for (size_t i = 0; i < used; i++)
		json_object_array_add(list, rows[i].json);
	free(rows);
	out = json_object_new_object();
	json_object_object_add(out, "network", json_object_new_string(req->params[0]));
	json_object_object_add(out, "cidr", json_object_get(json_object_object_get(cur, "cidr")));
	json_object_object_add(out, "usable_hosts", json_object_new_int64(net.usable));
	/* Usable addresses less the gateway: what NICs can get. */
	json_object_object_add(out, "capacity", json_object_new_int64((int64_t)net.usable - 1));
	json_object_object_add(out, "allocated", json_object_new_int64(n));
	json_object_object_add(out, "addresses", list);
	return http_reply_json(req, 200, out);
}
